"""FETCH's view of a stored message: the recipient's head and the shared body.

A delivered message is stored in two pieces: `head`, the Return-Path: and
Received: fields written for each recipient, and the body, stored once for
all of them and analyzed once when it arrived (the store keeps its Structure
record beside it, see appliance/message/structure.py). Sections are found on
the body's Structure and given in message offsets: [0, len(head)) is the
head and the body follows it. The head is whole header fields, so it only
ever adds to the top-level header: HEADER and HEADER.FIELDS of the message
take their share of it, every other section lies inside the body.

The body is a memoryview into LMDB's map, valid only while the read
transaction that produced it is open. Small literals are copied out while it
is; a literal longer than the session's read chunk becomes a BodyStream,
which the session writes later in bounded pieces, each read in a short
transaction of its own, so that a 50 MB message never sits in the heap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance.message import structure
from appliance.message.structure import Ranges, Structure, load_structure


@dataclass(frozen=True, slots=True)
class BodyStream:
    """A literal's octets, to be read from the store as they are written."""

    blob_id: int
    head: bytes
    ranges: Ranges  # message offsets
    size: int
    binary: bool = False  # a literal8 (RFC 3516), which may hold NUL

    def pieces(self, chunk: int) -> Iterable[tuple[bool, int, int]]:
        """(from the head?, start, end) spans of at most `chunk` octets, in order."""
        split = len(self.head)
        for start, end in self.ranges:
            if start < split:
                yield True, start, min(end, split)
                start = split
            while start < end:
                stop = min(end, start + chunk)
                yield False, start - split, stop - split
                start = stop


class StoredMessage:
    """One message as FETCH sees it, valid while its read transaction is open."""

    __slots__ = ("head", "body", "_info", "_structure")

    def __init__(
        self, head: bytes, body: bytes | memoryview, info: Callable[[], object] | None = None
    ):
        self.head = head
        self.body = body
        # Reads the stored structure record: only when an item needs it (a
        # BODY[] needs none), and only while the transaction is open.
        self._info = info
        self._structure: Structure | None = None

    @property
    def structure(self) -> Structure:
        if self._structure is None:
            info = None if self._info is None else self._info()
            self._structure = load_structure(info, self.body)
        return self._structure

    @property
    def size(self) -> int:
        return len(self.head) + len(self.body)

    def envelope(self) -> bytes:
        return structure.envelope(self.structure)

    def bodystructure(self, extensible: bool, imap4rev2: bool) -> bytes:
        return structure.bodystructure(self.structure, extensible, imap4rev2=imap4rev2)

    def whole(self) -> Ranges:
        return [(0, self.size)] if self.size else []

    def section(
        self, part: tuple[int, ...], text: str | None, fields: Iterable[str] = ()
    ) -> Ranges:
        """BODY[part.text (fields)] as message offsets (RFC 9051 6.4.5)."""
        if not part and text is None:
            return self.whole()
        in_body = structure.section_ranges(self.structure, self.body, part, text, fields)
        shifted = self._shift(in_body)
        if self._is_top_header(part, text):
            return structure.merge_ranges((0, len(self.head)), *shifted)
        if not part and text in ("HEADER.FIELDS", "HEADER.FIELDS.NOT"):
            # The head's fields that match come before the body's.
            head_structure = structure.analyze(self.head)
            in_head = structure.section_ranges(head_structure, self.head, (), text, fields)
            return structure.merge_ranges(*in_head, *shifted)
        return shifted

    def _is_top_header(self, part: tuple[int, ...], text: str | None) -> bool:
        """HEADER of the message, or MIME of part 1 when the message is not a
        multipart (its part 1 is the message itself, RFC 9051 6.4.5)."""
        if text == "HEADER":
            return not part
        single = self.structure.root.type.lower() != "multipart"
        return text == "MIME" and part == (1,) and single

    def binary(self, part: tuple[int, ...]) -> Ranges | bytes:
        """BINARY[part] (RFC 3516): message offsets, or the decoded octets."""
        if not part:
            return self.whole()
        content = structure.binary_section(self.structure, self.body, part)
        return content if isinstance(content, bytes) else self._shift(content)

    def binary_size(self, part: tuple[int, ...]) -> int:
        content = self.binary(part)
        if isinstance(content, bytes):
            return len(content)
        return sum(end - start for start, end in content)

    def octets(self, ranges: Ranges) -> bytes:
        """The octets of `ranges`, copied out of the map (the transaction ends soon)."""
        split = len(self.head)
        out: list[bytes | memoryview] = []
        for start, end in ranges:
            if start < split:
                out.append(self.head[start : min(end, split)])
                start = split
            if start < end:
                out.append(self.body[start - split : end - split])
        return b"".join(out)

    def _shift(self, ranges: Ranges) -> Ranges:
        split = len(self.head)
        return [(start + split, end + split) for start, end in ranges]


def ranges_size(ranges: Ranges) -> int:
    return sum(end - start for start, end in ranges)


def without_nul(data: bytes) -> bytes:
    """Octets fit for a literal: RFC 9051 4.3 allows any octet but NUL there
    (only literal8, for BINARY, may carry it), so a stored NUL is sent as
    0x80, as Dovecot does. The size does not change."""
    return data.replace(b"\0", b"\x80") if b"\0" in data else data
