"""The webmail pages: mailboxes, message lists, a message, its parts, and acting on them.

URLs name mailboxes by id and messages by UID, resolved through the
logged-in account (appliance.web.mail.access). Every read is one short read
transaction with buffers (bodies are views into the map, copied only as far
as a page needs); every change is one store.submit(); a change is a form
POST with the CSRF token (checked in app.py) and ends in a redirect.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from aiohttp import web
from markupsafe import Markup

from appliance.message.structure import author_addresses
from appliance.message.text import part_text
from appliance.store import Mailbox, MessageEntry, NotFound, Store, Transaction
from appliance.web.mail import access, events, search
from appliance.web.mail.access import NOT_FOUND, Reader
from appliance.web.mail.reading import (
    Attachment,
    Person,
    Summary,
    attachment,
    date_of,
    layout,
    leaves,
    linkify,
    people,
    subject_of,
    summarize,
)
from appliance.web.mail.sanitize import (
    CUT_SHORT,
    MAX_BODY_TEXT,
    body_document,
    may_load_remote,
    part_octets,
    policy,
)
from appliance.web.mail.state import STATE, MailState, read_listing, state
from appliance.web.pages import CONTEXT, audit, context, load_templates, notice, redirect, render

PAGE_SIZE = 50  # messages per page of a list
# Compiled when the service starts: compiling them took the first list page
# after a start some 25 ms, half its budget (bench/webmail).
TEMPLATES = ("base.html", "mail/mailbox.html", "mail/_folders.html", "mail/message.html")
# Octets of the original message sent per write, each read in its own short
# read transaction: a 50 MB message never sits whole in the heap.
RAW_CHUNK = 256 * 1024

# Types an attachment keeps when downloaded; anything else, HTML, SVG and
# XML above all, is application/octet-stream, so no browser ever renders a
# stranger's document as one of this box's pages.
_DOWNLOAD_TYPES = frozenset(
    {
        "application/pdf",
        "application/zip",
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "audio/mpeg",
        "audio/ogg",
        "video/mp4",
        "text/plain",
        "text/csv",
        "text/calendar",
    }
)
# A response that is the stranger's bytes, not a page: no script, no
# plugin, no same-origin anything, even if a browser were to render it.
_DOWNLOAD_POLICY = "default-src 'none'; sandbox"
# A path of this box's webmail, and nothing that a browser could read as
# another host ("//host", "/\\host") or that could split a header.
_LOCAL_MAIL_PATH = re.compile(r"/mail(?:[/?][\x21-\x5b\x5d-\x7e]*)?")
_ACTIONS = {
    "seen": ("\\Seen", "add", "Marked as read."),
    "unseen": ("\\Seen", "remove", "Marked as unread."),
    "flag": ("\\Flagged", "add", "Flagged."),
    "unflag": ("\\Flagged", "remove", "Flag removed."),
}


def add_routes(app: web.Application) -> None:
    app[STATE] = MailState()
    app.on_startup.append(_compile_templates)
    app.on_startup.append(_start_warming)
    app.on_shutdown.append(_stop_streams)
    get, post = app.router.add_get, app.router.add_post
    mailbox = r"/mail/{mailbox:\d+}"
    message = mailbox + r"/{uid:\d+}"
    get("/mail", inbox)
    get("/mail/search", search_page)
    get("/mail/events", events.stream)
    get(mailbox, mailbox_page)
    post(mailbox + "/act", act)
    get(message, message_page)
    get(message + "/body", body)
    get(message + r"/part/{part:\d+(?:\.\d+){0,50}}", part)
    get(message + "/raw", raw)
    post(message + "/trust", trust_sender)


async def _compile_templates(app: web.Application) -> None:
    load_templates(*TEMPLATES)


async def _start_warming(app: web.Application) -> None:
    app[STATE].warming = asyncio.create_task(_warm_listings(app))


async def _warm_listings(app: web.Application) -> None:
    """Reads every account's INBOX listing while the service starts: reading
    the states of 10,000 messages took the first list page after a start 50
    to 80 ms, over its whole budget (bench/webmail). On the loop, one INBOX
    at a time with a turn for others between: on a thread of its own it
    left the process 11 MiB larger (another malloc arena kept its pages).
    A listing a page read meanwhile, or after a change, is newer and stays."""
    store, listings = app[CONTEXT].store, app[STATE].listings
    accounts = store.read(lambda txn: [account.id for account in txn.accounts()])
    for account_id in accounts[: listings.room]:
        with store.reader(buffers=True) as txn:
            inbox = txn.mailbox(account_id, "INBOX")
            if inbox is not None:
                listings.offer(inbox.id, read_listing(txn, inbox))
        await asyncio.sleep(0)


async def _stop_streams(app: web.Application) -> None:
    app[STATE].stop()


# -- what the templates show -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Folder:
    id: int
    name: str
    label: str
    special_use: str | None
    unseen: int
    total: int

    @property
    def url(self) -> str:
        return f"/mail/{self.id}"


@dataclass(frozen=True, slots=True)
class MessageView:
    uid: int
    subject: str
    sender: list[Person]
    to: list[Person]
    cc: list[Person]
    reply_to: list[Person]
    date: str
    flagged: bool
    attachments: list[Attachment]
    texts: list[Markup]  # plain bodies shown in the page; empty when framed
    framed: bool  # an HTML body, shown in the sandboxed frame
    remote_asked: bool  # the HTML seems to load something from elsewhere


def human_size(octets: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if octets >= scale:
            return f"{octets / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{octets} B"


def when(timestamp: float) -> str:
    """A time in the box's time zone, as short as it can be and still be clear."""
    moment, now = time.localtime(timestamp), time.localtime()
    if moment[:3] == now[:3]:
        return time.strftime("%H:%M", moment)
    if moment.tm_year == now.tm_year:
        return time.strftime("%d %b %H:%M", moment)
    return time.strftime("%Y-%m-%d", moment)


