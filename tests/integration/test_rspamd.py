"""The spam filter on port 25: each message is shown to rspamd before the
reply to its data, and rspamd's action decides the reply and the mailbox.

A fake rspamd (an aiohttp server on loopback answering /checkv2 with the
action a test chooses) proves each action, the request rspamd gets, and that
a filter that is down, slow or confused never costs a message. Debian's own
rspamd, started by the test with a configuration of its own on loopback,
refuses the GTUBE test string."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import smtplib
import subprocess
import threading
import time
import urllib.request
from email.utils import formatdate, make_msgid

import pytest
from aiohttp import web

from tests.conftest import free_port
from tests.dns_server import DnsServer

FILTER_TIMEOUT = 1.0  # the appliance's [filter] timeout in these tests
SLOW = 5.0  # how long the slow fake takes: well past FILTER_TIMEOUT
# rspamd compiles its regular expressions and URL suffixes at start: some
# 25 s on a small machine, more when the machine is busy.
RSPAMD_START_TIMEOUT = 180.0
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class FakeRspamd:
    """An HTTP server on loopback that answers /checkv2 as rspamd does, with
    the action, delay or HTTP status the test sets, and keeps each request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.action = "no action"
        self.delay = 0.0
        self.status = 200
        self.requests: list[tuple[list[tuple[str, str]], bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def __enter__(self) -> FakeRspamd:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/checkv2", self._check)
        # A client that gives up (the appliance past its timeout) ends the handler.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _check(self, request: web.Request) -> web.Response:
        self.requests.append((list(request.headers.items()), await request.read()))
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="internal error")
        answer = {
            "is_skipped": False,
            "score": 12.5,
            "required_score": 15.0,
            "action": self.action,
            "symbols": {},
            "messages": {"smtp_message": "Spam message rejected"},
        }
        return web.json_response(answer)


@pytest.fixture
def fake():
    with FakeRspamd() as server:
        yield server


@pytest.fixture
def start(make_appliance):
    """An appliance that asks the rspamd at url; its own DNS checks are off
    (they are proven elsewhere), so the filter alone decides."""

    def start(url: str):
        app = make_appliance(
            smtp={"checks": False}, filter={"rspamd": url, "timeout": FILTER_TIMEOUT}
        )
        app.add_user("bob@example.test")
        app.start()
        return app

    return start


def message(body: str = "Lunch on Friday?\r\n") -> bytes:
    return (
        "From: Alice <alice@sender.test>\r\nTo: Ann <ann@example.test>\r\n"
        f"Subject: lunch\r\nDate: {formatdate()}\r\nMessage-ID: {make_msgid()}\r\n"
        f"\r\n{body}"
    ).encode()


def send(app, data: bytes, recipients=("ann@example.test",)) -> None:
    with smtplib.SMTP(app.host, app.port, timeout=30) as client:
        client.ehlo("mx.sender.test")
        client.sendmail("alice@sender.test", list(recipients), data)


def refused(app, data: bytes) -> smtplib.SMTPDataError:
    with pytest.raises(smtplib.SMTPDataError) as error:
        send(app, data)
    assert app.inbox("ann@example.test") == [] and app.inbox("ann@example.test", "Junk") == []
    return error.value


def test_the_filter_gets_the_message_with_its_envelope(start, fake):
    app = start(fake.url)
    data = message()
    send(app, data, ["ann@example.test", "bob@example.test"])
    [(headers, body)] = fake.requests
    assert body == data
    assert ("IP", "127.0.0.1") in headers and ("Helo", "mx.sender.test") in headers
    assert ("From", "alice@sender.test") in headers
    assert [v for k, v in headers if k == "Rcpt"] == ["ann@example.test", "bob@example.test"]
    assert ("MTA-Name", "mail.example.test") in headers


def test_no_action_is_the_inbox(start, fake):
    app = start(fake.url)
    send(app, message())
    [stored] = app.inbox("ann@example.test")
    assert b"X-Spam-Checked: yes (rspamd: no action, score 12.50 of 15.00)\r\n" in stored
    assert b"X-Spam: Yes" not in stored


@pytest.mark.parametrize("action", ["add header", "rewrite subject"])
def test_a_spam_action_files_the_message_in_junk(start, fake, action):
    fake.action = action
    app = start(fake.url)
    send(app, message())
    assert app.inbox("ann@example.test") == []
    [junk] = app.inbox("ann@example.test", "Junk")
    assert f"X-Spam-Checked: yes (rspamd: {action}, ".encode() in junk
    assert b"X-Spam: Yes\r\n" in junk
    assert b"Subject: lunch\r\n" in junk  # filed, not rewritten


def test_reject_is_a_550_at_the_end_of_data(start, fake):
    fake.action = "reject"
    app = start(fake.url)
    error = refused(app, message())
    assert (error.smtp_code, error.smtp_error[:5]) == (550, b"5.7.1")
    assert b"Spam message rejected" in error.smtp_error


@pytest.mark.parametrize("action", ["greylist", "soft reject"])
def test_greylist_and_soft_reject_ask_the_sender_to_come_back(start, fake, action):
    fake.action = action
    app = start(fake.url)
    error = refused(app, message())
    assert (error.smtp_code, error.smtp_error[:5]) == (451, b"4.7.1")
    fake.action = "no action"  # the sender's retry, once rspamd lets it in
    send(app, message())
    assert len(app.inbox("ann@example.test")) == 1


def unchecked(app) -> bytes:
    [stored] = app.inbox("ann@example.test")
    assert b"X-Spam-Checked: no (filter unavailable)\r\n" in stored
    return stored


def test_a_filter_that_is_down_costs_no_mail(start):
    app = start(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    send(app, message())
    unchecked(app)
    assert "rspamd unavailable client=127.0.0.1" in app.log()


def test_a_slow_filter_costs_no_mail_and_little_time(start, fake):
    fake.delay = SLOW
    app = start(fake.url)
    began = time.monotonic()
    send(app, message())
    assert time.monotonic() - began < SLOW
    unchecked(app)
    assert f"no answer in {FILTER_TIMEOUT:g} s" in app.log()


@pytest.mark.parametrize("trouble", ["status", "action"])
def test_an_answer_the_box_cannot_read_costs_no_mail(start, fake, trouble):
    if trouble == "status":
        fake.status = 500
    else:
        fake.action = "quarantine please"
    app = start(fake.url)
    send(app, message())
    unchecked(app)


# Debian's rspamd


class RealRspamd:
    """rspamd started with a configuration of its own: its normal worker on a
    loopback port, no controller, proxy or fuzzy worker, its DNS at a loopback
    server that knows no names (so nothing waits on the internet)."""

    def __init__(self, directory, nameserver: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._directory = directory
        local = directory / "local"
        (local / "override.d").mkdir(parents=True)
        (local / "local.d").mkdir()
        (local / "override.d" / "worker-normal.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.port}";\ncount = 1;\n'
        )
        for worker in ("controller", "proxy", "fuzzy"):
            (local / "override.d" / f"worker-{worker}.inc").write_text("enabled = false;\n")
        (local / "override.d" / "logging.inc").write_text('type = "console";\nlevel = "error";\n')
        (local / "local.d" / "options.inc").write_text(
            f'dns {{ nameserver = ["{nameserver}"]; timeout = 1s; retransmits = 1; }}\n'
        )
        for name in ("db", "run"):
            (directory / name).mkdir()
        self.process: subprocess.Popen | None = None

    def start(self, binary: str) -> None:
        variables = {
            "LOCAL_CONFDIR": self._directory / "local",
            "DBDIR": self._directory / "db",
            "RUNDIR": self._directory / "run",
            "LOGDIR": self._directory,
        }
        command = [binary, "--no-fork", "--insecure", "-c", "/etc/rspamd/rspamd.conf"]
        command += [f"--var={name}={value}" for name, value in variables.items()]
        if os.geteuid() == 0:
            command += ["-u", "root", "-g", "root"]
        log = open(self._directory / "rspamd.log", "wb")  # noqa: SIM115 - the child's
        self.process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + RSPAMD_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rspamd exited: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"rspamd did not start in {RSPAMD_START_TIMEOUT} s: {self.log()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # the main process stops its workers
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # its own session: only its workers
            self.process.wait(10)

    def log(self) -> str:
        return (self._directory / "rspamd.log").read_text(errors="replace")[-3000:]


@pytest.fixture(scope="module")
def real_rspamd(tmp_path_factory):
    binary = shutil.which("rspamd") or shutil.which("rspamd", path="/usr/sbin:/usr/bin")
    if binary is None or not os.path.exists("/etc/rspamd/rspamd.conf"):
        pytest.skip("Debian's rspamd is not installed here (apt-get install rspamd)")
    with DnsServer({}) as dns:
        rspamd = RealRspamd(tmp_path_factory.mktemp("rspamd"), dns.nameserver)
        try:
            rspamd.start(binary)
            yield rspamd
        finally:
            rspamd.stop()


def test_rspamd_refuses_the_gtube_string(start, real_rspamd):
    app = start(real_rspamd.url)
    error = refused(app, message(f"{GTUBE}\r\n"))
    assert (error.smtp_code, error.smtp_error[:5]) == (550, b"5.7.1")
    assert b"Gtube pattern" in error.smtp_error


def test_rspamd_lets_ordinary_mail_through_with_its_verdict(start, real_rspamd):
    app = start(real_rspamd.url)
    send(app, message())
    [(mailbox, stored)] = [
        (box, stored) for box in ("INBOX", "Junk") for stored in app.inbox("ann@example.test", box)
    ]
    found = re.search(rb"X-Spam-Checked: yes \(rspamd: ([a-z ]+), score", stored)
    assert found, stored[:500]
    # rspamd's own rules decide between the two; the mailbox follows its action.
    action = found.group(1).decode()
    assert action in ("no action", "add header", "rewrite subject")
    assert mailbox == ("INBOX" if action == "no action" else "Junk")


def test_with_rspamd_stopped_mail_still_arrives(start, real_rspamd):
    app = start(real_rspamd.url)
    real_rspamd.stop()
    send(app, message(f"{GTUBE}\r\n"))
    unchecked(app)


def test_junk_by_the_filter_is_spared_for_who_took_the_author_out_of_junk(make_appliance, fake):
    """ann once moved alice's mail out of Junk; the filter's next Junk verdict
    on alice's (DMARC-authenticated) mail goes to ann's INBOX, bob's to Junk."""
    import imaplib

    from tests.conftest import PASSWORD

    zone = {
        "sender.test": {"TXT": '"v=spf1 ip4:127.0.0.1 -all"'},
        "_dmarc.sender.test": {"TXT": '"v=DMARC1; p=none"'},
    }
    with DnsServer(zone) as dns:
        app = make_appliance(
            smtp={"checks": True},
            resolver={"nameservers": [dns.nameserver]},
            filter={"rspamd": fake.url, "timeout": FILTER_TIMEOUT},
        )
        app.add_user("bob@example.test")
        app.start()
        with imaplib.IMAP4(app.host, app.imap_port) as imap:
            imap.login("ann@example.test", PASSWORD)
            imap.append("Junk", None, None, message("an old one\r\n"))
            imap.select("Junk")
            assert imap.uid("MOVE", "1", "INBOX")[0] == "OK"
        fake.action = "add header"
        send(app, message("a new one\r\n"), ["ann@example.test", "bob@example.test"])
        assert [m for m in app.inbox("ann@example.test") if b"a new one" in m]
        assert app.inbox("ann@example.test", "Junk") == []
        [junk] = app.inbox("bob@example.test", "Junk")
        assert b"a new one" in junk and b"dmarc=pass" in junk
