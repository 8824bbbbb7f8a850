"""SEARCH text: header fields and bodies decoded as a user reads them, then compared."""

from __future__ import annotations

import base64
import quopri
import time
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.message.structure import analyze
from appliance.message.text import (
    body_contains,
    header_contains,
    header_values,
    search_key,
    text_contains,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def values(message: bytes, name: str) -> list[str]:
    return header_values(message, analyze(message), name)


def header_has(message: bytes, name: str, needle: str) -> bool:
    return header_contains(message, analyze(message), name, search_key(needle))


def body_has(message: bytes | memoryview, needle: str) -> bool:
    return body_contains(message, analyze(message), search_key(needle))


def text_has(message: bytes | memoryview, needle: str) -> bool:
    return text_contains(message, analyze(message), search_key(needle))


def text_part(body: bytes, charset: str | None = None, encoding: str | None = None) -> bytes:
    """A one-part message whose body is `body` as written, with the given labels."""
    head = b"Subject: part\r\nContent-Type: text/plain"
    if charset is not None:
        head += b"; charset=" + charset.encode()
    head += b"\r\n"
    if encoding is not None:
        head += b"Content-Transfer-Encoding: " + encoding.encode() + b"\r\n"
    return head + b"\r\n" + body


def encoded(text: str, charset: str, encoding: str) -> bytes:
    """A one-part message holding `text` in `charset`, transfer-encoded."""
    octets = text.encode(charset)
    if encoding == "base64":
        body = base64.encodebytes(octets).replace(b"\n", b"\r\n")
    elif encoding == "quoted-printable":
        body = quopri.encodestring(octets).replace(b"\n", b"\r\n")
    else:
        body = octets
    return text_part(body, charset, encoding)


MIXED = crlf(
    "From: Alice <alice@example.org>\n"
    "Subject: =?utf-8?q?Caf=C3=A9_menu?=\n"
    "MIME-Version: 1.0\n"
    "Content-Type: multipart/mixed; boundary=outer\n"
    "\n"
    "preamble words\n"
    "--outer\n"
    "Content-Type: text/plain\n"
    "\n"
    "plain words\n"
    "--outer\n"
    "Content-Type: application/octet-stream\n"
    "X-Part-Note: part header words\n"
    "\n"
    "octet words\n"
    "--outer\n"
    'Content-Type: application/pdf; name="report.pdf"\n'
    "Content-Transfer-Encoding: base64\n"
    'Content-Disposition: attachment; filename="report.pdf"\n'
    "\n" + base64.b64encode(b"pdf words").decode() + "\n"
    "--outer\n"
    "Content-Type: message/rfc822\n"
    "\n"
    "From: Carol <carol@example.net>\n"
    "Subject: forwarded subject words\n"
    "\n"
    "forwarded body words\n"
    "--outer\n"
    "Content-Type: message/delivery-status\n"
    "\n"
    "Reporting-MTA: dns; status words\n"
    "--outer--\n"
    "epilogue words\n"
)


# ---------------------------------------------------------------------------
# search_key: how strings compare


def test_search_key_folds_case_and_compatibility_forms():
    assert search_key("HeLLo") == "hello"
    assert search_key("STRASSE") == search_key("straße")
    assert search_key("ﬁne") == "fine"  # the ligature is two letters
    assert search_key("ＡＢＣ") == "abc"  # full-width forms
    assert search_key("Café") == search_key("cafe\u0301")  # composed or not


@pytest.mark.parametrize(
    ("needle", "found"),
    [
        ("Köln", True),
        ("koln", True),
        ("KÖLN", True),
        ("grusse", True),  # ß folds to ss and the diaeresis is ignored
        ("GRÜSSE", True),
        ("resume", True),
        ("köl", True),
        ("kolm", False),
        ("grüsse aus k", True),
    ],
)
def test_accents_and_case_are_ignored_in_both_directions(needle, found):
    message = encoded("Grüße aus Köln, résumé attached", "utf-8", "8bit")
    assert body_has(message, needle) is found


def test_unaccented_text_is_found_by_an_accented_needle():
    assert body_has(text_part(b"Koln and cafe"), "Köln")
    assert body_has(text_part(b"Koln and cafe"), "CAFÉ")


def test_marks_of_other_scripts_are_compared():
    # Hebrew points are not Latin diacritics: a pointed word is not the bare one.
    message = encoded("שָׁלוֹם", "utf-8", "8bit")
    assert body_has(message, "שָׁלוֹם")
    assert not body_has(message, "שלום")


def test_needle_of_marks_only_is_looked_for_as_it_is():
    message = encoded("cafe\u0301", "utf-8", "8bit")
    assert body_has(message, "\u0301")
    assert not body_has(text_part(b"cafe"), "\u0301")


# ---------------------------------------------------------------------------
# Header values


def test_encoded_words_are_decoded_in_b_and_q_and_several_charsets():
    message = crlf(
        "Subject: =?UTF-8?B?w5xiZXJzZWVob3RlbA==?=\n"
        "Subject: =?iso-8859-1?q?=E9t=E9_=E0_Paris?=\n"
        "Subject: =?windows-1251?b?z/Do4uXy?=\n"
        "Subject: =?iso-2022-jp?b?GyRCRnxLXDhsGyhC?=\n"
        "\n"
    )
    assert values(message, "subject") == ["Überseehotel", "été à Paris", "Привет", "日本語"]


def test_space_between_adjacent_encoded_words_is_dropped_but_not_around_text():
    message = crlf("Subject: =?utf-8?q?one?= =?utf-8?q?two?=  plain =?utf-8?q?three?=\n\n")
    assert values(message, "Subject") == ["onetwo  plain three"]


def test_character_split_over_two_encoded_words_survives():
    # "é" is C3 A9 in UTF-8; a mailer cut the word between the two octets.
    message = crlf("Subject: =?utf-8?q?caf=C3?=\n =?utf-8?q?=A9?= ok\n\n")
    assert values(message, "subject") == ["café ok"]


def test_adjacent_words_in_different_charsets_are_each_decoded():
    message = crlf("Subject: =?utf-8?q?caf=C3=A9?= =?iso-8859-1?q?_na=EFve?=\n\n")
    assert values(message, "subject") == ["café naïve"]


def test_folded_field_is_unfolded_and_trimmed():
    message = crlf("Subject:   first line\n\tsecond line\n   third  \n\n")
    assert values(message, "subject") == ["first line\tsecond line   third"]
    assert header_has(message, "subject", "line\tsecond")


def test_field_name_is_matched_without_regard_to_case_and_every_occurrence_counts():
    message = crlf("X-Tag: one\nx-TAG: two\nX-Tagged: no\n\nbody\n")
    assert values(message, "x-tag") == ["one", "two"]
    assert header_has(message, "X-TAG", "TWO")
    assert not header_has(message, "x-tag", "no")


def test_header_values_are_those_of_the_message_not_of_its_parts():
    assert values(MIXED, "subject") == ["Café menu"]
    assert values(MIXED, "x-part-note") == []
    assert not header_has(MIXED, "subject", "forwarded")


def test_undecodable_words_stay_as_written():
    message = crlf(
        "Subject: =?x-no-such-charset?q?abc?= =?utf-8?b?!!!?= =?utf-8?b?QUJDR?= "
        "=?base64?q?abc?= =?utf-8?x?abc?=\n\n"
    )
    assert values(message, "subject") == [
        "=?x-no-such-charset?q?abc?= =?utf-8?b?!!!?= =?utf-8?b?QUJDR?= "
        "=?base64?q?abc?= =?utf-8?x?abc?="
    ]


def test_q_word_keeps_an_invalid_escape_and_b_word_may_lack_padding():
    message = crlf("Subject: =?utf-8?q?100=ZZ_sure?= =?utf-8?b?w6k?=\n\n")
    assert values(message, "subject") == ["100=ZZ sureé"]


def test_charset_with_language_suffix_is_understood():
    # RFC 2231 5: charset*language inside an encoded-word.
    assert values(crlf("Subject: =?utf-8*fr?q?=C3=A9t=C3=A9?=\n\n"), "subject") == ["été"]


def test_raw_eight_bit_header_is_utf8_or_else_windows_1252():
    message = b"Subject: caf\xc3\xa9\r\nX-Old: caf\xe9 \x80\r\n\r\n"
    assert values(message, "subject") == ["café"]
    assert values(message, "x-old") == ["café €"]


def test_empty_needle_matches_a_message_that_has_the_field_whatever_its_value():
    message = crlf("Subject:\nX-Empty: \n\nbody\n")
    assert header_has(message, "subject", "")
    assert header_has(message, "x-empty", "")
    assert not header_has(message, "x-absent", "")
    assert not header_has(crlf("\nbody only\n"), "subject", "")


def test_empty_name_means_any_field():
    message = crlf("From: alice@example.org\nX-Thing: needle here\n\nbody words\n")
    assert header_has(message, "", "needle")
    assert header_has(message, "", "")
    assert not header_has(message, "", "body words")
    assert not header_has(crlf("\nno fields\n"), "", "")


@pytest.mark.parametrize("name", ["sub ject", "subject:", "subjéct", "\n"])
def test_name_that_no_field_can_have_matches_nothing(name):
    message = crlf("Subject: anything\n\n")
    assert not header_has(message, name, "")
    assert values(message, name) == []


def test_field_without_blank_line_after_the_header_is_still_a_field():
    assert values(b"Subject: only a header", "subject") == ["only a header"]


# ---------------------------------------------------------------------------
# Bodies


@pytest.mark.parametrize("encoding", ["7bit", "8bit", "base64", "quoted-printable"])
@pytest.mark.parametrize("charset", ["utf-8", "iso-8859-15", "windows-1252", "utf-16", "utf-7"])
def test_text_is_found_whatever_its_charset_and_transfer_encoding(charset, encoding):
    message = encoded("Déjà vu: l'œuvre coûte 5 € au café\n", charset, encoding)
    assert body_has(message, "déjà vu")
    assert body_has(message, "L'ŒUVRE COÛTE")
    assert body_has(message, "oeuvre") is False  # œ is a letter, not a ligature
    assert body_has(message, "5 €")
    assert not body_has(message, "déjà bu")


@pytest.mark.parametrize(
    ("text", "charset", "needle"),
    [
        ("東京の天気は晴れです", "iso-2022-jp", "天気"),
        ("東京の天気は晴れです", "shift_jis", "天気"),
        ("東京の天気は晴れです", "euc-jp", "天気"),
        ("北京欢迎你", "gb2312", "欢迎"),
        ("서울에 오신 것을 환영합니다", "euc-kr", "환영"),
        ("Привет, мир", "koi8-r", "МИР"),
        ("Привет, мир", "windows-1251", "привет"),
        ("Γειά σου Κόσμε", "iso-8859-7", "κοσμε"),
    ],
)
def test_text_in_legacy_charsets_is_found_by_a_utf8_needle(text, charset, needle):
    for encoding in ("8bit", "base64", "quoted-printable"):
        assert body_has(encoded(text, charset, encoding), needle), encoding


def test_iso_8859_1_label_is_read_as_windows_1252():
    # Mail labelled ISO-8859-1 uses 0x80 for the euro sign and 0x93/0x94 for quotes.
    message = text_part(b"price \x80 5, \x93quoted\x94", "iso-8859-1")
    assert body_has(message, "€ 5")
    assert body_has(message, "“quoted”")


def test_us_ascii_part_with_eight_bit_octets_is_read_as_utf8():
    message = text_part("naïve".encode(), "us-ascii")
    assert body_has(message, "naïve")
    assert body_has(message, "naive")


def test_unknown_or_missing_charset_is_read_as_utf8():
    assert body_has(text_part("crème brûlée".encode(), "x-martian"), "brûlée")
    assert body_has(text_part("crème brûlée".encode()), "CRÈME")


@pytest.mark.parametrize("charset", ["base64", "zlib", "idna", "unicode_escape", "rot13", "x" * 99])
def test_codec_that_is_not_a_charset_is_ignored(charset):
    # Each of these would mean something odd to Python's codecs, not to mail.
    message = text_part(b"hello \\u0041 world", charset)
    assert body_has(message, "hello \\u0041")
    assert not body_has(message, "hello a")


def test_part_in_an_unknown_transfer_encoding_is_not_searched():
    # RFC 2045 6.4: treat it as application/octet-stream (Dovecot skips it too).
    message = text_part(b"begin 644 words\r\n", "utf-8", "x-uuencode")
    assert not body_has(message, "644 words")
    assert text_has(message, "x-uuencode")
    assert body_has(text_part(b"begin 644 words\r\n", "utf-8", "8BIT"), "644 words")


def test_encoded_message_part_is_searched_as_text():
    inner = base64.encodebytes(b"Subject: inner\r\n\r\nencoded inner words\r\n")
    message = b"Content-Type: message/global\r\nContent-Transfer-Encoding: base64\r\n\r\n" + inner
    assert body_has(message, "encoded inner words")


def test_quoted_printable_soft_breaks_and_trailing_space_are_undone():
    body = b"a long sen=\r\ntence   \r\nnext=20\r\nline=\r\n"
    message = text_part(body, "utf-8", "quoted-printable")
    assert body_has(message, "long sentence\r\nnext \r\nline")
    assert not body_has(message, "sentence  ")


def test_base64_with_junk_and_a_cut_off_last_group_is_decoded():
    payload = base64.b64encode(b"the hidden treasure").decode()
    # Cut three letters from the end: a lone sextet is left, which is no octet.
    body = ("!!" + payload[:10] + "\r\n*\r\n" + payload[10:-3]).encode()
    message = text_part(body, "utf-8", "base64")
    assert body_has(message, "the hidden treasur")
    assert not body_has(message, "treasure")


def test_only_text_and_message_leaf_parts_are_searched_by_body():
    structure = analyze(MIXED)
    found = {
        words: body_contains(MIXED, structure, search_key(words))
        for words in (
            "plain words",
            "forwarded body words",
            "status words",
            "octet words",
            "pdf words",
            "preamble words",
            "epilogue words",
        )
    }
    assert found == {
        "plain words": True,
        "forwarded body words": True,
        "status words": True,  # message/delivery-status is text to a reader
        "octet words": False,  # not text, even unencoded (RFC 3501 6.4.4 MAY)
        "pdf words": False,
        "preamble words": False,  # RFC 2046 5.1.1: ignored
        "epilogue words": False,
    }


def test_body_matches_no_header_field_anywhere():
    # RFC 9051 6.4.4: BODY "doesn't match any header fields": not the
    # message's, not a part's, not an encapsulated message's.
    for words in ("Café menu", "part header words", "report.pdf", "forwarded subject words"):
        assert not body_has(MIXED, words), words


def test_text_matches_every_header_and_what_body_matches():
    for words in (
        "café menu",  # decoded
        "subject: café",  # a field is searched as "Name: value"
        "MIME-Version",
        "part header words",  # MIME header of a part
        'filename="report.pdf"',
        "Carol <carol@example.net>",  # header of the encapsulated message
        "plain words",
        "forwarded body words",
    ):
        assert text_has(MIXED, words), words
    for words in ("octet words", "pdf words", "preamble words", "nowhere at all"):
        assert not text_has(MIXED, words), words


def test_text_decodes_encoded_words_in_every_header():
    message = crlf(
        "Subject: plain\n"
        "Content-Type: multipart/mixed; boundary=b\n"
        "\n"
        "--b\n"
        "Content-Type: text/plain\n"
        "Content-Description: =?utf-8?q?r=C3=A9sum=C3=A9?=\n"
        "\n"
        "body\n"
        "--b--\n"
    )
    assert text_has(message, "Résumé")
    assert text_has(message, "description: resume")
    assert not text_has(message, "=c3=a9")


def test_multipart_without_its_boundary_is_not_searched():
    message = crlf("Content-Type: multipart/mixed; boundary=never\n\nlost words\n")
    assert not body_has(message, "lost words")


def test_message_without_content_type_is_text():
    assert body_has(crlf("Subject: s\n\nplain body\n"), "PLAIN BODY")
    assert not body_has(crlf("Subject: s\n\nplain body\n"), "subject")


def test_empty_needle_matches_every_message():
    for message in (MIXED, b"", crlf("Content-Type: image/png\n\n\x89PNG\n")):
        assert body_has(message, "")
        assert text_has(message, "")


def test_message_given_as_memoryview_reads_the_same():
    view = memoryview(bytearray(MIXED))
    assert body_has(view, "plain words")
    assert text_has(view, "carol@example.net")
    assert header_values(view, analyze(view), "subject") == ["Café menu"]


def test_deeply_nested_messages_are_searched_without_recursion():
    depth = 90
    message = (
        b"Content-Type: message/rfc822\r\n\r\n" * depth + b"Subject: deep\r\n\r\nbottom words\r\n"
    )
    structure = analyze(message)
    assert body_contains(message, structure, search_key("bottom words"))
    assert text_contains(message, structure, search_key("subject: deep"))


# ---------------------------------------------------------------------------
# The fast path agrees with decoding


NEEDLE_CHARACTERS = "abcdefghijklmnopqrstuvwxyzABCKST ;.-\r\n"
TEXT_CHARACTERS = NEEDLE_CHARACTERS + "éÉèßẞﬁﬀÅåÖöİıǅ\u0301\u0308\u212aＡａ€“”\ufffdǰ"


def decoded_reference(text: str, needle: str) -> bool:
    """What the module docstring promises: NFKD, case folding, Latin marks ignored."""

    def key(value: str) -> str:
        folded = unicodedata.normalize("NFKD", value).casefold()
        return "".join(c for c in folded if not 0x300 <= ord(c) <= 0x36F)

    return key(needle) in key(text)


@settings(max_examples=400, deadline=None)
@given(st.text(TEXT_CHARACTERS, max_size=60), st.text(NEEDLE_CHARACTERS, min_size=1, max_size=6))
def test_undecoded_search_agrees_with_decoded_search(text, needle):
    identity = encoded(text, "utf-8", "8bit")
    decoded = encoded(text, "utf-8", "base64")
    expected = decoded_reference(text, needle)
    assert body_has(identity, needle) is expected
    assert body_has(decoded, needle) is expected


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.text(NEEDLE_CHARACTERS, min_size=1, max_size=4))
def test_undecoded_search_agrees_on_octets_that_are_not_utf8(octets, needle):
    identity = text_part(octets, "utf-8", "binary")
    decoded = text_part(base64.encodebytes(octets), "utf-8", "base64")
    assert body_has(identity, needle) is body_has(decoded, needle)
    latin = text_part(octets, "iso-8859-2")
    latin_decoded = text_part(base64.encodebytes(octets), "iso-8859-2", "base64")
    assert body_has(latin, needle) is body_has(latin_decoded, needle)


