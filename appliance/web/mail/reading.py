"""What a person sees of a stored message: pure functions of its Structure.

A message's text parts are its body; every other leaf is an attachment. Of
a multipart/alternative the richest version that can be shown is read
(text/html, else text/plain, RFC 2046 5.1.4: the last is the richest); of a
multipart/related the root is read (RFC 2387 3.2: the first part, unless a
start parameter names another) and the rest are what its cid: URLs name.
An encapsulated message is an attachment (a .eml file), not shown inline.

Strings are decoded as IMAP SEARCH decodes them (appliance.message.text):
what a search finds is what the page shows.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime

from markupsafe import Markup, escape

from appliance.message.structure import Address, Envelope, Part, Structure
from appliance.message.text import decode_header, parameter_text
from appliance.store import MessageEntry

# Characters of a file name offered for download; longer names are cut.
MAX_FILENAME = 200
# Characters of a subject or sender shown in a list row; the message shows all.
MAX_LIST_TEXT = 300

_SHOWN_TEXT = frozenset({("text", "plain"), ("text", "html")})
# Characters no file name needs: path separators (a name is never a path),
# controls, and those Windows refuses.
_FILENAME_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A URL in plain text: the schemes a link may have, up to white space or a
# character that cannot be in one.
_URL = re.compile(r"\b(?:https?://|mailto:)[^\s<>\"'`]+", re.IGNORECASE)
# Punctuation that ends a sentence rather than the URL written before it.
_URL_TRAILER = ".,;:!?)]}'\""


@dataclass(frozen=True, slots=True)
class Person:
    name: str  # the display name, decoded ("" when there is none)
    address: str  # local@domain ("" when the field held none)

    def __str__(self) -> str:
        return self.name or self.address or "(nobody)"

    @property
    def full(self) -> str:
        if self.name and self.address:
            return f"{self.name} <{self.address}>"
        return str(self)


@dataclass(frozen=True, slots=True)
class Attachment:
    number: str  # the IMAP part number ("2", "1.3"), used in the download URL
    name: str  # the name as the sender wrote it, decoded, for people to read
    filename: str  # the name a download is saved under: no path, no odd characters
    content_type: str  # as the message declares it ("application/pdf")
    size: int  # octets once the transfer encoding is undone (estimated)


@dataclass(frozen=True, slots=True)
class Summary:
    """One row of a message list."""

    uid: int
    sender: str
    subject: str
    arrived: float  # the time the box received it (IMAP's internal date)
    size: int
    seen: bool
    flagged: bool
    answered: bool
    has_attachments: bool


@dataclass(slots=True)
class Layout:
    """Which parts are read as the body, which are offered as attachments."""

    bodies: list[tuple[str, Part]] = field(default_factory=list)  # (number, part)
    attachments: list[Attachment] = field(default_factory=list)
    # Content-ID (without <>) -> part, for the cid: URLs of an HTML body (RFC 2392).
    related: dict[str, Part] = field(default_factory=dict)

    @property
    def has_html(self) -> bool:
        return any(part.subtype.lower() == "html" for _, part in self.bodies)


def people(addresses: tuple[Address, ...]) -> list[Person]:
    """The persons of an ENVELOPE address list; group markers left out."""
    found = []
    for address in addresses:
        if address.mailbox is None or address.host is None:
            continue  # the start or end of a group (RFC 3501 7.4.2)
        name = decode_header(address.name) if address.name else ""
        mailbox = address.mailbox.decode("utf-8", "replace")
        host = address.host.decode("utf-8", "replace")
        found.append(Person(" ".join(name.split()), f"{mailbox}@{host}"))
    return found


def subject_of(envelope: Envelope | None) -> str:
    if envelope is None or not envelope.subject:
        return ""
    return " ".join(decode_header(envelope.subject).split())


def date_of(envelope: Envelope | None) -> str:
    """The Date field as the sender wrote it, in a form people read."""
    if envelope is None or not envelope.date:
        return ""
    raw = decode_header(envelope.date)
    try:
        return parsedate_to_datetime(raw).strftime("%Y-%m-%d %H:%M %z")
    except (TypeError, ValueError, IndexError):
        return raw


def summarize(entry: MessageEntry, structure: Structure) -> Summary:
    envelope = structure.root.envelope
    senders = people(envelope.from_ if envelope else ())
    flags = {flag.lower() for flag in entry.flags}
    return Summary(
        uid=entry.uid,
        sender=(", ".join(map(str, senders)) or "(no sender)")[:MAX_LIST_TEXT],
        subject=(subject_of(envelope) or "(no subject)")[:MAX_LIST_TEXT],
        arrived=entry.internal_date,
        size=entry.size,
        seen="\\seen" in flags,
        flagged="\\flagged" in flags,
        answered="\\answered" in flags,
        has_attachments=has_attachments(structure.root),
    )


def has_attachments(root: Part) -> bool:
    return bool(layout(root).attachments)


def layout(root: Part) -> Layout:
    found = Layout()
    _collect_related(root, found.related)
    if root.type.lower() == "multipart":
        _walk(root, "", found)
    else:
        _leaf(root, "1", found)
    return found


def leaves(root: Part) -> list[tuple[str, Part]]:
    """Every part that is not a multipart, with its IMAP part number, in order.
    An encapsulated message counts as one (it is downloaded whole)."""
    if root.type.lower() != "multipart":
        return [("1", root)]
    found: list[tuple[str, Part]] = []
    stack = [("", root)]
    while stack:
        prefix, node = stack.pop()
        for index, child in reversed(list(enumerate(node.children, 1))):
            number = _number(prefix, index)
            if child.type.lower() == "multipart":
                stack.append((number, child))
            else:
                found.append((number, child))
    return sorted(found, key=lambda pair: tuple(int(n) for n in pair[0].split(".")))


def _number(prefix: str, index: int) -> str:
    return f"{prefix}.{index}" if prefix else str(index)


def _walk(multipart: Part, prefix: str, found: Layout) -> None:
    children = [(_number(prefix, i), child) for i, child in enumerate(multipart.children, 1)]
    subtype = multipart.subtype.lower()
    if subtype == "alternative" and children:
        number, chosen = _richest(children)
        _part(chosen, number, found)
    elif subtype == "related" and children:
        start = _start_of(multipart, children)
        _part(children[start][1], children[start][0], found)
        for index, (number, child) in enumerate(children):
            if index != start and child.disposition and child.disposition.lower() == "attachment":
                _leaf(child, number, found)
    else:
        for number, child in children:
            _part(child, number, found)


def _part(part: Part, number: str, found: Layout) -> None:
    if part.type.lower() == "multipart":
        _walk(part, number, found)
    else:
        _leaf(part, number, found)


def _leaf(part: Part, number: str, found: Layout) -> None:
    kind = (part.type.lower(), part.subtype.lower())
    disposition = (part.disposition or "").lower()
    if kind in _SHOWN_TEXT and disposition != "attachment":
        found.bodies.append((number, part))
    else:
        found.attachments.append(attachment(part, number))


def _richest(children: list[tuple[str, Part]]) -> tuple[str, Part]:
    """RFC 2046 5.1.4: the last version this reader can show."""
    for wanted in (("text", "html"), ("multipart", None), ("text", "plain")):
        for number, child in reversed(children):
            if child.type.lower() == wanted[0] and (
                wanted[1] is None or child.subtype.lower() == wanted[1]
            ):
                return number, child
    return children[-1]


def _start_of(multipart: Part, children: list[tuple[str, Part]]) -> int:
    """RFC 2387 3.2: the root is the part the start parameter names, else the first."""
    start = next((v for k, v in multipart.parameters if k.lower() == "start"), None)
    if start:
        for index, (_, child) in enumerate(children):
            if child.id and child.id.strip() == start.strip():
                return index
    return 0


def _collect_related(part: Part, related: dict[str, Part]) -> None:
    stack = [part]
    while stack:
        node = stack.pop()
        if node.id and not node.children:
            related.setdefault(content_id(node.id), node)
        if node.type.lower() == "multipart":
            stack.extend(node.children)


def content_id(raw: bytes) -> str:
    """A Content-ID as cid: URLs name it (RFC 2392: without the angle brackets)."""
    return raw.decode("ascii", "replace").strip().strip("<>").strip()


def attachment(part: Part, number: str) -> Attachment:
    content_type = f"{part.type}/{part.subtype}".lower()
    name = parameter_text(part.disposition_parameters, "filename") or parameter_text(
        part.parameters, "name"
    )
    if not name and part.children and part.children[0].envelope is not None:
        name = f"{subject_of(part.children[0].envelope) or 'message'}.eml"
    filename = safe_filename(name, number, content_type)
    return Attachment(
        number=number,
        name=" ".join(_CONTROL.sub(" ", name or "").split())[:MAX_FILENAME] or filename,
        filename=filename,
        content_type=content_type,
        size=decoded_size(part),
    )


def safe_filename(name: str | None, number: str, content_type: str) -> str:
    """A name to save a part under: the sender's, without path or control
    characters; or one made from the part number and type."""
    cleaned = _FILENAME_UNSAFE.sub("_", " ".join((name or "").split())).strip(" .")
    if not cleaned:
        extension = mimetypes.guess_extension(content_type) or ".bin"
        cleaned = f"part-{number}{extension}"
    return cleaned[:MAX_FILENAME]


def decoded_size(part: Part) -> int:
    """About how many octets the part holds once decoded, without decoding it:
    base64 writes 3 octets as 4 letters in lines of 76 and a line end."""
    size = part.body_end - part.body_start
    if (part.encoding or "").lower() == "base64":
        return size * 3 * 76 // (4 * 78)
    return size


def linkify(text: str) -> Markup:
    """Plain text as HTML, its http, https and mailto URLs made links that
    open in a new tab and tell the linked site nothing of this page."""
    out: list[str] = []
    position = 0
    for match in _URL.finditer(text):
        url = match.group(0).rstrip(_URL_TRAILER)
        start, end = match.start(), match.start() + len(url)
        out.append(escape(text[position:start]))
        out.append(
            Markup('<a href="{0}" rel="noopener noreferrer" target="_blank">{0}</a>').format(url)
        )
        position = end
    out.append(escape(text[position:]))
    return Markup("").join(out)
