"""Operations on one LMDB transaction: the only code that knows keys and encodings.

Key layout (integers big-endian so that cursors walk them in order):

    meta           name                         -> msgpack int (schema, counters)
    domains        domain                       -> {created}
    accounts       address                      -> {id, password, created}
    aliases        address | "@" domain         -> {targets, created}
    mailbox_names  u64 account id + name        -> u64 mailbox id
    mailboxes      u64 mailbox id               -> mailbox record
    messages       u64 mailbox id + u32 uid     -> message record
    blobs          u64 blob id                  -> raw message bytes, written once
    blob_refs      u64 blob id                  -> msgpack int reference count
    blob_info      u64 blob id                  -> what delivery learned of the body
                                                   (its MIME structure), opaque here
    queue          u64 queue id                 -> outbound record
"""

from __future__ import annotations

import dataclasses
import struct
import time
from collections.abc import Iterable, Iterator

import lmdb
import msgpack

from appliance.store.errors import AlreadyExists, InUse, NotFound
from appliance.store.records import (
    DEFAULT_MAILBOXES,
    Account,
    Alias,
    Delivery,
    Domain,
    FlagUpdate,
    Mailbox,
    MessageEntry,
    MessageState,
    QueuedMessage,
)

DATABASES = (
    "meta",
    "domains",
    "accounts",
    "aliases",
    "mailbox_names",
    "mailboxes",
    "messages",
    "blobs",
    "blob_refs",
    "blob_info",
    "queue",
    "not_junk",
)

_U64 = struct.Struct(">Q")
_U64_U32 = struct.Struct(">QI")

pack = msgpack.Packer(use_bin_type=True).pack


def _unpack(value: bytes | memoryview) -> object:
    return msgpack.unpackb(value, raw=False)


def _account_from(address: str, record: dict) -> Account:
    return Account(
        address, record["id"], record["password"], record["created"], record.get("admin", False)
    )


def _not_junk_key(account_id: int, sender: str) -> bytes:
    return _U64.pack(account_id) + sender.encode()


def _text(key: str) -> bytes:
    return key.encode("utf-8")


