"""Helpers shared by the benchmark scripts in this folder.

Finding the peers' tools, free loopback ports, bounded waits for a server's
greeting, stopping what a script started by PID, sampling the RSS of a
process or of a tree of them, running the appliance's CLI, the part of a
Dovecot configuration that every benchmark's private Dovecot instance has in
common, starting and stopping a private Postfix instance, and the generated
messages that the POP3, IMAP and outbound SMTP benchmarks use.

Standard library only.  A script sets PROG to its own name first, so that
its progress lines on stderr say who wrote them.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import os
import pwd
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

PROG = "bench"  # the script's name, set by the script

DOMAIN = "bench.test"
RECIPIENT = "user@" + DOMAIN
SENDER = "sender@" + DOMAIN
PASSWORD = "bench-password-not-secret"

# Extra places where Debian keeps the tools, for a PATH without sbin.
EXTRA_PATH = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]

POLL = 0.05  # seconds between Maildir counts and RSS samples
LOG_TAIL = 25  # lines of a peer's log shown when a step fails


class BenchError(Exception):
    """A step failed; the message says which and why."""


def note(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr, flush=True)


def find_tool(name: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + os.pathsep.join(EXTRA_PATH)
    return shutil.which(name, path=path)


def need_tool(name: str, package: str) -> str:
    tool = find_tool(name)
    if tool is None:
        raise BenchError(
            f"{name} not found; install it with: "
            f"DEBIAN_FRONTEND=noninteractive apt-get install -y {package}"
        )
    return tool


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError as e:
        return f"    (cannot read {path}: {e})"
    text = data.decode("utf-8", "replace").splitlines()[-lines:]
    if not text:
        return f"    ({path.name} is empty)"
    return "\n".join("    " + line for line in text)


def with_tail(msg: str, *logs: Path) -> str:
    parts = [msg]
    for log in logs:
        parts.append(f"  last lines of {log.name}:\n{tail(log)}")
    return "\n".join(parts)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def fs_type(path: Path) -> str:
    """The filesystem type under path, from /proc/self/mounts (best effort)."""
    best, kind = "", "unknown"
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mnt = fields[1].replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) >= len(best):
                    best, kind = mnt, fields[2]
    except OSError:
        pass
    return kind


def read_banner(sock: socket.socket) -> bytes:
    sock.settimeout(2.0)
    data = b""
    while b"\n" not in data and len(data) < 4096:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def wait_banner(
    address,
    what: str,
    timeout: float,
    proc: subprocess.Popen | None,
    logs: list[Path],
    expect: bytes = b"220",
    goodbye: bytes = b"QUIT\r\n",
) -> str:
    """Connect until a greeting starting with `expect` is read, then say goodbye.

    220 for SMTP and LMTP, +OK for POP3 (both know QUIT); for IMAP, `* OK`
    and a tagged LOGOUT. Bounded by timeout.
    """
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    deadline = time.monotonic() + timeout
    last_error = "no attempt"
    for _ in range(int(timeout / 0.1) + 1):
        if proc is not None and proc.poll() is not None:
            raise BenchError(with_tail(f"{what} exited with status {proc.returncode}", *logs))
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(2.0)
                s.connect(address)
                banner = read_banner(s)
                if banner.startswith(expect):
                    try:
                        s.sendall(goodbye)
                        read_banner(s)
                    except OSError:
                        pass
                    return banner.decode("ascii", "replace").strip()
                last_error = f"greeting was {banner[:80]!r}"
        except OSError as e:
            last_error = str(e)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    raise BenchError(
        with_tail(f"{what} did not greet on {address} within {timeout:.0f} s ({last_error})", *logs)
    )


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                out[key] = value.strip()
    except OSError:
        pass
    return out


def kb(value: str | None) -> int | None:
    if not value:
        return None
    try:
        return int(value.split()[0])
    except (ValueError, IndexError):
        return None


def reset_peak_rss(pid: int) -> bool:
    """Set the process's VmHWM back to its current RSS (Linux 4.0+, needs
    the right to write /proc/PID/clear_refs). False when that is refused."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie that nobody reaps is gone for our purposes.
    return proc_status(pid).get("State", "").split()[:1] != ["Z"]


