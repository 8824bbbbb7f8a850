"""Writing mail in the browser: compose, reply, reply all, forward, drafts, sending.

A message is built with Python's email package under the SMTP policy (CRLF,
RFC 2047 words for non-ASCII subjects and names, RFC 2231 parameters for
non-ASCII file names) and sent through the submission path of port 587
(appliance.smtp.submission): the same From: rule, Date: and Message-ID:, DKIM
signature, local delivery and queue. Its copy in Sent, the removal of the
draft it came from and the \\Answered flag of the message it answers are in
the same commit as the delivery, so a crash never leaves a message sent but
missing from Sent.

Every header field typed in the form is refused if it holds a line break or
another control character: no field can smuggle in another (header
injection). Attachments are uploaded in the form's multipart body, which
aiohttp spools to a temporary file chunk by chunk, bounded by [web]
max_request_size (past it: 413, and nothing is sent).

Addresses offered for completion are those of the Sent mailbox's recent
messages, read from the structure records stored beside them: they survive
restarts and need no storage of their own.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.policy
import email.utils
import io
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage, MIMEPart
from email.parser import BytesParser
from html.parser import HTMLParser

from aiohttp import web
from multidict import MultiDictProxy

from appliance.addresses import AddressError, normalize_address, normalize_domain
from appliance.delivery.local import may_send_as
from appliance.message import structure
from appliance.message.text import decode_header
from appliance.smtp.protocol import Reply
from appliance.smtp.server import MailTransaction, SmtpContext, new_message_id
from appliance.smtp.submission import may_send, route_recipient, submit_message
from appliance.store import Transaction
from appliance.store.records import Account, Delivery, Mailbox, MessageEntry
from appliance.web.pages import (
    WebContext,
    client_address,
    context,
    notice,
    redirect,
    render,
    require_login,
)

log = logging.getLogger(__name__)

# CRLF line ends, header fields folded at 78 and encoded (RFC 2047, RFC 2231).
POLICY = email.policy.SMTP
# How messages being answered or forwarded are read: headers decoded.
_READING = email.policy.default
# An attached message that must be written again (one inside a draft) keeps
# its header fields as they were folded: refolding would break its DKIM.
_REWRITING = email.policy.default.clone(linesep="\r\n", refold_source="none")

# The quoted text of a reply or inline forward is cut here: the form carries
# it back in one request, which [web] max_request_size bounds anyway.
MAX_QUOTED_CHARACTERS = 100_000
# A typed header field (an address list, a subject) longer than this is a
# mistake or an attack, not a letter.
MAX_FIELD_LENGTH = 10_000
# References (RFC 5322 3.6.4) of a reply: the thread's first message and the
# most recent ones; clients thread as well with a trimmed list.
MAX_REFERENCES = 20
# MIME nesting followed when listing a message's attachments; deeper parts
# are not offered (a hostile message could nest thousands of levels).
MAX_NESTING = 50
# Autocompletion reads the To, Cc and Bcc of this many recent messages in
# Sent: enough for the people one writes to, cheap enough for every keystroke.
MAX_CONTACT_MESSAGES = 500
MAX_SUGGESTIONS = 10
MAX_QUERY_LENGTH = 100

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # tab is allowed, CR and LF are not
_MESSAGE_ID = re.compile(r"<[^<>\s]+>")
_MIME_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*")
_REF = re.compile(r"(\d{1,19}):(\d{1,10})")
# An attachment carried over from a stored message: the whole message
# (forward as attachment) or its n-th attachment (a draft's, a forward's).
_CARRIED = re.compile(r"(\d{1,19}):(\d{1,10})/(message|\d{1,5})")
_SOURCE = re.compile(r"(reply|forward):(\d{1,19}:\d{1,10})")
_SOURCE_FLAGS = {"reply": "\\Answered", "forward": "$Forwarded"}  # RFC 5788 keyword
_SPECIAL_NAMES = {"\\Sent": "Sent", "\\Drafts": "Drafts"}

HEADINGS = {
    "": "New message",
    "reply": "Reply",
    "replyall": "Reply to all",
    "forward": "Forward",
    "draft": "Draft",
}


# The compose form carries attachments: [web] max_upload_size, not max_request_size.
UPLOADS = ("/mail/compose",)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/mail/compose", compose_page)
    app.router.add_post("/mail/compose", compose_post)
    app.router.add_get("/mail/contacts", contacts)


class Refusal(Exception):
    """Why the form was not sent or saved, shown to the user above it."""

    def __init__(self, text: str, status: int = 400):
        super().__init__(text)
        self.status = status


@dataclass(frozen=True, slots=True)
class Carried:
    """An attachment taken from a stored message, offered as a ticked box."""

    value: str  # "<mailbox id>:<uid>/message" or "<mailbox id>:<uid>/<n>"
    label: str
    size: int


@dataclass(frozen=True, slots=True)
class Attachment:
    data: bytes
    content_type: str
    filename: str


@dataclass(slots=True)
class ComposeForm:
    """What the form shows, and what it sent back."""

    heading: str = HEADINGS[""]
    from_address: str = ""
    from_name: str = ""
    to: str = ""
    cc: str = ""
    bcc: str = ""
    subject: str = ""
    body: str = ""
    in_reply_to: str = ""
    references: str = ""
    draft: str = ""  # the stored draft this one replaces once saved or sent
    source: str = ""  # "reply:<ref>" or "forward:<ref>": flagged once sent
    carried: list[Carried] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Letter:
    """A form whose fields were checked: what the message will say."""

    author: Address
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    subject: str
    text: str
    in_reply_to: str
    references: str

    @property
    def recipients(self) -> tuple[Address, ...]:
        return self.to + self.cc + self.bcc


# -- pages ----------------------------------------------------------------------------


async def compose_page(request: web.Request) -> web.Response:
    """The form: empty, or filled in for a reply, a forward or a draft."""
    ctx = context(request)
    account = _account(request)  # or off to the login page
    query = request.query
    kind = next((k for k in ("reply", "replyall", "forward", "draft") if k in query), "")
    if not kind:
        shown = ComposeForm(to=_without_controls(query.get("to", ""))[:MAX_FIELD_LENGTH])
    else:
        ref = _ref(query[kind])
        mailbox, raw = _own_message(ctx, account, ref)
        original = await _parsed(raw)
        if kind == "draft":
            shown = _from_draft(original, query[kind], mailbox.special_use == "\\Drafts")
        elif kind == "forward":
            shown = _forward(original, query[kind], len(raw), query.get("as") == "attachment")
        else:
            own = _sends_as(ctx, account)
            shown = _reply(original, query[kind], own, everyone=kind == "replyall")
    shown.heading = HEADINGS[kind]
    return _render(request, account, shown)


async def compose_post(request: web.Request) -> web.Response:
    """Send the message, or save it in Drafts (the button pressed says which)."""
    ctx = context(request)
    account = _account(request)  # or off to the login page
    form = await request.post()  # read (and bounded) by the CSRF check already
    shown = _form_of(form)
    try:
        carried = await _carried(ctx, account, form.getall("keep", []))
        shown.carried = [c for c, _ in carried]
        letter = _letter(ctx, account, shown)
        attachments = [a for _, a in carried] + await _uploads(form)
        if form.get("action") == "draft":
            return await _save_draft(request, account, shown, letter, attachments)
        return await _send(request, account, shown, letter, attachments)
    except Refusal as refusal:
        text = str(refusal)
        if _has_uploads(form):
            text += " Choose the files to attach again."
        notice(request, text)
        return _render(request, account, shown, refusal.status)


async def contacts(request: web.Request) -> web.Response:
    """Addresses this account has written to that match ?q=, most used first (JSON)."""
    ctx = context(request)
    account = _account(request)  # or off to the login page
    query = request.query.get("q", "").strip().lower()[:MAX_QUERY_LENGTH]
    found = []
    if query:
        # Buffers: bodies read only for a structure never stored are not copied.
        with ctx.store.reader(buffers=True) as txn:
            written = _written_to(txn, account.id)
        for name, address in written:
            if query in address.lower() or query in name.lower():
                label = str(Address(display_name=name, addr_spec=address)) if name else address
                found.append({"name": name, "address": address, "label": label})
                if len(found) == MAX_SUGGESTIONS:
                    break
    response = web.json_response(found)
    response.headers["Cache-Control"] = "no-store"  # who one writes to is nobody else's
    return response


def _render(
    request: web.Request, account: Account, shown: ComposeForm, status: int = 200
) -> web.Response:
    ctx = context(request)
    return render(
        request,
        "mail/compose.html",
        status=status,
        form=shown,
        senders=_sends_as(ctx, account),
        max_upload=ctx.settings.web.max_upload_size,
    )


def _account(request: web.Request) -> Account:
    address = require_login(request).address
    account = context(request).store.read(lambda txn: txn.account(address))
    if account is None:  # removed while logged in
        raise redirect("/login")
    return account


def _smtp_context(ctx: WebContext) -> SmtpContext:
    """What the submission path needs, from the web's view of the service."""
    settings = ctx.settings
    return SmtpContext(
        hostname=settings.hostname,
        settings=settings.smtp,
        store=ctx.store,
        tls=None,
        data_dir=settings.data_dir,
        queued=ctx.queue_wake,
    )


