"""The store: records, body sharing, group commit, map growth, schema versions."""

import asyncio
import subprocess
import sys

import pytest

from appliance.store import (
    AlreadyExists,
    InUse,
    NotFound,
    SchemaTooNew,
    Store,
    StoreSettings,
    open_store,
    schema,
)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path)
    yield s
    s.close()


def add_users(store, *addresses, domain="example.org"):
    store.apply(lambda txn: txn.add_domain(domain))
    for address in addresses:
        store.apply(lambda txn, a=address: txn.add_account(a, "hash"))


def test_new_account_has_the_special_use_mailboxes(store):
    add_users(store, "ann@example.org")
    account = store.read(lambda txn: txn.account("ann@example.org"))
    boxes = store.read(lambda txn: txn.mailboxes(account.id))
    assert {(b.name, b.special_use) for b in boxes} == {
        ("INBOX", None),
        ("Sent", "\\Sent"),
        ("Drafts", "\\Drafts"),
        ("Trash", "\\Trash"),
        ("Junk", "\\Junk"),
        ("Archive", "\\Archive"),
    }
    assert all(b.uidnext == 1 and b.messages == 0 for b in boxes)
    assert len({b.uidvalidity for b in boxes}) == len(boxes)


def test_one_message_to_many_recipients_stores_the_body_once(store):
    add_users(store, "a@example.org", "b@example.org", "c@example.org")
    body = b"Subject: hi\r\n\r\nhello\r\n"
    local = [(a, f"Return-Path: <s@x.test>\r\nX-For: {a}\r\n".encode()) for a in "abc"]
    local = [(f"{a}@example.org", h) for a, h in local]
    delivery = store.apply(lambda txn: txn.deliver(body, local, "s@x.test"))
    assert len(delivery.entries) == 3
    counts = store.check()
    assert counts["blobs"] == 1
    assert store.read(lambda txn: txn.blob_refs(delivery.blob_id)) == 3
    with store.reader(buffers=True) as txn:
        blob = txn.blob(delivery.blob_id)
        assert isinstance(blob, memoryview)
        assert bytes(blob) == body
    entry = delivery.entries[1]
    assert entry.uid == 1 and entry.size == len(entry.head) + len(body)


def test_uids_and_modseq_grow_per_mailbox(store):
    add_users(store, "a@example.org")
    for _ in range(3):
        store.apply(lambda txn: txn.deliver(b"x\r\n", [("a@example.org", b"")], ""))
    account = store.read(lambda txn: txn.account("a@example.org"))
    inbox = store.read(lambda txn: txn.mailbox(account.id, "INBOX"))
    assert (inbox.uidnext, inbox.messages) == (4, 3)
    messages = store.read(lambda txn: txn.messages(inbox.id))
    assert [m.uid for m in messages] == [1, 2, 3]
    assert [m.modseq for m in messages] == sorted({m.modseq for m in messages})
    assert inbox.highestmodseq == messages[-1].modseq


def test_removing_an_account_releases_its_share_of_the_body(store):
    add_users(store, "a@example.org", "b@example.org")
    local = [("a@example.org", b""), ("b@example.org", b"")]
    delivery = store.apply(lambda txn: txn.deliver(b"body\r\n", local, ""))
    store.apply(lambda txn: txn.remove_account("a@example.org"))
    assert store.read(lambda txn: txn.blob_refs(delivery.blob_id)) == 1
    store.apply(lambda txn: txn.remove_account("b@example.org"))
    assert store.read(lambda txn: txn.blob(delivery.blob_id)) is None
    assert store.check()["blob_refs"] == 0
    assert store.check()["messages"] == 0 and store.check()["mailboxes"] == 0


def test_forward_targets_are_queued_with_a_reference_on_the_body(store):
    add_users(store, "a@example.org")
    delivery = store.apply(
        lambda txn: txn.deliver(b"b\r\n", [("a@example.org", b"")], "s@x.test", ["o@else.test"])
    )
    assert [q.recipients for q in delivery.queued] == [("o@else.test",)]
    assert store.read(lambda txn: txn.blob_refs(delivery.blob_id)) == 2
    assert [q.sender for q in store.read(lambda txn: txn.queued())] == ["s@x.test"]


