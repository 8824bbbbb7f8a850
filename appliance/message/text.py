"""A message's text as IMAP SEARCH compares it (RFC 9051 6.4.4, RFC 3501 6.4.4).

Pure functions over a message's octets and the Structure that analyze() found
for it: header fields are read from the header ranges it recorded, bodies from
the part ranges, and nothing is parsed twice.

How strings compare. RFC 9051 6.4.4 asks for a case-insensitive substring
match and allows flexible matching for BODY and TEXT. Both the search string
(by search_key(), once) and the message's text are normalised as RFC 5051's
i;unicode-casemap does, compatibility decomposition (NFKD) and a case
mapping, here full case folding, so that "STRASSE" finds "Straße" and "fi"
finds the ligature "ﬁ". Then the combining diacritical marks (U+0300-U+036F
and their supplement and extended blocks) are ignored on both sides: "koln"
and "KÖLN" find "Köln", "resume" finds "résumé". Dovecot, which decomposes
too, already lets "cafe" find "café"; ignoring the marks makes that hold
whatever the position of the accent, at the price of "año" finding "ano".
Marks of other scripts (Hebrew points, Indic vowel signs) are kept.

What is decoded before comparing (RFC 3501 6.4.4: transfer encodings and
RFC 2047 words MUST be decoded for a charset other than US-ASCII):

- Header fields: unfolded (RFC 5322 2.2.3), RFC 2047 encoded-words decoded,
  B and Q, in any charset Python knows; the whitespace between two adjacent
  words is dropped (RFC 2047 6.2) and their octets are joined before the
  charset is applied, so a character split over two words survives. A word
  whose charset or encoding cannot be decoded is left as written. Raw 8-bit
  octets are UTF-8 (RFC 6532), or windows-1252 when they are not UTF-8.
- Bodies: base64 and quoted-printable are undone, then the charset
  parameter is applied with errors replaced. A missing or unknown charset is
  read as UTF-8, a superset of US-ASCII that keeps ASCII words searchable;
  labels that mail commonly mislabels are read as the superset that the
  sender's software really wrote (the WHATWG Encoding Standard's mapping:
  ISO-8859-1 as windows-1252, GB2312 as GB18030, ...).

Which parts are searched: as Dovecot 2.3 answers (its imap was asked one
question per message), except where said.

- BODY searches the decoded text of every text/* and message/* leaf part,
  such as message/delivery-status. Other leaf parts (application/pdf,
  image/png, even an unencoded application/octet-stream) are not searched:
  RFC 3501 6.4.4 lets a server exclude parts whose terminal type is neither
  TEXT nor MESSAGE, and Dovecot does, since matching base64 or binary octets
  only gives false hits. Nor is a part with an unknown
  Content-Transfer-Encoding, which RFC 2045 6.4 says to treat as
  application/octet-stream. Multipart preambles and epilogues are not
  searched (RFC 2046 5.1.1: they are to be ignored), nor is a multipart
  whose boundary never occurs.
- Unlike Dovecot, a message/rfc822 or message/global part that is base64 or
  quoted-printable encoded (RFC 6532 3.5 allows it for message/global) is
  decoded and searched as text; Dovecot skips it.
- BODY matches no header field, not even those of an encapsulated message
  or of a body part: RFC 9051 says of BODY "this doesn't match any header
  fields", and Dovecot agrees. The body of an encapsulated message is
  searched like any other.
- TEXT searches every header of the message, each field as its unfolded
  line with the words decoded, name included (so TEXT "subject: caf" finds
  "Subject: =?utf-8?q?caf=C3=A9?="), the MIME headers of its parts (a
  filename in Content-Disposition) and the headers of encapsulated
  messages, then everything BODY searches.

Fast path: for an ASCII search string and a part that is not transfer
encoded and is in a charset where every ASCII octet is that ASCII character
(US-ASCII, UTF-8, ISO-8859-x, windows-125x, KOI8), the octets themselves are
lower-cased and searched. A hit there is a hit in the decoded text, because
decoding maps each ASCII octet to itself and normalisation maps each ASCII
character to itself, lower-cased. A miss is final only when the part is all
ASCII; otherwise a non-ASCII character might normalise to ASCII ("é" to "e"
and a combining accent) and the part is decoded after all.

Work is bounded: bodies are read in slices of _CHUNK octets, each searched
with the end of the one before it, so a huge part costs time in proportion
to its size and a fixed amount of memory; header blocks are read up to the same
ceiling as StructureLimits.max_header_bytes.
"""

