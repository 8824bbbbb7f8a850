"""MIME structure computed once: ENVELOPE, BODYSTRUCTURE, sections and BINARY from it."""

from __future__ import annotations

import base64
import time

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.message.structure import (
    MISSING_DOMAIN,
    MISSING_MAILBOX,
    RECORD_VERSION,
    Address,
    Part,
    RecordError,
    Structure,
    StructureLimits,
    UnknownTransferEncoding,
    analyze,
    binary_section,
    binary_size,
    bodystructure,
    envelope,
    section_ranges,
    slice_ranges,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


def join(message: bytes, ranges: list[tuple[int, int]]) -> bytes:
    return b"".join(message[start:end] for start, end in ranges)


def section(message: bytes, part: tuple[int, ...] = (), text: str | None = None, fields=()):
    return join(message, section_ranges(analyze(message), message, part, text, fields))


def parse_imap(data: bytes):
    """One IMAP value (list, NIL, number, quoted string, literal), all of `data`.

    Lists become Python lists, strings bytes, NIL None. Anything unbalanced
    or left over fails, which is what the property tests rely on.
    """
    value, end = _imap_value(data, 0)
    assert end == len(data), f"left over: {data[end:]!r}"
    return value


def _imap_value(data: bytes, i: int):
    if data[i : i + 1] == b"(":
        items, i = [], i + 1
        while data[i : i + 1] != b")":
            assert i < len(data), "unclosed list"
            if items and data[i : i + 1] == b" ":
                i += 1
            item, i = _imap_value(data, i)
            items.append(item)
        return items, i + 1
    if data.startswith(b"NIL", i):
        return None, i + 3
    if data[i : i + 1] == b'"':
        out, i = bytearray(), i + 1
        while data[i : i + 1] != b'"':
            assert i < len(data) and data[i] not in b"\r\n\0", "bad quoted string"
            if data[i : i + 1] == b"\\":
                i += 1
            out.append(data[i])
            i += 1
        return bytes(out), i + 1
    if data[i : i + 1] == b"{":
        close = data.index(b"}\r\n", i)
        length = int(data[i + 1 : close])
        start = close + 3
        assert start + length <= len(data), "short literal"
        return data[start : start + length], start + length
    end = i
    while end < len(data) and data[end : end + 1].isdigit():
        end += 1
    assert end > i, f"unexpected {data[i : i + 10]!r}"
    return int(data[i:end]), end


def lines_body(octets: int, lines: int) -> bytes:
    """A text body of exactly `octets` octets and `lines` CRLF-ended lines."""
    width, extra = divmod(octets - 2 * lines, lines)
    return b"".join(b"x" * (width + (n < extra)) + b"\r\n" for n in range(lines))


# RFC 3501 6.4.5 and 8: the header of the example session, which is 342
# octets there too ("BODY[HEADER] {342}").
RFC3501_HEADER = crlf(
    """Date: Wed, 17 Jul 1996 02:23:25 -0700 (PDT)
From: Terry Gray <gray@cac.washington.edu>
Subject: IMAP4rev1 WG mtg summary and minutes
To: imap@cac.washington.edu
cc: minutes@CNRI.Reston.VA.US, John Klensin <KLENSIN@MIT.EDU>
Message-Id: <B27397-0100000@cac.washington.edu>
MIME-Version: 1.0
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII

"""
)
RFC3501_MESSAGE = RFC3501_HEADER + lines_body(3028, 92)

ALTERNATIVE = crlf(
    """From: Ann Example <ann@example.test>
To: bob@example.test
Subject: Lunch
Date: Tue, 4 Mar 2025 10:00:00 +0100
Message-ID: <lunch@example.test>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="alt-1"

This is a multi-part message in MIME format.
--alt-1
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 7bit

Noon at the usual place?
--alt-1
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: quoted-printable

<p>Noon at the usual place?</p>
--alt-1--
"""
)

PDF = bytes(range(256)) * 8
PDF_BASE64 = base64.encodebytes(PDF).replace(b"\n", b"\r\n")
MIXED = (
    crlf(
        """From: ann@example.test
To: bob@example.test
Subject: Report
MIME-Version: 1.0
Content-Type: multipart/mixed;
 boundary="----=_Part_0"

------=_Part_0
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Caf=E9 au lait, see attached.\x20\t
A long line that is soft-broken here =
and continues.
------=_Part_0
Content-Type: application/pdf;
 name*0="quarterly-";
 name*1="report.pdf"
Content-Transfer-Encoding: base64
Content-Disposition: attachment;
 filename*0*=UTF-8''Quartalsbericht%20;
 filename*1*=%E2%80%94%20Q3;
 filename*2=".pdf"; size=2048
Content-ID: <report@example.test>

"""
    )
    + PDF_BASE64
    + crlf(
        """------=_Part_0
Content-Type: text/x-unknown; charset=us-ascii
Content-Transfer-Encoding: x-uuencode
Content-Description: old style

begin 644 x
------=_Part_0--
"""
    )
)

NESTED = crlf(
    """From: ann@example.test
Subject: nested
Content-Type: multipart/mixed; boundary=outer

--outer
Content-Type: multipart/alternative; boundary=inner

--inner
Content-Type: text/plain

plain
--inner
Content-Type: text/html

<b>html</b>
--inner--
--outer
Content-Type: image/png
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--outer--
"""
)

FORWARDED = crlf(
    """From: Ann Example <ann@example.test>
To: bob@example.test
Subject: Lunch
Message-ID: <lunch@example.test>
Content-Type: multipart/alternative; boundary=alt

--alt
Content-Type: text/plain

Noon?
--alt
Content-Type: text/html

<p>Noon?</p>
--alt--
"""
)
FORWARD = (
    crlf(
        """From: bob@example.test
To: ann@example.test
Subject: Fwd: Lunch
Content-Type: multipart/mixed; boundary=fwd

--fwd
Content-Type: text/plain

See below.
--fwd
Content-Type: message/rfc822
Content-Description: forwarded

"""
    )
    + FORWARDED
    + crlf("\n--fwd--\n")
)

DIGEST = crlf(
    """From: list@example.test
Subject: Digest 12
Content-Type: multipart/digest; boundary=d

--d

From: one@example.test
Subject: first

one
--d
Content-Type: text/plain

table of contents
--d

From: two@example.test
Subject: second

two
--d--
"""
)


# ENVELOPE and BODY against the examples of the RFC


def test_rfc3501_example_message_gives_the_example_envelope_and_body():
    structure = analyze(RFC3501_MESSAGE)

    assert envelope(structure) == (
        b'("Wed, 17 Jul 1996 02:23:25 -0700 (PDT)" "IMAP4rev1 WG mtg summary and minutes"'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' (("Terry Gray" NIL "gray" "cac.washington.edu"))'
        b' ((NIL NIL "imap" "cac.washington.edu"))'
        b' ((NIL NIL "minutes" "CNRI.Reston.VA.US")("John Klensin" NIL "KLENSIN" "MIT.EDU"))'
        b' NIL NIL "<B27397-0100000@cac.washington.edu>")'
    )
    # The example's server wrote the absent encoding's default as "7BIT";
    # like Dovecot we write defaults in lower case, the rest is octet-exact.
    assert bodystructure(structure, extensible=False) == (
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7bit" 3028 92)'
    )
    assert section(RFC3501_MESSAGE, text="HEADER") == RFC3501_HEADER
    assert len(RFC3501_HEADER) == 342


def test_rfc3501_example_multipart_gives_the_example_bodystructure():
    message = (
        crlf(
            """Content-Type: MULTIPART/MIXED; BOUNDARY="cc-diff"

--cc-diff
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII
Content-Transfer-Encoding: 7BIT

"""
        )
        + lines_body(1152, 23)
        + crlf(
            """
--cc-diff
Content-Type: TEXT/PLAIN; CHARSET=US-ASCII; NAME=cc.diff
Content-ID: <960723163407.20117h@cac.washington.edu>
Content-Description: Compiler diff
Content-Transfer-Encoding: BASE64

"""
        )
        + lines_body(4554, 73)
        + crlf("\n--cc-diff--\n")
    )

    assert bodystructure(analyze(message), extensible=False) == (
        b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1152 23)'
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII" "NAME" "cc.diff")'
        b' "<960723163407.20117h@cac.washington.edu>" "Compiler diff" "BASE64" 4554 73)'
        b' "MIXED")'
    )


