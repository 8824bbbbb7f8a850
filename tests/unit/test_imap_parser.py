"""IMAP command syntax: every command form, hostile input, and the formatting helpers."""

from __future__ import annotations

import contextlib
import time
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.imap.parser import (
    MAX_SEQUENCE_RANGES,
    AppendArgs,
    AppendMessage,
    AuthenticateArgs,
    Command,
    CopyArgs,
    CreateArgs,
    EnableArgs,
    ExpungeArgs,
    FetchArgs,
    FetchAttr,
    FetchBinarySize,
    FetchBody,
    IdArgs,
    ListArgs,
    LoginArgs,
    MailboxArgs,
    ParseError,
    QresyncParams,
    RenameArgs,
    SearchAll,
    SearchAnd,
    SearchArgs,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    Section,
    SelectArgs,
    SequenceSet,
    StatusArgs,
    StoreArgs,
    astring,
    command_head,
    decode_base64,
    decode_mailbox_name,
    literal_header,
    mailbox_name,
    nstring,
    parse_command,
    quoted,
    string,
)


def args(line: bytes, **kwargs):
    return parse_command(line, **kwargs).args


def refused(line: bytes, **kwargs) -> ParseError:
    with pytest.raises(ParseError) as caught:
        parse_command(line, **kwargs)
    return caught.value


def seq(*ranges: tuple[int, int]) -> SequenceSet:
    return SequenceSet(tuple(ranges))


# -- commands without arguments ---------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "CAPABILITY",
        "NOOP",
        "LOGOUT",
        "STARTTLS",
        "NAMESPACE",
        "IDLE",
        "CHECK",
        "CLOSE",
        "UNSELECT",
        "EXPUNGE",
    ],
)
def test_commands_without_arguments_parse_case_insensitively(name):
    assert parse_command(f"a1 {name.lower()}".encode()) == Command("a1", name)
    assert refused(f"a1 {name} x".encode()).tag == "a1"


def test_uid_expunge_takes_a_uid_set():
    assert parse_command(b"A2 UID EXPUNGE 3000:3002") == Command(
        "A2", "EXPUNGE", True, ExpungeArgs(seq((3000, 3002)))
    )


def test_tags_may_hold_any_astring_char_but_plus():
    assert parse_command(b"x]1.a NOOP").tag == "x]1.a"
    assert refused(b"a+1 NOOP").tag is None


# -- logins -----------------------------------------------------------------------------


def test_login_with_atom_quoted_and_literal_strings():
    assert args(b"a LOGIN fred secret") == LoginArgs("fred", "secret")
    assert args(b'a LOGIN "fred smith" "sec\\"r\\\\et"') == LoginArgs("fred smith", 'sec"r\\et')
    assert args(b"a LOGIN {4}\r\nfred {6+}\r\nsecret") == LoginArgs("fred", "secret")


def test_login_arguments_are_utf8():
    assert args('a LOGIN "jöran" x'.encode()) == LoginArgs("jöran", "x")
    assert refused(b'a LOGIN "\xff" x').text == "Invalid UTF-8 in user name"


def test_login_password_stays_out_of_repr():
    assert "secret" not in repr(parse_command(b"a LOGIN fred secret"))


def test_authenticate_with_and_without_initial_response():
    assert args(b"a AUTHENTICATE plain") == AuthenticateArgs("PLAIN")
    assert args(b"a AUTHENTICATE PLAIN AGZyZWQAc2VjcmV0") == AuthenticateArgs(
        "PLAIN", b"\0fred\0secret"
    )
    assert args(b"a AUTHENTICATE PLAIN =") == AuthenticateArgs("PLAIN", b"")  # RFC 4959 3


@pytest.mark.parametrize("response", [b"AGZyZWQ", b"A=ZyZWQA", b"!!!!", b"AGZyZWQ=="])
def test_authenticate_with_bad_base64_is_refused(response):
    assert refused(b"a AUTHENTICATE PLAIN " + response).tag == "a"


def test_decode_base64_is_strict():
    assert decode_base64(b"") == b""
    assert decode_base64(b"YQ==") == b"a"
    for bad in (b"YQ", b"YQ=", b"Y Q==", b"YQ==YQ=="):
        with pytest.raises(ParseError):
            decode_base64(bad)


def test_enable_takes_capability_names():
    assert args(b"a ENABLE qresync UTF8=ACCEPT") == EnableArgs(("QRESYNC", "UTF8=ACCEPT"))
    refused(b"a ENABLE")


# -- mailboxes --------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", [b"INBOX", b"inbox", b'"InBoX"', b"{5}\r\ninBOX"])
def test_inbox_is_case_insensitive(spelling):
    assert args(b"a SELECT " + spelling) == SelectArgs("INBOX")


def test_inbox_children_keep_their_case():
    assert args(b"a DELETE inbox/Sub") == MailboxArgs("inbox/Sub")


def test_select_and_examine_with_condstore():
    assert args(b"a SELECT Sent (CONDSTORE)") == SelectArgs("Sent", condstore=True)
    assert parse_command(b"a EXAMINE Sent").name == "EXAMINE"


def test_select_with_qresync_as_in_rfc_7162():
    # RFC 7162 3.2.5.1's example
    assert args(b"A02 SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))") == (
        SelectArgs(
            "INBOX",
            qresync=QresyncParams(
                67890007, 20050715194045000, seq((41, 41), (43, 211), (214, 541))
            ),
        )
    )