from __future__ import annotations

import binascii
import codecs
import contextlib
import functools
import re
import unicodedata
from collections.abc import Iterator

from appliance.message.structure import FIELD, Part, Structure, StructureLimits

# Octets of a body read at a time: large enough that a typical message is one
# slice, small enough that a 50 MB attachment never sits decoded in memory.
_CHUNK = 256 * 1024

# Octets of one header block that are searched; the same ceiling analyze()
# parses fields to, so one hostile header costs no more here than there.
_HEADER_CEILING = StructureLimits().max_header_bytes

# RFC 2047 2 bounds a charset name by the 75-octet word; a longer label is
# garbage and is not worth a codec lookup.
_MAX_LABEL = 64

# A field name (RFC 5322 3.6.8); whole fields are read with analyze()'s FIELD.
_FIELD_NAME = re.compile(r"[!-9;-~]+", re.ASCII)
_FOLD = re.compile(rb"\r?\n")

# RFC 2047 2: encoded-word = "=?" charset "?" encoding "?" encoded-text "?=".
# No part holds "?" or white space, so a failed attempt stops at the next
# one of those and the scan stays linear.
_ENCODED_WORD = re.compile(rb"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/]*={0,2}")
# Octets outside the base64 alphabet, for bytes.translate to delete in C.
_NOT_BASE64 = bytes(
    octet for octet in range(256) if not re.fullmatch(rb"[A-Za-z0-9+/]", bytes([octet]))
)
# RFC 2045 6.7 (3): white space that ends an encoded line was added in transit.
_LINE_END_SPACE = re.compile(rb"[ \t]+(?=\r?\n)")

_SEARCHED_TYPES = frozenset({"text", "message"})
_IDENTITY_ENCODINGS = frozenset({"7bit", "8bit", "binary"})
_DECODED_ENCODINGS = frozenset({"base64", "quoted-printable"})

# Labels that Python's codec registry lacks, as mail writes them.
_LABELS = {
    "iso-8859-6-i": "iso8859-6",
    "iso-8859-6-e": "iso8859-6",
    "iso-8859-8-i": "iso8859-8",
    "iso-8859-8-e": "iso8859-8",
    "windows-874": "cp874",
    "x-mac-roman": "mac-roman",
    "unicode-1-1-utf-7": "utf-7",
    "x-user-defined": "cp1252",
}
# Labels read as the superset that mailers really write under them (WHATWG
# Encoding Standard, "Encodings" table): a us-ascii part with 8-bit octets is
# almost always UTF-8, and ISO-8859-1 text uses windows-1252's 0x80-0x9F.
_SUPERSETS = {
    "ascii": "utf-8",
    "iso8859-1": "cp1252",
    "iso8859-9": "cp1254",
    "iso8859-11": "cp874",
    "tis-620": "cp874",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "big5": "big5hkscs",
}
# Text codecs that are not charsets: they interpret escapes or domain names,
# which a message must not be able to ask for.
_NOT_CHARSETS = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined"})
# Codecs in which every octet below 0x80 is that ASCII character, in any
# context: the condition for searching undecoded octets (see the fast path).
_ASCII_TRANSPARENT = frozenset(
    {
        "utf-8",
        "koi8-r",
        "koi8-u",
        "mac-roman",
        "cp874",
        *(f"cp125{n}" for n in range(9)),
        *(f"iso8859-{n}" for n in (*range(1, 12), *range(13, 17))),
    }
)
_FALLBACK_CODEC = "utf-8"


def search_key(text: str) -> str:
    """`text` normalised for comparison: NFKD, then case folded.

    Apply it to the search string once and pass the result as `needle`; the
    functions below apply it to the message's text and ignore diacritical
    marks on both sides.
    """
    if text.isascii():
        return text.lower()
    return unicodedata.normalize("NFKD", text).casefold()


def header_values(message: bytes | memoryview, structure: Structure, name: str) -> list[str]:
    """The values of the message's own header fields called `name` (without
    regard to case), in order: unfolded, RFC 2047 words decoded. An empty
    name means every field."""
    buf = _view(message)
    return [_decode_header(_unfold(raw)) for raw in _field_values(buf, structure.root, name)]


