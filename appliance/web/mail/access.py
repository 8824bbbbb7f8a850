"""Who is reading, and which of the store's mailboxes and messages are theirs.

Every mailbox id and UID in a URL is a guess until it is resolved here
through the logged-in account: a mailbox of another account, and a message
that is not there, are both 404, so a guess learns nothing (never 403).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from appliance.message.structure import Structure, load_structure
from appliance.store import Account, Mailbox, MessageEntry, Transaction
from appliance.web.auth import WebSession
from appliance.web.pages import context, redirect, require_login

NOT_FOUND = "No such message or mailbox."
# Mailbox ids are the store's 64-bit keys, UIDs 32-bit (RFC 9051 2.3.1.1).
_MAX_MAILBOX_ID = (1 << 64) - 1
_MAX_UID = (1 << 32) - 1

# The order mailboxes are listed in: INBOX, then the special-use ones
# (RFC 6154) in the order people look at them, then the rest by name.
_SPECIAL_ORDER = {"\\Drafts": 1, "\\Sent": 2, "\\Archive": 3, "\\Junk": 4, "\\Trash": 5}
_LABELS = {"INBOX": "Inbox"}


@dataclass(frozen=True, slots=True)
class Reader:
    session: WebSession
    account: Account


def reader(request: web.Request) -> Reader:
    """The logged-in person and their account; to the login page otherwise."""
    current = require_login(request)
    account = context(request).store.read(lambda txn: txn.account(current.address))
    if account is None:  # removed while logged in
        raise redirect("/login")
    return Reader(current, account)


def number(text: str | None, largest: int) -> int:
    """A mailbox id or UID from a URL or form; 404 when it cannot be one."""
    if text is None or not text.isdigit() or len(text) > 20:
        raise web.HTTPNotFound(text=NOT_FOUND)
    value = int(text)
    if not 0 < value <= largest:
        raise web.HTTPNotFound(text=NOT_FOUND)
    return value


def mailbox_id(text: str | None) -> int:
    return number(text, _MAX_MAILBOX_ID)


def uid(text: str | None) -> int:
    return number(text, _MAX_UID)


def own_mailbox(txn: Transaction, account: Account, wanted: int) -> Mailbox:
    mailbox = txn.mailbox_by_id(wanted)
    if mailbox is None or mailbox.account_id != account.id:
        raise web.HTTPNotFound(text=NOT_FOUND)
    return mailbox


def own_message(txn: Transaction, account: Account, wanted: int, uid: int) -> MessageEntry:
    mailbox = own_mailbox(txn, account, wanted)
    entry = txn.message(mailbox.id, uid)
    if entry is None:
        raise web.HTTPNotFound(text=NOT_FOUND)
    return entry


def structure_of(txn: Transaction, entry: MessageEntry) -> Structure:
    """The structure stored at delivery. Read in a reader with buffers: the
    body is then a view into the map, parsed only if there is no record."""
    return load_structure(txn.blob_info(entry.blob_id), txn.blob(entry.blob_id) or b"")


def sorted_mailboxes(mailboxes: list[Mailbox]) -> list[Mailbox]:
    def key(mailbox: Mailbox) -> tuple[int, str]:
        if mailbox.name == "INBOX":
            return 0, ""
        return _SPECIAL_ORDER.get(mailbox.special_use or "", 9), mailbox.name.casefold()

    return sorted(mailboxes, key=key)


def label(mailbox: Mailbox) -> str:
    return _LABELS.get(mailbox.name, mailbox.name)


def special(txn: Transaction, account: Account, use: str) -> Mailbox | None:
    """The account's mailbox with that special use (RFC 6154), if it has one."""
    return next((m for m in txn.mailboxes(account.id) if m.special_use == use), None)