def _sends_as(ctx: WebContext, account: Account) -> list[str]:
    """The From: addresses offered: the account's own and its aliases'."""
    delimiter = ctx.settings.smtp.recipient_delimiter

    def read(txn: Transaction) -> list[str]:
        aliases = [
            alias.source
            for alias in txn.aliases()
            if not alias.source.startswith("@")  # a catch-all gives no right to send
            and may_send_as(txn, account.address, alias.source, delimiter)
        ]
        return [account.address, *sorted(aliases)]

    return ctx.store.read(read)


# -- the stored messages a form starts from --------------------------------------------


def _ref(value: str) -> tuple[int, int]:
    found = _REF.fullmatch(value)
    if found is None:
        raise web.HTTPNotFound(text="No such message.")
    return int(found[1]), int(found[2])


def _own_message(ctx: WebContext, account: Account, ref: tuple[int, int]) -> tuple[Mailbox, bytes]:
    """A message of this account's, as its owner sees it; 404 for anyone else's."""

    def read(txn: Transaction) -> tuple[Mailbox, bytes] | None:
        mailbox = txn.mailbox_by_id(ref[0])
        if mailbox is None or mailbox.account_id != account.id:
            return None
        entry = txn.message(*ref)
        if entry is None:
            return None
        return mailbox, bytes(entry.head) + bytes(txn.blob(entry.blob_id))

    found = ctx.store.read(read)
    if found is None:
        raise web.HTTPNotFound(text="No such message.")
    return found