def header_contains(
    message: bytes | memoryview, structure: Structure, name: str, needle: str
) -> bool:
    """Whether a header field of the message called `name` holds `needle`
    (already passed through search_key) in its decoded value.

    RFC 9051 6.4.4: an empty needle matches every message that has such a
    field, whatever its value. An empty name stands for every field, so
    ("", "") asks whether the message has any field at all.

    Note for HEADER: RFC 5322 3.6.8 makes a field name at least one
    character, so no field is literally called ""; Dovecot answers HEADER ""
    with no message. Pass "" only to mean "any field".
    """
    pattern = _needle(needle)
    return any(
        pattern.found_in(search_key(value)) for value in header_values(message, structure, name)
    )


def body_contains(message: bytes | memoryview, structure: Structure, needle: str) -> bool:
    """SEARCH BODY: whether the decoded text of a text/* or message/* leaf
    part holds `needle` (already passed through search_key)."""
    if not needle:
        return True
    buf = _view(message)
    pattern = _needle(needle)
    return any(
        _leaf_contains(buf, part, pattern) for part in _parts(structure.root) if _searched(part)
    )


def text_contains(message: bytes | memoryview, structure: Structure, needle: str) -> bool:
    """SEARCH TEXT: whether any header (the message's, its parts' and its
    encapsulated messages', as decoded "Name: value" lines) or the text that
    BODY searches holds `needle` (already passed through search_key)."""
    if not needle:
        return True
    buf = _view(message)
    pattern = _needle(needle)
    for part in _parts(structure.root):
        if _header_block_contains(buf, part, pattern):
            return True
        if _searched(part) and _leaf_contains(buf, part, pattern):
            return True
    return False


# ---------------------------------------------------------------------------
# The same decoding for people reading the message (webmail)


def decode_header(raw: bytes) -> str:
    """A header field's value (or an ENVELOPE string) as a person reads it:
    unfolded, RFC 2047 words decoded as SEARCH decodes them."""
    return _decode_header(_unfold(raw))


def parameter_text(parameters: tuple[tuple[str, bytes], ...], name: str) -> str | None:
    """A MIME parameter's value (a filename) as a person reads it, or None.

    An RFC 2231 value (name*, its sections already joined by analyze()) is
    percent-decoded in its charset; a plain value may hold RFC 2047 words,
    which RFC 2047 5 forbids there but mailers write, so they are decoded too.
    """
    name = name.lower()
    values = {key.lower(): value for key, value in parameters}
    extended = values.get(name + "*")
    if extended is not None:
        charset, _, rest = extended.partition(b"'")
        _language, _, encoded = rest.partition(b"'")
        octets = re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m[1], 16)]), encoded)
        return _decode(octets, _codec_for(charset) or _FALLBACK_CODEC)
    plain = values.get(name)
    return None if plain is None else _decode_header(plain)


def part_text(message: bytes | memoryview, part: Part, limit: int) -> tuple[str, bool]:
    """The text of a leaf part as a person reads it: its transfer encoding
    undone and its charset applied, as BODY searches it. At most about
    `limit` decoded octets, and whether the part holds more."""
    buf = _view(message)
    encoding = (part.encoding or "7bit").lower()
    pieces, size, more = [], 0, False
    for piece in _transfer_decoded(buf, part.body_start, part.body_end, encoding):
        if size >= limit:
            more = True
            break
        pieces.append(piece)
        size += len(piece)
    return "".join(_text_chunks(iter(pieces), _part_codec(part))), more


# ---------------------------------------------------------------------------
# Walking the structure


def _view(message: bytes | memoryview) -> memoryview:
    return memoryview(message).cast("B")


def _parts(root: Part) -> Iterator[Part]:
    """Every part in document order, without recursion: a structure may nest
    as deep as its limits allow."""
    stack = [root]
    while stack:
        part = stack.pop()
        yield part
        stack.extend(reversed(part.children))


def _searched(part: Part) -> bool:
    """A leaf whose body is text to search (see the module docstring)."""
    return not part.children and part.type.lower() in _SEARCHED_TYPES