# BODYSTRUCTURE of ordinary mail


def test_plain_text_without_mime_fields_is_us_ascii_text_plain():
    message = crlf("From: ann@example.test\nSubject: hi\n\nline one\nline two\n")

    assert bodystructure(analyze(message), extensible=True) == (
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 20 2 NIL NIL NIL NIL)'
    )


def test_multipart_alternative_lists_both_parts_and_the_boundary():
    structure = analyze(ALTERNATIVE)

    assert bodystructure(structure, extensible=True) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 24 0 NIL NIL NIL NIL)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 31 0 NIL NIL NIL NIL)'
        b' "alternative" ("boundary" "alt-1") NIL NIL NIL)'
    )
    assert bodystructure(structure, extensible=False) == (
        b'(("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 24 0)'
        b'("text" "html" ("charset" "utf-8") NIL NIL "quoted-printable" 31 0) "alternative")'
    )
    # The line end before a delimiter belongs to the delimiter (RFC 2046 5.1.1).
    assert section(ALTERNATIVE, (1,)) == b"Noon at the usual place?"
    assert section(ALTERNATIVE, (2,)) == b"<p>Noon at the usual place?</p>"
    assert section(ALTERNATIVE, (2,), "MIME") == crlf(
        "Content-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n"
    )


def test_attachments_keep_rfc2231_sections_joined_and_encoded():
    structure = analyze(MIXED)
    text, pdf, old = structure.root.children

    assert text.encoding == "quoted-printable"
    assert pdf.parameters == (("name", b"quarterly-report.pdf"),)
    assert pdf.disposition == "attachment"
    # Plain parameters first, then the joined RFC 2231 ones, as Dovecot orders them.
    assert pdf.disposition_parameters == (
        ("size", b"2048"),
        ("filename*", b"UTF-8''Quartalsbericht%20%E2%80%94%20Q3.pdf"),
    )
    assert pdf.id == b"<report@example.test>"
    assert old.description == b"old style"
    rendered = bodystructure(structure, extensible=True)
    assert (
        b'("application" "pdf" ("name" "quarterly-report.pdf") "<report@example.test>" NIL'
        b' "base64" %d NIL ("attachment" ("size" "2048" "filename*"'
        b" \"UTF-8''Quartalsbericht%%20%%E2%%80%%94%%20Q3.pdf\")) NIL NIL)" % (len(PDF_BASE64) - 2)
        # The CRLF before the delimiter is the delimiter's, not the attachment's.
    ) in rendered
    assert rendered.endswith(b' "mixed" ("boundary" "----=_Part_0") NIL NIL NIL)')