def test_select_with_qresync_known_uids_and_sequence_match():
    line = b"a SELECT INBOX (CONDSTORE QRESYNC (1 2 1:40 (1:3,7 10:12,20)))"
    assert args(line) == SelectArgs(
        "INBOX",
        condstore=True,
        qresync=QresyncParams(1, 2, seq((1, 40)), (seq((1, 3), (7, 7)), seq((10, 12), (20, 20)))),
    )
    assert args(b"a SELECT INBOX (QRESYNC (1 2))").qresync == QresyncParams(1, 2)
    assert args(b"a SELECT INBOX (QRESYNC (1 2 (1 5)))").qresync == QresyncParams(
        1, 2, None, (seq((1, 1)), seq((5, 5)))
    )


@pytest.mark.parametrize(
    "params",
    [
        b"(QRESYNC (0 2))",  # uidvalidity is nz-number
        b"(QRESYNC (1 0))",  # mod-sequence-value is positive
        b"(QRESYNC (1 2 1:*))",  # RFC 7162 3.2.5: no "*" in known-uids
        b"(QRESYNC (1 2 $))",
        b"(CONDSTORE CONDSTORE)",
        b"(FOO)",
        b"()",
    ],
)
def test_bad_select_parameters_are_refused(params):
    refused(b"a SELECT INBOX " + params)


def test_create_with_special_use():
    assert args(b"a CREATE Drafts") == CreateArgs("Drafts")
    assert args(b"a CREATE MyDrafts (USE (\\drafts \\Sent))") == CreateArgs(
        "MyDrafts", ("\\Drafts", "\\Sent")
    )


def test_create_with_unknown_special_use_is_no_useattr():
    error = refused(b"a CREATE X (USE (\\Important))")
    assert (error.status, error.code, error.tag) == ("NO", "USEATTR", "a")


@pytest.mark.parametrize("name", ["DELETE", "SUBSCRIBE", "UNSUBSCRIBE"])
def test_commands_on_one_mailbox(name):
    assert parse_command(f'a {name} "News/Local"'.encode()) == Command(
        "a", name, False, MailboxArgs("News/Local")
    )


def test_rename_takes_two_mailboxes():
    assert args(b"a RENAME blurdybloop sarasoop") == RenameArgs("blurdybloop", "sarasoop")


def test_mailbox_names_are_modified_utf7_until_utf8_is_enabled():
    assert args(b"a SELECT &ZeVnLIqe-") == SelectArgs("日本語")
    assert args(b"a SELECT &ZeVnLIqe-", utf8=True) == SelectArgs("&ZeVnLIqe-")
    assert args('a SELECT "日本語"'.encode(), utf8=True) == SelectArgs("日本語")
    assert refused('a SELECT "日本語"'.encode()).text == "Mailbox name is not valid modified UTF-7"


# -- LIST, LSUB, STATUS -----------------------------------------------------------------


def test_plain_list_and_lsub():
    assert args(b'a LIST "" %') == ListArgs("", ("%",))
    assert args(b"a LIST ~/Mail/ *]x") == ListArgs("~/Mail/", ("*]x",))
    assert args(b'a LSUB "#news." "comp.mail.*"') == ListArgs("#news.", ("comp.mail.*",))


def test_list_extended_with_several_patterns_and_return_options():
    # RFC 5258 5's examples, with RFC 5819 STATUS and RFC 6154 SPECIAL-USE.
    line = (
        b'A01 LIST (SUBSCRIBED RECURSIVEMATCH) "" ("%" "Other/*") '
        b"RETURN (CHILDREN SPECIAL-USE STATUS (MESSAGES UNSEEN))"
    )
    assert args(line) == ListArgs(
        "",
        ("%", "Other/*"),
        ("SUBSCRIBED", "RECURSIVEMATCH"),
        ("CHILDREN", "SPECIAL-USE", "STATUS"),
        ("MESSAGES", "UNSEEN"),
    )
    assert args(b'a LIST () "" %') == ListArgs("", ("%",))
    assert args(b'a LIST (REMOTE) "" % RETURN ()') == ListArgs("", ("%",), ("REMOTE",))
    assert args(b'a LIST (SPECIAL-USE) "" *') == ListArgs("", ("*",), ("SPECIAL-USE",))


@pytest.mark.parametrize(
    "line",
    [
        b'a LIST (RECURSIVEMATCH) "" %',  # RFC 5258 3: it only modifies another option
        b'a LIST (FOO) "" %',
        b'a LIST "" % RETURN (FOO)',
        b'a LIST "" % RETURN (STATUS (FOO))',
        b'a LIST "" % RETURN (STATUS ())',
        b'a LIST "" % (CHILDREN)',
        b'a LIST "" ()',
    ],
)
def test_bad_list_options_are_refused(line):
    refused(line)


def test_status_items():
    line = b"a STATUS blurdybloop (UIDNEXT MESSAGES size deleted HIGHESTMODSEQ RECENT APPENDLIMIT)"
    assert args(line) == StatusArgs(
        "blurdybloop",
        ("UIDNEXT", "MESSAGES", "SIZE", "DELETED", "HIGHESTMODSEQ", "RECENT", "APPENDLIMIT"),
    )
    refused(b"a STATUS INBOX (MESSAGES BOGUS)")
    refused(b"a STATUS INBOX ()")


