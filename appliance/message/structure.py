"""A message's MIME structure, computed once, and every FETCH answered from it.

analyze() reads a message in one forward pass and returns its Structure: where
each part's header and body lie, the part's parsed MIME fields, and the
ENVELOPE of the message and of each encapsulated message. The store keeps
Structure.to_record() beside the message, as Dovecot keeps its index data, so
that FETCH ENVELOPE, BODY, BODYSTRUCTURE, BODY[section], BINARY[section],
BINARY.SIZE and RFC822.* never parse a body again: they are rendered from the
Structure, or answered with byte ranges of the raw message, which the store
hands out as a memoryview and which is never copied whole.

Choices that RFC 3501 and RFC 9051 leave open, made as Dovecot makes them so
that the two can be compared octet for octet:

- Sizes and offsets are those of the stored octets: nothing is converted to
  CRLF (Dovecot counts the CRLF form: the same for the CRLF mail that SMTP
  delivers). Lines (body-fld-lines) are the number of LF octets in the body,
  so a last line without a line end is not counted.
- Strings keep the case they had in the message; defaults are lower case
  ("text" "plain" ("charset" "us-ascii") ... "7bit"). A text/* part without a
  charset parameter is reported with charset us-ascii (RFC 2046 4.1.2), after
  its other parameters. An encapsulated message is "message" "rfc822"
  whatever the case of its Content-Type.
- RFC 2231 parameter sections are joined: name*0, name*1 become one name;
  when any section is encoded the result is name* with one charset'lang'
  prefix and the plain sections percent-encoded, still 7-bit and lossless
  (Dovecot escapes only "%" in them). Joined parameters follow the plain
  ones, by name; sections with a number missing or repeated are not joined.
- ENVELOPE strings have no RFC 2047 decoding. A field value is unfolded by
  removing its line ends: the white space after the colon is dropped, the
  rest kept, trailing white space too. The subject and display names are
  written with each run of white space as one space and none at the ends.
  An addr-spec without angle brackets takes the last comment in or after
  it as its name ("user@host (Name)"); a comment beside <...> is no name.
- An address without a local part or domain ("<>" lacks both) gets
  MISSING_MAILBOX or MISSING_DOMAIN, because a NIL host means a group (RFC
  3501 7.4.2).
- A multipart without a boundary parameter, or whose boundary never occurs,
  has no parts; BODYSTRUCTURE shows one empty text/plain part in it (with
  empty extension data) because the grammar needs at least one
  (body-type-mpart = 1*body ...).
- A section that does not exist, and HEADER or TEXT of a part that is not a
  message/rfc822, is empty: the server sends "" (Mark Crispin on the
  imap-protocol list, 2011: meaningless section fetches return "").

Broken mail is parsed, never refused: LF-only line ends, a header with no
blank line after it (all header, empty body), lines that are not fields,
missing close delimiters (the part runs to an enclosing boundary or to the
end). StructureLimits bound the work; beyond them the rest is opaque body:
a multipart or message on the last level of nesting is not opened and is
reported as application/octet-stream, with its parameters.
"""

from __future__ import annotations

import binascii
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

# Bump when the record layout changes; from_record() refuses other versions so
# that the store re-analyzes the message instead of misreading it.
RECORD_VERSION = 1

# analyze() and the renderers recurse once or twice per nesting level; this
# keeps the deepest allowed structure well inside Python's default recursion
# limit of 1000 frames, with room for the caller's own frames.
_DEPTH_CEILING = 300

# Line ends are counted in slices of this size so that a memoryview of a
# large message is never copied whole into the heap.
_COUNT_CHUNK = 1 << 20

# RFC 3501 7.4.2: a host of NIL marks group syntax, so an address that lacks a
# part gets a placeholder instead; these are the words Dovecot uses.
MISSING_MAILBOX = b"MISSING_MAILBOX"
MISSING_DOMAIN = b"MISSING_DOMAIN"


@dataclass(frozen=True, slots=True)
class StructureLimits:
    """How much of a message analyze() looks into; the rest is opaque body."""

    # Levels of nesting, the message itself the first: a multipart or
    # message part on the last level is not opened but reported as the
    # opaque application/octet-stream it has become. Real mail nests a few
    # levels (a forward inside a reply inside a digest is five); 100 is
    # Dovecot's default, counted as Dovecot counts it, and bounds the recursion.
    max_depth: int = 100
    # Parts counted over the whole message, Dovecot's default: each costs a
    # few dozen bytes of record and of BODYSTRUCTURE, so 10,000 keeps both
    # under a megabyte. Once reached, no further boundary is looked for: the
    # rest of the message is body of the multiparts still open.
    max_parts: int = 10_000
    # Octets of each header that are parsed into fields. Real headers are a
    # few KiB and a long To: a few hundred; the ceiling stops one hostile
    # header from costing more. The whole block still counts as header.
    max_header_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= _DEPTH_CEILING:
            raise ValueError(f"max_depth must be 1..{_DEPTH_CEILING}")
        if self.max_parts < 1 or self.max_header_bytes < 0:
            raise ValueError("max_parts must be positive and max_header_bytes not negative")


class Address(NamedTuple):
    """One address of an ENVELOPE (RFC 3501 7.4.2).

    A group starts with (None, None, group name, None) and ends with four
    Nones. Values are the octets of the message, RFC 2047 words left encoded.
    """

    name: bytes | None
    adl: bytes | None
    mailbox: bytes | None
    host: bytes | None


_GROUP_END = Address(None, None, None, None)


@dataclass(frozen=True, slots=True)
class Envelope:
    """The ENVELOPE fields of a message, first occurrence of each, unfolded.

    An absent field is None, or () for an address list. Sender and Reply-To
    are kept as found; rendering substitutes From (RFC 3501 7.4.2).
    """

    date: bytes | None = None
    subject: bytes | None = None
    from_: tuple[Address, ...] = ()
    sender: tuple[Address, ...] = ()
    reply_to: tuple[Address, ...] = ()
    to: tuple[Address, ...] = ()
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()

    @property
    def authors(self) -> list[str]:
        """The From addresses as "mailbox@host", lower-cased."""
        return [
            f"{a.mailbox.decode(errors='replace')}@{a.host.decode(errors='replace')}".lower()
            for a in self.from_
            if a.mailbox and a.host
        ]

    in_reply_to: bytes | None = None
    message_id: bytes | None = None


