"""IMAP command syntax (RFC 9051 9, RFC 3501 9, and the extensions' grammar), both ways.

parse_command() turns one whole command, as the client sent it, into a Command:
the bytes from the tag up to the final CRLF (not included), with each literal's
octets inline after its "{n}\\r\\n", "{n+}\\r\\n" or "~{n}\\r\\n". The protocol core
frames commands that way; the parser knows nothing of connections, states or
limits on literals. The formatting helpers at the end write strings, literals,
mailbox names and sequence sets for responses.

Pure functions and frozen values only: no state about the connection.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Literal, NoReturn, TypeVar

# RFC 9051 9: number and nz-number are unsigned 32-bit; number64 (literal sizes,
# LARGER/SMALLER, partial ranges) and mod-sequence values (RFC 7162 7) are 63-bit.
MAX_NUMBER = 2**32 - 1
MAX_NUMBER64 = 2**63 - 1
# Ranges in one sequence set: more than a 64 KiB command line (the core's
# default max_line) can hold, so no client that keeps to it is refused; it
# bounds what one set costs (some 100 bytes a range) when the line limit is
# raised, or when the parser is used without one.
MAX_SEQUENCE_RANGES = 32 * 1024


class ParseError(Exception):
    """A command that breaks the grammar; the protocol core answers it, usually with BAD.

    status is "NO" for a well-formed command asking for something unsupported
    that the RFC answers with NO and a response code (BADCHARSET, USEATTR).
    tag is the command's tag once known, None when the tag itself is bad: the
    answer is then an untagged BAD (RFC 9051 7.1.3).
    """

    def __init__(self, text: str, code: str | None = None, status: Literal["BAD", "NO"] = "BAD"):
        super().__init__(text)
        self.text = text
        self.code = code
        self.status = status
        self.tag: str | None = None


# -- sequence sets ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence-set (RFC 9051 9) of message sequence numbers or UIDs, as the client gave it.

    Each range is (first, last) as written, so 5:2 is (5, 2); 0 stands for "*",
    the largest number in use. saved is RFC 5182's "$", the result saved by
    SEARCH RETURN (SAVE): it has no ranges, and the session puts the saved set
    in its place before resolving. Nothing here builds a list of the numbers:
    1:4294967295 costs as little as 1.
    """

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False
    # (largest, resolve(largest)) of the last contains(): SEARCH asks once per
    # message with the same largest, and a set may have thousands of ranges.
    _resolved: tuple = field(default=(), init=False, repr=False, compare=False)

    @classmethod
    def of(cls, numbers: Iterable[int]) -> SequenceSet:
        """The set of exactly these numbers in the fewest ranges, for responses."""
        ranges: list[list[int]] = []
        for number in sorted(set(numbers)):
            if ranges and ranges[-1][1] == number - 1:
                ranges[-1][1] = number
            else:
                ranges.append([number, number])
        return cls(tuple((first, last) for first, last in ranges))

    def resolve(self, largest: int) -> tuple[tuple[int, int], ...]:
        """Ascending, disjoint, non-adjacent (low, high) ranges with "*" as largest.

        Numbers past largest stay in: for UIDs they are legal and simply match
        nothing (RFC 9051 6.4.9), for sequence numbers the session decides.
        """
        self._check_resolved()
        spans = sorted(
            (min(first, last), max(first, last))
            for first, last in ((first or largest, last or largest) for first, last in self.ranges)
        )
        merged: list[list[int]] = []
        for low, high in spans:
            if merged and low <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], high)
            else:
                merged.append([low, high])
        return tuple((low, high) for low, high in merged)

    def contains(self, number: int, largest: int) -> bool:
        """Whether number is in the set when "*" is largest; a binary search."""
        cached = self._resolved
        if cached and cached[0] == largest:
            spans = cached[1]
        else:
            spans = self.resolve(largest)
            object.__setattr__(self, "_resolved", (largest, spans))
        index = bisect.bisect_right(spans, number, key=lambda span: span[0]) - 1
        return index >= 0 and number <= spans[index][1]

    def members(self, largest: int) -> Iterator[int]:
        """The numbers from 1 to largest in the set, ascending: message sequence numbers."""
        for low, high in self.resolve(largest):
            if low > largest:
                return
            yield from range(max(low, 1), min(high, largest) + 1)

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(
            _seq_number(first) if first == last else f"{_seq_number(first)}:{_seq_number(last)}"
            for first, last in self.ranges
        )

    def _check_resolved(self) -> None:
        if self.saved:
            raise ValueError("$ stands for a saved search result: put that set in its place")


def _seq_number(number: int) -> str:
    return "*" if number == 0 else str(number)


# -- search keys (RFC 9051 6.4.4, RFC 3501 6.4.4, RFC 7162 3.1.5) -----------------------


@dataclass(frozen=True, slots=True)
class SearchAll:
    """ALL."""


@dataclass(frozen=True, slots=True)
class SearchAnd:
    """Every key matches: a parenthesized list, or the keys of the search program."""

    keys: tuple[SearchKey, ...]


@dataclass(frozen=True, slots=True)
class SearchOr:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SearchNot:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class SearchFlag:
    """A flag set (present) or not: ANSWERED/UNANSWERED ..., KEYWORD/UNKEYWORD, RECENT/OLD.

    NEW is And(\\Recent, not \\Seen), as RFC 3501 6.4.4 defines it.
    """

    flag: str  # system flags in their canonical case, e.g. "\\Seen"
    present: bool


@dataclass(frozen=True, slots=True)
class SearchDate:
    """BEFORE/ON/SINCE (the internal date) and SENTBEFORE/SENTON/SENTSINCE (the Date: header)."""

    field: Literal["internal", "sent"]
    comparison: Literal["before", "on", "since"]
    date: date


@dataclass(frozen=True, slots=True)
class SearchSize:
    """LARGER (larger=True) or SMALLER than size octets."""

    larger: bool
    size: int


