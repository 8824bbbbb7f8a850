"""POP3 over real sockets: poplib for every command, fetchmail, mpop and curl."""

import base64
import hashlib
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from tests.conftest import PASSWORD

USER = "ann@example.test"


def message(number: int) -> bytes:
    return (
        f"From: sender@elsewhere.test\r\nTo: {USER}\r\nSubject: message {number}\r\n"
        f"Message-ID: <m{number}@elsewhere.test>\r\n\r\n"
    ).encode() + b"".join(
        b"%s line %d of message %d\r\n" % (b"." if i % 7 == 0 else b"", i, number)
        for i in range(40)
    )


def deliver(app, count: int) -> list[bytes]:
    with smtplib.SMTP(app.host, app.port) as client:
        for number in range(count):
            client.sendmail("sender@elsewhere.test", [USER], message(number))
    return app.inbox(USER)


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def login(app) -> poplib.POP3:
    pop = poplib.POP3(app.host, app.pop3_port, timeout=30)
    pop.user(USER)
    pop.pass_(PASSWORD)
    return pop


def test_every_command_over_poplib(appliance):
    stored = deliver(appliance, 3)
    pop = login(appliance)
    assert pop.stat() == (3, sum(map(len, stored)))
    _, listing, _ = pop.list()
    assert listing == [b"%d %d" % (n + 1, len(m)) for n, m in enumerate(stored)]
    assert pop.list(2).split()[2] == str(len(stored[1])).encode()
    _, uids, _ = pop.uidl()
    assert len({line.split()[1] for line in uids}) == 3
    assert pop.uidl(1).split()[2] == uids[0].split()[1]
    for number, expected in enumerate(stored, 1):
        _, lines, octets = pop.retr(number)
        assert b"\r\n".join(lines) + b"\r\n" == expected
    _, lines, _ = pop.top(1, 2)
    head, body = stored[0].split(b"\r\n\r\n", 1)
    assert b"\r\n".join(lines) == head + b"\r\n\r\n" + b"\r\n".join(body.split(b"\r\n")[:2])
    _, lines, _ = pop.top(1, 0)
    assert b"\r\n".join(lines) == head + b"\r\n"
    assert pop.noop().startswith(b"+OK")
    assert pop.dele(2).startswith(b"+OK")
    with pytest.raises(poplib.error_proto, match="deleted"):
        pop.retr(2)
    assert pop.stat()[0] == 2
    assert pop.rset().startswith(b"+OK")
    assert pop.stat()[0] == 3
    caps = pop.capa()
    for capability in ("TOP", "UIDL", "USER", "SASL", "RESP-CODES", "PIPELINING", "STLS"):
        assert capability in caps, caps
    pop.dele(1)
    assert pop.quit().startswith(b"+OK")
    assert appliance.inbox(USER) == stored[1:]


def test_dropped_connection_deletes_nothing(appliance):
    stored = deliver(appliance, 2)
    pop = login(appliance)
    pop.dele(1)
    pop.sock.shutdown(socket.SHUT_RDWR)
    pop.close()
    time.sleep(0.3)
    assert appliance.inbox(USER) == stored
    pop = login(appliance)  # the maildrop was released
    assert pop.stat()[0] == 2
    pop.quit()


def test_second_session_gets_in_use(appliance):
    deliver(appliance, 1)
    first = login(appliance)
    second = poplib.POP3(appliance.host, appliance.pop3_port, timeout=30)
    second.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    first.quit()
    second.close()


def test_uidl_is_stable_across_restart(appliance):
    deliver(appliance, 3)
    pop = login(appliance)
    before = pop.uidl()[1]
    pop.quit()
    assert appliance.stop() == 0
    appliance.start()
    pop = login(appliance)
    assert pop.uidl()[1] == before
    pop.quit()


def test_wrong_password_is_refused_and_slowed(appliance):
    pop = poplib.POP3(appliance.host, appliance.pop3_port, timeout=30)
    times = []
    for _ in range(3):
        started = time.monotonic()
        pop.user(USER)
        with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
            pop.pass_("wrong password")
        times.append(time.monotonic() - started)
    assert times[2] > 1.5 and times[1] > 0.8  # 1 s, then 2 s before the checks


def test_login_needs_tls_where_plaintext_is_not_allowed(make_appliance):
    app = make_appliance(pop3={"plaintext_login_on_loopback": False})
    app.start()
    deliver(app, 1)
    pop = poplib.POP3(app.host, app.pop3_port, timeout=30)
    assert "USER" not in pop.capa() and "STLS" in pop.capa()
    with pytest.raises(poplib.error_proto):
        pop.user(USER)
    pop.stls(context=client_context())
    assert "USER" in pop.capa()
    pop.user(USER)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1
    pop.quit()
    pops = poplib.POP3_SSL(app.host, app.pop3s_port, context=client_context(), timeout=30)
    pops.user(USER)
    pops.pass_(PASSWORD)
    assert pops.stat()[0] == 1
    pops.quit()


