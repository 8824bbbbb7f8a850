"""The appliance's IMAP view of message structure, compared with Dovecot's.

The same tricky messages (mime_corpus.py) are appended with imaplib to the
appliance and to a private Dovecot, in the same order, and each FETCH item
is asked of both: ENVELOPE, BODYSTRUCTURE, BODY, RFC822.SIZE, and for every
part number that the BODYSTRUCTUREs show, BODY[n], BODY[n.MIME],
BODY[n.HEADER], BODY[n.TEXT] and, for leaf parts, BINARY.SIZE[n]. Answers are
compared as parsed values, so that a quoted string and a literal with the
same octets are equal; a failure shows both responses as they arrived.

SEARCH is compared too, on keys whose words occur only in a plain header, an
RFC 2047 encoded-word, a base64 or quoted-printable body, or a charset other
than UTF-8. Each search case also names the messages it must find, so that
a case in which both servers find nothing cannot pass unnoticed.

Where the two may legitimately differ, EXPECTED_DIFFERENCES says how and
why, and the test asserts exactly that difference.
"""

from __future__ import annotations

import imaplib
import itertools
import re
from dataclasses import dataclass, field

import pytest

from tests.conftest import PASSWORD
from tests.interop.mime_corpus import CORPUS, Sample

USER = "ann@example.test"
SHOWN = 600  # octets of a long response shown in a failure message

# ---------------------------------------------------------------------------
# Reading IMAP responses


class Atom(str):
    """An IMAP atom (FETCH item names, NIL aside); strings are bytes."""


Value = None | int | Atom | bytes | list


_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"', re.S)
_ESCAPED = re.compile(rb"\\(.)", re.S)
_LITERAL = re.compile(rb"~?\{(\d+)\+?\}\r\n")
_ATOM = re.compile(rb"[^ ()\[\r\n]+(?:\[[^\]]*\])?(?:<\d+>)?")
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")


class _Reader:
    """Just enough of RFC 3501 9 to read FETCH data: lists, NIL, numbers,
    atoms (item names with a [section]), quoted strings and literals."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        self._skip_space()
        return self.pos >= len(self.data)

    def _skip_space(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in b" \r\n":
            self.pos += 1

    def value(self) -> Value:
        self._skip_space()
        data, pos = self.data, self.pos
        char = data[pos : pos + 1]
        if char == b"(":
            self.pos += 1
            items = []
            while not self.at_end() and self.data[self.pos : self.pos + 1] != b")":
                items.append(self.value())
            self.pos += 1
            return items
        if char == b'"':
            match = _QUOTED.match(data, pos)
            self.pos = match.end()
            return _ESCAPED.sub(rb"\1", match.group(1))
        if char in (b"{", b"~"):
            match = _LITERAL.match(data, pos)
            start = match.end()
            self.pos = start + int(match.group(1))
            return data[start : self.pos]
        match = _ATOM.match(data, pos)
        if match is None:
            raise ValueError(f"cannot read {data[pos : pos + 40]!r}")
        self.pos = match.end()
        word = match.group().decode("ascii", "replace")
        if word.upper() == "NIL":
            return None
        return int(word) if word.isdigit() else Atom(word)


def _raw_untagged(data: list) -> bytes:
    """The untagged responses that imaplib split around literals, rejoined."""
    out = b""
    for item in data:
        if isinstance(item, tuple):
            out += item[0] + b"\r\n" + item[1]
        elif isinstance(item, bytes):
            out += item
    return out


def _canonical(value: Value) -> bytes:
    """One spelling per value: strings quoted when they can be, else literals."""
    if value is None:
        return b"NIL"
    if isinstance(value, int):
        return b"%d" % value
    if isinstance(value, Atom):
        return value.encode()
    if isinstance(value, bytes):
        if _QUOTABLE.fullmatch(value):
            return b'"' + re.sub(rb'(["\\])', rb"\\\1", value) + b'"'
        return b"{%d}\r\n" % len(value) + value
    return b"(" + b" ".join(_canonical(item) for item in value) + b")"


@dataclass(frozen=True)
class Answer:
    """One server's answer to one FETCH item: what is compared, and what arrived."""

    compared: bytes  # the item's value spelled canonically, or "NO [CODE]"
    raw: bytes  # the untagged responses and the tagged result as received
    status: str
    value: Value = None