@dataclass(frozen=True, slots=True)
class SearchHeader:
    """HEADER field value; FROM, TO, CC, BCC and SUBJECT are the header fields of that name."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class SearchText:
    """BODY (body_only=True) or TEXT (header and body) contains value."""

    body_only: bool
    value: str


@dataclass(frozen=True, slots=True)
class SearchSequence:
    """A sequence set (uid=False) or UID set as a search key."""

    sequence: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class SearchModSeq:
    """MODSEQ (RFC 7162 3.1.5): modified at or after modseq; entry like "/flags/\\Seen"."""

    modseq: int
    entry: str | None = None
    entry_type: Literal["priv", "shared", "all"] | None = None


SearchKey = (
    SearchAll
    | SearchAnd
    | SearchOr
    | SearchNot
    | SearchFlag
    | SearchDate
    | SearchSize
    | SearchHeader
    | SearchText
    | SearchSequence
    | SearchModSeq
)


# -- fetch items (RFC 9051 6.4.5, RFC 3516, RFC 7162 3.1.4) --------------------------


@dataclass(frozen=True, slots=True)
class Section:
    """The section of BODY[...] and BINARY[...]: a part path and what of it.

    text is None (the whole part), "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT",
    "TEXT" or "MIME"; fields are the header names of HEADER.FIELDS[.NOT].
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        spec = ".".join(map(str, self.part))
        if self.text is not None:
            spec = f"{spec}.{self.text}" if spec else self.text
        if self.fields:
            names = " ".join(astring(name).decode("ascii") for name in self.fields)
            spec = f"{spec} ({names})"
        return spec


@dataclass(frozen=True, slots=True)
class FetchAttr:
    """A fetch item without section: FLAGS, UID, ENVELOPE, BODYSTRUCTURE, RFC822.SIZE ..."""

    name: str


@dataclass(frozen=True, slots=True)
class FetchBody:
    """BODY[section]<partial>, BODY.PEEK, BINARY[part]<partial> and BINARY.PEEK."""

    section: Section
    partial: tuple[int, int] | None = None  # (first octet, octet count)
    peek: bool = False
    binary: bool = False

    def label(self) -> str:
        """The item's name in the FETCH response: no .PEEK, only the partial's origin."""
        name = "BINARY" if self.binary else "BODY"
        origin = "" if self.partial is None else f"<{self.partial[0]}>"
        return f"{name}[{self.section}]{origin}"


@dataclass(frozen=True, slots=True)
class FetchBinarySize:
    """BINARY.SIZE[part] (RFC 3516)."""

    part: tuple[int, ...]

    def label(self) -> str:
        return f"BINARY.SIZE[{'.'.join(map(str, self.part))}]"


FetchItem = FetchAttr | FetchBody | FetchBinarySize

_FETCH_ATTRS = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",  # RFC 7162 3.1.4.1
    }
)
_FAST = (FetchAttr("FLAGS"), FetchAttr("INTERNALDATE"), FetchAttr("RFC822.SIZE"))
# RFC 9051 6.4.5: the macros, which stand alone and never inside parentheses.
_MACROS = {
    "FAST": _FAST,
    "ALL": (*_FAST, FetchAttr("ENVELOPE")),
    "FULL": (*_FAST, FetchAttr("ENVELOPE"), FetchAttr("BODY")),
}


# -- command arguments, one kind per command family -------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticateArgs:
    mechanism: str  # upper case
    # The SASL-IR initial response (RFC 4959), base64-decoded; b"" for "=", None when absent.
    initial_response: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class LoginArgs:
    user: str
    password: str = field(repr=False)  # kept out of logs and tracebacks


@dataclass(frozen=True, slots=True)
class EnableArgs:
    capabilities: tuple[str, ...]  # upper case


@dataclass(frozen=True, slots=True)
class QresyncParams:
    """SELECT/EXAMINE (QRESYNC (uidvalidity modseq [known-uids [seq-match]])), RFC 7162 3.2.5."""

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    # (message sequence numbers, the UIDs the client believes they have)
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


@dataclass(frozen=True, slots=True)
class SelectArgs:
    """SELECT and EXAMINE."""

    mailbox: str
    condstore: bool = False
    qresync: QresyncParams | None = None


@dataclass(frozen=True, slots=True)
class CreateArgs:
    mailbox: str
    special_use: tuple[str, ...] = ()  # CREATE ... (USE (\Drafts)), RFC 6154 3


@dataclass(frozen=True, slots=True)
class MailboxArgs:
    """DELETE, SUBSCRIBE and UNSUBSCRIBE."""

    mailbox: str


@dataclass(frozen=True, slots=True)
class RenameArgs:
    mailbox: str
    new_name: str


@dataclass(frozen=True, slots=True)
class ListArgs:
    """LIST (with RFC 5258 LIST-EXTENDED options) and LSUB.

    reference and patterns are decoded like mailbox names but keep their case:
    matching them ("%", "*", INBOX) is the session's.
    """

    reference: str
    patterns: tuple[str, ...]
    selection: tuple[str, ...] = ()  # SUBSCRIBED REMOTE RECURSIVEMATCH SPECIAL-USE
    return_options: tuple[str, ...] = ()  # SUBSCRIBED CHILDREN SPECIAL-USE STATUS
    status_items: tuple[str, ...] = ()  # of RETURN (STATUS (...)), RFC 5819


@dataclass(frozen=True, slots=True)
class StatusArgs:
    mailbox: str
    items: tuple[str, ...]  # upper case


@dataclass(frozen=True, slots=True)
class AppendMessage:
    """One message of APPEND (several with RFC 3502 MULTIAPPEND)."""

    flags: tuple[str, ...]
    date: datetime | None  # timezone-aware
    # A read-only view of the command's own buffer: the octets are never copied.
    data: memoryview
    binary: bool  # sent as literal8 (RFC 3516): may hold NUL


@dataclass(frozen=True, slots=True)
class AppendArgs:
    mailbox: str
    messages: tuple[AppendMessage, ...]


@dataclass(frozen=True, slots=True)
class SearchArgs:
    key: SearchKey
    charset: str | None = None  # upper case; strings are decoded already
    # RFC 4731 ESEARCH: MIN MAX ALL COUNT (and RFC 5182 SAVE); None without RETURN.
    # An empty RETURN () means ALL (RFC 4731 3.1).
    return_options: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class FetchArgs:
    sequence: SequenceSet
    items: tuple[FetchItem, ...]
    changed_since: int | None = None  # RFC 7162 3.1.4.1
    vanished: bool = False  # RFC 7162 3.2.6, UID FETCH only


@dataclass(frozen=True, slots=True)
class StoreArgs:
    sequence: SequenceSet
    action: Literal["replace", "add", "remove"]  # FLAGS, +FLAGS, -FLAGS
    flags: tuple[str, ...]
    silent: bool = False
    unchanged_since: int | None = None  # RFC 7162 3.1.3


@dataclass(frozen=True, slots=True)
class CopyArgs:
    """COPY and MOVE (RFC 6851)."""

    sequence: SequenceSet
    mailbox: str