async def _parsed(raw: bytes) -> EmailMessage:
    # Off the loop: parsing a message of many megabytes takes a while.
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, BytesParser(policy=_READING).parsebytes, raw)


def _reply(original: EmailMessage, ref: str, own: list[str], everyone: bool) -> ComposeForm:
    """To the Reply-To (or From) address; with `everyone`, also to the other
    recipients, less the user's own addresses (RFC 5322 3.6.3)."""
    mine = {address.lower() for address in own}
    authors = _addresses_of(original, "Reply-To") or _addresses_of(original, "From")
    if authors and all(a.addr_spec.lower() in mine for a in authors):
        authors = _addresses_of(original, "To")  # answering one's own message
    to, cc = list(authors), []
    if everyone:
        to += _addresses_of(original, "To")
        cc = _addresses_of(original, "Cc")
    to = _distinct(to, mine if everyone else set())
    cc = _distinct(cc, mine | {a.addr_spec.lower() for a in to})
    message_id = _message_ids(_header(original, "Message-ID"))[:1]
    earlier = (
        _message_ids(_header(original, "References"))
        or _message_ids(_header(original, "In-Reply-To"))[:1]
    )
    thread = earlier + message_id
    if len(thread) > MAX_REFERENCES:
        thread = thread[:1] + thread[-(MAX_REFERENCES - 1) :]
    writers = _addresses_of(original, "From")
    who = (writers[0].display_name or writers[0].addr_spec) if writers else "someone"
    attribution = f"On {_header(original, 'Date') or 'an unknown date'}, {who} wrote:"
    return ComposeForm(
        to=_shown(to),
        cc=_shown(cc),
        subject=_prefixed("Re: ", ("re:",), _header(original, "Subject")),
        body=f"\n\n{attribution}\n{_quoted(_text_of(original))}",
        in_reply_to=" ".join(message_id),
        references=" ".join(thread),
        source=f"reply:{ref}",
    )


def _forward(original: EmailMessage, ref: str, size: int, as_attachment: bool) -> ComposeForm:
    """Inline: the original's header block and text, its attachments ticked;
    as an attachment: the whole message, untouched, as message/rfc822."""
    subject = _header(original, "Subject")
    shown = ComposeForm(
        subject=_prefixed("Fwd: ", ("fwd:", "fw:"), subject), source=f"forward:{ref}"
    )
    if as_attachment:
        name = _filename(subject or "message") + ".eml"
        shown.carried = [Carried(f"{ref}/message", name, size)]
        return shown
    block = "".join(
        f"{name}: {value}\n"
        for name in ("Subject", "Date", "From", "To", "Cc")
        if (value := _header(original, name))
    )
    shown.body = f"\n\n-------- Forwarded message --------\n{block}\n{_text_of(original)}"
    shown.carried = _attachments_offered(original, ref)
    return shown


