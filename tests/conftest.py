"""Shared test helpers: a running appliance on loopback, and its CLI."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.store import open_store

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
# What `serve` prints once every listener is open.
READY = "ready hostname="


# Listening ports for the servers tests start come from below the kernel's
# ephemeral range (32768 up): a port the kernel hands out for an outgoing
# connection (a delivery, a DNS query) cannot then take one between the
# moment it is chosen and the moment its server binds it.
_PORTS = range(20000, 32768)


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Distinct free ports: all held open until all are chosen."""
    sockets: list[socket.socket] = []
    try:
        for port in random.sample(_PORTS, 200):
            if len(sockets) == count:
                break
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
            try:
                s.bind((host, port))
            except OSError:
                s.close()
                continue
            sockets.append(s)
        if len(sockets) < count:
            raise RuntimeError(f"no {count} free ports on {host} in {_PORTS}")
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port(host: str = "127.0.0.1") -> int:
    return free_ports(1, host)[0]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def cli(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "appliance", "--data", str(data), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass
class Appliance:
    """An `appliance serve` process on a loopback port, with its own data directory."""

    data: Path
    host: str = "127.0.0.1"
    settings: dict = field(default_factory=dict)
    port: int = 0
    pop3_port: int = 0
    pop3s_port: int = 0
    imap_port: int = 0
    imaps_port: int = 0
    submission_port: int = 0
    submissions_port: int = 0
    http_port: int = 0
    https_port: int = 0
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    def __post_init__(self) -> None:
        ports = free_ports(9, self.host)
        self.port, self.pop3_port, self.pop3s_port, self.imap_port, self.imaps_port = ports[:5]
        self.submission_port, self.submissions_port, self.http_port, self.https_port = ports[5:]

    def write_config(self) -> None:
        lines = ['hostname = "mail.example.test"', "shutdown_grace = 5", "[listen]"]
        # The inbound checks need DNS; tests of them give it (a DnsServer) and
        # turn them on, the rest would only wait on a resolver they cannot reach.
        settings = dict(self.settings)
        settings["smtp"] = {"checks": False, **settings.get("smtp", {})}
        lines.append(f'smtp = "{self.host}:{self.port}"')
        lines.append(f'pop3 = "{self.host}:{self.pop3_port}"')
        lines.append(f'pop3s = "{self.host}:{self.pop3s_port}"')
        lines.append(f'imap = "{self.host}:{self.imap_port}"')
        lines.append(f'imaps = "{self.host}:{self.imaps_port}"')
        lines.append(f'submission = "{self.host}:{self.submission_port}"')
        lines.append(f'submissions = "{self.host}:{self.submissions_port}"')
        lines.append(f'http = "{self.host}:{self.http_port}"')
        lines.append(f'https = "{self.host}:{self.https_port}"')
        for section, table in settings.items():
            lines.append(f"[{section}]")
            lines += [f"{key} = {_toml(value)}" for key, value in table.items()]
        (self.data / "appliance.toml").write_text("\n".join(lines) + "\n")

    def start(self) -> None:
        self.write_config()
        self.log_path = self.data / "serve.log"
        readies = self.log().count(READY)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open by the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--data", str(self.data), "serve"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"appliance exited: {self.log()}")
            if self.log().count(READY) == readies:  # not every listener is up yet
                time.sleep(0.05)
                continue
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"appliance did not start: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process is None:
            return 0
        process, self.process = self.process, None
        if process.poll() is None:
            process.send_signal(sig)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()  # never leave a server behind a failed test
            process.wait()
            raise

    def setup_code(self) -> str:
        """The setup code the appliance printed at start."""
        lines = [x for x in self.log().splitlines() if x.startswith("setup code")]
        assert lines, f"no setup code printed: {self.log()}"
        return lines[-1].rpartition(": ")[2].strip()

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def https_url(self) -> str:
        return f"https://{self.host}:{self.https_port}"

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return cli(self.data, *args, stdin=stdin)

    def add_user(self, address: str) -> None:
        result = self.cli("user", "add", address, "--password-stdin", stdin=PASSWORD + "\n")
        assert result.returncode == 0, result.stderr

    def inbox(self, address: str, mailbox: str = "INBOX") -> list[bytes]:
        """Each message of the mailbox as a client would see it: head + body."""
        store = open_store(self.data)
        try:

            def read(txn):
                account = txn.account(address)
                box = txn.mailbox(account.id, mailbox)
                return [bytes(m.head) + bytes(txn.blob(m.blob_id)) for m in txn.messages(box.id)]

            return store.read(read)
        finally:
            store.close()

    def queue_entries(self) -> list:
        """The outbound queue's entries (QueuedMessage), oldest first."""
        store = open_store(self.data)
        try:
            return store.read(lambda txn: txn.queued())
        finally:
            store.close()

    def queue(self) -> list[tuple[str, tuple[str, ...], bytes]]:
        """The outbound queue: (sender, recipients, message) of each entry."""
        store = open_store(self.data)
        try:
            return store.read(
                lambda txn: [
                    (q.sender, q.recipients, bytes(q.head) + bytes(txn.blob(q.blob_id)))
                    for q in txn.queued()
                ]
            )
        finally:
            store.close()


@pytest.fixture
def appliance(tmp_path):
    """A running appliance serving example.test with accounts ann and bob."""
    app = Appliance(data=tmp_path / "data")
    app.data.mkdir()
    assert app.cli("domain", "add", "example.test").returncode == 0
    app.add_user("ann@example.test")
    app.add_user("bob@example.test")
    app.start()
    yield app
    assert app.stop() == 0, app.log()


@pytest.fixture
def make_appliance(tmp_path):
    """Factory for an appliance with custom settings; started by the test."""
    made = []

    def make(**settings) -> Appliance:
        app = Appliance(data=tmp_path / f"data{len(made)}", settings=settings)
        app.data.mkdir()
        assert app.cli("domain", "add", "example.test").returncode == 0
        app.add_user("ann@example.test")
        made.append(app)
        return app

    yield make
    for app in made:
        app.stop(signal.SIGKILL)
