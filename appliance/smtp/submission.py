"""Message submission (RFC 6409): the `submission` (587, STARTTLS) and
`submissions` (465, implicit TLS, RFC 8314) listeners.

The same session as inbound SMTP, with the core in submission mode: AUTH is
offered only over TLS, and nothing is accepted before it. A user sends as
themselves or as an alias of theirs (envelope and From: alike), to anyone:
local recipients get their copy in the same commit, the rest is queued for
delivery, the body stored once. Missing Date: and Message-ID: fields are
added (RFC 6409 8.2, 8.3); a copy in Sent is the client's business.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging

from appliance.addresses import AddressError, domain_of, normalize_address
from appliance.delivery.local import Refused, may_send_as, resolve
from appliance.message import structure
from appliance.smtp.protocol import (
    Authenticate,
    MailFrom,
    MessageReceived,
    RcptTo,
    Reply,
    ServerConnection,
)
from appliance.smtp.server import MailTransaction, SmtpSession

log = logging.getLogger(__name__)


class SubmissionSession(SmtpSession):
    SUBMISSION = True

    async def _answer(self, conn: ServerConnection, event, transaction: MailTransaction):
        if isinstance(event, Authenticate):
            await self._authenticate(conn, event)
            return transaction
        if isinstance(event, MailFrom):
            if not self._owns(event.identity, event.address):
                log.info(
                    "submission refused client=%s user=%s from=<%s> reason=not-own-address",
                    self.client,
                    event.identity,
                    event.address,
                )
                conn.respond(
                    Reply(553, "5.7.1", f"<{event.address}>: Sender address not owned by user")
                )
                return transaction
            self._smtputf8 = event.smtputf8
            conn.respond(None)
            return MailTransaction()
        if isinstance(event, RcptTo):
            self._route(conn, event, transaction)
            return transaction
        if isinstance(event, MessageReceived):
            conn.respond(await self._submit(conn, event.content, transaction))
            return MailTransaction()
        return await super()._answer(conn, event, transaction)

    async def _authenticate(self, conn: ServerConnection, event: Authenticate) -> None:
        try:
            account = await self._context.logins.authenticate(
                self.client, event.username, event.password
            )
        except Exception:
            log.exception("submission auth failed client=%s", self.client)
            conn.auth_failed(temporary=True)
            return
        if account is None:
            log.info("submission login failed client=%s user=%s", self.client, event.username)
            conn.auth_failed()
            return
        log.info("submission login client=%s user=%s", self.client, account.address)
        conn.auth_succeeded(account.address)

    def _owns(self, identity: str | None, address: str) -> bool:
        if identity is None or not address:
            return False  # no bounces from users: the null sender is the server's
        ctx = self._context
        delimiter = ctx.settings.recipient_delimiter
        return ctx.store.read(lambda txn: may_send_as(txn, identity, address, delimiter))

    def _route(self, conn: ServerConnection, event: RcptTo, transaction: MailTransaction) -> None:
        ctx = self._context
        try:
            address = normalize_address(event.address)
        except AddressError:
            conn.respond(Reply(501, "5.1.3", f"<{event.address}>: Bad recipient address syntax"))
            return
        if ctx.store.read(lambda txn: txn.domain(domain_of(address))) is None:
            transaction.forwards[address] = None  # somebody else's domain: queued
            conn.respond(None)
            return
        try:
            route = ctx.store.read(
                lambda txn: resolve(txn, address, ctx.settings.recipient_delimiter)
            )
        except Refused as refusal:
            conn.respond(Reply(refusal.code, refusal.status, refusal.text))
            return
        for account in route.accounts:
            transaction.accounts.setdefault(account, event.address)
        transaction.forwards.update(dict.fromkeys(route.forwards))
        conn.respond(None)

    async def _submit(
        self, conn: ServerConnection, body: bytes | bytearray, transaction: MailTransaction
    ) -> Reply:
        analyzed = structure.analyze(body)
        envelope = analyzed.root.envelope
        authors = [a for a in envelope.from_ if a.mailbox is not None and a.host is not None]
        if not authors:
            return Reply(550, "5.6.0", "Message has no From: address (RFC 5322 3.6.2)")
        for author in authors:
            address = (author.mailbox + b"@" + author.host).decode(errors="replace")
            if not self._owns(conn.identity, address):
                log.info(
                    "submission refused client=%s user=%s header-from=<%s> reason=not-own-address",
                    self.client,
                    conn.identity,
                    address,
                )
                return Reply(550, "5.7.1", f"<{address}>: From: address not owned by user")
        missing = self._missing_fields(envelope)
        if missing:
            body = missing + body
        signatures = await self._sign(body, authors[0].host.decode(errors="replace"))
        if missing or signatures:
            body = signatures + body
            analyzed = structure.analyze(body)
        return await self.deliver(conn, body, transaction, analyzed)

    async def _sign(self, body: bytes | bytearray, domain: str) -> bytes:
        """DKIM-Signature fields for the author's domain (RFC 6376; d= is the
        From: domain, so that DMARC aligns), or nothing when it has no key."""
        data_dir = self._context.data_dir
        if data_dir is None:
            return b""
        # dkimpy and PyNaCl weigh 15 MB: loaded by the first message signed,
        # never by a box that only receives.
        from appliance.mailauth.dkim import NoKeyError, SigningError, signer_for

        loop = asyncio.get_running_loop()
        try:
            # Off the loop: an RSA signature is milliseconds of arithmetic.
            return await loop.run_in_executor(None, signer_for(data_dir).sign, body, domain)
        except NoKeyError:
            return b""
        except SigningError as error:
            log.warning(
                "submission unsigned client=%s domain=%s error=%s", self.client, domain, error
            )
            return b""

    def _missing_fields(self, envelope: structure.Envelope) -> bytes:
        """Date: and Message-ID: when the client left them out (RFC 6409 8.2, 8.3)."""
        fields = b""
        if envelope.date is None:
            fields += f"Date: {email.utils.format_datetime(email.utils.localtime())}\r\n".encode()
        if envelope.message_id is None:
            message_id = email.utils.make_msgid(domain=self._context.hostname)
            fields += f"Message-ID: {message_id}\r\n".encode()
        return fields
