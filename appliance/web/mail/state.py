"""What webmail keeps in memory between requests: one MailState per application.

Nothing here is the user's data; all of it can be lost in a restart. Each
collection is bounded, least recently used first out.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from appliance.store import Mailbox, Transaction
from appliance.web.auth import MAX_SESSIONS

# Mailboxes whose UID list is kept: a few per person using webmail at once.
# A 10,000-message mailbox costs 40 KB here.
MAX_LISTINGS = 256
# Senders one session may trust to show remote content: more than anyone
# clicks "always for this sender" in one sitting.
MAX_TRUSTED_PER_SESSION = 1000


@dataclass(frozen=True, slots=True)
class Listing:
    """A mailbox's UIDs in ascending order and how many are unread, as of a modseq."""

    modseq: int
    uids: array
    unseen: int

    def page(self, number: int, size: int) -> list[int]:
        """The UIDs of page `number` (1 is the newest), newest first."""
        end = len(self.uids) - (number - 1) * size
        return list(reversed(self.uids[max(0, end - size) : max(0, end)]))


class Listings:
    """Each mailbox's Listing, read again only when its HIGHESTMODSEQ moved.

    Every change to a mailbox (a message added, a flag set, an expunge)
    raises its HIGHESTMODSEQ (RFC 7162), so an unchanged one proves the
    cached listing true; reading the states of 10,000 messages takes tens of
    milliseconds, which a page view should not pay each time.
    """

    def __init__(self, size: int = MAX_LISTINGS) -> None:
        self._size = size
        self._cached: OrderedDict[int, Listing] = OrderedDict()

    def get(self, txn: Transaction, mailbox: Mailbox) -> Listing:
        cached = self._cached.get(mailbox.id)
        if cached is not None and cached.modseq == mailbox.highestmodseq:
            self._cached.move_to_end(mailbox.id)
            return cached
        listing = read_listing(txn, mailbox)
        self.offer(mailbox.id, listing)
        return listing

    def offer(self, mailbox_id: int, listing: Listing) -> None:
        """Keeps a listing read elsewhere (at start), unless a newer one is kept."""
        cached = self._cached.get(mailbox_id)
        if cached is not None and cached.modseq > listing.modseq:
            return
        self._cached[mailbox_id] = listing
        self._cached.move_to_end(mailbox_id)
        while len(self._cached) > self._size:
            self._cached.popitem(last=False)

    @property
    def room(self) -> int:
        return self._size


def read_listing(txn: Transaction, mailbox: Mailbox) -> Listing:
    """The mailbox's listing as the transaction sees it."""
    states = txn.message_states(mailbox.id)
    unseen = sum(1 for s in states if not _seen(s.flags))
    return Listing(mailbox.highestmodseq, array("I", [s.uid for s in states]), unseen)


def _seen(flags: tuple[str, ...]) -> bool:
    """System flags are case-insensitive (RFC 9051 2.3.2); the store keeps
    them as IMAP writes them ("\\Seen"), so that is looked for first."""
    return "\\Seen" in flags or (bool(flags) and any(f.lower() == "\\seen" for f in flags))


class PerSession:
    """A value per web session id, for at most as many sessions as there can be."""

    def __init__(self, size: int = MAX_SESSIONS) -> None:
        self._size = size
        self._values: OrderedDict[str, object] = OrderedDict()

    def get(self, session_id: str, default=None):
        value = self._values.get(session_id, default)
        if session_id in self._values:
            self._values.move_to_end(session_id)
        return value

    def put(self, session_id: str, value: object) -> None:
        self._values[session_id] = value
        self._values.move_to_end(session_id)
        while len(self._values) > self._size:
            self._values.popitem(last=False)


@dataclass
class MailState:
    listings: Listings = field(default_factory=Listings)
    # Senders whose remote content a session shows without asking again.
    trusted: PerSession = field(default_factory=PerSession)
    # When a session last asked for a mail page (not the event stream).
    activity: PerSession = field(default_factory=PerSession)
    # Event streams open now, ended all at once when the service stops.
    streams: set[asyncio.Event] = field(default_factory=set)
    # The INBOX listings being read when the service starts.
    warming: asyncio.Task | None = None
    stopping: bool = False

    def trust(self, session_id: str, sender: str) -> None:
        senders = self.trusted.get(session_id) or set()
        if len(senders) < MAX_TRUSTED_PER_SESSION:
            senders.add(sender.lower())
        self.trusted.put(session_id, senders)

    def trusts(self, session_id: str, sender: str) -> bool:
        return sender.lower() in (self.trusted.get(session_id) or ())

    def active(self, session_id: str) -> None:
        self.activity.put(session_id, time.monotonic())

    def stop(self) -> None:
        self.stopping = True
        if self.warming is not None:
            self.warming.cancel()
        for wake in self.streams:
            wake.set()


STATE = web.AppKey("mail_state", MailState)


def state(request: web.Request) -> MailState:
    return request.app[STATE]