def test_nested_multipart_numbers_parts_within_parts():
    structure = analyze(NESTED)

    assert bodystructure(structure, extensible=False) == (
        b'((("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 11 0) "alternative")'
        b'("image" "png" NIL NIL NIL "base64" 12) "mixed")'
    )
    assert section(NESTED, (1, 1)) == b"plain"
    assert section(NESTED, (1, 2)) == b"<b>html</b>"
    assert section(NESTED, (2,)) == b"iVBORw0KGgo="
    assert section(NESTED, (1,)) == crlf(
        "--inner\nContent-Type: text/plain\n\nplain\n--inner\nContent-Type: text/html\n\n"
        "<b>html</b>\n--inner--"
    )
    assert section(NESTED, (1, 3)) == b""


def test_attached_message_has_envelope_body_and_its_own_parts():
    structure = analyze(FORWARD)
    rendered = bodystructure(structure, extensible=False)

    assert rendered == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 0)'
        b'("message" "rfc822" NIL NIL "forwarded" "7bit" %d'
        b' (NIL "Lunch" (("Ann Example" NIL "ann" "example.test"))'
        b' (("Ann Example" NIL "ann" "example.test")) (("Ann Example" NIL "ann" "example.test"))'
        b' ((NIL NIL "bob" "example.test")) NIL NIL NIL "<lunch@example.test>")'
        b' (("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 5 0)'
        b'("text" "html" ("charset" "us-ascii") NIL NIL "7bit" 12 0) "alternative") %d)'
        b' "mixed")' % (len(FORWARDED), FORWARDED.count(b"\n"))
    )
    forwarded = structure.root.children[1]
    assert section(FORWARD, (2,), "HEADER").startswith(b"From: Ann Example")
    assert section(FORWARD, (2,), "HEADER").endswith(b"boundary=alt\r\n\r\n")
    assert section(FORWARD, (2,), "TEXT").startswith(b"--alt\r\n")
    assert section(FORWARD, (2, 1)) == b"Noon?"
    assert section(FORWARD, (2, 2)) == b"<p>Noon?</p>"
    assert section(FORWARD, (2, 1), "MIME") == b"Content-Type: text/plain\r\n\r\n"
    assert section(FORWARD, (2,), "HEADER.FIELDS", [b"subject"]) == b"Subject: Lunch\r\n\r\n"
    assert section(FORWARD, (2,)) == FORWARDED
    assert join(FORWARD, [(forwarded.header_start, forwarded.body_start)]).startswith(
        b"Content-Type: message/rfc822"
    )


def test_digest_parts_without_content_type_are_messages():
    structure = analyze(DIGEST)
    first, contents, second = structure.root.children

    assert (first.type, first.subtype) == ("message", "rfc822")
    assert (contents.type, contents.subtype) == ("text", "plain")
    assert first.children[0].envelope.subject == b"first"
    assert second.children[0].envelope.from_ == (Address(None, None, b"two", b"example.test"),)
    assert section(DIGEST, (3, 1)) == b"two"
    assert section(DIGEST, (1,), "HEADER.FIELDS", ["SUBJECT"]) == b"Subject: first\r\n\r\n"
    assert bodystructure(structure, extensible=False).endswith(b' "digest")')


def test_message_global_is_a_message_only_for_imap4rev2():
    message = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\n"
        "Content-Type: message/global\n\nSubject: =?utf-8?q?x?=\n\nbody\n--b--\n"
    )
    structure = analyze(message)

    assert section(message, (1, 1)) == b"body"
    assert b'("message" "global" NIL NIL NIL "7bit" 30)' in bodystructure(structure, False)
    assert b'("message" "global" NIL NIL NIL "7bit" 30 (NIL "=?utf-8?q?x?="' in (
        bodystructure(structure, False, imap4rev2=True)
    )


# ENVELOPE