def _fetch(imap: imaplib.IMAP4, number: int, item: str, name: str) -> Answer:
    """FETCH one item of one message; `name` is how the response names it."""
    try:
        status, data = imap.fetch(str(number), f"({item})")
    except imaplib.IMAP4.error as error:
        return Answer(b"BAD", str(error).encode(), "BAD")
    if status != "OK":
        text = data[-1] if data and isinstance(data[-1], bytes) else b""
        code = re.match(rb"\[([^\] ]+)", text)
        return Answer(b"NO [%s]" % (code.group(1) if code else b""), text, status)
    raw = _raw_untagged(data)
    reader = _Reader(raw)
    items: dict[str, Value] = {}
    while not reader.at_end():
        reader.value()  # the message sequence number
        pairs = reader.value()
        for key, value in zip(pairs[::2], pairs[1::2], strict=True):
            items[str(key).upper()] = value
    if name.upper() not in items:
        return Answer(b"MISSING " + name.encode(), raw, status)
    value = items[name.upper()]
    return Answer(_canonical(value), raw, status, value)


# ---------------------------------------------------------------------------
# Part numbers from a BODYSTRUCTURE (RFC 3501 6.4.5)

Section = tuple[int, ...]


def _is_multipart(body: Value) -> bool:
    return isinstance(body, list) and bool(body) and isinstance(body[0], list)


def _encapsulated(body: Value) -> Value:
    """The body of the message inside a message/rfc822 part, or None."""
    if (
        isinstance(body, list)
        and len(body) > 9
        and isinstance(body[0], bytes)
        and body[0].lower() == b"message"
        and isinstance(body[7], list)
        and isinstance(body[8], list)
    ):
        return body[8]
    return None


def part_numbers(bodystructure: Value) -> list[tuple[Section, bool]]:
    """Every part number of a message and whether the part is a leaf: the
    parts of a multipart are numbered from 1; a message that is not a
    multipart has the one part 1; a message/rfc822 part's subparts are those
    of the message it holds."""
    found: list[tuple[Section, bool]] = []

    def message(body: Value, prefix: Section) -> None:
        if _is_multipart(body):
            children = list(itertools.takewhile(lambda item: isinstance(item, list), body))
        else:
            children = [body]
        for number, child in enumerate(children, 1):
            section = (*prefix, number)
            inner = _encapsulated(child)
            found.append((section, not _is_multipart(child) and inner is None))
            if _is_multipart(child):
                message(child, section)
            elif inner is not None:
                message(inner, section)

    if isinstance(bodystructure, list):
        message(bodystructure, ())
    return found


def dotted(section: Section) -> str:
    return ".".join(map(str, section))


# ---------------------------------------------------------------------------
# The two servers, filled with the corpus


@dataclass
class Peer:
    name: str
    imap: imaplib.IMAP4
    numbers: dict[str, int] = field(default_factory=dict)  # sample name -> sequence number

    def fetch(self, sample: str, item: str, name: str) -> Answer:
        return _fetch(self.imap, self.numbers[sample], item, name)


def _append(imap: imaplib.IMAP4, message: bytes) -> tuple[str, list]:
    """APPEND the exact octets (imaplib's append() would rewrite line ends).
    A message with NUL octets goes in a literal8, which imaplib cannot send
    itself: RFC 3501 9 allows no NUL in a literal, RFC 3516 4.4 does in ~{n}."""
    if b"\0" not in message:
        imap.literal = message
        return imap._simple_command("APPEND", "INBOX")
    tag = imap._new_tag()
    imap.send(b"%s APPEND INBOX ~{%d}\r\n" % (tag, len(message)))
    while imap._get_response():  # None once the server asks for the octets
        if imap.tagged_commands[tag]:
            break  # refused before the literal
    else:
        imap.send(message + b"\r\n")
    return imap._command_complete("APPEND", tag)


def _connect(name: str, host: str, port: int, user: str, password: str) -> Peer:
    imap = imaplib.IMAP4(host, port, timeout=60)
    imap.login(user, password)
    peer = Peer(name, imap)
    for number, sample in enumerate(CORPUS, 1):
        status, data = _append(imap, sample.data)
        assert status == "OK", f"{name} refused {sample.name}: {data}"
        peer.numbers[sample.name] = number
    status, data = imap.select("INBOX")
    assert status == "OK" and int(data[0]) == len(CORPUS), f"{name}: {data}"
    return peer