# -- APPEND -----------------------------------------------------------------------------

MESSAGE = b"Subject: hi\r\n\r\nHello\r\n"


def test_append_with_flags_date_and_literal():
    line = (
        b'a APPEND saved-messages (\\Seen $Forwarded) "07-Feb-1994 21:52:25 -0800" {%d}\r\n'
        % len(MESSAGE)
        + MESSAGE
    )
    parsed = args(line)
    assert parsed == AppendArgs(
        "saved-messages",
        (
            AppendMessage(
                ("\\Seen", "$Forwarded"),
                datetime(1994, 2, 7, 21, 52, 25, tzinfo=timezone(timedelta(hours=-8))),
                memoryview(MESSAGE),
                False,
            ),
        ),
    )
    assert parsed.messages[0].data.readonly


def test_append_date_day_may_be_space_padded():
    parsed = args(b'a APPEND INBOX " 7-Feb-1994 01:02:03 +0530" {1}\r\nx')
    assert parsed.messages[0].date == datetime(
        1994, 2, 7, 1, 2, 3, tzinfo=timezone(timedelta(hours=5, minutes=30))
    )


def test_append_data_shares_the_command_buffer():
    buffer = bytearray(b"a APPEND INBOX {5}\r\nhello")
    data = args(buffer).messages[0].data
    assert data == b"hello" and data.obj is buffer


def test_append_literal8_may_hold_nul_and_a_plain_literal_may_not():
    parsed = args(b"a APPEND INBOX ~{3}\r\na\0b")
    assert parsed.messages[0].data == b"a\0b" and parsed.messages[0].binary
    assert refused(b"a APPEND INBOX {3}\r\na\0b").text == "NUL in a literal (use literal8)"


def test_multiappend_gives_every_message():
    parsed = args(b"a APPEND INBOX (\\Seen) {1+}\r\nx (\\Draft) {2}\r\nyz ~{1}\r\nw")
    assert [(m.flags, bytes(m.data), m.binary) for m in parsed.messages] == [
        (("\\Seen",), b"x", False),
        (("\\Draft",), b"yz", False),
        ((), b"w", True),
    ]


def test_multiappend_takes_a_second_space_between_messages_as_imapclient_sends():
    parsed = args(b"a APPEND Multi {1}\r\nx  {1}\r\ny  (\\Seen) {1}\r\nz")
    assert [(m.flags, bytes(m.data)) for m in parsed.messages] == [
        ((), b"x"),
        ((), b"y"),
        (("\\Seen",), b"z"),
    ]
    assert refused(b"a APPEND Multi {1}\r\nx   {1}\r\ny").text == (
        "Expected the message as a literal"
    )
    assert refused(b"a APPEND Multi  {1}\r\nx").text == "Expected the message as a literal"


@pytest.mark.parametrize(
    "line",
    [
        b'a APPEND INBOX "hello"',  # the message must be a literal
        b"a APPEND INBOX",
        b"a APPEND INBOX {5}\r\nhell",  # shorter than announced
        b'a APPEND INBOX "31-Feb-1994 21:52:25 -0800" {1}\r\nx',
        b'a APPEND INBOX "07-Feb-1994 21:52:25 -0860" {1}\r\nx',
        b'a APPEND INBOX "07-Foo-1994 21:52:25 -0800" {1}\r\nx',
        b'a APPEND INBOX "7-Feb-1994 21:52:25 -0800" {1}\r\nx',
        b"a APPEND INBOX (\\Seen {1}\r\nx",
        b"a APPEND INBOX {1}\r\nx{1}\r\ny",  # no SP before the next message
        b"a APPEND INBOX {99999999999999999999}\r\nx",
    ],
)
def test_bad_appends_are_refused(line):
    refused(line)