def wait_pid_gone(pid: int, timeout: float) -> bool:
    for _ in range(int(timeout / 0.1) + 1):
        if not pid_alive(pid):
            return True
        time.sleep(0.1)
    return not pid_alive(pid)


def stop_child(proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    """SIGTERM by PID, bounded wait, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        note(f"{what} (pid {proc.pid}) ignored SIGTERM for {timeout:.0f} s; killing it")
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            note(f"{what} (pid {proc.pid}) did not die")


class RssSampler(threading.Thread):
    """Samples VmRSS (and its anonymous part, RssAnon) of a process, or the
    sum over a few processes, every POLL seconds until stopped or until none
    of them is left."""

    def __init__(self, pid: int, *more: int) -> None:
        super().__init__(daemon=True)
        self.pids = (pid, *more)
        self.max_kb = 0
        self.anon_max_kb = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            statuses = [s for s in map(proc_status, self.pids) if "VmRSS" in s]
            if not statuses:
                return
            self.max_kb = max(self.max_kb, sum(kb(s["VmRSS"]) or 0 for s in statuses))
            anon = sum(kb(s.get("RssAnon")) or 0 for s in statuses)
            self.anon_max_kb = max(self.anon_max_kb, anon)
            self.samples += 1
            self._stop_event.wait(POLL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def descendants(pid: int) -> list[int]:
    """The processes below pid (children, their children ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # The name in parentheses may hold spaces; the fields after it do not.
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            parents[int(entry)] = int(fields[1])
    found: list[int] = []
    wanted = {pid}
    while wanted:
        below = [child for child, parent in parents.items() if parent in wanted]
        found.extend(below)
        wanted = set(below)
    return found


def pss_kb(pid: int) -> int | None:
    """The process's proportional set size: its RSS with every page shared
    with n processes counted 1/n, so that a sum over processes that share
    libraries counts them once (/proc/PID/smaps_rollup, Linux 4.14+)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return kb(line.split(":", 1)[1])
    except OSError:
        pass
    return None


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of the process and of the children it has
    reaped (utime, stime, cutime, cstime of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    # After the name: state is field 3, utime field 14 ... cstime field 17.
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU time of a process and everything below it, living or gone: each
    process that has ended counts in the cutime and cstime of the one that
    reaped it, so nothing is counted twice."""
    own = cpu_seconds(pid)
    if own is None:
        return None
    return own + sum(cpu_seconds(child) or 0.0 for child in descendants(pid))


class TreeRssSampler(threading.Thread):
    """Samples the summed VmRSS and PSS of a process and everything below it
    every POLL seconds, for a server made of many processes that come and go
    (Postfix). The set of processes is looked up again every TREE_REFRESH
    samples, so that the /proc walk does not weigh on what is measured."""

    TREE_REFRESH = 10

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.max_kb = 0  # the largest sum of VmRSS
        self.pss_max_kb = 0  # the largest sum of PSS
        self.max_processes = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        pids: list[int] = []
        while not self._stop_event.is_set():
            if self.samples % self.TREE_REFRESH == 0:
                pids = [self.pid, *descendants(self.pid)]
            rss = [kb(proc_status(p).get("VmRSS")) for p in pids]
            alive = [p for p, r in zip(pids, rss, strict=True) if r is not None]
            if self.pid not in alive:
                return
            self.max_kb = max(self.max_kb, sum(r or 0 for r in rss))
            self.pss_max_kb = max(self.pss_max_kb, sum(pss_kb(p) or 0 for p in alive))
            self.max_processes = max(self.max_processes, len(alive))
            self.samples += 1
            self._stop_event.wait(POLL)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


def mib(kib: int | None) -> str:
    return "?" if kib is None else f"{kib / 1024:.1f} MiB"


# --------------------------------------------------------------------------
# The appliance


def appliance_command(override: str | None) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    env.pop("APPLIANCE_DATA", None)
    if override:
        return shlex.split(override), env
    venv = REPO / ".venv" / "bin" / "appliance"
    if os.access(venv, os.X_OK):
        return [str(venv)], env
    note(f"{venv.relative_to(REPO)} is missing; using {sys.executable} -m appliance")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "appliance"], env


def appliance_cli(base: list[str], env, data: Path, argv: list[str], stdin: str | None = None):
    cmd = base + ["--data", str(data)] + argv
    try:
        r = subprocess.run(
            cmd, input=stdin, capture_output=True, text=True, env=env, cwd=data, timeout=120
        )
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"`appliance {' '.join(argv)}` took more than 120 s") from e
    if r.returncode != 0:
        out = (r.stdout + r.stderr).strip()
        last = out.splitlines()[-1] if out else "no output"
        raise BenchError(
            f"`appliance {' '.join(argv)}` failed with status {r.returncode}: {last}\n{out}"
        )


