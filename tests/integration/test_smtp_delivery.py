"""Inbound SMTP over real sockets with real clients: what arrives, byte for byte."""

import re
import shutil
import smtplib
import ssl
import subprocess

import pytest

MESSAGE = (
    b"From: Someone <someone@elsewhere.test>\r\n"
    b"To: ann@example.test\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line that starts with a dot\r\n"
    b"\r\n"
    b"last line\r\n"
)


def split_trace(stored: bytes) -> tuple[bytes, bytes]:
    """(Return-Path + Received fields, the message as sent)."""
    match = re.match(rb"Return-Path: <[^>]*>\r\nReceived: (?:[^\r]*\r\n\t)*[^\r]*\r\n", stored)
    assert match, stored[:300]
    return stored[: match.end()], stored[match.end() :]


def test_smtplib_delivers_byte_exact_with_trace_fields(appliance):
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.ehlo("client.test")
        refused = client.sendmail("someone@elsewhere.test", ["ann@example.test"], MESSAGE)
    assert refused == {}
    [stored] = appliance.inbox("ann@example.test")
    trace, body = split_trace(stored)
    assert body == MESSAGE
    assert trace.startswith(b"Return-Path: <someone@elsewhere.test>\r\nReceived: from client.test")
    assert b"by mail.example.test with ESMTP id " in trace
    assert b"for <ann@example.test>;" in trace


def test_several_recipients_each_get_one_copy(appliance):
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.sendmail(
            "s@elsewhere.test",
            ["ann@example.test", "bob@example.test", "ANN@example.test"],
            MESSAGE,
        )
    assert [split_trace(m)[1] for m in appliance.inbox("ann@example.test")] == [MESSAGE]
    assert [split_trace(m)[1] for m in appliance.inbox("bob@example.test")] == [MESSAGE]
    counts = appliance_store_counts(appliance)
    assert counts["blobs"] == 1 and counts["messages"] == 2


def appliance_store_counts(appliance):
    from appliance.store import open_store

    store = open_store(appliance.data)
    try:
        return store.check()
    finally:
        store.close()


def test_alias_added_while_serving_reaches_its_targets(appliance):
    result = appliance.cli(
        "alias", "add", "team@example.test", "ann@example.test", "bob@example.test"
    )
    assert result.returncode == 0, result.stderr
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.sendmail("s@elsewhere.test", ["team@example.test"], MESSAGE)
    for user in ("ann", "bob"):
        [stored] = appliance.inbox(f"{user}@example.test")
        trace, body = split_trace(stored)
        assert body == MESSAGE and b"for <team@example.test>" in trace


def test_unknown_user_and_foreign_domain_are_refused(appliance):
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.ehlo("client.test")
        client.mail("s@elsewhere.test")
        assert client.rcpt("nobody@example.test")[0] == 550
        code, text = client.rcpt("victim@elsewhere.test")
        assert (code, text[:5]) == (550, b"5.7.1")
        code, text = client.rcpt("nobody@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        assert client.rcpt("ann@example.test")[0] == 250
        code, _ = client.data(MESSAGE)
        assert code == 250
    assert len(appliance.inbox("ann@example.test")) == 1


def test_bdat_chunks_are_delivered_byte_exact(appliance):
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.ehlo("client.test")
        assert client.has_extn("chunking")
        client.mail("s@elsewhere.test")
        client.rcpt("ann@example.test")
        half = len(MESSAGE) // 2
        client.send(b"BDAT %d\r\n" % half + MESSAGE[:half])
        assert client.getreply()[0] == 250
        rest = MESSAGE[half:]
        client.send(b"BDAT %d LAST\r\n" % len(rest) + rest)
        code, text = client.getreply()
        assert code == 250, text
    [stored] = appliance.inbox("ann@example.test")
    trace, body = split_trace(stored)
    assert body == MESSAGE


def test_starttls_then_delivery(appliance):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        client.sendmail("s@elsewhere.test", ["ann@example.test"], MESSAGE)
    [stored] = appliance.inbox("ann@example.test")
    trace, body = split_trace(stored)
    assert body == MESSAGE
    assert b"with ESMTPS id" in trace and b"(using TLSv1." in trace


def test_smtputf8_address_is_accepted(appliance):
    appliance.cli("alias", "add", "jörg@example.test", "ann@example.test")
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.ehlo("client.test")
        assert client.has_extn("smtputf8")
        client.sendmail(
            "müller@elsewhere.test", ["jörg@example.test"], MESSAGE, mail_options=["SMTPUTF8"]
        )
    [stored] = appliance.inbox("ann@example.test")
    trace, body = split_trace(stored)
    assert body == MESSAGE
    assert "Return-Path: <müller@elsewhere.test>".encode() in trace
    assert b"with UTF8ESMTP id" in trace


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed (Debian: swaks)")
@pytest.mark.parametrize("tls", [False, True])
def test_swaks_delivers(appliance, tls):
    command = [
        "swaks",
        "--server",
        f"{appliance.host}:{appliance.port}",
        "--from",
        "someone@elsewhere.test",
        "--to",
        "ann@example.test,bob@example.test",
        "--helo",
        "swaks.test",
        "--data",
        "Subject: from swaks\nTo: ann@example.test\n\nswaks body\n.dot line\n..two dots\n",
    ]
    if tls:
        command.append("--tls")
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"<[-~]  250 2.0.0 Ok: queued as", result.stdout)
    for user in ("ann", "bob"):
        [stored] = appliance.inbox(f"{user}@example.test")
        trace, body = split_trace(stored)
        assert body == (
            b"Subject: from swaks\r\nTo: ann@example.test\r\n\r\n"
            b"swaks body\r\n.dot line\r\n..two dots\r\n"
            b"\r\n"  # swaks always sends CRLF before the ending CRLF.CRLF
        )
        assert (b"with ESMTPS" in trace) == tls


def test_transaction_is_logged_on_one_line(appliance):
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.sendmail("s@elsewhere.test", ["ann@example.test"], MESSAGE)
    lines = [line for line in appliance.log().splitlines() if "result=250" in line]
    assert len(lines) == 1
    line = lines[0]
    for part in ("client=127.0.0.1", "from=<s@elsewhere.test>", "to=<ann@example.test>"):
        assert part in line
    assert f"size={len(MESSAGE)}" in line and re.search(r" id=[0-9A-F]+ ", line)