# -- SEARCH -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("program", "key"),
    [
        (b"ALL", SearchAll()),
        (b"answered", SearchFlag("\\Answered", True)),
        (b"UNANSWERED", SearchFlag("\\Answered", False)),
        (b"DELETED", SearchFlag("\\Deleted", True)),
        (b"UNDELETED", SearchFlag("\\Deleted", False)),
        (b"DRAFT", SearchFlag("\\Draft", True)),
        (b"UNDRAFT", SearchFlag("\\Draft", False)),
        (b"FLAGGED", SearchFlag("\\Flagged", True)),
        (b"UNFLAGGED", SearchFlag("\\Flagged", False)),
        (b"SEEN", SearchFlag("\\Seen", True)),
        (b"UNSEEN", SearchFlag("\\Seen", False)),
        (b"RECENT", SearchFlag("\\Recent", True)),
        (b"OLD", SearchFlag("\\Recent", False)),
        (b"NEW", SearchAnd((SearchFlag("\\Recent", True), SearchFlag("\\Seen", False)))),
        (b"KEYWORD $Junk", SearchFlag("$Junk", True)),
        (b"UNKEYWORD $Junk", SearchFlag("$Junk", False)),
        (b"BEFORE 1-Feb-1994", SearchDate("internal", "before", date(1994, 2, 1))),
        (b'ON "01-feb-1994"', SearchDate("internal", "on", date(1994, 2, 1))),
        (b"SINCE 31-Dec-2020", SearchDate("internal", "since", date(2020, 12, 31))),
        (b"SENTBEFORE 1-Feb-1994", SearchDate("sent", "before", date(1994, 2, 1))),
        (b"SENTON 1-Feb-1994", SearchDate("sent", "on", date(1994, 2, 1))),
        (b"SENTSINCE 1-Feb-1994", SearchDate("sent", "since", date(1994, 2, 1))),
        (b"FROM Smith", SearchHeader("From", "Smith")),
        (b'TO "a b"', SearchHeader("To", "a b")),
        (b"CC x", SearchHeader("Cc", "x")),
        (b"BCC x", SearchHeader("Bcc", "x")),
        (b"SUBJECT {5}\r\nhello", SearchHeader("Subject", "hello")),
        (b'HEADER X-Spam-Flag ""', SearchHeader("X-Spam-Flag", "")),
        (b"BODY word", SearchText(True, "word")),
        (b"TEXT word", SearchText(False, "word")),
        (b"LARGER 1000", SearchSize(True, 1000)),
        (b"SMALLER 9223372036854775807", SearchSize(False, 2**63 - 1)),
        (b"2,4:7,9,12:*", SearchSequence(seq((2, 2), (4, 7), (9, 9), (12, 0)))),
        (b"$", SearchSequence(SequenceSet((), saved=True))),
        (b"UID 5:2", SearchSequence(seq((5, 2)), uid=True)),
        (b"MODSEQ 0", SearchModSeq(0)),
        (
            b'MODSEQ "/flags/\\\\draft" all 620162338',
            SearchModSeq(620162338, "/flags/\\draft", "all"),
        ),
        (b"NOT SEEN", SearchNot(SearchFlag("\\Seen", True))),
        (b"OR SEEN 1", SearchOr(SearchFlag("\\Seen", True), SearchSequence(seq((1, 1))))),
        (b"(SEEN)", SearchFlag("\\Seen", True)),
    ],
)
def test_every_search_key(program, key):
    assert args(b"a SEARCH " + program) == SearchArgs(key)


def test_search_program_from_rfc_9051():
    # RFC 9051 6.4.4's example: the keys of a program are ANDed.
    assert args(b'A282 SEARCH FLAGGED SINCE 1-Feb-1994 NOT FROM "Smith"') == SearchArgs(
        SearchAnd(
            (
                SearchFlag("\\Flagged", True),
                SearchDate("internal", "since", date(1994, 2, 1)),
                SearchNot(SearchHeader("From", "Smith")),
            )
        )
    )


def test_nested_search_with_or_not_and_parentheses():
    parsed = parse_command(b"a UID SEARCH OR (UNSEEN (FLAGGED NOT DELETED)) NOT (OR 1:5 $) UID 9")
    assert parsed.uid
    assert parsed.args.key == SearchAnd(
        (
            SearchOr(
                SearchAnd(
                    (
                        SearchFlag("\\Seen", False),
                        SearchAnd(
                            (
                                SearchFlag("\\Flagged", True),
                                SearchNot(SearchFlag("\\Deleted", True)),
                            )
                        ),
                    )
                ),
                SearchNot(
                    SearchOr(
                        SearchSequence(seq((1, 5))), SearchSequence(SequenceSet((), saved=True))
                    )
                ),
            ),
            SearchSequence(seq((9, 9)), uid=True),
        )
    )


def test_search_charset_and_return_options():
    line = "a SEARCH RETURN (MIN max COUNT SAVE) CHARSET utf-8 TEXT {6}\r\nnaïve".encode()
    assert args(line) == SearchArgs(
        SearchText(False, "naïve"), "UTF-8", ("MIN", "MAX", "COUNT", "SAVE")
    )
    assert args(b"a SEARCH RETURN () ALL") == SearchArgs(SearchAll(), None, ())
    assert args(b'a SEARCH CHARSET "US-ASCII" ALL').charset == "US-ASCII"
    assert refused('a SEARCH CHARSET US-ASCII TEXT "ï"'.encode()).text == (
        "Invalid US-ASCII in search string"
    )


def test_search_with_an_unknown_charset_is_no_badcharset():
    error = refused(b"a SEARCH CHARSET KOI8-R TEXT x")
    assert (error.status, error.code) == ("NO", "BADCHARSET (US-ASCII UTF-8)")


def test_search_nesting_is_bounded():
    assert args(b"a SEARCH " + b"(" * 31 + b"ALL" + b")" * 31) == SearchArgs(SearchAll())
    deep = b"a SEARCH " + b"(" * 32 + b"ALL" + b")" * 32
    assert refused(deep).text == "Search keys nested too deeply"
    assert refused(b"a SEARCH " + b"NOT " * 5000 + b"ALL").text == "Search keys nested too deeply"
    refused(b"a SEARCH NOT NOT ALL", max_depth=2)


NESTED = b"(" * 100_000 + b"ALL" + b")" * 100_000


@pytest.mark.parametrize(
    "line",
    [
        b"a SEARCH " + NESTED,
        b"a SEARCH NOT " + NESTED,
        b"a SEARCH OR " + NESTED + b" ALL",
        b"a FETCH 1 " + NESTED,
        b"a STORE 1 FLAGS " + NESTED,
        b"a LIST " + NESTED + b' "" *',
        b'a LIST "" * RETURN ' + NESTED,
        b"a SELECT INBOX " + NESTED,
        b"a APPEND INBOX " + NESTED + b" {0}\r\n",
        b"a STATUS INBOX " + NESTED,
        b"a ID " + NESTED,
    ],
)
def test_hundred_thousand_nested_parentheses_are_refused_quickly(line):
    started = time.perf_counter()
    assert refused(line).tag == "a"  # a ParseError, never a RecursionError
    assert time.perf_counter() - started < 1


