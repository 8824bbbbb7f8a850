"""POP3 sessions: the sans-IO core on a Session, with the store and logins.

The maildrop is the account's INBOX as it was at login (RFC 1939 3). RETR
and TOP stream the stored message in bounded pieces, each read in its own
short read transaction and byte-stuffed on the way out. DELE takes effect
only at QUIT, as one expunge committed through the store's writer.
"""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.config import Pop3Settings
from appliance.login import LoginGuard
from appliance.pop3.protocol import (
    DotStuffer,
    Login,
    MaildropMessage,
    Retrieve,
    ServerConnection,
    StartTLS,
    State,
    Update,
)
from appliance.sessions import Listener, Session
from appliance.store import MessageEntry, Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Pop3Context:
    """What POP3 sessions share, swapped as a whole on reload (SIGHUP)."""

    hostname: str
    settings: Pop3Settings
    store: Store
    tls: ssl.SSLContext | None
    logins: LoginGuard
    locked: set[int]  # accounts whose maildrop a session holds (RFC 1939 8: [IN-USE])


def uidl(uidvalidity: int, uid: int) -> str:
    """The unique-id listing of a message: stable across sessions and restarts,
    derived from IMAP's UID and UIDVALIDITY (the same form as Dovecot's default,
    %08Xu%08Xv, so that clients moving from Dovecot do not download twice)."""
    return f"{uid:08X}{uidvalidity:08X}"


class Pop3Session(Session):
    def __init__(self, listener: Listener, context: Callable[[], Pop3Context]):
        super().__init__(listener, context)
        self._account_id: int | None = None
        self._mailbox_id: int | None = None
        self._messages: list[MessageEntry] = []

    async def serve(self, admitted: bool) -> None:
        conn = ServerConnection(**self.core_options())
        if not admitted:
            conn.refuse_busy()
            log.info("pop3 refused client=%s reason=too-many-connections", self.client)
            await self.write(conn.data_to_send())
            return
        try:
            conn.greet()
            await self._serve(conn)
        finally:
            if self._account_id is not None:
                self._context.locked.discard(self._account_id)

    async def _serve(self, conn: ServerConnection) -> None:
        await self.write(conn.data_to_send())
        last_activity = time.monotonic()
        while not conn.closed:
            if self.stopping and not self.busy:
                conn.shutdown()
                break
            if not self.has_input:
                logged_in = conn.state is not State.AUTHORIZATION
                if not await self.wait_input(self.input_deadline(last_activity, logged_in)):
                    log.info("pop3 timeout client=%s", self.client)
                    conn.timeout()
                    break
                continue
            last_activity = time.monotonic()
            for chunk in self.take_input():
                conn.receive_data(chunk)
            while (event := conn.next_event()) is not None:
                self.busy = True
                await self._answer(conn, event)
                self.busy = False
            await self.write(conn.data_to_send())
        await self.write(conn.data_to_send())

    async def _answer(self, conn: ServerConnection, event) -> None:
        if isinstance(event, Login):
            await self._login(conn, event)
        elif isinstance(event, Retrieve):
            await self._retrieve(conn, event)
        elif isinstance(event, Update):
            await self._update(conn, event)
        elif isinstance(event, StartTLS):
            conn.respond_starttls()
            await self.write(conn.data_to_send())
            if await self.start_tls(self._context.tls):
                conn.tls_started()
            else:
                conn.receive_data(b"")
        else:
            raise RuntimeError(f"unexpected POP3 event {event!r}")

    async def _login(self, conn: ServerConnection, event: Login) -> None:
        ctx = self._context
        account = await ctx.logins.authenticate(self.client, event.user, event.password)
        if account is None:
            log.info("pop3 login failed client=%s user=%s", self.client, event.user)
            conn.login_failed("auth")
            return
        if account.id in ctx.locked:
            log.info(
                "pop3 login refused client=%s user=%s reason=in-use", self.client, account.address
            )
            conn.login_failed("in-use")
            return
        inbox = ctx.store.read(lambda txn: txn.mailbox(account.id, "INBOX"))
        if inbox is None:
            conn.login_failed("temp")
            return
        ctx.locked.add(account.id)
        self._account_id, self._mailbox_id = account.id, inbox.id
        self._messages = ctx.store.read(lambda txn: txn.messages(inbox.id))
        conn.login_succeeded(
            [MaildropMessage(m.size, uidl(inbox.uidvalidity, m.uid)) for m in self._messages]
        )
        log.info(
            "pop3 login client=%s user=%s messages=%d tls=%s",
            self.client,
            account.address,
            len(self._messages),
            self.tls_active,
        )

    async def _retrieve(self, conn: ServerConnection, event: Retrieve) -> None:
        entry = self._messages[event.index]
        store = self._context.store
        chunk = self._context.settings.read_chunk
        stuffer = DotStuffer(event.lines)
        pending: list[bytes] = []
        offset = 0
        while True:
            with store.reader(buffers=True) as txn:
                if offset == 0:
                    if txn.message(entry.mailbox_id, entry.uid) is None:
                        conn.retrieve_gone()  # expunged over IMAP since this login
                        return
                    conn.retrieve_start()
                    # The +OK line, the head and the first piece of the body
                    # leave in one write: one write for most messages.
                    pending = [conn.data_to_send(), *stuffer.feed(entry.head)]
                blob = txn.blob(entry.blob_id)
                # Expunged over IMAP while being sent: the message ends here
                # rather than the session failing (the +OK cannot be taken back).
                piece = blob[offset : offset + chunk] if blob is not None else b""
                pending.extend(stuffer.feed(piece))
                # Joined while the transaction still holds the pages: one
                # bounded copy per piece, never the whole message.
                data = b"".join(pending)
                offset += len(piece)
                last = stuffer.done or not piece or offset >= len(blob)
            if last:
                break
            await self.write(data)
            store.streamed(len(data))
            pending = []
        conn.retrieve_done()
        await self.write(b"".join([data, *stuffer.finish(), conn.data_to_send()]))
        if offset > chunk:
            store.streamed(len(data), done=True)

    async def _update(self, conn: ServerConnection, event: Update) -> None:
        uids = [self._messages[index].uid for index in event.deleted]
        mailbox_id = self._mailbox_id
        try:
            removed = await self._context.store.submit(lambda txn: txn.expunge(mailbox_id, uids))
        except Exception:
            log.exception("pop3 expunge failed client=%s", self.client)
            conn.respond_update(False)
            return
        log.info("pop3 update client=%s deleted=%d", self.client, len(removed))
        conn.respond_update(True)
