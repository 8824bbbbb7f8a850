"""The store: one LMDB environment of msgpack records, the only code that opens LMDB.

Reads run on the caller's thread in short read transactions. Writes from the
server go to one writer thread that groups everything pending into a single
transaction and a single synced commit (group commit), then answers each
waiting coroutine: a 250 sent after `await store.submit(...)` is on disk.
The CLI writes with `apply()` from its own process; LMDB's lock makes the
two safe together.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import lmdb

from appliance.store import schema
from appliance.store.errors import AlreadyExists, InUse, NotFound, SchemaTooNew, StoreError
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
from appliance.store.transaction import DATABASES, Transaction

__all__ = [
    "DEFAULT_MAILBOXES",
    "Account",
    "Alias",
    "AlreadyExists",
    "Delivery",
    "Domain",
    "FlagUpdate",
    "InUse",
    "Mailbox",
    "MessageEntry",
    "MessageState",
    "NotFound",
    "QueuedMessage",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "StoreSettings",
    "Transaction",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StoreSettings:
    # Only address space is reserved up front: Linux allocates the file as
    # pages are written, so a large map costs nothing on a small disk.
    initial_map_size: int = 1 << 30
    # When a commit finds the map full it doubles it, up to this ceiling.
    max_map_size: int = 1 << 40
    # Pending writes folded into one transaction; bounds the latency a large
    # group adds to the first writer in it.
    max_group: int = 256
    max_readers: int = 256


class _TxnGate:
    """Lets transactions run together but alone with a map resize.

    LMDB allows mdb_env_set_mapsize only while this process has no open
    transaction, so a resize waits for running ones and holds off new ones.
    Read transactions are short and never span an await, so the wait is brief.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active = 0
        self._resizing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._active += 1
        try:
            yield
        finally:
            with self._cond:
                self._active -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._active:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


@dataclass(slots=True)
class _Pending:
    operation: Callable[[Transaction], object]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


_STOP = object()