@dataclass(frozen=True, slots=True)
class Part:
    """One MIME part: the top message, a part of a multipart, or a message
    encapsulated in a message/rfc822 (or message/global) part.

    The header block is message[header_start:body_start], blank line
    included; the body is message[body_start:body_end]. Children are the
    parts of a multipart, or the one encapsulated message of a message part;
    a part with an envelope is a message (the top one or an encapsulated one).
    """

    header_start: int
    body_start: int
    body_end: int
    lines: int
    type: str
    subtype: str
    parameters: tuple[tuple[str, bytes], ...] = ()
    id: bytes | None = None
    description: bytes | None = None
    # The Content-Transfer-Encoding token as written; None when absent or
    # not a token, which means 7bit (RFC 2045 6.1).
    encoding: str | None = None
    md5: bytes | None = None
    disposition: str | None = None
    disposition_parameters: tuple[tuple[str, bytes], ...] = ()
    language: tuple[str, ...] | None = None
    location: bytes | None = None
    envelope: Envelope | None = None
    children: tuple[Part, ...] = ()


class RecordError(ValueError):
    """A stored record that this version cannot read: analyze the message again."""


class UnknownTransferEncoding(Exception):
    """BINARY of a part whose Content-Transfer-Encoding is not known.

    The server answers the command with NO [UNKNOWN-CTE] (RFC 3516 4.2, RFC 9051 7.1).
    """

    def __init__(self, encoding: str) -> None:
        super().__init__(f"unknown Content-Transfer-Encoding {encoding!r}")
        self.encoding = encoding


@dataclass(frozen=True, slots=True)
class Structure:
    """The analyzed structure of one message; `root` is the message itself."""

    root: Part

    def to_record(self) -> list:
        """A msgpack-able value: lists, str, bytes, int and None only."""
        return [RECORD_VERSION, _part_record(self.root)]

    @classmethod
    def from_record(cls, value: object) -> Structure:
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise RecordError("not a structure record")
        if value[0] != RECORD_VERSION:
            raise RecordError(f"structure record version {value[0]!r}")
        try:
            return cls(_part_from_record(value[1]))
        except (TypeError, ValueError, IndexError) as error:
            raise RecordError(f"malformed structure record: {error}") from None


# ---------------------------------------------------------------------------
# analyze()

_LF, _CR, _SEMICOLON, _OPEN = 0x0A, 0x0D, 0x3B, 0x28
_TEXT_PLAIN = ("text", "plain")
_MESSAGE_RFC822 = ("message", "rfc822")
_MESSAGE_TYPES = frozenset({_MESSAGE_RFC822, ("message", "global")})
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})

# A field line and its continuation lines (RFC 5322 2.2, 2.2.3). `.` stops at
# LF only, so a CR before it stays in the value and is removed by unfolding.
# WSP before the colon is the obsolete syntax of RFC 5322 4.5.
FIELD = re.compile(rb"^(?P<name>[!-9;-~]+)[ \t]*:(?P<value>.*(?:\n[ \t].*)*)", re.M)
_LINE_END = re.compile(rb"\r?\n|\r\Z")
_LEADING_SPACE = re.compile(rb"^[ \t]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")
_NEWLINE = re.compile(rb"\n")

_MIME_FIELDS = frozenset(
    {
        b"content-type",
        b"content-transfer-encoding",
        b"content-id",
        b"content-description",
        b"content-disposition",
        b"content-language",
        b"content-location",
        b"content-md5",
    }
)
_MESSAGE_FIELDS = _MIME_FIELDS | {
    b"date",
    b"subject",
    b"from",
    b"sender",
    b"reply-to",
    b"to",
    b"cc",
    b"bcc",
    b"in-reply-to",
    b"message-id",
}


def analyze(message: bytes | memoryview, limits: StructureLimits = StructureLimits()) -> Structure:
    """The structure of `message`, found in one pass; never raises on content."""
    return Structure(_Analyzer(memoryview(message).cast("B"), limits).root())


def load_structure(info: object, body: bytes | memoryview) -> Structure:
    """The body's structure from its stored record (the store's blob_info);
    analyzed here only for a body stored without one (or with a record of
    an older layout)."""
    if info is not None:
        try:
            return Structure.from_record(info)
        except RecordError:
            pass
    return analyze(body)


def author_addresses(envelope: Envelope | None) -> list[str]:
    """The From addresses (local@host) of an envelope, for lists of senders."""
    return [
        f"{address.mailbox.decode(errors='replace')}@{address.host.decode(errors='replace')}"
        for address in (envelope.from_ if envelope else ())
        if address.mailbox and address.host
    ]


class _Hit(NamedTuple):
    """A boundary delimiter line (RFC 2046 5.1.1) of an open multipart."""

    level: int  # index of the multipart in the stack of open ones
    line: int  # offset of the line's "--"
    after: int  # offset just past the line's LF
    close: bool  # the close delimiter, boundary followed by "--"


class _Level:
    """One open multipart's boundary and where it occurs next.

    `found` is the next line start holding the delimiter, or -1 when none
    exists in the line starts searched so far, which end before `checked_to`.
    Positions only move forward during a parse, so what one search learned
    stays true for later ones and no octet is searched twice per level.
    """

    __slots__ = ("boundary", "delimiter", "pattern", "found", "checked_to")

    def __init__(self, boundary: bytes) -> None:
        self.boundary = boundary
        self.delimiter = b"--" + boundary
        self.pattern = re.compile(re.escape(b"\n" + self.delimiter))
        self.found = -1
        self.checked_to = 0

    def find(self, buf: memoryview, pos: int, limit: int) -> int:
        """First line start in [pos, limit] that begins with the delimiter, or -1."""
        if self.found >= pos:
            return self.found
        start = max(pos, self.checked_to)
        if start > limit:
            return -1
        found = -1
        length = len(self.delimiter)
        if (start == 0 or buf[start - 1] == _LF) and buf[start : start + length] == self.delimiter:
            found = start
        else:
            match = self.pattern.search(buf, start, min(limit + length, len(buf)))
            if match is not None:
                found = match.start() + 1
        self.found = found
        self.checked_to = found + 1 if found >= 0 else limit + 1
        return found