@dataclass(frozen=True, slots=True)
class ExpungeArgs:
    """UID EXPUNGE (RFC 4315 2.1); plain EXPUNGE has no arguments."""

    uids: SequenceSet


@dataclass(frozen=True, slots=True)
class IdArgs:
    """ID (RFC 2971): field and value pairs, or None for NIL."""

    fields: tuple[tuple[str, str | None], ...] | None


Args = (
    AuthenticateArgs
    | LoginArgs
    | EnableArgs
    | SelectArgs
    | CreateArgs
    | MailboxArgs
    | RenameArgs
    | ListArgs
    | StatusArgs
    | AppendArgs
    | SearchArgs
    | FetchArgs
    | StoreArgs
    | CopyArgs
    | ExpungeArgs
    | IdArgs
    | None
)


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command; name is upper case and without "UID", which sets uid."""

    tag: str
    name: str
    uid: bool = False
    args: Args = None


# -- lexical rules (RFC 9051 9) ---------------------------------------------------------

# ATOM-CHAR: any CHAR but atom-specials, i.e. not "(" ")" "{" SP CTL "%" "*" DQUOTE "\" "]".
_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
_ASTRING_ATOM = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\]+')  # ASTRING-CHAR adds "]"
_LIST_CHARS = re.compile(rb'[^\x00-\x20\x7f-\xff(){"\\]+')  # list-char adds "%" "*" "]"
_TAG = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+')  # tag: any ASTRING-CHAR but "+"
_FLAG = re.compile(rb'\\?[^\x00-\x20\x7f-\xff(){%*"\\\]]+')
# RFC 9051 quoted: TEXT-CHAR but DQUOTE and "\", escaped DQUOTE and "\", and UTF-8
# (checked when decoded). No CR, LF or NUL.
_QUOTED = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE = re.compile(rb'\\(["\\])')
_LITERAL = re.compile(rb"(~?)\{([0-9]+)\+?\}\r\n")  # literal, literal8, and "+" (RFC 7888)
_NUMBER = re.compile(rb"[0-9]+")
_SEQUENCE_SET = re.compile(rb"[0-9*:,$]+")  # then checked item by item
_NZ_NUMBER = re.compile(rb"[1-9][0-9]{0,9}")
_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_BASE64_TOKEN = re.compile(rb"[A-Za-z0-9+/=]+")
_FETCH_NAME = re.compile(rb"[A-Za-z0-9.]+")
_SECTION_TEXT = re.compile(rb"HEADER\.FIELDS\.NOT|HEADER\.FIELDS|HEADER|TEXT|MIME", re.IGNORECASE)
_STORE_ITEM = re.compile(rb"([+-]?)FLAGS(\.SILENT)?", re.IGNORECASE)
# RFC 5322 3.6.8 ftext: a header field name no header can match otherwise is refused.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")
_DATE = re.compile(rb"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})")
# date-time (RFC 9051 9): "dd-Mon-yyyy hh:mm:ss +zzzz", the day padded with SP or 0.
_DATE_TIME = re.compile(
    rb'"( [0-9]|[0-9]{2})-([A-Za-z]{3})-([0-9]{4}) '
    rb'([0-9]{2}):([0-9]{2}):([0-9]{2}) ([+-])([0-9]{2})([0-9]{2})"'
)
_MONTHS = {
    name: number
    for number, name in enumerate(
        (b"JAN", b"FEB", b"MAR", b"APR", b"MAY", b"JUN")
        + (b"JUL", b"AUG", b"SEP", b"OCT", b"NOV", b"DEC"),
        1,
    )
}
_HEAD = re.compile(rb"([A-Za-z]+)(?: ([A-Za-z]+))?")

# RFC 9051 2.3.2: flags are case-insensitive; system flags get their usual spelling.
_SYSTEM_FLAGS = {
    flag.upper(): flag
    for flag in ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft", "\\Recent")
}
# RFC 6154 2: the special-use attributes CREATE ... (USE (...)) may set.
_SPECIAL_USE = {
    attr.upper(): attr
    for attr in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}
_STATUS_ITEMS = frozenset(
    {
        "MESSAGES",
        "UIDNEXT",
        "UIDVALIDITY",
        "UNSEEN",
        "DELETED",  # RFC 9051 6.3.11
        "SIZE",  # RFC 9051 6.3.11 (STATUS=SIZE, RFC 8438)
        "RECENT",  # RFC 3501 only
        "HIGHESTMODSEQ",  # RFC 7162 3.1.6
        "APPENDLIMIT",  # RFC 7889 3.1
    }
)
_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})  # RFC 4731 3.1, RFC 5182 2
# RFC 9051 6.4.4: US-ASCII and UTF-8 must be supported; others get NO [BADCHARSET].
_CHARSETS = {"US-ASCII": "ascii", "UTF-8": "utf-8"}
_BAD_CHARSET = "BADCHARSET (US-ASCII UTF-8)"
_LIST_SELECTION = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})

_FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True),
    "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True),
    "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True),
    "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True),
    "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True),
    "UNSEEN": ("\\Seen", False),
    "RECENT": ("\\Recent", True),  # RFC 3501 6.4.4
    "OLD": ("\\Recent", False),  # RFC 3501 6.4.4: NOT RECENT
}
_DATE_KEYS: dict[str, tuple[Literal["internal", "sent"], Literal["before", "on", "since"]]] = {
    "BEFORE": ("internal", "before"),
    "ON": ("internal", "on"),
    "SINCE": ("internal", "since"),
    "SENTBEFORE": ("sent", "before"),
    "SENTON": ("sent", "on"),
    "SENTSINCE": ("sent", "since"),
}
_HEADER_KEYS = {"FROM": "From", "TO": "To", "CC": "Cc", "BCC": "Bcc", "SUBJECT": "Subject"}
_KEYS_WITH_ARGUMENT = frozenset(
    {"NOT", "OR", "UID", "MODSEQ", "KEYWORD", "UNKEYWORD", "HEADER", "BODY", "TEXT", "LARGER"}
    | {"SMALLER", *_DATE_KEYS, *_HEADER_KEYS}
)

# RFC 2971 3.3: at most 30 pairs, fields of 30 octets and values of 1024.
_ID_MAX_PAIRS = 30
_ID_MAX_FIELD = 30
_ID_MAX_VALUE = 1024

_T = TypeVar("_T")


class _Reader:
    """A cursor over one command's bytes, with the grammar's building blocks."""

    __slots__ = ("data", "pos", "utf8", "depth", "codec")

    def __init__(self, data: bytes | bytearray, utf8: bool, max_depth: int):
        self.data = data
        self.pos = 0
        self.utf8 = utf8  # mailbox names in UTF-8 (RFC 6855 3, RFC 9051 5.1), not modified UTF-7
        self.depth = max_depth  # search-key nesting still allowed
        self.codec = "utf-8"  # for search strings, after CHARSET

    # -- tokens ------------------------------------------------------------------------

    @staticmethod
    def fail(text: str) -> NoReturn:
        raise ParseError(text)

    def peek(self) -> bytes:
        return bytes(self.data[self.pos : self.pos + 1])

    def take(self, text: bytes) -> bool:
        if self.data.startswith(text, self.pos):
            self.pos += len(text)
            return True
        return False

    def expect(self, text: bytes) -> None:
        if not self.take(text):
            self.fail(f"Expected {text.decode()!r}" if text != b" " else "Expected SP")

    def sp(self) -> None:
        self.expect(b" ")

    def match(self, pattern: re.Pattern[bytes], what: str) -> re.Match[bytes]:
        found = pattern.match(self.data, self.pos)
        if found is None:
            self.fail(f"Expected {what}")
        self.pos = found.end()
        return found

    def keyword(self) -> str:
        return self.match(_ATOM, "atom")[0].decode("ascii").upper()

    def take_keyword(self, word: str) -> bool:
        """Consume the atom word (case-insensitively) if it is next."""
        found = _ATOM.match(self.data, self.pos)
        if found is None or found[0].upper() != word.encode():
            return False
        self.pos = found.end()
        return True

    def end(self) -> None:
        if self.pos != len(self.data):
            self.fail("Unexpected text after the command")

    def parenthesized(self, item: Callable[[], _T], *, empty: bool = False) -> tuple[_T, ...]:
        """ "(" item *(SP item) ")", or "()" where empty is allowed."""
        self.expect(b"(")
        if empty and self.take(b")"):
            return ()
        items = [item()]
        while self.take(b" "):
            items.append(item())
        self.expect(b")")
        return tuple(items)

    # -- numbers -----------------------------------------------------------------------

    def number(self, low: int = 0, high: int = MAX_NUMBER) -> int:
        digits = self.match(_NUMBER, "number")[0]
        # The length is checked first: int() of a huge digit string is slow, then an error.
        if len(digits) > 19 or not low <= int(digits) <= high:
            self.fail("Number out of range")
        return int(digits)

    def nz_number(self, high: int = MAX_NUMBER) -> int:
        if self.peek() == b"0":
            self.fail("Expected a non-zero number")  # nz-number = digit-nz *DIGIT
        return self.number(1, high)

    def modseq(self, low: int = 1) -> int:
        """mod-sequence-value (low=1) or mod-sequence-valzer (low=0), RFC 7162 7."""
        return self.number(low, MAX_NUMBER64)

    def sequence_set(self, *, star: bool = True, saved: bool = True) -> SequenceSet:
        token = self.match(_SEQUENCE_SET, "sequence set")[0]
        if token == b"$":
            if not saved:
                self.fail("$ is not allowed here")
            return SequenceSet((), saved=True)
        if token.count(b",") >= MAX_SEQUENCE_RANGES:  # counted before anything is built
            self.fail("Too many ranges in a sequence set")
        ranges = []
        for item in token.split(b","):
            first, colon, last = item.partition(b":")
            low = self._seq_number(first, star)
            ranges.append((low, self._seq_number(last, star) if colon else low))
        return SequenceSet(tuple(ranges))

    def _seq_number(self, text: bytes, star: bool) -> int:
        if text == b"*" and star:
            return 0
        if not _NZ_NUMBER.fullmatch(text) or int(text) > MAX_NUMBER:
            self.fail("Invalid sequence set")
        return int(text)

    # -- strings -----------------------------------------------------------------------

    def literal(self) -> tuple[int, int, bool]:
        """A literal or literal8: where its octets start and end, and whether it is literal8."""
        found = self.match(_LITERAL, "literal")
        digits = found[2]
        if len(digits) > 19 or int(digits) > MAX_NUMBER64:
            self.fail("Literal size out of range")
        start = self.pos
        end = start + int(digits)
        if end > len(self.data):
            self.fail("Literal shorter than announced")
        binary = found[1] == b"~"
        # RFC 9051 9: a literal is CHAR8, %x01-ff; only literal8 carries NUL (RFC 3516).
        if not binary and self.data.find(b"\0", start, end) >= 0:
            self.fail("NUL in a literal (use literal8)")
        self.pos = end
        return start, end, binary

    def string(self) -> bytes:
        if self.peek() == b'"':
            return _QUOTED_ESCAPE.sub(rb"\1", self.match(_QUOTED, "quoted string")[1])
        if self.peek() in (b"{", b"~"):
            start, end, binary = self.literal()
            if binary:
                self.fail("literal8 is only for APPEND data")
            return bytes(self.data[start:end])
        self.fail("Expected string")

    def astring_bytes(self) -> bytes:
        found = _ASTRING_ATOM.match(self.data, self.pos)
        if found is not None:
            self.pos = found.end()
            return found[0]
        return self.string()

    def astring(self, what: str = "string") -> str:
        return self.text(self.astring_bytes(), what)

    def nstring(self, what: str) -> str | None:
        found = _ATOM.match(self.data, self.pos)
        if found is not None:
            if found[0].upper() != b"NIL":
                self.fail(f"Expected {what} or NIL")
            self.pos = found.end()
            return None
        return self.text(self.string(), what)

    def text(self, raw: bytes, what: str, codec: str = "utf-8") -> str:
        try:
            return raw.decode(codec)
        except UnicodeDecodeError:
            self.fail(f"Invalid {'US-ASCII' if codec == 'ascii' else 'UTF-8'} in {what}")

    # -- mailboxes, flags, dates -------------------------------------------------------

    def mailbox(self) -> str:
        name = self.mailbox_name(self.astring("mailbox name"))
        # RFC 9051 5.1: INBOX is case-insensitive (its children are not).
        return "INBOX" if name.upper() == "INBOX" else name

    def mailbox_name(self, raw: str) -> str:
        try:
            return decode_mailbox_name(raw, self.utf8)
        except ValueError:
            self.fail("Mailbox name is not valid modified UTF-7")

    def list_mailbox(self) -> str:
        found = _LIST_CHARS.match(self.data, self.pos)
        if found is not None:
            self.pos = found.end()
            raw = found[0]
        else:
            raw = self.string()
        return self.mailbox_name(self.text(raw, "mailbox pattern"))

    def flag(self) -> str:
        flag = self.match(_FLAG, "flag")[0].decode("ascii")
        return _SYSTEM_FLAGS.get(flag.upper(), flag)

    def flag_list(self) -> tuple[str, ...]:
        return self.parenthesized(self.flag, empty=True)

    def date(self) -> date:
        quoted = self.take(b'"')  # RFC 9051 9: date = date-text / DQUOTE date-text DQUOTE
        found = self.match(_DATE, "date")
        if quoted:
            self.expect(b'"')
        month = _MONTHS.get(found[2].upper())
        if month is None:
            self.fail("Invalid month")
        try:
            return date(int(found[3]), month, int(found[1]))
        except ValueError:
            self.fail("Invalid date")

    def date_time(self) -> datetime:
        found = self.match(_DATE_TIME, "date-time")
        month = _MONTHS.get(found[2].upper())
        zone_hours, zone_minutes = int(found[8]), int(found[9])
        if month is None or zone_minutes > 59:
            self.fail("Invalid date-time")
        offset = timedelta(hours=zone_hours, minutes=zone_minutes)
        try:
            return datetime(
                int(found[3]),
                month,
                int(found[1]),
                int(found[4]),
                int(found[5]),
                int(found[6]),
                tzinfo=timezone(-offset if found[7] == b"-" else offset),
            )
        except ValueError:
            self.fail("Invalid date-time")

    def header_field(self) -> str:
        name = self.astring_bytes()
        if not _FIELD_NAME.fullmatch(name):
            self.fail("Invalid header field name")
        return name.decode("ascii")

    # -- search keys -------------------------------------------------------------------

    def search_key(self) -> SearchKey:
        # Every level costs Python stack: NOT NOT NOT ... and (((...))) are bounded alike.
        if self.depth == 0:
            self.fail("Search keys nested too deeply")
        self.depth -= 1
        key = self._search_key()
        self.depth += 1
        return key

    def _search_key(self) -> SearchKey:
        first = self.peek()
        if first == b"(":
            keys = self.parenthesized(self.search_key)
            return keys[0] if len(keys) == 1 else SearchAnd(keys)
        if first.isdigit() or first in (b"*", b"$"):
            return SearchSequence(self.sequence_set())
        word = self.keyword()
        if word in _FLAG_KEYS:
            return SearchFlag(*_FLAG_KEYS[word])
        if word == "ALL":
            return SearchAll()
        if word == "NEW":  # RFC 3501 6.4.4: RECENT UNSEEN
            return SearchAnd((SearchFlag("\\Recent", True), SearchFlag("\\Seen", False)))
        if word not in _KEYS_WITH_ARGUMENT:
            self.fail(f"Unknown search key {word}")
        self.sp()
        if word == "NOT":
            return SearchNot(self.search_key())
        if word == "OR":
            left = self.search_key()
            self.sp()
            return SearchOr(left, self.search_key())
        if word == "UID":
            return SearchSequence(self.sequence_set(), uid=True)
        if word == "MODSEQ":
            return self._search_modseq()
        if word in _DATE_KEYS:
            return SearchDate(*_DATE_KEYS[word], self.date())
        if word in _HEADER_KEYS:
            return SearchHeader(_HEADER_KEYS[word], self.search_string())
        if word in ("KEYWORD", "UNKEYWORD"):
            keyword = self.match(_ATOM, "keyword")[0].decode("ascii")  # flag-keyword = atom
            return SearchFlag(keyword, word == "KEYWORD")
        if word == "HEADER":
            name = self.header_field()
            self.sp()
            return SearchHeader(name, self.search_string())
        if word in ("BODY", "TEXT"):
            return SearchText(word == "BODY", self.search_string())
        return SearchSize(word == "LARGER", self.number(0, MAX_NUMBER64))

    def search_string(self) -> str:
        return self.text(self.astring_bytes(), "search string", self.codec)

    def _search_modseq(self) -> SearchModSeq:
        # RFC 7162 3.1.5: MODSEQ ["/flags/<flag>" SP ("priv" / "shared" / "all") SP] n
        if self.peek() != b'"':
            return SearchModSeq(self.modseq(0))
        entry = self.text(self.string(), "MODSEQ entry name")
        if not entry.startswith("/flags/") or len(entry) == len("/flags/"):
            self.fail("Invalid MODSEQ entry name")
        self.sp()
        entry_type = self.keyword().lower()
        if entry_type not in ("priv", "shared", "all"):
            self.fail("Invalid MODSEQ entry type")
        self.sp()
        return SearchModSeq(self.modseq(0), entry, entry_type)

    # -- fetch -------------------------------------------------------------------------

    def fetch_att(self) -> FetchItem:
        name = self.match(_FETCH_NAME, "fetch item")[0].decode("ascii").upper()
        if self.peek() == b"[":
            if name == "BINARY.SIZE":
                return FetchBinarySize(self.binary_section())
            if name in ("BINARY", "BINARY.PEEK"):
                section = Section(self.binary_section())
            elif name in ("BODY", "BODY.PEEK"):
                section = self.section()
            else:
                self.fail(f"Unknown fetch item {name}")
            partial = self.partial() if self.peek() == b"<" else None
            return FetchBody(section, partial, name.endswith(".PEEK"), name.startswith("BINARY"))
        if name not in _FETCH_ATTRS:
            self.fail(f"Unknown fetch item {name}")
        return FetchAttr(name)

    def section_part(self) -> tuple[int, ...]:
        """section-part = nz-number *("." nz-number); stops before "." and a non-digit."""
        part = [self.nz_number()]
        while (
            self.data[self.pos : self.pos + 1] == b"."
            and self.data[self.pos + 1 : self.pos + 2].isdigit()
        ):
            self.pos += 1
            part.append(self.nz_number())
        return tuple(part)

    def section(self) -> Section:
        self.expect(b"[")
        part: tuple[int, ...] = ()
        text = None
        fields: tuple[str, ...] = ()
        if self.peek().isdigit():
            part = self.section_part()
            if self.take(b"."):
                text = self.match(_SECTION_TEXT, "section text")[0].decode("ascii").upper()
        elif self.peek() != b"]":
            text = self.match(_SECTION_TEXT, "section text")[0].decode("ascii").upper()
            if text == "MIME":
                self.fail("MIME needs a part number")  # section-text is only after a part
        if text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            self.sp()
            fields = self.parenthesized(self.header_field)
        self.expect(b"]")
        return Section(part, text, fields)

    def binary_section(self) -> tuple[int, ...]:
        self.expect(b"[")
        part = () if self.peek() == b"]" else self.section_part()
        self.expect(b"]")
        return part

    def partial(self) -> tuple[int, int]:
        self.expect(b"<")  # RFC 9051 9: "<" number64 "." nz-number64 ">"
        first = self.number(0, MAX_NUMBER64)
        self.expect(b".")
        count = self.nz_number(MAX_NUMBER64)
        self.expect(b">")
        return first, count


# -- commands ---------------------------------------------------------------------------


def _no_arguments(reader: _Reader, uid: bool) -> None:
    return None


def _authenticate(reader: _Reader, uid: bool) -> AuthenticateArgs:
    reader.sp()
    mechanism = reader.keyword()
    if not reader.take(b" "):
        return AuthenticateArgs(mechanism)
    # RFC 4959 3: "=" is an empty initial response.
    if reader.take(b"="):
        return AuthenticateArgs(mechanism, b"")
    return AuthenticateArgs(mechanism, decode_base64(reader.match(_BASE64_TOKEN, "base64")[0]))


def _login(reader: _Reader, uid: bool) -> LoginArgs:
    reader.sp()
    user = reader.astring("user name")
    reader.sp()
    return LoginArgs(user, reader.astring("password"))


def _enable(reader: _Reader, uid: bool) -> EnableArgs:
    capabilities = []
    reader.sp()  # RFC 5161 4: at least one
    capabilities.append(reader.keyword())
    while reader.take(b" "):
        capabilities.append(reader.keyword())
    return EnableArgs(tuple(capabilities))


def _select(reader: _Reader, uid: bool) -> SelectArgs:
    reader.sp()
    mailbox = reader.mailbox()
    if not reader.take(b" "):
        return SelectArgs(mailbox)
    condstore = False
    qresync = None

    def parameter() -> None:
        nonlocal condstore, qresync
        name = reader.keyword()
        if name == "CONDSTORE" and not condstore:  # RFC 7162 3.1.8
            condstore = True
        elif name == "QRESYNC" and qresync is None:  # RFC 7162 3.2.5
            reader.sp()
            qresync = _qresync(reader)
        else:
            reader.fail(f"Unknown or repeated SELECT parameter {name}")

    reader.parenthesized(parameter)
    return SelectArgs(mailbox, condstore, qresync)


def _qresync(reader: _Reader) -> QresyncParams:
    reader.expect(b"(")
    uidvalidity = reader.nz_number()
    reader.sp()
    modseq = reader.modseq()
    known_uids = seq_match = None
    if reader.take(b" ") and reader.peek() != b"(":
        # RFC 7162 3.2.5: known-uids is a sequence-set where "*" is not allowed.
        known_uids = reader.sequence_set(star=False, saved=False)
        reader.take(b" ")
    if reader.take(b"("):
        sequence = reader.sequence_set(star=False, saved=False)
        reader.sp()
        seq_match = (sequence, reader.sequence_set(star=False, saved=False))
        reader.expect(b")")
    reader.expect(b")")
    return QresyncParams(uidvalidity, modseq, known_uids, seq_match)


def _create(reader: _Reader, uid: bool) -> CreateArgs:
    reader.sp()
    mailbox = reader.mailbox()
    if not reader.take(b" "):
        return CreateArgs(mailbox)
    uses: list[tuple[str, ...]] = []

    def use_attr() -> str:
        attr = reader.flag()
        if attr.upper() not in _SPECIAL_USE:
            # RFC 6154 3: NO with USEATTR for an attribute the server does not know.
            raise ParseError(f"Unsupported special-use attribute {attr}", "USEATTR", "NO")
        return _SPECIAL_USE[attr.upper()]

    def parameter() -> None:
        if uses or not reader.take_keyword("USE"):
            reader.fail("Unknown or repeated CREATE parameter")
        reader.sp()
        uses.append(reader.parenthesized(use_attr, empty=True))

    reader.parenthesized(parameter)
    return CreateArgs(mailbox, uses[0])


def _mailbox_only(reader: _Reader, uid: bool) -> MailboxArgs:
    reader.sp()
    return MailboxArgs(reader.mailbox())


def _rename(reader: _Reader, uid: bool) -> RenameArgs:
    reader.sp()
    mailbox = reader.mailbox()
    reader.sp()
    return RenameArgs(mailbox, reader.mailbox())


def _list(reader: _Reader, uid: bool) -> ListArgs:
    # RFC 5258 3: LIST [SP list-select-opts] SP mailbox SP mbox-or-pat [SP list-return-opts]
    reader.sp()
    selection: tuple[str, ...] = ()
    if reader.peek() == b"(":
        selection = reader.parenthesized(reader.keyword, empty=True)
        unknown = set(selection) - _LIST_SELECTION
        if unknown:
            reader.fail(f"Unknown LIST selection option {min(unknown)}")
        # RFC 5258 3: RECURSIVEMATCH only modifies another option (RFC 6154 adds SPECIAL-USE).
        if "RECURSIVEMATCH" in selection and not {"SUBSCRIBED", "SPECIAL-USE"} & set(selection):
            reader.fail("RECURSIVEMATCH needs SUBSCRIBED or SPECIAL-USE")
        reader.sp()
    reference = reader.mailbox_name(reader.astring("reference"))
    reader.sp()
    if reader.peek() == b"(":
        patterns = reader.parenthesized(reader.list_mailbox)
    else:
        patterns = (reader.list_mailbox(),)
    return_options: list[str] = []
    status_items: tuple[str, ...] = ()
    if reader.take(b" "):
        if not reader.take_keyword("RETURN"):
            reader.fail("Expected RETURN")
        reader.sp()

        def option() -> None:
            nonlocal status_items
            name = reader.keyword()
            if name not in _LIST_RETURN:
                reader.fail(f"Unknown LIST return option {name}")
            if name == "STATUS":  # RFC 5819 2
                reader.sp()
                status_items = _status_items(reader)
            return_options.append(name)

        reader.parenthesized(option, empty=True)
    return ListArgs(reference, patterns, selection, tuple(return_options), status_items)


def _lsub(reader: _Reader, uid: bool) -> ListArgs:
    reader.sp()
    reference = reader.mailbox_name(reader.astring("reference"))
    reader.sp()
    return ListArgs(reference, (reader.list_mailbox(),))


def _status_items(reader: _Reader) -> tuple[str, ...]:
    def item() -> str:
        name = reader.keyword()
        if name not in _STATUS_ITEMS:
            reader.fail(f"Unknown STATUS item {name}")
        return name

    return reader.parenthesized(item)


def _status(reader: _Reader, uid: bool) -> StatusArgs:
    reader.sp()
    mailbox = reader.mailbox()
    reader.sp()
    return StatusArgs(mailbox, _status_items(reader))


def _append(reader: _Reader, uid: bool) -> AppendArgs:
    # RFC 3502 6 (MULTIAPPEND): APPEND SP mailbox 1*(SP [flag-list SP] [date-time SP] literal)
    reader.sp()
    mailbox = reader.mailbox()
    messages = []
    while reader.take(b" "):
        if messages:
            # imapclient puts two SP between messages; Dovecot takes one more, and so
            # does this (never more: each message still needs its own separator).
            reader.take(b" ")
        flags: tuple[str, ...] = ()
        if reader.peek() == b"(":
            flags = reader.flag_list()
            reader.sp()
        when = None
        if reader.peek() == b'"':
            when = reader.date_time()
            reader.sp()
        if reader.peek() not in (b"{", b"~"):
            reader.fail("Expected the message as a literal")
        start, end, binary = reader.literal()
        data = memoryview(reader.data).toreadonly()[start:end]
        messages.append(AppendMessage(flags, when, data, binary))
    if not messages:
        reader.fail("Expected a message")
    return AppendArgs(mailbox, tuple(messages))


def _search(reader: _Reader, uid: bool) -> SearchArgs:
    reader.sp()
    return_options = None
    if reader.take_keyword("RETURN"):  # RFC 4731 3.1
        reader.sp()
        return_options = reader.parenthesized(reader.keyword, empty=True)
        unknown = set(return_options) - _SEARCH_RETURN
        if unknown:
            reader.fail(f"Unknown SEARCH return option {min(unknown)}")
        reader.sp()
    charset = None
    if reader.take_keyword("CHARSET"):
        reader.sp()
        raw = reader.string() if reader.peek() == b'"' else reader.match(_ATOM, "charset")[0]
        charset = raw.decode("ascii", "replace").upper()
        if charset not in _CHARSETS:
            raise ParseError(f"Unsupported charset {charset}", _BAD_CHARSET, "NO")
        reader.codec = _CHARSETS[charset]
        reader.sp()
    keys = [reader.search_key()]
    while reader.take(b" "):
        keys.append(reader.search_key())
    key = keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    return SearchArgs(key, charset, return_options)


def _fetch(reader: _Reader, uid: bool) -> FetchArgs:
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    if reader.peek() == b"(":
        items = reader.parenthesized(reader.fetch_att)
    else:
        found = _FETCH_NAME.match(reader.data, reader.pos)
        macro = _MACROS.get(found[0].decode("ascii").upper()) if found else None
        if macro is not None:
            reader.pos = found.end()
            items = macro
        else:
            items = (reader.fetch_att(),)
    changed_since = None
    vanished = False
    if reader.take(b" "):

        def modifier() -> None:
            nonlocal changed_since, vanished
            name = reader.keyword()
            if name == "CHANGEDSINCE" and changed_since is None:  # RFC 7162 3.1.4.1
                reader.sp()
                changed_since = reader.modseq()
            elif name == "VANISHED" and not vanished:  # RFC 7162 3.2.6
                vanished = True
            else:
                reader.fail(f"Unknown or repeated FETCH modifier {name}")

        reader.parenthesized(modifier)
        # RFC 7162 3.2.6: VANISHED only in UID FETCH, and only with CHANGEDSINCE.
        if vanished and (not uid or changed_since is None):
            reader.fail("VANISHED needs UID FETCH and CHANGEDSINCE")
    return FetchArgs(sequence, items, changed_since, vanished)


def _store(reader: _Reader, uid: bool) -> StoreArgs:
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    unchanged_since = None
    if reader.take(b"("):  # RFC 7162 3.1.3: (UNCHANGEDSINCE n), the only store modifier
        if not reader.take_keyword("UNCHANGEDSINCE"):
            reader.fail("Unknown STORE modifier")
        reader.sp()
        unchanged_since = reader.modseq(0)
        reader.expect(b")")
        reader.sp()
    found = reader.match(_STORE_ITEM, "FLAGS, +FLAGS or -FLAGS")
    action: Literal["replace", "add", "remove"] = (
        "add" if found[1] == b"+" else "remove" if found[1] == b"-" else "replace"
    )
    reader.sp()
    if reader.peek() == b"(":
        flags = reader.flag_list()
    else:
        flag_items = [reader.flag()]
        while reader.take(b" "):
            flag_items.append(reader.flag())
        flags = tuple(flag_items)
    return StoreArgs(sequence, action, flags, found[2] is not None, unchanged_since)


def _copy(reader: _Reader, uid: bool) -> CopyArgs:
    reader.sp()
    sequence = reader.sequence_set()
    reader.sp()
    return CopyArgs(sequence, reader.mailbox())


def _expunge(reader: _Reader, uid: bool) -> ExpungeArgs | None:
    if not uid:
        return None
    reader.sp()
    return ExpungeArgs(reader.sequence_set())


def _id(reader: _Reader, uid: bool) -> IdArgs:
    reader.sp()
    if reader.take_keyword("NIL"):
        return IdArgs(None)

    def pair() -> tuple[str, str | None]:
        name = reader.text(reader.string(), "ID field")
        reader.sp()
        value = reader.nstring("ID value")
        if len(name.encode()) > _ID_MAX_FIELD or len((value or "").encode()) > _ID_MAX_VALUE:
            reader.fail("ID field or value too long")
        return name, value

    fields = reader.parenthesized(pair, empty=True)
    if len(fields) > _ID_MAX_PAIRS:
        reader.fail("Too many ID fields")
    return IdArgs(fields)


_PARSERS: dict[str, Callable[[_Reader, bool], Args]] = {
    "CAPABILITY": _no_arguments,
    "NOOP": _no_arguments,
    "LOGOUT": _no_arguments,
    "STARTTLS": _no_arguments,
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ENABLE": _enable,
    "SELECT": _select,
    "EXAMINE": _select,
    "CREATE": _create,
    "DELETE": _mailbox_only,
    "RENAME": _rename,
    "SUBSCRIBE": _mailbox_only,
    "UNSUBSCRIBE": _mailbox_only,
    "LIST": _list,
    "LSUB": _lsub,
    "NAMESPACE": _no_arguments,
    "STATUS": _status,
    "APPEND": _append,
    "IDLE": _no_arguments,
    "CHECK": _no_arguments,
    "CLOSE": _no_arguments,
    "UNSELECT": _no_arguments,
    "EXPUNGE": _expunge,
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy,
    "MOVE": _copy,
    "ID": _id,
}
# RFC 9051 6.4.9, RFC 4315 2.1 (UID EXPUNGE), RFC 6851 3.2 (UID MOVE).
_UID_COMMANDS = frozenset({"FETCH", "SEARCH", "STORE", "COPY", "MOVE", "EXPUNGE"})


def parse_command(data: bytes | bytearray, *, utf8: bool = False, max_depth: int = 32) -> Command:
    """One whole command (see the module docstring); raises ParseError.

    utf8: mailbox names are UTF-8 (after ENABLE UTF8=ACCEPT or IMAP4rev2), not
    modified UTF-7. max_depth bounds the nesting of search keys. APPEND data are
    views of data: a bytearray must not be resized while they live.
    """
    found = _TAG.match(data)
    if found is None or data[found.end() : found.end() + 1] not in (b"", b" "):
        raise ParseError("Invalid tag")
    tag = found[0].decode("ascii")
    reader = _Reader(data, utf8, max_depth)
    reader.pos = found.end()
    try:
        reader.sp()
        name = reader.keyword()
        uid = name == "UID"
        if uid:
            reader.sp()
            name = reader.keyword()
            if name not in _UID_COMMANDS:
                reader.fail(f"Unknown UID command {name}")
        parser = _PARSERS.get(name)
        if parser is None:
            reader.fail("Unknown command")
        args = parser(reader, uid)
        reader.end()
    except ParseError as error:
        error.tag = tag
        raise
    return Command(tag, name, uid, args)


def command_head(line: bytes) -> tuple[str | None, str]:
    """The tag and upper-cased command name (after UID) at the start of a command.

    For deciding on a literal before the command is whole: tag is None when it
    is invalid, the name "" when there is none.
    """
    found = _TAG.match(line)
    if found is None or not line.startswith(b" ", found.end()):
        return None, ""
    tag = found[0].decode("ascii")
    head = _HEAD.match(line, found.end() + 1)
    if head is None:
        return tag, ""
    name = head[1].upper()
    if name == b"UID" and head[2]:
        name = head[2].upper()
    return tag, name.decode("ascii")


def decode_base64(data: bytes) -> bytes:
    """Strict base64 (RFC 4648 4) as SASL exchanges carry it (RFC 9051 6.2.2)."""
    if not _BASE64.fullmatch(data):
        raise ParseError("Invalid base64")
    try:
        return base64.b64decode(data, validate=True)
    except binascii.Error:
        raise ParseError("Invalid base64") from None


# -- mailbox names (RFC 3501 5.1.3, RFC 9051 5.1, RFC 6855 3) ---------------------------

_PRINTABLE = re.compile(r"[\x20-\x7e]*")
_SHIFTED = re.compile(r"&([A-Za-z0-9+,]*)-")
_TO_SHIFT = re.compile(r"[^\x20-\x7e]+|&")


def decode_mailbox_name(raw: str, utf8: bool) -> str:
    """A mailbox name as sent to its Unicode form; ValueError if it is not valid.

    With utf8 (UTF8=ACCEPT or IMAP4rev2 enabled) names are UTF-8 and taken as
    they are. Otherwise they are modified UTF-7 (RFC 3501 5.1.3), and only the
    one spelling encode would give is accepted: no stray "&", no encoded
    printable characters, no padding bits, no split runs.
    """
    if utf8:
        return raw
    if not _PRINTABLE.fullmatch(raw):
        raise ValueError("mailbox name is not modified UTF-7")

    def unshift(found: re.Match[str]) -> str:
        if not found[1]:
            return "&"
        encoded = found[1].replace(",", "/")
        try:
            utf16 = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
            return utf16.decode("utf-16-be")
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("mailbox name is not modified UTF-7") from None

    name = _SHIFTED.sub(unshift, raw)
    if _encode_modified_utf7(name) != raw:
        raise ValueError("mailbox name is not modified UTF-7")
    return name


def _encode_modified_utf7(name: str) -> str:
    def shift(found: re.Match[str]) -> str:
        if found[0] == "&":
            return "&-"
        encoded = base64.b64encode(found[0].encode("utf-16-be")).rstrip(b"=")
        return "&" + encoded.replace(b"/", b",").decode("ascii") + "-"

    return _TO_SHIFT.sub(shift, name)


def mailbox_name(name: str, utf8: bool) -> bytes:
    """A mailbox name for a response: modified UTF-7 unless utf8, then as an astring."""
    return astring(name if utf8 else _encode_modified_utf7(name), utf8)


# -- response formatting ----------------------------------------------------------------

_QUOTABLE = re.compile(rb"[^\r\n\x00]*")


def literal_header(size: int, binary: bool = False) -> bytes:
    """ "{size}\\r\\n", or "~{size}\\r\\n" for a literal8 (RFC 3516); the octets follow."""
    return b"%s{%d}\r\n" % (b"~" if binary else b"", size)


def quoted(text: str | bytes) -> bytes:
    """A quoted string; ValueError for CR, LF or NUL, which only a literal carries."""
    raw = text.encode() if isinstance(text, str) else text
    if not _QUOTABLE.fullmatch(raw):
        raise ValueError("CR, LF and NUL cannot be quoted")
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string(value: str | bytes, utf8: bool = False) -> bytes:
    """A string: quoted when it can be, else a literal; ValueError for NUL.

    8-bit text is quoted only where UTF-8 quoted strings are allowed (utf8:
    RFC 6855 3 and IMAP4rev2); elsewhere it goes as a literal.
    """
    raw = value.encode() if isinstance(value, str) else value
    if b"\0" in raw:
        raise ValueError("NUL cannot be sent in a string")
    if _QUOTABLE.fullmatch(raw) and (raw.isascii() or (utf8 and _is_utf8(raw))):
        return quoted(raw)
    return literal_header(len(raw)) + raw


def astring(value: str | bytes, utf8: bool = False) -> bytes:
    """An atom when the value is one, else a string()."""
    raw = value.encode() if isinstance(value, str) else value
    if _ASTRING_ATOM.fullmatch(raw):
        return raw
    return string(raw, utf8)


def nstring(value: str | bytes | None, utf8: bool = False) -> bytes:
    """NIL for None, else a string() (never an atom: "NIL" itself must be quoted)."""
    return b"NIL" if value is None else string(value, utf8)


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
