"""Peers for differential tests: a private Dovecot imap, and the appliance beside it.

Dovecot runs from its own configuration file; nothing under /etc/dovecot is
read. It listens on a free loopback port, keeps its run, state and log files
and the Maildir in the test's temporary directory, and is stopped by
`doveadm stop` and, should that not be enough, by its master's PID.

Dovecot starts as root and runs the mail process as an unprivileged user,
which cannot reach the temporary directory: pytest makes the directories
above it private to the user running the tests. So the mail process is
chrooted into the Dovecot directory (a userdb home of the form DIR/./home),
where it needs nothing from outside but glibc's gconv modules, which iconv
loads when Dovecot searches a body in a charset other than UTF-8. They are
copied into the chroot at the path glibc looks for them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Appliance, free_port

DOVECOT = Path("/usr/sbin/dovecot")
DOVEADM = Path("/usr/bin/doveadm")
# Where Debian's dovecot-imapd puts the imap process.
DOVECOT_IMAP = Path("/usr/lib/dovecot/imap")
DOVECOT_USER = "tester"
DOVECOT_PASSWORD = "interop-password-not-secret"
# System users that own the Maildir, in order of preference.
MAIL_USERS = ("mail", "nobody")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class Dovecot:
    """A running private Dovecot: where it listens and how to log in."""

    host: str
    port: int
    user: str
    password: str
    config: Path
    log_path: Path
    pid: int = 0

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


def _skip_reason() -> str | None:
    for tool in (DOVECOT, DOVEADM, DOVECOT_IMAP):
        if not tool.exists():
            return f"{tool} is missing (Debian packages dovecot-core and dovecot-imapd)"
    if os.geteuid() != 0:
        return "Dovecot must start as root to run its mail process as a mail user"
    if _gconv_directory() is None:
        return "glibc's gconv modules were not found, so Dovecot could not convert charsets"
    if not any(_mail_user(name) for name in MAIL_USERS):
        return f"none of the system users {MAIL_USERS} exists to own the Maildir"
    return None


def _mail_user(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _gconv_directory() -> Path | None:
    """The directory of glibc's iconv modules (multiarch Debian, then others)."""
    for pattern in ("/usr/lib/*/gconv", "/usr/lib64/gconv", "/usr/lib/gconv"):
        for found in sorted(glob.glob(pattern)):
            if Path(found, "gconv-modules").exists():
                return Path(found)
    return None


def _config(directory: Path, port: int, user: pwd.struct_passwd) -> str:
    return f"""\
# A private Dovecot for one test module; nothing from /etc/dovecot is read.
instance_name = interop-test
base_dir = {directory}/run
state_dir = {directory}/state
log_path = {directory}/dovecot.log
info_log_path = {directory}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
first_valid_uid = {user.pw_uid}
first_valid_gid = {user.pw_gid}
valid_chroot_dirs = {directory}

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {directory}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {directory}/users
}}

# The passwd-file lies in a directory only root may enter.
service auth {{
  user = root
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
"""


def _prepare(directory: Path, port: int) -> Path:
    """Write the configuration, the passwd-file and the chroot; the config path."""
    user = next(u for u in map(_mail_user, MAIL_USERS) if u is not None)
    # The chroot's root: the mail process must be able to enter it.
    directory.chmod(0o755)
    home = directory / "home"
    home.mkdir(mode=0o700)
    os.chown(home, user.pw_uid, user.pw_gid)
    gconv = _gconv_directory()
    shutil.copytree(gconv, directory / gconv.relative_to("/"), symlinks=True)
    # passwd-file: user:password:uid:gid:gecos:home:shell; "/./" marks the chroot.
    (directory / "users").write_text(
        f"{DOVECOT_USER}:{{PLAIN}}{DOVECOT_PASSWORD}:{user.pw_uid}:{user.pw_gid}"
        f"::{directory}/./home::\n"
    )
    (directory / "users").chmod(0o600)
    config = directory / "dovecot.conf"
    config.write_text(_config(directory, port, user))
    return config


def _greets(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            return s.recv(200).startswith(b"* OK")
    except OSError:
        return False


def _wait_started(dovecot: Dovecot, pid_file: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if not dovecot.pid and pid_file.exists():
            text = pid_file.read_text().strip()
            dovecot.pid = int(text) if text.isdigit() else 0
        if dovecot.pid and _greets(dovecot.host, dovecot.port):
            return
        time.sleep(0.1)
    raise RuntimeError(f"Dovecot did not greet on port {dovecot.port}:\n{dovecot.log()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(dovecot: Dovecot) -> None:
    subprocess.run(
        [str(DOVEADM), "-c", str(dovecot.config), "stop"],
        capture_output=True,
        timeout=STOP_TIMEOUT,
    )
    if not dovecot.pid:
        return
    deadline = time.monotonic() + STOP_TIMEOUT
    while _alive(dovecot.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(dovecot.pid):
        os.kill(dovecot.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory):
    """A private Dovecot imap on a free loopback port, with one user."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("dovecot")
    port = free_port()
    config = _prepare(directory, port)
    server = Dovecot(
        host="127.0.0.1",
        port=port,
        user=DOVECOT_USER,
        password=DOVECOT_PASSWORD,
        config=config,
        log_path=directory / "dovecot.log",
    )
    # The daemon keeps the descriptors it was given: a file, not a pipe that
    # would never reach its end.
    output = directory / "dovecot.out"
    with open(output, "wb") as out:
        started = subprocess.run(
            [str(DOVECOT), "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=START_TIMEOUT,
        )
    if started.returncode != 0:
        raise RuntimeError(f"dovecot -c {config} failed: {output.read_text()}{server.log()}")
    try:
        _wait_started(server, directory / "run" / "master.pid")
        yield server
    finally:
        _stop(server)


@pytest.fixture(scope="module")
def appliance_for_module(tmp_path_factory):
    """What the `appliance` fixture of tests/conftest.py starts, shared by a
    module's tests: a differential test compares hundreds of items on one
    mailbox, and starting a server for each would take minutes."""
    app = Appliance(data=tmp_path_factory.mktemp("appliance"))
    assert app.cli("domain", "add", "example.test").returncode == 0
    app.add_user("ann@example.test")
    app.start()
    yield app
    assert app.stop() == 0, app.log()
