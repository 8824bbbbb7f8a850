"""Giving up on recipients: the delivery status notification, filed in the
same transaction that takes them off the queue, so that a crash can neither
lose the bounce nor send it twice.

The notification goes where mail to the sender would go: into a local
account's INBOX (or through its aliases), or back onto the queue, from the
null reverse-path (RFC 5321 6.1), for a sender elsewhere.
"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from datetime import UTC, datetime

from appliance.delivery.dsn import RecipientFailure, make_bounce, return_address, should_bounce
from appliance.delivery.local import Refused, resolve
from appliance.message import structure
from appliance.store import NotFound, QueuedMessage, Transaction


def notify_sender(
    txn: Transaction,
    item: QueuedMessage,
    failures: Sequence[RecipientFailure],
    reporting_mta: str,
    now: float,
    delimiter: str = "+",
) -> None:
    """File the notification about the failed recipients of a queue entry
    (never to the null sender: a bounce is not bounced). The caller takes
    those recipients off the queue in the same transaction."""
    if not failures or not should_bounce(item.sender):
        return
    body = txn.blob(item.blob_id) or b""
    notice = make_bounce(
        bytes(item.head) + bytes(body),
        reporting_mta,
        item.sender,
        failures,
        arrival_date=datetime.fromtimestamp(item.created, UTC),
        now=datetime.fromtimestamp(now, UTC),
    )
    _file_notice(txn, notice, return_address(item.sender), reporting_mta, now, delimiter)


def bounce_now(txn: Transaction, queue_id: int, reporting_mta: str, now: float) -> QueuedMessage:
    """The postmaster gives up on a queue entry: its sender is told, and it
    leaves the queue, in this one transaction."""
    item = txn.queued_message(queue_id)
    if item is None:
        raise NotFound(f"no queued message {queue_id}")
    failures = [
        RecipientFailure(r, "failed", "5.0.0", diagnostic_code="x-local; bounced by the postmaster")
        for r in item.recipients
    ]
    notify_sender(txn, item, failures, reporting_mta, now)
    return txn.queue_remove(item.id)


def _file_notice(
    txn: Transaction, notice: bytes, to: str, reporting_mta: str, now: float, delimiter: str
) -> None:
    date = email.utils.format_datetime(datetime.fromtimestamp(now, UTC))
    received = f"Received: by {reporting_mta} (delivery status notification); {date}\r\n"
    try:
        route = resolve(txn, to, delimiter)
        accounts, forwards = route.accounts, route.forwards
    except Refused:
        accounts, forwards = (), (to,)  # not one of ours: it leaves like any mail
    head = f"Return-Path: <>\r\n{received}".encode()
    info = structure.analyze(notice).to_record() if accounts else None
    txn.deliver(
        notice,
        [(account, head) for account in accounts],
        "",
        forwards,
        received.encode(),
        info,
    )