@pytest.mark.parametrize(
    "program",
    [
        b"",
        b"BOGUS",
        b"(SEEN",
        b"SEEN)",
        b"()",
        b"OR SEEN",
        b"BEFORE 32-Jan-2020",
        b"BEFORE 1-Jan-20",
        b"LARGER -1",
        b"LARGER 9223372036854775808",
        b"HEADER Bad:Name x",
        b'MODSEQ "/other/x" all 1',
        b'MODSEQ "/flags/\\\\Seen" everything 1',
        b"RETURN (BOGUS) ALL",
        b"KEYWORD \\Seen",
        b"SEEN  DELETED",
        b"SEEN ",
    ],
)
def test_bad_search_programs_are_refused(program):
    refused(b"a SEARCH " + program)


# -- FETCH ------------------------------------------------------------------------------


def test_fetch_macros_expand():
    fast = (FetchAttr("FLAGS"), FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE"))
    assert args(b"a FETCH 1 fast").items == fast
    assert args(b"a FETCH 1 ALL").items == (*fast, FetchAttr("ENVELOPE"))
    assert args(b"a FETCH 1 FULL").items == (*fast, FetchAttr("ENVELOPE"), FetchAttr("BODY"))
    refused(b"a FETCH 1 (FLAGS ALL)")  # macros stand alone


def test_fetch_body_peek_header_fields_with_partial():
    parsed = args(b"A654 FETCH 2:4 (FLAGS BODY.PEEK[HEADER.FIELDS (DATE FROM)]<0.2048>)")
    body = FetchBody(Section((), "HEADER.FIELDS", ("DATE", "FROM")), (0, 2048), peek=True)
    assert parsed == FetchArgs(seq((2, 4)), (FetchAttr("FLAGS"), body))
    assert body.label() == "BODY[HEADER.FIELDS (DATE FROM)]<0>"


@pytest.mark.parametrize(
    ("item", "parsed", "label"),
    [
        (b"BODY[]", FetchBody(Section()), "BODY[]"),
        (b"body[text]", FetchBody(Section((), "TEXT")), "BODY[TEXT]"),
        (b"BODY[1.2.HEADER]", FetchBody(Section((1, 2), "HEADER")), "BODY[1.2.HEADER]"),
        (b"BODY[3.MIME]", FetchBody(Section((3,), "MIME")), "BODY[3.MIME]"),
        (b"BODY[4.2.2.1]", FetchBody(Section((4, 2, 2, 1))), "BODY[4.2.2.1]"),
        (
            b"BODY[HEADER.FIELDS.NOT (Received X-Spam)]",
            FetchBody(Section((), "HEADER.FIELDS.NOT", ("Received", "X-Spam"))),
            "BODY[HEADER.FIELDS.NOT (Received X-Spam)]",
        ),
        (b"BODY[]<10.5>", FetchBody(Section(), (10, 5)), "BODY[]<10>"),
        (
            b"BINARY.PEEK[1.2]<0.100>",
            FetchBody(Section((1, 2)), (0, 100), peek=True, binary=True),
            "BINARY[1.2]<0>",
        ),
        (b"BINARY[]", FetchBody(Section(), binary=True), "BINARY[]"),
        (b"BINARY.SIZE[1]", FetchBinarySize((1,)), "BINARY.SIZE[1]"),
    ],
)
def test_fetch_sections(item, parsed, label):
    assert args(b"a FETCH 1 " + item).items == (parsed,)
    assert parsed.label() == label


@pytest.mark.parametrize(
    "name",
    [
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
    ],
)
def test_fetch_attributes(name):
    assert args(f"a FETCH * {name.lower()}".encode()).items == (FetchAttr(name),)


def test_uid_fetch_with_changedsince_and_vanished():
    parsed = parse_command(b"a UID FETCH 300:500 (FLAGS) (CHANGEDSINCE 12345 VANISHED)")
    assert parsed == Command(
        "a", "FETCH", True, FetchArgs(seq((300, 500)), (FetchAttr("FLAGS"),), 12345, True)
    )
    assert args(b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 1)").changed_since == 1


@pytest.mark.parametrize(
    "line",
    [
        b"a FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)",  # RFC 7162 3.2.6: UID FETCH only
        b"a UID FETCH 1:* (FLAGS) (VANISHED)",  # ... and with CHANGEDSINCE
        b"a UID FETCH 1:* (FLAGS) (CHANGEDSINCE 0)",
        b"a FETCH 1 (FLAGS) ()",
        b"a FETCH 1 BODY[MIME]",
        b"a FETCH 1 BODY[0]",
        b"a FETCH 1 BODY[1.]",
        b"a FETCH 1 BODY[HEADER.FIELDS]",
        b"a FETCH 1 BODY[HEADER.FIELDS ()]",
        b"a FETCH 1 BODY[HEADERX]",
        b"a FETCH 1 BODY[]<0.0>",
        b"a FETCH 1 BODY[]<1>",
        b"a FETCH 1 BINARY[TEXT]",
        b"a FETCH 1 BINARY.SIZE",
        b"a FETCH 1 BINARY.SIZE[1]<0.1>",
        b"a FETCH 1 BODY.PEEK",
        b"a FETCH 1 FOO",
        b"a FETCH 1 ()",
        b"a FETCH 1 (FLAGS",
        b"a FETCH 1 FLAGS)",
    ],
)
def test_bad_fetches_are_refused(line):
    refused(line)


# -- STORE, COPY, MOVE, ID --------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        (b"a STORE 2:4 +FLAGS (\\Deleted)", StoreArgs(seq((2, 4)), "add", ("\\Deleted",))),
        (
            b"a STORE 1 -flags.silent \\seen $Junk",
            StoreArgs(seq((1, 1)), "remove", ("\\Seen", "$Junk"), silent=True),
        ),
        (b"a STORE * FLAGS ()", StoreArgs(seq((0, 0)), "replace", ())),
        (
            b"a STORE 7 (UNCHANGEDSINCE 320162338) +FLAGS.SILENT (\\Deleted)",
            StoreArgs(seq((7, 7)), "add", ("\\Deleted",), True, 320162338),
        ),
        (b"a STORE $ FLAGS (a)", StoreArgs(SequenceSet((), saved=True), "replace", ("a",))),
    ],
)
def test_store_forms(line, parsed):
    assert args(line) == parsed