class Transaction:
    """A read or write transaction, seen as operations on records.

    Instances come from `Store.reader()`, `Store.apply()` and `Store.submit()`;
    they must not outlive the call that produced them.
    """

    __slots__ = ("_txn", "_dbs", "touched")

    def __init__(self, txn: lmdb.Transaction, dbs: dict[str, lmdb._Database]):
        self._txn = txn
        self._dbs = dbs
        # Mailboxes whose record this transaction wrote: every change to a
        # mailbox's messages goes through its record (UIDNEXT, HIGHESTMODSEQ).
        self.touched: set[int] = set()

    # -- low level -----------------------------------------------------------------

    def _get(self, db: str, key: bytes) -> object | None:
        value = self._txn.get(key, db=self._dbs[db])
        return None if value is None else _unpack(value)

    def _put(self, db: str, key: bytes, value: object) -> None:
        self._txn.put(key, pack(value), db=self._dbs[db])

    def _delete(self, db: str, key: bytes) -> None:
        self._txn.delete(key, db=self._dbs[db])

    def _scan(
        self, db: str, prefix: bytes = b"", start: bytes = b""
    ) -> Iterator[tuple[bytes, bytes]]:
        """Records whose keys start with `prefix`, in key order, from `start` on."""
        cursor = self._txn.cursor(db=self._dbs[db])
        if not cursor.set_range(max(prefix, start)):
            return
        for key, value in cursor:
            key = bytes(key)
            if not key.startswith(prefix):
                return
            yield key, value

    def counts(self) -> dict[str, int]:
        """Records per database; walking them all is a cheap integrity check."""
        return {name: self._txn.stat(db)["entries"] for name, db in self._dbs.items()}

    def next_id(self, counter: str) -> int:
        value = (self.meta(counter) or 0) + 1
        self.set_meta(counter, value)
        return value

    def meta(self, name: str) -> int | None:
        return self._get("meta", _text(name))

    def set_meta(self, name: str, value: int) -> None:
        self._put("meta", _text(name), value)

    # -- domains ---------------------------------------------------------------------

    def domain(self, name: str) -> Domain | None:
        record = self._get("domains", _text(name))
        return None if record is None else Domain(name, record["created"])

    def domains(self) -> list[Domain]:
        return [Domain(k.decode(), _unpack(v)["created"]) for k, v in self._scan("domains")]

    def add_domain(self, name: str) -> Domain:
        if self.domain(name) is not None:
            raise AlreadyExists(f"domain {name} already exists")
        created = time.time()
        self._put("domains", _text(name), {"created": created})
        return Domain(name, created)

    def remove_domain(self, name: str) -> None:
        if self.domain(name) is None:
            raise NotFound(f"no domain {name}")
        suffix = "@" + name
        users = [a.address for a in self.accounts() if a.address.endswith(suffix)]
        if users:
            raise InUse(f"domain {name} still has {len(users)} account(s): {users[0]} ...")
        for alias in self.aliases():
            if alias.source.endswith(suffix):
                self._delete("aliases", _text(alias.source))
        self._delete("domains", _text(name))

    # -- accounts --------------------------------------------------------------------

    def account(self, address: str) -> Account | None:
        record = self._get("accounts", _text(address))
        return None if record is None else _account_from(address, record)

    def accounts(self) -> list[Account]:
        return [_account_from(k.decode(), _unpack(v)) for k, v in self._scan("accounts")]

    def add_account(self, address: str, password_hash: str, admin: bool = False) -> Account:
        domain = address.rpartition("@")[2]
        if self.domain(domain) is None:
            raise NotFound(f"no domain {domain}; add it first")
        if self.account(address) is not None:
            raise AlreadyExists(f"account {address} already exists")
        if self._get("aliases", _text(address)) is not None:
            raise AlreadyExists(f"{address} is an alias")
        account = Account(address, self.next_id("account"), password_hash, time.time(), admin)
        self._put_account(account)
        for name, special_use in DEFAULT_MAILBOXES:
            self.create_mailbox(account.id, name, special_use)
        return account

    def _put_account(self, account: Account) -> None:
        record = {"id": account.id, "password": account.password_hash, "created": account.created}
        if account.admin:
            record["admin"] = True
        self._put("accounts", _text(account.address), record)

    def _existing_account(self, address: str) -> Account:
        account = self.account(address)
        if account is None:
            raise NotFound(f"no account {address}")
        return account

    def set_password(self, address: str, password_hash: str) -> None:
        account = self._existing_account(address)
        self._put_account(dataclasses.replace(account, password_hash=password_hash))

    def set_admin(self, address: str, admin: bool) -> None:
        account = self._existing_account(address)
        self._put_account(dataclasses.replace(account, admin=admin))

    def remove_account(self, address: str) -> None:
        account = self._existing_account(address)
        for mailbox in self.mailboxes(account.id):
            self.delete_mailbox(mailbox)
        for sender in self.not_junk_senders(account.id):
            self._delete("not_junk", _not_junk_key(account.id, sender))
        self._delete("accounts", _text(address))

    # -- what a user took out of Junk ------------------------------------------------

    def remember_not_junk(self, account_id: int, senders: Iterable[str]) -> None:
        """The user moved mail from these senders out of Junk: remember it."""
        now = time.time()
        for sender in {s.lower() for s in senders if s}:
            key = _not_junk_key(account_id, sender)
            record = self._get("not_junk", key) or {"since": now, "count": 0}
            self._put("not_junk", key, {**record, "count": record["count"] + 1, "last": now})

    def is_not_junk(self, account_id: int, sender: str) -> bool:
        return self._get("not_junk", _not_junk_key(account_id, sender.lower())) is not None

    def not_junk_senders(self, account_id: int) -> list[str]:
        prefix = _U64.pack(account_id)
        return [bytes(key[len(prefix) :]).decode() for key, _ in self._scan("not_junk", prefix)]

    # -- aliases ---------------------------------------------------------------------

    def alias(self, source: str) -> Alias | None:
        record = self._get("aliases", _text(source))
        if record is None:
            return None
        return Alias(source, tuple(record["targets"]), record["created"])

    def aliases(self) -> list[Alias]:
        out = []
        for key, value in self._scan("aliases"):
            record = _unpack(value)
            out.append(Alias(key.decode(), tuple(record["targets"]), record["created"]))
        return out

    def add_alias(self, source: str, targets: Iterable[str]) -> Alias:
        """Add an alias, or add targets to an existing one."""
        domain = source.rpartition("@")[2]
        if self.domain(domain) is None:
            raise NotFound(f"no domain {domain}; add it first")
        if self.account(source) is not None:
            raise AlreadyExists(f"{source} is an account")
        existing = self.alias(source)
        merged = list(existing.targets) if existing else []
        new = [t for t in targets if t not in merged]
        if existing and not new:
            raise AlreadyExists(f"alias {source} already has these targets")
        merged.extend(new)
        created = existing.created if existing else time.time()
        self._put("aliases", _text(source), {"targets": merged, "created": created})
        return Alias(source, tuple(merged), created)

    def remove_alias(self, source: str, targets: Iterable[str] = ()) -> None:
        """Remove an alias, or only some of its targets."""
        existing = self.alias(source)
        if existing is None:
            raise NotFound(f"no alias {source}")
        drop = set(targets)
        unknown = drop - set(existing.targets)
        if unknown:
            raise NotFound(f"alias {source} has no target {sorted(unknown)[0]}")
        kept = [t for t in existing.targets if t not in drop] if drop else []
        if kept:
            self._put("aliases", _text(source), {"targets": kept, "created": existing.created})
        else:
            self._delete("aliases", _text(source))

    # -- mailboxes -------------------------------------------------------------------

    def _mailbox_from(self, mailbox_id: int, record: dict) -> Mailbox:
        return Mailbox(
            id=mailbox_id,
            account_id=record["account"],
            name=record["name"],
            special_use=record["special_use"],
            uidvalidity=record["uidvalidity"],
            uidnext=record["uidnext"],
            highestmodseq=record["highestmodseq"],
            messages=record["messages"],
            subscribed=record["subscribed"],
        )

    def _put_mailbox(self, mailbox: Mailbox) -> None:
        self.touched.add(mailbox.id)
        self._put(
            "mailboxes",
            _U64.pack(mailbox.id),
            {
                "account": mailbox.account_id,
                "name": mailbox.name,
                "special_use": mailbox.special_use,
                "uidvalidity": mailbox.uidvalidity,
                "uidnext": mailbox.uidnext,
                "highestmodseq": mailbox.highestmodseq,
                "messages": mailbox.messages,
                "subscribed": mailbox.subscribed,
            },
        )

    def mailbox(self, account_id: int, name: str) -> Mailbox | None:
        raw = self._txn.get(_U64.pack(account_id) + _text(name), db=self._dbs["mailbox_names"])
        if raw is None:
            return None
        return self.mailbox_by_id(_U64.unpack(raw)[0])

    def mailbox_by_id(self, mailbox_id: int) -> Mailbox | None:
        record = self._get("mailboxes", _U64.pack(mailbox_id))
        return None if record is None else self._mailbox_from(mailbox_id, record)

    def mailboxes(self, account_id: int) -> list[Mailbox]:
        out = []
        for _, value in self._scan("mailbox_names", _U64.pack(account_id)):
            mailbox = self.mailbox_by_id(_U64.unpack(value)[0])
            if mailbox is not None:
                out.append(mailbox)
        return out

    def create_mailbox(self, account_id: int, name: str, special_use: str | None = None) -> Mailbox:
        if self.mailbox(account_id, name) is not None:
            raise AlreadyExists(f"mailbox {name} already exists")
        # RFC 3501 2.3.1.1: a UIDVALIDITY is never reused for a mailbox name, so
        # it comes from a counter that only grows, seeded from the clock.
        uidvalidity = max(int(time.time()), (self.meta("uidvalidity") or 0) + 1) & 0xFFFFFFFF
        self.set_meta("uidvalidity", uidvalidity)
        mailbox = Mailbox(
            id=self.next_id("mailbox"),
            account_id=account_id,
            name=name,
            special_use=special_use,
            uidvalidity=uidvalidity,
            uidnext=1,
            highestmodseq=1,
            messages=0,
            subscribed=True,
        )
        self._put_mailbox(mailbox)
        self._txn.put(
            _U64.pack(account_id) + _text(name),
            _U64.pack(mailbox.id),
            db=self._dbs["mailbox_names"],
        )
        return mailbox

    def rename_mailbox(self, account_id: int, old: str, new: str, delimiter: str = "/") -> Mailbox:
        """Rename a mailbox and the ones below it in the hierarchy.

        INBOX is special (RFC 9051 6.3.6): its messages move to a new mailbox
        of the new name and INBOX stays, empty.
        """
        mailbox = self.mailbox(account_id, old)
        if mailbox is None:
            raise NotFound(f"no mailbox {old}")
        if self.mailbox(account_id, new) is not None:
            raise AlreadyExists(f"mailbox {new} already exists")
        if old == "INBOX":
            target = self.create_mailbox(account_id, new)
            uids = [m.uid for m in self.messages(mailbox.id)]
            self.move_messages(mailbox.id, uids, target)
            return self.mailbox_by_id(target.id)
        renamed = None
        prefix = old + delimiter
        for each in self.mailboxes(account_id):
            if each.name != old and not each.name.startswith(prefix):
                continue
            name = new + each.name[len(old) :]
            if each.name != old and self.mailbox(account_id, name) is not None:
                raise AlreadyExists(f"mailbox {name} already exists")
            self._delete("mailbox_names", _U64.pack(account_id) + _text(each.name))
            moved = dataclasses.replace(each, name=name)
            self._put_mailbox(moved)
            self._txn.put(
                _U64.pack(account_id) + _text(name),
                _U64.pack(each.id),
                db=self._dbs["mailbox_names"],
            )
            if each.id == mailbox.id:
                renamed = moved
        return renamed

    def set_subscribed(self, mailbox: Mailbox, subscribed: bool) -> Mailbox:
        updated = dataclasses.replace(mailbox, subscribed=subscribed)
        self._put_mailbox(updated)
        return updated

    def delete_mailbox(self, mailbox: Mailbox) -> None:
        prefix = _U64.pack(mailbox.id)
        for key, value in list(self._scan("messages", prefix)):
            self._release_blob(_unpack(value)["blob"])
            self._txn.delete(key, db=self._dbs["messages"])
        self._delete("mailboxes", prefix)
        self.touched.add(mailbox.id)
        self._delete("mailbox_names", _U64.pack(mailbox.account_id) + _text(mailbox.name))

    # -- messages and blobs ----------------------------------------------------------

    def messages(
        self, mailbox_id: int, first_uid: int = 1, last_uid: int | None = None
    ) -> list[MessageEntry]:
        """The mailbox's messages in UID order, those from first_uid to last_uid."""
        out = []
        start = _U64_U32.pack(mailbox_id, first_uid)
        for key, value in self._scan("messages", _U64.pack(mailbox_id), start):
            uid = _U64_U32.unpack(key)[1]
            if last_uid is not None and uid > last_uid:
                break
            out.append(self._entry_from((mailbox_id, uid), _unpack(value)))
        return out

    def message_states(self, mailbox_id: int) -> list[MessageState]:
        """(UID, flags, modseq) of every message in UID order: what opening a
        mailbox needs, read without building whole entries."""
        out = []
        for key, value in self._scan("messages", _U64.pack(mailbox_id)):
            record = _unpack(value)
            uid = _U64_U32.unpack(key)[1]
            out.append(MessageState(uid, tuple(record["flags"]), record["modseq"]))
        return out

    @staticmethod
    def _entry_from(key: tuple[int, int], record: dict) -> MessageEntry:
        return MessageEntry(
            mailbox_id=key[0],
            uid=key[1],
            blob_id=record["blob"],
            head=record["head"],
            flags=tuple(record["flags"]),
            internal_date=record["date"],
            modseq=record["modseq"],
            size=record["size"],
        )

    def expunge(self, mailbox_id: int, uids: Iterable[int]) -> list[int]:
        """Remove messages from a mailbox for good; the UIDs that were there.

        Each removal takes a new modseq, as RFC 7162 3.2.7 asks of an
        expunge, so the mailbox's HIGHESTMODSEQ moves past all of them.
        """
        mailbox = self.mailbox_by_id(mailbox_id)
        if mailbox is None:
            raise NotFound(f"no mailbox {mailbox_id}")
        removed = []
        for uid in uids:
            key = _U64_U32.pack(mailbox_id, uid)
            record = self._get("messages", key)
            if record is None:
                continue
            self._release_blob(record["blob"])
            self._delete("messages", key)
            removed.append(uid)
        if removed:
            self._put_mailbox(
                dataclasses.replace(
                    mailbox,
                    highestmodseq=mailbox.highestmodseq + len(removed),
                    messages=mailbox.messages - len(removed),
                )
            )
        return removed

    def blob(self, blob_id: int) -> bytes | memoryview | None:
        """The body bytes; a memoryview into the map when the reader asked for buffers."""
        return self._txn.get(_U64.pack(blob_id), db=self._dbs["blobs"])

    def blob_info(self, blob_id: int) -> object | None:
        """The record stored with the body when it arrived (None for bodies
        stored before there was one): readers use it instead of parsing again."""
        return self._get("blob_info", _U64.pack(blob_id))

    def _put_blob(self, blob_id: int, body: bytes | memoryview, refs: int, info: object) -> None:
        key = _U64.pack(blob_id)
        self._txn.put(key, body, db=self._dbs["blobs"])
        self._put("blob_refs", key, refs)
        if info is not None:
            self._put("blob_info", key, info)

    def blob_refs(self, blob_id: int) -> int:
        return self._get("blob_refs", _U64.pack(blob_id)) or 0

    def _release_blob(self, blob_id: int) -> None:
        key = _U64.pack(blob_id)
        refs = (self._get("blob_refs", key) or 1) - 1
        if refs > 0:
            self._put("blob_refs", key, refs)
        else:
            self._delete("blob_refs", key)
            self._delete("blobs", key)
            self._delete("blob_info", key)

    def append(
        self,
        mailbox: Mailbox,
        blob_id: int,
        head: bytes,
        size: int,
        flags: tuple[str, ...] = (),
        internal_date: float | None = None,
    ) -> MessageEntry:
        """Add a message entry for an already stored blob; the caller holds a reference."""
        current = self.mailbox_by_id(mailbox.id) or mailbox
        entry = MessageEntry(
            mailbox_id=current.id,
            uid=current.uidnext,
            blob_id=blob_id,
            head=head,
            flags=flags,
            internal_date=time.time() if internal_date is None else internal_date,
            modseq=current.highestmodseq + 1,
            size=size,
        )
        self._put_entry(entry)
        self._put_mailbox(
            dataclasses.replace(
                current,
                uidnext=current.uidnext + 1,
                highestmodseq=entry.modseq,
                messages=current.messages + 1,
            )
        )
        return entry

    def _put_entry(self, entry: MessageEntry) -> None:
        self._put(
            "messages",
            _U64_U32.pack(entry.mailbox_id, entry.uid),
            {
                "blob": entry.blob_id,
                "head": entry.head,
                "flags": list(entry.flags),
                "date": entry.internal_date,
                "modseq": entry.modseq,
                "size": entry.size,
            },
        )

    def message(self, mailbox_id: int, uid: int) -> MessageEntry | None:
        record = self._get("messages", _U64_U32.pack(mailbox_id, uid))
        return None if record is None else self._entry_from((mailbox_id, uid), record)

    def store_flags(
        self,
        mailbox_id: int,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: str,
        unchanged_since: int | None = None,
    ) -> FlagUpdate:
        """Set ("set"), add ("add") or remove ("remove") flags on messages.

        Every message whose flags change takes one new modseq, shared by this
        call (RFC 7162 3.1: each STORE gets a modseq of its own). With
        unchanged_since (RFC 7162 3.1.3), a message modified after it is left
        alone and reported in `refused`.
        """
        mailbox = self.mailbox_by_id(mailbox_id)
        if mailbox is None:
            raise NotFound(f"no mailbox {mailbox_id}")
        wanted = list(dict.fromkeys(flags))
        modseq = mailbox.highestmodseq + 1
        changed: list[MessageEntry] = []
        refused: list[int] = []
        for uid in uids:
            entry = self.message(mailbox_id, uid)
            if entry is None:
                continue
            if unchanged_since is not None and entry.modseq > unchanged_since:
                refused.append(uid)
                continue
            if mode == "set":
                new = tuple(wanted)
            elif mode == "add":
                new = entry.flags + tuple(f for f in wanted if f not in entry.flags)
            elif mode == "remove":
                new = tuple(f for f in entry.flags if f not in wanted)
            else:
                raise ValueError(f"unknown flag mode {mode!r}")
            if set(new) == set(entry.flags):
                continue
            updated = dataclasses.replace(entry, flags=new, modseq=modseq)
            self._put_entry(updated)
            changed.append(updated)
        if changed:
            self._put_mailbox(dataclasses.replace(mailbox, highestmodseq=modseq))
        return FlagUpdate(tuple(changed), tuple(refused))

    def copy_messages(
        self, source_id: int, uids: Iterable[int], target: Mailbox
    ) -> list[tuple[int, int]]:
        """Copy messages into target, sharing their bodies; (source UID, new UID) pairs."""
        pairs = []
        for uid in uids:
            entry = self.message(source_id, uid)
            if entry is None:
                continue
            key = _U64.pack(entry.blob_id)
            self._put("blob_refs", key, (self._get("blob_refs", key) or 0) + 1)
            copy = self.append(
                target, entry.blob_id, entry.head, entry.size, entry.flags, entry.internal_date
            )
            pairs.append((uid, copy.uid))
        return pairs

    def move_messages(
        self, source_id: int, uids: Iterable[int], target: Mailbox
    ) -> list[tuple[int, int]]:
        """Move messages (RFC 6851): copied, then expunged from the source."""
        pairs = self.copy_messages(source_id, uids, target)
        self.expunge(source_id, [source for source, _ in pairs])
        return pairs

    def append_message(
        self,
        mailbox: Mailbox,
        body: bytes | memoryview,
        flags: tuple[str, ...] = (),
        internal_date: float | None = None,
        info: object | None = None,
    ) -> MessageEntry:
        """Store a new message in one mailbox (IMAP APPEND): a new blob, no trace head."""
        blob_id = self.next_id("blob")
        self._put_blob(blob_id, body, 1, info)
        return self.append(mailbox, blob_id, b"", len(body), tuple(flags), internal_date)

    def deliver(
        self,
        body: bytes | memoryview,
        local: Iterable[tuple[str, bytes]],
        sender: str,
        forward: Iterable[str] = (),
        forward_head: bytes = b"",
        info: object | None = None,
        mailbox: str = "INBOX",
        spared_author: str = "",
    ) -> Delivery:
        """Store one incoming message for every recipient, the body once.

        `local` pairs each recipient account with the trace header block for
        its copy; `forward` lists external addresses to queue the message for;
        `info` is kept with the body (see blob_info()). Local copies go to
        each account's `mailbox` (Junk for what the checks quarantine), or
        to its INBOX should that mailbox be gone, or should the account have
        taken mail of `spared_author` out of Junk before (remember_not_junk).
        """
        blob_id = self.next_id("blob")
        entries: list[MessageEntry] = []
        missing: list[str] = []
        date = time.time()
        for address, head in local:
            account = self.account(address)
            wanted = mailbox
            if account and spared_author and self.is_not_junk(account.id, spared_author):
                wanted = "INBOX"
            inbox = account and (
                self.mailbox(account.id, wanted) or self.mailbox(account.id, "INBOX")
            )
            if inbox is None:
                missing.append(address)
                continue
            entries.append(self.append(inbox, blob_id, head, len(head) + len(body), (), date))
        forward = tuple(forward)
        queued = self._enqueue(blob_id, forward_head, sender, forward, date) if forward else ()
        refs = len(entries) + len(queued)
        if refs:
            self._put_blob(blob_id, body, refs, info)
        return Delivery(blob_id, tuple(entries), queued, tuple(missing))

    # -- outbound queue --------------------------------------------------------------

    def _enqueue(
        self, blob_id: int, head: bytes, sender: str, recipients: tuple[str, ...], now: float
    ) -> tuple[QueuedMessage, ...]:
        """One entry per destination domain: each is one SMTP transaction with
        that domain's MX, and is retried and bounced on its own."""
        by_domain: dict[str, list[str]] = {}
        for recipient in recipients:
            by_domain.setdefault(recipient.rpartition("@")[2].lower(), []).append(recipient)
        items = []
        for group in by_domain.values():
            item = QueuedMessage(
                self.next_id("queue"), blob_id, head, sender, tuple(group), now, 0, now, ""
            )
            self._put_queued(item)
            items.append(item)
        return tuple(items)

    def _put_queued(self, item: QueuedMessage) -> None:
        self._put(
            "queue",
            _U64.pack(item.id),
            {
                "blob": item.blob_id,
                "head": item.head,
                "sender": item.sender,
                "recipients": list(item.recipients),
                "created": item.created,
                "attempts": item.attempts,
                "next": item.next_attempt,
                "error": item.last_error,
            },
        )

    @staticmethod
    def _queued_from(key: bytes, record: dict) -> QueuedMessage:
        return QueuedMessage(
            _U64.unpack(key)[0],
            record["blob"],
            record["head"],
            record["sender"],
            tuple(record["recipients"]),
            record["created"],
            record["attempts"],
            record["next"],
            record.get("error", ""),
        )

    def queued(self) -> list[QueuedMessage]:
        """Every entry of the outbound queue, oldest first."""
        return [self._queued_from(key, _unpack(value)) for key, value in self._scan("queue")]

    def queued_message(self, queue_id: int) -> QueuedMessage | None:
        key = _U64.pack(queue_id)
        record = self._get("queue", key)
        return None if record is None else self._queued_from(key, record)

    def queue_attempted(
        self, queue_id: int, finished: Iterable[str], error: str, next_attempt: float
    ) -> QueuedMessage | None:
        """Record an attempt: the recipients `finished` with (delivered, or
        bounced) leave the entry; the rest wait for next_attempt. None when
        nothing is left, and the entry is gone with its share of the body."""
        item = self.queued_message(queue_id)
        if item is None:
            return None
        done = set(finished)
        left = tuple(r for r in item.recipients if r not in done)
        if not left:
            self.queue_remove(queue_id)
            return None
        item = dataclasses.replace(
            item,
            recipients=left,
            attempts=item.attempts + 1,
            next_attempt=next_attempt,
            last_error=error,
        )
        self._put_queued(item)
        return item

    def queue_retry(self, queue_id: int | None, now: float) -> int:
        """Make an entry (None: every entry) due now; how many were."""
        items = [self.queued_message(queue_id)] if queue_id is not None else self.queued()
        for item in items:
            if item is None:
                raise NotFound(f"no queued message {queue_id}")
            self._put_queued(dataclasses.replace(item, next_attempt=now))
        return len(items)

    def queue_remove(self, queue_id: int) -> QueuedMessage:
        item = self.queued_message(queue_id)
        if item is None:
            raise NotFound(f"no queued message {queue_id}")
        self._delete("queue", _U64.pack(queue_id))
        self._release_blob(item.blob_id)
        return item