# Combining Diacritical Marks, their Extended and Supplement blocks, those for
# Symbols, and the Half Marks: what NFKD splits off Latin, Greek and Cyrillic
# letters. Other scripts' marks carry meaning and are compared.
_MARK = "[\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f]"
_MARKS = re.compile(_MARK + "+")
# Text kept from one chunk to the next, per character of the search string:
# a match spans the string's characters and the marks between them.
_SPAN_PER_CHARACTER = 8
# Longer search strings get no pattern of one class per character (costly to
# compile); the marks are taken out of the text instead, which is slower.
_MAX_PATTERN = 256


class _Needle:
    """A search string already passed through search_key(), without its
    marks; a pattern that finds it in text that still has them; and its
    octets when it can be looked for in undecoded ASCII-transparent text."""

    __slots__ = ("text", "octets", "pattern", "span", "unmark")

    def __init__(self, needle: str) -> None:
        stripped = _MARKS.sub("", needle)
        # Nothing but marks (or nothing) is looked for as it is.
        self.text = stripped or needle
        self.unmark = bool(stripped) and len(stripped) > _MAX_PATTERN
        if stripped and not self.unmark:
            # Any run of marks may stand between two characters.
            self.pattern = re.compile((_MARK + "*").join(map(re.escape, stripped)))
        else:
            self.pattern = re.compile(re.escape(self.text))
        self.octets = self.text.encode("ascii") if self.text.isascii() else None
        self.span = _SPAN_PER_CHARACTER * len(self.text)

    def found_in(self, text: str) -> bool:
        """Whether normalised `text` (search_key) holds the needle."""
        if text.isascii():
            return self.text in text  # no marks to step over
        if self.unmark:
            text = _MARKS.sub("", text)
        return self.pattern.search(text) is not None


@functools.lru_cache(maxsize=32)
def _needle(needle: str) -> _Needle:
    # A SEARCH tries one string on every message of the mailbox. Normalising
    # again costs nothing much and forgives a caller who did not.
    return _Needle(search_key(needle))


# ---------------------------------------------------------------------------
# Header fields


def _field_values(buf: memoryview, part: Part, name: str) -> Iterator[bytes]:
    """The raw values of the fields called `name` (every field for "") in
    the header of `part`, continuation lines included."""
    if name:
        if not _FIELD_NAME.fullmatch(name):
            return
        pattern = _field_pattern(name.lower())
    else:
        pattern = FIELD
    end = min(part.body_start, part.header_start + _HEADER_CEILING)
    for match in pattern.finditer(buf, part.header_start, end):
        yield match.group("value")


@functools.lru_cache(maxsize=64)
def _field_pattern(name: str) -> re.Pattern[bytes]:
    # One pattern per field name: the scan then skips other fields in C.
    escaped = re.escape(name.encode("ascii"))
    return re.compile(rb"^" + escaped + rb"[ \t]*:(?P<value>.*(?:\n[ \t].*)*)", re.M | re.I)


def _unfold(value: bytes) -> bytes:
    # RFC 5322 2.2.3: unfolding removes each CRLF that precedes white space;
    # the white space around the whole value is not content.
    return _FOLD.sub(b"", value).strip(b" \t\r\n")


def _unfold_block(block: bytes) -> bytes:
    """A header block with its folds removed, so a field is one line."""
    for fold, space in ((b"\r\n ", b" "), (b"\r\n\t", b"\t"), (b"\n ", b" "), (b"\n\t", b"\t")):
        block = block.replace(fold, space)
    return block


def _header_block_contains(buf: memoryview, part: Part, needle: _Needle) -> bool:
    """Whether the header of `part`, unfolded and decoded line by line,
    holds the needle."""
    end = min(part.body_start, part.header_start + _HEADER_CEILING)
    if end <= part.header_start:
        return False
    block = _unfold_block(bytes(buf[part.header_start : end]))
    if needle.octets is not None and block.isascii() and b"=?" not in block:
        # Nothing to decode: the decoded text is these octets.
        return needle.octets in block.lower()
    return needle.found_in(search_key(_decode_header(block)))