def test_the_queue_holds_one_entry_per_domain_until_each_recipient_is_done(store):
    add_users(store, "a@example.org")
    targets = ["x@one.test", "y@two.test", "z@ONE.test"]
    delivery = store.apply(lambda txn: txn.deliver(b"b\r\n", [], "a@example.org", targets))
    one, two = delivery.queued
    assert (one.recipients, two.recipients) == (("x@one.test", "z@ONE.test"), ("y@two.test",))
    assert store.read(lambda txn: txn.blob_refs(delivery.blob_id)) == 2
    later = store.apply(lambda txn: txn.queue_attempted(one.id, ["x@one.test"], "451 busy", 99.0))
    assert (later.recipients, later.attempts, later.next_attempt) == (("z@ONE.test",), 1, 99.0)
    assert later.last_error == "451 busy"
    assert store.apply(lambda txn: txn.queue_retry(None, 5.0)) == 2
    assert all(q.next_attempt == 5.0 for q in store.read(lambda txn: txn.queued()))
    assert store.apply(lambda txn: txn.queue_attempted(one.id, ["z@ONE.test"], "", 0)) is None
    store.apply(lambda txn: txn.queue_remove(two.id))
    assert store.read(lambda txn: txn.queued()) == []
    assert store.check()["blobs"] == 0  # the last reference went with the last entry
    with pytest.raises(NotFound):
        store.apply(lambda txn: txn.queue_remove(two.id))


def test_refusals_change_nothing(store):
    add_users(store, "a@example.org")
    before = store.check()
    with pytest.raises(AlreadyExists):
        store.apply(lambda txn: txn.add_domain("example.org"))
    with pytest.raises(AlreadyExists):
        store.apply(lambda txn: txn.add_account("a@example.org", "h"))
    with pytest.raises(NotFound):
        store.apply(lambda txn: txn.add_account("a@nowhere.test", "h"))
    with pytest.raises(InUse):
        store.apply(lambda txn: txn.remove_domain("example.org"))
    with pytest.raises(AlreadyExists):
        store.apply(lambda txn: txn.add_alias("a@example.org", ["b@x.test"]))
    assert store.check() == before


def test_alias_targets_add_and_remove(store):
    add_users(store)
    store.apply(lambda txn: txn.add_alias("team@example.org", ["a@x.test"]))
    store.apply(lambda txn: txn.add_alias("team@example.org", ["b@x.test"]))
    assert store.read(lambda txn: txn.alias("team@example.org")).targets == ("a@x.test", "b@x.test")
    store.apply(lambda txn: txn.remove_alias("team@example.org", ["a@x.test"]))
    assert store.read(lambda txn: txn.alias("team@example.org")).targets == ("b@x.test",)
    store.apply(lambda txn: txn.remove_alias("team@example.org"))
    assert store.read(lambda txn: txn.alias("team@example.org")) is None


def test_concurrent_submits_share_commits(store):
    add_users(store, "a@example.org")
    store.start()

    async def deliver_many():
        def deliver(txn):
            return txn.deliver(b"m\r\n", [("a@example.org", b"")], "")

        return await asyncio.gather(*(store.submit(deliver) for _ in range(200)))

    deliveries = asyncio.run(deliver_many())
    assert sorted(d.entries[0].uid for d in deliveries) == list(range(1, 201))
    assert store.group_operations == 200
    assert store.group_commits < 200


def test_a_failing_operation_does_not_sink_its_group(store):
    add_users(store, "a@example.org")
    store.start()

    async def mixed():
        def good(txn):
            return txn.deliver(b"m\r\n", [("a@example.org", b"")], "").entries[0].uid

        def bad(txn):
            txn.deliver(b"m\r\n", [("a@example.org", b"")], "")
            raise ValueError("refused after writing")

        return await asyncio.gather(
            store.submit(good), store.submit(bad), store.submit(good), return_exceptions=True
        )

    results = asyncio.run(mixed())
    assert isinstance(results[1], ValueError)
    account = store.read(lambda txn: txn.account("a@example.org"))
    inbox = store.read(lambda txn: txn.mailbox(account.id, "INBOX"))
    assert inbox.messages == 2
    assert store.check()["blobs"] == 2


