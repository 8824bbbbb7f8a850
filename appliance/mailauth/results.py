"""The Authentication-Results header field (RFC 8601), and finding fields in a header section.

`authentication_results(authserv_id, spf, dkim_results, dmarc, arc)` builds
the field this box prepends to an inbound message: one resinfo per method
(spf, then each DKIM signature, then arc, then dmarc), folded at 78 octets,
ending in CRLF:

    Authentication-Results: mx.example.com;
     spf=pass smtp.mailfrom=example.org;
     dkim=pass header.d=example.org header.s=a2026r header.a=rsa-sha256;
     arc=none;
     dmarc=pass (p=reject dis=none) header.from=example.org

A method that was not run is left out (spf None, arc None, dmarc None);
DKIM is always run, so a message without a signature says dkim=none. The
arc resinfo carries the properties RFC 8617 6 registers (header.oldest-pass,
smtp.remote-ip); a DMARC policy set aside for a trusted ARC sealer says so
in the dmarc resinfo's comment.

`our_results_ranges(message, authserv_id)` gives the (start, end) octet
ranges of the Authentication-Results fields that claim to be ours: RFC 8601
5 says a border MTA MUST remove (or rename) such fields arriving from
outside, since only we may write them; fields of other authserv-ids stay.
The caller writes the message around the ranges, so the body is not copied:
`without_ranges(message, ranges)` yields the slices to keep.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from appliance.mailauth.arc import ArcResult
    from appliance.mailauth.dmarc import DmarcResult
    from appliance.mailauth.spf import SpfResult
    from appliance.mailauth.verify import DkimResult

FIELD_NAME = b"Authentication-Results"
# RFC 5322 2.1.1: lines SHOULD be no more than 78 characters.
LINE_LIMIT = 78


@dataclass(slots=True, frozen=True)
class HeaderField:
    """One field of a header section: its name (lower case) and its octets,
    [start, end) from the name to after the line end of its last line."""

    name: bytes
    start: int
    end: int


def header_fields(message: bytes | memoryview) -> Iterator[HeaderField]:
    """The fields of the message's header section, up to the empty line.

    Lines end in CRLF or a bare LF. A line that is neither a field nor a
    continuation (no colon) is given with the name b"" so that callers keep it.
    """
    view = memoryview(message)
    length = len(view)
    position = 0
    current: tuple[bytes, int] | None = None
    while position < length:
        newline = _find_newline(view, position)
        line_end = length if newline < 0 else newline + 1
        line = bytes(view[position : min(line_end, position + 1000)])
        if line in (b"\r\n", b"\n"):
            break  # the empty line: the body follows
        if line[:1] in (b" ", b"\t") and current is not None:
            position = line_end  # continuation of the current field
            continue
        if current is not None:
            yield HeaderField(current[0], current[1], position)
        colon = line.find(b":")
        name = line[:colon].rstrip(b" \t").lower() if colon > 0 else b""
        current = (name if _FIELD_NAME.fullmatch(name) else b"", position)
        position = line_end
    if current is not None:
        yield HeaderField(current[0], current[1], position)


def _find_newline(view: memoryview, start: int) -> int:
    # memoryview has no find(); look in bounded chunks so a huge body is not copied.
    chunk = 4096
    position = start
    while position < len(view):
        piece = bytes(view[position : position + chunk])
        found = piece.find(b"\n")
        if found >= 0:
            return position + found
        position += chunk
    return -1


_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 3.6.8 ftext


def field_value(message: bytes | memoryview, field: HeaderField) -> bytes:
    """The unfolded value of a field: after the colon, line ends removed (RFC 5322 2.2.3)."""
    raw = bytes(memoryview(message)[field.start : field.end])
    value = raw.partition(b":")[2]
    return re.sub(rb"\r?\n(?=[ \t])", b"", value).rstrip(b"\r\n")


# Stripping forged results


def our_results_ranges(message: bytes | memoryview, authserv_id: str) -> list[tuple[int, int]]:
    """The octet ranges of Authentication-Results fields carrying authserv_id (RFC 8601 5)."""
    ours = authserv_id.lower().encode("utf-8")
    ranges = []
    for field in header_fields(message):
        if field.name != b"authentication-results":
            continue
        if _authserv_id(field_value(message, field)) == ours:
            ranges.append((field.start, field.end))
    return ranges


def without_ranges(
    message: bytes | memoryview, ranges: Sequence[tuple[int, int]]
) -> Iterator[memoryview]:
    """Slices of message that leave out the ranges (sorted, not overlapping)."""
    view = memoryview(message)
    position = 0
    for start, end in ranges:
        if start > position:
            yield view[position:start]
        position = max(position, end)
    if position < len(view):
        yield view[position:]


def _authserv_id(value: bytes) -> bytes:
    """The authserv-id of a field value: the first token, CFWS and quotes
    removed, lower case (RFC 8601 2.2: authserv-id = value, compared
    case-insensitively as a domain name is)."""
    text = _skip_cfws(value, 0)
    if text < len(value) and value[text : text + 1] == b'"':
        match = re.match(rb'"((?:[^"\\]|\\.)*)"', value[text:])
        token = re.sub(rb"\\(.)", rb"\1", match.group(1)) if match else b""
    else:
        match = re.match(rb"[^\s;()]+", value[text:])
        token = match.group() if match else b""
    return token.lower()


def _skip_cfws(value: bytes, i: int) -> int:
    depth = 0
    while i < len(value):
        char = value[i : i + 1]
        if depth:
            if char == b"\\":
                i += 1
            elif char == b"(":
                depth += 1
            elif char == b")":
                depth -= 1
        elif char == b"(":
            depth = 1
        elif char not in (b" ", b"\t", b"\r", b"\n"):
            return i
        i += 1
    return i


# Building the field


def authentication_results(
    authserv_id: str,
    spf: SpfResult | None,
    dkim_results: Sequence[DkimResult],
    dmarc: DmarcResult | None,
    arc: ArcResult | None = None,
    remote_ip: str = "",
) -> bytes:
    """The Authentication-Results field, folded, ending in CRLF.

    spf None: SPF was not checked (no spf resinfo). dkim_results empty:
    dkim=none (the message has no signature; verifying is always done).
    dmarc None: DMARC was not evaluated (no dmarc resinfo); arc None: ARC
    was not (no arc resinfo). remote_ip: the SMTP client, "" if unknown.
    """
    resinfos = []
    if spf is not None:
        resinfos.append(_spf_resinfo(spf))
    if dkim_results:
        resinfos.extend(_dkim_resinfo(result) for result in dkim_results)
    else:
        resinfos.append(["dkim=none"])
    if arc is not None:
        resinfos.append(_arc_resinfo(arc, remote_ip))
    if dmarc is not None:
        resinfos.append(_dmarc_resinfo(dmarc))
    return _fold([_value(authserv_id)], resinfos)


def _spf_resinfo(spf: SpfResult) -> list[str]:
    """smtp.mailfrom is the domain only: RFC 8601 2.7.2 lets the local part go,
    and the domain is what SPF checked and DMARC aligns."""
    words = [f"spf={_result_word(spf.result)}"]
    ptype = "smtp.helo" if spf.identity == "helo" else "smtp.mailfrom"
    words.append(f"{ptype}={_value(spf.domain or 'unknown')}")
    return words


def _dkim_resinfo(result: DkimResult) -> list[str]:
    words = [f"dkim={_result_word(result.result)}"]
    if result.reason and result.result != "pass":
        words.append(f"reason={_quoted(result.reason)}")
    if result.domain:
        words.append(f"header.d={_value(result.domain)}")
    if result.selector:
        words.append(f"header.s={_value(result.selector)}")
    if result.algorithm:
        words.append(f"header.a={_value(result.algorithm)}")
    return words


def _dmarc_resinfo(dmarc: DmarcResult) -> list[str]:
    words = [f"dmarc={_result_word(dmarc.result)}"]
    if dmarc.policy:
        # A comment, as the big receivers write it; RFC 8601 has no ptype for these.
        override = f"; {dmarc.reason}" if dmarc.override else ""
        words.append(_comment(f"p={dmarc.policy} dis={dmarc.disposition}{override}"))
    words.append(f"header.from={_value(dmarc.from_domain or 'unknown')}")
    return words


def _arc_resinfo(arc: ArcResult, remote_ip: str) -> list[str]:
    """RFC 8617 6: the chain's status, the newest set and its sealer in a
    comment, and the registered properties header.oldest-pass and smtp.remote-ip."""
    words = [f"arc={_result_word(arc.result)}"]
    if arc.reason and not arc.passed:
        words.append(f"reason={_quoted(arc.reason)}")
    if arc.instance:
        words.append(_comment(f"i={arc.instance} d={arc.sealer or 'unknown'}"))
    if arc.passed:
        words.append(f"header.oldest-pass={arc.oldest_pass}")
    if remote_ip and arc.result != "none":
        words.append(f"smtp.remote-ip={_value(remote_ip)}")
    return words


def _comment(text: str) -> str:
    """An RFC 5322 3.2.2 comment of text that may come from a message (a
    sealer's d=): parentheses and backslashes, which would end or escape it,
    and control characters are replaced."""
    return "(" + re.sub(r"[()\\\x00-\x1f\x7f]", " ", text) + ")"


_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")  # RFC 2045 token, no tspecials


def _result_word(result: str) -> str:
    return result if re.fullmatch(r"[a-z]+", result) else "permerror"


def _value(text: str) -> str:
    """A token as it is, anything else a quoted-string (RFC 2045 value)."""
    return text if _TOKEN.fullmatch(text) else _quoted(text)


def _quoted(text: str) -> str:
    printable = re.sub(r"[\x00-\x1f\x7f]", " ", text)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _fold(head: list[str], resinfos: list[list[str]]) -> bytes:
    """Name, authserv-id and resinfos separated by ";", each resinfo starting a
    line; a resinfo longer than a line breaks between its words."""
    if not resinfos:
        resinfos = [["none"]]
    lines = [f"{FIELD_NAME.decode()}: {' '.join(head)};"]
    for n, words in enumerate(resinfos):
        end = ";" if n < len(resinfos) - 1 else ""
        line = " "
        for w, word in enumerate(words):
            piece = word + (end if w == len(words) - 1 else "")
            if line.strip() and len(line) + 1 + len(piece) > LINE_LIMIT:
                lines.append(line)
                line = "  " + piece
            else:
                line = line + ("" if not line.strip() else " ") + piece
        lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