def _decode_header(raw: bytes) -> str:
    """RFC 2047 words decoded, the octets between them read as UTF-8 (or
    windows-1252); a word that cannot be decoded stays as written."""
    if b"=?" not in raw:
        return _decode_unlabelled(raw)
    pieces: list[str] = []
    run = bytearray()  # octets of adjacent decoded words in one charset
    run_codec: str | None = None
    pos = 0
    for match in _ENCODED_WORD.finditer(raw):
        between = raw[pos : match.start()]
        codec = _codec_for(match.group(1))
        octets = None if codec is None else _word_octets(match.group(2), match.group(3))
        if octets is None:
            # Left as written, with the text before it; it ends any run.
            _flush_run(pieces, run, run_codec)
            pieces.append(_decode_unlabelled(raw[pos : match.end()]))
            run_codec, pos = None, match.end()
            continue
        adjacent = run_codec is not None and not between.strip(b" \t")
        if not adjacent or codec != run_codec:
            _flush_run(pieces, run, run_codec)
            # RFC 2047 6.2: white space between two encoded-words is dropped.
            if not adjacent:
                pieces.append(_decode_unlabelled(between))
            run_codec = codec
        run += octets
        pos = match.end()
    _flush_run(pieces, run, run_codec)
    pieces.append(_decode_unlabelled(raw[pos:]))
    return "".join(pieces)


def _flush_run(pieces: list[str], run: bytearray, codec: str | None) -> None:
    if run and codec is not None:
        pieces.append(_decode(bytes(run), codec))
    run.clear()


def _word_octets(encoding: bytes, text: bytes) -> bytes | None:
    """The octets an encoded-word's text stands for, or None when it is not
    valid B (RFC 2047 4.1) text; Q (4.2) keeps an invalid escape as written."""
    if encoding in b"Qq":
        return binascii.a2b_qp(text, header=True)
    if not _BASE64_TEXT.fullmatch(text):
        return None
    letters = text.rstrip(b"=")
    if len(letters) % 4 == 1:
        return None  # a lone sextet is not an octet
    # Mailers often leave out the padding; put it back rather than refuse.
    return binascii.a2b_base64(letters + b"=" * (-len(letters) % 4))


def _decode_unlabelled(raw: bytes) -> str:
    if raw.isascii():
        return raw.decode("ascii")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp1252", "replace")


# ---------------------------------------------------------------------------
# Charsets


def _codec_for(label: bytes | None) -> str | None:
    """Python's codec for a charset label, or None when Python has none."""
    if label is None or len(label) > _MAX_LABEL:
        return None
    return _codec(label.decode("ascii", "replace").strip().lower())


@functools.lru_cache(maxsize=128)
def _codec(label: str) -> str | None:
    # RFC 2231 5: a charset in an encoded-word may carry "*language".
    label = label.partition("*")[0]
    label = _LABELS.get(label, label)
    try:
        name = codecs.lookup(label).name
        # bytes.decode refuses codecs that are not text encodings (base64,
        # zlib), but only once it has octets to decode.
        b"a".decode(name, "ignore")
    except (LookupError, ValueError):
        return None
    if name in _NOT_CHARSETS:
        return None
    return _SUPERSETS.get(name, name)


def _decode(octets: bytes, codec: str) -> str:
    try:
        return octets.decode(codec, "replace")
    except (UnicodeError, LookupError):  # a codec that fails even so
        return octets.decode(_FALLBACK_CODEC, "replace")


def _part_codec(part: Part) -> str:
    """The codec for a text part's body: its charset, else UTF-8."""
    label = next((value for key, value in part.parameters if key.lower() == "charset"), None)
    return _codec_for(label) or _FALLBACK_CODEC


# ---------------------------------------------------------------------------
# Bodies


def _leaf_contains(buf: memoryview, part: Part, needle: _Needle) -> bool:
    encoding = (part.encoding or "7bit").lower()
    if encoding not in _IDENTITY_ENCODINGS and encoding not in _DECODED_ENCODINGS:
        return False  # RFC 2045 6.4: an unknown encoding is octet-stream
    codec = _part_codec(part)
    if (
        encoding in _IDENTITY_ENCODINGS
        and needle.octets is not None
        and codec in _ASCII_TRANSPARENT
    ):
        found = _octets_contain(buf, part.body_start, part.body_end, needle.octets)
        if found is not None:
            return found
    octets = _transfer_decoded(buf, part.body_start, part.body_end, encoding)
    return _text_contains(_text_chunks(octets, codec), needle)


def _octets_contain(buf: memoryview, start: int, end: int, needle: bytes) -> bool | None:
    """The fast path: True when the lower-cased octets hold `needle`, False
    when they do not and are all ASCII, None when only decoding can tell."""
    keep = len(needle) - 1
    tail = b""
    ascii_only = True
    for pos in range(start, end, _CHUNK):
        piece = bytes(buf[pos : min(end, pos + _CHUNK)])
        window = tail + piece.lower()
        if needle in window:
            return True
        ascii_only = ascii_only and piece.isascii()
        tail = window[len(window) - keep :] if keep else b""
    return False if ascii_only else None


