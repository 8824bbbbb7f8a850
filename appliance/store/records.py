"""The values the store hands out: plain, immutable, free of LMDB and msgpack."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

# RFC 6154 special-use attributes of the mailboxes every account starts with.
DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    ("INBOX", None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)


@dataclass(frozen=True, slots=True)
class Domain:
    name: str
    created: float


@dataclass(frozen=True, slots=True)
class Account:
    address: str
    id: int
    password_hash: str
    created: float
    admin: bool = False  # may use the admin pages


@dataclass(frozen=True, slots=True)
class Alias:
    """One address (or "@domain" for a catch-all) that stands for several targets.

    A target is a local address (an account or another alias) or an external
    address that mail is forwarded to.
    """

    source: str
    targets: tuple[str, ...]
    created: float


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    name: str
    special_use: str | None
    uidvalidity: int
    uidnext: int
    highestmodseq: int
    messages: int
    subscribed: bool


class MessageState(NamedTuple):
    """What a client keeps of each message of an open mailbox."""

    uid: int
    flags: tuple[str, ...]
    modseq: int


@dataclass(frozen=True, slots=True)
class MessageEntry:
    """A message in a mailbox: the shared body blob plus this copy's own state.

    `head` holds the trace fields added at delivery for this recipient
    (Return-Path, Received); the message a client sees is head + blob.
    """

    mailbox_id: int
    uid: int
    blob_id: int
    head: bytes
    flags: tuple[str, ...]
    internal_date: float
    modseq: int
    size: int


@dataclass(frozen=True, slots=True)
class FlagUpdate:
    """What a flag change did: entries changed, and UIDs refused by UNCHANGEDSINCE."""

    changed: tuple[MessageEntry, ...]
    refused: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A message waiting to leave the box for the recipients of one domain."""

    id: int
    blob_id: int
    head: bytes  # trace fields put in front of the body when it is sent
    sender: str  # "" for the null reverse-path (bounces)
    recipients: tuple[str, ...]  # those not yet delivered nor bounced
    created: float
    attempts: int
    next_attempt: float
    last_error: str = ""  # what the last attempt was told, for `queue list` and bounces


@dataclass(frozen=True, slots=True)
class Delivery:
    """What one synced commit of an incoming message stored."""

    blob_id: int
    entries: tuple[MessageEntry, ...]
    queued: tuple[QueuedMessage, ...]  # one entry per destination domain
    missing: tuple[str, ...]  # accounts that vanished between RCPT and commit