def test_map_grows_when_full(tmp_path):
    store = Store(tmp_path / "s", StoreSettings(initial_map_size=256 * 1024))
    add_users(store, "a@example.org")
    body = b"x" * (1024 * 1024)
    store.start()

    async def fill():
        for _ in range(4):
            await store.submit(lambda txn: txn.deliver(body, [("a@example.org", b"")], ""))

    asyncio.run(fill())
    store.apply(lambda txn: txn.deliver(body, [("a@example.org", b"")], ""))
    assert store.map_size() >= 4 * 1024 * 1024
    assert store.check()["blobs"] == 5
    store.close()


def test_a_map_grown_by_another_process_is_adopted(tmp_path):
    store = Store(tmp_path / "s", StoreSettings(initial_map_size=256 * 1024))
    add_users(store, "a@example.org")
    grow = (
        "import sys; from appliance.store import Store, StoreSettings\n"
        "s = Store(sys.argv[1], StoreSettings(initial_map_size=256 * 1024))\n"
        "s.apply(lambda t: t.deliver(b'x' * 2_000_000, [('a@example.org', b'')], ''))\n"
    )
    subprocess.run([sys.executable, "-c", grow, str(tmp_path / "s")], check=True)
    assert store.check()["blobs"] == 1
    store.apply(lambda txn: txn.deliver(b"y", [("a@example.org", b"")], ""))
    assert store.check()["blobs"] == 2
    store.close()


def test_newer_schema_is_refused(tmp_path):
    store = open_store(tmp_path)
    newer = schema.CURRENT_VERSION + 1
    store.apply(lambda txn: (txn.set_meta("schema", newer), txn.set_meta("compatible_from", newer)))
    store.close()
    with pytest.raises(SchemaTooNew):
        open_store(tmp_path)


def test_migrations_run_forward_in_order(tmp_path, monkeypatch):
    store = open_store(tmp_path)
    store.close()
    ran = []
    current = schema.CURRENT_VERSION
    monkeypatch.setattr(schema, "CURRENT_VERSION", current + 2)
    for version in (current, current + 1):
        migration = schema.Migration(lambda txn, v=version: ran.append(v), compatible=True)
        monkeypatch.setitem(schema.MIGRATIONS, version, migration)
    store = open_store(tmp_path)
    assert ran == [current, current + 1]
    assert store.read(lambda txn: txn.meta("schema")) == current + 2
    store.close()


def test_live_copy_is_a_working_store(store, tmp_path):
    add_users(store, "a@example.org")
    store.copy(tmp_path / "backup")
    copy = Store(tmp_path / "backup")
    assert copy.read(lambda txn: txn.account("a@example.org")) is not None
    copy.close()


def test_expunge_removes_entries_and_releases_bodies(store):
    add_users(store, "a@example.org", "b@example.org")
    local = [("a@example.org", b""), ("b@example.org", b"")]
    first = store.apply(lambda txn: txn.deliver(b"one\r\n", local, ""))
    store.apply(lambda txn: txn.deliver(b"two\r\n", local[:1], ""))
    inbox = first.entries[0].mailbox_id
    before = store.read(lambda txn: txn.mailbox_by_id(inbox))
    assert store.apply(lambda txn: txn.expunge(inbox, [1, 2, 99])) == [1, 2]
    after = store.read(lambda txn: txn.mailbox_by_id(inbox))
    assert after.messages == 0 and after.uidnext == before.uidnext
    assert after.highestmodseq == before.highestmodseq + 2
    assert store.read(lambda txn: txn.blob_refs(first.blob_id)) == 1  # b's copy remains
    assert store.check()["blobs"] == 1


def inbox_of(store, address):
    account = store.read(lambda txn: txn.account(address))
    return store.read(lambda txn: txn.mailbox(account.id, "INBOX")), account


