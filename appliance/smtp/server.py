"""Inbound SMTP sessions: the sans-IO core on an asyncio transport, with the store.

One SmtpSession per connection, on the plumbing shared by every protocol
(appliance/sessions.py). It answers the core's events: recipients are looked
up in the store, and the message is committed through the store's group
commit. A 250 after the message is sent only when that commit is synced.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.config import SmtpSettings
from appliance.delivery.local import Refused, resolve
from appliance.login import LoginGuard
from appliance.mailauth.results import without_ranges
from appliance.message import structure
from appliance.sessions import Listener, Session
from appliance.smtp.protocol import (
    Hello,
    MailFrom,
    MessageReceived,
    MessageRefused,
    RcptTo,
    Reply,
    ServerConnection,
    StartTLS,
)
from appliance.store import Store

if TYPE_CHECKING:  # loaded by the service only when the checks are on (dkimpy, pyspf)
    from appliance.mailauth.inbound import Checker

log = logging.getLogger(__name__)


@dataclass(slots=True)
class SmtpContext:
    """What sessions share, swapped as a whole on reload (SIGHUP)."""

    hostname: str
    settings: SmtpSettings
    store: Store
    tls: ssl.SSLContext | None
    logins: LoginGuard | None = None  # submission's AUTH
    data_dir: Path | None = None  # where submission finds the DKIM keys
    queued: Callable[[], None] | None = None  # tells the queue runner there is mail to send
    checker: Checker | None = None  # SPF, DKIM and DMARC on inbound mail; None: off


@dataclass(slots=True)
class MailTransaction:
    """Where the accepted recipients of the current transaction go."""

    accounts: dict[str, str] = field(default_factory=dict)  # account -> RCPT address
    forwards: dict[str, None] = field(default_factory=dict)
    spf: asyncio.Future | None = None  # the SPF check of MAIL FROM, under way


def new_message_id() -> str:
    """A queue id for logs and Received: time-ordered, unique, short."""
    return f"{time.time_ns() // 1000:X}{secrets.token_hex(3).upper()}"


class SmtpSession(Session):
    def __init__(self, listener: Listener, context: Callable[[], SmtpContext]):
        super().__init__(listener, context)
        self._esmtp = False
        self._smtputf8 = False

    SUBMISSION = False  # the core's mode: inbound (25) here, RFC 6409 in the subclass

    def new_core(self) -> ServerConnection:
        ctx = self._context
        return ServerConnection(
            hostname=ctx.hostname,
            limits=ctx.settings.limits,
            tls_available=ctx.tls is not None,
            tls_active=self.tls_active,
            submission=self.SUBMISSION,
        )

    async def serve(self, admitted: bool) -> None:
        ctx = self._context
        conn = self.new_core()
        if admitted:
            conn.greet()
            await self._serve(conn)
        else:
            conn.refuse(Reply(421, "4.7.0", f"{ctx.hostname} Error: too many connections"))
            log.info("smtp refused client=%s reason=too-many-connections", self.client)
            await self.write(conn.data_to_send())

    async def _serve(self, conn: ServerConnection) -> None:
        transaction = MailTransaction()
        phase_started = time.monotonic()
        await self.write(conn.data_to_send())
        while not conn.closed:
            if self.stopping and not self.busy:
                conn.shutdown()
                break
            if not self.has_input:
                deadline = self._deadline(conn, phase_started)
                if not await self.wait_input(deadline):
                    log.info("smtp timeout client=%s in_message=%s", self.client, conn.in_message)
                    conn.timeout()
                    break
                continue
            for chunk in self.take_input():
                conn.receive_data(chunk)
            wrote = False
            while (event := conn.next_event()) is not None:
                wrote = True
                if isinstance(event, StartTLS):
                    await self._start_tls(conn)
                else:
                    transaction = await self._answer(conn, event, transaction)
            self.busy = conn.mail_from is not None or conn.in_message
            output = conn.data_to_send()
            if output or wrote:
                phase_started = time.monotonic()
            await self.write(output)
        await self.write(conn.data_to_send())

    def _deadline(self, conn: ServerConnection, phase_started: float) -> float:
        settings = self._context.settings
        if conn.in_message:
            # Generous for big messages on slow links, but a client trickling
            # bytes runs out of time (Postfix's smtpd_min_data_rate).
            allowance = conn.message_bytes_received / settings.min_data_rate
            return phase_started + settings.data_timeout + allowance
        return phase_started + settings.command_timeout

    async def _answer(self, conn: ServerConnection, event, transaction: MailTransaction):
        ctx = self._context
        if isinstance(event, Hello):
            self._esmtp = event.verb == "EHLO"
            conn.respond(None)
            return transaction
        if isinstance(event, MailFrom):
            self._smtputf8 = event.smtputf8
            conn.respond(None)
            transaction = MailTransaction()
            if ctx.checker is not None:
                # Checked while the client sends its recipients and data.
                transaction.spf = asyncio.get_running_loop().run_in_executor(
                    None, ctx.checker.spf, self.client, event.address, conn.helo or ""
                )
            return transaction
        if isinstance(event, RcptTo):
            try:
                route = ctx.store.read(
                    lambda txn: resolve(txn, event.address, ctx.settings.recipient_delimiter)
                )
            except Refused as refusal:
                conn.respond(Reply(refusal.code, refusal.status, refusal.text))
                return transaction
            for account in route.accounts:
                transaction.accounts.setdefault(account, event.address)
            transaction.forwards.update(dict.fromkeys(route.forwards))
            conn.respond(None)
            return transaction
        if isinstance(event, MessageReceived):
            if ctx.checker is None:
                reply = await self.deliver(conn, event.content, transaction)
            else:
                reply = await self._checked(conn, event.content, transaction, ctx.checker)
            conn.respond(reply)
            return MailTransaction()
        if isinstance(event, MessageRefused):
            self._log_transaction(conn, event.size, event.reply, "-", 0, 0)
            conn.respond(None)
            return MailTransaction()
        raise RuntimeError(f"unexpected SMTP event {event!r}")

    async def _checked(
        self, conn: ServerConnection, body: bytes | bytearray, transaction, checker: Checker
    ) -> Reply:
        """Deliver after SPF, DKIM and DMARC: refused (550 5.7.1) when the
        author's domain asks for it, to Junk when it asks for quarantine."""
        spf = await transaction.spf if transaction.spf is not None else None
        loop = asyncio.get_running_loop()
        verdict = await loop.run_in_executor(None, checker.verdict, body, spf)
        if verdict.refused:
            reply = Reply(550, "5.7.1", f"Message rejected: {verdict.reason}")
            self._log_transaction(conn, len(body), reply, "-", 0, 0)
            return reply
        if verdict.forged:
            body = b"".join(without_ranges(body, verdict.forged))
        mailbox = "Junk" if verdict.quarantined else "INBOX"
        return await self.deliver(
            conn, body, transaction, head=verdict.results_field, mailbox=mailbox
        )

    async def deliver(
        self,
        conn: ServerConnection,
        body: bytes | bytearray,
        transaction: MailTransaction,
        analyzed: structure.Structure | None = None,
        head: bytes = b"",
        mailbox: str = "INBOX",
    ) -> Reply:
        """Store the message for its local recipients (in `mailbox`) and queue
        it for the rest, in one commit, `head` in front of each local copy;
        the Reply says whether that commit happened."""
        ctx = self._context
        queue_id = new_message_id()
        sender = conn.mail_from or ""
        received = self._received_fields(conn, queue_id)
        return_path = f"Return-Path: <{sender}>\r\n".encode()
        local = [
            (account, return_path + head + received(rcpt))
            for account, rcpt in transaction.accounts.items()
        ]
        forwards = tuple(transaction.forwards)
        forward_head = received(forwards[0] if len(forwards) == 1 else None) if forwards else b""
        # Analyzed once, here, so that IMAP never parses this body again.
        info = (analyzed or structure.analyze(body)).to_record() if local else None
        try:
            stored = await ctx.store.submit(
                lambda txn: txn.deliver(body, local, sender, forwards, forward_head, info, mailbox)
            )
        except Exception:
            log.exception("smtp store failed id=%s", queue_id)
            stored = None
        if stored is None or not (stored.entries or stored.queued):
            reply = Reply(451, "4.3.0", "Error: local delivery failed, try again later")
        else:
            reply = Reply(250, "2.0.0", f"Ok: queued as {queue_id}")
            if stored.queued and ctx.queued is not None:
                ctx.queued()
        delivered = len(stored.entries) if stored else 0
        forwarded = sum(len(q.recipients) for q in stored.queued) if stored else 0
        self._log_transaction(conn, len(body), reply, queue_id, delivered, forwarded)
        return reply

    def _log_transaction(
        self,
        conn: ServerConnection,
        size: int,
        reply: Reply,
        queue_id: str,
        delivered: int,
        forwarded: int,
    ) -> None:
        log.info(
            "smtp client=%s helo=%s from=<%s> to=%s size=%d result=%d status=%s id=%s"
            " delivered=%d forwarded=%d",
            self.client,
            conn.helo,
            conn.mail_from,
            ",".join(f"<{r}>" for r in conn.recipients),
            size,
            reply.code,
            reply.status or "-",
            queue_id,
            delivered,
            forwarded,
        )

    def _received_fields(self, conn: ServerConnection, queue_id: str):
        """A function giving the Received: field (RFC 5321 4.4) for one recipient."""
        ctx = self._context
        # RFC 3848 protocol names; RFC 6531 4.3 for the UTF8 variants.
        protocol = "ESMTP" if self._esmtp else "SMTP"
        if self._smtputf8:
            protocol = "UTF8" + protocol
        if self.tls_active:
            protocol += "S"
        if conn.identity is not None:
            protocol += "A"
        tls = ""
        ssl_object = self.transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            tls = f"\r\n\t(using {ssl_object.version()} with cipher {ssl_object.cipher()[0]})"
        date = email.utils.format_datetime(email.utils.localtime())
        literal = f"IPv6:{self.client}" if ":" in self.client else self.client
        start = (
            f"Received: from {conn.helo} ([{literal}])\r\n"
            f"\tby {ctx.hostname} with {protocol} id {queue_id}{tls}"
        )

        def field_for(recipient: str | None) -> bytes:
            target = f"\r\n\tfor <{recipient}>" if recipient else ""
            return f"{start}{target}; {date}\r\n".encode()

        return field_for

    async def _start_tls(self, conn: ServerConnection) -> None:
        conn.respond(None)
        await self.write(conn.data_to_send())
        if await self.start_tls(self._context.tls):
            conn.tls_started()
        else:
            conn.receive_data(b"")