def iso_time(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


_SHOWN = {"human_size": human_size, "when": when, "iso_time": iso_time}


def _folders(txn: Transaction, mail: MailState, who: Reader) -> list[Folder]:
    found = []
    for mailbox in access.sorted_mailboxes(txn.mailboxes(who.account.id)):
        listing = mail.listings.get(txn, mailbox)
        found.append(
            Folder(
                mailbox.id,
                mailbox.name,
                access.label(mailbox),
                mailbox.special_use,
                listing.unseen,
                len(listing.uids),
            )
        )
    return found


def _summaries(txn: Transaction, mailbox_id: int, uids: list[int]) -> list[Summary]:
    rows = []
    for uid in uids:
        entry = txn.message(mailbox_id, uid)
        if entry is not None:
            rows.append(summarize(entry, access.structure_of(txn, entry)))
    return rows


def _page_number(request: web.Request) -> int:
    text = request.query.get("page", "1")
    return int(text) if text.isdigit() and 0 < len(text) < 7 and int(text) > 0 else 1


def _pages(total: int) -> int:
    return max(1, -(-total // PAGE_SIZE))


# -- lists -------------------------------------------------------------------------


async def inbox(request: web.Request) -> web.Response:
    who = access.reader(request)
    found = context(request).store.read(lambda txn: txn.mailbox(who.account.id, "INBOX"))
    if found is None:
        raise web.HTTPNotFound(text="This account has no INBOX.")
    raise redirect(f"/mail/{found.id}")


async def mailbox_page(request: web.Request) -> web.Response:
    who = access.reader(request)
    wanted = access.mailbox_id(request.match_info["mailbox"])
    page = _page_number(request)
    mail = state(request)
    with context(request).store.reader(buffers=True) as txn:
        mailbox = access.own_mailbox(txn, who.account, wanted)
        folders = _folders(txn, mail, who)
        listing = mail.listings.get(txn, mailbox)
        page = min(page, _pages(len(listing.uids)))
        rows = _summaries(txn, mailbox.id, listing.page(page, PAGE_SIZE))
    return _list(request, folders, mailbox, rows, page, len(listing.uids), None)


@dataclass(frozen=True, slots=True)
class Searched:
    query: str
    field: str  # a key of search.FIELDS
    complete: bool


def _list(
    request: web.Request,
    folders: list[Folder],
    mailbox: Mailbox,
    rows: list[Summary],
    page: int,
    total: int,
    searched: Searched | None,
) -> web.Response:
    current = next(f for f in folders if f.id == mailbox.id)

    def page_url(number: int) -> str:
        if searched is None:
            return f"{current.url}?page={number}"
        wanted = {"q": searched.query, "in": searched.field, "mailbox": mailbox.id}
        return f"/mail/search?{urlencode({**wanted, 'page': number})}"

    return render(
        request,
        "mail/mailbox.html",
        folders=folders,
        mailbox=current,
        rows=rows,
        page=page,
        pages=_pages(total),
        total=total,
        page_url=page_url,
        search=searched,
        fields=[(value, label) for value, (label, _) in search.FIELDS.items()],
        targets=[f for f in folders if f.id != mailbox.id],
        back=request.path_qs,
        **_SHOWN,
    )


async def search_page(request: web.Request) -> web.Response:
    who = access.reader(request)
    query = " ".join(request.query.get("q", "").split())[: search.MAX_QUERY]
    field = request.query.get("in", "all")
    if field not in search.FIELDS:
        field = "all"
    page = _page_number(request)
    mail, store = state(request), context(request).store

    def where(txn: Transaction) -> tuple[Mailbox, list[Folder], list[int]]:
        if "mailbox" in request.query:
            mailbox = access.own_mailbox(
                txn, who.account, access.mailbox_id(request.query["mailbox"])
            )
        else:
            mailbox = txn.mailbox(who.account.id, "INBOX")
            if mailbox is None:
                raise web.HTTPNotFound(text=NOT_FOUND)
        return mailbox, _folders(txn, mail, who), list(mail.listings.get(txn, mailbox).uids)

    mailbox, folders, uids = store.read(where)
    if not query:
        raise redirect(f"/mail/{mailbox.id}")
    found = await asyncio.get_running_loop().run_in_executor(
        None, search.search, store, mailbox.id, uids, field, query
    )
    # A search reads every body once: let the map's pages go, as a long FETCH does.
    store.streamed(found.octets, done=True)
    page = min(page, _pages(len(found.uids)))
    shown = found.uids[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    with store.reader(buffers=True) as txn:
        rows = _summaries(txn, mailbox.id, shown)
    searched = Searched(query, field, found.complete)
    return _list(request, folders, mailbox, rows, page, len(found.uids), searched)


# -- one message -------------------------------------------------------------------


def _body_url(mailbox_id: int, uid: int, remote: bool) -> str:
    return f"/mail/{mailbox_id}/{uid}/body" + ("?remote=1" if remote else "")


def _sender_address(view_sender: list[Person]) -> str:
    return view_sender[0].address if view_sender else ""


async def message_page(request: web.Request) -> web.Response:
    who = access.reader(request)
    wanted = access.mailbox_id(request.match_info["mailbox"])
    uid = access.uid(request.match_info["uid"])
    ctx, mail = context(request), state(request)
    with ctx.store.reader(buffers=True) as txn:
        entry = access.own_message(txn, who.account, wanted, uid)
        view = _message_view(txn, entry)
        folders = _folders(txn, mail, who)
    if not any(flag.lower() == "\\seen" for flag in entry.flags):
        # Reading marks it seen (RFC 9051 2.3.2), as a FETCH of its body would.
        await ctx.store.submit(lambda txn: txn.store_flags(wanted, [uid], ["\\Seen"], "add"))
        folders = _with_one_less_unseen(folders, wanted)
    sender = _sender_address(view.sender)
    remote = request.query.get("remote") == "1" or (
        bool(sender) and mail.trusts(who.session.id, sender)
    )
    current = next(f for f in folders if f.id == wanted)
    page = render(
        request,
        "mail/message.html",
        folders=folders,
        mailbox=current,
        message=view,
        body_url=_body_url(wanted, uid, remote),
        remote=remote,
        sender_address=sender,
        reference=f"{wanted}:{uid}",
        targets=[f for f in folders if f.id != wanted],
        list_url=current.url,
        **_SHOWN,
    )
    page.headers["Content-Security-Policy"] = _framing_policy()
    return page


def _framing_policy() -> str:
    """The pages' policy, plus frames of this box: the body's sandboxed frame."""
    # Imported here: app.py imports this module to add its routes.
    from appliance.web.app import CONTENT_SECURITY_POLICY

    return f"{CONTENT_SECURITY_POLICY}; frame-src 'self'"


def _with_one_less_unseen(folders: list[Folder], mailbox_id: int) -> list[Folder]:
    return [
        Folder(f.id, f.name, f.label, f.special_use, max(0, f.unseen - 1), f.total)
        if f.id == mailbox_id
        else f
        for f in folders
    ]


def _message_view(txn: Transaction, entry: MessageEntry) -> MessageView:
    message = txn.blob(entry.blob_id) or b""
    structure = access.structure_of(txn, entry)
    envelope = structure.root.envelope
    parts = layout(structure.root)
    texts: list[Markup] = []
    remote_asked = False
    for _, part in parts.bodies:
        text, more = part_text(message, part, MAX_BODY_TEXT)
        if part.subtype.lower() == "html":
            remote_asked = remote_asked or may_load_remote(text)
        else:
            texts.append(linkify(text + (CUT_SHORT if more else "")))
    return MessageView(
        uid=entry.uid,
        subject=subject_of(envelope) or "(no subject)",
        sender=people(envelope.from_ if envelope else ()),
        to=people(envelope.to if envelope else ()),
        cc=people(envelope.cc if envelope else ()),
        reply_to=people(envelope.reply_to if envelope else ()),
        date=date_of(envelope) or when(entry.internal_date),
        flagged=any(flag.lower() == "\\flagged" for flag in entry.flags),
        attachments=parts.attachments,
        texts=[] if parts.has_html else texts,
        framed=parts.has_html,
        remote_asked=remote_asked,
    )


async def body(request: web.Request) -> web.Response:
    """The message's body as a sanitized document for the sandboxed frame."""
    who = access.reader(request)
    wanted = access.mailbox_id(request.match_info["mailbox"])
    uid = access.uid(request.match_info["uid"])
    store = context(request).store
    with store.reader(buffers=True) as txn:
        entry = access.own_message(txn, who.account, wanted, uid)
        envelope = access.structure_of(txn, entry).root.envelope
    sender = _sender_address(people(envelope.from_ if envelope else ()))
    remote = request.query.get("remote") == "1" or (
        bool(sender) and state(request).trusts(who.session.id, sender)
    )
    # Sanitizing a large newsletter takes tens of milliseconds: on a thread,
    # so that the loop's other sessions do not wait for it.
    document = await asyncio.get_running_loop().run_in_executor(
        None, _sanitized, store, entry, remote
    )
    if document is None:
        raise web.HTTPNotFound(text=NOT_FOUND)
    response = web.Response(text=document, content_type="text/html", charset="utf-8")
    # Its own policy, in place of the pages' (which forbids framing): see sanitize.py.
    response.headers["Content-Security-Policy"] = policy(remote)
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "no-store"
    return response


def _sanitized(store: Store, entry: MessageEntry, remote: bool) -> str | None:
    """The body document, read in a transaction of this thread's own; None
    when the message went meanwhile."""
    with store.reader(buffers=True) as txn:
        message = txn.blob(entry.blob_id)
        if message is None:
            return None
        structure = access.structure_of(txn, entry)
        return body_document(message, structure, layout(structure.root), remote)


async def trust_sender(request: web.Request) -> web.Response:
    """Remote content of this message's sender is shown for the rest of the session."""
    who = access.reader(request)
    wanted = access.mailbox_id(request.match_info["mailbox"])
    uid = access.uid(request.match_info["uid"])
    with context(request).store.reader(buffers=True) as txn:
        entry = access.own_message(txn, who.account, wanted, uid)
        envelope = access.structure_of(txn, entry).root.envelope
    sender = _sender_address(people(envelope.from_ if envelope else ()))
    if sender:
        state(request).trust(who.session.id, sender)
        notice(request, f"Remote content from {sender} is shown until you log out.")
    raise redirect(f"/mail/{wanted}/{uid}")


async def part(request: web.Request) -> web.Response:
    """One attachment, always as a download (never shown as a page of this box)."""
    who = access.reader(request)
    wanted = access.mailbox_id(request.match_info["mailbox"])
    uid = access.uid(request.match_info["uid"])
    number = request.match_info["part"]
    with context(request).store.reader(buffers=True) as txn:
        entry = access.own_message(txn, who.account, wanted, uid)
        structure = access.structure_of(txn, entry)
        found = next((p for n, p in leaves(structure.root) if n == number), None)
        if found is None:
            raise web.HTTPNotFound(text=NOT_FOUND)
        found = attachment(found, number)
        octets = part_octets(txn.blob(entry.blob_id) or b"", structure, number)
    content_type = found.content_type if found.content_type in _DOWNLOAD_TYPES else None
    response = web.Response(body=octets, content_type=content_type or "application/octet-stream")
    response.headers["Content-Disposition"] = _attachment_disposition(found.filename)
    response.headers["Content-Security-Policy"] = _DOWNLOAD_POLICY
    response.headers["Cache-Control"] = "no-store"
    return response


def _attachment_disposition(name: str) -> str:
    """RFC 6266 4.3: an ASCII fallback name, and the real one in RFC 8187's
    encoding for every browser of this decade."""
    fallback = name.encode("ascii", "replace").decode("ascii").replace("?", "_")
    fallback = fallback.replace("\\", "_").replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


async def raw(request: web.Request) -> web.StreamResponse:
    """The message as it was received ("show original"), as plain text."""
    who = access.reader(request)
    wanted = access.mailbox_id(request.match_info["mailbox"])
    uid = access.uid(request.match_info["uid"])
    store = context(request).store
    with store.reader(buffers=True) as txn:
        entry = access.own_message(txn, who.account, wanted, uid)
        size = len(txn.blob(entry.blob_id) or b"")
    response = web.StreamResponse(
        headers={
            "Content-Security-Policy": _DOWNLOAD_POLICY,
            "Cache-Control": "no-store",
            "Content-Disposition": "inline",
        }
    )
    response.content_type = "text/plain"
    response.charset = "utf-8"
    response.content_length = len(entry.head) + size
    await response.prepare(request)
    await response.write(entry.head)
    for start in range(0, size, RAW_CHUNK):
        with store.reader(buffers=True) as txn:
            blob = txn.blob(entry.blob_id)
            if blob is None:  # expunged meanwhile: the length said is not met
                break
            chunk = bytes(blob[start : start + RAW_CHUNK])
        await response.write(chunk)
        store.streamed(len(chunk))  # the map's pages read are let go, as IMAP does
    store.streamed(0, done=True)
    await response.write_eof()
    return response


# -- acting ------------------------------------------------------------------------


def _back(form, default: str) -> str:
    """Where to go after an action: a webmail page the form names, else `default`."""
    back = form.get("back")
    if isinstance(back, str) and _LOCAL_MAIL_PATH.fullmatch(back):
        return back
    return default


async def act(request: web.Request) -> web.Response:
    """Flag, unflag, mark read or unread, move or delete the selected messages."""
    who = access.reader(request)
    wanted = access.mailbox_id(request.match_info["mailbox"])
    form = await request.post()
    back = _back(form, f"/mail/{wanted}")
    uids = sorted({access.uid(value) for value in form.getall("uid", []) if isinstance(value, str)})
    action = form.get("action")
    with context(request).store.reader() as txn:
        mailbox = access.own_mailbox(txn, who.account, wanted)
    if not uids:
        notice(request, "Select one or more messages first.")
        raise redirect(back)
    if action in _ACTIONS:
        flag, mode, done = _ACTIONS[action]
        await context(request).store.submit(
            lambda txn: txn.store_flags(mailbox.id, uids, [flag], mode)
        )
        notice(request, done)
    elif action == "move":
        target = access.mailbox_id(str(form.get("target", "")))
        await _move(request, who, mailbox, uids, target)
    elif action == "delete":
        await _delete(request, who, mailbox, uids)
    else:
        raise web.HTTPBadRequest(text="Unknown action.")
    raise redirect(back)


async def _move(
    request: web.Request, who: Reader, source: Mailbox, uids: list[int], target_id: int
) -> None:
    def move(txn: Transaction) -> int:
        target = access.own_mailbox(txn, who.account, target_id)
        if source.special_use == "\\Junk" and target.special_use not in ("\\Junk", "\\Trash"):
            # Out of Junk by hand: its senders are not junk (as over IMAP).
            senders = []
            for uid in uids:
                entry = txn.message(source.id, uid)
                if entry is not None:
                    envelope = access.structure_of(txn, entry).root.envelope
                    senders += author_addresses(envelope)
            txn.remember_not_junk(who.account.id, senders)
        return len(txn.move_messages(source.id, uids, target))

    try:
        moved = await context(request).store.submit(move)
    except NotFound:
        raise web.HTTPNotFound(text=NOT_FOUND) from None
    notice(request, f"Moved {moved} message{'s' if moved != 1 else ''}.")


async def _delete(request: web.Request, who: Reader, source: Mailbox, uids: list[int]) -> None:
    """To Trash; in Trash (or with no Trash), for good."""

    def delete(txn: Transaction) -> tuple[str, int]:
        trash = access.special(txn, who.account, "\\Trash")
        if trash is None or trash.id == source.id:
            return "deleted", len(txn.expunge(source.id, uids))
        return "trashed", len(txn.move_messages(source.id, uids, trash))

    how, count = await context(request).store.submit(delete)
    plural = "s" if count != 1 else ""
    if how == "deleted":
        audit(request, "mail.delete", mailbox=str(source.id), count=str(count))
        notice(request, f"Deleted {count} message{plural} for good.")
    else:
        notice(request, f"Moved {count} message{plural} to Trash.")
