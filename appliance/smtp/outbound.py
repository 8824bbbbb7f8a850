"""Delivering messages to one host: the SMTP client core on an asyncio connection.

deliver() tries the host's addresses in order until one takes a
connection, sends every message over that one connection (RSET between
them), and returns a result for every recipient of every message. Nothing
raises for the network's sake: a refused, reset or silent connection is a
temporary failure for every recipient that had no answer yet, which is what
the queue runner needs to retry or bounce (RFC 5321 4.5.4.1).

TLS: with an ssl.SSLContext, STARTTLS is used when the host offers it. It
is opportunistic (RFC 7435) unless require_tls: a handshake that fails is
followed by a new connection without TLS, as Postfix's "may" level does,
since mail in clear beats no mail when nothing demands otherwise. With
require_tls (MTA-STS, DANE) a host without working TLS gets nothing.
implicit_tls starts TLS before the greeting (a relay's port 465, RFC 8314).

Content is written in bounded chunks, each waited for (flow control), from
the memoryview or the chunks given, never joined into a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from appliance.smtp.client import (
    ClientConnection,
    ClientLimits,
    Closed,
    Credentials,
    Envelope,
    Event,
    Kind,
    MessageResult,
    Outcome,
    Ready,
    RecipientResult,
    SendBody,
    StartTLS,
    Timeouts,
    has_eight_bit,
)

log = logging.getLogger(__name__)

Chunk = bytes | bytearray | memoryview
# A body: the content itself, or a function giving it in chunks each time it is
# called (a message may be sent more than once, to another address or in a
# second transaction for recipients a host deferred with 452).
Body = Chunk | Callable[[], Iterable[Chunk]]

# The most read from the network at once.
READ_SIZE = 64 * 1024
# Content is handed to the transport in pieces of this size, each drained
# before the next: a 50 MB message never sits in the write buffer whole.
BODY_CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    sender: str  # "" for bounces
    recipients: tuple[str, ...]
    body: Body = field(repr=False)
    size: int | None = None  # None: the length of a bytes body, else not announced
    eight_bit: bool | None = None  # None: looked for in a bytes body, assumed for chunks
    smtputf8: bool = False  # its header fields need SMTPUTF8 (RFC 6531)

    def envelope(self, recipients: tuple[str, ...]) -> Envelope:
        body = self.body
        size, eight_bit = self.size, self.eight_bit
        if not callable(body):
            size = len(body) if size is None else size
            eight_bit = has_eight_bit(body) if eight_bit is None else eight_bit
        return Envelope(self.sender, recipients, size, eight_bit is not False, self.smtputf8)

    def chunks(self) -> Iterator[memoryview]:
        source = self.body() if callable(self.body) else (self.body,)
        for chunk in source:
            view = memoryview(chunk).cast("B")
            for start in range(0, len(view), BODY_CHUNK):
                yield view[start : start + BODY_CHUNK]


@dataclass(frozen=True, slots=True)
class Host:
    """Where to deliver: an MX host, or the relay (smarthost) the owner set up."""

    name: str  # for TLS (SNI and the certificate check) and in results
    addresses: tuple[str, ...]  # IP addresses, tried in order
    port: int = 25
    tls: ssl.SSLContext | None = None  # None: never TLS
    require_tls: bool = False
    implicit_tls: bool = False
    credentials: Credentials | None = None
    # Checked after the STARTTLS handshake (DANE's TLSA match); False ends the
    # attempt on this host.
    check_peer: Callable[[ssl.SSLObject], bool] | None = None


@dataclass(frozen=True, slots=True)
class OutboundSettings:
    helo_name: str  # ours, for EHLO: the appliance's hostname
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: ClientLimits = field(default_factory=ClientLimits)
    # Postfix's smtp_connect_timeout: a host that does not answer a SYN in
    # 30 s is down or filtered, and the next address is worth trying.
    connect_timeout: float = 30.0


@dataclass(slots=True)
class _Job:
    """Recipients of one message still to try (a message, or a part of one after 452)."""

    message: int
    recipients: list[int]


class _Delivery:
    """What is left to send, and what became of each recipient so far."""

    def __init__(self, messages: Sequence[OutboundMessage]):
        self.messages = messages
        self.outcomes: list[list[Outcome | None]] = [[None] * len(m.recipients) for m in messages]
        self.jobs: deque[_Job] = deque(
            _Job(index, list(range(len(m.recipients)))) for index, m in enumerate(messages)
        )

    def envelope(self, job: _Job) -> Envelope:
        message = self.messages[job.message]
        return message.envelope(tuple(message.recipients[i] for i in job.recipients))

    def record(self, job: _Job, result: MessageResult) -> None:
        outcomes = self.outcomes[job.message]
        deferred = []
        for index, recipient in zip(job.recipients, result.results, strict=True):
            outcomes[index] = recipient.outcome
            if _too_many_recipients(recipient.outcome):
                deferred.append(index)
        delivered = any(r.outcome.kind is Kind.DELIVERED for r in result.results)
        if deferred and delivered:
            # RFC 5321 4.5.3.1.10: the host takes this many per transaction;
            # the rest go in the next one. Each round delivers some, so the
            # rounds are at most as many as the recipients.
            self.jobs.appendleft(_Job(job.message, deferred))

    def fail_remaining(self, outcome: Outcome) -> None:
        while self.jobs:
            job = self.jobs.popleft()
            for index in job.recipients:
                self.outcomes[job.message][index] = outcome

    def results(self) -> list[tuple[RecipientResult, ...]]:
        unknown = Outcome(Kind.TEMPORARY, "4.0.0", None, "no result", "", "")  # never expected
        return [
            tuple(
                RecipientResult(recipient, outcome or unknown)
                for recipient, outcome in zip(message.recipients, outcomes, strict=True)
            )
            for message, outcomes in zip(self.messages, self.outcomes, strict=True)
        ]


def _too_many_recipients(outcome: Outcome) -> bool:
    return outcome.reply is not None and outcome.reply.code == 452 and outcome.command == "RCPT TO"


async def deliver(
    host: Host, messages: Sequence[OutboundMessage], settings: OutboundSettings
) -> list[tuple[RecipientResult, ...]]:
    """Send messages to host over one connection; a result per recipient, in order.

    A host without addresses gets no connection: every recipient's result is
    then a temporary failure, as for addresses that all refuse.
    """
    if (host.require_tls or host.implicit_tls) and host.tls is None:
        raise ValueError("TLS required or implicit, but no ssl.SSLContext given")
    if not all(message.recipients for message in messages):
        raise ValueError("a message needs at least one recipient")
    delivery = _Delivery(messages)
    last_failure: Outcome | None = None
    for address in host.addresses:
        if not delivery.jobs:
            break
        attempt = _Attempt(host, address, settings, delivery, use_tls=host.tls is not None)
        await attempt.run()
        if attempt.tls_failed and not host.require_tls and not host.implicit_tls:
            log.info("smtp-out tls-fallback host=%s detail=%r", attempt.remote, attempt.failure)
            attempt = _Attempt(host, address, settings, delivery, use_tls=False)
            await attempt.run()
        if attempt.failure is not None and (last_failure is None or attempt.failure.reply):
            last_failure = attempt.failure  # what a host said tells more than a refused connect
        if attempt.failure is not None and attempt.failure.kind is Kind.PERMANENT:
            break  # the host itself said no; its other addresses are the same host
    if delivery.jobs:
        delivery.fail_remaining(last_failure or _no_connection(host))
    return delivery.results()


def _no_connection(host: Host) -> Outcome:
    # Reached with no address at all (a name that did not resolve just now).
    text = f"no address to connect to for {host.name}"
    return Outcome(Kind.TEMPORARY, "4.4.1", None, text, host.name, "connect")


class _Attempt:
    """One connection to one address, driving a ClientConnection."""

    def __init__(
        self,
        host: Host,
        address: str,
        settings: OutboundSettings,
        delivery: _Delivery,
        use_tls: bool,
    ):
        self.host = host
        self.address = address
        self.settings = settings
        self.delivery = delivery
        self.use_tls = use_tls
        self.remote = f"{host.name}[{address}]:{host.port}"  # as Postfix names a host
        self.failure: Outcome | None = None  # why the connection ended, if it failed
        self.tls_failed = False
        self._job: _Job | None = None
        self._conn: ClientConnection | None = None

    async def run(self) -> None:
        host = self.host
        implicit = host.implicit_tls and self.use_tls
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    self.address,
                    host.port,
                    ssl=host.tls if implicit else None,
                    server_hostname=host.name if implicit else None,
                )
        except (OSError, TimeoutError) as error:
            # RFC 3463 X.4.1: no answer from host.
            text = f"connect to {self.remote}: {_describe(error)}"
            self.failure = Outcome(Kind.TEMPORARY, "4.4.1", None, text, self.remote, "connect")
            log.info("smtp-out connect-failed host=%s detail=%r", self.remote, text)
            return
        conn = ClientConnection(
            self.settings.helo_name,
            self.remote,
            tls_possible=self.use_tls and not implicit,
            tls_active=implicit,
            tls_required=host.require_tls,
            credentials=host.credentials,
            timeouts=self.settings.timeouts,
            limits=self.settings.limits,
        )
        self._conn = conn
        try:
            await self._converse(conn, reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await writer.wait_closed()

    async def _converse(
        self, conn: ClientConnection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        armed: tuple[int, str] | None = None
        deadline = 0.0
        while True:
            event = conn.next_event()
            if event is not None:
                await self._on_event(event, conn, reader, writer)
                continue
            if conn.closed:
                with contextlib.suppress(Exception):
                    writer.write(conn.data_to_send())  # a last QUIT, if the core has one
                return
            await self._flush(conn, writer)
            if conn.closed:
                continue  # the write failed: the core's events first
            wait = conn.waiting_for
            if wait is None:
                raise RuntimeError("the SMTP client core waits for nothing")
            # The clock starts when a reply is awaited, not at each read: a
            # server trickling bytes cannot hold the connection forever.
            if armed != (conn.replies_received, wait.name):
                armed = (conn.replies_received, wait.name)
                deadline = loop.time() + wait.seconds
            try:
                async with asyncio.timeout_at(deadline):
                    data = await reader.read(READ_SIZE)
            except TimeoutError:
                conn.timed_out()
                continue
            except (OSError, ssl.SSLError) as error:
                conn.connection_lost(_describe(error))
                continue
            conn.receive_data(data)

    async def _flush(self, conn: ClientConnection, writer: asyncio.StreamWriter) -> None:
        data = conn.data_to_send()
        if not data:
            return
        wait = conn.waiting_for
        try:
            writer.write(data)
            async with asyncio.timeout(wait.seconds if wait else self.settings.timeouts.command):
                await writer.drain()
        except TimeoutError:
            conn.timed_out()
        except (OSError, ssl.SSLError) as error:
            conn.connection_lost(_describe(error))

    async def _on_event(
        self,
        event: Event,
        conn: ClientConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        if isinstance(event, Ready):
            if self.delivery.jobs:
                self._job = self.delivery.jobs.popleft()
                conn.send_message(self.delivery.envelope(self._job))
            else:
                conn.quit()
        elif isinstance(event, StartTLS):
            await self._start_tls(conn, writer)
        elif isinstance(event, SendBody):
            assert self._job is not None
            await self._send_body(conn, reader, writer, self.delivery.messages[self._job.message])
        elif isinstance(event, MessageResult):
            assert self._job is not None
            job, self._job = self._job, None
            self.delivery.record(job, event)
            for result in event.results:
                self._log_result(job, result)
        elif isinstance(event, Closed):
            if self._job is not None:  # never expected: the core answers for a message first
                self.delivery.jobs.appendleft(self._job)
                self._job = None
            self.failure = event.outcome
            if event.outcome is not None:
                log.info(
                    "smtp-out closed host=%s status=%s detail=%r",
                    self.remote,
                    event.outcome.status,
                    event.outcome.diagnostic,
                )

    async def _start_tls(self, conn: ClientConnection, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(self.settings.timeouts.starttls):
                await writer.start_tls(self.host.tls, server_hostname=self.host.name)
        except (OSError, ssl.SSLError, TimeoutError) as error:
            self.tls_failed = True
            conn.connection_lost(f"TLS handshake failed: {_describe(error)}")
            return
        check = self.host.check_peer
        if check is not None and not check(writer.get_extra_info("ssl_object")):
            # DANE (RFC 7672 2.2): the TLSA records do not match what the host
            # showed; this host gets nothing, in TLS or in clear.
            self.tls_failed = True
            conn.connection_lost("TLS authentication failed: no TLSA record matches (DANE)")
            return
        conn.tls_started()

    async def _send_body(
        self,
        conn: ClientConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        message: OutboundMessage,
    ) -> None:
        seconds = self.settings.timeouts.data_block
        chunks = message.chunks()
        try:
            while conn.wants_body:
                try:
                    chunk = next(chunks, None)
                except Exception as error:
                    # Ending the connection is the only way to stop a message
                    # half sent: an end of data now would deliver a part of it.
                    log.exception("smtp-out body-failed host=%s", self.remote)
                    conn.connection_lost(f"reading the message failed: {error!r}")
                    return
                if chunk is None:
                    writer.write(conn.end_body())
                    return
                writer.writelines(conn.send_body(chunk))
                await self._drain_watching(conn, reader, writer, seconds)
        except (OSError, ssl.SSLError) as error:
            conn.connection_lost(_describe(error))

    async def _drain_watching(
        self,
        conn: ClientConnection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        seconds: float,
    ) -> None:
        """Wait until the transport takes what was written, reading meanwhile.

        A host that refuses a message while it arrives (552, too big) says
        so and stops reading: the reply is what the core needs, and waiting
        on the write alone would only end in a timeout or a reset that
        loses the reply.
        """
        drain = asyncio.ensure_future(writer.drain())
        read = asyncio.ensure_future(reader.read(READ_SIZE))
        try:
            done, _ = await asyncio.wait(
                {drain, read}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (drain, read):
                if not task.done():
                    task.cancel()
            await asyncio.gather(drain, read, return_exceptions=True)
        if read in done:
            error = read.exception()
            if error is None:
                conn.receive_data(read.result())
            else:
                conn.connection_lost(_describe(error))
        elif drain in done:
            drain.result()  # raises what broke the connection
        else:
            conn.timed_out()

    def _log_result(self, job: _Job, result: RecipientResult) -> None:
        message = self.delivery.messages[job.message]
        outcome = result.outcome
        log.info(
            "smtp-out host=%s from=<%s> to=<%s> result=%s status=%s detail=%r",
            self.remote,
            message.sender,
            result.recipient,
            outcome.kind.value,
            outcome.status,
            outcome.diagnostic,
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)  # asyncio's own text names no reason
    return str(error) or type(error).__name__
