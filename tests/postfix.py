"""A private Postfix for tests that need a real SMTP peer.

    reason = postfix_missing()
    if reason:
        pytest.skip(reason)
    with PostfixPeer(tmp_path / "postfix", users=("ann",)) as postfix:
        ... connect to postfix.host, postfix.port (STARTTLS offered) or
        postfix.smtps_port (TLS from the first byte) ...
        messages = postfix.wait_for_messages("ann", 1)
        log = postfix.wait_for_log(r"disconnect from .* quit=1")

Clients that check certificates trust `postfix.certificate` and expect the
name `postfix.hostname`. `settings` adds or overrides main.cf parameters.

Nothing under /etc/postfix is read: main.cf and master.cf are written into
the directory given, with the queue, the data directory, the log file
(`maillog`) and the Maildirs beside them. Postfix listens on free loopback
ports and is stopped with `postfix -c DIR stop`, then by its master's PID
should that not be enough, so several instances (other tests, benchmarks)
can run side by side.

What it does with mail:
- `users` of `domain` get their mail in Maildirs; any other address of the
  domain is refused at RCPT with 550 5.1.1 (user unknown);
- `access` maps a recipient to a Postfix access action answered at RCPT,
  such as "451 4.3.0 Try again later";
- every other domain is refused (relay access denied), so nothing leaves.

Postfix starts as root and runs its daemons as the `postfix` user, which
cannot reach into the test's temporary directory (pytest makes its parents
private to the user running the tests). Every daemon changes into the queue
directory as root before it drops privileges and uses relative names inside
it, so the queue works wherever it lies. The virtual delivery agent is
chrooted there for the same reason: the Maildirs are `queue/maildirs/USER/`.

Postfix keeps messages with LF line ends and writes them so into the
Maildir; `messages()` gives them back with CRLF, as they were sent.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import free_ports

POSTFIX = Path("/usr/sbin/postfix")
OPENSSL = shutil.which("openssl")
# Postfix's own user; it owns the queue and receives mail for the Maildirs.
MAIL_OWNER = "postfix"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
POLL = 0.05

# One line per service: name type private unpriv chroot wakeup maxproc command.
# Only virtual is chrooted (see the module docstring).
_MASTER_CF = """\
# Written by tests/postfix.py for one test.
{host}:{port} inet n - n - - smtpd
{host}:{smtps_port} inet n - n - - smtpd
  -o smtpd_tls_wrappermode=yes
  -o smtpd_tls_security_level=encrypt
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
tlsmgr     unix  - - n 1000? 1 tlsmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
smtp       unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
virtual    unix  - n y -  - virtual
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def postfix_missing() -> str | None:
    """Why a PostfixPeer cannot run here, or None if it can."""
    if not POSTFIX.exists():
        return f"{POSTFIX} is missing (Debian package postfix)"
    if OPENSSL is None:
        return "openssl is missing: it makes Postfix's TLS certificate (Debian package openssl)"
    if os.geteuid() != 0:
        return "`postfix start` must run as root"
    try:
        pwd.getpwnam(MAIL_OWNER)
    except KeyError:
        return f"the system user {MAIL_OWNER!r} (Postfix's mail_owner) does not exist"
    return None