def _from_draft(original: EmailMessage, ref: str, is_draft: bool) -> ComposeForm:
    """A saved message opened again; saving or sending replaces it if it is a draft."""
    authors = _addresses_of(original, "From")
    return ComposeForm(
        from_address=authors[0].addr_spec if authors else "",
        from_name=authors[0].display_name if authors else "",
        to=_shown(_addresses_of(original, "To")),
        cc=_shown(_addresses_of(original, "Cc")),
        bcc=_shown(_addresses_of(original, "Bcc")),
        subject=_header(original, "Subject"),
        body=_text_of(original),
        in_reply_to=" ".join(_message_ids(_header(original, "In-Reply-To"))),
        references=" ".join(_message_ids(_header(original, "References"))),
        draft=ref if is_draft else "",
        carried=_attachments_offered(original, ref),
    )


def _header(message: EmailMessage, name: str) -> str:
    """A field's decoded value on one line; "" if absent or unreadable."""
    try:
        value = message.get(name)
    except Exception:  # a malformed field the parser could not make an object of
        return ""
    return "" if value is None else _without_controls(" ".join(str(value).split()))


def _addresses_of(message: EmailMessage, name: str) -> list[Address]:
    try:
        header = message.get(name)
        found = list(header.addresses) if header is not None else []
    except Exception:  # unparsable: nobody to answer there
        return []
    return [a for a in found if a.username and a.domain]


def _distinct(addresses: list[Address], left_out: set[str]) -> list[Address]:
    seen = set(left_out)
    kept = []
    for address in addresses:
        key = address.addr_spec.lower()
        if key not in seen:
            seen.add(key)
            kept.append(address)
    return kept


def _shown(addresses: list[Address]) -> str:
    return ", ".join(_without_controls(str(a)) for a in addresses)


def _message_ids(value: str) -> list[str]:
    return _MESSAGE_ID.findall(value)


def _prefixed(prefix: str, known: tuple[str, ...], subject: str) -> str:
    return subject if subject.lower().startswith(known) else prefix + subject


def _quoted(text: str) -> str:
    # RFC 3676 4.5: quoted lines start with ">", one more for each level.
    return "\n".join(
        ">" + ("" if line.startswith(">") or not line else " ") + line for line in text.split("\n")
    )


