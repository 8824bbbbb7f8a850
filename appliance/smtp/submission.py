"""Message submission (RFC 6409): the `submission` (587, STARTTLS) and
`submissions` (465, implicit TLS, RFC 8314) listeners, and the rules every
way of sending shares.

The same session as inbound SMTP, with the core in submission mode: AUTH is
offered only over TLS, and nothing is accepted before it. A user sends as
themselves or as an alias of theirs (envelope and From: alike), to anyone:
local recipients get their copy in the same commit, the rest is queued for
delivery, the body stored once. Missing Date: and Message-ID: fields are
added (RFC 6409 8.2, 8.3); a copy in Sent is the client's business.

The webmail sends through the same functions (may_send, route_recipient,
submit_message), so a message written in the browser meets the same checks,
fields and DKIM signature as one from a mail program on port 587.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections.abc import Awaitable, Callable

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
from appliance.smtp.server import MailTransaction, SmtpContext, SmtpSession

log = logging.getLogger(__name__)

# Hands the finished message (with its analyzed structure) to the store.
Deliver = Callable[[bytes, structure.Structure], Awaitable[Reply]]


def may_send(ctx: SmtpContext, identity: str | None, address: str) -> bool:
    """Whether the user logged in as `identity` may send as `address`."""
    if identity is None or not address:
        return False  # no bounces from users: the null sender is the server's
    delimiter = ctx.settings.recipient_delimiter
    return ctx.store.read(lambda txn: may_send_as(txn, identity, address, delimiter))


def route_recipient(ctx: SmtpContext, address: str, transaction: MailTransaction) -> Reply | None:
    """Add where mail to `address` goes to the transaction; a Reply if it is refused."""
    try:
        normalized = normalize_address(address)
    except AddressError:
        return Reply(501, "5.1.3", f"<{address}>: Bad recipient address syntax")
    if ctx.store.read(lambda txn: txn.domain(domain_of(normalized))) is None:
        transaction.forwards[normalized] = None  # somebody else's domain: queued
        return None
    try:
        route = ctx.store.read(
            lambda txn: resolve(txn, normalized, ctx.settings.recipient_delimiter)
        )
    except Refused as refusal:
        return Reply(refusal.code, refusal.status, refusal.text)
    for account in route.accounts:
        transaction.accounts.setdefault(account, address)
    transaction.forwards.update(dict.fromkeys(route.forwards))
    return None


async def submit_message(
    ctx: SmtpContext, identity: str | None, body: bytes | bytearray, deliver: Deliver, client: str
) -> Reply:
    """Check a user's message, complete and sign it, and hand it to `deliver`.

    Every From: address must be one the user may send as (RFC 6409 8.1);
    Date: and Message-ID: are added when missing (RFC 6409 8.2, 8.3); the
    author's domain signs it with DKIM. `client` names the sender in logs.
    """
    analyzed = structure.analyze(body)
    envelope = analyzed.root.envelope
    authors = [a for a in envelope.from_ if a.mailbox is not None and a.host is not None]
    if not authors:
        return Reply(550, "5.6.0", "Message has no From: address (RFC 5322 3.6.2)")
    for author in authors:
        address = (author.mailbox + b"@" + author.host).decode(errors="replace")
        if not may_send(ctx, identity, address):
            log.info(
                "submission refused client=%s user=%s header-from=<%s> reason=not-own-address",
                client,
                identity,
                address,
            )
            return Reply(550, "5.7.1", f"<{address}>: From: address not owned by user")
    missing = _missing_fields(ctx, envelope)
    if missing:
        body = missing + body
    signatures = await _sign(ctx, body, authors[0].host.decode(errors="replace"), client)
    if missing or signatures:
        body = signatures + body
        analyzed = structure.analyze(body)
    return await deliver(body, analyzed)


async def _sign(ctx: SmtpContext, body: bytes | bytearray, domain: str, client: str) -> bytes:
    """DKIM-Signature fields for the author's domain (RFC 6376; d= is the
    From: domain, so that DMARC aligns), or nothing when it has no key."""
    if ctx.data_dir is None:
        return b""
    # dkimpy and PyNaCl weigh 15 MB: loaded by the first message signed,
    # never by a box that only receives.
    from appliance.mailauth.dkim import NoKeyError, SigningError, signer_for

    loop = asyncio.get_running_loop()
    try:
        # Off the loop: an RSA signature is milliseconds of arithmetic.
        return await loop.run_in_executor(None, signer_for(ctx.data_dir).sign, body, domain)
    except NoKeyError:
        return b""
    except SigningError as error:
        log.warning("submission unsigned client=%s domain=%s error=%s", client, domain, error)
        return b""


def _missing_fields(ctx: SmtpContext, envelope: structure.Envelope) -> bytes:
    """Date: and Message-ID: when the client left them out (RFC 6409 8.2, 8.3)."""
    fields = b""
    if envelope.date is None:
        fields += f"Date: {email.utils.format_datetime(email.utils.localtime())}\r\n".encode()
    if envelope.message_id is None:
        message_id = email.utils.make_msgid(domain=ctx.hostname)
        fields += f"Message-ID: {message_id}\r\n".encode()
    return fields


class SubmissionSession(SmtpSession):
    SUBMISSION = True

    async def _answer(self, conn: ServerConnection, event, transaction: MailTransaction):
        if isinstance(event, Authenticate):
            await self._authenticate(conn, event)
            return transaction
        if isinstance(event, MailFrom):
            if not may_send(self._context, event.identity, event.address):
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
            conn.respond(route_recipient(self._context, event.address, transaction))
            return transaction
        if isinstance(event, MessageReceived):
            reply = await submit_message(
                self._context,
                conn.identity,
                event.content,
                lambda body, analyzed: self.deliver(conn, body, transaction, analyzed),
                self.client,
            )
            conn.respond(reply)
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