# --------------------------------------------------------------------------
# Dovecot


def pick_mail_user() -> pwd.struct_passwd:
    for name in ("mail", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise BenchError("no system user `mail` or `nobody` to own the Dovecot mailbox")


def dovecot_version(dovecot: str) -> str | None:
    try:
        r = subprocess.run([dovecot, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return r.stdout.split()[0] if r.returncode == 0 and r.stdout.split() else None


def dovecot_base_conf(dv: Path, protocols: str, user: pwd.struct_passwd) -> str:
    """The settings every private Dovecot instance shares: its own run, state
    and log paths under dv, loopback only, no TLS, plaintext logins allowed
    (loopback only), mail in ~/Maildir owned by `user`. The caller appends its
    passdb, userdb and services."""
    return f"""\
# Written by bench/{PROG} for one run; nothing from /etc/dovecot is read.
instance_name = {PROG.replace("_", "-")}-bench
base_dir = {dv}/run
state_dir = {dv}/state
log_path = {dv}/dovecot.log
info_log_path = {dv}/dovecot.log
protocols = {protocols}
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:~/Maildir
mail_fsync = optimized
first_valid_uid = {user.pw_uid}
first_valid_gid = {user.pw_gid}
"""


# --------------------------------------------------------------------------
# Postfix


# master.cf: one line per service (name type private unpriv chroot wakeup
# maxproc command); the caller puts its own listeners first. No chroot
# anywhere: the queue lives in a temporary directory.
POSTFIX_SERVICES = """\
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
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
local      unix  - n n -  - local
virtual    unix  - n n -  - virtual
lmtp       unix  - - n -  - lmtp
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
"""


def postfix_master_cf(listeners: str) -> str:
    return f"# Written by bench/{PROG} for one run.\n{listeners.rstrip()}\n{POSTFIX_SERVICES}"


def postfix_defaults(postconf: str) -> dict[str, str]:
    """`postconf -d`: the built-in defaults, which also say the version
    (mail_version) and which parameters this Postfix knows."""
    r = subprocess.run([postconf, "-d"], capture_output=True, text=True, timeout=60)
    out = {}
    for line in r.stdout.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            out[key.strip()] = value
    return out


def postfix_base_main_cf(root: Path, pf: Path, defaults: dict[str, str]) -> list[str]:
    """The main.cf lines every private Postfix shares: its queue, data and
    log under pf and root, loopback only, no local delivery, no DNS. The
    caller adds where mail goes and what its listeners allow."""
    lines = [
        f"# Written by bench/{PROG} for one run; nothing from /etc/postfix is read.",
        "compatibility_level = 3.6",
        f"queue_directory = {pf}/queue",
        f"data_directory = {pf}/data",
        # postfix-files and dynamicmaps.cf stay where the package put them.
        f"meta_directory = {defaults.get('meta_directory', '/etc/postfix')}",
        f"maillog_file = {root}/postfix.log",
        f"maillog_file_prefixes = {root}",
        f"myhostname = postfix.{DOMAIN}",
        f"mydomain = {DOMAIN}",
        "myorigin = $myhostname",
        "mydestination =",
        "local_recipient_maps =",
        "local_transport = error:5.1.1 local delivery is disabled",
        "alias_maps =",
        "alias_database =",
        "inet_interfaces = 127.0.0.1",
        "inet_protocols = ipv4",
        "smtpd_banner = $myhostname ESMTP",
        "smtp_host_lookup = native",
        "lmtp_host_lookup = native",
        "biff = no",
        "append_dot_mydomain = no",
    ]
    if "smtp_dns_support_level" in defaults:
        lines.append("smtp_dns_support_level = disabled")
    else:
        lines.append("disable_dns_lookups = yes")
    if "smtpd_peername_lookup" in defaults:
        lines.append("smtpd_peername_lookup = no")
    return lines


def start_postfix(postfix: str, pf: Path, log: Path) -> int | None:
    """`postfix -c pf/conf start`; the master's PID from its pid file (None
    when it cannot be read: then only `postfix stop` can stop it)."""
    r = subprocess.run(
        [postfix, "-c", str(pf / "conf"), "start"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise BenchError(
            with_tail(
                f"`postfix start` failed with status {r.returncode}:\n"
                + (r.stdout + r.stderr).strip(),
                log,
            )
        )
    pid_file = pf / "queue" / "pid" / "master.pid"
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        note(f"warning: cannot read Postfix's {pid_file.name}")
        return None


def stop_postfix(postfix: str, pf: Path, master_pid: int | None) -> None:
    """`postfix stop`, then the master by PID if it is still there."""
    try:
        subprocess.run(
            [postfix, "-c", str(pf / "conf"), "stop"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        note("`postfix stop` took more than 60 s")
    if master_pid is not None and not wait_pid_gone(master_pid, 30):
        note(f"Postfix master (pid {master_pid}) still runs; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(master_pid, signal.SIGKILL)
        wait_pid_gone(master_pid, 10)


# --------------------------------------------------------------------------
# The messages: generated, deterministic (the same options give the same bytes)

_WORD_TEXT = (
    "mail box queue relay header body line dot stuff octet server client session "
    "maildir index cache flag seen answer draft folder account domain record blob "
    "commit sync transaction cursor page tree branch leaf key value store loop "
    "socket buffer chunk stream window frame packet route hop bounce notice report "
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike"
)
WORDS = _WORD_TEXT.split()
NAMES = ("Ada Byron", "Alan Kay", "Grace Hopper", "Ken Thompson", "Barbara Liskov",
         "Edsger Dijkstra", "Frances Allen", "Dennis Ritchie", "Radia Perlman")  # fmt: skip
SENDER_DOMAINS = ("example.org", "example.net", "lists.example.com", "mx.example.edu")
# Lines that a POP3 server has to dot-stuff, and poplib has to unstuff;
# an IMAP server sends them as they are.
DOT_LINES = (".", "..", "...", ". a lone dot and a space", ".signature follows",
             "..double dot", ".\tdot and tab", "....")  # fmt: skip
EXTRA_FIELDS = (
    ("X-Mailer", lambda r: f"BenchMailer {r.randint(1, 9)}.{r.randint(0, 20)}"),
    ("X-Priority", lambda r: str(r.randint(1, 5))),
    ("List-Id", lambda r: f"<{r.choice(WORDS)}.{r.choice(SENDER_DOMAINS)}>"),
    ("Precedence", lambda r: r.choice(("bulk", "list", "junk"))),
    ("X-Spam-Score", lambda r: f"{r.uniform(-5, 10):.1f}"),
    ("Keywords", lambda r: ", ".join(r.sample(WORDS, 4))),
    ("Reply-To", lambda r: f"{r.choice(WORDS)}@{r.choice(SENDER_DOMAINS)}"),
    ("In-Reply-To", lambda r: f"<{r.getrandbits(64):016x}@{r.choice(SENDER_DOMAINS)}>"),
)
EPOCH = datetime.datetime(2024, 3, 1, 8, 0, 0, tzinfo=datetime.UTC)


def words(r: random.Random, low: int, high: int) -> str:
    return " ".join(r.choices(WORDS, k=r.randint(low, high)))


def body_line(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.08:
        return ""
    if kind < 0.16:
        return r.choice(DOT_LINES)
    if kind < 0.20:
        return "." + words(r, 1, 8)  # more dots, random text after them
    if kind < 0.24:
        return "\t" + words(r, 1, 6)
    if kind < 0.27:
        return "From " + words(r, 1, 5)  # an mbox separator look-alike
    if kind < 0.30:
        return words(r, 1, 6) + "  "  # trailing white space stays
    line = words(r, 1, 14)
    return line[:78].rstrip()


def make_message(n: int, size: int) -> bytes:
    """Message n (from 1) of about `size` bytes: CRLF line ends, ASCII only,
    first line `X-Bench-Id: n`. Only n and size decide its bytes."""
    # The seed names bench/pop3, where the generator began: the bytes stay those
    # of earlier runs.
    r = random.Random(f"bench/pop3 message {n} size {size}")
    name = r.choice(NAMES)
    sender = f"{name.split()[0].lower()}@{r.choice(SENDER_DOMAINS)}"
    date = EPOCH + datetime.timedelta(seconds=n * 97 + r.randint(0, 90))
    fields = [f"X-Bench-Id: {n}"]
    for hop in range(r.randint(0, 2)):
        fields.append(
            f"Received: from relay{hop}.{r.choice(SENDER_DOMAINS)} ([192.0.2.{r.randint(1, 254)}])"
            f"\r\n\tby mx.{r.choice(SENDER_DOMAINS)} with ESMTP id {r.getrandbits(40):010x}"
            f"; {email.utils.format_datetime(date)}"
        )
    fields.append(f'From: "{name}" <{sender}>')
    fields.append(f"To: {RECIPIENT}")
    if r.random() < 0.3:
        fields.append(f"Cc: {r.choice(WORDS)}@{DOMAIN},\r\n {r.choice(WORDS)}@{DOMAIN}")
    subject = words(r, 2, 16)
    if len(subject) > 60:  # folded
        cut = subject.rfind(" ", 0, 50)
        subject = subject[:cut] + "\r\n " + subject[cut + 1 :]
    fields.append(f"Subject: {subject}")
    fields.append(f"Date: {email.utils.format_datetime(date)}")
    fields.append(f"Message-ID: <{n}.{r.getrandbits(48):012x}@{r.choice(SENDER_DOMAINS)}>")
    for field_name, value in r.sample(EXTRA_FIELDS, r.randint(0, 4)):
        fields.append(f"{field_name}: {value(r)}")
    fields.append("MIME-Version: 1.0")
    fields.append("Content-Type: text/plain; charset=us-ascii")
    fields.append("Content-Transfer-Encoding: 7bit")
    head = "\r\n".join(fields) + "\r\n\r\n"

    lines = []
    used = len(head)
    while True:
        line = body_line(r)
        if used + len(line) + 2 > size - 80:
            break
        lines.append(line)
        used += len(line) + 2
    # Fill up to `size` exactly with one or two lines of text (when it fits).
    rest = size - used
    while rest > 2:
        take = min(rest - 2, 78)
        filler = (words(r, 20, 20) * 2)[:take]
        if filler.startswith(" ") or filler.endswith(" "):
            filler = "x" + filler[1:-1] + "x" if take > 1 else "x"
        lines.append(filler)
        rest -= take + 2
    if not lines:
        lines.append("x")
    return (head + "\r\n".join(lines) + "\r\n").encode("ascii")


def make_messages(count: int, size: int) -> list[bytes]:
    return [make_message(n, size) for n in range(1, count + 1)]


def dovecot_password(password: str) -> str:
    """The password field of Dovecot's passwd-file: hashed as the appliance
    hashes its own (Argon2id, the same cost, through the checkout's code), so
    that a login costs both sides the same; {PLAIN} where that code cannot
    be imported (its dependencies are in the checkout's .venv)."""
    sys.path.insert(0, str(REPO))
    try:
        from appliance.passwords import hash_password
    except ImportError as e:
        note(f"dovecot gets a {{PLAIN}} password, cheaper to check than the appliance's ({e})")
        return "{PLAIN}" + password
    finally:
        sys.path.remove(str(REPO))
    return "{ARGON2ID}" + hash_password(password)