@dataclass
class Pair:
    appliance: Peer
    dovecot: Peer
    answers: dict[tuple[str, str], dict[str, tuple[Answer, Answer]]] = field(default_factory=dict)

    def ask(self, sample: str, item: str, name: str) -> tuple[Answer, Answer]:
        return self.appliance.fetch(sample, item, name), self.dovecot.fetch(sample, item, name)


@pytest.fixture(scope="module")
def peers(appliance_for_module, dovecot):
    app = appliance_for_module
    pair = Pair(
        _connect("appliance", app.host, app.imap_port, USER, PASSWORD),
        _connect("dovecot", dovecot.host, dovecot.port, dovecot.user, dovecot.password),
    )
    yield pair
    for peer in (pair.appliance, pair.dovecot):
        peer.imap.logout()


# ---------------------------------------------------------------------------
# What is compared

WHOLE_ITEMS = ("ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822.SIZE")
PART_ITEMS = ("BODY[n]", "BODY[n.MIME]", "BODY[n.HEADER]", "BODY[n.TEXT]", "BINARY.SIZE[n]")


def _sections(pair: Pair, sample: str, item: str) -> list[Section]:
    """The sections an item is fetched for: every part number that either
    server's BODYSTRUCTURE shows (the top level too for BODY[], HEADER and
    TEXT), only the leaves for BINARY.SIZE."""
    parts: dict[Section, bool] = {}
    for answer in pair.ask(sample, "BODYSTRUCTURE", "BODYSTRUCTURE"):
        for section, leaf in part_numbers(answer.value):
            parts[section] = parts.get(section, True) and leaf
    numbered = sorted(parts)
    if item == "BINARY.SIZE[n]":
        return [section for section in numbered if parts[section]]
    if item == "BODY[n.MIME]":
        return numbered
    return [(), *numbered]


def _commands(item: str, section: Section) -> tuple[str, str]:
    """The FETCH item to send for a section, and the name its answer has."""
    if item in WHOLE_ITEMS:
        return item, item
    number = dotted(section)
    if item == "BINARY.SIZE[n]":
        return f"BINARY.SIZE[{number}]", f"BINARY.SIZE[{number}]"
    text = item[len("BODY[n") : -1].lstrip(".")
    spec = ".".join(word for word in (number, text) if word)
    return f"BODY.PEEK[{spec}]", f"BODY[{spec}]"


def answers(pair: Pair, sample: str, item: str) -> dict[str, tuple[Answer, Answer]]:
    key = (sample, item)
    if key not in pair.answers:
        sections = [()] if item in WHOLE_ITEMS else _sections(pair, sample, item)
        found = {}
        for section in sections:
            command, name = _commands(item, section)
            found[dotted(section)] = pair.ask(sample, command, name)
        pair.answers[key] = found
    return pair.answers[key]


# ---------------------------------------------------------------------------
# Differences allowed, each exactly as it is


@dataclass(frozen=True)
class Expected:
    """How the appliance's answer differs from Dovecot's: replacing each
    appliance fragment by the Dovecot one, in order, gives Dovecot's answer
    (both spelled as Answer.compared). A fragment that no longer occurs, or
    any other difference, fails the test."""

    changes: tuple[tuple[bytes, bytes], ...]
    reason: str

    def matches(self, mine: bytes, theirs: bytes) -> bool:
        for appliance, dovecot in self.changes:
            if appliance not in mine:
                return False
            mine = mine.replace(appliance, dovecot)
        return mine == theirs


