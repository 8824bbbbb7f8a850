"""Message submission on 587 (STARTTLS) and 465 (implicit TLS), with smtplib and swaks."""

import shutil
import smtplib
import ssl
import subprocess

import pytest

from appliance.tls import self_signed_paths
from tests.conftest import PASSWORD

ANN = "ann@example.test"


def tls_context(app) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(self_signed_paths(app.data)[0]))
    context.check_hostname = False
    return context


def submit(app, implicit: bool = False) -> smtplib.SMTP:
    if implicit:
        client = smtplib.SMTP_SSL(app.host, app.submissions_port, context=tls_context(app))
    else:
        client = smtplib.SMTP(app.host, app.submission_port)
        client.starttls(context=tls_context(app))
    client.login(ANN, PASSWORD)
    return client


def message(sender: str = ANN, to: str = "bob@example.test", extra: str = "") -> bytes:
    return (
        f"From: Ann <{sender}>\r\nTo: {to}\r\nSubject: hello\r\n{extra}\r\n"
        "Body line one.\r\n.dot line stays\r\n"
    ).encode()


def test_a_user_sends_to_a_local_and_a_remote_recipient(appliance):
    with submit(appliance) as client:
        refused = client.sendmail(ANN, ["bob@example.test", "carol@remote.test"], message())
    assert refused == {}
    [stored] = appliance.inbox("bob@example.test")
    head, _, body = stored.partition(b"\r\n\r\n")
    assert body == b"Body line one.\r\n.dot line stays\r\n"
    assert b"Return-Path: <ann@example.test>" in head
    assert b"with ESMTPSA id" in head  # RFC 3848: TLS and AUTH
    # Added by the submission server (RFC 6409 8.2, 8.3), once.
    assert head.count(b"\r\nDate: ") == 1 and head.count(b"\r\nMessage-ID: <") == 1
    [(sender, recipients, queued)] = appliance.queue()
    assert sender == ANN and recipients == ("carol@remote.test",)
    assert queued.endswith(stored[stored.index(b"Date: ") :])  # the same body, stored once


def test_implicit_tls_on_465_and_an_alias_as_sender(appliance):
    assert appliance.cli("alias", "add", "sales@example.test", ANN).returncode == 0
    extra = "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <own@example.test>\r\n"
    with submit(appliance, implicit=True) as client:
        client.sendmail(
            "sales@example.test", ["bob@example.test"], message("sales@example.test", extra=extra)
        )
    [stored] = appliance.inbox("bob@example.test")
    assert stored.count(b"Message-ID:") == 1 and b"<own@example.test>" in stored


def test_authentication_needs_tls_and_the_right_password(appliance):
    with smtplib.SMTP(appliance.host, appliance.submission_port) as client:
        client.ehlo()
        assert not client.has_extn("auth")
        assert client.docmd("AUTH", "PLAIN AGFubkBleGFtcGxlLnRlc3QAeA==")[0] == 530
        code, reply = client.mail(ANN)
        assert (code, reply[:5]) == (530, b"5.7.0")
        client.starttls(context=tls_context(appliance))
        client.ehlo()
        assert "PLAIN" in client.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as failure:
            client.login(ANN, "wrong password")
        assert failure.value.smtp_code == 535
        assert client.mail(ANN)[0] == 530  # still not authenticated: no relaying
    assert appliance.queue() == []


def test_someone_elses_address_is_refused_and_nothing_is_queued(appliance):
    with submit(appliance) as client:
        code, reply = client.mail("bob@example.test")
        assert (code, reply[:5]) == (553, b"5.7.1")
        client.rset()
        with pytest.raises(smtplib.SMTPDataError) as failure:
            client.sendmail(ANN, ["carol@remote.test"], message(sender="bob@example.test"))
        assert (failure.value.smtp_code, failure.value.smtp_error[:5]) == (550, b"5.7.1")
        with pytest.raises(smtplib.SMTPDataError) as failure:
            client.sendmail(ANN, ["carol@remote.test"], b"Subject: no author\r\n\r\nx\r\n")
        assert failure.value.smtp_code == 550
        with pytest.raises(smtplib.SMTPSenderRefused) as refusal:
            client.sendmail("", ["carol@remote.test"], message())
        assert refusal.value.smtp_code == 553
    assert appliance.queue() == [] and appliance.inbox("bob@example.test") == []


def test_a_message_over_the_size_limit_is_refused(make_appliance):
    app = make_appliance(smtp={"max_message_size": 100_000})
    app.start()
    with submit(app) as client:
        with pytest.raises(smtplib.SMTPException) as failure:
            client.sendmail(ANN, ["carol@remote.test"], message() + b"x" * 200_000 + b"\r\n")
        assert "552" in str(failure.value) or "5.3.4" in str(failure.value)
    assert app.queue() == []


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_submits_with_starttls_and_auth_login(appliance):
    result = subprocess.run(
        [
            "swaks", "--server", f"{appliance.host}:{appliance.submission_port}",
            "--tls", "--auth", "LOGIN", "--auth-user", ANN, "--auth-password", PASSWORD,
            "--from", ANN, "--to", "bob@example.test", "--h-From", f"<{ANN}>",
            "--body", "sent by swaks",
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "235 2.7.0" in result.stdout
    [stored] = appliance.inbox("bob@example.test")
    assert b"sent by swaks" in stored and b"ESMTPSA" in stored


def test_submitted_mail_is_dkim_signed_with_both_algorithms(appliance):
    import dkim

    from appliance.mailauth.dkim import dns_records

    records = {
        f"{r.name}.".encode(): r.value.encode() for r in dns_records(appliance.data, "example.test")
    }
    with submit(appliance) as client:
        client.sendmail(ANN, ["carol@remote.test"], message(to="carol@remote.test"))
    [(_, _, queued)] = appliance.queue()
    signed = queued[queued.index(b"DKIM-Signature:") :]  # as it leaves, without our trace fields
    assert signed.count(b"DKIM-Signature:") == 2
    assert (
        b"a=rsa-sha256" in signed and b"a=ed25519-sha256" in signed and b"d=example.test" in signed
    )
    verifier = dkim.DKIM(signed)
    assert all(
        verifier.verify(idx, dnsfunc=lambda name, timeout=5: records[name]) for idx in (0, 1)
    )
    tampered = signed.replace(b"Body line one.", b"Body line 1.")
    assert not dkim.verify(tampered, dnsfunc=lambda name, timeout=5: records[name])