def _text_of(message: EmailMessage) -> str:
    """The message's text (its HTML reduced to text when it has no plain part)."""
    try:
        body = message.get_body(preferencelist=("plain", "html"))
        if body is None:
            return ""
        try:
            text = body.get_content()
        except (LookupError, UnicodeError):  # an unknown or lying charset label
            text = (body.get_payload(decode=True) or b"").decode("utf-8", "replace")
    except (RecursionError, ValueError, TypeError):  # a structure the parser gave up on
        return ""
    if body.get_content_subtype() == "html":
        text = _HtmlText.of(text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text[:MAX_QUOTED_CHARACTERS]


class _HtmlText(HTMLParser):
    """The words of an HTML part, one block to a line, for quoting."""

    BLOCKS = frozenset(
        {"address", "blockquote", "br", "dd", "div", "dl", "dt", "h1", "h2", "h3", "h4"}
        | {"h5", "h6", "hr", "li", "ol", "p", "pre", "table", "tr", "ul"}
    )
    HIDDEN = frozenset({"head", "script", "style", "template", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pieces: list[str] = []
        self.hidden = 0

    @classmethod
    def of(cls, html: str) -> str:
        parser = cls()
        parser.feed(html)
        parser.close()
        lines = (" ".join(line.split()) for line in "".join(parser.pieces).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n")

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BLOCKS:
            self.pieces.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BLOCKS:
            self.pieces.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.pieces.append(data.replace("\n", " "))


def _attachment_parts(message: EmailMessage) -> list[EmailMessage]:
    """The parts a person sees as attachments, in order: every leaf but the
    text shown as the body; an attached message is one leaf, not opened."""
    try:
        body = message.get_body(preferencelist=("plain", "html"))
        return [
            part
            for part in _leaves(message, 0)
            if part is not body
            and (
                part.get_content_disposition() == "attachment"
                or part.get_filename() is not None
                or part.get_content_maintype() != "text"
            )
        ]
    except (RecursionError, ValueError, TypeError):
        return []


def _leaves(part: EmailMessage, depth: int) -> Iterator[EmailMessage]:
    if part.get_content_maintype() == "multipart":
        if depth < MAX_NESTING:
            for child in part.iter_parts():
                yield from _leaves(child, depth + 1)
    else:
        yield part


def _attachment_of(part: EmailMessage) -> Attachment:
    content_type = part.get_content_type()
    if content_type == "message/rfc822" and part.is_multipart():
        data = part.get_payload(0).as_bytes(policy=_REWRITING)
    else:
        data = part.get_payload(decode=True) or b""
    default = "message.eml" if part.get_content_maintype() == "message" else "attachment"
    return Attachment(data, content_type, _filename(part.get_filename() or default))


def _attachments_offered(message: EmailMessage, ref: str) -> list[Carried]:
    offered = []
    for index, part in enumerate(_attachment_parts(message)):
        attachment = _attachment_of(part)
        offered.append(Carried(f"{ref}/{index}", attachment.filename, len(attachment.data)))
    return offered


def _filename(name: str) -> str:
    """A file name as it may be sent: no directories, no control characters."""
    name = _CONTROL.sub(" ", name).replace("\t", " ")
    return re.split(r"[/\\]", name)[-1].strip()[:255] or "attachment"


# -- reading the posted form ------------------------------------------------------------


def _form_of(form: MultiDictProxy) -> ComposeForm:
    def text(name: str) -> str:
        value = form.get(name, "")
        return value if isinstance(value, str) else ""

    source = text("source") if _SOURCE.fullmatch(text("source")) else ""
    kind = "draft" if text("draft") else source.partition(":")[0]
    return ComposeForm(
        heading=HEADINGS[kind],
        from_address=text("from"),
        from_name=text("from_name"),
        to=text("to"),
        cc=text("cc"),
        bcc=text("bcc"),
        subject=text("subject"),
        body=text("body"),
        in_reply_to=text("in_reply_to"),
        references=text("references"),
        draft=text("draft") if _REF.fullmatch(text("draft")) else "",
        source=source,
    )


def _letter(ctx: WebContext, account: Account, shown: ComposeForm) -> Letter:
    """The form's fields checked, or a Refusal saying which is wrong."""
    for label, value in (
        ("From", shown.from_address),
        ("Your name", shown.from_name),
        ("To", shown.to),
        ("Cc", shown.cc),
        ("Bcc", shown.bcc),
        ("Subject", shown.subject),
        ("In-Reply-To", shown.in_reply_to),
        ("References", shown.references),
    ):
        if _CONTROL.search(value):
            raise Refusal(f"The {label} field may not contain line breaks or control characters.")
        if len(value) > MAX_FIELD_LENGTH:
            raise Refusal(f"The {label} field is too long.")
    sender = _address_in(shown.from_address, "From")
    if not may_send(_smtp_context(ctx), account.address, sender.addr_spec):
        raise Refusal(f"You may not send as {shown.from_address}.", 403)
    return Letter(
        author=Address(display_name=shown.from_name.strip(), addr_spec=sender.addr_spec),
        to=_address_list(shown.to, "To"),
        cc=_address_list(shown.cc, "Cc"),
        bcc=_address_list(shown.bcc, "Bcc"),
        subject=shown.subject.strip(),
        text=shown.body,
        in_reply_to=" ".join(_message_ids(shown.in_reply_to)[:1]),
        references=" ".join(_message_ids(shown.references)[-MAX_REFERENCES:]),
    )


def _address_list(value: str, label: str) -> tuple[Address, ...]:
    if not value.strip():
        return ()
    try:
        header = _READING.header_factory(label, value)
    except ValueError:  # the parser refuses a CR or LF in an encoded word (RFC 2047)
        raise Refusal(f"The {label} field may not contain line breaks, even encoded.") from None
    # An invalid entry would be dropped silently by the parser: refuse instead.
    if any(isinstance(d, email.errors.InvalidHeaderDefect) for d in header.defects):
        raise Refusal(f"The {label} field is not a list of addresses separated by commas.")
    return tuple(_checked(address, label) for address in header.addresses)


def _address_in(value: str, label: str) -> Address:
    found = _address_list(value, label)
    if len(found) != 1:
        raise Refusal(f"The {label} field must hold one address.")
    return found[0]


def _checked(address: Address, label: str) -> Address:
    """The address with its domain in A-labels, or a Refusal naming it."""
    shown = address.addr_spec or str(address)
    if _CONTROL.search(address.display_name):  # put there by an encoded word
        raise Refusal(f"{shown} ({label}): the name may not contain line breaks.")
    if not address.username.isascii():
        raise Refusal(f"{shown} ({label}): a non-ASCII name before the @ cannot be sent yet.")
    try:
        normalize_address(address.addr_spec)
        domain = normalize_domain(address.domain)
    except AddressError:
        raise Refusal(f"{shown} ({label}) is not a mail address.") from None
    return Address(display_name=address.display_name, username=address.username, domain=domain)


async def _carried(
    ctx: WebContext, account: Account, values: list
) -> list[tuple[Carried, Attachment]]:
    """The ticked attachments of stored messages (404 for another account's)."""
    wanted: dict[str, list[str]] = {}
    for value in values:
        found = _CARRIED.fullmatch(value) if isinstance(value, str) else None
        if found is None:
            raise web.HTTPNotFound(text="No such attachment.")
        wanted.setdefault(f"{found[1]}:{found[2]}", []).append(found[3])
    out = []
    for ref, which in wanted.items():
        _, raw = _own_message(ctx, account, _ref(ref))
        original = await _parsed(raw)
        parts = _attachment_parts(original)
        for item in which:
            if item == "message":  # forwarded as it is, octet for octet
                name = _filename(_header(original, "Subject") or "message") + ".eml"
                attachment = Attachment(raw, "message/rfc822", name)
            elif int(item) < len(parts):
                attachment = _attachment_of(parts[int(item)])
            else:
                raise web.HTTPNotFound(text="No such attachment.")
            label = Carried(f"{ref}/{item}", attachment.filename, len(attachment.data))
            out.append((label, attachment))
    return out


async def _uploads(form: MultiDictProxy) -> list[Attachment]:
    loop = asyncio.get_running_loop()
    out = []
    for item in form.getall("attachment", []):
        if not isinstance(item, web.FileField):  # the file input left empty
            continue
        if _CONTROL.search(item.filename):
            raise Refusal("A file name may not contain line breaks or control characters.")
        content_type = (item.content_type or "").lower()
        if not _MIME_TYPE.fullmatch(content_type):
            content_type = "application/octet-stream"
        try:
            data = await loop.run_in_executor(None, item.file.read)  # may be on disk
        finally:
            item.file.close()
        out.append(Attachment(data, content_type, _filename(item.filename)))
    return out


def _has_uploads(form: MultiDictProxy) -> bool:
    return any(isinstance(item, web.FileField) for item in form.getall("attachment", []))


# -- building the message ----------------------------------------------------------------


class _Generator(BytesGenerator):
    """Writes an attached message's 8-bit octets as they are; the standard
    generator would fail on them (it encodes a message/rfc822 body as ASCII)."""

    def _encode(self, s: str) -> bytes:
        return s.encode("ascii", "surrogateescape")


def _message(letter: Letter, attachments: list[Attachment], draft: bool) -> bytes:
    """The message in octets; a draft keeps its Bcc and is dated, while a
    message to send gets its Date from the submission path and its Bcc
    only in the Sent copy (RFC 5322 3.6.3)."""
    message = EmailMessage(policy=POLICY)
    message["From"] = letter.author
    for name, addresses in (("To", letter.to), ("Cc", letter.cc)):
        if addresses:
            message[name] = addresses
    if draft and letter.bcc:
        message["Bcc"] = letter.bcc
    if draft:
        message["Date"] = email.utils.localtime()
    if letter.subject:
        message["Subject"] = letter.subject
    if letter.in_reply_to:
        message["In-Reply-To"] = letter.in_reply_to
    if letter.references:
        message["References"] = letter.references
    # 7bit when it is ASCII in short lines; else quoted-printable, readable
    # in the raw and safe through any relay, unlike 8bit.
    text = letter.text.replace("\r\n", "\n")
    message.set_content(text, cte=None if text.isascii() else "quoted-printable")
    for attachment in attachments:
        _attach(message, attachment)
    out = io.BytesIO()
    _Generator(out, policy=POLICY).flatten(message)
    return out.getvalue()


def _attach(message: EmailMessage, attachment: Attachment) -> None:
    if message.get_content_maintype() != "multipart":
        message.make_mixed()
    maintype, _, subtype = attachment.content_type.partition("/")
    # RFC 2046 5.2.1: a message/rfc822 body is never base64 or quoted-printable.
    if attachment.content_type == "message/rfc822":
        encoding = "7bit" if attachment.data.isascii() else "8bit"
    else:
        encoding = "base64"
    part = MIMEPart(policy=POLICY)
    part.set_content(
        attachment.data,
        maintype,
        subtype,
        cte=encoding,
        disposition="attachment",
        filename=attachment.filename,
    )
    message.attach(part)


# -- saving and sending -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Followups:
    """What a message sent or saved also changes in its author's mailboxes."""

    account_id: int
    replaces: tuple[int, int] | None  # the draft it was written from
    source: tuple[tuple[int, int], str] | None  # the message it answers or forwards, its flag

    @classmethod
    def of(cls, account: Account, shown: ComposeForm) -> _Followups:
        replaces = _ref(shown.draft) if shown.draft else None
        source = None
        if found := _SOURCE.fullmatch(shown.source):
            source = (_ref(found[2]), _SOURCE_FLAGS[found[1]])
        return cls(account.id, replaces, source)

    def apply(self, txn: Transaction, sent: bool) -> None:
        if self.replaces is not None:
            mailbox = txn.mailbox_by_id(self.replaces[0])
            if self._owned(mailbox) and mailbox.special_use == "\\Drafts":
                txn.expunge(mailbox.id, [self.replaces[1]])
        if sent and self.source is not None:
            (mailbox_id, uid), flag = self.source
            if self._owned(txn.mailbox_by_id(mailbox_id)):
                txn.store_flags(mailbox_id, [uid], [flag], "add")

    def _owned(self, mailbox: Mailbox | None) -> bool:
        return mailbox is not None and mailbox.account_id == self.account_id


def _special_mailbox(txn: Transaction, account_id: int, special_use: str) -> Mailbox:
    """The account's Sent or Drafts (RFC 6154), made again if it was deleted."""
    for mailbox in txn.mailboxes(account_id):
        if mailbox.special_use == special_use:
            return mailbox
    name = _SPECIAL_NAMES[special_use]
    return txn.mailbox(account_id, name) or txn.create_mailbox(account_id, name, special_use)


async def _save_draft(
    request: web.Request,
    account: Account,
    shown: ComposeForm,
    letter: Letter,
    attachments: list[Attachment],
) -> web.Response:
    ctx = context(request)
    body = _message(letter, attachments, draft=True)
    _check_size(ctx, body)
    info = structure.analyze(body).to_record()
    followups = _Followups.of(account, shown)

    def save(txn: Transaction) -> MessageEntry:
        drafts = _special_mailbox(txn, account.id, "\\Drafts")
        entry = txn.append_message(drafts, body, ("\\Draft", "\\Seen"), info=info)
        followups.apply(txn, sent=False)
        return entry

    entry = await ctx.store.submit(save)
    log.info("webmail draft user=%s size=%d uid=%d", account.address, len(body), entry.uid)
    notice(request, "Draft saved.")
    raise redirect(f"/mail/compose?draft={entry.mailbox_id}:{entry.uid}")


async def _send(
    request: web.Request,
    account: Account,
    shown: ComposeForm,
    letter: Letter,
    attachments: list[Attachment],
) -> web.Response:
    ctx = context(request)
    smtp = _smtp_context(ctx)
    limits = smtp.settings.limits
    if not letter.recipients:
        raise Refusal("Add at least one recipient.")
    if len(letter.recipients) > limits.max_recipients:
        raise Refusal(f"A message may go to at most {limits.max_recipients} recipients.")
    transaction = MailTransaction()
    for address in letter.recipients:
        refused = route_recipient(smtp, address.addr_spec, transaction)
        if refused is not None:
            raise Refusal(f"Not sent: {refused.text}")
    body = _message(letter, attachments, draft=False)
    _check_size(ctx, body)
    bcc_field = b""
    if letter.bcc:  # RFC 5322 3.6.3: only in the author's copy, the one in Sent
        bcc_field = POLICY.fold_binary("Bcc", POLICY.header_factory("Bcc", letter.bcc))
    # The envelope sender is the From: address (checked above), so that a
    # bounce reaches whoever the message was written as.
    sender = letter.author.addr_spec
    deliver = _Delivery(request, sender, transaction, bcc_field, _Followups.of(account, shown))
    reply = await submit_message(smtp, account.address, body, deliver, client_address(request))
    if reply.is_error:
        raise Refusal(f"Not sent: {reply.text}", 403 if reply.status == "5.7.1" else 503)
    notice(request, "Message sent.")
    raise redirect("/mail")


def _check_size(ctx: WebContext, body: bytes) -> None:
    limit = ctx.settings.smtp.limits.max_message_size
    if len(body) > limit:
        raise Refusal(
            f"The message is larger than the {limit // (1 << 20)} MB this box sends.", 413
        )


class _Delivery:
    """Stores a checked, signed message as the submission server would: for
    its local recipients and the queue, in one commit with its Sent copy."""

    def __init__(
        self,
        request: web.Request,
        sender: str,
        transaction: MailTransaction,
        bcc_field: bytes,
        followups: _Followups,
    ):
        self.ctx = context(request)
        self.user = require_login(request).address
        self.sender = sender
        self.transaction = transaction
        self.bcc_field = bcc_field
        self.followups = followups
        self.client = client_address(request)
        self.protocol = "HTTPS" if request.secure else "HTTP"

    async def __call__(self, body: bytes, analyzed: structure.Structure) -> Reply:
        queue_id = new_message_id()
        sender = self.sender
        received = self._received_fields(queue_id)
        return_path = f"Return-Path: <{sender}>\r\n".encode()
        local = [(a, return_path + received(rcpt)) for a, rcpt in self.transaction.accounts.items()]
        forwards = tuple(self.transaction.forwards)
        forward_head = received(forwards[0] if len(forwards) == 1 else None) if forwards else b""
        record = analyzed.to_record()
        # The author's copy: Bcc in front of the signed fields, the rest as sent.
        sent_copy = self.bcc_field + body
        sent_record = structure.analyze(sent_copy).to_record() if self.bcc_field else record
        followups = self.followups

        def commit(txn: Transaction) -> Delivery:
            stored = txn.deliver(body, local, sender, forwards, forward_head, record)
            if stored.entries or stored.queued:
                sent = _special_mailbox(txn, followups.account_id, "\\Sent")
                txn.append_message(sent, sent_copy, ("\\Seen",), info=sent_record)
                followups.apply(txn, sent=True)
            return stored

        try:
            stored = await self.ctx.store.submit(commit)
        except Exception:
            log.exception("webmail store failed id=%s", queue_id)
            stored = None
        if stored is None or not (stored.entries or stored.queued):
            reply = Reply(451, "4.3.0", "The message could not be stored; try again later.")
        else:
            reply = Reply(250, "2.0.0", f"Ok: queued as {queue_id}")
            if stored.queued:
                self.ctx.queue_wake()
        log.info(
            "webmail sent user=%s client=%s from=<%s> to=%s size=%d result=%d id=%s"
            " delivered=%d forwarded=%d",
            self.user,
            self.client,
            sender,
            ",".join(f"<{r}>" for r in [*self.transaction.accounts, *forwards]),
            len(body),
            reply.code,
            queue_id,
            len(stored.entries) if stored else 0,
            sum(len(q.recipients) for q in stored.queued) if stored else 0,
        )
        return reply

    def _received_fields(self, queue_id: str) -> Callable[[str | None], bytes]:
        """The Received: field (RFC 5321 4.4) of one recipient's copy."""
        client = self.client
        literal = f"[IPv6:{client}]" if ":" in client else f"[{client}]"
        date = email.utils.format_datetime(email.utils.localtime())
        start = (
            f"Received: from {literal}\r\n\tby {self.ctx.settings.hostname} with {self.protocol}"
        )

        def field_for(recipient: str | None) -> bytes:
            target = f"\r\n\tfor <{recipient}>" if recipient else ""
            return f"{start} id {queue_id}{target}; {date}\r\n".encode()

        return field_for


# -- autocompletion ----------------------------------------------------------------------


def _written_to(txn: Transaction, account_id: int) -> list[tuple[str, str]]:
    """(name, address) of the recipients of recent messages in Sent, those
    written to most often first, then the most recent; the latest name used."""
    sent = next((m for m in txn.mailboxes(account_id) if m.special_use == "\\Sent"), None)
    if sent is None:
        return []
    first = max(1, sent.uidnext - MAX_CONTACT_MESSAGES)
    counts: dict[str, int] = {}
    latest: dict[str, int] = {}
    names: dict[str, tuple[str, str]] = {}
    for entry in txn.messages(sent.id, first):
        for name, address in _recipients_of(txn, entry):
            key = address.lower()
            counts[key] = counts.get(key, 0) + 1
            latest[key] = entry.uid
            if name or key not in names:
                names[key] = (name, address)
    return [names[key] for key in sorted(counts, key=lambda k: (-counts[k], -latest[k]))]


def _recipients_of(txn: Transaction, entry: MessageEntry) -> Iterator[tuple[str, str]]:
    stored = structure.load_structure(txn.blob_info(entry.blob_id), txn.blob(entry.blob_id))
    envelope = stored.root.envelope
    for address in (*envelope.to, *envelope.cc, *envelope.bcc):
        if address.mailbox in (None, structure.MISSING_MAILBOX):
            continue
        if address.host in (None, structure.MISSING_DOMAIN):
            continue
        spec = (address.mailbox + b"@" + address.host).decode("utf-8", "replace")
        name = _without_controls(decode_header(address.name)).strip() if address.name else ""
        yield name, _without_controls(spec)


def _without_controls(text: str) -> str:
    return _CONTROL.sub(" ", text)


__all__ = ["add_routes"]