class _Boundaries:
    """The boundaries of the open multiparts, outermost first."""

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf
        self._levels: list[_Level] = []
        # Set when the part budget is spent: from then on no boundary is
        # looked for and everything open runs to the end of the message.
        self.exhausted = False

    def push(self, boundary: bytes) -> int:
        self._levels.append(_Level(boundary))
        return len(self._levels) - 1

    def pop(self, level: int) -> None:
        del self._levels[level:]

    def next(self, pos: int) -> _Hit | None:
        """The first delimiter line of any open multipart at or after `pos`."""
        if self.exhausted or not self._levels:
            return None
        buf = self._buf
        limit = len(buf)
        at: list[int] = []
        # Outer levels first: an inner boundary only matters before the next
        # outer one, which ends the inner multipart anyway, so each search
        # stops there and a boundary that never recurs is not searched for
        # to the end of the message again and again.
        for index, level in enumerate(self._levels):
            line = level.find(buf, pos, limit)
            if line < 0 or line > limit:
                continue
            if not at or line < limit:
                limit, at = line, [index]
            else:
                at.append(index)
        if not at:
            return None
        # RFC 2046 5.1.1 matches a boundary as a prefix of the line, so one
        # line can match several open boundaries when one is a prefix of
        # another: the longest wins, then the innermost (a reused boundary).
        index = max(at, key=lambda i: (len(self._levels[i].boundary), i))
        end = limit + len(self._levels[index].delimiter)
        newline = _NEWLINE.search(buf, limit)
        return _Hit(
            level=index,
            line=limit,
            after=newline.end() if newline else len(buf),
            close=buf[end : end + 2] == b"--",
        )


class _LineCounter:
    """LF octets before a position. analyze() asks for positions in
    increasing order, so counting on from the last answer counts each octet
    once even though parts nest."""

    def __init__(self, buf: memoryview) -> None:
        self._buf = buf
        self._pos = 0
        self._count = 0

    def at(self, pos: int) -> int:
        while self._pos < pos:
            end = min(pos, self._pos + _COUNT_CHUNK)
            self._count += bytes(self._buf[self._pos : end]).count(b"\n")
            self._pos = end
        return self._count


class _Analyzer:
    def __init__(self, buf: memoryview, limits: StructureLimits) -> None:
        self._buf = buf
        self._size = len(buf)
        self._limits = limits
        self._boundaries = _Boundaries(buf)
        self._lines = _LineCounter(buf)
        self._parts = 0

    def root(self) -> Part:
        return self._part(0, 0, _TEXT_PLAIN, True)[0]

    def _budget(self) -> bool:
        """Whether one more part may be parsed; spends the budget when not."""
        if self._parts >= self._limits.max_parts:
            self._boundaries.exhausted = True
        return not self._boundaries.exhausted

    def _before(self, hit: _Hit | None, floor: int) -> int:
        """Where content ends before a delimiter line: the line end preceding
        it belongs to the delimiter (RFC 2046 5.1.1). Never before `floor`."""
        if hit is None:
            return self._size
        end = hit.line - 1
        if end > floor and self._buf[end - 1] == _CR:
            end -= 1
        return max(end, floor)

    def _part(
        self, start: int, depth: int, default: tuple[str, str], is_message: bool
    ) -> tuple[Part, _Hit | None]:
        """The part at `start`, and the delimiter line that ended it (None: the end)."""
        self._parts += 1
        bound = self._boundaries.next(start)
        blank_end = self._blank_line_end(start, bound.line if bound else self._size)
        separated = blank_end is not None
        # Without a blank line the whole part is header (RFC 5322 2.1 makes
        # the body optional; Dovecot reads such mail the same way).
        body_start = self._before(bound, start) if blank_end is None else blank_end
        fields = self._fields(start, body_start, _MESSAGE_FIELDS if is_message else _MIME_FIELDS)
        mime = _mime(fields, default)
        first_line = self._lines.at(body_start)
        kind = (mime["type"].lower(), mime["subtype"].lower())
        boundary = _parameter(mime["parameters"], "boundary")
        children: tuple[Part, ...] = ()
        multipart = separated and kind[0] == "multipart" and bool(boundary)
        # RFC 2046 5.2.1: the body is a whole message. An encoded one (RFC
        # 6532 3.5 allows that for message/global) stays opaque.
        message = (
            separated
            and kind in _MESSAGE_TYPES
            and (mime["encoding"] or "7bit").lower() in _IDENTITY_ENCODINGS
        )
        if (multipart or message) and depth + 1 >= self._limits.max_depth:
            # Not opened: it is reported as what it has become, opaque
            # octets, with its parameters, as Dovecot reports it.
            mime.update(type="application", subtype="octet-stream")
            multipart = message = False
        if multipart:
            children, hit, body_end = self._multipart(
                boundary, body_start, depth, kind[1] == "digest"
            )
        elif message and self._budget():
            child, hit = self._part(body_start, depth + 1, _TEXT_PLAIN, True)
            children, body_end = (child,), child.body_end
        else:
            hit = self._boundaries.next(body_start)
            body_end = self._before(hit, body_start)
        part = Part(
            header_start=start,
            body_start=body_start,
            body_end=body_end,
            lines=self._lines.at(body_end) - first_line,
            envelope=_envelope(fields) if is_message else None,
            children=children,
            **mime,
        )
        return part, hit

    def _multipart(
        self, boundary: bytes, body_start: int, depth: int, digest: bool
    ) -> tuple[tuple[Part, ...], _Hit | None, int]:
        """The parts between the delimiters (RFC 2046 5.1.1), the delimiter
        line of an enclosing multipart that ended this one, and the body end."""
        # RFC 2046 5.1.5: in a digest a part without Content-Type is a message.
        default = _MESSAGE_RFC822 if digest else _TEXT_PLAIN
        level = self._boundaries.push(boundary)
        children: list[Part] = []
        hit = self._boundaries.next(body_start)  # skips the preamble
        while hit is not None and hit.level == level and not hit.close:
            if not self._budget():
                hit = None
                break
            child, hit = self._part(hit.after, depth + 1, default, False)
            children.append(child)
        self._boundaries.pop(level)
        if hit is not None and hit.level == level:
            # The close delimiter: the epilogue runs to an enclosing boundary.
            hit = self._boundaries.next(hit.after)
        # A missing close delimiter ends the multipart where its parent ends.
        end = self._before(hit, body_start)
        if children:
            end = max(end, children[-1].body_end)
        return tuple(children), hit, end

    def _blank_line_end(self, start: int, end: int) -> int | None:
        """The end of the blank line that ends the header, if one lies before
        `end`. It may end right where a delimiter line starts: its line end
        then also precedes the delimiter, and the body is empty."""
        buf = self._buf
        if start < end and buf[start] == _LF:
            return start + 1
        if start + 2 <= end and buf[start] == _CR and buf[start + 1] == _LF:
            return start + 2
        blank = _BLANK_LINE.search(buf, start, end)
        return None if blank is None else blank.end()

    def _fields(self, start: int, end: int, wanted: frozenset[bytes]) -> dict[bytes, bytes]:
        """The first occurrence of each wanted field, unfolded."""
        fields: dict[bytes, bytes] = {}
        stop = min(end, start + self._limits.max_header_bytes)
        for match in FIELD.finditer(self._buf, start, stop):
            name = match.group(1).lower()
            if name in wanted and name not in fields:
                fields[name] = _unfold(match.group(2))
        return fields