RFC2231_ESCAPE = Expected(
    ((b"R%C3%A9sum%C3%A9%20of%20the%20year.txt", b"R%C3%A9sum%C3%A9%20of the year.txt"),),
    "RFC 2231 7: an ext-value holds attribute-chars and %XX only. Joining a plain section to "
    "encoded ones, the appliance percent-encodes it; Dovecot escapes only '%' and leaves the "
    "spaces, which is not an ext-value",
)
WHOLE_MESSAGE_BINARY = (
    "RFC 3516 4.2 refuses BINARY of a part whose own encoding cannot be decoded. Dovecot "
    "decodes the whole message for any BINARY.SIZE and refuses every part of it when one "
    "part cannot be decoded"
)
INVALID_BASE64 = (
    "RFC 2045 6.8: characters outside the base64 alphabet are ignored, and the appliance "
    "decodes what a cut-off last group holds. Dovecot refuses invalid base64 as [PARSE], "
)
INVALID_CONTENT_TYPE = Expected(
    (
        (
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 12 1',
            b'("text" "" ("charset" "us-ascii") NIL NIL "7bit" 12 1',
        ),
        (
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 9 1',
            b'("" "" NIL NIL NIL "7bit" 9',
        ),
        (
            b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 15 1',
            b'("" "" NIL NIL NIL "7bit" 15',
        ),
        (b'("name" "open")', b"NIL"),
    ),  # fmt: skip
    "RFC 2045 5.2: a syntactically invalid Content-Type should be taken as text/plain "
    "us-ascii; Dovecot reports what it could read of it, down to empty types. And a quoted "
    "parameter value that is never closed: the appliance keeps it, Dovecot drops the parameter",
)
ENCODED_MESSAGE = (
    "RFC 2046 5.2.1: a message/rfc822 body is never base64; the appliance does not read the "
    "encoded text as a message, so it has no header. Dovecot reads the base64 line as a header "
    "whose blank line is the CRLF that RFC 2046 5.1.1 gives to the next delimiter, so its part "
    "1 is two octets and a line longer"
)