def test_envelope_reads_groups_quoted_names_routes_and_comments():
    message = crlf(
        'From: "Doe, Jane \\"JD\\"" <jane@example.test>\n'
        "To: Friends: ann@example.test, Bob <bob@example.test>;, undisclosed-recipients:;\n"
        "Cc: <@relay.example,@gw.example:carol@example.test>, dave@example.test (Dave D.)\n"
        "Bcc: erin\n"
        "Subject:\n"
        "\n"
    )
    structure = analyze(message)
    env = structure.root.envelope

    assert env.from_ == (Address(b'Doe, Jane "JD"', None, b"jane", b"example.test"),)
    assert env.to == (
        Address(None, None, b"Friends", None),
        Address(None, None, b"ann", b"example.test"),
        Address(b"Bob", None, b"bob", b"example.test"),
        Address(None, None, None, None),
        Address(None, None, b"undisclosed-recipients", None),
        Address(None, None, None, None),
    )
    assert env.cc == (
        Address(None, b"@relay.example,@gw.example", b"carol", b"example.test"),
        Address(b"Dave D.", None, b"dave", b"example.test"),
    )
    assert env.bcc == (Address(None, None, b"erin", MISSING_DOMAIN),)
    assert envelope(structure) == (
        b'(NIL "" (("Doe, Jane \\"JD\\"" NIL "jane" "example.test"))'
        b' (("Doe, Jane \\"JD\\"" NIL "jane" "example.test"))'
        b' (("Doe, Jane \\"JD\\"" NIL "jane" "example.test"))'
        b' ((NIL NIL "Friends" NIL)(NIL NIL "ann" "example.test")'
        b'("Bob" NIL "bob" "example.test")(NIL NIL NIL NIL)'
        b'(NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL))'
        b' ((NIL "@relay.example,@gw.example" "carol" "example.test")'
        b'("Dave D." NIL "dave" "example.test"))'
        b' ((NIL NIL "erin" "MISSING_DOMAIN")) NIL NIL)'
    )


def test_group_with_an_empty_name_still_starts_a_group():
    env = analyze(crlf('To: "": ann@example.test;\n\n')).root.envelope

    # Four NILs would end a group that never started.
    assert env.to == (
        Address(None, None, b"", None),
        Address(None, None, b"ann", b"example.test"),
        Address(None, None, None, None),
    )


def test_envelope_leaves_encoded_words_and_unfolds_lines():
    message = crlf(
        "Subject: =?UTF-8?B?SGVsbG8=?=\n =?UTF-8?Q?w=C3=B6rld?=\n"
        "From: =?ISO-8859-1?Q?J=F6rg?= <joerg@example.test>\n"
        "Sender: list@example.test\n"
        "Reply-To:\n"
        "In-Reply-To: <a@example.test>\n"
        "\n"
    )
    parsed = parse_imap(envelope(analyze(message)))

    assert parsed[1] == b"=?UTF-8?B?SGVsbG8=?= =?UTF-8?Q?w=C3=B6rld?="
    assert parsed[2] == [[b"=?ISO-8859-1?Q?J=F6rg?=", None, b"joerg", b"example.test"]]
    assert parsed[3] == [[None, None, b"list", b"example.test"]]
    assert parsed[4] == parsed[2]  # an empty Reply-To is From (RFC 3501 7.4.2)
    assert parsed[8] == b"<a@example.test>"


def test_missing_header_fields_are_nil():
    assert envelope(analyze(b"\r\nbody\r\n")) == (b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)")


def test_eight_bit_goes_out_as_literals_and_a_bare_cr_as_space():
    message = 'Subject: Grüße\nFrom: "Jörg" <jörg@bücher.example>\n\n'.encode()
    rendered = envelope(analyze(message))

    assert rendered.startswith(b"(NIL {7}\r\nGr\xc3\xbc\xc3\x9fe (({5}\r\nJ\xc3\xb6rg NIL {5}\r\n")
    assert parse_imap(rendered)[2] == [
        ["Jörg".encode(), None, "jörg".encode(), "bücher.example".encode()]
    ]
    # A CR that ends no line is white space, as Dovecot reads it.
    assert envelope(analyze(b"Subject: bare\rCR\r\n\r\n")).startswith(b'(NIL "bare CR" ')


# Choices made as Dovecot makes them (each found by tests/interop)


def test_encapsulated_message_type_is_written_in_lower_case():
    message = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\n"
        "Content-Type: Message/RFC822\n\nSubject: in\n\nbody\n--b--\n"
    )

    assert bodystructure(analyze(message), extensible=False).startswith(
        b'(("message" "rfc822" NIL NIL NIL "7bit" '
    )


def test_placeholder_in_an_empty_multipart_has_empty_extension_data():
    message = crlf("Content-Type: multipart/mixed; boundary=gone\n\nno parts\n")
    structure = analyze(message)

    assert bodystructure(structure, extensible=True) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'
        b' "mixed" ("boundary" "gone") NIL NIL NIL)'
    )
    assert bodystructure(structure, extensible=False) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'
    )


def test_default_charset_follows_the_other_parameters():
    structure = analyze(crlf("Content-Type: text/plain; format=flowed\n\nbody\n"))

    assert bodystructure(structure, extensible=False) == (
        b'("text" "plain" ("format" "flowed" "charset" "us-ascii") NIL NIL "7bit" 6 1)'
    )


def test_joined_rfc2231_parameters_follow_the_plain_ones_by_name():
    structure = analyze(
        crlf(
            "Content-Type: application/x; z*0=one; z*1*=%20two; b*=us-ascii''b; a=1;\n"
            " y*1=late; y*0=early\n\nx\n"
        )
    )

    assert structure.root.parameters == (
        ("a", b"1"),
        ("b*", b"us-ascii''b"),
        ("y", b"earlylate"),
        ("z*", b"''one%20two"),
    )


