"""Taking a message out of Junk is remembered as "not junk" for its sender."""

from __future__ import annotations

import imaplib

from appliance.store import open_store
from tests.conftest import PASSWORD

MESSAGE = (
    b"From: Carol Example <Carol@Friends.test>\r\n"
    b"To: ann@example.test\r\n"
    b"Subject: not spam, really\r\n"
    b"\r\n"
    b"Hello Ann.\r\n"
)


def not_junk(app, address: str) -> list[str]:
    store = open_store(app.data)
    try:
        return store.read(lambda txn: txn.not_junk_senders(txn.account(address).id))
    finally:
        store.close()


def test_moving_out_of_junk_remembers_the_sender_and_trash_does_not(appliance):
    with imaplib.IMAP4("127.0.0.1", appliance.imap_port) as imap:
        imap.login("ann@example.test", PASSWORD)
        for _ in range(2):
            assert imap.append("Junk", None, None, MESSAGE)[0] == "OK"
        imap.select("Junk")
        assert imap.uid("MOVE", "1", "Trash")[0] == "OK"
        assert not_junk(appliance, "ann@example.test") == []  # thrown away: still junk
        assert imap.uid("MOVE", "2", "INBOX")[0] == "OK"
        imap.select("INBOX")
        assert imap.search(None, "ALL")[1] == [b"1"]  # the message itself moved as asked
    assert not_junk(appliance, "ann@example.test") == ["carol@friends.test"]
    assert not_junk(appliance, "bob@example.test") == []


def test_a_removed_account_leaves_no_not_junk_record(appliance):
    with imaplib.IMAP4("127.0.0.1", appliance.imap_port) as imap:
        imap.login("bob@example.test", PASSWORD)
        imap.append("Junk", None, None, MESSAGE)
        imap.select("Junk")
        imap.copy("1", "Archive")
    assert not_junk(appliance, "bob@example.test") == ["carol@friends.test"]
    assert appliance.cli("user", "remove", "bob@example.test").returncode == 0
    store = open_store(appliance.data)
    try:
        assert store.read(lambda txn: txn.counts()["not_junk"]) == 0
    finally:
        store.close()