# ---------------------------------------------------------------------------
# Large and hostile input


CHUNK = 256 * 1024  # the module's slice size; matches must survive its edges


@pytest.mark.parametrize("encoding", ["8bit", "base64", "quoted-printable"])
@pytest.mark.parametrize("shift", [-7, -3, 0, 5])
@pytest.mark.parametrize("initial", ["U", "Ü"])  # all ASCII (undecoded search) or not
def test_match_across_slice_boundaries_is_found(encoding, shift, initial):
    # The needle sits across the first slice edge of the raw or decoded text.
    filler = "x" * (CHUNK - 20 + shift)
    text = filler + initial + "nique needle straddles" + "y" * 100
    message = encoded(text, "utf-8", encoding)
    assert body_has(message, "unique needle straddles")
    assert not body_has(message, "unique needle wanders")


def test_match_across_slice_boundary_in_one_long_quoted_printable_line():
    # No line end for 600 KiB: slices are cut inside the line and inside escapes.
    body = b"=41" * (200 * 1024) + b"=C3=A9t=C3=A9 end"
    message = text_part(body, "utf-8", "quoted-printable")
    assert body_has(message, "aaaaété end")
    assert not body_has(message, "a=41")


def test_huge_base64_part_is_searched_in_bounded_time():
    payload = bytes(range(256)) * (24 * 1024) + "the end été".encode()  # 6 MiB
    body = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    message = text_part(body, "utf-8", "base64")
    structure = analyze(message)
    started = time.monotonic()
    assert body_contains(message, structure, search_key("THE END ETE"))
    assert not body_contains(message, structure, search_key("not in there"))
    assert time.monotonic() - started < 20