def test_rfc2231_sections_with_a_number_missing_or_repeated_are_not_joined():
    structure = analyze(
        crlf("Content-Type: application/x; g*0=a; g*2=c; d*0*=x; d*=y; e*0=1; e*1=2\n\nx\n")
    )

    assert structure.root.parameters == (
        ("d*0*", b"x"),
        ("d*0*", b"y"),
        ("e", b"12"),
        ("g*0", b"a"),
        ("g*2", b"c"),
    )


def test_envelope_strings_keep_trailing_space_and_continuation_indent():
    message = (
        b"Date:   Tue, 03 Nov 2026   \r\nMessage-ID:\r\n <folded@example.test>\r\n"
        b"In-Reply-To: <a@example.test>\r\n  <b@example.test>  \r\n\r\n"
    )
    parsed = parse_imap(envelope(analyze(message)))

    assert parsed[0] == b"Tue, 03 Nov 2026   "
    assert parsed[8] == b"<a@example.test>  <b@example.test>  "
    assert parsed[9] == b" <folded@example.test>"


def test_subject_and_display_names_have_each_run_of_white_space_as_one_space():
    message = (
        b'Subject: a \t\r\n\t \tb   c  \r\nFrom: "  Dave,   the  third " <d@example.test>\r\n'
        b"To: e@example.test (  spaced   comment  )\r\n\r\n"
    )
    parsed = parse_imap(envelope(analyze(message)))

    assert parsed[1] == b"a b c"
    assert parsed[2] == [[b"Dave, the third", None, b"d", b"example.test"]]
    assert parsed[5] == [[b"spaced comment", None, b"e", b"example.test"]]


def test_comment_name_is_the_last_comment_in_or_after_a_bare_address():
    env = analyze(
        b"From: e@x (a) (b), f@x (c)(d) (), (before) g@x, h(inside)@x, (c2) <i@x>, <j@x> (c3)"
        b"\r\n\r\n"
    ).root.envelope

    assert [address.name for address in env.from_] == [b"b", None, None, b"inside", None, None]


def test_empty_angle_address_lacks_mailbox_and_domain():
    env = analyze(b"To: <>, a@b\r\nCc: Name <>\r\n\r\n").root.envelope

    assert env.to == (
        Address(None, None, MISSING_MAILBOX, MISSING_DOMAIN),
        Address(None, None, b"a", b"b"),
    )
    assert env.cc == (Address(b"Name", None, MISSING_MAILBOX, MISSING_DOMAIN),)


def test_containers_on_the_last_level_are_opaque_octet_streams():
    message = crlf(
        "Content-Type: multipart/mixed; boundary=one\n\n--one\n"
        "Content-Type: multipart/mixed; boundary=two\n\n--two\n"
        "Content-Type: multipart/mixed; boundary=three\n\n--three\n\ndeep\n--three--\n"
        "--two\nContent-Type: message/rfc822\n\nSubject: s\n\ninner\n--two--\n--one--\n"
    )
    structure = analyze(message, StructureLimits(max_depth=3))

    # Levels: the message, the multipart "one", the parts of "two".
    deepest, message_part = structure.root.children[0].children
    assert (deepest.type, deepest.subtype) == ("application", "octet-stream")
    assert deepest.parameters == (("boundary", b"three"),)
    assert deepest.children == ()
    assert (message_part.type, message_part.subtype) == ("application", "octet-stream")

    def limited(part: tuple[int, ...]) -> bytes:
        return join(message, section_ranges(structure, message, part))

    assert limited((1, 1)) == crlf("--three\n\ndeep\n--three--")
    assert limited((1, 2)) == crlf("Subject: s\n\ninner")
    assert limited((1, 1, 1)) == b""
    assert limited((1, 2, 1)) == b""
    assert bodystructure(structure, extensible=False) == (
        b'((("application" "octet-stream" ("boundary" "three") NIL NIL "7bit" 26)'
        b'("application" "octet-stream" NIL NIL NIL "7bit" 19) "mixed") "mixed")'
    )


# Broken mail


def test_lf_only_mail_has_the_same_structure():
    lf_only = FORWARD.replace(b"\r\n", b"\n")
    crlf_parts, lf_parts = analyze(FORWARD).root, analyze(lf_only).root

    def shape(part: Part):
        return (part.type, part.subtype, [shape(child) for child in part.children])

    assert shape(lf_parts) == shape(crlf_parts)
    assert section(lf_only, (2, 1)) == b"Noon?"
    assert section(lf_only, (2,)) == FORWARDED.replace(b"\r\n", b"\n")
    assert section(lf_only, (2,), "HEADER").endswith(b"boundary=alt\n\n")
    # Sizes are of the stored octets, so they shrink by the CRs left out.
    assert lf_parts.children[1].lines == crlf_parts.children[1].lines
    forwarded = lf_parts.children[1]
    assert forwarded.body_end - forwarded.body_start == len(FORWARDED) - FORWARDED.count(b"\r")


def test_message_without_blank_line_is_all_header():
    message = crlf("From: ann@example.test\nSubject: no body\n")
    structure = analyze(message)

    assert structure.root.body_start == structure.root.body_end == len(message)
    assert section(message, text="HEADER") == message
    assert section(message, text="TEXT") == b""
    # No blank line to keep: RFC 3501 6.4.5's exception for such a message.
    assert section(message, text="HEADER.FIELDS", fields=["subject"]) == b"Subject: no body\r\n"
    assert envelope(structure).startswith(b'(NIL "no body"')


