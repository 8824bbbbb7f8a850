"""Sending mail end to end: submission, DKIM, the queue, MX lookup, a real
Postfix as the remote MX, retries, bounces, and a crash with mail queued."""

import re
import signal
import smtplib
import socket
import ssl
import threading
import time

import pytest

from appliance.tls import self_signed_paths
from tests.conftest import PASSWORD
from tests.dns_server import DnsServer
from tests.postfix import PostfixPeer, postfix_missing

ANN = "ann@example.test"
pytestmark = pytest.mark.skipif(postfix_missing() is not None, reason=str(postfix_missing()))


@pytest.fixture
def dns():
    zone = {
        "postfix.test": {"MX": ["10 mx.postfix.test."]},
        "mx.postfix.test": {"A": ["127.0.0.1"]},
        "nomail.test": {"MX": ["0 ."]},
        "stall.test": {"MX": ["10 mx.stall.test."]},
        "mx.stall.test": {"A": ["127.0.0.1"]},
    }
    with DnsServer(zone) as server:
        yield server


@pytest.fixture
def postfix(tmp_path):
    peer = PostfixPeer(tmp_path / "postfix", users=("bob", "dan"))
    yield peer
    peer.stop()


def sending_appliance(make_appliance, dns, port: int, **queue):
    queue = {"mx_port": port, "retry_delays": [1.0], **queue}
    app = make_appliance(resolver={"nameservers": [dns.nameserver]}, queue=queue)
    app.start()
    return app


def submit(app, recipients, subject="out", count=1) -> None:
    context = ssl.create_default_context(cafile=str(self_signed_paths(app.data)[0]))
    context.check_hostname = False
    with smtplib.SMTP(app.host, app.submission_port) as client:
        client.starttls(context=context)
        client.login(ANN, PASSWORD)
        for n in range(count):
            message = (
                f"From: Ann <{ANN}>\r\nTo: {', '.join(recipients)}\r\n"
                f"Subject: {subject} {n}\r\n\r\nmessage {n} for the remote side\r\n"
            )
            assert client.sendmail(ANN, recipients, message.encode()) == {}