def test_flags_set_add_remove_with_one_modseq_per_store(store):
    add_users(store, "a@example.org")
    for _ in range(3):
        store.apply(lambda txn: txn.deliver(b"m\r\n", [("a@example.org", b"")], ""))
    inbox, _ = inbox_of(store, "a@example.org")
    update = store.apply(lambda txn: txn.store_flags(inbox.id, [1, 2], ["\\Seen"], "add"))
    assert [e.flags for e in update.changed] == [("\\Seen",), ("\\Seen",)]
    assert len({e.modseq for e in update.changed}) == 1
    modseq = update.changed[0].modseq
    assert store.read(lambda txn: txn.mailbox_by_id(inbox.id)).highestmodseq == modseq
    again = store.apply(lambda txn: txn.store_flags(inbox.id, [1], ["\\Seen"], "add"))
    assert again.changed == ()  # nothing changed, no new modseq
    update = store.apply(lambda txn: txn.store_flags(inbox.id, [1, 3], ["$Work"], "set"))
    assert [(e.uid, e.flags) for e in update.changed] == [(1, ("$Work",)), (3, ("$Work",))]
    update = store.apply(lambda txn: txn.store_flags(inbox.id, [1], ["$Work"], "remove"))
    assert update.changed[0].flags == () and update.changed[0].modseq > modseq


def test_unchanged_since_refuses_messages_changed_later(store):
    add_users(store, "a@example.org")
    for _ in range(2):
        store.apply(lambda txn: txn.deliver(b"m\r\n", [("a@example.org", b"")], ""))
    inbox, _ = inbox_of(store, "a@example.org")
    first = store.apply(lambda txn: txn.store_flags(inbox.id, [2], ["\\Flagged"], "add"))
    seen = first.changed[0].modseq - 1
    update = store.apply(
        lambda txn: txn.store_flags(inbox.id, [1, 2], ["\\Seen"], "add", unchanged_since=seen)
    )
    assert [e.uid for e in update.changed] == [1] and update.refused == (2,)


def test_copy_shares_the_body_and_move_leaves_the_source(store):
    add_users(store, "a@example.org")
    delivery = store.apply(lambda txn: txn.deliver(b"m\r\n", [("a@example.org", b"h")], ""))
    inbox, account = inbox_of(store, "a@example.org")
    archive = store.read(lambda txn: txn.mailbox(account.id, "Archive"))
    assert store.apply(lambda txn: txn.copy_messages(inbox.id, [1, 7], archive)) == [(1, 1)]
    assert store.read(lambda txn: txn.blob_refs(delivery.blob_id)) == 2
    trash = store.read(lambda txn: txn.mailbox(account.id, "Trash"))
    assert store.apply(lambda txn: txn.move_messages(archive.id, [1], trash)) == [(1, 1)]
    assert store.read(lambda txn: txn.messages(archive.id)) == []
    [moved] = store.read(lambda txn: txn.messages(trash.id))
    assert moved.head == b"h" and store.read(lambda txn: txn.blob_refs(delivery.blob_id)) == 2
    assert store.check()["blobs"] == 1


def test_rename_takes_the_children_along(store):
    add_users(store, "a@example.org")
    _, account = inbox_of(store, "a@example.org")
    for name in ("Work", "Work/2025", "Work/2025/Q1", "Workshop"):
        store.apply(lambda txn, n=name: txn.create_mailbox(account.id, n))
    before = store.read(lambda txn: txn.mailbox(account.id, "Work/2025"))
    store.apply(lambda txn: txn.rename_mailbox(account.id, "Work", "Job"))
    names = {m.name for m in store.read(lambda txn: txn.mailboxes(account.id))}
    assert {"Job", "Job/2025", "Job/2025/Q1", "Workshop"} <= names
    assert not {"Work", "Work/2025"} & names
    after = store.read(lambda txn: txn.mailbox(account.id, "Job/2025"))
    assert (after.id, after.uidvalidity) == (before.id, before.uidvalidity)
    with pytest.raises(AlreadyExists):
        store.apply(lambda txn: txn.rename_mailbox(account.id, "Job", "Workshop"))


def test_renaming_inbox_moves_its_messages_and_keeps_it(store):
    add_users(store, "a@example.org")
    store.apply(lambda txn: txn.deliver(b"m\r\n", [("a@example.org", b"")], ""))
    inbox, account = inbox_of(store, "a@example.org")
    old = store.apply(lambda txn: txn.rename_mailbox(account.id, "INBOX", "Old mail"))
    assert old.messages == 1
    assert store.read(lambda txn: txn.mailbox(account.id, "INBOX")).messages == 0