def test_part_header_ended_by_a_boundary_has_an_empty_body():
    message = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/html\n--b--\n"
    )
    part = analyze(message).root.children[0]

    assert (part.type, part.subtype) == ("text", "html")
    assert section(message, (1,), "MIME") == b"Content-Type: text/html"
    assert section(message, (1,)) == b""


def test_missing_close_delimiter_runs_to_the_enclosing_boundary_or_end():
    message = crlf(
        "Content-Type: multipart/mixed; boundary=outer\n\n"
        "--outer\nContent-Type: multipart/alternative; boundary=inner\n\n"
        "--inner\n\nfirst\n"
        "--outer\n\nsecond\n"
    )
    first, second = analyze(message).root.children

    assert [bytes(message[c.body_start : c.body_end]) for c in first.children] == [b"first"]
    assert section(message, (1, 1)) == b"first"
    assert section(message, (2,)) == b"second\r\n"


def test_multipart_without_its_boundary_has_one_empty_part():
    for message in (
        crlf("Content-Type: multipart/mixed; boundary=nowhere\n\njust text\n"),
        crlf("Content-Type: multipart/mixed\n\njust text\n"),
    ):
        structure = analyze(message)
        assert structure.root.children == ()
        assert bodystructure(structure, extensible=False) == (
            b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) "mixed")'
        )
        assert section(message, (1,)) == b""
        assert section(message, text="TEXT") == b"just text\r\n"


def test_garbage_header_lines_are_skipped():
    message = (
        crlf("From sender@example.test Tue Mar  4 10:00:00 2025\n continuation without a field\n")
        + b"\xff\xfe: eight-bit name\r\n"
        + crlf(
            "no colon here\n"
            "Content-Type : text/html; charset=us-ascii (Plain text)\n"
            "Subject: still read\n"
            "\n"
            "body\n"
        )
    )
    structure = analyze(message)

    assert (structure.root.type, structure.root.subtype) == ("text", "html")
    assert structure.root.parameters == (("charset", b"us-ascii"),)
    assert structure.root.envelope.subject == b"still read"


def test_boundaries_match_by_prefix_longest_first():
    # RFC 2046 5.1.1 compares a boundary with the start of the line; an inner
    # boundary that extends an outer one is still found, and so is a reused one.
    message = crlf(
        "Content-Type: multipart/mixed; boundary=abc\n\n"
        "--abc\nContent-Type: multipart/mixed; boundary=abcdef\n\n"
        "--abcdef\n\ninner one\n--abcdef\nContent-Type: multipart/mixed; boundary=abcdef\n\n"
        "--abcdef\n\nsame boundary\n--abcdef--\n--abcdef--\n"
        "--abc   \n\nouter two\n--abc--\n"
    )

    assert section(message, (1, 1)) == b"inner one"
    assert section(message, (1, 2, 1)) == b"same boundary"
    assert section(message, (2,)) == b"outer two"


def test_encoded_message_part_is_not_opened():
    message = crlf(
        "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n"
        "Content-Transfer-Encoding: base64\n\nRnJvbTogeEB5DQoNCmJvZHk=\n--b--\n"
    )
    structure = analyze(message)

    assert structure.root.children[0].children == ()
    assert bodystructure(structure, extensible=False) == (
        b'(("message" "rfc822" NIL NIL NIL "base64" 24'
        b" (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
        b' ("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0) 0) "mixed")'
    )
    assert binary_section(structure, message, (1,)) == b"From: x@y\r\n\r\nbody"


# Limits


def test_sixty_thousand_parts_stop_at_the_part_limit():
    message = b"Content-Type: multipart/mixed; boundary=p\r\n\r\n" + b"".join(
        b"--p\r\n\r\npart %d\r\n" % n for n in range(60_000)
    )
    started = time.monotonic()
    structure = analyze(message)
    elapsed = time.monotonic() - started

    children = structure.root.children
    assert len(children) == StructureLimits().max_parts - 1
    assert section(message, (1,)) == b"part 0"
    assert section(message, (9998,)) == b"part 9997"
    # The delimiters after the last part are body of the multipart.
    assert section(message, (9999,)) == b"part 9998"
    assert section(message, (), "TEXT").endswith(b"--p\r\n\r\npart 59999\r\n")
    assert section(message, (10_000,)) == b""
    assert structure.root.body_end == len(message)
    parse_imap(bodystructure(structure, extensible=True))
    assert elapsed < 10


def test_thousand_nested_multiparts_stop_at_the_depth_limit():
    depth = 1000
    message = (
        b"".join(
            b"Content-Type: multipart/mixed; boundary==_%d_=\r\n\r\n--=_%d_=\r\n" % (n, n)
            for n in range(depth)
        )
        + b"\r\ninnermost\r\n"
    )
    structure = analyze(message)

    levels, part = 0, structure.root
    while part.children:
        part, levels = part.children[0], levels + 1
    # The message is the first level; the multipart on the last one is not
    # opened but is the opaque octets it has become, as Dovecot shows it.
    assert levels == StructureLimits().max_depth - 1
    assert (part.type, part.subtype) == ("application", "octet-stream")
    assert part.parameters == (("boundary", b"=_99_="),)
    assert parse_imap(bodystructure(structure, extensible=True))
    assert section(message, (1,) * levels).endswith(b"innermost\r\n")