def test_ten_thousand_encoded_words_decode_in_bounded_time():
    words = " ".join(["=?utf-8?q?caf=C3=A9?="] * 10_000)
    hostile = " ".join(["=?x-bad?q?a?= =?utf-8?b?#?= =?utf-8?q?"] * 10_000)
    message = ("Subject: " + words + "\r\nX-Junk: " + hostile + "\r\n\r\nbody").encode()
    structure = analyze(message)
    started = time.monotonic()
    subject = header_values(message, structure, "subject")[0]
    assert subject == "café" * 10_000  # adjacent words join
    assert header_contains(message, structure, "x-junk", search_key("=?x-bad?q?a?="))
    assert text_contains(message, structure, search_key("=?utf-8?b?#?="))
    assert not text_contains(message, structure, search_key("absent"))
    assert time.monotonic() - started < 10


def test_header_without_end_and_lines_without_fields_do_not_break_text():
    message = b"not a field\r\n: no name\r\nSubject: ok\r\n" + b"x" * 100_000
    structure = analyze(message)
    assert text_contains(message, structure, search_key("not a field"))
    assert header_values(message, structure, "subject")[0].startswith("ok")
    assert body_contains(message, structure, search_key("")) is True


MIME_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"Content-Type: text/plain; charset=utf-16\r\n",
        b"Content-Type: text/plain; charset=iso-2022-jp\r\n",
        b"Content-Type: text/plain; charset=unicode_escape\r\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b"Content-Transfer-Encoding: quoted-printable\r\n",
        b"Subject: =?utf-8?b?w6k?= =?utf-16?q?=00a=D8?= =?bogus?b?x?=\r\n",
        b"\r\n",
        b"--b\r\n",
        b"--b--\r\n",
        b"=\r\n",
        b"=C3=\r\n",
        b"\xe9\xff\x00 text\r\n",
        b"QUJD\r\n",
        b"\\u12",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=400), st.lists(MIME_PIECES, max_size=30).map(b"".join)),
    st.text(max_size=5),
)
def test_any_octets_give_an_answer_and_no_exception(message, needle):
    structure = analyze(message)
    key = search_key(needle)
    assert isinstance(body_contains(message, structure, key), bool)
    assert isinstance(text_contains(message, structure, key), bool)
    assert isinstance(header_contains(message, structure, "subject", key), bool)
    assert all(isinstance(value, str) for value in header_values(message, structure, ""))
    if body_contains(message, structure, key):
        assert text_contains(message, structure, key)  # TEXT searches all BODY does
