"""New mail in the open list without a reload: server-sent events (HTML Living
Standard 9.2), fed by the change notifications that wake IMAP IDLE.

The store reports the mailboxes each group commit touched to the service's
MailboxWatch; a stream watches every mailbox of its account and, when one
changes, sends one `change` event (a burst of deliveries is one event). The
page's script then fetches the list again. A comment line every KEEPALIVE
seconds finds a closed connection and keeps proxies from timing it out.

A stream is not the person's activity: it never keeps the session alive.
Each check of the session puts its idle clock back where it was, so the
session ends as it would have without the stream, and the stream with it.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from appliance.web.mail.access import reader
from appliance.web.mail.state import state
from appliance.web.pages import context, session

# Seconds between keep-alive comments (and checks that the session lives).
KEEPALIVE = 20.0
# Seconds to wait after a change for the rest of a burst before telling.
COALESCE = 0.3
# Streams open at once for the whole service: each is a connection and a task.
MAX_STREAMS = 200
# What a browser waits before reconnecting a dropped stream, in milliseconds.
RETRY_MS = 5000

_CONTENT_TYPE = "text/event-stream"
_CLOSED = (ConnectionError, RuntimeError)  # aiohttp's errors writing to a closed peer


class _Watcher:
    """Stands in MailboxWatch for a session: poke() wakes the stream."""

    __slots__ = ("wake",)

    def __init__(self, wake: asyncio.Event) -> None:
        self.wake = wake

    def poke(self) -> None:
        self.wake.set()


async def stream(request: web.Request) -> web.StreamResponse:
    who = reader(request)
    ctx, mail = context(request), state(request)
    watch = ctx.watch
    if watch is None or mail.stopping or len(mail.streams) >= MAX_STREAMS:
        # 204 tells EventSource not to reconnect; the page still works by reloading.
        return web.Response(status=204)
    mailbox_ids = [m.id for m in ctx.store.read(lambda txn: txn.mailboxes(who.account.id))]
    wake = asyncio.Event()
    watcher = _Watcher(wake)
    response = web.StreamResponse(headers={"Cache-Control": "no-store"})
    response.content_type = _CONTENT_TYPE
    mail.streams.add(wake)
    for mailbox_id in mailbox_ids:
        watch.watch(mailbox_id, watcher)
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while not mail.stopping and _still_logged_in(request):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), KEEPALIVE)
            if mail.stopping:
                break
            if wake.is_set():
                await asyncio.sleep(COALESCE)
                wake.clear()
                await response.write(b"event: change\ndata: mailbox\n\n")
            else:
                await response.write(b": keep-alive\n\n")
    except _CLOSED:
        pass  # the browser went away
    finally:
        for mailbox_id in mailbox_ids:
            watch.unwatch(mailbox_id, watcher)
        mail.streams.discard(wake)
    return response


def _still_logged_in(request: web.Request) -> bool:
    """Whether the stream's session is still live, without counting the
    check as the person's activity (WebSessions.get() would)."""
    current = session(request)
    before = current.last_seen
    found = context(request).sessions.get(current.id)
    if found is None:
        return False
    found.last_seen = before
    return True