def test_append_message_stores_a_new_body_in_one_mailbox(store):
    add_users(store, "a@example.org")
    account = store.read(lambda txn: txn.account("a@example.org"))
    sent = store.read(lambda txn: txn.mailbox(account.id, "Sent"))
    body = b"Subject: draft\r\n\r\nhello\r\n"
    entry = store.apply(
        lambda txn: txn.append_message(sent, memoryview(body), ("\\Seen",), 1700000000.0)
    )
    assert (entry.uid, entry.head, entry.size) == (1, b"", len(body))
    assert (entry.flags, entry.internal_date) == (("\\Seen",), 1700000000.0)
    assert store.read(lambda txn: bytes(txn.blob(entry.blob_id))) == body
    assert store.read(lambda txn: txn.blob_refs(entry.blob_id)) == 1
    after = store.read(lambda txn: txn.mailbox_by_id(sent.id))
    assert (after.uidnext, after.messages, after.highestmodseq) == (2, 1, entry.modseq)
    store.apply(lambda txn: txn.expunge(sent.id, [1]))
    assert store.check()["blobs"] == 0


def test_group_commits_report_the_mailboxes_they_changed(store):
    add_users(store, "a@example.org", "b@example.org")
    inbox_a, _ = inbox_of(store, "a@example.org")
    inbox_b, _ = inbox_of(store, "b@example.org")
    store.start()

    async def deliver():
        reported = []
        store.on_change = reported.append
        local = [("a@example.org", b""), ("b@example.org", b"")]
        await store.submit(lambda txn: txn.deliver(b"m\r\n", local, ""))
        await asyncio.sleep(0)  # the report is scheduled on the loop after the commit
        return reported

    assert asyncio.run(deliver()) == [frozenset({inbox_a.id, inbox_b.id})]


def test_what_delivery_learned_of_a_body_lives_and_dies_with_it(store):
    add_users(store, "a@example.org")
    inbox, _ = inbox_of(store, "a@example.org")
    delivered = store.apply(
        lambda txn: txn.deliver(b"x\r\n", [("a@example.org", b"")], "", info=[1, "parts"])
    )
    appended = store.apply(lambda txn: txn.append_message(inbox, b"y\r\n", info={"k": 2}))
    plain = store.apply(lambda txn: txn.append_message(inbox, b"z\r\n"))
    assert store.read(lambda txn: txn.blob_info(delivered.blob_id)) == [1, "parts"]
    assert store.read(lambda txn: txn.blob_info(appended.blob_id)) == {"k": 2}
    assert store.read(lambda txn: txn.blob_info(plain.blob_id)) is None
    store.apply(lambda txn: txn.expunge(inbox.id, [1, 2]))
    assert store.read(lambda txn: txn.blob_info(delivered.blob_id)) is None
    assert store.read(lambda txn: txn.blob_info(appended.blob_id)) is None
    assert store.check()["blob_info"] == 0


def test_messages_by_uid_range_and_the_states_an_open_mailbox_needs(store):
    add_users(store, "a@example.org")
    inbox, _ = inbox_of(store, "a@example.org")
    for n in range(6):
        store.apply(lambda txn, n=n: txn.append_message(inbox, b"m%d\r\n" % n))
    store.apply(lambda txn: txn.expunge(inbox.id, [3]))
    store.apply(lambda txn: txn.store_flags(inbox.id, [5], ["\\Seen"], "add"))
    assert [e.uid for e in store.read(lambda txn: txn.messages(inbox.id, 2, 5))] == [2, 4, 5]
    assert [e.uid for e in store.read(lambda txn: txn.messages(inbox.id, 5))] == [5, 6]
    states = store.read(lambda txn: txn.message_states(inbox.id))
    assert [(s.uid, s.flags) for s in states] == [
        (1, ()), (2, ()), (4, ()), (5, ("\\Seen",)), (6, ())
    ]  # fmt: skip
    assert states[3].modseq == max(s.modseq for s in states)