# (sample, item, section) -> how the two answers differ, and why that is allowed.
EXPECTED_DIFFERENCES: dict[tuple[str, str, str], Expected] = {
    ("rfc2231_parameters", "BODYSTRUCTURE", ""): RFC2231_ESCAPE,
    ("rfc2231_parameters", "BODY", ""): RFC2231_ESCAPE,
    **{
        ("unknown_transfer_encodings", "BINARY.SIZE[n]", section): Expected(
            ((size, b"NO [UNKNOWN-CTE]"),),
            WHOLE_MESSAGE_BINARY + " (here part 1, x-uuencode)",
        )
        for section, size in (("3", b"30"), ("4", b"22"), ("5", b"22"))
    },
    ("odd_addresses", "ENVELOPE", ""): Expected(
        ((b'"\\"quoted local part\\""', b'"quoted local part"'),),
        "RFC 3501 7.4.2: the mailbox name is the local-part, which RFC 5322 3.4.1 spells with "
        "its quotes; the appliance keeps them so that mailbox@host is an address again, "
        "Dovecot removes them",
    ),
    **{
        ("message_global", item, "2"): Expected(
            ((content, b'""'),),
            "RFC 9051 6.4.5 lets HEADER and TEXT address a MESSAGE/GLOBAL part as a message; "
            "Dovecot 2.3 knows only IMAP4rev1 (RFC 3501), where message/global is opaque",
        )
        for item, content in (
            (
                "BODY[n.HEADER]",
                b"{106}\r\nFrom: S\xc3\xb8ren <s\xc3\xb8ren@eksempel.dk>\r\n"
                b"Subject: Hilsen fra \xc3\x85rhus\r\n"
                b"Content-Type: text/plain; charset=utf-8\r\n\r\n",
            ),
            ("BODY[n.TEXT]", b"{15}\r\nMange hilsner\r\n"),
        )
    },
    ("disposition_language_location", "BODYSTRUCTURE", ""): Expected(
        ((b'"type" "text/html"', b'"type" "text"'),),
        "RFC 2045 5.1: a value is a token or a quoted-string, and '/' ends a token, so "
        "type=text/html is invalid; the appliance keeps what the sender meant up to the next "
        "';', Dovecot keeps the token before the '/'",
    ),
    ("disposition_language_location", "BINARY.SIZE[n]", "1"): Expected(
        ((b"20", b"12"),),
        "RFC 3516 4.2: BINARY.SIZE is the size of BINARY[1], a 7bit part that Dovecot itself "
        "sends as 20 octets; its 12 is wrong",
    ),
    **{
        ("base64_with_nul_bytes", "BINARY.SIZE[n]", section): Expected(
            ((size, b"NO [PARSE]"),),
            INVALID_BASE64 + "here part 3's raw NULs. " + WHOLE_MESSAGE_BINARY,
        )
        for section, size in (("1", b"25"), ("2", b"24"), ("3", b"6"))
    },
    ("quoted_printable_body", "BINARY.SIZE[n]", "1"): Expected(
        ((b"97", b"NO [PARSE]"),),
        "RFC 2045 6.7 note (2): a robust decoder keeps an '=' that starts no valid escape "
        "('=ZZ') as it is; Dovecot refuses the part as [PARSE]",
    ),
    ("base64_text_body", "BINARY.SIZE[n]", "1"): Expected(
        ((b"26", b"NO [PARSE]"),), INVALID_BASE64 + "here '!!' and a missing '='"
    ),
    ("repeated_fields", "ENVELOPE", ""): Expected(
        (
            (
                b'"Tue, 03 Nov 2026 10:00:00 +0000" "first subject"',
                b'"Wed, 04 Nov 2026 10:00:00 +0000" "second subject"',
            ),
            (
                b'(("Ann Example" NIL "ann" "example.org"))',
                b'(("Ann Example" NIL "ann" "example.org") (NIL NIL "second" "example.org"))',
            ),
            (b'"<repeat.1@example.org>"', b'"<repeat.2@example.org>"'),
        ),  # fmt: skip
        "RFC 5322 3.6 allows one of each of these fields, so this message is invalid and "
        "either reading is one. The appliance reads the first of each, as both servers read "
        "Content-* fields; Dovecot the last Date, Subject and Message-ID, and both From lists",
    ),
    ("repeated_fields", "BINARY.SIZE[n]", "1"): Expected(
        ((b"10", b"6"),),
        "Of two Content-Transfer-Encoding fields both servers show the first (8bit) in "
        "BODYSTRUCTURE; Dovecot's BINARY alone decodes by the last (base64), which RFC 3516 "
        "4.2 does not allow: BINARY undoes the encoding the part declares",
    ),
    ("invalid_content_types", "BODYSTRUCTURE", ""): INVALID_CONTENT_TYPE,
    ("invalid_content_types", "BODY", ""): INVALID_CONTENT_TYPE,
    **{
        ("encoded_message_part", item, ""): Expected(
            (
                (b'"base64" 46 ', b'"base64" 48 '),
                # body-fld-lines of part 1, the part before the second "message"
                (
                    f'0 0{ext}) 1{ext}) ("message"'.encode(),
                    f'0 0{ext}) 2{ext}) ("message"'.encode(),
                ),
            ),
            ENCODED_MESSAGE,
        )
        for item, ext in (("BODYSTRUCTURE", " NIL NIL NIL NIL"), ("BODY", ""))
    },
    ("encoded_message_part", "BODY[n]", "1"): Expected(
        (
            (
                b"{46}\r\nU3ViamVjdDogaGlkZGVuDQoNCmhpZGRlbiBib2R5DQo=\r\n",
                b"{48}\r\nU3ViamVjdDogaGlkZGVuDQoNCmhpZGRlbiBib2R5DQo=\r\n\r\n",
            ),
        ),
        ENCODED_MESSAGE,
    ),  # fmt: skip
    **{
        ("encoded_message_part", item, section): Expected(
            ((b'""', b"{46}\r\nU3ViamVjdDogaGlkZGVuDQoNCmhpZGRlbiBib2R5DQo=\r\n"),),
            ENCODED_MESSAGE,
        )
        for item, section in (("BODY[n.HEADER]", "1"), ("BODY[n.MIME]", "1.1"))
    },
    **{
        ("encoded_message_part", item, section): Expected(
            ((b"{2}\r\n\r\n", b'""'),),
            "Part 2 is a message/rfc822 whose message is only the blank line: both servers "
            "make BODY[2] those 2 octets, but Dovecot's 2.HEADER and 2.TEXT are both empty, "
            "though RFC 3501 6.4.5 makes a message its HEADER followed by its TEXT; the "
            "appliance's HEADER is that blank line",
        )
        for item, section in (("BODY[n.HEADER]", "2"), ("BODY[n.MIME]", "2.1"))
    },
}


