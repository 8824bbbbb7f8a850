"""The queue runner's decisions, with the store real and the network replaced:
what is delivered, deferred, bounced, and when it is tried again."""

import asyncio
import time

import pytest

from appliance.config import QueueSettings
from appliance.delivery.dns import MxTarget, NullMx
from appliance.delivery.mta_sts import Mode, Policy
from appliance.delivery.queue import QueueRunner
from appliance.smtp.client import Kind, Outcome
from appliance.smtp.protocol import Reply
from appliance.store import open_store

MESSAGE = b"From: ann@example.org\r\nSubject: out\r\n\r\nhello\r\n"
MX = MxTarget("mx.remote.test", 10, ("127.0.0.1",), "mx.remote.test", False)


class FakeResolver:
    def __init__(self, failing: dict[str, Exception] | None = None):
        self.failing = failing or {}
        self.asked: list[str] = []

    async def mta_sts_txt(self, domain):
        return "20260101" if domain == "remote.test" else None

    async def mx_hosts(self, domain, local_names=()):
        self.asked.append(domain)
        if domain in self.failing:
            raise self.failing[domain]
        return [MX]


def outcome(kind: Kind, code: int, status: str, text: str) -> Outcome:
    return Outcome(kind, status, Reply(code, status, text), text, "mx.remote.test", "RCPT TO")


class FakePeer:
    """Answers each recipient as told (delivered unless listed)."""

    def __init__(self, answers: dict[str, Outcome] | None = None):
        self.answers = answers or {}
        self.sent: list[tuple[str, tuple[str, ...], bytes]] = []
        self.connections = 0
        self.targets: list[tuple[list[str], bool]] = []

    async def send(self, targets, envelopes, verify):
        self.connections += 1
        self.targets.append(([t.host for t in targets], verify))
        delivered = outcome(Kind.DELIVERED, 250, "2.0.0", "ok")
        results = []
        for message in envelopes:
            body = b"".join(message.body())
            assert message.size == len(body)
            self.sent.append((message.sender, message.recipients, body))
            results.append({r: self.answers.get(r, delivered) for r in message.recipients})
        return results


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path)
    store.apply(lambda txn: txn.add_domain("example.org"))
    store.apply(lambda txn: txn.add_account("ann@example.org", "hash"))
    store.start()
    yield store
    store.close()


def queue(store, recipients, sender="ann@example.org"):
    return store.apply(lambda txn: txn.deliver(MESSAGE, [], sender, recipients, b"")).queued