@pytest.mark.parametrize(
    "line",
    [
        b"a STORE 1 FLAGS",
        b"a STORE 1 FLAGS.LOUD (\\Seen)",
        b"a STORE 1 *FLAGS (\\Seen)",
        b"a STORE 1 (UNCHANGEDSINCE) FLAGS (\\Seen)",
        b"a STORE 1 (FOO 1) FLAGS (\\Seen)",
        b"a STORE 1 FLAGS (\\*)",
    ],
)
def test_bad_stores_are_refused(line):
    refused(line)


@pytest.mark.parametrize("name", [b"COPY", b"MOVE"])
def test_copy_and_move_and_their_uid_forms(name):
    assert parse_command(b"a " + name + b" 2:4 MEETING") == Command(
        "a", name.decode(), False, CopyArgs(seq((2, 4)), "MEETING")
    )
    assert parse_command(b"a UID " + name + b" 4827313:4828442 Trash").uid


def test_id_with_nil_or_fields():
    assert args(b"a ID NIL") == IdArgs(None)
    assert args(b'a ID ("name" "sodr" "version" "19.34" "vendor" NIL)') == IdArgs(
        (("name", "sodr"), ("version", "19.34"), ("vendor", None))
    )
    assert args(b"a ID ()") == IdArgs(())


@pytest.mark.parametrize(
    "line",
    [
        b"a ID",
        b'a ID ("name")',
        b"a ID (name x)",  # fields are strings, not atoms
        b'a ID ("x" FOO)',
        b'a ID ("' + b"f" * 31 + b'" "x")',  # RFC 2971 3.3 limits
        b'a ID ("f" "' + b"v" * 1025 + b'")',
        b"a ID (" + b" ".join(b'"f%d" "v"' % n for n in range(31)) + b")",
    ],
)
def test_bad_ids_are_refused(line):
    refused(line)


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "tag"),
    [
        (b"", None),
        (b" NOOP", None),
        (b"a+ NOOP", None),
        (b"\xe4 NOOP", None),
        (b"a", "a"),
        (b"a ", "a"),
        (b"a  NOOP", "a"),
        (b"a NOOP ", "a"),
        (b"a FOO", "a"),
        (b"a UID LOGIN x y", "a"),
        (b"a UID", "a"),
        (b"a SELECT \xe4", "a"),  # 8-bit in an atom
        (b"a SELECT IN\x00BOX", "a"),
        (b'a SELECT "IN\rBOX"', "a"),
        (b'a SELECT "INBOX', "a"),
        (b'a SELECT "\\x"', "a"),  # only DQUOTE and "\" may be escaped
        (b"a SELECT {5}\r\nINB", "a"),
        (b"a SELECT {5}INBOX", "a"),
        (b"a LOGIN ~{1}\r\nx y", "a"),  # literal8 only in APPEND
        (b"a FETCH 0 FLAGS", "a"),  # zero in nz-number
        (b"a FETCH 01 FLAGS", "a"),
        (b"a FETCH 4294967296 FLAGS", "a"),  # past 32 bits
        (b"a FETCH 99999999999999999999999 FLAGS", "a"),
        (b"a FETCH 1:2:3 FLAGS", "a"),
        (b"a FETCH 1,,2 FLAGS", "a"),
        (b"a FETCH 1:$ FLAGS", "a"),
        (b"a FETCH -1 FLAGS", "a"),
        (b"a FETCH 1 (FLAGS (UID)", "a"),  # unbalanced parentheses
        (b"a FETCH 1 FLAGS)", "a"),
        (b"a STORE 1 +FLAGS (\\Seen", "a"),
        (b"a SEARCH ((SEEN)", "a"),
        (b"a SEARCH SMALLER 1e3", "a"),
        (b"a CREATE x (USE (\\Drafts)", "a"),
    ],
)
def test_bad_input_raises_parse_error_with_the_tag_when_known(line, tag):
    error = refused(line)
    assert error.tag == tag
    assert error.status == "BAD"
    assert error.text


def test_command_head_reads_tag_and_name_before_the_command_is_whole():
    assert command_head(b"a1 APPEND INBOX {5}") == ("a1", "APPEND")
    assert command_head(b"a1 uid fetch 1 {5}") == ("a1", "FETCH")
    assert command_head(b"a1 {5}") == ("a1", "")
    assert command_head(b"a+1 LOGIN {5}") == (None, "")
    assert command_head(b"{5}") == (None, "")


