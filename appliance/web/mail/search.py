"""Searching a mailbox as IMAP SEARCH does, with the same code (appliance.message.text).

"From" is SEARCH FROM, "To" is TO or CC, "Subject" is SUBJECT, "Text" is
BODY, and "All" is any of them: what a mail client finds over IMAP is what
the page finds. The work runs on a thread of the service's executor, in short
read transactions of a batch of messages each, newest first, and stops at a
time limit, so one search of a large mailbox neither holds the event loop
nor an LMDB snapshot for long.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from appliance.message import text
from appliance.message.structure import Structure
from appliance.store import Store
from appliance.web.mail.access import structure_of

# Messages read per read transaction (IMAP FETCH and SEARCH use batches too).
BATCH = 200
# Seconds one search may take; then the results found so far are shown,
# marked incomplete. A body search of 10,000 ordinary messages takes about one.
TIME_LIMIT = 10.0
# Characters of a search string; more is no longer a search.
MAX_QUERY = 200
# Matches kept: more pages than anyone reads.
MAX_RESULTS = 5000

Matcher = Callable[[memoryview, Structure, str], bool]


def _header(name: str) -> Matcher:
    return lambda body, structure, needle: text.header_contains(body, structure, name, needle)


def _any(*matchers: Matcher) -> Matcher:
    return lambda body, structure, needle: any(m(body, structure, needle) for m in matchers)


_FROM = _header("From")
_TO = _any(_header("To"), _header("Cc"))
_SUBJECT = _header("Subject")
# What the form offers: its value, the label people read, how a message matches.
FIELDS: dict[str, tuple[str, Matcher]] = {
    "all": ("Everything", _any(_FROM, _TO, _SUBJECT, text.body_contains)),
    "from": ("From", _FROM),
    "to": ("To or Cc", _TO),
    "subject": ("Subject", _SUBJECT),
    "body": ("Text", text.body_contains),
}


@dataclass(frozen=True, slots=True)
class Found:
    uids: list[int]  # newest first
    complete: bool  # False when the time limit or MAX_RESULTS stopped it
    octets: int  # of message bodies read


def search(store: Store, mailbox_id: int, uids: Sequence[int], field: str, query: str) -> Found:
    """The UIDs (from `uids`, newest first) whose `field` holds `query`."""
    matcher = FIELDS[field][1]
    needle = text.search_key(query)
    deadline = time.monotonic() + TIME_LIMIT
    found: list[int] = []
    octets = 0
    newest_first = list(reversed(uids))
    for start in range(0, len(newest_first), BATCH):
        with store.reader(buffers=True) as txn:
            for uid in newest_first[start : start + BATCH]:
                entry = txn.message(mailbox_id, uid)
                if entry is None:
                    continue
                body = memoryview(txn.blob(entry.blob_id) or b"")
                octets += len(body)
                if matcher(body, structure_of(txn, entry), needle):
                    found.append(uid)
        if len(found) >= MAX_RESULTS or time.monotonic() > deadline:
            return Found(found[:MAX_RESULTS], False, octets)
    return Found(found, True, octets)
