"""What every protocol session shares: an asyncio Protocol driving a sans-IO core.

The transport's callbacks only queue bytes and wake the session's task; the
task feeds them to its protocol core, answers the core's events (awaiting the
store where needed) and writes the replies. Reading pauses when the task falls
behind, writing waits when the peer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# Input waiting for the session task; past this, reading pauses until the
# task catches up (each core bounds what it holds itself).
MAX_PENDING_INPUT = 256 * 1024


@dataclass(slots=True)
class ConnectionCounter:
    """Open sessions of one protocol, in total and per client address."""

    total: int = 0
    per_client: Counter = field(default_factory=Counter)

    def admit(self, client: str, max_total: int, max_per_client: int) -> bool:
        if self.total >= max_total or self.per_client[client] >= max_per_client:
            return False
        self.total += 1
        self.per_client[client] += 1
        return True

    def release(self, client: str) -> None:
        self.total -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


@dataclass(slots=True)
class Listener:
    """The sessions of one listening socket: counted, and stopped together."""

    name: str
    implicit_tls: bool
    loopback: bool
    counter: ConnectionCounter
    sessions: set[Session] = field(default_factory=set)


class MailboxWatch:
    """Sessions waiting to hear that a mailbox changed (IMAP IDLE).

    The store reports the mailboxes each group commit touched; every session
    watching one of them is poked, and reads the mailbox again itself.
    """

    def __init__(self) -> None:
        self._watchers: dict[int, set[Session]] = {}

    def watch(self, mailbox_id: int, session: Session) -> None:
        self._watchers.setdefault(mailbox_id, set()).add(session)

    def unwatch(self, mailbox_id: int, session: Session) -> None:
        watchers = self._watchers.get(mailbox_id)
        if watchers is not None:
            watchers.discard(session)
            if not watchers:
                del self._watchers[mailbox_id]

    def changed(self, mailbox_ids: frozenset[int]) -> None:
        for mailbox_id in mailbox_ids:
            for session in tuple(self._watchers.get(mailbox_id, ())):
                session.poke()


class Session(asyncio.Protocol):
    """Base of SMTP, POP3 and IMAP sessions; subclasses write `serve()`."""

    def __init__(self, listener: Listener, context: Callable[[], Any]):
        self.listener = listener
        # The service's shared state for this protocol as it is now; a reload
        # (SIGHUP) makes a new one for later sessions, this one keeps its own.
        self._context = context()
        self.transport: asyncio.Transport | None = None
        self.client = "unknown"
        self.tls_active = listener.implicit_tls
        self.stopping = False
        self.busy = False  # in the middle of something SIGTERM lets finish
        self.poked = False  # see poke()
        self._input: list[bytes] = []
        self._input_size = 0
        self._eof = False
        self._waiter: asyncio.Future | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._task: asyncio.Task | None = None

    # -- transport callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.connected_at = time.monotonic()
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if peer else "unknown"
        self.listener.sessions.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self._input.append(data)
        self._input_size += len(data)
        if self._input_size > MAX_PENDING_INPUT:
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._writable.set()
        self._wake()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # -- for the service ---------------------------------------------------------------

    def poke(self) -> None:
        """Something this session watches changed: wake it even without input."""
        self.poked = True
        self._wake()

    def stop(self) -> None:
        """SIGTERM: the session ends as soon as it is not busy."""
        self.stopping = True
        self._wake()

    async def wait_closed(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    def abort(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # -- for subclasses ----------------------------------------------------------------

    async def serve(self, admitted: bool) -> None:
        """The session; when not admitted, it refuses the client and returns."""
        raise NotImplementedError

    def admit(self) -> bool:
        """Take a connection slot; False when the listener is full."""
        settings = self._context.settings
        return self.listener.counter.admit(
            self.client, settings.max_connections, settings.max_connections_per_client
        )

    def core_options(self) -> dict[str, Any]:
        """What a POP3 or IMAP core is built with: identity, limits, TLS and login rules."""
        ctx = self._context
        return {
            "hostname": ctx.hostname,
            "limits": ctx.settings.limits,
            "tls_available": ctx.tls is not None,
            "tls_active": self.tls_active,
            "login_allowed": self.plaintext_login_allowed(),
        }

    def plaintext_login_allowed(self) -> bool:
        """RFC 8314, RFC 9051 6.2.3, RFC 2595 3.1: passwords only over TLS, except
        on a loopback listener, where the connection cannot leave the machine."""
        return self.tls_active or (
            self.listener.loopback and self._context.settings.plaintext_login_on_loopback
        )

    async def _run(self) -> None:
        admitted = False
        try:
            admitted = self.admit()
            await self.serve(admitted)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("session failed listener=%s client=%s", self.listener.name, self.client)
        finally:
            if admitted:
                self.listener.counter.release(self.client)
            self.listener.sessions.discard(self)
            if self.transport is not None:
                self.transport.close()

    def input_deadline(self, last_activity: float, logged_in: bool) -> float:
        """When waiting for the client's next bytes ends: its idle timeout, and
        before login also the login timeout counted from connect."""
        settings = self._context.settings
        deadline = last_activity + settings.idle_timeout
        if not logged_in:
            deadline = min(deadline, self.connected_at + settings.login_timeout)
        return deadline

    async def wait_input(self, deadline: float) -> bool:
        """Wait for input, EOF or a stop; False when the deadline passed first."""
        if self._input or self._eof or self.poked or (self.stopping and not self.busy):
            return True
        # A future and a timer rather than wait_for(): this runs once per
        # command, and wait_for() makes a task each time.
        loop = asyncio.get_running_loop()
        self._waiter = waiter = loop.create_future()
        timer = loop.call_later(max(0.0, deadline - time.monotonic()), _settle, waiter, False)
        try:
            return await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _wake(self) -> None:
        if self._waiter is not None:
            _settle(self._waiter, True)

    @property
    def has_input(self) -> bool:
        return bool(self._input) or self._eof

    def take_input(self) -> list[bytes]:
        """What arrived since the last call; [b""] once the peer has closed."""
        chunks, self._input, self._input_size = self._input, [], 0
        self.transport.resume_reading()
        if self._eof and not chunks:
            return [b""]
        return chunks

    def acknowledge_now(self) -> None:
        """Acknowledge what arrived at once rather than after the delayed-ACK
        timer (up to 40 ms): a client in the middle of a command may hold its
        next bytes back until then (Nagle), waiting for nothing."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None and hasattr(socket, "TCP_QUICKACK"):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    async def write(self, data: bytes | memoryview) -> None:
        if data and not self.transport.is_closing():
            self.transport.write(data)
            await self._writable.wait()

    async def start_tls(self, context: ssl.SSLContext) -> bool:
        """Upgrade the connection after the core said yes to STARTTLS/STLS."""
        # CVE-2011-0411: what the client sent before the handshake is dropped,
        # never read as if it had come over TLS.
        self._input, self._input_size = [], 0
        loop = asyncio.get_running_loop()
        try:
            self.transport = await loop.start_tls(self.transport, self, context, server_side=True)
        except (OSError, ssl.SSLError, ConnectionError) as error:
            log.info(
                "tls handshake failed listener=%s client=%s error=%s",
                self.listener.name,
                self.client,
                error,
            )
            self._eof = True
            return False
        self.tls_active = True
        return True


def _settle(waiter: asyncio.Future, value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)