# -- sequence sets ----------------------------------------------------------------------


def test_sequence_set_resolves_star_reversed_and_overlapping_ranges():
    parsed = args(b"a FETCH 2,4:7,9,12:* FLAGS").sequence
    assert parsed.resolve(15) == ((2, 2), (4, 7), (9, 9), (12, 15))
    assert list(parsed.members(15)) == [2, 4, 5, 6, 7, 9, 12, 13, 14, 15]
    # RFC 9051 9: *:4,5:7 with 10 messages is 4 to 10.
    assert args(b"a FETCH *:4,5:7 FLAGS").sequence.resolve(10) == ((4, 10),)
    assert args(b"a FETCH 5:2 FLAGS").sequence.resolve(3) == ((2, 5),)
    assert list(args(b"a FETCH 5:2 FLAGS").sequence.members(3)) == [2, 3]


def test_huge_ranges_are_never_materialized():
    everything = args(b"a UID FETCH 1:4294967295 FLAGS").sequence
    assert everything.contains(4294967295, 7)
    assert everything.resolve(7) == ((1, 4294967295),)
    assert list(everything.members(3)) == [1, 2, 3]
    assert not args(b"a UID FETCH 8:4294967295 FLAGS").sequence.contains(7, 7)


def test_sequence_set_range_count_is_bounded():
    most = b",".join(b"%d" % (2 * n + 1) for n in range(MAX_SEQUENCE_RANGES))
    assert len(args(b"a UID FETCH " + most + b" FLAGS").sequence.ranges) == MAX_SEQUENCE_RANGES
    assert refused(b"a UID FETCH " + most + b",9 FLAGS").text == "Too many ranges in a sequence set"


def test_million_range_sequence_set_is_refused_before_it_is_built():
    million = b",".join(b"%d:%d" % (n, n + 1) for n in range(1, 3_000_000, 3))
    started = time.perf_counter()
    assert refused(b"a UID SEARCH UID " + million).text == "Too many ranges in a sequence set"
    assert time.perf_counter() - started < 1


def test_membership_in_a_set_of_many_ranges_is_quick_for_every_message():
    sequence = args(
        b"a UID FETCH " + b",".join(b"%d" % (2 * n + 1) for n in range(30_000)) + b",70000:* FLAGS"
    ).sequence
    started = time.perf_counter()
    found = [uid for uid in range(1, 100_001) if sequence.contains(uid, 100_000)]
    assert time.perf_counter() - started < 2  # a scan of every range per message: minutes
    assert len(found) == 30_000 + 30_001


def test_membership_follows_the_largest_number_asked_with():
    sequence = args(b"a FETCH 2:* FLAGS").sequence
    assert not sequence.contains(5, 3)
    assert sequence.contains(5, 10)
    assert not sequence.contains(5, 3)
    assert sequence == seq((2, 0)) and hash(sequence) == hash(seq((2, 0)))


def test_star_beyond_the_largest_still_names_the_largest():
    # RFC 9051 6.4.9: UID range 5:* with largest UID 3 is 3:5, so 3 is in it.
    assert args(b"a UID FETCH 5:* FLAGS").sequence.contains(3, 3)


def test_saved_result_must_be_replaced_before_resolving():
    saved = args(b"a FETCH $ FLAGS").sequence
    assert saved.saved and str(saved) == "$"
    with pytest.raises(ValueError):
        saved.resolve(5)
    with pytest.raises(ValueError):
        saved.contains(1, 5)


def test_sequence_set_formats_compactly():
    assert str(SequenceSet.of([5, 1, 2, 3, 9, 10, 5])) == "1:3,5,9:10"
    assert str(seq((12, 0), (5, 2))) == "12:*,5:2"
    assert str(SequenceSet.of([])) == ""


@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=1), st.integers(0, 12))
def test_membership_agrees_with_brute_force_expansion(ranges, largest):
    text = ",".join(f"{first or '*'}:{last or '*'}" for first, last in ranges)
    sequence = args(f"a FETCH {text} FLAGS".encode()).sequence
    expanded = set()
    for first, last in ranges:
        first, last = first or largest, last or largest
        expanded.update(range(min(first, last), max(first, last) + 1))
    for number in range(0, 14):
        assert sequence.contains(number, largest) == (number in expanded)
    assert list(sequence.members(largest)) == sorted(n for n in expanded if 1 <= n <= largest)
    spans = sequence.resolve(largest)
    assert {n for low, high in spans for n in range(low, high + 1)} == expanded
    assert all(high + 1 < low for (_, high), (low, _) in zip(spans, spans[1:], strict=False))


@given(st.sets(st.integers(1, 2**32 - 1), max_size=30))
def test_formatted_sets_parse_back_to_the_same_numbers(numbers):
    if not numbers:
        return
    text = str(SequenceSet.of(numbers)).encode()
    parsed = args(b"a FETCH " + text + b" FLAGS").sequence
    assert all(parsed.contains(n, 1) for n in numbers)
    assert sum(high - low + 1 for low, high in parsed.resolve(1)) == len(numbers)


