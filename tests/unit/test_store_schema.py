"""The store's schema across an update and its rollback.

Versions are played by monkeypatching schema.CURRENT_VERSION and
schema.MIGRATIONS: "version 1" is the appliance that knows schema 1 and no
migration, "version 3" the one that knows the migrations 1->2 and 2->3.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from appliance.store import SchemaTooNew, Store, open_store, schema
from appliance.update.settings import on_trial


def _new_field(txn):
    """Compatible: a new optional record beside the old ones."""
    txn.set_meta("spam_threshold", 5)


def _rewrite(txn):
    """Incompatible: something older code would misread."""
    txn.set_meta("layout", 3)


def _crash(txn):
    txn.set_meta("layout", 99)
    raise RuntimeError("power cut in the middle of the migration")


def _run_version(monkeypatch, current: int, migrations: dict) -> None:
    monkeypatch.setattr(schema, "CURRENT_VERSION", current)
    monkeypatch.setattr(schema, "MIGRATIONS", migrations)


COMPATIBLE = {1: schema.Migration(_new_field, compatible=True)}
BOTH = COMPATIBLE | {2: schema.Migration(_rewrite, compatible=False)}


def _deliver(store: Store, body: bytes) -> None:
    store.apply(lambda txn: txn.deliver(body, [("owner@example.org", b"")], ""))


def _bodies(store: Store) -> list[bytes]:
    return store.read(lambda txn: [bytes(txn.blob(e.blob_id)) for e in _inbox(txn)])


def _inbox(txn):
    account = txn.account("owner@example.org")
    inbox = txn.mailbox(account.id, "INBOX")
    return list(txn.messages(inbox.id))


def _versions(store: Store) -> tuple[int, int]:
    return store.read(lambda txn: (txn.meta("schema"), txn.meta("compatible_from")))


@pytest.fixture
def data(tmp_path, monkeypatch):
    """A data directory whose store was made by version 1, with one message."""
    _run_version(monkeypatch, 1, {})
    store = open_store(tmp_path)
    store.apply(lambda txn: txn.add_domain("example.org"))
    store.apply(lambda txn: txn.add_account("owner@example.org", "hash"))
    _deliver(store, b"Subject: before the update\r\n\r\nkept\r\n")
    store.close()
    return tmp_path


def test_older_version_reads_a_store_migrated_compatibly(data, monkeypatch):
    _run_version(monkeypatch, 2, COMPATIBLE)
    store = open_store(data)
    assert _versions(store) == (2, 1)
    _deliver(store, b"Subject: on trial\r\n\r\narrived under version 2\r\n")
    store.close()

    _run_version(monkeypatch, 1, {})  # rolled back
    store = open_store(data)
    assert len(_bodies(store)) == 2
    assert b"arrived under version 2" in _bodies(store)[1]
    assert _versions(store) == (2, 1)  # the older version left the store as it found it
    store.close()


def test_incompatible_migration_waits_for_the_trial_to_end(data, monkeypatch):
    _run_version(monkeypatch, 3, BOTH)
    store = open_store(data, incompatible_migrations=False)  # on trial
    assert _versions(store) == (2, 1)
    assert store.pending_migrations() == 1
    store.close()

    for older, migrations in ((1, {}), (2, COMPATIBLE)):  # a rollback meets a readable store
        _run_version(monkeypatch, older, migrations)
        store = open_store(data)
        assert len(_bodies(store)) == 1
        store.close()

    _run_version(monkeypatch, 3, BOTH)
    store = open_store(data, incompatible_migrations=True)  # booted good
    assert _versions(store) == (3, 3)
    assert store.pending_migrations() == 0
    assert store.read(lambda txn: txn.meta("layout")) == 3
    store.close()


def test_held_back_migration_runs_on_the_writer_thread(data, monkeypatch):
    _run_version(monkeypatch, 3, BOTH)
    store = open_store(data)
    store.start()
    try:
        assert store.pending_migrations() == 1
        found = asyncio.run(asyncio.wait_for(store.finish_migrations(), timeout=10))
        assert found == 2
        assert _versions(store) == (3, 3)
    finally:
        store.stop()
        store.close()


def test_store_needing_a_newer_reader_names_the_version(data, monkeypatch):
    _run_version(monkeypatch, 3, BOTH)
    open_store(data, incompatible_migrations=True).close()

    _run_version(monkeypatch, 2, COMPATIBLE)
    with pytest.raises(SchemaTooNew, match="needs an appliance that knows schema 3 or later"):
        open_store(data)


def test_crash_inside_a_migration_leaves_the_old_version(data, monkeypatch):
    _run_version(monkeypatch, 3, COMPATIBLE | {2: schema.Migration(_crash, compatible=False)})
    with pytest.raises(RuntimeError, match="power cut"):
        open_store(data, incompatible_migrations=True)

    _run_version(monkeypatch, 1, {})
    store = open_store(data)
    assert _versions(store) == (1, 1)
    assert store.read(lambda txn: txn.meta("layout")) is None
    assert len(_bodies(store)) == 1
    store.close()


def test_fresh_store_says_which_readers_it_allows(tmp_path, monkeypatch):
    _run_version(monkeypatch, 3, BOTH)
    store = open_store(tmp_path)
    assert _versions(store) == (3, 3)
    store.close()


@pytest.mark.parametrize(
    ("last", "trial"),
    [
        (None, False),
        ({"result": "installed", "version": "0.2.0"}, True),
        ({"result": "good", "version": "0.2.0"}, False),
        ({"result": "installed", "version": "0.3.0"}, False),  # installed, not yet booted
        ({"result": "rolled back", "version": "0.2.0"}, False),
    ],
)
def test_trial_is_read_from_the_installer_state(tmp_path, last, trial):
    if last is not None:
        (tmp_path / "update").mkdir()
        (tmp_path / "update" / "state.json").write_text(json.dumps({"last": last}))
    assert on_trial(tmp_path, "0.2.0") is trial


def test_unreadable_state_holds_migrations_back(tmp_path):
    (tmp_path / "update").mkdir()
    (tmp_path / "update" / "state.json").write_text("{half a")
    assert on_trial(tmp_path, "0.2.0") is True
