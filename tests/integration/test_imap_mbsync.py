"""mbsync (isync) mirrors a 1,000-message INBOX to a Maildir and back, over TLS.

mbsync is what many people use to keep a local copy of their mail: it pulls,
pushes, propagates flags and deletions both ways and then has nothing left to
do. Two differences between the sides are mbsync's own and documented: a
Maildir stores lines ending in LF where IMAP has CRLF, and mbsync adds an
X-TUID header to each message it copies (to find it again after a crash). The
comparisons below undo exactly those two and nothing else.
"""

import functools
import imaplib
import random
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from appliance.tls import self_signed_paths
from tests.conftest import PASSWORD

USER = "ann@example.test"
MESSAGES = 1000
# Messages per MULTIAPPEND: one transaction each instead of one per message.
APPEND_BATCH = 250
MBSYNC_TIMEOUT = 120  # seconds for one run; a run with 1,000 messages takes a few

pytestmark = pytest.mark.skipif(
    shutil.which("mbsync") is None, reason="mbsync (isync) is not installed"
)

# Maildir info letters (https://cr.yp.to/proto/maildir.html) and the IMAP flags
# mbsync maps them to; P (passed) has no system flag and is not used here.
LETTER_FLAGS = {
    "D": "\\Draft",
    "F": "\\Flagged",
    "R": "\\Answered",
    "S": "\\Seen",
    "T": "\\Deleted",
}
FLAG_LETTERS = {flag: letter for letter, flag in LETTER_FLAGS.items()}
WORDS = ["mail", "box", "sync", "lorem", "ipsum", "dolor", "amet", "message", "flag", "server"]
EIGHT_BIT = "Grüße aus Köln, naïve café, 日本語のテキスト, Ελληνικά"

# Flags of the messages "written locally": unread, read, read and flagged.
LOCAL_FLAGS = (frozenset(), frozenset({"\\Seen"}), frozenset({"\\Seen", "\\Flagged"}))

Messages = dict[bytes, frozenset[str]]  # message (CRLF, as IMAP serves it) -> flags


def body_line(rng: random.Random, index: int) -> str:
    kind = rng.randrange(12)
    if kind == 0:  # what SMTP and POP3 dot-stuff; IMAP must pass it untouched
        return rng.choice((".", "..", ".. a line that starts with a dot"))
    if kind == 1:
        return EIGHT_BIT
    if kind == 2 and index % 5 == 0:  # up to well past RFC 5322's 998
        return "long " + "x" * rng.choice((900, 993, 2000, 5000))
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))


