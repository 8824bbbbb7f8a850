"""`appliance queue`: the owner looks at the outbound queue and acts on it."""

import email
import email.policy

import pytest

from appliance.store import open_store
from tests.conftest import PASSWORD, cli

MESSAGE = b"From: ann@example.org\r\nTo: x@remote.test\r\nSubject: stuck\r\n\r\nbody\r\n"


@pytest.fixture
def data(tmp_path):
    assert cli(tmp_path, "domain", "add", "example.org").returncode == 0
    r = cli(tmp_path, "user", "add", "ann@example.org", "--password-stdin", stdin=PASSWORD + "\n")
    assert r.returncode == 0, r.stderr
    store = open_store(tmp_path)
    try:
        head = b"Received: by mail.example.org; Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        targets = ["x@remote.test", "y@remote.test", "z@other.test"]
        store.apply(lambda txn: txn.deliver(MESSAGE, [], "ann@example.org", targets, head))
    finally:
        store.close()
    return tmp_path


def run(data, *args):
    result = cli(data, "queue", *args)
    return result.returncode, result.stdout, result.stderr


def inbox(data, address):
    store = open_store(data)
    try:

        def read(txn):
            box = txn.mailbox(txn.account(address).id, "INBOX")
            return [bytes(txn.blob(m.blob_id)) for m in txn.messages(box.id)]

        return store.read(read)
    finally:
        store.close()


def test_list_show_retry_delete_and_bounce(data):
    code, out, _ = run(data, "list")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2  # one entry per destination domain
    assert "from=<ann@example.org> to=x@remote.test,y@remote.test" in lines[0]
    assert "to=z@other.test" in lines[1]
    first, second = (int(line.split()[0]) for line in lines)

    code, out, _ = run(data, "show", str(first))
    assert code == 0 and "Subject: stuck" in out and "Received: by mail.example.org" in out
    assert run(data, "retry")[1] == "2 queued message(s) due now\n"

    code, out, _ = run(data, "bounce", str(first))
    assert code == 0
    [notice] = inbox(data, "ann@example.org")
    parsed = email.message_from_bytes(notice, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/report"
    report = notice.decode()
    assert "Final-Recipient: rfc822; x@remote.test" in report
    assert "Final-Recipient: rfc822; y@remote.test" in report and "Action: failed" in report
    assert "Subject: stuck" in report  # the original's header comes back

    assert run(data, "delete", str(second))[0] == 0
    assert run(data, "list")[1] == ""
    assert inbox(data, "ann@example.org") == [notice]  # deleting tells nobody


@pytest.mark.parametrize("action", ["show", "delete", "bounce", "retry"])
def test_an_unknown_entry_is_one_line_and_exit_1(data, action):
    code, out, err = run(data, action, "999")
    assert code == 1 and err.startswith("appliance: error: ") and err.count("\n") == 1
    assert "999" in err
    assert len(run(data, "list")[1].splitlines()) == 2