def test_thousand_nested_messages_stop_at_the_depth_limit():
    message = b"Subject: s\r\nContent-Type: message/rfc822\r\n\r\n" * 1000 + b"\r\ninnermost"
    structure = analyze(message)

    levels, part = 0, structure.root
    while part.children:
        part, levels = part.children[0], levels + 1
    assert levels == StructureLimits().max_depth - 1
    assert (part.type, part.subtype) == ("application", "octet-stream")
    assert parse_imap(bodystructure(structure, extensible=False))
    assert parse_imap(envelope(structure))[1] == b"s"
    assert (
        section(message, (1,) * 25, "HEADER")
        == b"Subject: s\r\nContent-Type: message/rfc822\r\n\r\n"
    )


def test_fields_past_the_header_limit_are_not_read():
    message = b"X-Pad: " + b"x" * 2000 + b"\r\nSubject: late\r\n\r\nbody"
    structure = analyze(message, StructureLimits(max_header_bytes=1000))

    assert structure.root.envelope.subject is None
    assert structure.root.body_start == message.index(b"body")


def test_limits_refuse_values_the_parser_cannot_honour():
    with pytest.raises(ValueError):
        StructureLimits(max_depth=5000)
    with pytest.raises(ValueError):
        StructureLimits(max_parts=0)


def test_large_attachment_in_deep_nesting_is_read_in_linear_time():
    # Forty open boundaries that never recur, around eight megabytes: a
    # search per boundary from every part would take minutes.
    opening = b"".join(
        b"Content-Type: multipart/mixed; boundary=level-%d-\r\n\r\n--level-%d-\r\n" % (n, n)
        for n in range(40)
    )
    payload = base64.encodebytes(bytes(6 * 1024 * 1024)).replace(b"\n", b"\r\n")
    message = opening + b"Content-Transfer-Encoding: base64\r\n\r\n" + payload
    started = time.monotonic()
    structure = analyze(memoryview(message))
    elapsed = time.monotonic() - started

    leaf = structure.root
    while leaf.children:
        leaf = leaf.children[0]
    assert leaf.lines == payload.count(b"\n")
    assert binary_size(structure, memoryview(message), (1,) * 40) == 6 * 1024 * 1024
    assert elapsed < 10


# Records


def test_record_round_trips_through_msgpack():
    for message in (RFC3501_MESSAGE, ALTERNATIVE, MIXED, NESTED, FORWARD, DIGEST):
        structure = analyze(message)
        record = structure.to_record()
        assert Structure.from_record(record) == structure
        packed = msgpack.packb(record)
        assert Structure.from_record(msgpack.unpackb(packed, raw=False)) == structure


def test_record_is_small_beside_the_message():
    packed = msgpack.packb(analyze(MIXED).to_record())

    assert len(packed) < 700


def test_foreign_records_are_refused():
    record = analyze(ALTERNATIVE).to_record()
    for bad in (None, [], [RECORD_VERSION + 1, record[1]], [RECORD_VERSION, [1, 2]], "x"):
        with pytest.raises(RecordError):
            Structure.from_record(bad)


def test_memoryview_and_bytes_give_the_same_structure():
    assert analyze(memoryview(FORWARD)) == analyze(FORWARD)
    assert analyze(memoryview(bytearray(MIXED))) == analyze(MIXED)


# Sections


def test_header_fields_not_keeps_continuations_and_the_blank_line():
    message = crlf(
        "Received: from a\n by b\nFrom: ann@example.test\nX-Spam: yes\n\tstill spam\n"
        "Subject: hi\n\nbody\n"
    )

    assert section(message, text="HEADER.FIELDS.NOT", fields=["received", b"X-SPAM"]) == (
        b"From: ann@example.test\r\nSubject: hi\r\n\r\n"
    )
    assert section(message, text="HEADER.FIELDS", fields=["x-spam"]) == (
        b"X-Spam: yes\r\n\tstill spam\r\n\r\n"
    )
    assert section(message, text="HEADER.FIELDS", fields=["nothing"]) == b"\r\n"


def test_whole_message_header_and_text():
    structure = analyze(ALTERNATIVE)

    assert section_ranges(structure, ALTERNATIVE) == [(0, len(ALTERNATIVE))]
    header = section(ALTERNATIVE, text="HEADER")
    assert header + section(ALTERNATIVE, text="TEXT") == ALTERNATIVE
    assert header.endswith(b'boundary="alt-1"\r\n\r\n')


def test_single_part_message_is_its_own_part_one():
    message = crlf("Subject: one\nContent-Type: text/plain\n\nbody\n")

    assert section(message, (1,)) == b"body\r\n"
    assert section(message, (1,), "MIME") == crlf("Subject: one\nContent-Type: text/plain\n\n")
    assert section(message, (2,)) == b""
    assert section(message, (1, 1)) == b""