def _text_contains(chunks: Iterator[str], needle: _Needle) -> bool:
    tail = ""
    for chunk in chunks:
        window = tail + search_key(chunk)
        if needle.found_in(window):
            return True
        tail = window[-needle.span :]
    return False


def _line_pieces(buf: memoryview, start: int, end: int) -> Iterator[tuple[bytes, bool]]:
    """The octets start..end in pieces of about _CHUNK that end at a line end
    where one is near, each with whether it is the last."""
    pos = start
    while pos < end:
        stop = min(end, pos + _CHUNK)
        piece = bytes(buf[pos:stop])
        if stop < end:
            cut = piece.rfind(b"\n") + 1
            if cut:
                piece = piece[:cut]
        pos += len(piece)
        yield piece, pos >= end


def _transfer_decoded(buf: memoryview, start: int, end: int, encoding: str) -> Iterator[bytes]:
    if encoding == "base64":
        return _base64_decoded(_line_pieces(buf, start, end))
    if encoding == "quoted-printable":
        return _qp_decoded(_line_pieces(buf, start, end))
    return (piece for piece, _ in _line_pieces(buf, start, end))


def _base64_decoded(pieces: Iterator[tuple[bytes, bool]]) -> Iterator[bytes]:
    # RFC 2045 6.8: octets outside the alphabet are ignored. Groups of four
    # letters may span pieces, so the letters of an unfinished one carry over;
    # a cut-off last group gives what it holds instead of an error.
    carry = b""
    for piece, last in pieces:
        letters = carry + piece.translate(None, _NOT_BASE64)
        whole = len(letters) - len(letters) % 4
        carry = letters[whole:]
        if whole:
            yield binascii.a2b_base64(letters[:whole])
        if last and len(carry) > 1:
            yield binascii.a2b_base64(carry + b"=" * (-len(carry) % 4))


def _qp_decoded(pieces: Iterator[tuple[bytes, bool]]) -> Iterator[bytes]:
    carry = b""
    for piece, last in pieces:
        data = carry + piece
        carry = b""
        if last:
            data = data.rstrip(b" \t")
        elif not data.endswith(b"\n"):
            # A piece cut inside a very long line: an escape ("=" and two
            # hex digits) it cuts waits for the next piece.
            escape = data.rfind(b"=", len(data) - 2)
            if escape >= 0:
                data, carry = data[:escape], data[escape:]
        yield binascii.a2b_qp(_without_line_end_space(data))


# Encoders write trailing white space as =20, so the regex, slow on text
# full of spaces, runs only when some line really ends in white space.
_SPACE_BEFORE_LINE_END = (b" \n", b"\t\n", b" \r\n", b"\t\r\n")


def _without_line_end_space(data: bytes) -> bytes:
    if any(ending in data for ending in _SPACE_BEFORE_LINE_END):
        return _LINE_END_SPACE.sub(b"", data)
    return data


def _text_chunks(octets: Iterator[bytes], codec: str) -> Iterator[str]:
    """Decoded text in chunks that end at a starter character, so that NFKD's
    reordering of combining marks never straddles two chunks."""
    try:
        decoder = codecs.getincrementaldecoder(codec)("replace")
    except LookupError:
        decoder = codecs.getincrementaldecoder(_FALLBACK_CODEC)("replace")
    held = ""
    for piece in octets:
        try:
            text = held + decoder.decode(piece)
        except UnicodeError:
            text = held + piece.decode(_FALLBACK_CODEC, "replace")
        cut = _last_starter(text)
        held = text[cut:]
        yield text[:cut]
    with contextlib.suppress(UnicodeError):
        held += decoder.decode(b"", True)
    yield held


# A run of combining marks longer than this is held no further: the text is
# cut inside it rather than carried from chunk to chunk without end.
_MAX_HELD = 32


def _last_starter(text: str) -> int:
    """Where the last character with combining class 0 stands, near the end."""
    floor = max(0, len(text) - _MAX_HELD)
    for index in range(len(text) - 1, floor - 1, -1):
        if not unicodedata.combining(text[index]):
            return index
    return len(text)