def wait_until(condition, timeout=30.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def dkim_records(app) -> dict[bytes, bytes]:
    from appliance.mailauth.dkim import dns_records

    return {f"{r.name}.".encode(): r.value.encode() for r in dns_records(app.data, "example.test")}


def test_submitted_mail_arrives_at_the_mx_signed_with_both_algorithms(make_appliance, dns, postfix):
    import dkim

    postfix.start()
    app = sending_appliance(make_appliance, dns, postfix.port)
    submit(app, ["bob@postfix.test"])
    [arrived] = postfix.wait_for_messages("bob", 1)
    assert b"message 0 for the remote side" in arrived
    received = arrived.split(b"\r\nReceived: ", 1)[1].split(b";", 1)[0]
    assert received.startswith(b"from mail.example.test") and b"by mx.postfix.test" in received
    assert b"(using TLS" in received  # STARTTLS was offered, and taken
    records = dkim_records(app)
    assert arrived.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in arrived and b"a=ed25519-sha256" in arrived
    verifier = dkim.DKIM(arrived)  # idx counts DKIM-Signature fields, topmost first
    assert all(verifier.verify(idx, dnsfunc=lambda n, timeout=5: records[n]) for idx in (0, 1))
    wait_until(lambda: app.queue() == [], what="the queue to empty")


def test_a_refused_recipient_bounces_and_the_other_arrives(make_appliance, dns, postfix):
    postfix.start()
    app = sending_appliance(make_appliance, dns, postfix.port)
    submit(app, ["bob@postfix.test", "nobody@postfix.test"])
    [arrived] = postfix.wait_for_messages("bob", 1)
    assert b"Subject: out 0" in arrived
    [notice] = wait_until(lambda: app.inbox(ANN), what="the bounce")
    assert b"Content-Type: multipart/report; report-type=delivery-status" in notice
    assert b"Final-Recipient: rfc822; nobody@postfix.test" in notice
    assert b"Status: 5.1.1" in notice and b"Subject: out 0" in notice
    assert b"bob@postfix.test" not in notice.split(b"message/delivery-status")[1].split(b"--")[0]
    assert app.queue() == []


def test_a_temporary_refusal_is_retried_and_delivered_once(make_appliance, dns, postfix):
    postfix.access = {"bob@postfix.test": "451 4.3.0 Try again later"}
    postfix.start()
    app = sending_appliance(make_appliance, dns, postfix.port)
    submit(app, ["bob@postfix.test"])
    wait_until(lambda: [q for q in app.queue_entries() if q.attempts >= 1], what="a deferral")
    assert "451" in app.queue_entries()[0].last_error
    postfix.stop()
    postfix.access = {}
    postfix.start()
    arrived = postfix.wait_for_messages("bob", 1)
    wait_until(lambda: app.queue() == [], what="the queue to empty")
    time.sleep(1.5)  # a second delivery would come within a retry delay
    assert len(postfix.messages("bob")) == 1 and len(arrived) == 1
    assert app.inbox(ANN) == []


def test_a_null_mx_bounces_at_once(make_appliance, dns, postfix):
    app = sending_appliance(make_appliance, dns, postfix.port)
    submit(app, ["someone@nomail.test"])
    [notice] = wait_until(lambda: app.inbox(ANN), what="the bounce")
    assert b"Status: 5.1.10" in notice and b"someone@nomail.test" in notice
    assert app.queue() == []


def test_a_stalling_mx_is_timed_out_and_retried(make_appliance, dns, postfix):
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept_and_stall():
        listener.settimeout(30)
        while len(accepted) < 2:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            accepted.append(connection)  # never greeted

    threading.Thread(target=accept_and_stall, daemon=True).start()
    port = listener.getsockname()[1]
    app = sending_appliance(make_appliance, dns, port, greeting=1.0)
    submit(app, ["someone@stall.test"])
    wait_until(lambda: len(accepted) >= 2, what="a second attempt")
    [entry] = app.queue_entries()
    assert entry.attempts >= 1 and "greeting timeout" in entry.last_error
    assert app.inbox(ANN) == []  # a timeout is no reason to bounce
    listener.close()
    for connection in accepted:
        connection.close()


def test_two_hundred_queued_messages_survive_sigkill(make_appliance, dns, postfix):
    app = sending_appliance(make_appliance, dns, postfix.port)  # Postfix is not up yet
    submit(app, ["bob@postfix.test"], subject="crash", count=200)
    assert len(app.queue()) == 200
    app.stop(signal.SIGKILL)
    postfix.start()
    app.start()
    arrived = postfix.wait_for_messages("bob", 200, timeout=120)
    wait_until(lambda: app.queue() == [], timeout=60, what="the queue to empty")
    subjects = sorted(re.search(rb"Subject: crash (\d+)", m).group(1) for m in arrived)
    assert subjects == sorted(str(n).encode() for n in range(200))  # each once


def tlsa_3_1_1(certificate_path) -> str:
    """DANE-EE SPKI SHA-256 (RFC 7671 5.1) of a PEM certificate."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificate = x509.load_pem_x509_certificate(certificate_path.read_bytes())
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return f"3 1 1 {hashlib.sha256(spki).hexdigest()}"


@pytest.mark.parametrize("matching", [True, False])
def test_dane_decides_whether_a_validated_mx_gets_the_mail(make_appliance, postfix, matching):
    postfix.start()
    record = tlsa_3_1_1(postfix.certificate) if matching else "3 1 1 " + "00" * 32
    zone = {
        "postfix.test": {"MX": ["10 mx.postfix.test."]},
        "mx.postfix.test": {"A": ["127.0.0.1"]},
        f"_{postfix.port}._tcp.mx.postfix.test": {"TLSA": [record]},
    }
    with DnsServer(zone, validated=True) as dns:  # a validating resolver on loopback: AD counts
        app = sending_appliance(make_appliance, dns, postfix.port)
        submit(app, ["bob@postfix.test"])
        if matching:
            [arrived] = postfix.wait_for_messages("bob", 1)
            assert b"(using TLS" in arrived
            wait_until(lambda: app.queue() == [], what="the queue to empty")
        else:
            [entry] = wait_until(
                lambda: [q for q in app.queue_entries() if q.attempts >= 1], what="a deferral"
            )
            assert "DANE" in entry.last_error
            assert postfix.messages("bob") == []  # nothing went in clear instead