def _unfold(value: bytes) -> bytes:
    # RFC 5322 2.2.3: unfolding removes the line ends and keeps the white
    # space of each continuation. The white space after the colon is not
    # content; trailing white space is kept, and a CR that ends no line is
    # white space too, as Dovecot reads them.
    value = _LINE_END.sub(b"", _LEADING_SPACE.sub(b"", value, count=1))
    return value.replace(b"\r", b" ")


# ---------------------------------------------------------------------------
# MIME fields (RFC 2045, RFC 2183, RFC 2231, RFC 3282, RFC 2557, RFC 1864)

# RFC 2045 5.1 token: printable US-ASCII except tspecials.
_TOKEN = re.compile(rb"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"?', re.S)
_ESCAPED = re.compile(rb"\\(.)", re.S)
_COMMENT_PIECE = re.compile(rb"[^()\\]+|\\.?|[()]", re.S)
_WHITESPACE = frozenset(b" \t\r\n")
# RFC 2231 7: name*N (a section), name*N* (an encoded section), name* (one encoded value).
_SECTION = re.compile(r"(.+?)\*(?:([0-9]{1,3})(\*?))?", re.ASCII)
# RFC 2231 7 attribute-char: a token character other than "*", "'" and "%".
_NOT_ATTRIBUTE_CHAR = re.compile(rb"[^!#$&+\-.0-9A-Z^_`a-z{|}~]")


def _mime(fields: dict[bytes, bytes], default: tuple[str, str]) -> dict:
    """The Part fields that come from the MIME header fields."""
    content_type = fields.get(b"content-type")
    parsed = _content_type(content_type) if content_type is not None else None
    # RFC 2045 5.2: an absent or invalid Content-Type means the default.
    type_, subtype, parameters = parsed if parsed is not None else (*default, ())
    disposition = fields.get(b"content-disposition")
    parsed_disposition = _disposition(disposition) if disposition is not None else None
    language = fields.get(b"content-language")
    encoding = fields.get(b"content-transfer-encoding")
    return {
        "type": type_,
        "subtype": subtype,
        "parameters": parameters,
        "id": fields.get(b"content-id"),
        "description": fields.get(b"content-description"),
        "encoding": _first_token(encoding) if encoding is not None else None,
        "md5": fields.get(b"content-md5"),
        "disposition": parsed_disposition[0] if parsed_disposition else None,
        "disposition_parameters": parsed_disposition[1] if parsed_disposition else (),
        "language": _languages(language) if language is not None else None,
        "location": fields.get(b"content-location"),
    }


def _parameter(parameters: tuple[tuple[str, bytes], ...], name: str) -> bytes | None:
    return next((value for key, value in parameters if key.lower() == name), None)


def _skip_cfws(value: bytes, i: int) -> int:
    """Index of the first octet at or after i that is not white space or a
    comment (RFC 5322 3.2.2 CFWS)."""
    n = len(value)
    while i < n:
        if value[i] in _WHITESPACE:
            i += 1
        elif value[i] == _OPEN:
            i = _comment(value, i)[1]
        else:
            break
    return i


def _comment(value: bytes, i: int) -> tuple[bytes, int]:
    """The text of the comment opening at value[i], nested comments kept as
    text, and the index after it; an unclosed comment runs to the end."""
    depth = 0
    text = []
    for piece in _COMMENT_PIECE.finditer(value, i):
        chunk = piece.group()
        if chunk == b"(":
            depth += 1
            if depth == 1:
                continue
        elif chunk == b")":
            depth -= 1
            if depth == 0:
                return b"".join(text), piece.end()
        elif chunk[:1] == b"\\":
            chunk = chunk[1:]
        text.append(chunk)
    return b"".join(text), len(value)


def _quoted(value: bytes, i: int) -> tuple[bytes, int]:
    """The content of the quoted string at value[i] and the index after it."""
    match = _QUOTED.match(value, i)
    return _ESCAPED.sub(rb"\1", match.group(1)), match.end()


def _first_token(value: bytes) -> str | None:
    match = _TOKEN.match(value, _skip_cfws(value, 0))
    return match.group().decode("ascii") if match else None


def _content_type(value: bytes) -> tuple[str, str, tuple[tuple[str, bytes], ...]] | None:
    """RFC 2045 5.1: type "/" subtype *(";" parameter); None when invalid."""
    main = _TOKEN.match(value, _skip_cfws(value, 0))
    if main is None:
        return None
    slash = _skip_cfws(value, main.end())
    if value[slash : slash + 1] != b"/":
        return None
    sub = _TOKEN.match(value, _skip_cfws(value, slash + 1))
    if sub is None:
        return None
    return (
        main.group().decode("ascii"),
        sub.group().decode("ascii"),
        _parameters(value, sub.end()),
    )


def _disposition(value: bytes) -> tuple[str, tuple[tuple[str, bytes], ...]] | None:
    """RFC 2183 2: disposition-type *(";" disposition-parm)."""
    kind = _TOKEN.match(value, _skip_cfws(value, 0))
    if kind is None:
        return None
    return kind.group().decode("ascii"), _parameters(value, kind.end())


def _languages(value: bytes) -> tuple[str, ...] | None:
    """RFC 3282 2: 1#Language-tag, with comments allowed between them."""
    tags = []
    i = _skip_cfws(value, 0)
    while (tag := _TOKEN.match(value, i)) is not None:
        tags.append(tag.group().decode("ascii"))
        i = _skip_cfws(value, tag.end())
        if value[i : i + 1] != b",":
            break
        i = _skip_cfws(value, i + 1)
    return tuple(tags) or None


def _parameters(value: bytes, i: int) -> tuple[tuple[str, bytes], ...]:
    """The `; name=value` list after a type (RFC 2045 5.1), sections joined."""
    found: list[tuple[str, bytes]] = []
    n = len(value)
    while True:
        i = _skip_cfws(value, i)
        if i >= n:
            break
        if value[i] != _SEMICOLON:
            # Junk where a parameter should be: resume at the next one.
            i = value.find(b";", i)
            if i < 0:
                break
        i = _skip_cfws(value, i + 1)
        name = _TOKEN.match(value, i)
        if name is None:
            continue
        i = _skip_cfws(value, name.end())
        if value[i : i + 1] != b"=":
            continue
        i = _skip_cfws(value, i + 1)
        if value[i : i + 1] == b'"':
            text, i = _quoted(value, i)
        else:
            token = _TOKEN.match(value, i)
            after = _skip_cfws(value, token.end()) if token else i
            if token and (after >= n or value[after] == _SEMICOLON):
                text, i = token.group(), after
            else:
                # Mailers send unquoted values with spaces or 8-bit octets
                # (name=Q3 report.pdf): keep all up to the next ";".
                end = value.find(b";", i)
                end = n if end < 0 else end
                text, i = value[i:end].strip(b" \t\r\n"), end
        found.append((name.group().decode("ascii"), text))
    return _join_sections(found)


def _join_sections(found: list[tuple[str, bytes]]) -> tuple[tuple[str, bytes], ...]:
    """RFC 2231 3 and 4: the sections of one parameter become one parameter.

    In Dovecot's order: the plain parameters as written, then the RFC 2231
    ones by name. Sections that are not numbered 0, 1, 2 ... (one missing,
    one repeated) are not joined, since what they spell is unknown: each
    stays a parameter of its own, named name*N or name*N*.
    """
    plain: list[tuple[str, bytes]] = []
    sections: list[tuple[str, int, bool, bytes]] = []  # name, number, encoded, value
    for name, value in found:
        match = _SECTION.fullmatch(name)
        if match is None:
            plain.append((name, value))
            continue
        base, number, star = match.groups()
        if number is None:  # name*: one encoded value, section 0
            sections.append((base, 0, True, value))
        else:
            sections.append((base, int(number), star == "*", value))
    sections.sort(key=lambda section: (section[0], section[1]))
    joined: list[tuple[str, bytes]] = []
    for _, grouped in itertools.groupby(sections, key=lambda section: section[0].lower()):
        group = list(grouped)
        if [number for _, number, _, _ in group] != list(range(len(group))):
            joined += [
                (f"{base}*{number}{'*' if encoded else ''}", value)
                for base, number, encoded, value in group
            ]
        elif not any(encoded for _, _, encoded, _ in group):
            joined.append((group[0][0], b"".join(value for _, _, _, value in group)))
        else:
            joined.append((group[0][0] + "*", _extended_value(group)))
    return (*plain, *joined)


def _extended_value(group: list[tuple[str, int, bool, bytes]]) -> bytes:
    """One RFC 2231 ext-value from sections of which some are encoded."""
    pieces = []
    for _, number, encoded, value in group:
        if encoded:
            pieces.append(value)
            continue
        # A plain section inside an encoded value must be percent-encoded
        # (RFC 2231 7 extended-other-values), and a plain first one gets the
        # empty charset'language' prefix that an ext-value starts with.
        escaped = _NOT_ATTRIBUTE_CHAR.sub(lambda m: b"%%%02X" % m.group()[0], value)
        pieces.append(b"''" + escaped if number == 0 else escaped)
    return b"".join(pieces)


# ---------------------------------------------------------------------------
# Addresses (RFC 5322 3.4 with the obsolete forms of 4.4, RFC 6532 for UTF-8)

_ADDRESS_TOKEN = re.compile(
    rb"""
      (?P<space>[ \t\r\n]+)
    | (?P<quoted>"(?P<content>(?:[^"\\]|\\.)*)"?)
    | (?P<literal>\[(?:[^\]\\]|\\.)*\]?)
    | (?P<comment>\()
    | (?P<special>[<>:;@,.])
    | (?P<atom>[^\x00-\x20()<>\[\]:;@\\,."\x7f]+)
    | (?P<junk>.)
    """,
    re.X | re.S,
)
_WORD_KINDS = frozenset({"atom", "quoted", "literal", "comment", "."})


class _Token(NamedTuple):
    kind: str  # "atom", "quoted", "literal", "comment", or the special itself
    text: bytes  # quoted strings and comments without their delimiters
    raw: bytes
    spaced: bool  # white space or a comment came before it


def _address_tokens(value: bytes) -> list[_Token]:
    tokens = []
    spaced = False
    i = 0
    while i < len(value):
        match = _ADDRESS_TOKEN.match(value, i)
        kind = match.lastgroup
        if kind == "comment":
            text, end = _comment(value, i)
            tokens.append(_Token("comment", text.strip(b" \t"), value[i:end], spaced))
            spaced, i = True, end
            continue
        i = match.end()
        if kind in ("space", "junk"):
            spaced = spaced or kind == "space"
            continue
        raw = match.group()
        if kind == "quoted":
            text = _ESCAPED.sub(rb"\1", match.group("content"))
        elif kind == "special":
            kind, text = raw.decode("ascii"), raw
        else:
            text = raw
        tokens.append(_Token(kind, text, raw, spaced))
        spaced = False
    return tokens


def _phrase(words: list[_Token]) -> bytes | None:
    """A display name: words with one space where the message had any."""
    text = b"".join(
        (b" " if word.spaced and n else b"") + word.text for n, word in enumerate(words)
    )
    return text or None


def _raw(tokens: list[_Token]) -> bytes:
    """A local part, domain or route as written, comments and spaces left out."""
    return b"".join(token.raw for token in tokens if token.kind != "comment")


def _comment_name(tokens: list[_Token]) -> bytes | None:
    """The name of an addr-spec without angle brackets: "user@host (Real
    Name)" has only its comment. As Dovecot reads it, that is the last
    comment from the local part on, and an empty one is no name; a comment
    before the address is not its name."""
    first = next((n for n, token in enumerate(tokens) if token.kind != "comment"), len(tokens))
    comments = [token for token in tokens[first:] if token.kind == "comment"]
    return (comments[-1].text or None) if comments else None


def _angle_address(inner: list[_Token], name: bytes | None) -> Address:
    """The route and addr-spec between < and > (RFC 5322 3.4, 4.4 obs-route).
    An empty one, "<>", is an address that lacks both parts, as Dovecot
    shows it."""
    inner = [token for token in inner if token.kind != "comment"]
    route = None
    colons = [n for n, token in enumerate(inner) if token.kind == ":"]
    if colons:
        route = _raw(inner[: colons[-1]]) or None
        inner = inner[colons[-1] + 1 :]
    at = next((n for n, token in enumerate(inner) if token.kind == "@"), None)
    if at is None:
        local, domain = _raw(inner), b""
    else:
        local, domain = _raw(inner[:at]), _raw(inner[at + 1 :])
    return Address(name, route, local or MISSING_MAILBOX, domain or MISSING_DOMAIN)


def _addresses(value: bytes) -> tuple[Address, ...]:
    """An address-list (RFC 5322 3.4) as ENVELOPE addresses, groups marked
    as RFC 3501 7.4.2 says. Whatever cannot be read is skipped."""
    tokens = _address_tokens(value)
    found: list[Address] = []
    in_group = False
    i, n = 0, len(tokens)
    while i < n:
        start = i
        while i < n and tokens[i].kind in _WORD_KINDS:
            i += 1
        words = [token for token in tokens[start:i] if token.kind != "comment"]
        spelled = tokens[start:i]  # the words with their comments
        kind = tokens[i].kind if i < n else ""
        if kind == "<":
            close = next((j for j in range(i + 1, n) if tokens[j].kind == ">"), n)
            # A comment beside an angle address is not its name.
            name = _phrase(words)
            address = _angle_address(tokens[i + 1 : close], name)
            i = close + 1
        elif kind == "@":
            i += 1
            domain_start = i
            while i < n and tokens[i].kind in _WORD_KINDS:
                i += 1
            domain = tokens[domain_start:i]
            address = Address(
                _comment_name(spelled + domain),
                None,
                _raw(words) or MISSING_MAILBOX,
                _raw(domain) or MISSING_DOMAIN,
            )
        elif kind == ":" and words and not in_group:
            # Never None: four NILs would read as the end of a group.
            found.append(Address(None, None, _phrase(words) or b"", None))
            in_group = True
            i += 1
            continue
        else:
            # A separator, the end, or stray punctuation. Words before it
            # are a local part that lost its domain.
            if words:
                found.append(Address(_comment_name(spelled), None, _raw(words), MISSING_DOMAIN))
            if kind == ";" and in_group:
                found.append(_GROUP_END)
                in_group = False
            i += 1
            continue
        found.append(address)
        while i < n and tokens[i].kind not in (",", ";"):
            i += 1  # junk after an address, up to the next separator
    if in_group:
        found.append(_GROUP_END)
    return tuple(found)


def _envelope(fields: dict[bytes, bytes]) -> Envelope:
    def addresses(name: bytes) -> tuple[Address, ...]:
        value = fields.get(name)
        return _addresses(value) if value is not None else ()

    return Envelope(
        date=fields.get(b"date"),
        subject=fields.get(b"subject"),
        from_=addresses(b"from"),
        sender=addresses(b"sender"),
        reply_to=addresses(b"reply-to"),
        to=addresses(b"to"),
        cc=addresses(b"cc"),
        bcc=addresses(b"bcc"),
        in_reply_to=fields.get(b"in-reply-to"),
        message_id=fields.get(b"message-id"),
    )


# ---------------------------------------------------------------------------
# Rendering (RFC 3501 7.4.2 and 9 formal syntax; RFC 9051 7.5.2)

_NIL = b"NIL"
# RFC 3501 9: a quoted string holds TEXT-CHARs, 7-bit without NUL, CR, LF.
_QUOTABLE = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*")
_QUOTED_SPECIAL = re.compile(rb'["\\]')
_WHITE_SPACE = re.compile(rb"[ \t\r\n]+")
_EMPTY_ENVELOPE = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
# A multipart with no parts, and a message part that was not opened, still
# need a body in the grammar: an empty text/plain, as Dovecot writes, with
# empty extension data in a BODYSTRUCTURE.
_EMPTY_BODY = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
_EMPTY_BODY_EXTENSIBLE = _EMPTY_BODY[:-1] + b" NIL NIL NIL NIL)"


def _nstring(value: bytes | None) -> bytes:
    """NIL, a quoted string, or a literal for what a quoted string cannot hold."""
    if value is None:
        return _NIL
    # NUL is in neither a quoted string nor a literal (RFC 3501 9 CHAR8).
    value = value.replace(b"\0", b"")
    if _QUOTABLE.fullmatch(value):
        return b'"' + _QUOTED_SPECIAL.sub(rb"\\\g<0>", value) + b'"'
    return b"{%d}\r\n%s" % (len(value), value)


def _string(value: str) -> bytes:
    return _nstring(value.encode("ascii", "replace"))


def _parameter_list(parameters: Iterable[tuple[str, bytes]]) -> bytes:
    items = [_string(name) + b" " + _nstring(value) for name, value in parameters]
    return b"(" + b" ".join(items) + b")" if items else _NIL


def _for_humans(value: bytes | None) -> bytes | None:
    """A subject or display name as Dovecot writes it: each run of white
    space one space, none at either end."""
    return None if value is None else _WHITE_SPACE.sub(b" ", value).strip(b" ")


def _address_list(addresses: tuple[Address, ...]) -> bytes:
    if not addresses:
        return _NIL
    return b"(%s)" % b"".join(
        b"(%s)" % b" ".join(_nstring(value) for value in (_for_humans(name), *rest))
        for name, *rest in addresses
    )


def _envelope_bytes(envelope: Envelope) -> bytes:
    return b"(%s)" % b" ".join(
        (
            _nstring(envelope.date),
            _nstring(_for_humans(envelope.subject)),
            _address_list(envelope.from_),
            # RFC 3501 7.4.2: absent or empty Sender and Reply-To are From.
            _address_list(envelope.sender or envelope.from_),
            _address_list(envelope.reply_to or envelope.from_),
            _address_list(envelope.to),
            _address_list(envelope.cc),
            _address_list(envelope.bcc),
            _nstring(envelope.in_reply_to),
            _nstring(envelope.message_id),
        )
    )


def envelope(structure: Structure) -> bytes:
    """FETCH ENVELOPE of the message (RFC 3501 7.4.2)."""
    return _envelope_bytes(structure.root.envelope or Envelope())


def bodystructure(structure: Structure, extensible: bool, *, imap4rev2: bool = False) -> bytes:
    """FETCH BODYSTRUCTURE (extensible) or BODY (not) of the message.

    Only IMAP4rev2 (RFC 9051 7.5.2) gives message/global the envelope, body
    and lines of message/rfc822; IMAP4rev1 has it as a basic type.
    """
    out: list[bytes] = []
    _body(structure.root, extensible, imap4rev2, out)
    return b"".join(out)


def _extension(part: Part) -> list[bytes]:
    """body-fld-dsp, body-fld-lang and body-fld-loc, common to both kinds."""
    if part.disposition is None:
        disposition = _NIL
    else:
        disposition = b"(%s %s)" % (
            _string(part.disposition),
            _parameter_list(part.disposition_parameters),
        )
    if part.language is None:
        language = _NIL
    else:
        language = b"(%s)" % b" ".join(_string(tag) for tag in part.language)
    return [b" ", disposition, b" ", language, b" ", _nstring(part.location)]


def _body(part: Part, extensible: bool, imap4rev2: bool, out: list[bytes]) -> None:
    main, sub = part.type.lower(), part.subtype.lower()
    out.append(b"(")
    if main == "multipart":
        # body-type-mpart = 1*body SP media-subtype [SP body-ext-mpart]
        if not part.children:
            out.append(_EMPTY_BODY_EXTENSIBLE if extensible else _EMPTY_BODY)
        for child in part.children:
            _body(child, extensible, imap4rev2, out)
        out += [b" ", _string(part.subtype)]
        if extensible:
            out += [b" ", _parameter_list(part.parameters), *_extension(part)]
        out.append(b")")
        return
    parameters = part.parameters
    if main == "text" and _parameter(parameters, "charset") is None:
        parameters = (*parameters, ("charset", b"us-ascii"))  # RFC 2046 4.1.2
    message = main == "message" and (sub == "rfc822" or (imap4rev2 and sub == "global"))
    if message:
        # Dovecot writes the type of an encapsulated message in its own
        # spelling, whatever case the field had.
        out.append(b'"message" "%s"' % sub.encode("ascii"))
    else:
        out += [_string(part.type), b" ", _string(part.subtype)]
    out += [
        b" ",
        _parameter_list(parameters),
        b" ",
        _nstring(part.id),
        b" ",
        _nstring(part.description),
        b" ",
        _string(part.encoding or "7bit"),
        b" %d" % (part.body_end - part.body_start),
    ]
    if message:
        # body-type-msg: body-fields SP envelope SP body SP body-fld-lines
        if part.children:
            child = part.children[0]
            out += [b" ", _envelope_bytes(child.envelope or Envelope()), b" "]
            _body(child, extensible, imap4rev2, out)
        else:
            empty = _EMPTY_BODY_EXTENSIBLE if extensible else _EMPTY_BODY
            out += [b" ", _EMPTY_ENVELOPE, b" ", empty]
        out.append(b" %d" % part.lines)
    elif main == "text":
        out.append(b" %d" % part.lines)
    if extensible:
        out += [b" ", _nstring(part.md5), *_extension(part)]
    out.append(b")")


# ---------------------------------------------------------------------------
# Sections (RFC 9051 6.4.5) and BINARY (RFC 3516)

Ranges = list[tuple[int, int]]


def merge_ranges(*spans: tuple[int, int]) -> Ranges:
    """Non-empty spans, adjacent ones merged."""
    merged: Ranges = []
    for start, end in spans:
        if start >= end:
            continue
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _resolve(root: Part, numbers: tuple[int, ...]) -> Part | None:
    """The part that a part number names (RFC 3501 6.4.5), or None.

    A message's parts are its multipart's parts, or, when it is not a
    multipart, part 1 is the message itself. A message/rfc822 part's
    subparts are those of the message it encapsulates.
    """
    node, as_message = root, True
    for number in numbers:
        if not as_message and node.children and node.type.lower() != "multipart":
            node, as_message = node.children[0], True
        if node.type.lower() == "multipart":
            if not 1 <= number <= len(node.children):
                return None
            node = node.children[number - 1]
        elif not (as_message and number == 1):
            return None
        as_message = False
    return node


def _blank_line_start(buf: memoryview, start: int, end: int) -> int | None:
    """Where the header block's closing blank line starts, if it has one."""
    if end <= start or buf[end - 1] != _LF:
        return None
    line = end - 1
    if line > start and buf[line - 1] == _CR:
        line -= 1
    if line == start or buf[line - 1] == _LF:
        return line
    return None


def section_ranges(
    structure: Structure,
    message: bytes | memoryview,
    part: tuple[int, ...] = (),
    text: str | None = None,
    fields: Iterable[str | bytes] = (),
) -> Ranges:
    """BODY[section] as (start, end) offsets of `message`, in order.

    `part` is the part number ((1, 2) for "1.2"); `text` is None, "HEADER",
    "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT" or "MIME"; `fields` are the
    field names of HEADER.FIELDS[.NOT], matched without regard to case. An
    empty list is empty content: a section that does not exist, or HEADER or
    TEXT of a part that is not a message/rfc822.
    """
    root = structure.root
    node = _resolve(root, part)
    if node is None:
        return []
    spec = (text or "").upper()
    if not spec:
        if not part:
            return merge_ranges((root.header_start, root.body_end))
        return merge_ranges((node.body_start, node.body_end))
    if spec == "MIME":
        if not part:
            raise ValueError("MIME needs a part number (RFC 3501 6.4.5)")
        return merge_ranges((node.header_start, node.body_start))
    if part:
        # HEADER and TEXT apply to the top message or an encapsulated one.
        if node.type.lower() == "multipart" or not node.children:
            return []
        node = node.children[0]
    if spec == "TEXT":
        return merge_ranges((node.body_start, node.body_end))
    if spec == "HEADER":
        return merge_ranges((node.header_start, node.body_start))
    if spec in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
        names = {
            (name.encode("ascii") if isinstance(name, str) else name).lower() for name in fields
        }
        return _header_fields(memoryview(message).cast("B"), node, names, spec == "HEADER.FIELDS")
    raise ValueError(f"unknown section text {text!r}")


def _header_fields(buf: memoryview, node: Part, names: set[bytes], wanted: bool) -> Ranges:
    """The fields whose names are (or are not) in `names`, continuation lines
    included, then the blank line: RFC 3501 6.4.5 keeps it in every header
    fetch except of a message that has none."""
    blank = _blank_line_start(buf, node.header_start, node.body_start)
    end = node.body_start if blank is None else blank
    spans = []
    for match in FIELD.finditer(buf, node.header_start, end):
        if (match.group(1).lower() in names) == wanted:
            stop = match.end()
            spans.append((match.start(), stop + 1 if stop < end and buf[stop] == _LF else stop))
    if blank is not None:
        spans.append((blank, node.body_start))
    return merge_ranges(*spans)


def slice_ranges(ranges: Ranges, start: int, count: int | None = None) -> Ranges:
    """The octets start .. start+count of the content that `ranges` make up:
    a partial fetch, BODY[...]<start.count> (RFC 3501 6.4.5)."""
    sliced: Ranges = []
    skip, left = start, count
    for first, end in ranges:
        length = end - first
        if skip >= length:
            skip -= length
            continue
        first, skip = first + skip, 0
        if left is not None:
            end = min(end, first + left)
            left -= end - first
        sliced.append((first, end))
        if left == 0:
            break
    return sliced


def binary_section(
    structure: Structure, message: bytes | memoryview, part: tuple[int, ...] = ()
) -> Ranges | bytes:
    """BINARY[part]: the part's body with its transfer encoding undone.

    Returns ranges of `message` when there is nothing to undo (7bit, 8bit,
    binary, a multipart or message part, or the whole message), the decoded
    octets otherwise, and [] for a part that does not exist. An encoding
    other than base64 and quoted-printable raises UnknownTransferEncoding.
    """
    root = structure.root
    if not part:
        return merge_ranges((root.header_start, root.body_end))
    node = _resolve(root, part)
    if node is None:
        return []
    body = merge_ranges((node.body_start, node.body_end))
    # RFC 2045 6.4: multipart and message parts are never encoded themselves.
    if node.children or node.type.lower() == "multipart":
        return body
    encoding = (node.encoding or "7bit").lower()
    if encoding in _IDENTITY_ENCODINGS:
        return body
    data = memoryview(message).cast("B")[node.body_start : node.body_end]
    if encoding == "base64":
        return _decode_base64(data)
    if encoding == "quoted-printable":
        # RFC 2045 6.7 (3): white space ending an encoded line was added in
        # transport and is not data.
        return binascii.a2b_qp(_LINE_END_SPACE.sub(b"", data))
    raise UnknownTransferEncoding(node.encoding or encoding)


def binary_size(
    structure: Structure, message: bytes | memoryview, part: tuple[int, ...] = ()
) -> int:
    """BINARY.SIZE[part] (RFC 3516 4.2): the size that BINARY[part] has."""
    content = binary_section(structure, message, part)
    if isinstance(content, bytes):
        return len(content)
    return sum(end - start for start, end in content)


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_LINE_END_SPACE = re.compile(rb"[ \t]+(?=\r?\n|\Z)")


def _decode_base64(data: memoryview) -> bytes:
    # binascii skips line ends and stray octets (RFC 2045 6.8) but refuses a
    # cut-off last group; then decode the complete groups and what the
    # partial one holds rather than refuse the part.
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:
        letters = _NOT_BASE64.sub(b"", data)
        letters = letters[: len(letters) - (len(letters) % 4 == 1)]
        return binascii.a2b_base64(letters + b"=" * (-len(letters) % 4))


# ---------------------------------------------------------------------------
# Records: positional lists, so a message's structure costs a few dozen
# octets of msgpack per part.


def _flat(pairs: tuple[tuple[str, bytes], ...]) -> list:
    return [item for pair in pairs for item in pair]


def _pairs(flat: list) -> tuple[tuple[str, bytes], ...]:
    if len(flat) % 2:
        raise ValueError("odd parameter list")
    return tuple((str(flat[n]), bytes(flat[n + 1])) for n in range(0, len(flat), 2))


def _part_record(part: Part) -> list:
    return [
        part.header_start,
        part.body_start,
        part.body_end,
        part.lines,
        part.type,
        part.subtype,
        _flat(part.parameters),
        part.id,
        part.description,
        part.encoding,
        part.md5,
        part.disposition,
        _flat(part.disposition_parameters),
        None if part.language is None else list(part.language),
        part.location,
        None if part.envelope is None else _envelope_record(part.envelope),
        [_part_record(child) for child in part.children],
    ]


def _part_from_record(record: list) -> Part:
    (
        header_start,
        body_start,
        body_end,
        lines,
        type_,
        subtype,
        parameters,
        id_,
        description,
        encoding,
        md5,
        disposition,
        disposition_parameters,
        language,
        location,
        envelope_record,
        children,
    ) = record
    return Part(
        header_start=int(header_start),
        body_start=int(body_start),
        body_end=int(body_end),
        lines=int(lines),
        type=str(type_),
        subtype=str(subtype),
        parameters=_pairs(parameters),
        id=id_,
        description=description,
        encoding=encoding,
        md5=md5,
        disposition=disposition,
        disposition_parameters=_pairs(disposition_parameters),
        language=None if language is None else tuple(language),
        location=location,
        envelope=None if envelope_record is None else _envelope_from_record(envelope_record),
        children=tuple(_part_from_record(child) for child in children),
    )


def _envelope_record(envelope: Envelope) -> list:
    def addresses(values: tuple[Address, ...]) -> list:
        return [list(address) for address in values]

    return [
        envelope.date,
        envelope.subject,
        addresses(envelope.from_),
        addresses(envelope.sender),
        addresses(envelope.reply_to),
        addresses(envelope.to),
        addresses(envelope.cc),
        addresses(envelope.bcc),
        envelope.in_reply_to,
        envelope.message_id,
    ]


def _envelope_from_record(record: list) -> Envelope:
    def addresses(values: list) -> tuple[Address, ...]:
        return tuple(Address(*value) for value in values)

    date, subject, from_, sender, reply_to, to, cc, bcc, in_reply_to, message_id = record
    return Envelope(
        date=date,
        subject=subject,
        from_=addresses(from_),
        sender=addresses(sender),
        reply_to=addresses(reply_to),
        to=addresses(to),
        cc=addresses(cc),
        bcc=addresses(bcc),
        in_reply_to=in_reply_to,
        message_id=message_id,
    )