def test_auth_plain_with_initial_response(appliance):
    deliver(appliance, 1)
    with socket.create_connection((appliance.host, appliance.pop3_port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        token = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
        sock.sendall(b"AUTH PLAIN " + token + b"\r\nSTAT\r\nQUIT\r\n")  # pipelined
        assert reader.readline().startswith(b"+OK")
        assert reader.readline().startswith(b"+OK 1 ")
        assert reader.readline().startswith(b"+OK")


def fingerprint(app) -> str:
    pem = (app.data / "tls" / "cert.pem").read_text()
    digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


@pytest.mark.skipif(shutil.which("fetchmail") is None, reason="fetchmail is not installed")
def test_fetchmail_downloads_500_messages_over_tls(appliance, tmp_path):
    stored = deliver(appliance, 500)
    out = tmp_path / "fetched"
    out.mkdir()
    # The MDA keeps each message in its own file, numbered in arrival order.
    store = tmp_path / "store-message"
    store.write_text(f'#!/bin/sh\ncat > {out}/$(printf %05d "$(ls {out} | wc -l)")\n')
    store.chmod(0o755)
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no syslog\n"
        f"poll mail.example.test via {appliance.host} port {appliance.pop3s_port} "
        "protocol pop3 auth password\n"
        f'  user "{USER}" password "{PASSWORD}" ssl sslcertck '
        f'sslcertfile "{appliance.data / "tls" / "cert.pem"}" sslcommonname mail.example.test\n'
        f'  mda "{store}" no rewrite\n'
    )
    rc.chmod(0o600)
    result = subprocess.run(
        # Its own lock: as root fetchmail would share /var/run's with any other run.
        ["fetchmail", "-f", str(rc), "--pidfile", str(tmp_path / "fetchmail.pid")]
        + ["--invisible", "--nokeep", "-v"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    fetched = [path.read_bytes() for path in sorted(out.iterdir())]
    assert fetched == [lf(m) for m in stored]
    assert appliance.inbox(USER) == []  # fetchmail deleted what it fetched


@pytest.mark.skipif(shutil.which("mpop") is None, reason="mpop is not installed")
def test_mpop_downloads_500_messages_over_tls(appliance, tmp_path):
    stored = deliver(appliance, 500)
    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    config = tmp_path / "mpoprc"
    config.write_text(
        f"account appliance\nhost {appliance.host}\nport {appliance.pop3s_port}\n"
        f"tls on\ntls_starttls off\ntls_fingerprint {fingerprint(appliance)}\n"
        f"auth user\nuser {USER}\npassword {PASSWORD}\n"
        f"delivery maildir {maildir}\nkeep on\nreceived_header off\n"
    )
    config.chmod(0o600)
    result = subprocess.run(
        ["mpop", "-C", str(config), "-a", "-q"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    fetched = sorted((p.read_bytes() for p in (maildir / "new").iterdir()), key=_number)
    assert fetched == [lf(m) for m in stored]
    assert len(appliance.inbox(USER)) == 500  # keep on


def _number(data: bytes) -> int:
    return int(data.split(b"Subject: message ", 1)[1].split(b"\n", 1)[0])


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_lists_and_retrieves(appliance):
    stored = deliver(appliance, 2)
    base = f"pop3://{appliance.host}:{appliance.pop3_port}/"
    auth = ["--user", f"{USER}:{PASSWORD}", "--silent", "--show-error"]
    listing = subprocess.run(["curl", *auth, base], capture_output=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == b"".join(b"%d %d\r\n" % (n + 1, len(m)) for n, m in enumerate(stored))
    second = subprocess.run(["curl", *auth, base + "2"], capture_output=True, timeout=60)
    assert second.returncode == 0, second.stderr
    assert second.stdout == stored[1]


def test_connections_over_the_per_client_limit_are_refused(make_appliance):
    app = make_appliance(pop3={"max_connections_per_client": 2})
    app.start()
    held = [poplib.POP3(app.host, app.pop3_port, timeout=30) for _ in range(2)]
    with socket.create_connection((app.host, app.pop3_port), timeout=30) as extra:
        assert extra.recv(1000).startswith(b"-ERR [SYS/TEMP] Too many connections")
    for pop in held:
        pop.quit()


def test_hostile_lines_get_err_and_idle_clients_are_dropped(make_appliance):
    app = make_appliance(pop3={"idle_timeout": 2.0})
    app.start()
    with socket.create_connection((app.host, app.pop3_port), timeout=30) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"+OK")
        sock.sendall(b"USER " + b"x" * 1_000_000 + b"\r\n")
        assert reader.readline().startswith(b"-ERR Line too long")
        sock.sendall(b"\0" * 100 + b"\r\n")
        assert reader.readline().startswith(b"-ERR")
        sock.sendall(b"USER ann@example.test\r\n")  # still in step
        assert reader.readline().startswith(b"+OK")
        started = time.monotonic()
        assert reader.readline().startswith(b"-ERR Timeout")
        assert 1.5 < time.monotonic() - started < 6
        assert reader.readline() == b""  # closed
