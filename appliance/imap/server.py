"""IMAP sessions: the sans-IO core on a Session, with the store, logins and TLS.

The session keeps a snapshot of the selected mailbox: its UIDs in order (the
message sequence number is the index plus one) and each message's flags and
modseq as last told to the client. At the end of every command, and every
half second while IDLE, the mailbox is read again and the differences go out
as EXISTS, FETCH (FLAGS) and EXPUNGE. EXPUNGE waits for a command that allows
it (RFC 9051 7.5.1: not during FETCH, STORE or SEARCH); until then the gone
messages keep their sequence numbers and match nothing.

Each FETCH response is made inside one short read transaction (none spans
an await), from the structure that delivery stored with the body (fetch.py):
small literals are copied out while it is open, long ones are streamed from
the store afterwards in pieces, each read in a transaction of its own.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import logging
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from appliance.config import ImapSettings
from appliance.imap.fetch import BodyStream, StoredMessage, ranges_size, without_nul
from appliance.imap.names import DELIMITER, mailbox_name_error
from appliance.imap.parser import (
    Command,
    FetchAttr,
    FetchBinarySize,
    FetchBody,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    SequenceSet,
    literal_header,
    mailbox_name,
    quoted,
)
from appliance.imap.protocol import (
    Idle,
    IdleDone,
    Login,
    ServerConnection,
    StartTLS,
    State,
)
from appliance.login import LoginGuard
from appliance.message import structure, text
from appliance.message.structure import analyze
from appliance.sessions import Listener, MailboxWatch, Session
from appliance.store import (
    AlreadyExists,
    Mailbox,
    MessageEntry,
    MessageState,
    NotFound,
    Store,
)

log = logging.getLogger(__name__)

# Messages read in one transaction by FETCH (fewer when their bodies are big).
_FETCH_BATCH = 256

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
# Changes made in this process reach an IDLE session at once (MailboxWatch);
# this long after the last look, the mailbox is read again anyway, for writes
# from another process (the CLI removing an account).
IDLE_RECHECK = 30.0
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# Commands during which EXPUNGE responses must wait (RFC 9051 7.5.1); UID forms may have them.
_NO_EXPUNGE = frozenset({"FETCH", "STORE", "SEARCH"})


@dataclass(slots=True)
class ImapContext:
    """What IMAP sessions share, swapped as a whole on reload (SIGHUP)."""

    hostname: str
    settings: ImapSettings
    store: Store
    tls: ssl.SSLContext | None
    logins: LoginGuard
    watch: MailboxWatch  # pokes IDLE sessions when their mailbox changes


class Failure(Exception):
    """A command that fails with a tagged NO (or BAD) and a response code."""

    def __init__(self, text: str, code: str | None = None, status: str = "NO"):
        super().__init__(text)
        self.text, self.code, self.status = text, code, status


@dataclass(slots=True)
class Selected:
    """The selected mailbox as this session last told the client about it."""

    mailbox: Mailbox
    read_only: bool
    uids: list[int] = field(default_factory=list)
    known: dict[int, tuple[tuple[str, ...], int]] = field(default_factory=dict)  # flags, modseq
    gone: set[int] = field(default_factory=set)  # expunged, EXPUNGE not sent yet
    highestmodseq: int = 0  # of the store's mailbox record when last read
    saved: list[int] = field(default_factory=list)  # SEARCH RETURN (SAVE), as UIDs


def internal_date(timestamp: float) -> str:
    """date-time (RFC 9051 9) in UTC."""
    t = time.gmtime(timestamp)
    month = _MONTHS[t.tm_mon - 1]
    clock = f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    return f'"{t.tm_mday:02d}-{month}-{t.tm_year:04d} {clock} +0000"'


def _canonical(name: str) -> str:
    name = name.rstrip(DELIMITER) or name
    return "INBOX" if name.upper() == "INBOX" else name


def _pattern(reference: str, pattern: str) -> re.Pattern[str]:
    """A LIST pattern (RFC 9051 6.3.9) as a regular expression over mailbox names."""
    full = reference + pattern if not pattern.startswith(DELIMITER) else pattern
    if full[:5].upper() == "INBOX" and (len(full) == 5 or full[5] in (DELIMITER, "*", "%")):
        full = "INBOX" + full[5:]
    out = []
    for char in full:
        if char == "*":
            out.append(".*")
        elif char == "%":
            out.append(f"[^{re.escape(DELIMITER)}]*")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


class ImapSession(Session):
    def __init__(self, listener: Listener, context: Callable[[], ImapContext]):
        super().__init__(listener, context)
        self._account_id: int | None = None
        self._address = ""
        self._selected: Selected | None = None
        self._idling = False

    async def flush(self, conn: ServerConnection) -> None:
        ready: list[bytes | memoryview] = []
        for piece in conn.data_to_send():
            if isinstance(piece, BodyStream):
                await self._write_pieces(ready)
                ready = []
                await self._stream(piece)
            else:
                ready.append(piece)
        await self._write_pieces(ready)

    async def _write_pieces(self, pieces: list[bytes | memoryview]) -> None:
        if pieces and not self.transport.is_closing():
            self.transport.writelines(pieces)
            await self._writable.wait()

    async def _stream(self, stream: BodyStream) -> None:
        """A long literal, read from the store one chunk per short transaction
        and written under the peer's flow control (a slow reader holds no
        transaction open, so it never stops the map from growing)."""
        store = self._context.store
        for from_head, start, end in stream.pieces(self._context.settings.read_chunk):
            if self.transport.is_closing():
                return
            if from_head:
                data = stream.head[start:end]
            else:
                with store.reader(buffers=True) as txn:
                    body = txn.blob(stream.blob_id)
                    # Copied while the pages are held: the transport may keep it.
                    data = None if body is None else bytes(body[start:end])
            if data is not None and not stream.binary:
                data = without_nul(data)
            if data is None:
                # Expunged and its pages freed mid-literal: the octets promised
                # cannot be sent, and nothing else may stand in for them.
                log.info("imap fetch lost its message client=%s", self.client)
                self.transport.abort()
                return
            self.transport.write(data)
            store.streamed(len(data))
            await self._writable.wait()
        store.streamed(0, done=True)

    async def serve(self, admitted: bool) -> None:
        conn = ServerConnection(**self.core_options())
        if not admitted:
            conn.refuse_busy()
            log.info("imap refused client=%s reason=too-many-connections", self.client)
            await self.flush(conn)
            return
        conn.greet()
        await self.flush(conn)
        try:
            await self._serve_commands(conn)
        finally:
            self._watch(False)  # a client gone in the middle of IDLE

    async def _serve_commands(self, conn: ServerConnection) -> None:
        last_activity = time.monotonic()
        while not conn.closed:
            if self.stopping and not self.busy:
                conn.shutdown()
                break
            if not self.has_input:
                logged_in = conn.state is not State.NOT_AUTHENTICATED
                deadline = self.input_deadline(last_activity, logged_in)
                poll = self._idling and self._selected is not None
                wait_until = min(deadline, time.monotonic() + IDLE_RECHECK) if poll else deadline
                if await self.wait_input(wait_until):
                    if self.poked:
                        self.poked = False
                        self._sync(conn, expunge=True)
                        await self.flush(conn)
                    continue
                if time.monotonic() < deadline:
                    self._sync(conn, expunge=True)
                    await self.flush(conn)
                    continue
                log.info("imap timeout client=%s", self.client)
                conn.timeout()
                break
            last_activity = time.monotonic()
            for chunk in self.take_input():
                conn.receive_data(chunk)
            if conn.amid_literals:
                self.acknowledge_now()
            while (event := conn.next_event()) is not None:
                self.busy = True
                try:
                    await self._answer(conn, event)
                finally:
                    self.busy = False
                await self.flush(conn)
            await self.flush(conn)
        await self.flush(conn)

    # -- events --------------------------------------------------------------------------

    async def _answer(self, conn: ServerConnection, event) -> None:
        if isinstance(event, Command):
            await self._command(conn, event)
        elif isinstance(event, Login):
            await self._login(conn, event)
        elif isinstance(event, Idle):
            self._idling = True
            self._watch(True)
            self._sync(conn, expunge=True)
        elif isinstance(event, IdleDone):
            self._idling = False
            self._watch(False)
            self._sync(conn, expunge=True)
            conn.idle_done()
        elif isinstance(event, StartTLS):
            conn.respond_starttls()
            await self.flush(conn)
            if await self.start_tls(self._context.tls):
                conn.tls_started()
            else:
                conn.receive_data(b"")
        else:
            raise RuntimeError(f"unexpected IMAP event {event!r}")

    def _watch(self, on: bool) -> None:
        if self._selected is None:
            return
        mailbox_id = self._selected.mailbox.id
        if on:
            self._context.watch.watch(mailbox_id, self)
        else:
            self._context.watch.unwatch(mailbox_id, self)

    async def _login(self, conn: ServerConnection, event: Login) -> None:
        ctx = self._context
        account = await ctx.logins.authenticate(self.client, event.user, event.password)
        if account is None:
            log.info("imap login failed client=%s user=%s", self.client, event.user)
            conn.login_failed("auth")
            return
        self._account_id, self._address = account.id, account.address
        conn.login_succeeded()
        log.info(
            "imap login client=%s user=%s tls=%s", self.client, account.address, self.tls_active
        )

    async def _command(self, conn: ServerConnection, command: Command) -> None:
        handler = _COMMANDS.get(command.name)
        if handler is None:
            conn.respond("BAD", f"{command.name} not implemented")
            return
        try:
            result = await handler(self, conn, command)
        except Failure as failure:
            if command.name in ("SELECT", "EXAMINE"):
                self._selected = None
            if self._selected is not None and command.name not in ("SELECT", "EXAMINE"):
                self._sync(conn, expunge=self._expunge_allowed(command))
            conn.respond(failure.status, failure.text, failure.code)
            return
        except Exception:
            # A fault of ours: the client hears of it and the session goes on.
            log.exception("imap command failed client=%s command=%s", self.client, command.name)
            if command.name in ("SELECT", "EXAMINE"):
                self._selected = None
            conn.respond("NO", "Internal error, try again later", "SERVERBUG")
            return
        if command.name in ("SELECT", "EXAMINE"):
            return  # answered with selected()
        if self._selected is not None and command.name not in ("CLOSE", "UNSELECT"):
            self._sync(conn, expunge=self._expunge_allowed(command))
        text, code = result if isinstance(result, tuple) else (result, None)
        conn.respond("OK", text or f"{command.name} completed", code)

    @staticmethod
    def _expunge_allowed(command: Command) -> bool:
        return command.uid or command.name not in _NO_EXPUNGE

    # -- the selected mailbox ------------------------------------------------------------

    def _sync(self, conn: ServerConnection, expunge: bool) -> None:
        """Tell the client what changed in the selected mailbox since it last heard."""
        sel = self._selected
        if sel is None:
            return
        store = self._context.store
        mailbox_id = sel.mailbox.id

        def read(txn):
            mailbox = txn.mailbox_by_id(mailbox_id)
            if mailbox is not None and mailbox.highestmodseq == sel.highestmodseq:
                return mailbox, None
            return mailbox, ([] if mailbox is None else txn.message_states(mailbox_id))

        mailbox, entries = store.read(read)
        if entries is None and not (expunge and sel.gone):
            return
        if entries is None:
            entries = store.read(lambda txn: txn.message_states(mailbox_id))
        if mailbox is not None:
            sel.mailbox = mailbox
            sel.highestmodseq = mailbox.highestmodseq
        current = {e.uid: e for e in entries}
        for uid in sel.uids:
            if uid not in current:
                sel.gone.add(uid)
        if expunge and sel.gone:
            if "QRESYNC" in conn.enabled:
                # RFC 7162 3.2.10: VANISHED instead of EXPUNGE once QRESYNC is on.
                conn.untagged(f"VANISHED {SequenceSet.of(sel.gone)}")
            for index in range(len(sel.uids) - 1, -1, -1):
                if sel.uids[index] in sel.gone:
                    if "QRESYNC" not in conn.enabled:
                        conn.untagged(f"{index + 1} EXPUNGE")
                    sel.known.pop(sel.uids[index], None)
                    del sel.uids[index]
            sel.gone.clear()
        last = sel.uids[-1] if sel.uids else 0
        new = [e for e in entries if e.uid > last]
        condstore = "CONDSTORE" in conn.enabled
        for seq, uid in enumerate(sel.uids, 1):
            entry = current.get(uid)
            if entry is None:
                continue
            known = sel.known.get(uid)
            if known is not None and known[1] != entry.modseq:
                if set(known[0]) != set(entry.flags) or condstore:
                    conn.untagged(f"{seq} FETCH ({self._flags_items(conn, entry)})")
                sel.known[uid] = (entry.flags, entry.modseq)
        if new:
            for entry in new:
                sel.uids.append(entry.uid)
                sel.known[entry.uid] = (entry.flags, entry.modseq)
            conn.untagged(f"{len(sel.uids)} EXISTS")

    def _flags_items(
        self, conn: ServerConnection, entry: MessageEntry | MessageState, uid: bool = True
    ) -> str:
        items = [f"FLAGS ({' '.join(entry.flags)})"]
        if uid:
            items.append(f"UID {entry.uid}")
        if "CONDSTORE" in conn.enabled:
            items.append(f"MODSEQ ({entry.modseq})")
        return " ".join(items)

    def _targets(self, command: Command, sequence: SequenceSet) -> list[tuple[int, int]]:
        """(sequence number, UID) of the messages a sequence or UID set names, ascending."""
        sel = self._selected
        uids = sel.uids
        if sequence.saved:
            wanted = set(sel.saved)
            return [(i + 1, u) for i, u in enumerate(uids) if u in wanted]
        if command.uid:
            largest = uids[-1] if uids else 0
            out = []
            for low, high in sequence.resolve(largest):
                start = bisect.bisect_left(uids, low)
                stop = bisect.bisect_right(uids, high)
                out.extend((i + 1, uids[i]) for i in range(start, stop))
            return out
        count = len(uids)
        for first, last in sequence.ranges:
            if first > count or last > count:
                raise Failure("Invalid message sequence number", status="BAD")
        return [(seq, uids[seq - 1]) for seq in sequence.members(count)]

    def _require_selected(self) -> Selected:
        if self._selected is None:
            raise Failure("No mailbox selected", status="BAD")
        return self._selected

    def _mailbox(self, name: str) -> Mailbox:
        account_id = self._account_id
        name = _canonical(name)
        mailbox = self._context.store.read(lambda txn: txn.mailbox(account_id, name))
        if mailbox is None:
            raise Failure(f"No mailbox {name}", "NONEXISTENT")
        return mailbox

    # -- any state -----------------------------------------------------------------------

    async def _noop(self, conn: ServerConnection, command: Command):
        return None

    async def _id(self, conn: ServerConnection, command: Command):
        conn.untagged('ID ("name" "appliance")')
        return None

    async def _namespace(self, conn: ServerConnection, command: Command):
        conn.untagged(f'NAMESPACE (("" "{DELIMITER}")) NIL NIL')
        return None

    # -- mailboxes -----------------------------------------------------------------------

    async def _list(self, conn: ServerConnection, command: Command):
        args = command.args
        lsub = command.name == "LSUB"
        account_id = self._account_id
        mailboxes = self._context.store.read(lambda txn: txn.mailboxes(account_id))
        if not args.patterns or args.patterns == ("",):
            # RFC 9051 6.3.9: the hierarchy delimiter and root of the reference.
            root = args.reference.split(DELIMITER, 1)[0] if args.reference else ""
            kind = "LSUB" if lsub else "LIST"
            conn.untagged(
                f"{kind} (\\Noselect) ", quoted(DELIMITER), b" ", mailbox_name(root, conn.utf8)
            )
            return None
        names = {m.name for m in mailboxes}
        patterns = [_pattern(args.reference, p) for p in args.patterns]
        subscribed_only = lsub or "SUBSCRIBED" in args.selection
        special_only = "SPECIAL-USE" in args.selection
        show_subscribed = "SUBSCRIBED" in args.selection or "SUBSCRIBED" in args.return_options
        kind = "LSUB" if lsub else "LIST"
        if not (subscribed_only or special_only):
            # RFC 9051 6.3.9: a level of hierarchy with no mailbox of its own
            # (its mailbox deleted, its children kept) shows for "%" patterns.
            holes = sorted(
                {
                    DELIMITER.join(name.split(DELIMITER)[:depth])
                    for name in names
                    for depth in range(1, name.count(DELIMITER) + 1)
                }
                - names
            )
            level_patterns = [
                p for p, raw in zip(patterns, args.patterns, strict=True) if "*" not in raw
            ]
            for hole in holes:
                if any(p.fullmatch(hole) for p in level_patterns):
                    conn.untagged(
                        f"{kind} (\\Noselect \\HasChildren) ",
                        quoted(DELIMITER),
                        b" ",
                        mailbox_name(hole, conn.utf8),
                    )
        for mailbox in sorted(mailboxes, key=lambda m: (m.name != "INBOX", m.name)):
            if not any(p.fullmatch(mailbox.name) for p in patterns):
                continue
            if subscribed_only and not mailbox.subscribed:
                continue
            if special_only and not mailbox.special_use:
                continue
            prefix = mailbox.name + DELIMITER
            children = any(n.startswith(prefix) for n in names)
            attributes = [] if lsub else ["\\HasChildren" if children else "\\HasNoChildren"]
            if show_subscribed and mailbox.subscribed and not lsub:
                attributes.append("\\Subscribed")
            if mailbox.special_use and not lsub:
                attributes.append(mailbox.special_use)
            conn.untagged(
                f"{kind} ({' '.join(attributes)}) ",
                quoted(DELIMITER),
                b" ",
                mailbox_name(mailbox.name, conn.utf8),
            )
            if "STATUS" in args.return_options and args.status_items:
                self._status_response(conn, mailbox, args.status_items)
        return None

    async def _create(self, conn: ServerConnection, command: Command):
        name = _canonical(command.args.mailbox)
        _check_new_name(name)
        # RFC 9051 6.3.4: a trailing delimiter declares the intent to create
        # children under the name; the mailbox made is the name without it.
        name = _canonical(name.removesuffix(DELIMITER))
        special = command.args.special_use
        if len(special) > 1:
            raise Failure("One special use per mailbox", "USEATTR")
        if name == "INBOX":
            raise Failure("INBOX exists always", "ALREADYEXISTS")
        account_id = self._account_id

        def create(txn):
            if txn.mailbox(account_id, name) is not None:
                raise AlreadyExists(name)
            parts = name.split(DELIMITER)
            for depth in range(1, len(parts)):
                parent = DELIMITER.join(parts[:depth])
                if parent and txn.mailbox(account_id, _canonical(parent)) is None:
                    txn.create_mailbox(account_id, parent)
            return txn.create_mailbox(account_id, name, special[0] if special else None)

        try:
            await self._context.store.submit(create)
        except AlreadyExists:
            raise Failure(f"Mailbox {name} exists already", "ALREADYEXISTS") from None
        return None

    async def _delete(self, conn: ServerConnection, command: Command):
        name = _canonical(command.args.mailbox)
        if name == "INBOX":
            raise Failure("INBOX cannot be deleted", "CANNOT")
        mailbox = self._mailbox(name)
        account_id = self._account_id

        def delete(txn):
            current = txn.mailbox(account_id, name)
            if current is None:
                raise NotFound(name)
            txn.delete_mailbox(current)

        try:
            await self._context.store.submit(delete)
        except NotFound:
            raise Failure(f"No mailbox {name}", "NONEXISTENT") from None
        if self._selected is not None and self._selected.mailbox.id == mailbox.id:
            self._selected.highestmodseq = -1  # all of it gone: the next sync says so
        return None

    async def _rename(self, conn: ServerConnection, command: Command):
        old = _canonical(command.args.mailbox)
        new = _canonical(command.args.new_name)
        _check_new_name(new)
        new = _canonical(new.removesuffix(DELIMITER))
        if new == "INBOX":
            raise Failure("INBOX exists always", "ALREADYEXISTS")
        self._mailbox(old)
        account_id = self._account_id

        def rename(txn):
            if txn.mailbox(account_id, new) is not None:
                raise AlreadyExists(new)
            parts = new.split(DELIMITER)
            for depth in range(1, len(parts)):
                parent = DELIMITER.join(parts[:depth])
                if parent and parent != old and txn.mailbox(account_id, parent) is None:
                    txn.create_mailbox(account_id, parent)
            return txn.rename_mailbox(account_id, old, new, DELIMITER)

        try:
            await self._context.store.submit(rename)
        except AlreadyExists:
            raise Failure(f"Mailbox {new} exists already", "ALREADYEXISTS") from None
        except NotFound:
            raise Failure(f"No mailbox {old}", "NONEXISTENT") from None
        return None

    async def _subscribe(self, conn: ServerConnection, command: Command):
        name = _canonical(command.args.mailbox)
        self._mailbox(name)
        account_id = self._account_id
        subscribed = command.name == "SUBSCRIBE"

        def change(txn):
            mailbox = txn.mailbox(account_id, name)
            if mailbox is None:
                raise NotFound(name)
            return txn.set_subscribed(mailbox, subscribed)

        try:
            await self._context.store.submit(change)
        except NotFound:
            raise Failure(f"No mailbox {name}", "NONEXISTENT") from None
        return None

    def _status_response(self, conn: ServerConnection, mailbox: Mailbox, items) -> None:
        entries = None
        if {"UNSEEN", "SIZE", "DELETED"} & set(items):
            entries = self._context.store.read(lambda txn: txn.messages(mailbox.id))
        values = []
        for item in items:
            if item == "MESSAGES":
                value = mailbox.messages
            elif item == "UIDNEXT":
                value = mailbox.uidnext
            elif item == "UIDVALIDITY":
                value = mailbox.uidvalidity
            elif item == "UNSEEN":
                value = sum(1 for e in entries if "\\Seen" not in e.flags)
            elif item == "SIZE":
                value = sum(e.size for e in entries)
            elif item == "DELETED":
                value = sum(1 for e in entries if "\\Deleted" in e.flags)
            elif item == "HIGHESTMODSEQ":
                value = mailbox.highestmodseq
            elif item == "RECENT":
                value = 0
            elif item == "APPENDLIMIT":
                value = self._context.settings.limits.max_message_size
            else:
                continue
            values.append(f"{item} {value}")
        conn.untagged("STATUS ", mailbox_name(mailbox.name, conn.utf8), f" ({' '.join(values)})")

    async def _status(self, conn: ServerConnection, command: Command):
        mailbox = self._mailbox(command.args.mailbox)
        self._status_response(conn, mailbox, command.args.items)
        return None

    async def _append(self, conn: ServerConnection, command: Command):
        name = _canonical(command.args.mailbox)
        account_id = self._account_id
        if self._context.store.read(lambda txn: txn.mailbox(account_id, name)) is None:
            raise Failure(f"No mailbox {name}", "TRYCREATE")
        messages = [
            (
                m.data,
                tuple(f for f in m.flags if f != "\\Recent"),
                None if m.date is None else m.date.timestamp(),
                structure.analyze(m.data).to_record(),
            )
            for m in command.args.messages
        ]

        def append(txn):
            mailbox = txn.mailbox(account_id, name)
            if mailbox is None:
                raise NotFound(name)
            entries = [txn.append_message(mailbox, *message) for message in messages]
            return mailbox.uidvalidity, [e.uid for e in entries]

        try:
            uidvalidity, uids = await self._context.store.submit(append)
        except NotFound:
            raise Failure(f"No mailbox {name}", "TRYCREATE") from None
        return "APPEND completed", f"APPENDUID {uidvalidity} {SequenceSet.of(uids)}"

    # -- selecting -----------------------------------------------------------------------

    async def _select(self, conn: ServerConnection, command: Command):
        self._selected = None
        name = _canonical(command.args.mailbox)
        account_id = self._account_id

        def read(txn):
            mailbox = txn.mailbox(account_id, name)
            return mailbox, ([] if mailbox is None else txn.message_states(mailbox.id))

        mailbox, entries = self._context.store.read(read)
        if mailbox is None:
            raise Failure(f"No mailbox {name}", "NONEXISTENT")
        read_only = command.name == "EXAMINE"
        sel = Selected(mailbox, read_only, highestmodseq=mailbox.highestmodseq)
        for entry in entries:
            sel.uids.append(entry.uid)
            sel.known[entry.uid] = (entry.flags, entry.modseq)
        keywords = sorted({f for e in entries for f in e.flags if not f.startswith("\\")})
        flags = " ".join([*SYSTEM_FLAGS, *keywords])
        conn.untagged(f"{len(entries)} EXISTS")
        if "IMAP4rev2" not in conn.enabled:
            conn.untagged("0 RECENT")  # RFC 3501 7.3.2; gone from RFC 9051
        conn.untagged(f"FLAGS ({flags})")
        permanent = "" if read_only else f"{flags} \\*"
        conn.untagged(f"OK [PERMANENTFLAGS ({permanent})] Flags permitted")
        conn.untagged(f"OK [UIDVALIDITY {mailbox.uidvalidity}] UIDs valid")
        conn.untagged(f"OK [UIDNEXT {mailbox.uidnext}] Predicted next UID")
        conn.untagged(f"OK [HIGHESTMODSEQ {mailbox.highestmodseq}] Highest")
        if "IMAP4rev2" in conn.enabled:
            attributes = [mailbox.special_use] if mailbox.special_use else []
            conn.untagged(
                f"LIST ({' '.join(attributes)}) ",
                quoted(DELIMITER),
                b" ",
                mailbox_name(mailbox.name, conn.utf8),
            )
        qresync = command.args.qresync
        if qresync is not None and qresync.uidvalidity == mailbox.uidvalidity:
            # RFC 7162 3.2.5.1: what went and what changed since the client's modseq.
            # No tombstones are kept: every UID the client may know and that is
            # not here is reported, which 3.2.5.2 allows.
            known = qresync.known_uids or SequenceSet(((1, 0),))
            gone = _missing(known, sel.uids, mailbox.uidnext - 1)
            if gone:
                conn.untagged(f"VANISHED (EARLIER) {gone}")
            for seq, entry in enumerate(entries, 1):
                if entry.modseq > qresync.modseq:
                    conn.untagged(f"{seq} FETCH ({self._flags_items(conn, entry)})")
        self._selected = sel
        conn.selected(read_only)
        return None

    async def _close(self, conn: ServerConnection, command: Command):
        sel = self._require_selected()
        if command.name == "CLOSE" and not sel.read_only:
            mailbox_id = sel.mailbox.id

            def expunge(txn):
                deleted = [e.uid for e in txn.messages(mailbox_id) if "\\Deleted" in e.flags]
                return txn.expunge(mailbox_id, deleted) if deleted else []

            with contextlib.suppress(NotFound):  # deleted meanwhile: nothing to expunge
                await self._context.store.submit(expunge)
        self._selected = None
        return None

    async def _check(self, conn: ServerConnection, command: Command):
        return None

    async def _expunge(self, conn: ServerConnection, command: Command):
        sel = self._require_selected()
        if sel.read_only:
            raise Failure("Mailbox is read-only", "READ-ONLY")
        mailbox_id = sel.mailbox.id
        only = None
        if command.uid:
            only = {uid for _, uid in self._targets(command, command.args.uids)}

        def expunge(txn):
            deleted = [
                e.uid
                for e in txn.messages(mailbox_id)
                if "\\Deleted" in e.flags and (only is None or e.uid in only)
            ]
            return txn.expunge(mailbox_id, deleted) if deleted else []

        await self._context.store.submit(expunge)
        return None

    # -- messages ------------------------------------------------------------------------

    async def _fetch(self, conn: ServerConnection, command: Command):
        sel = self._require_selected()
        args = command.args
        targets = self._targets(command, args.sequence)
        items = list(args.items)
        if command.uid and FetchAttr("UID") not in items:
            items.insert(0, FetchAttr("UID"))
        if args.changed_since is not None and FetchAttr("MODSEQ") not in items:
            items.append(FetchAttr("MODSEQ"))
        condstore = "CONDSTORE" in conn.enabled
        if condstore and FetchAttr("FLAGS") in items and FetchAttr("MODSEQ") not in items:
            items.append(FetchAttr("MODSEQ"))
        sets_seen = not sel.read_only and any(
            (isinstance(i, FetchBody) and not i.peek)
            or i in (FetchAttr("RFC822"), FetchAttr("RFC822.TEXT"))
            for i in items
        )
        store = self._context.store
        mailbox_id = sel.mailbox.id
        uids = [uid for _, uid in targets]
        if sets_seen:

            def mark(txn):
                unseen = [
                    uid
                    for uid in uids
                    if (e := txn.message(mailbox_id, uid)) and "\\Seen" not in e.flags
                ]
                return txn.store_flags(mailbox_id, unseen, ["\\Seen"], "add")

            update = await store.submit(mark)
            changed = {e.uid for e in update.changed}
            if changed and FetchAttr("FLAGS") not in items:
                items.append(FetchAttr("FLAGS"))
        else:
            changed = set()
        if args.vanished:
            # RFC 7162 3.2.6; without tombstones, every missing UID of the set.
            gone = _missing(args.sequence, sel.uids, sel.mailbox.uidnext - 1)
            if gone:
                conn.untagged(f"VANISHED (EARLIER) {gone}")
        needs_message = any(
            isinstance(i, (FetchBody, FetchBinarySize))
            or i.name
            in ("ENVELOPE", "BODYSTRUCTURE", "BODY", "RFC822", "RFC822.HEADER", "RFC822.TEXT")
            for i in items
        )
        # Messages are read in batches, one short read transaction each (none
        # spans an await), and each batch's responses leave in one write under
        # the peer's flow control: up to 256 messages, or fewer once their
        # octets would pass a read chunk when bodies are asked for.
        budget = self._context.settings.read_chunk
        position = 0
        while position < len(targets):
            used = 0
            with store.reader(buffers=True) as txn:
                batch = targets[position : position + _FETCH_BATCH]
                found = None if needs_message else _entries_of(txn, mailbox_id, batch)
                for seq, uid in batch:
                    position += 1
                    entry = txn.message(mailbox_id, uid) if found is None else found.get(uid)
                    if entry is None:
                        continue  # expunged, its EXPUNGE not sent yet
                    if args.changed_since is not None and entry.modseq <= args.changed_since:
                        continue
                    message = None
                    if needs_message:
                        body = txn.blob(entry.blob_id) or b""
                        info = functools.partial(txn.blob_info, entry.blob_id)
                        message = StoredMessage(entry.head, body, info)
                        used += entry.size
                    parts = self._fetch_items(conn, entry, message, items)
                    if entry.uid in changed or FetchAttr("FLAGS") in items:
                        sel.known[entry.uid] = (entry.flags, entry.modseq)
                    conn.untagged(f"{seq} FETCH (", *parts, ")")
                    if used >= budget:
                        break
            await self.flush(conn)
        return None

    def _fetch_items(
        self, conn: ServerConnection, entry: MessageEntry, message: StoredMessage | None, items
    ) -> list[bytes | str | BodyStream]:
        out: list[bytes | str | BodyStream] = []
        for item in items:
            if out:
                out.append(" ")
            if isinstance(item, FetchAttr):
                name = item.name
                if name == "UID":
                    out.append(f"UID {entry.uid}")
                elif name == "FLAGS":
                    out.append(f"FLAGS ({' '.join(entry.flags)})")
                elif name == "INTERNALDATE":
                    out.append(f"INTERNALDATE {internal_date(entry.internal_date)}")
                elif name == "RFC822.SIZE":
                    out.append(f"RFC822.SIZE {entry.size}")
                elif name == "MODSEQ":
                    out.append(f"MODSEQ ({entry.modseq})")
                elif name == "ENVELOPE":
                    out += ["ENVELOPE ", message.envelope()]
                elif name == "BODYSTRUCTURE":
                    rev2 = "IMAP4rev2" in conn.enabled
                    out += ["BODYSTRUCTURE ", message.bodystructure(True, rev2)]
                elif name == "BODY":
                    out += ["BODY ", message.bodystructure(False, False)]
                elif name == "RFC822":
                    out += ["RFC822 ", *self._literal(entry, message, message.whole())]
                elif name == "RFC822.HEADER":
                    ranges = message.section((), "HEADER")
                    out += ["RFC822.HEADER ", *self._literal(entry, message, ranges)]
                elif name == "RFC822.TEXT":
                    ranges = message.section((), "TEXT")
                    out += ["RFC822.TEXT ", *self._literal(entry, message, ranges)]
                else:
                    out.pop() if out else None
            elif isinstance(item, FetchBinarySize):
                try:
                    size = message.binary_size(item.part)
                except structure.UnknownTransferEncoding:
                    raise Failure("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
                out.append(f"{item.label()} {size}")
            else:
                out += [item.label(), " ", *self._body_item(entry, message, item)]
        return out

    def _literal(
        self, entry: MessageEntry, message: StoredMessage, ranges, binary: bool = False
    ) -> list[bytes | BodyStream]:
        """A literal of the message's octets at `ranges`: copied now when small,
        streamed from the store when it is longer than one read chunk."""
        size = ranges_size(ranges)
        if size > self._context.settings.read_chunk:
            data = BodyStream(entry.blob_id, message.head, ranges, size, binary)
        else:
            data = message.octets(ranges)
            if binary:
                binary = b"\0" in data
            else:
                data = without_nul(data)
        return [literal_header(size, binary), data]

    def _body_item(
        self, entry: MessageEntry, message: StoredMessage, item: FetchBody
    ) -> list[bytes | BodyStream]:
        section = item.section
        if item.binary:
            try:
                content = message.binary(section.part)
            except structure.UnknownTransferEncoding:
                raise Failure("Unknown Content-Transfer-Encoding", "UNKNOWN-CTE") from None
            if isinstance(content, bytes):
                if item.partial is not None:
                    start, count = item.partial
                    content = content[start : start + count]
                return [literal_header(len(content), b"\0" in content), content]
            ranges = content
        else:
            ranges = message.section(section.part, section.text, section.fields)
        if item.partial is not None:
            start, count = item.partial
            ranges = structure.slice_ranges(ranges, start, count)
        return self._literal(entry, message, ranges, binary=item.binary)

    async def _store(self, conn: ServerConnection, command: Command):
        sel = self._require_selected()
        if sel.read_only:
            raise Failure("Mailbox is read-only", "READ-ONLY")
        args = command.args
        targets = self._targets(command, args.sequence)
        mode = {"replace": "set", "add": "add", "remove": "remove"}[args.action]
        flags = [f for f in args.flags if f != "\\Recent"]
        mailbox_id = sel.mailbox.id
        uids = [uid for _, uid in targets]

        def store(txn):
            update = txn.store_flags(mailbox_id, uids, flags, mode, args.unchanged_since)
            entries = {uid: txn.message(mailbox_id, uid) for uid in uids}
            return update, entries

        update, entries = await self._context.store.submit(store)
        refused = set(update.refused)
        changed = {e.uid for e in update.changed}
        for seq, uid in targets:
            entry = entries.get(uid)
            if entry is None or uid in refused:
                continue
            sel.known[uid] = (entry.flags, entry.modseq)
            if args.silent and not (uid in changed and args.unchanged_since is not None):
                continue
            if args.silent:
                conn.untagged(f"{seq} FETCH (UID {uid} MODSEQ ({entry.modseq}))")
            else:
                conn.untagged(f"{seq} FETCH ({self._flags_items(conn, entry, command.uid)})")
        if refused:
            numbers = [uid if command.uid else seq for seq, uid in targets if uid in refused]
            return "Conditional STORE failed", f"MODIFIED {SequenceSet.of(numbers)}"
        return None

    async def _copy(self, conn: ServerConnection, command: Command):
        sel = self._require_selected()
        move = command.name == "MOVE"
        if move and sel.read_only:
            raise Failure("Mailbox is read-only", "READ-ONLY")
        name = _canonical(command.args.mailbox)
        targets = self._targets(command, command.args.sequence)
        uids = [uid for _, uid in targets]
        source_id = sel.mailbox.id
        account_id = self._account_id

        rescued = sel.mailbox.special_use == "\\Junk"

        def copy(txn):
            target = txn.mailbox(account_id, name)
            if target is None:
                raise NotFound(name)
            if rescued and target.special_use not in ("\\Junk", "\\Trash"):
                txn.remember_not_junk(account_id, _authors(txn, source_id, uids))
            operation = txn.move_messages if move else txn.copy_messages
            return target.uidvalidity, operation(source_id, uids, target)

        try:
            uidvalidity, pairs = await self._context.store.submit(copy)
        except NotFound:
            raise Failure(f"No mailbox {name}", "TRYCREATE") from None
        if not pairs:
            return None
        code = (
            f"COPYUID {uidvalidity} {SequenceSet.of(s for s, _ in pairs)} "
            f"{SequenceSet.of(d for _, d in pairs)}"
        )
        if move:
            conn.untagged(f"OK [{code}] Moved")  # RFC 6851 4.3: before the EXPUNGEs
            return None
        return "COPY completed", code

    async def _search(self, conn: ServerConnection, command: Command):
        sel = self._require_selected()
        args = command.args
        mailbox_id = sel.mailbox.id
        count = len(sel.uids)
        largest_uid = sel.uids[-1] if sel.uids else 0
        needles: dict[str, str] = {}  # each search string normalised once
        matched: list[tuple[int, MessageEntry]] = []
        # Batches of messages per short read transaction, as FETCH reads them;
        # bodies are searched in the map where they lie, never copied whole.
        for first in range(0, count, _FETCH_BATCH):
            with self._context.store.reader(buffers=True) as txn:
                for seq in range(first + 1, min(count, first + _FETCH_BATCH) + 1):
                    entry = txn.message(mailbox_id, sel.uids[seq - 1])
                    if entry is None:
                        continue
                    matcher = _Matcher(self, txn, entry, seq, count, largest_uid, needles)
                    if matcher.match(args.key):
                        matched.append((seq, entry))
        numbers = [e.uid if command.uid else seq for seq, e in matched]
        options = args.return_options
        if options is None and "IMAP4rev2" in conn.enabled:
            options = ("ALL",)
        modseq = None
        if _uses_modseq(args.key) and matched:
            modseq = max(e.modseq for _, e in matched)
        if options is None:
            text = " ".join(["SEARCH", *map(str, numbers)])
            if modseq is not None:
                text += f" (MODSEQ {modseq})"
            conn.untagged(text)
            return None
        if "SAVE" in options:
            sel.saved = [e.uid for _, e in matched]
            options = tuple(o for o in options if o != "SAVE")
            if not options:
                return None
        if not options:
            options = ("ALL",)
        parts = [f'ESEARCH (TAG "{command.tag}")']
        if command.uid:
            parts.append("UID")
        if "MIN" in options and numbers:
            parts.append(f"MIN {min(numbers)}")
        if "MAX" in options and numbers:
            parts.append(f"MAX {max(numbers)}")
        if "COUNT" in options:
            parts.append(f"COUNT {len(numbers)}")
        if "ALL" in options and numbers:
            parts.append(f"ALL {SequenceSet.of(numbers)}")
        if modseq is not None:
            parts.append(f"MODSEQ {modseq}")
        conn.untagged(" ".join(parts))
        return None


class _Matcher:
    """One message against a search key (RFC 9051 6.4.4), inside a read transaction."""

    def __init__(
        self,
        session: ImapSession,
        txn,
        entry: MessageEntry,
        seq: int,
        count: int,
        largest: int,
        needles: dict[str, str],
    ):
        self.session = session
        self.txn = txn
        self.entry = entry
        self.seq = seq
        self.count = count
        self.largest = largest
        self.needles = needles
        self._message: StoredMessage | None = None

    def message(self) -> StoredMessage:
        if self._message is None:
            blob_id = self.entry.blob_id
            body = self.txn.blob(blob_id) or b""
            info = functools.partial(self.txn.blob_info, blob_id)
            self._message = StoredMessage(self.entry.head, body, info)
        return self._message

    def needle(self, value: str) -> str:
        found = self.needles.get(value)
        if found is None:
            found = self.needles[value] = text.search_key(value)
        return found

    def header_contains(self, field: str, value: str) -> bool:
        if not field:
            return False  # RFC 5322 3.6.8: no field has an empty name (Dovecot: no match)
        message = self.message()
        needle = self.needle(value)
        if text.header_contains(message.body, message.structure, field, needle):
            return True
        # The trace fields delivery put in front (Received:, Return-Path:).
        head = message.head
        if not head or field.lower().encode() + b":" not in head.lower():
            return False
        return text.header_contains(head, analyze(head), field, needle)

    def text_contains(self, value: str, body_only: bool) -> bool:
        message = self.message()
        needle = self.needle(value)
        if body_only:
            return text.body_contains(message.body, message.structure, needle)
        if text.text_contains(message.body, message.structure, needle):
            return True
        head = message.head
        return bool(head) and text.text_contains(head, analyze(head), needle)

    def match(self, key: SearchKey) -> bool:
        entry = self.entry
        if isinstance(key, SearchAll):
            return True
        if isinstance(key, SearchAnd):
            return all(self.match(k) for k in key.keys)
        if isinstance(key, SearchOr):
            return self.match(key.left) or self.match(key.right)
        if isinstance(key, SearchNot):
            return not self.match(key.key)
        if isinstance(key, SearchFlag):
            if key.flag == "\\Recent":
                return not key.present
            has = key.flag.lower() in (f.lower() for f in entry.flags)
            return has == key.present
        if isinstance(key, SearchSize):
            return entry.size > key.size if key.larger else entry.size < key.size
        if isinstance(key, SearchSequence):
            sequence = key.sequence
            if sequence.saved:
                return entry.uid in self.session._selected.saved
            if key.uid:
                return sequence.contains(entry.uid, self.largest)
            return sequence.contains(self.seq, self.count)
        if isinstance(key, SearchModSeq):
            return entry.modseq >= key.modseq
        if isinstance(key, SearchDate):
            if key.field == "internal":
                day = datetime.fromtimestamp(entry.internal_date, UTC).date()
            else:
                message = self.message()
                values = text.header_values(message.body, message.structure, "Date")
                try:
                    day = parsedate_to_datetime(values[0]).date()
                except (IndexError, TypeError, ValueError):
                    return False
            if key.comparison == "before":
                return day < key.date
            if key.comparison == "on":
                return day == key.date
            return day >= key.date
        if isinstance(key, SearchHeader):
            return self.header_contains(key.field, key.value)
        if isinstance(key, SearchText):
            return self.text_contains(key.value, key.body_only)
        return False


def _check_new_name(name: str) -> None:
    """A name a new mailbox may take (names.py), else NO [CANNOT] (RFC 5530)."""
    error = mailbox_name_error(name, DELIMITER)
    if error is not None:
        raise Failure(error, "CANNOT")


def _entries_of(txn, mailbox_id: int, batch: list[tuple[int, int]]) -> dict[int, MessageEntry]:
    """The entries of a batch of (sequence number, UID), ascending: one cursor
    walk over their UID range when it is dense, else one lookup each."""
    if not batch:
        return {}
    first, last = batch[0][1], batch[-1][1]
    if last - first < 2 * len(batch):
        return {e.uid: e for e in txn.messages(mailbox_id, first, last)}
    return {uid: e for _, uid in batch if (e := txn.message(mailbox_id, uid)) is not None}


def _missing(sequence: SequenceSet, present: list[int], largest: int) -> str:
    """The UIDs of sequence up to largest that are not in present (ascending), as a set."""
    gaps: list[str] = []
    for low, high in sequence.resolve(largest):
        low, high = max(low, 1), min(high, largest)
        if low > high:
            continue
        start = bisect.bisect_left(present, low)
        stop = bisect.bisect_right(present, high)
        cursor = low
        for uid in present[start:stop]:
            if uid > cursor:
                gaps.append(str(cursor) if uid - 1 == cursor else f"{cursor}:{uid - 1}")
            cursor = uid + 1
        if cursor <= high:
            gaps.append(str(cursor) if cursor == high else f"{cursor}:{high}")
    return ",".join(gaps)


def _uses_modseq(key: SearchKey) -> bool:
    if isinstance(key, SearchModSeq):
        return True
    if isinstance(key, SearchAnd):
        return any(_uses_modseq(k) for k in key.keys)
    if isinstance(key, SearchOr):
        return _uses_modseq(key.left) or _uses_modseq(key.right)
    if isinstance(key, SearchNot):
        return _uses_modseq(key.key)
    return False


_COMMANDS = {
    "NOOP": ImapSession._noop,
    "CHECK": ImapSession._check,
    "ID": ImapSession._id,
    "NAMESPACE": ImapSession._namespace,
    "LIST": ImapSession._list,
    "LSUB": ImapSession._list,
    "CREATE": ImapSession._create,
    "DELETE": ImapSession._delete,
    "RENAME": ImapSession._rename,
    "SUBSCRIBE": ImapSession._subscribe,
    "UNSUBSCRIBE": ImapSession._subscribe,
    "STATUS": ImapSession._status,
    "APPEND": ImapSession._append,
    "SELECT": ImapSession._select,
    "EXAMINE": ImapSession._select,
    "CLOSE": ImapSession._close,
    "UNSELECT": ImapSession._close,
    "EXPUNGE": ImapSession._expunge,
    "FETCH": ImapSession._fetch,
    "STORE": ImapSession._store,
    "COPY": ImapSession._copy,
    "MOVE": ImapSession._copy,
    "SEARCH": ImapSession._search,
}


def _authors(txn, mailbox_id: int, uids: list[int]) -> list[str]:
    """The From addresses of the messages, from the structure stored at delivery."""
    found = []
    for uid in uids:
        entry = txn.message(mailbox_id, uid)
        record = entry and txn.blob_info(entry.blob_id)
        if record is None:
            continue
        try:
            envelope = structure.Structure.from_record(record).root.envelope
        except structure.RecordError:
            continue
        found += envelope.authors if envelope else []
    return found