def _window(data: bytes, start: int) -> str:
    """SHOWN octets of data from start, marked where cut."""
    piece = data[start : start + SHOWN]
    return ("..." if start else "") + repr(piece) + ("..." if start + SHOWN < len(data) else "")


def _describe(section: str, mine: Answer, theirs: Answer, expected: Expected | None) -> str:
    """Both answers as they arrived; when long, from a little before the
    first octet where the compared values differ."""
    start = 0
    if max(len(mine.raw), len(theirs.raw)) > SHOWN:
        a, b = mine.compared, theirs.compared
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        first = min(len(a), len(b)) if first is None else first
        start = max(0, first - 200)
        mine_shown, theirs_shown = _window(a, start), _window(b, start)
    else:
        mine_shown, theirs_shown = repr(mine.raw), repr(theirs.raw)
    lines = [
        f"section {section or '(whole)'}:",
        f"  appliance: {mine.status} {mine_shown}",
        f"  dovecot:   {theirs.status} {theirs_shown}",
    ]
    if expected is not None:
        lines.append("  expected these differences only:")
        lines += [f"    {appliance!r} -> {dovecot!r}" for appliance, dovecot in expected.changes]
        lines.append(f"    ({expected.reason})")
    return "\n".join(lines)


def _sample_id(sample: Sample) -> str:
    return sample.name


@pytest.mark.parametrize("item", WHOLE_ITEMS + PART_ITEMS)
@pytest.mark.parametrize("sample", CORPUS, ids=_sample_id)
def test_fetch_matches_dovecot(peers, sample, item):
    found = answers(peers, sample.name, item)
    assert found, f"no section of {sample.name} to compare"
    problems = []
    for section, (mine, theirs) in found.items():
        if theirs.status == "BAD" or theirs.compared.startswith(b"MISSING"):
            problems.append("Dovecot did not answer it, so the test asks wrongly:")
            problems.append(_describe(section, mine, theirs, None))
            continue
        expected = EXPECTED_DIFFERENCES.get((sample.name, item, section))
        if expected is None:
            ok = mine.compared == theirs.compared
        else:
            ok = expected.matches(mine.compared, theirs.compared)
        if not ok:
            problems.append(_describe(section, mine, theirs, expected))
    stale = [
        key[2]
        for key in EXPECTED_DIFFERENCES
        if key[:2] == (sample.name, item) and key[2] not in found
    ]
    if stale:
        problems.append(f"expected differences for sections never compared: {stale}")
    if problems:
        pytest.fail(f"{sample.name} {item} ({sample.why}):\n" + "\n".join(problems))


# ---------------------------------------------------------------------------
# SEARCH


@dataclass(frozen=True)
class SearchCase:
    name: str
    criteria: tuple[str, ...]  # the last one may be non-ASCII: it is sent as a literal
    finds: frozenset[str]  # the samples that a correct server finds
    charset: str | None = None


def case(name: str, *criteria: str, finds: tuple[str, ...] = (), charset: str | None = None):
    return SearchCase(name, criteria, frozenset(finds), charset)


