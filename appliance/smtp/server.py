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
from appliance.smtp.abuse import ClientLedger, ClientLookups, dnsbl_zones, helo_check, is_exempt
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
    ledger: ClientLedger | None = None  # port 25's per-address limits; None: none
    lookups: ClientLookups | None = None  # DNSBL and FCrDNS; None: no lookups


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
        # A stranger on port 25 (not submission, not an exempt loopback
        # client): screened before the greeting, held to the per-address limits.
        self._guarded = False
        self._client_name: asyncio.Task | None = None  # FCrDNS, under way from connect
        self._helo_check = "-"  # what is wrong with the HELO name, for the log

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
        if not admitted:
            conn.refuse(Reply(421, "4.7.0", f"{ctx.hostname} Error: too many connections"))
            self._refused("too-many-connections")
            await self.write(conn.data_to_send())
            return
        self._guarded = not self.SUBMISSION and not is_exempt(self.client, ctx.settings)
        try:
            if self._guarded:
                await self._screen(conn)
            else:
                conn.greet()
            await self._serve(conn)
        finally:
            if self._client_name is not None:
                self._client_name.cancel()

    async def _screen(self, conn: ServerConnection) -> None:
        """Before a stranger's greeting: its cooldown, the greeting delay with
        the pregreet test (postscreen's), the DNSBLs; then conn greets, or refuses."""
        ctx = self._context
        settings = ctx.settings
        cooldown = ctx.ledger.cooldown_left(self.client) if ctx.ledger is not None else 0.0
        if cooldown:
            text = f"{ctx.hostname} Error: too many unknown recipients, try again later"
            conn.refuse(Reply(421, "4.7.0", text))
            self._refused("cooldown", f" seconds_left={cooldown:.0f}")
            return
        loop = asyncio.get_running_loop()
        lookups = ctx.lookups
        if lookups is not None and settings.fcrdns:
            self._client_name = loop.create_task(lookups.verified_name(self.client))
        zones = dnsbl_zones(settings.dnsbl)
        listing = (
            loop.create_task(lookups.listing(self.client, zones)) if lookups and zones else None
        )
        try:
            deadline = time.monotonic() + settings.greet_delay
            talked = settings.greet_delay > 0 and await self.wait_input(deadline)
            listed = None if talked or listing is None else await listing
        finally:
            if listing is not None:
                listing.cancel()
        if self.has_input:
            self._pregreeted(conn)
        elif self.stopping:
            conn.shutdown()
        elif listed is not None:
            # RFC 5321 3.1: 554 in place of the greeting; the core then waits for QUIT.
            client = f"[{self.client}]"
            conn.reject(
                Reply(
                    554,
                    "5.7.1",
                    f"Service unavailable; client {client} blocked using {listed.zone}",
                )
            )
            self._refused(
                "dnsbl", f" zone={listed.zone} answer={listed.answer} text={listed.text!r}"
            )
        else:
            conn.greet()

    def _pregreeted(self, conn: ServerConnection) -> None:
        """The client spoke before the greeting, or left: a bot that does not wait
        for replies. RFC 7504 3: 521, and the connection may close at once
        (a 554 greeting would have to wait for QUIT, RFC 5321 3.1)."""
        chunks = self.take_input()
        if chunks == [b""]:
            conn.receive_data(b"")  # gone before the greeting: nothing to say
            return
        conn.refuse(
            Reply(521, "5.5.1", f"{self._context.hostname} Error: talked before the greeting")
        )
        self._refused("pregreet", f" bytes={sum(len(c) for c in chunks)}")

    def _refused(self, reason: str, details: str = "") -> None:
        """One line per refusal, with the client and the reason."""
        log.info("smtp refused client=%s reason=%s%s", self.client, reason, details)

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
            if not self.SUBMISSION:
                # RFC 5321 4.1.4: a HELO name is never a reason to refuse mail.
                self._helo_check = helo_check(event.domain, self.client, ctx.hostname)
            conn.respond(None)
            return transaction
        if isinstance(event, MailFrom):
            if (
                self._guarded
                and ctx.ledger is not None
                and not ctx.ledger.count_message(self.client)
            ):
                conn.respond(Reply(450, "4.7.1", f"Error: too much mail from {self.client}"))
                self._refused("message-rate")
                return transaction
            self._smtputf8 = event.smtputf8
            conn.respond(None)
            transaction = MailTransaction()
            if ctx.checker is not None:
                # Checked while the client sends its recipients and data.
                transaction.spf = ctx.checker.spf_soon(self.client, event.address, conn.helo or "")
            return transaction
        if isinstance(event, RcptTo):
            try:
                route = ctx.store.read(
                    lambda txn: resolve(txn, event.address, ctx.settings.recipient_delimiter)
                )
            except Refused as refusal:
                reply = Reply(refusal.code, refusal.status, refusal.text)
                if refusal.status == "5.1.1" and self._guarded and ctx.ledger is not None:
                    reply = await self._unknown_recipient(conn, reply)
                conn.respond(reply)
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

    async def _unknown_recipient(self, conn: ServerConnection, reply: Reply) -> Reply:
        """A dictionary attack is slowed down, then ended (ClientLedger)."""
        ctx = self._context
        counted = ctx.ledger.count_unknown_recipient(self.client)
        if counted.refused:
            self._refused("unknown-recipients", f" count={counted.count}")
            return Reply(421, "4.7.0", f"{ctx.hostname} Error: too many unknown recipients")
        if counted.delay:
            # The replies so far go out first: each refusal is seen to take longer.
            await self.write(conn.data_to_send())
            await asyncio.sleep(counted.delay)
        return reply

    async def _checked(
        self, conn: ServerConnection, body: bytes | bytearray, transaction, checker: Checker
    ) -> Reply:
        """Deliver after SPF, DKIM, ARC, DMARC and the spam filter: refused
        (550 5.7.1) or deferred (451 4.7.1) when they say so, to Junk when
        they ask for quarantine."""
        spf = await transaction.spf if transaction.spf is not None else None
        client_name = await self._client_name if self._client_name is not None else None
        verdict = await checker.check(
            body,
            spf,
            client_ip=self.client,
            helo=conn.helo or "",
            sender=conn.mail_from or "",
            recipients=conn.recipients,
            client_name=client_name or "",
        )
        if verdict.refusal is not None:
            reply = Reply(*verdict.refusal)
            self._log_transaction(conn, len(body), reply, "-", 0, 0)
            return reply
        if verdict.forged:
            body = b"".join(without_ranges(body, verdict.forged))
        mailbox = "Junk" if verdict.quarantined else "INBOX"
        analyzed, spared = None, ""
        if verdict.quarantined and verdict.author_may_be_spared:
            analyzed = structure.analyze(body)
            authors = analyzed.root.envelope.authors if analyzed.root.envelope else []
            spared = authors[0] if len(authors) == 1 else ""
        return await self.deliver(
            conn, body, transaction, analyzed, verdict.head, mailbox, spared_author=spared
        )

    async def deliver(
        self,
        conn: ServerConnection,
        body: bytes | bytearray,
        transaction: MailTransaction,
        analyzed: structure.Structure | None = None,
        head: bytes = b"",
        mailbox: str = "INBOX",
        spared_author: str = "",
    ) -> Reply:
        """Store the message for its local recipients (in `mailbox`, but see
        Transaction.deliver's spared_author) and queue it for the rest, in one
        commit, `head` in front of each local copy; the Reply says whether
        that commit happened."""
        ctx = self._context
        queue_id = new_message_id()
        sender = conn.mail_from or ""
        client_name = await self._client_name if self._client_name is not None else None
        received = self._received_fields(conn, queue_id, client_name)
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
                lambda txn: txn.deliver(
                    body, local, sender, forwards, forward_head, info, mailbox, spared_author
                )
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
            " delivered=%d forwarded=%d helo_check=%s",
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
            self._helo_check,
        )

    def _received_fields(self, conn: ServerConnection, queue_id: str, client_name: str | None):
        """A function giving the Received: field (RFC 5321 4.4) for one recipient;
        client_name is the client's FCrDNS-verified name, if it has one."""
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
        tcp_info = f"[IPv6:{self.client}]" if ":" in self.client else f"[{self.client}]"
        # RFC 5321 4.4's TCP-info: the name found by reverse lookup, when the
        # forward lookup confirms it; "unknown" (as Postfix) when it does not.
        if self._client_name is not None:
            tcp_info = f"{client_name or 'unknown'} {tcp_info}"
        start = (
            f"Received: from {conn.helo} ({tcp_info})\r\n"
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