def run_until_idle(store, resolver, peer, settings=None, seconds=5.0, policies=None):
    async def main():
        runner = QueueRunner(
            store,
            "mail.example.org",
            settings or QueueSettings(),
            resolver,
            peer.send,
            policies=policies,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            if not any(q.next_attempt <= time.time() for q in store.read(lambda t: t.queued())):
                break
        stop.set()
        await task

    asyncio.run(main())


def inbox(store, address="ann@example.org"):
    def read(txn):
        box = txn.mailbox(txn.account(address).id, "INBOX")
        return [bytes(txn.blob(m.blob_id)) for m in txn.messages(box.id)]

    return store.read(read)


def test_delivered_mail_leaves_the_queue(store):
    queue(store, ["x@remote.test", "y@remote.test"])
    peer = FakePeer()
    run_until_idle(store, FakeResolver(), peer)
    assert peer.sent == [("ann@example.org", ("x@remote.test", "y@remote.test"), MESSAGE)]
    assert store.read(lambda txn: txn.queued()) == [] and store.check()["blobs"] == 0
    assert inbox(store) == []


def test_one_refused_recipient_is_bounced_and_the_other_delivered(store):
    queue(store, ["good@remote.test", "gone@remote.test"])
    refused = outcome(Kind.PERMANENT, 550, "5.1.1", "no such user")
    run_until_idle(store, FakeResolver(), FakePeer({"gone@remote.test": refused}))
    assert store.read(lambda txn: txn.queued()) == []
    [notice] = inbox(store)
    assert b"Final-Recipient: rfc822; gone@remote.test" in notice
    assert b"Status: 5.1.1" in notice and b"no such user" in notice
    assert b"good@remote.test" not in notice.split(b"Content-Type: text/rfc822-headers")[0]


def test_a_deferral_waits_for_the_next_retry(store):
    [item] = queue(store, ["slow@remote.test"])
    busy = outcome(Kind.TEMPORARY, 451, "4.3.0", "try later")
    before = time.time()
    run_until_idle(store, FakeResolver(), FakePeer({"slow@remote.test": busy}))
    [left] = store.read(lambda txn: txn.queued())
    assert left.id == item.id and left.attempts == 1 and "451" in left.last_error
    assert before + 60 <= left.next_attempt <= time.time() + 60
    assert inbox(store) == []


def test_retries_run_out_into_a_bounce(store):
    queue(store, ["slow@remote.test"])
    busy = outcome(Kind.TEMPORARY, 451, "4.3.0", "try later")
    settings = QueueSettings(max_age=0.001)
    time.sleep(0.01)
    run_until_idle(store, FakeResolver(), FakePeer({"slow@remote.test": busy}), settings)
    assert store.read(lambda txn: txn.queued()) == []
    [notice] = inbox(store)
    assert b"Action: failed" in notice and b"Status: 4.3.0" in notice


def test_a_null_mx_bounces_at_once_and_a_bounce_is_never_bounced(store):
    queue(store, ["x@nomail.test"])
    queue(store, ["y@nomail.test"], sender="")
    resolver = FakeResolver({"nomail.test": NullMx("nomail.test accepts no mail")})
    peer = FakePeer()
    run_until_idle(store, resolver, peer)
    assert peer.sent == [] and store.read(lambda txn: txn.queued()) == []
    [notice] = inbox(store)  # one: for ann's message, none for the one from <>
    assert b"Status: 5.1.10" in notice and b"x@nomail.test" in notice


def test_retry_delays_grow_and_then_repeat():
    settings = QueueSettings(retry_delays=(60, 300, 3600))
    assert [settings.delay_after(n) for n in (1, 2, 3, 4, 9)] == [60, 300, 3600, 3600, 3600]


def test_due_messages_for_one_domain_share_a_connection(store):
    for _ in range(3):
        queue(store, ["x@remote.test"])
    queue(store, ["y@other.test"])
    resolver, peer = FakeResolver(), FakePeer()
    run_until_idle(store, resolver, peer)
    assert len(peer.sent) == 4 and peer.connections == 2
    assert sorted(resolver.asked) == ["other.test", "remote.test"]  # one lookup per domain
    assert store.read(lambda txn: txn.queued()) == []


class FakePolicies:
    """An MTA-STS policy cache that knows one policy."""

    def __init__(self, policy):
        self.policy = policy

    async def policy_for(self, domain, policy_id, now):
        return self.policy if policy_id is not None else None


def test_an_mta_sts_enforce_policy_requires_verified_tls_to_the_hosts_it_names(store):
    queue(store, ["x@remote.test"])
    queue(store, ["y@other.test"])  # no policy there: opportunistic TLS as before
    peer = FakePeer()
    policy = Policy(Mode.ENFORCE, 86400, ("*.remote.test",))
    run_until_idle(store, FakeResolver(), peer, policies=FakePolicies(policy))
    assert sorted(peer.targets) == [(["mx.remote.test"], False), (["mx.remote.test"], True)]
    assert store.read(lambda txn: txn.queued()) == []


def test_mail_is_deferred_when_no_mx_matches_the_enforced_policy(store):
    queue(store, ["x@remote.test"])
    peer = FakePeer()
    policy = Policy(Mode.ENFORCE, 86400, ("mx.elsewhere.test",))
    run_until_idle(store, FakeResolver(), peer, policies=FakePolicies(policy))
    assert peer.sent == []  # never sent in clear, nor to a host the policy does not name
    [left] = store.read(lambda txn: txn.queued())
    assert left.attempts == 1 and "MTA-STS" in left.last_error and inbox(store) == []


def test_a_connection_carries_at_most_messages_per_connection(store):
    for _ in range(3):
        queue(store, ["x@remote.test"])
    peer = FakePeer()
    run_until_idle(store, FakeResolver(), peer, QueueSettings(messages_per_connection=2))
    assert len(peer.sent) == 3 and peer.connections == 2
    assert store.read(lambda txn: txn.queued()) == []