def test_missing_and_meaningless_sections_are_empty():
    assert section(NESTED, (3,)) == b""
    assert section(NESTED, (0,)) == b""
    assert section(NESTED, (2, 1)) == b""
    # HEADER and TEXT of a part that is not a message/rfc822 (Crispin, 2011).
    assert section(NESTED, (2,), "HEADER") == b""
    assert section(NESTED, (1,), "TEXT") == b""
    assert section(FORWARD, (2, 1), "HEADER") == b""
    with pytest.raises(ValueError):
        section(NESTED, (), "MIME")


def test_partial_fetch_slices_across_ranges():
    message = crlf("A: 1\nB: 2\nC: 3\n\nbody\n")
    ranges = section_ranges(analyze(message), message, text="HEADER.FIELDS", fields=["a", "c"])
    whole = join(message, ranges)

    assert whole == b"A: 1\r\nC: 3\r\n\r\n"
    assert join(message, slice_ranges(ranges, 3, 6)) == whole[3:9]
    assert join(message, slice_ranges(ranges, 0, 100)) == whole
    assert slice_ranges(ranges, len(whole)) == []
    assert join(message, slice_ranges(ranges, 5)) == whole[5:]


# BINARY


def test_binary_decodes_base64_and_quoted_printable():
    structure = analyze(MIXED)

    assert binary_section(structure, MIXED, (2,)) == PDF
    assert binary_size(structure, MIXED, (2,)) == len(PDF)
    # White space ending an encoded line is not data (RFC 2045 6.7 rule 3).
    assert binary_section(structure, MIXED, (1,)) == (
        b"Caf\xe9 au lait, see attached.\r\nA long line that is soft-broken here and continues."
    )


def test_binary_of_unencoded_parts_is_ranges():
    structure = analyze(NESTED)

    content = binary_section(structure, NESTED, (1, 1))
    assert join(NESTED, content) == b"plain"
    assert join(NESTED, binary_section(structure, NESTED, (1,))) == section(NESTED, (1,))
    assert join(NESTED, binary_section(structure, NESTED)) == NESTED
    assert binary_section(structure, NESTED, (9,)) == []
    assert binary_size(structure, NESTED, (9,)) == 0
    assert binary_size(structure, NESTED, (1, 1)) == 5


def test_binary_of_an_unknown_encoding_is_refused():
    structure = analyze(MIXED)

    with pytest.raises(UnknownTransferEncoding) as raised:
        binary_section(structure, MIXED, (3,))
    assert raised.value.encoding == "x-uuencode"
    with pytest.raises(UnknownTransferEncoding):
        binary_size(structure, MIXED, (3,))


def test_binary_decodes_what_a_cut_off_base64_body_holds():
    message = crlf("Content-Transfer-Encoding: base64\n\nSGVsbG8gd29y\nbGQ\n")

    assert binary_section(analyze(message), message, (1,)) == b"Hello world"


# Properties

MIME_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=a\r\n",
        b"Content-Type: multipart/digest; boundary=b\n",
        b"Content-Type: message/rfc822\r\n",
        b"Content-Type: text/plain; name*0*=utf-8''x; name*1=y\r\n",
        b"Content-Transfer-Encoding: base64\r\n",
        b'From: "a" <b@c>, g: d@e;\r\n',
        b"Subject: \xc3\xa9\r\n x\r\n",
        b"--a\r\n",
        b"--a--\r\n",
        b"--b\n",
        b"--b--",
        b"\r\n",
        b"\n",
        b"text\r\n",
        b" folded\r\n",
        b"(",
        b'"',
    ]
)
MIME_MESSAGES = st.lists(MIME_PIECES, max_size=40).map(b"".join)


def assert_ranges_nest(part: Part, start: int, end: int) -> None:
    assert start <= part.header_start <= part.body_start <= part.body_end <= end
    previous = part.body_start
    for child in part.children:
        assert previous <= child.header_start
        assert_ranges_nest(child, part.body_start, part.body_end)
        previous = child.body_end


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=600), MIME_MESSAGES))
def test_analyze_accepts_any_octets_and_keeps_ranges_in_order(message):
    structure = analyze(message)

    assert structure.root.header_start == 0
    assert_ranges_nest(structure.root, 0, len(message))
    assert Structure.from_record(msgpack.unpackb(msgpack.packb(structure.to_record()))) == (
        structure
    )
    for part in ((), (1,), (1, 1), (2,), (1, 2, 1)):
        for start, end in section_ranges(structure, message, part):
            assert 0 <= start < end <= len(message)


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=600), MIME_MESSAGES))
def test_rendered_structures_are_balanced_imap(message):
    structure = analyze(message)

    for rendered in (
        bodystructure(structure, extensible=True),
        bodystructure(structure, extensible=False, imap4rev2=True),
        envelope(structure),
    ):
        assert isinstance(parse_imap(rendered), list)


@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 20)), max_size=6), st.data())
def test_slice_ranges_is_slicing_the_joined_content(spans, data):
    ranges, position = [], 0
    for gap, length in spans:
        ranges.append((position + gap, position + gap + length))
        position += gap + length
    message = bytes(range(256)) * 2
    whole = join(message, ranges)
    start = data.draw(st.integers(0, len(whole) + 3))
    count = data.draw(st.integers(1, len(whole) + 3))

    assert join(message, slice_ranges(ranges, start, count)) == whole[start : start + count]