@functools.cache  # made once, compared many times
def sample_message(number: int) -> bytes:
    """A deterministic, varied message of about 2 to 20 KB with an 8-bit body."""
    rng = random.Random(number)
    target = rng.randint(2_000, 20_000)
    head = (
        f"From: Sender {number % 17} <sender{number % 17}@elsewhere.test>\r\nTo: {USER}\r\n"
        f"Subject: sample {number} {rng.choice(WORDS)}\r\n"
        f"Date: Tue, 03 Nov 2026 10:{number % 60:02d}:00 +0000\r\n"
        f"Message-ID: <sample{number}@elsewhere.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    ).encode()
    lines = []
    size = len(head)
    while size < target:
        line = body_line(rng, len(lines)).encode() + b"\r\n"
        lines.append(line)
        size += len(line)
    return head + b"".join(lines)


def sample_flags(number: int) -> frozenset[str]:
    flags = set()
    if number % 3 == 0:
        flags.add("\\Seen")
    if number % 5 == 0:
        flags.add("\\Flagged")
    if number % 7 == 0:
        flags.add("\\Answered")
    return frozenset(flags)


def without_tuid(message: bytes, newline: bytes) -> bytes:
    """The message without the X-TUID header line mbsync adds to what it copies."""
    head, blank, body = message.partition(newline * 2)
    lines = head.split(newline)
    kept = [line for line in lines if not line.startswith(b"X-TUID: ")]
    return newline.join(kept) + blank + body


def label(message: bytes) -> str:
    found = re.search(rb"^Subject: ([^\r\n]*)", message, re.MULTILINE)
    return found[1].decode(errors="replace") if found else repr(message[:40])


def assert_same(actual: Messages, expected: Messages, where: str) -> None:
    """Every expected message byte for byte with its flags, and nothing else."""
    missing = sorted(label(m) for m in expected if m not in actual)
    unexpected = sorted(label(m) for m in actual if m not in expected)
    wrong = sorted(
        f"{label(m)}: {sorted(actual[m])} != {sorted(flags)}"
        for m, flags in expected.items()
        if m in actual and actual[m] != flags
    )
    assert not (missing or unexpected or wrong), (
        f"{where}: {len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected "
        f"{unexpected[:5]}, {len(wrong)} with other flags {wrong[:5]}"
    )


# -- the server side, over imaplib ---------------------------------------------------------


def connect(app) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(app.host, app.imap_port, timeout=30)
    # imaplib sends a literal and what follows it in separate small writes;
    # without TCP_NODELAY each waits for the server's delayed ACK (40 ms).
    imap.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    imap.login(USER, PASSWORD)
    return imap


def ok(result) -> list:
    status, data = result
    assert status == "OK", data
    return data


def multiappend(imap: imaplib.IMAP4, messages: list[bytes]) -> None:
    """One APPEND of many messages into INBOX (RFC 3502), which imaplib cannot send itself."""
    tag = imap._new_tag()
    for index, message in enumerate(messages):
        prefix = tag + b" APPEND INBOX " if index == 0 else b" "
        imap.send(prefix + b"{%d}\r\n" % len(message))
        continuation = imap.readline()
        assert continuation.startswith(b"+"), continuation
        imap.send(message)
    imap.send(b"\r\n")
    while not (line := imap.readline()).startswith(tag):
        assert line.startswith(b"* "), line
    assert line.startswith(tag + b" OK [APPENDUID "), line


def fill_inbox(app, numbers: range) -> None:
    """APPEND the sample messages, then set their flags with a STORE per flag."""
    imap = connect(app)
    try:
        for start in range(0, len(numbers), APPEND_BATCH):
            multiappend(imap, [sample_message(n) for n in numbers[start : start + APPEND_BATCH]])
        ok(imap.select())
        uids = [int(u) for u in ok(imap.uid("SEARCH", "ALL"))[0].split()]
        assert len(uids) == len(numbers)
        for flag in ("\\Seen", "\\Flagged", "\\Answered"):
            chosen = [uid for uid, n in zip(uids, numbers, strict=True) if flag in sample_flags(n)]
            ok(imap.uid("STORE", ",".join(map(str, chosen)), "+FLAGS.SILENT", f"({flag})"))
    finally:
        imap.logout()


def server_messages(app) -> tuple[Messages, dict[bytes, int]]:
    """INBOX as a client sees it (BODY.PEEK[] and FLAGS), and each message's UID."""
    imap = connect(app)
    try:
        ok(imap.select())
        data = ok(imap.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[])"))
    finally:
        imap.logout()
    messages, uids = {}, {}
    for part in data:
        if not isinstance(part, tuple):
            continue
        uid = int(re.search(rb"UID (\d+)", part[0])[1])
        flags = re.search(rb"FLAGS \(([^)]*)\)", part[0])[1].decode().split()
        message = without_tuid(part[1], b"\r\n")
        messages[message] = frozenset(flags)
        uids[message] = uid
    return messages, uids


def server_snapshot(app) -> tuple:
    """Everything a no-op sync must leave alone, down to the modification sequence."""
    imap = connect(app)
    try:
        ok(imap.select())
        status = ok(imap.status("INBOX", "(MESSAGES UIDNEXT HIGHESTMODSEQ)"))[0]
        data = ok(imap.uid("FETCH", "1:*", "(FLAGS MODSEQ BODY.PEEK[])"))
    finally:
        imap.logout()
    return status, [part if isinstance(part, bytes) else tuple(part) for part in data]


# -- the Maildir side ----------------------------------------------------------------------


def maildir_files(maildir: Path) -> dict[bytes, Path]:
    """Each message file in new/ and cur/, by its content as the server has it."""
    files = {}
    for path in sorted([*maildir.glob("new/*"), *maildir.glob("cur/*")]):
        content = without_tuid(path.read_bytes(), b"\n")
        assert b"\r" not in content, f"{path.name}: a Maildir file keeps CRs"
        files[content.replace(b"\n", b"\r\n")] = path
    return files


def file_flags(path: Path) -> frozenset[str]:
    _, _, letters = path.name.partition(":2,")
    return frozenset(LETTER_FLAGS[letter] for letter in letters)


def maildir_snapshot(maildir: Path) -> dict[str, bytes]:
    """Every message file by name (mbsync's own state files aside) with its content."""
    paths = [*maildir.glob("new/*"), *maildir.glob("cur/*"), *maildir.glob("tmp/*")]
    return {str(path.relative_to(maildir)): path.read_bytes() for path in paths}


def maildir_messages(maildir: Path) -> Messages:
    return {message: file_flags(path) for message, path in maildir_files(maildir).items()}


def set_file_flags(path: Path, flags: frozenset[str]) -> Path:
    """What a Maildir reader does when flags change: rename into cur/ with new info."""
    base = path.name.partition(":2,")[0]
    letters = "".join(sorted(FLAG_LETTERS[flag] for flag in flags))
    target = path.parent.parent / "cur" / f"{base}:2,{letters}"
    path.rename(target)
    return target


def local_message(number: int) -> bytes:
    """A message a local mail program wrote: LF line ends, as a Maildir holds them."""
    return (
        f"From: {USER}\nTo: friend@elsewhere.test\nSubject: written locally {number}\n"
        f"Message-ID: <local{number}@example.test>\n\n"
        f"Dear friend,\n.\n{EIGHT_BIT}\n{'y' * 1500}\n-- \nann\n"
    ).encode()


def write_local(maildir: Path, number: int, flags: frozenset[str]) -> bytes:
    message = local_message(number)
    unique = f"{1_800_000_000 + number}.M{number}P1.local"
    if flags:
        letters = "".join(sorted(FLAG_LETTERS[flag] for flag in flags))
        (maildir / "cur" / f"{unique}:2,{letters}").write_bytes(message)
    else:
        (maildir / "new" / unique).write_bytes(message)
    return message.replace(b"\n", b"\r\n")


# -- mbsync ---------------------------------------------------------------------------------


def mbsync_version() -> tuple[int, ...]:
    result = subprocess.run(["mbsync", "--version"], capture_output=True, text=True, timeout=30)
    found = re.search(r"(\d+)\.(\d+)", result.stdout + result.stderr)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def write_mbsyncrc(app, directory: Path, starttls: bool = False) -> Path:
    """One channel, INBOX <-> a Maildir, over TLS with the appliance's certificate pinned."""
    certificate, _ = self_signed_paths(app.data)
    # isync 1.5 renamed SSLType to TLSType.
    tls_keyword = "TLSType" if mbsync_version() >= (1, 5) else "SSLType"
    tls = f"{tls_keyword} STARTTLS" if starttls else f"{tls_keyword} IMAPS"
    port = app.imap_port if starttls else app.imaps_port
    # mbsync makes the Maildir, not the folder it lives in.
    (directory / "mail").mkdir(exist_ok=True)
    rc = directory / ("mbsyncrc-starttls" if starttls else "mbsyncrc-imaps")
    rc.write_text(
        # The test's Maildir need not survive a power cut: no fsync per message.
        "FSync no\n\n"
        f"IMAPAccount appliance\nHost {app.host}\nPort {port}\nUser {USER}\n"
        f'Pass "{PASSWORD}"\n{tls}\nCertificateFile {certificate}\nTimeout 30\n\n'
        "IMAPStore far\nAccount appliance\n\n"
        f"MaildirStore near\nPath {directory}/mail/\nInbox {directory}/mail/INBOX\n\n"
        "Channel inbox\nFar :far:\nNear :near:\nSync All\nCreate Both\nExpunge Both\n"
        "SyncState *\n"
    )
    return rc


def mbsync(rc: Path, *options: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["mbsync", *options, "-c", str(rc), "-a"],
        capture_output=True,
        text=True,
        timeout=MBSYNC_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for line in result.stderr.splitlines():  # a notice about a new Maildir is fine
        assert not re.match(r"(Error|Warning|IMAP error)", line), result.stderr
    return result


# Commands that change a mailbox; a sync with nothing to do sends none of them.
WRITES = {"APPEND", "STORE", "UID STORE", "EXPUNGE", "UID EXPUNGE", "COPY", "UID COPY", "UID MOVE"}


def sent_commands(network_log: str) -> list[str]:
    """The IMAP commands in mbsync's -Dn log, without their tags."""
    return re.findall(r">>> \d+ ([A-Z]+(?: [A-Z]+)?)", network_log)


def test_mbsync_mirrors_a_thousand_messages_both_ways(appliance, tmp_path):
    fill_inbox(appliance, range(MESSAGES))
    originals = {sample_message(n): sample_flags(n) for n in range(MESSAGES)}
    on_server, uids = server_messages(appliance)
    assert_same(on_server, originals, "the server before any sync")
    rc = write_mbsyncrc(appliance, tmp_path)
    maildir = tmp_path / "mail" / "INBOX"

    # 1. The first run pulls everything, byte for byte, flags in the file names.
    mbsync(rc)
    assert_same(maildir_messages(maildir), originals, "the Maildir after the first sync")
    assert_same(server_messages(appliance)[0], originals, "the server after the first sync")

    # 2. Changes on both sides, each one propagated to the other.
    expected = dict(originals)
    files = maildir_files(maildir)
    for number in range(21):  # written locally: unread in new/, or with flags in cur/
        flags = LOCAL_FLAGS[number % len(LOCAL_FLAGS)]
        expected[write_local(maildir, number, flags)] = flags
    for number in range(100, 115):  # deleted locally by removing the file
        files[sample_message(number)].unlink()
        del expected[sample_message(number)]
    for number in range(115, 120):  # deleted locally by marking it trashed
        set_file_flags(files[sample_message(number)], sample_flags(number) | {"\\Deleted"})
        del expected[sample_message(number)]
    for number in range(200, 220):  # read and (un)flagged locally
        flags = sample_flags(number) ^ {"\\Flagged"} | {"\\Seen"}
        set_file_flags(files[sample_message(number)], flags)
        expected[sample_message(number)] = flags

    imap = connect(appliance)
    ok(imap.select())
    for number in range(300, 320):  # answered and marked unread in another client
        flags = sample_flags(number) ^ {"\\Answered", "\\Seen"}
        ok(imap.uid("STORE", str(uids[sample_message(number)]), "FLAGS", f"({' '.join(flags)})"))
        expected[sample_message(number)] = flags
    doomed = [uids[sample_message(number)] for number in range(400, 415)]
    ok(imap.uid("STORE", ",".join(map(str, doomed)), "+FLAGS.SILENT", "(\\Deleted)"))
    ok(imap.expunge())
    for number in range(400, 415):
        del expected[sample_message(number)]
    for number in range(MESSAGES, MESSAGES + 5):  # new on the server, two of them drafts
        flags = frozenset(["\\Draft", "\\Seen"] if number % 2 else [])
        ok(
            imap.append(
                "INBOX", f"({' '.join(flags)})" if flags else None, None, sample_message(number)
            )
        )
        expected[sample_message(number)] = flags
    imap.logout()

    mbsync(rc)
    assert_same(server_messages(appliance)[0], expected, "the server after the second sync")
    assert_same(maildir_messages(maildir), expected, "the Maildir after the second sync")
    # Written locally, deleted locally, deleted on the server, new on the server.
    assert len(expected) == MESSAGES + 21 - 20 - 15 + 5

    # 3. Nothing changed since: a further run, through the STARTTLS listener this
    # time (the same mailbox by another door), must touch neither side.
    server_before, local_before = server_snapshot(appliance), maildir_snapshot(maildir)
    result = mbsync(write_mbsyncrc(appliance, tmp_path, starttls=True), "-Dn")
    commands = sent_commands(result.stdout + result.stderr)
    assert "STARTTLS" in commands, commands
    assert "SELECT" in commands and "UID FETCH" in commands, commands
    assert not WRITES & set(commands), commands
    assert server_snapshot(appliance) == server_before
    assert maildir_snapshot(maildir) == local_before