SEARCHES = [
    case("subject_plain", "SUBJECT", "lunch", finds=("plain_text",)),
    case("subject_us_ascii", "SUBJECT", "LUNCH", finds=("plain_text",), charset="US-ASCII"),
    case("subject_in_b_word", "SUBJECT", "quarterly", finds=("rfc2047_encoded_words",)),
    case(
        "subject_in_q_word_latin1",
        "SUBJECT",
        "München",
        finds=("rfc2047_encoded_words",),
        charset="UTF-8",
    ),
    case("subject_raw_utf8", "SUBJECT", "Köln", finds=("raw_utf8_headers",), charset="UTF-8"),
    case("subject_folded", "SUBJECT", "segment59", finds=("long_folded_header",)),
    case("from_address", "FROM", "pirard@example", finds=("rfc2047_encoded_words",)),
    case("from_q_word_name", "FROM", "André", finds=("rfc2047_encoded_words",), charset="UTF-8"),
    case("from_raw_utf8_name", "FROM", "Müller", finds=("raw_utf8_headers",), charset="UTF-8"),
    case("to_b_word_name", "TO", "Zwetschge", finds=("rfc2047_encoded_words",)),
    case("to_group_name", "TO", "undisclosed-recipients", finds=("group_addresses",)),
    case("cc_mixed_case", "CC", "mixed@example.org", finds=("odd_addresses",)),
    case("header_custom", "HEADER", "X-Kitchen", "canteen", finds=("plain_text",)),
    case("header_present", "HEADER", "Sender", '""', finds=("plain_text", "odd_addresses")),
    case(
        "header_message_id",
        "HEADER",
        "Message-ID",
        "ext.1@",
        finds=("disposition_language_location",),
    ),
    case("body_plain", "BODY", "asparagus", finds=("plain_text",)),
    case("body_not_in_header", "BODY", "canteen"),
    case("text_in_header", "TEXT", "canteen", finds=("plain_text",)),
    case("text_in_body", "TEXT", "asparagus", finds=("plain_text",)),
    case("text_in_encoded_subject", "TEXT", "quarterly", finds=("rfc2047_encoded_words",)),
    case("body_in_base64", "BODY", "rhubarb", finds=("base64_text_body",)),
    case("body_in_upper_case_base64", "BODY", "gooseberry", finds=("unknown_transfer_encodings",)),
    # The encoded letters of "Rhubarb crumble" are not its text.
    case("body_base64_letters", "BODY", "Umh1YmFyYiBjcnVtYmxl"),
    case("body_base64_with_nul", "BODY", "nullberry", finds=("base64_with_nul_bytes",)),
    case(
        "body_qp_soft_line_break",
        "BODY",
        "supercalifragilistic",
        finds=("quoted_printable_body",),
    ),
    case("body_qp_utf8", "BODY", "Übermut", finds=("quoted_printable_body",), charset="UTF-8"),
    case(
        "body_qp_latin1",
        "BODY",
        "crème",
        finds=("latin1_bodies", "content_type_comments_and_case"),
        charset="UTF-8",
    ),
    case(
        "body_qp_latin1_upper_case",
        "BODY",
        "CRÈME",
        finds=("latin1_bodies", "content_type_comments_and_case"),
        charset="UTF-8",
    ),
    case("body_windows_1252", "BODY", "5 € per", finds=("latin1_bodies",), charset="UTF-8"),
    case("body_raw_utf8", "BODY", "Straße", finds=("raw_utf8_headers",), charset="UTF-8"),
    case("body_in_encapsulated_message", "BODY", "kumquat", finds=("rfc822_in_mixed",)),
    # Only in the decoded PDF: BODY searches text parts, not attachments.
    case("body_in_pdf_attachment", "BODY", "Catalog"),
]


def _astring(word: str) -> str:
    if re.fullmatch(r"[!#$&'*+\-./0-9:<=>?@A-Z^_`a-z|~]+", word) or word == '""':
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def search(imap: imaplib.IMAP4, found: SearchCase) -> tuple[str, set[int], bytes]:
    """The search's status, the sequence numbers found, and what arrived."""
    *first, last = found.criteria
    args = [_astring(word) for word in first]
    if last.isascii():
        args.append(_astring(last))
    else:
        imap.literal = last.encode("utf-8")
    try:
        status, data = imap.search(found.charset, *args)
    except imaplib.IMAP4.error as error:
        return "BAD", set(), str(error).encode()
    numbers = {int(n) for n in b" ".join(d for d in data if d).split()} if status == "OK" else set()
    return status, numbers, b" ".join(d for d in data if isinstance(d, bytes))


@pytest.mark.parametrize("found", SEARCHES, ids=lambda c: c.name)
def test_search_matches_dovecot(peers, found):
    names = {number: name for name, number in peers.dovecot.numbers.items()}
    status, theirs, their_raw = search(peers.dovecot.imap, found)
    assert status == "OK", f"Dovecot refused the search: {their_raw!r}"
    assert {names[n] for n in theirs} == found.finds, (
        f"Dovecot finds {sorted(names[n] for n in theirs)}: the case is wrong"
    )
    status, mine, my_raw = search(peers.appliance.imap, found)
    assert (status, sorted(names.get(n, n) for n in mine)) == ("OK", sorted(found.finds)), (
        f"SEARCH {found.charset or ''} {' '.join(found.criteria)}:\n"
        f"  appliance: {status} {my_raw!r}\n  dovecot:   OK {their_raw!r}"
    )