class Store:
    def __init__(
        self,
        path: Path,
        settings: StoreSettings = StoreSettings(),
        incompatible_migrations: bool = False,
    ):
        """Open (or create) the store and run its migrations: the incompatible
        ones only when asked, never while an update is on trial (schema.py)."""
        self.path = Path(path)
        self.settings = settings
        self.path.mkdir(parents=True, exist_ok=True)
        self._env = lmdb.open(
            str(self.path),
            map_size=settings.initial_map_size,
            max_dbs=len(DATABASES),
            max_readers=settings.max_readers,
            # Durability is the point: every commit is fsynced before the
            # writer is answered (DESIGN: 250 only after a synced commit).
            sync=True,
            metasync=True,
            readahead=False,
        )
        self._gate = _TxnGate()
        self._streamed = 0  # see streamed()
        with self._env.begin(write=True) as txn:
            self._dbs = {name: self._env.open_db(name.encode(), txn=txn) for name in DATABASES}
        self.apply(functools.partial(schema.upgrade, incompatible=incompatible_migrations))
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        # Synced commits made by the writer thread, and the operations they held:
        # their ratio is the group size that makes durable delivery fast.
        self.group_commits = 0
        self.group_operations = 0
        # Called on the submitters' event loop after each group commit with the
        # mailboxes it changed, so sessions can tell their clients at once.
        self.on_change: Callable[[frozenset[int]], None] | None = None

    # -- reading ---------------------------------------------------------------------

    @contextmanager
    def reader(self, buffers: bool = False) -> Iterator[Transaction]:
        """A read transaction. With buffers=True, bodies are memoryviews into the
        map, valid only inside the with block. Never hold one across an await."""
        with self._gate.shared():
            txn = self._begin(write=False, buffers=buffers)
            try:
                yield Transaction(txn, self._dbs)
            finally:
                txn.abort()

    def read(self, operation: Callable[[Transaction], T]) -> T:
        with self.reader() as txn:
            return operation(txn)

    def _begin(self, write: bool, buffers: bool = False) -> lmdb.Transaction:
        try:
            return self._env.begin(write=write, buffers=buffers)
        except lmdb.MapResizedError:
            # Another process (the CLI, or a server) grew the map: adopt its size.
            self._env.set_mapsize(0)
            return self._env.begin(write=write, buffers=buffers)

    # -- writing from one thread (CLI, start-up) -------------------------------------

    def apply(self, operation: Callable[[Transaction], T]) -> T:
        """Run operation in its own write transaction and commit it (synced)."""
        while True:
            try:
                with self._gate.shared():
                    txn = self._begin(write=True)
                    try:
                        result = operation(Transaction(txn, self._dbs))
                        txn.commit()
                        return result
                    except BaseException:
                        txn.abort()
                        raise
            except lmdb.MapFullError:
                self._grow()

    def _grow(self) -> None:
        with self._gate.exclusive():
            size = self._env.info()["map_size"]
            if size >= self.settings.max_map_size:
                raise StoreError("the store is full (map size limit reached)")
            new_size = min(size * 2, self.settings.max_map_size)
            self._env.set_mapsize(new_size)
            log.info("store map grown size=%d", new_size)

    # -- writing from the event loop (group commit) ----------------------------------

    def start(self) -> None:
        """Start the writer thread that serves submit()."""
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="store-writer")
            self._writer.start()

    def stop(self) -> None:
        """Commit whatever is pending, then stop the writer thread."""
        if self._writer is not None:
            self._queue.put(_STOP)
            self._writer.join()
            self._writer = None

    async def submit(self, operation: Callable[[Transaction], T]) -> T:
        """Run operation in the writer thread; return once its commit is synced.

        The operation may be run more than once (after a map resize), so it must
        do nothing but work on the transaction it is given.
        """
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Pending(operation, loop, future))
        return await future

    def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < self.settings.max_group:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stopping = True
                batch = [p for p in batch if p is not _STOP]
            if batch:
                self._commit_group(batch)
            # Not held while waiting for the next group: an operation may
            # reference a whole message body.
            del batch

    def _commit_group(self, batch: list[_Pending]) -> None:
        while True:
            try:
                outcomes = self._run_group(batch)
                break
            except lmdb.MapFullError:
                self._grow()
            except Exception as error:  # the commit itself failed: nobody's write landed
                log.exception("store commit failed")
                outcomes = [(False, error)] * len(batch)
                break
        for pending, (ok, value) in zip(batch, outcomes, strict=True):
            pending.loop.call_soon_threadsafe(_settle, pending.future, ok, value)

    def _run_group(self, batch: list[_Pending]) -> list[tuple[bool, object]]:
        outcomes: list[tuple[bool, object]] = []
        touched: set[int] = set()
        with self._gate.shared():
            parent = self._begin(write=True)
            try:
                for pending in batch:
                    # A nested transaction per operation: one that fails is
                    # rolled back alone and the rest of the group still commits.
                    child = self._env.begin(write=True, parent=parent)
                    try:
                        txn = Transaction(child, self._dbs)
                        result = pending.operation(txn)
                        child.commit()
                        touched |= txn.touched
                        outcomes.append((True, result))
                    except lmdb.MapFullError:
                        child.abort()
                        raise
                    except Exception as error:
                        child.abort()
                        outcomes.append((False, error))
                parent.commit()
                self.group_commits += 1
                self.group_operations += len(batch)
                if touched and self.on_change is not None:
                    batch[0].loop.call_soon_threadsafe(self.on_change, frozenset(touched))
            except BaseException:
                parent.abort()
                raise
        return outcomes

    # -- schema ----------------------------------------------------------------------

    def pending_migrations(self) -> int:
        """Migrations held back (incompatible ones, while an update was on trial)."""
        return self.read(schema.pending)

    async def finish_migrations(self) -> int:
        """Run the held-back migrations in the writer thread; return the version found."""
        return await self.submit(functools.partial(schema.upgrade, incompatible=True))

    # -- maintenance -----------------------------------------------------------------

    def copy(self, destination: Path) -> None:
        """Write a consistent copy of the live store (a backup) to destination."""
        destination.mkdir(parents=True, exist_ok=False)
        with self._gate.shared():
            self._env.copy(str(destination), compact=True)

    def check(self) -> dict[str, int]:
        """Open every database and count its records: a cheap integrity walk."""
        return self.read(Transaction.counts)

    def streamed(self, octets: int, done: bool = False) -> None:
        """A session served this many octets of a body in pieces (`done`: it
        has sent the last). Every few megabytes, and when a body is done, the
        pages of the map this process read are unmapped (they stay in the
        page cache; the next read maps them again), so that serving a 50 MB
        message does not leave the process's RSS 50 MB bigger."""
        self._streamed += octets
        if self._streamed >= UNMAP_AFTER or (done and self._streamed):
            self._streamed = 0
            self._forget_pages()

    def _forget_pages(self) -> None:
        data_file = str((self.path / "data.mdb").resolve())
        with open("/proc/self/maps") as maps:
            regions = [line.split()[0] for line in maps if line.rstrip().endswith(data_file)]
        for region in regions:
            start, end = (int(address, 16) for address in region.split("-"))
            _madvise(start, end - start, _MADV_DONTNEED)

    def map_size(self) -> int:
        return self._env.info()["map_size"]

    def close(self) -> None:
        self.stop()
        self._env.close()


# Octets served in pieces between two unmappings of the map's pages: a few
# chunks' worth, so that the unmapping (a walk of the page tables) is rare.
UNMAP_AFTER = 4 * 1024 * 1024
_MADV_DONTNEED = 4  # <sys/mman.h>


def _madvise(start: int, length: int, advice: int) -> None:
    # The mmap module advises only maps it made itself; LMDB made this one.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    if libc.madvise(start, length, advice) != 0:
        log.warning("madvise failed: %s", os.strerror(ctypes.get_errno()))


def _settle(future: asyncio.Future, ok: bool, value: object) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def open_store(
    data_dir: Path, settings: StoreSettings = StoreSettings(), incompatible_migrations: bool = False
) -> Store:
    return Store(Path(data_dir) / "store", settings, incompatible_migrations)