@dataclass
class PostfixPeer:
    """A running private Postfix; a context manager that starts and stops it."""

    directory: Path
    domain: str = "postfix.test"
    users: tuple[str, ...] = ("ann",)
    access: dict[str, str] = field(default_factory=dict)
    # Extra main.cf settings, written last so that they win.
    settings: dict[str, str] = field(default_factory=dict)
    host: str = "127.0.0.1"
    port: int = 0
    smtps_port: int = 0
    pid: int = 0

    def __post_init__(self) -> None:
        self.port, self.smtps_port = free_ports(2, self.host)

    @property
    def hostname(self) -> str:
        """Postfix's myhostname: its greeting, and the name in its certificate."""
        return f"mx.{self.domain}"

    @property
    def config(self) -> Path:
        return self.directory / "conf"

    @property
    def queue(self) -> Path:
        return self.directory / "queue"

    @property
    def certificate(self) -> Path:
        """The self-signed certificate; clients that verify trust it as a CA."""
        return self.config / "cert.pem"

    @property
    def log_path(self) -> Path:
        return self.directory / "maillog"

    def __enter__(self) -> PostfixPeer:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- starting and stopping ---------------------------------------------------------

    def start(self) -> None:
        owner = pwd.getpwnam(MAIL_OWNER)
        for path in (self.directory, self.config, self.queue):
            path.mkdir(parents=True, exist_ok=True)
        (self.queue / "data").mkdir(exist_ok=True)
        os.chown(self.queue / "data", owner.pw_uid, owner.pw_gid)
        maildirs = self.queue / "maildirs"
        maildirs.mkdir(exist_ok=True)
        os.chown(maildirs, owner.pw_uid, owner.pw_gid)
        self._make_certificate()
        (self.config / "main.cf").write_text(self._main_cf(owner))
        (self.config / "master.cf").write_text(
            _MASTER_CF.format(host=self.host, port=self.port, smtps_port=self.smtps_port)
        )
        result = self._postfix("start")
        if result.returncode != 0:
            raise RuntimeError(f"postfix start failed: {result.stdout}{result.stderr}{self.log()}")
        self.pid = self._master_pid()
        self._wait_for_greeting()

    def stop(self) -> None:
        if not self.pid:
            return
        pid, self.pid = self.pid, 0
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._postfix("stop")
        if not _wait_gone(pid, STOP_TIMEOUT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, STOP_TIMEOUT)

    def _postfix(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.config), command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT * 2,
        )

    def _master_pid(self) -> int:
        pid_file = self.queue / "pid" / "master.pid"
        for _ in range(int(START_TIMEOUT / POLL)):
            with contextlib.suppress(OSError, ValueError):
                return int(pid_file.read_text().split()[0])
            time.sleep(POLL)
        raise RuntimeError(f"Postfix wrote no {pid_file}: {self.log()}")

    def _wait_for_greeting(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=5) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            time.sleep(POLL)
        self.stop()
        raise RuntimeError(f"Postfix did not greet on port {self.port}: {self.log()}")

    def _make_certificate(self) -> None:
        key = self.config / "key.pem"
        subprocess.run(
            [
                OPENSSL or "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                f"/CN={self.hostname}",
                "-addext",
                f"subjectAltName=DNS:{self.hostname}",
                "-keyout",
                str(key),
                "-out",
                str(self.certificate),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _main_cf(self, owner: pwd.struct_passwd) -> str:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": "data",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.directory),
            "myhostname": self.hostname,
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "alias_maps": "",
            "alias_database": "",
            "relayhost": "",
            "relay_domains": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mynetworks": "",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            # Mail from loopback would count as local and have its headers
            # rewritten (Date:, Message-ID:, addresses): a peer takes it as it is.
            "local_header_rewrite_clients": "",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_maps": _inline(
                {f"{user}@{self.domain}": f"{user}/" for user in self.users}
            ),
            # Relative to the chroot, which is the queue directory.
            "virtual_mailbox_base": "/maildirs",
            "virtual_uid_maps": f"static:{owner.pw_uid}",
            "virtual_gid_maps": f"static:{owner.pw_gid}",
            "smtpd_relay_restrictions": "reject_unauth_destination",
            "smtpd_recipient_restrictions": (
                f"check_recipient_access {_inline(self.access)}" if self.access else ""
            ),
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": str(self.certificate),
            "smtpd_tls_key_file": str(self.config / "key.pem"),
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes",
            "smtp_tls_security_level": "none",
            "biff": "no",
            "append_dot_mydomain": "no",
            **self.settings,
        }
        lines = ["# Written by tests/postfix.py; nothing from /etc/postfix is read."]
        lines += [f"{name} = {value}" for name, value in settings.items()]
        return "\n".join(lines) + "\n"

    # -- what arrived ------------------------------------------------------------------

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, start: int = 0, timeout: float = 10.0) -> str:
        """The log from offset start, once a line matches pattern (Postfix logs a little late)."""
        for _ in range(int(timeout / POLL)):
            log = self.log()[start:]
            if re.search(pattern, log):
                return log
            time.sleep(POLL)
        raise AssertionError(f"no log line matches {pattern!r}: {self.log()[start:]}")

    def maildir(self, user: str) -> Path:
        return self.queue / "maildirs" / user

    def messages(self, user: str) -> list[bytes]:
        """The user's delivered messages, oldest first, with CRLF line ends."""
        new = self.maildir(user) / "new"
        if not new.is_dir():
            return []
        files = sorted(new.iterdir(), key=lambda path: (path.stat().st_mtime_ns, path.name))
        return [path.read_bytes().replace(b"\n", b"\r\n") for path in files]

    def wait_for_messages(self, user: str, count: int, timeout: float = 30.0) -> list[bytes]:
        """At least count messages of the user, waiting for them up to timeout seconds."""
        for _ in range(int(timeout / POLL)):
            messages = self.messages(user)
            if len(messages) >= count:
                return messages
            time.sleep(POLL)
        raise AssertionError(
            f"{len(self.messages(user))} of {count} messages for {user}: {self.log()}"
        )


def _inline(table: dict[str, str]) -> str:
    """A Postfix inline: table. Its values live in main.cf, so the chrooted
    virtual agent, which opens its tables after the chroot, needs no file."""
    entries = ", ".join(f"{{ {key} = {value} }}" for key, value in table.items())
    return f"inline:{{ {entries} }}"


def _wait_gone(pid: int, timeout: float) -> bool:
    for _ in range(int(timeout / POLL)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(POLL)
    return False