# -- mailbox names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("INBOX", "INBOX"),
        ("~peter/mail/&U,BTFw-/&ZeVnLIqe-", "~peter/mail/台北/日本語"),  # RFC 3501 5.1.3
        ("Tom &- Jerry", "Tom & Jerry"),
        ("&AOk-t&AOk-", "été"),
        ("&2D3eAA-", "\U0001f600"),  # beyond the BMP: a surrogate pair in UTF-16
    ],
)
def test_modified_utf7_names_decode_and_encode_back(raw, name):
    assert decode_mailbox_name(raw, utf8=False) == name
    assert mailbox_name(name, utf8=False) == astring(raw)


@pytest.mark.parametrize(
    "raw",
    [
        "Tom & Jerry",  # a bare "&"
        "&AGEAYgBj-",  # printable ASCII encoded
        "&AOk-&AOk-",  # one run split in two
        "&AOl-",  # non-zero padding bits
        "&AO-",  # half a UTF-16 unit
        "&2D0-",  # a lone surrogate
        "&AOk",  # no closing "-"
        "été",  # 8-bit without UTF8=ACCEPT
        "tab\there",
    ],
)
def test_invalid_modified_utf7_is_refused(raw):
    with pytest.raises(ValueError):
        decode_mailbox_name(raw, utf8=False)


def test_utf8_mailbox_names_pass_as_they_are():
    assert decode_mailbox_name("&AOk-", utf8=True) == "&AOk-"
    assert mailbox_name("été", utf8=True) == '"été"'.encode()
    assert mailbox_name("INBOX", utf8=True) == b"INBOX"


@given(st.text())
def test_any_name_survives_modified_utf7(name):
    try:
        encoded = mailbox_name(name, utf8=False)
    except ValueError:  # lone surrogates have no UTF-16 form
        return
    assert args(b"a SUBSCRIBE " + encoded) == MailboxArgs(
        "INBOX" if name.upper() == "INBOX" else name
    )


# -- response formatting ----------------------------------------------------------------


def test_astring_chooses_atom_quoted_or_literal():
    assert astring("INBOX") == b"INBOX"
    assert astring("a]b") == b"a]b"
    assert astring("") == b'""'
    assert astring("two words") == b'"two words"'
    assert astring('say "hi" \\') == b'"say \\"hi\\" \\\\"'
    assert astring("a%b") == b'"a%b"'
    assert astring("line\r\nbreak") == b"{11}\r\nline\r\nbreak"
    assert astring("été") == b"{5}\r\n\xc3\xa9t\xc3\xa9"
    assert astring("été", utf8=True) == '"été"'.encode()
    assert astring(b"\xff", utf8=True) == b"{1}\r\n\xff"  # not UTF-8: a literal anyway


def test_nstring_never_sends_an_atom():
    assert nstring(None) == b"NIL"
    assert nstring("NIL") == b'"NIL"'
    assert nstring(b"") == b'""'


def test_nul_cannot_be_sent_in_a_string():
    with pytest.raises(ValueError):
        string("a\0b")
    with pytest.raises(ValueError):
        quoted("a\nb")


def test_literal_headers():
    assert literal_header(0) == b"{0}\r\n"
    assert literal_header(12, binary=True) == b"~{12}\r\n"


@given(st.text().filter(lambda text: "\0" not in text), st.booleans())
def test_astring_round_trips_through_the_parser(text, utf8):
    line = b"a LOGIN " + astring(text, utf8) + b" " + string(text, utf8)
    assert args(line, utf8=utf8) == LoginArgs(text, text)


@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\0")))
def test_quoted_round_trips_through_the_parser(text):
    assert args(b"a LOGIN " + quoted(text) + b" x") == LoginArgs(text, "x")


@given(st.binary())
def test_literal_round_trips_any_octets(data):
    message = args(b"a APPEND INBOX " + literal_header(len(data), binary=True) + data).messages[0]
    assert message.data == data and message.binary
    if b"\0" not in data:
        message = args(b"a APPEND INBOX " + literal_header(len(data)) + data).messages[0]
        assert message.data == data and not message.binary


# -- hostile input ----------------------------------------------------------------------

TOKENS = st.sampled_from(
    [
        b"a",
        b" ",
        b"(",
        b")",
        b"[",
        b"]",
        b"<",
        b">",
        b'"',
        b"\\",
        b"{3}\r\n",
        b"~{2+}\r\n",
        b"{99999999999999999999}\r\n",
        b"*",
        b"$",
        b"%",
        b":",
        b",",
        b".",
        b"0",
        b"1",
        b"4294967296",
        b"UID",
        b"FETCH",
        b"SEARCH",
        b"STORE",
        b"APPEND",
        b"LIST",
        b"SELECT",
        b"LOGIN",
        b"ID",
        b"NOT",
        b"OR",
        b"BODY.PEEK",
        b"HEADER.FIELDS",
        b"RETURN",
        b"CHARSET",
        b"QRESYNC",
        b"MODSEQ",
        b"NIL",
        b"\xff",
        b"\0",
        b"\r\n",
        b"&",
        b"-",
    ]
)


@given(st.binary())
def test_arbitrary_bytes_raise_only_parse_error(data):
    with contextlib.suppress(ParseError):
        parse_command(data)


@given(st.lists(TOKENS, max_size=40), st.booleans())
def test_arbitrary_token_soup_raises_only_parse_error(tokens, utf8):
    with contextlib.suppress(ParseError):
        parse_command(b"t " + b"".join(tokens), utf8=utf8)
