"""Tricky MIME messages for the differential IMAP tests, built to be read.

Each message is built by one function below, named for what it holds and
registered with the line that says what it exercises; CORPUS lists them in
that order as Samples: a name, that line, and the message as octets with
CRLF line ends. The helpers keep the structure visible: `lines` writes
header or text rows, `entity` puts a header block over a body, `multipart`
puts parts between boundary delimiters (RFC 2046 5.1.1), `base64_lines`
encodes a body the way mailers do (RFC 2045 6.8).

Words that the SEARCH tests look for are named in capitals in comments
beside them; each occurs only where the comment says (a plain header, an
RFC 2047 encoded-word, a base64 or quoted-printable body, a charset).
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from dataclasses import dataclass

CRLF = "\r\n"
DATE = "Date: Tue, 03 Nov 2026 10:00:00 +0000"
FROM = "From: Ann Example <ann@example.org>"
TO = "To: Bob Example <bob@example.net>"
MIME = "MIME-Version: 1.0"

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000") + b"\0" * 20


@dataclass(frozen=True)
class Sample:
    name: str
    why: str
    data: bytes


CORPUS: list[Sample] = []


def sample(why: str) -> Callable[[Callable[[], bytes]], Callable[[], bytes]]:
    """Register the message that the decorated function builds."""

    def register(build: Callable[[], bytes]) -> Callable[[], bytes]:
        CORPUS.append(Sample(build.__name__, why, build()))
        return build

    return register


def lines(*rows: str) -> bytes:
    """Each row followed by CRLF, in UTF-8."""
    return "".join(row + CRLF for row in rows).encode("utf-8")


def entity(header: Iterable[str], body: bytes = b"") -> bytes:
    """A header block, the blank line that ends it, then the body."""
    return lines(*header, "") + body


def standard(subject: str, number: str, *more: str) -> list[str]:
    """The top-level fields most samples share, then `more`."""
    return [DATE, FROM, TO, f"Subject: {subject}", f"Message-ID: <{number}@example.org>", *more]


def mixed(boundary: str, subject: str, number: str) -> list[str]:
    """A standard header for a multipart/mixed message."""
    return standard(subject, number, MIME, f"Content-Type: multipart/mixed; boundary={boundary}")


def multipart(
    boundary: str,
    parts: Iterable[bytes],
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"",
    close: bool = True,
) -> bytes:
    """A multipart body: the CRLF before each delimiter line belongs to the
    delimiter (RFC 2046 5.1.1), so a part written as "text\\r\\n" keeps its
    own line end as content."""
    dash = b"--" + boundary.encode("ascii")
    out = preamble + b"\r\n" if preamble else b""
    for n, part in enumerate(parts):
        out += (b"\r\n" if n else b"") + dash + b"\r\n" + part
    if close:
        out += b"\r\n" + dash + b"--\r\n" + epilogue
    return out


def base64_lines(data: bytes) -> bytes:
    """base64 in lines of 76 characters, each ended by CRLF (RFC 2045 6.8)."""
    encoded = base64.b64encode(data)
    return b"".join(encoded[i : i + 76] + b"\r\n" for i in range(0, len(encoded), 76))


def text_part(text: str, *header: str) -> bytes:
    return entity(["Content-Type: text/plain; charset=us-ascii", *header], lines(text))


def encoded_part(content_type: str, encoding: str, body: bytes) -> bytes:
    return entity([f"Content-Type: {content_type}", f"Content-Transfer-Encoding: {encoding}"], body)


def message_part(message: bytes, *header: str) -> bytes:
    return entity(["Content-Type: message/rfc822", *header], message)


def nested(depth: int, level: int = 1) -> bytes:
    """The body of a multipart that holds a multipart ... `depth` of them in
    all, counting this one, each beside a text part that names its level.
    Boundaries have one length, so that none is a prefix of another."""
    if level == depth:
        inner = text_part(f"innermost level {level}")
    else:
        inner = entity([f'Content-Type: multipart/mixed; boundary="level{level + 1:03d}"'])
        inner += nested(depth, level + 1)
    return multipart(f"level{level:03d}", [inner, text_part(f"beside level {level}")])


def deep(depth: int) -> bytes:
    header = standard(f"{depth} multiparts deep", f"nested_{depth}", MIME)
    header.append('Content-Type: multipart/mixed; boundary="level001"')
    return entity(header, nested(depth))


# ---------------------------------------------------------------------------
# Well-formed structures


@sample("one text/plain part and every ENVELOPE field")
def plain_text() -> bytes:
    header = [
        DATE,
        FROM,
        "Sender: Secretary <secretary@example.org>",
        "Reply-To: replies@example.org",
        "To: Bob Example <bob@example.net>, carol@example.net",
        'Cc: "Dave, the third" <dave@example.net>',
        "Bcc: eve@example.net",
        "Subject: Plain text lunch menu",  # LUNCH: a plain subject word
        "Message-ID: <plain.1@example.org>",
        "In-Reply-To: <earlier.1@example.net>",
        "X-Kitchen: Basement canteen",  # CANTEEN: a plain custom field only
        MIME,
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Transfer-Encoding: 7bit",
    ]
    # ASPARAGUS: a plain body word
    return entity(header, lines("Today's lunch is asparagus soup.", "", "See you there."))


@sample("no MIME-Version and no Content-*: text/plain us-ascii 7bit by default")
def no_mime_fields() -> bytes:
    header = ["From: someone@example.org", "To: bob@example.net", "Subject: old school"]
    return entity(header, lines("An ordinary body from before MIME."))


@sample("multipart/mixed with a nested multipart/alternative and two attachments")
def mixed_alternative_attachments() -> bytes:
    plain = encoded_part(
        "text/plain; charset=utf-8",
        "quoted-printable",
        lines("The beach was lovely =E2=80=93 see the photo."),
    )
    html = entity(
        ["Content-Type: text/html; charset=utf-8"], lines("<p>The beach was <b>lovely</b>.</p>")
    )
    alternative = entity(
        ['Content-Type: multipart/alternative; boundary="a1"'], multipart("a1", [plain, html])
    )
    pdf = entity(
        [
            'Content-Type: application/pdf; name="itinerary.pdf"',
            'Content-Disposition: attachment; filename="itinerary.pdf"',
            "Content-Transfer-Encoding: base64",
        ],
        base64_lines(PDF),
    )
    photo = entity(
        [
            "Content-Type: image/png",
            "Content-ID: <photo.1@example.org>",
            "Content-Disposition: inline",
            "Content-Transfer-Encoding: base64",
        ],
        base64_lines(PNG),
    )
    header = standard(
        "Holiday pictures", "mixed.1", MIME, 'Content-Type: multipart/mixed; boundary="m1"'
    )
    return entity(header, multipart("m1", [alternative, pdf, photo]))


@sample("a forwarded multipart/alternative message: parts 2, 2.1, 2.2, 2.HEADER, 2.TEXT")
def rfc822_in_mixed() -> bytes:
    forwarded = entity(
        [
            "Date: Mon, 02 Nov 2026 09:00:00 +0100",
            "From: Chair <chair@example.com>",
            "To: Board <board@example.com>",
            "Subject: Minutes of the board",
            "Message-ID: <minutes.1@example.com>",
            MIME,
            'Content-Type: multipart/alternative; boundary="inner"',
        ],
        multipart(
            "inner",
            [
                text_part("The board approved the kumquat budget."),  # KUMQUAT
                entity(["Content-Type: text/html"], lines("<p>The board approved the budget.</p>")),
            ],
        ),
    )
    parts = [
        text_part("Forwarding the minutes below."),
        message_part(forwarded, "Content-Description: the minutes"),
        text_part("-- footer"),
    ]
    return entity(mixed("f1", "Fwd: minutes", "fwd.1"), multipart("f1", parts))


@sample("a message/rfc822 at 2.2 whose parts are 2.2.1 and 2.2.2 (with 2.2.1.MIME)")
def rfc822_deeper_in_multipart() -> bytes:
    innermost = entity(
        [
            "From: inner@example.com",
            "Subject: innermost",
            "Content-Type: multipart/mixed; boundary=q",
        ],
        multipart(
            "q",
            [
                text_part("inner text", "Content-ID: <t@x>"),
                encoded_part("application/octet-stream", "base64", base64_lines(bytes(range(48)))),
            ],
        ),
    )
    middle = entity(
        ["Content-Type: multipart/mixed; boundary=p"],
        multipart("p", [text_part("middle text"), message_part(innermost)]),
    )
    return entity(
        mixed("o", "Nested forward", "fwd.2"), multipart("o", [text_part("outer text"), middle])
    )


@sample("a message/rfc822 whose message is one text part: 2.1 is that message's body")
def rfc822_single_part_inside() -> bytes:
    original = entity(
        ["From: ann@example.org", "Subject: the original"], lines("The original text.")
    )
    header = standard("Bounce", "bounce.1", MIME, "Content-Type: multipart/report; boundary=r")
    report = text_part("Your message could not be delivered.")
    return entity(header, multipart("r", [report, message_part(original)]))


@sample("a message that is a message/rfc822: part 1 is the inner message, 1.1 and 1.2 its parts")
def rfc822_top_level() -> bytes:
    wrapped = entity(
        [
            "From: wrapped@example.com",
            "Subject: the wrapped one",
            "Content-Type: multipart/mixed; boundary=w",
        ],
        multipart("w", [text_part("first wrapped"), text_part("second wrapped")]),
    )
    return entity(standard("wrapped", "wrap.1", MIME, "Content-Type: message/rfc822"), wrapped)


@sample(
    "message/rfc822 in message/rfc822 in message/rfc822 (the last in upper case) in a multipart"
)
def rfc822_chain() -> bytes:
    three = entity(["Subject: three"], lines("the end of the chain"))
    two = entity(["Subject: two", "Content-Type: message/RFC822"], three)
    one = entity(["Subject: one", "Content-Type: message/rfc822"], two)
    return entity(mixed("c", "Fwd: Fwd: Fwd", "chain.1"), multipart("c", [message_part(one)]))


@sample("multipart/digest: a part without Content-Type is a message/rfc822 (RFC 2046 5.1.5)")
def digest() -> bytes:
    parts = [
        lines("", "From: one@example.com", "Subject: first", "", "first body"),
        lines("", "From: two@example.com", "Subject: second", "", "second body"),
        text_part("an explicit text part in the digest"),
        message_part(entity(["Subject: explicit"], lines("explicit body"))),
    ]
    header = standard("Digest", "digest.1", MIME, 'Content-Type: multipart/digest; boundary="d"')
    return entity(header, multipart("d", parts, preamble=b"Digest preamble"))


@sample("text before the first delimiter and after the close delimiter")
def preamble_and_epilogue() -> bytes:
    body = multipart(
        "pe",
        [text_part("the only part")],
        preamble=b"This is a multi-part message in MIME format.\r\n",
        epilogue=lines("This epilogue is ignored.", "--pe", "not a part either"),
    )
    return entity(mixed("pe", "pre and post", "pre.1"), body)


@sample("multipart/signed with its protocol and micalg parameters, folded")
def multipart_signed() -> bytes:
    signature = entity(
        ["Content-Type: application/pgp-signature; name=signature.asc"],
        lines("-----BEGIN PGP SIGNATURE-----", "iQEz", "-----END PGP SIGNATURE-----"),
    )
    content_type = (
        "Content-Type: multipart/signed; micalg=pgp-sha256;\r\n"
        ' protocol="application/pgp-signature"; boundary=s'
    )
    header = standard("signed", "signed.1", MIME, content_type)
    return entity(header, multipart("s", [text_part("signed text"), signature]))


@sample("alternative holding related holding html and an inline image, in mixed")
def nested_alternative_related() -> bytes:
    html = entity(["Content-Type: text/html"], lines("<img src=cid:i>"))
    image = entity(
        ["Content-Type: image/png", "Content-ID: <i>", "Content-Transfer-Encoding: base64"],
        base64_lines(PNG),
    )
    related = entity(
        ['Content-Type: multipart/related; boundary=R3; type="text/html"'],
        multipart("R3", [html, image]),
    )
    alternative = entity(
        ["Content-Type: multipart/alternative; boundary=R2"],
        multipart("R2", [text_part("plain alternative"), related]),
    )
    calendar = entity(
        ["Content-Type: text/calendar; method=REQUEST; charset=utf-8"],
        lines("BEGIN:VCALENDAR", "END:VCALENDAR"),
    )
    return entity(mixed("R1", "related", "related.1"), multipart("R1", [alternative, calendar]))


# ---------------------------------------------------------------------------
# Broken multiparts


@sample("the close delimiter is missing: the last part runs to the end")
def missing_close_delimiter() -> bytes:
    parts = [text_part("first"), text_part("second, never closed")]
    return entity(mixed("u", "unclosed", "unclosed.1"), multipart("u", parts, close=False))


@sample("an inner multipart without close delimiter ends at the outer delimiter")
def missing_inner_close_delimiter() -> bytes:
    inner = entity(
        ["Content-Type: multipart/alternative; boundary=Y"],
        multipart("Y", [text_part("alt one"), text_part("alt two")], close=False),
    )
    body = multipart("X", [inner, text_part("after the inner multipart")])
    return entity(mixed("X", "half closed", "unclosed.2"), body)


@sample("a multipart whose boundary never occurs in its body")
def boundary_never_occurs() -> bytes:
    body = lines("--other", "Content-Type: text/plain", "", "not a part", "--other--")
    return entity(mixed('"gone"', "no parts", "never.1"), body)


@sample("a multipart without a boundary parameter")
def no_boundary_parameter() -> bytes:
    header = standard("no boundary", "noboundary.1", MIME, "Content-Type: multipart/mixed")
    return entity(header, lines("--", "Content-Type: text/plain", "", "just text"))


@sample("an empty part, a part without header, a part whose header has no blank line")
def empty_and_headless_parts() -> bytes:
    body = lines(
        "--e",
        "",
        "no header at all: text/plain by default",
        "--e",
        "--e",
        "Content-Type: text/html",
        "--e",
        "Content-Type: text/plain",
        "",
        "last",
        "--e--",
    )
    return entity(mixed("e", "odd parts", "odd.1"), body)


@sample("the outer boundary is a prefix of the inner one (RFC 2046 5.1.2 forbids it)")
def boundary_prefix_of_inner() -> bytes:
    inner = entity(
        ['Content-Type: multipart/alternative; boundary="=_b_inner"'],
        multipart("=_b_inner", [text_part("inner one"), text_part("inner two")]),
    )
    return entity(
        mixed('"=_b"', "prefix", "prefix.1"), multipart("=_b", [inner, text_part("outer two")])
    )


@sample("a quoted boundary with spaces, delimiter lines with trailing white space")
def boundary_padding_and_spaces() -> bytes:
    body = lines(
        "--with space=?  ",
        "Content-Type: text/plain",
        "",
        "padded delimiter before me",
        "--with space=?\t",
        "",
        "second",
        "--with space=?-- ",
    )
    return entity(mixed('"with space=?"', "padding", "padding.1"), body)


@sample("Content-Type values that are not type/subtype, and an empty boundary")
def invalid_content_types() -> bytes:
    parts = [
        entity(["Content-Type: text"], lines("no subtype")),
        entity(["Content-Type: /plain"], lines("no type")),
        entity(["Content-Type: image/"], lines("empty subtype")),
        entity(["Content-Type: text/plain;; ;charset=utf-8;"], lines("stray semicolons")),
        entity(['Content-Type: multipart/mixed; boundary=""'], lines("empty boundary")),
        entity(['Content-Type: application/x-unterminated; name="open'], lines("x")),
    ]
    return entity(mixed("v", "invalid", "invalid.1"), multipart("v", parts))


@sample("a message/rfc822 with a base64 transfer encoding, which RFC 2046 5.2.1 forbids")
def encoded_message_part() -> bytes:
    hidden = base64_lines(lines("Subject: hidden", "", "hidden body"))
    parts = [
        encoded_part("message/rfc822", "base64", hidden),
        message_part(b""),  # a message that is only a blank line
    ]
    return entity(mixed("q", "encoded message", "encmsg.1"), multipart("q", parts))


# ---------------------------------------------------------------------------
# Parameters and MIME fields


@sample("RFC 2231 continuations, charset'language' values and percent escapes")
def rfc2231_parameters() -> bytes:
    resume = entity(
        [
            "Content-Type: application/octet-stream;",
            "  name*0*=utf-8''R%C3%A9sum%C3%A9%20;",
            '  name*1="of the year.txt"',
            "Content-Disposition: attachment;",
            '  filename*0="a very long file name that ";',
            '  filename*1="goes on and on.txt"',
        ],
        lines("resume"),
    )
    fun = entity(
        [
            "Content-Type: text/plain; charset=us-ascii;",
            "  title*=us-ascii'en-us'This%20is%20%2A%2A%2Afun%2A%2A%2A",
            "Content-Disposition: inline; filename*=iso-8859-1''caf%E9.txt",
        ],
        lines("fun"),
    )
    gaps = entity(
        [
            "Content-Type: text/plain;",
            "  charset*=us-ascii''us-ascii;",
            '  x-sections*1="second"; x-sections*0="first ";',
            "  x-sections*3=gap",  # no section 2: not joined
        ],
        lines("out of order"),
    )
    return entity(mixed("p2231", "2231", "rfc2231.1"), multipart("p2231", [resume, fun, gaps]))


@sample("comments and odd case in Content-Type and Content-Transfer-Encoding")
def content_type_comments_and_case() -> bytes:
    latin = entity(
        [
            'Content-Type: TEXT/Plain (plain text) ; CharSet="ISO-8859-1" (c)',
            "Content-Transfer-Encoding: (qp) Quoted-Printable (really)",
        ],
        lines("Un caf=E9 cr=E8me, s'il vous pla=EEt."),  # CRÈME in latin-1 quoted-printable
    )
    odd = entity(
        ["content-type: Application/X-Odd; Name=Odd.BIN", "CONTENT-ID: <ODD@X>"], lines("odd")
    )
    header = standard(
        "comments",
        "comments.1",
        MIME,
        "Content-Type: (outer) Multipart / MIXED (x) ; (y) Boundary = (z) cmt",
    )
    return entity(header, multipart("cmt", [latin, odd]))


@sample("x-uuencode, an unknown token, upper-case BASE64, a CTE with junk after it, an empty one")
def unknown_transfer_encodings() -> bytes:
    parts = [
        encoded_part(
            "application/octet-stream", "x-uuencode", lines("begin 644 a.txt", "#86)C", "`", "end")
        ),
        encoded_part("text/plain", "bogus-encoding", lines("bogus")),
        # GOOSEBERRY only in base64
        encoded_part("text/plain", "BASE64", base64_lines(b"upper case base64 gooseberry\r\n")),
        encoded_part("text/plain", "7bit junk", lines("junk after the token")),
        entity(
            ["Content-Type: text/plain", "Content-Transfer-Encoding:"],
            lines("empty encoding field"),
        ),
    ]
    return entity(mixed("cte", "encodings", "cte.1"), multipart("cte", parts))


@sample("Content-Disposition, -Language, -Location, -MD5, -Description, -ID")
def disposition_language_location() -> bytes:
    page = entity(
        [
            "Content-Type: text/html; charset=us-ascii",
            "Content-Language: en, de-CH (Swiss German)",
            "Content-Location: index.html",
            "Content-ID: <index@example.org>",
            "Content-Description: the page",
            "Content-MD5: Q2hlY2sgSW50ZWdyaXR5IQ==",
        ],
        lines("<img src=logo.png>"),
    )
    logo = entity(
        [
            "Content-Type: image/gif",
            "Content-Disposition: attachment; filename=logo.gif; size=35;",
            '  creation-date="Wed, 12 Feb 1997 16:29:51 -0500"',
            "Content-Location: http://www.example.org/images/logo.gif",
            "Content-Language: (none)",
            "Content-Transfer-Encoding: base64",
        ],
        base64_lines(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"),
    )
    capitals = entity(
        ["Content-Type: text/plain", "Content-Disposition: INLINE"],
        lines("disposition in capitals"),
    )
    header = standard(
        "extension fields",
        "ext.1",
        MIME,
        "Content-Type: multipart/related; boundary=x; type=text/html",
        "Content-Language: en",
        "Content-Location: http://www.example.org/page/",
    )
    return entity(header, multipart("x", [page, logo, capitals]))


# ---------------------------------------------------------------------------
# Header fields and addresses


@sample("8-bit UTF-8 octets in header fields and parameters (RFC 6532)")
def raw_utf8_headers() -> bytes:
    greeting = encoded_part(
        "text/plain; charset=utf-8", "8bit", lines("Schöne Grüße vom Rhein, Straße 5.")
    )  # STRASSE as Straße
    overview = entity(
        [
            'Content-Type: text/plain; charset=utf-8; name="Übersicht.txt"',
            'Content-Disposition: attachment; filename="Übersicht.txt"',
            "Content-Description: Überblick",
        ],
        lines("table of contents"),
    )
    header = [
        DATE,
        "From: Jörg Müller <joerg@example.de>",  # MÜLLER in raw UTF-8
        "To: Zoë <zoë@example.de>",
        "Subject: Grüße aus Köln",  # KÖLN in raw UTF-8
        "Message-ID: <utf8.1@example.de>",
        MIME,
        "Content-Type: multipart/mixed; boundary=u8",
    ]
    return entity(header, multipart("u8", [greeting, overview]))


@sample("RFC 2047 encoded-words in Subject and display names; words only inside them")
def rfc2047_encoded_words() -> bytes:
    header = [
        DATE,
        # ANDRÉ only inside the Q-encoded word.
        "From: =?ISO-8859-1?Q?Andr=E9?= Pirard <pirard@example.be>",
        # ZWETSCHGE only inside the base64 word.
        "To: =?UTF-8?B?WndldHNjaGdlIEjDpG5kbGVy?= <haendler@example.de>,",
        ' "=?utf-8?q?Quoted_=C3=A9ncoded?=" <quoted@example.de>',
        # QUARTERLY only inside base64, MÜNCHEN only inside latin-1 Q; the
        # white space between adjacent encoded-words is not text.
        "Subject: =?UTF-8?B?cXVhcnRlcmx5IHJlcG9ydA==?= =?UTF-8?Q?_f=C3=BCr?=",
        " =?iso-8859-1?q?M=FCnchen?= and plain tail",
        "Message-ID: <rfc2047.1@example.be>",
        MIME,
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    return entity(header, lines("The body has none of the header words."))


@sample("RFC 5322 groups: empty, with members, and beside plain addresses")
def group_addresses() -> bytes:
    header = [
        DATE,
        FROM,
        "To: undisclosed-recipients:;",
        "Cc: Team: ann@example.org, Bob <bob@example.net>;, solo@example.com",
        'Bcc: "Quoted group": ;',
        "Subject: groups",
        "Message-ID: <groups.1@example.org>",
    ]
    return entity(header, lines("group body"))


@sample("addresses without domain, route addresses, comments as names, quoted local parts")
def odd_addresses() -> bytes:
    header = [
        DATE,
        "From: user@host.example (Comment Name)",
        'Sender: "Escaped \\"quote\\" name" <sender@example.org>',
        'Reply-To: "quoted local part"@example.org',
        "To: localonly, Name Without <nodomain>, <@relay1.example,@relay2.example:"
        "routed@host.example>",
        "Cc: Mixed Case <MiXeD@ExAmPlE.ORG>, trailing.dot.@example.org",
        "Bcc: <>",
        "Subject: odd addresses",
        "In-Reply-To:   <spaced@example.org>   ",
        "Message-ID: <odd.1@example.org>",
    ]
    return entity(header, lines("odd body"))


@sample("fields given twice: which one counts")
def repeated_fields() -> bytes:
    header = [
        DATE,
        "Date: Wed, 04 Nov 2026 10:00:00 +0000",
        FROM,
        "From: second@example.org",
        TO,
        "Subject: first subject",
        "Subject: second subject",
        "Message-ID: <repeat.1@example.org>",
        "Message-ID: <repeat.2@example.org>",
        MIME,
        "Content-Type: text/plain; charset=utf-8",
        "Content-Type: text/html",
        "Content-Transfer-Encoding: 8bit",
        "Content-Transfer-Encoding: base64",
    ]
    return entity(header, lines("repeated"))


@sample("very long folded fields: Subject, To with many addresses, References")
def long_folded_header() -> bytes:
    header = [
        DATE,
        FROM,
        "To: " + ",\r\n ".join(f"Person {n} <person{n}@example.net>" for n in range(60)),
        # SEGMENT59: a subject word on the 60th line of the field
        "Subject: " + "\r\n\t".join(f"segment{n} of a very long subject line" for n in range(60)),
        "References: " + "\r\n ".join(f"<ref{n}@example.org>" for n in range(200)),
        "Message-ID: <long.1@example.org>",
        MIME,
        "Content-Type: text/plain;\r\n charset=us-ascii;\r\n format=flowed",
    ]
    return entity(header, lines("long header body"))


# ---------------------------------------------------------------------------
# Headers and bodies cut short


@sample("a header, the blank line, and no body at all")
def empty_body() -> bytes:
    return entity(standard("nothing below", "empty.1", MIME, "Content-Type: text/plain"))


@sample("a header with no blank line after it: all header, empty body")
def header_without_blank_line() -> bytes:
    return lines(DATE, FROM, "Subject: only a header", "Message-ID: <headonly.1@example.org>")


@sample("the last header line has no line end")
def header_without_final_line_end() -> bytes:
    return lines(DATE, FROM) + b"Subject: cut short"


@sample("a text part and a message whose last line has no line end (body-fld-lines)")
def body_without_final_line_end() -> bytes:
    body = (
        b"--n\r\nContent-Type: text/plain\r\n\r\nno newline here\r\n--n\r\n\r\ntwo lines\r\n"
        b"and the last unended\r\n--n--"
    )
    return entity(mixed("n", "no final newline", "nonl.1"), body)


# ---------------------------------------------------------------------------
# Depth


@sample("multipart in multipart, 100 levels: the last one is not opened")
def nested_100() -> bytes:
    return deep(100)


@sample("multipart in multipart, 101 levels")
def nested_101() -> bytes:
    return deep(101)


@sample("message/global (RFC 6532 3.7) holding a message with UTF-8 header fields")
def message_global() -> bytes:
    inner = entity(
        [
            "From: Søren <søren@eksempel.dk>",
            "Subject: Hilsen fra Århus",
            "Content-Type: text/plain; charset=utf-8",
        ],
        lines("Mange hilsner"),
    )
    parts = [
        text_part("an internationalized message follows"),
        entity(["Content-Type: message/global"], inner),
    ]
    return entity(mixed("g", "global", "global.1"), multipart("g", parts))


# ---------------------------------------------------------------------------
# Transfer encodings and charsets


@sample("base64 parts whose decoded octets hold NULs, and one with raw NUL octets")
def base64_with_nul_bytes() -> bytes:
    parts = [
        encoded_part(
            "application/octet-stream", "base64", base64_lines(b"\0\0\0 binary \0 with NULs \0\0")
        ),
        # NULLBERRY only in base64, after a NUL
        encoded_part("text/plain", "base64", base64_lines(b"before\0after nullberry\r\n")),
        encoded_part("application/octet-stream", "base64", b"QUJD\0\0REVG\r\n"),
    ]
    return entity(mixed("z", "nul", "nul.1"), multipart("z", parts))


@sample("quoted-printable: a soft line break inside a word, =3D, trailing space, bad escapes")
def quoted_printable_body() -> bytes:
    header = standard(
        "qp",
        "qp.1",
        MIME,
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: quoted-printable",
    )
    # SUPERCALIFRAGILISTIC is split by a soft line break; ÜBERMUT is QP UTF-8.
    body = lines(
        "super=",
        "califragilistic a=3Db =C3=9Cbermut   ",
        "trailing white space removed =  ",
        "bad =ZZ escape and lower =c3=a9 hex",
    )
    return entity(header, body)


@sample("a base64 text/plain body with stray characters and no padding")
def base64_text_body() -> bytes:
    header = standard(
        "b64",
        "b64.1",
        MIME,
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: base64",
    )
    # RHUBARB only in base64, whose letters "Umh1YmFyYiBjcnVtYmxl" no server should find.
    encoded = base64_lines("Rhubarb crumble, naïve.\r\n".encode()).replace(b"=", b"")
    return entity(header, encoded + b"!!\r\n")


@sample("ISO-8859-1 quoted-printable and windows-1252 8bit bodies (CHARSET UTF-8 SEARCH)")
def latin1_bodies() -> bytes:
    latin1 = encoded_part(
        "text/plain; charset=iso-8859-1",
        "quoted-printable",
        lines("Cr=E8me br=FBl=E9e for dessert."),
    )  # CRÈME BRÛLÉE
    windows = encoded_part(
        "text/plain; charset=windows-1252", "8bit", b"Price: 5 \x80 per \x93portion\x94.\r\n"
    )  # € is 0x80 in windows-1252
    header = standard("latin", "latin.1", MIME, "Content-Type: multipart/alternative; boundary=l")
    return entity(header, multipart("l", [latin1, windows]))
