"""Hostile IMAP clients over real sockets: limits hold, refusals come at once, nothing smuggled."""

import contextlib
import socket
import threading
import time
from pathlib import Path

from tests.conftest import PASSWORD

USER = "ann@example.test"
LOGIN = f'LOGIN {USER} "{PASSWORD}"'.encode()
TEN_GB = 10 * 1024**3
MESSAGE = b"From: a@elsewhere.test\r\nSubject: kept\r\n\r\n" + b"body line\r\n" * 1000


class Client:
    """A raw IMAP client that sends exactly the bytes it is given and reads lines back."""

    def __init__(self, app, timeout: float = 30):
        self.sock = socket.create_connection((app.host, app.imap_port), timeout=timeout)
        self.buffer = b""
        self.greeting = self.line()
        assert self.greeting.startswith(b"* OK [CAPABILITY "), self.greeting

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_meanwhile(self, data: bytes) -> threading.Thread:
        """Send data from a thread while the caller reads: the server may answer, and
        close, before it has read it all (the rest is then refused with a reset)."""

        def send() -> None:
            with contextlib.suppress(ConnectionError):
                self.sock.sendall(data)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        return sender

    def line(self) -> bytes:
        """One response line without its CRLF; ConnectionError once the server closed."""
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread {self.buffer[:200]!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def until(self, tag: bytes) -> list[bytes]:
        """Every line up to and including the one tagged tag."""
        lines = [self.line()]
        while not lines[-1].startswith(tag + b" "):
            lines.append(self.line())
        return lines

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def login(self, tag: bytes = b"l") -> bytes:
        return self.command(tag, LOGIN)[-1]

    def closed(self) -> bool:
        """Whether the server closed the connection (after what is still unread)."""
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True

    def close(self) -> None:
        self.sock.close()


def rss_kib(app, field: str = "VmRSS") -> int:
    """The server's resident memory now, or at its highest so far (field="VmHWM")."""
    status = Path(f"/proc/{app.process.pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0])


def capabilities(line: bytes) -> list[bytes]:
    return line.split(b"[CAPABILITY ", 1)[1].split(b"]", 1)[0].split()


def logins(app) -> list[str]:
    return [line for line in app.log().splitlines() if "imap login client=" in line]


# -- literals (RFC 7888, RFC 7889) ----------------------------------------------------


def test_literal_minus_before_login_then_literal_plus_saves_a_round_trip(appliance):
    client = Client(appliance)
    before = capabilities(client.greeting)
    assert b"LITERAL-" in before and b"LITERAL+" not in before
    after = capabilities(client.login())
    assert b"LITERAL+" in after and b"LITERAL-" not in after
    assert b"APPENDLIMIT=52428800" in after
    # The whole APPEND in one write: no waiting for "+", and the octets that
    # look like commands are message text.
    data = MESSAGE + b"x LOGOUT\r\n"
    client.send(b"a APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\n")
    reply = client.until(b"a")
    assert reply[-1].startswith(b"a OK [APPENDUID "), reply
    assert not any(line.startswith(b"+") for line in reply)
    assert client.command(b"n", b"NOOP")[-1] == b"n OK NOOP completed"
    client.close()
    assert appliance.inbox(USER) == [data]


def test_big_non_synchronizing_literal_before_login_is_refused_unread(appliance):
    client = Client(appliance)
    hidden = b"\r\nb " + LOGIN + b"\r\n"
    octets = hidden + b"x" * (5000 - len(hidden))
    client.send_meanwhile(b"a LOGIN {5000+}\r\n" + octets + b" pw\r\nc NOOP\r\n")
    assert client.line() == b"a BAD [TOOBIG] Non-synchronizing literal over 4096 octets"
    assert client.line() == b"* BYE Closing connection"
    assert client.closed()
    client.close()
    assert logins(appliance) == []  # the LOGIN inside the literal never ran


def test_ten_gigabyte_literal_is_refused_at_once_and_memory_stays_flat(appliance):
    client = Client(appliance)
    client.login()
    before, peak = rss_kib(appliance), rss_kib(appliance, "VmHWM")
    started = time.monotonic()
    assert client.command(b"a", b"APPEND INBOX {%d}" % TEN_GB) == [
        b"a NO [TOOBIG] Message over APPENDLIMIT=52428800"
    ]
    assert time.monotonic() - started < 5
    # The client sent nothing of it; the connection is in step for a real one.
    client.send(b"b APPEND INBOX {%d}\r\n" % len(MESSAGE))
    assert client.line() == b"+ Ready for literal data"
    client.send(MESSAGE + b"\r\n")
    assert client.until(b"b")[-1].startswith(b"b OK [APPENDUID ")
    # Sent unasked, the octets are already coming: BAD, and the connection ends.
    client.send_meanwhile(b"c APPEND INBOX {%d+}\r\n" % TEN_GB + b"d NOOP\r\n" * 100_000)
    assert client.line() == b"c BAD [TOOBIG] Message over APPENDLIMIT=52428800"
    assert client.line() == b"* BYE Closing connection"
    assert client.closed()
    client.close()
    assert rss_kib(appliance) - before < 8 * 1024
    assert rss_kib(appliance, "VmHWM") - peak < 8 * 1024
    assert appliance.inbox(USER) == [MESSAGE]
    assert Client(appliance).login().startswith(b"l OK ")


def test_appendlimit_is_the_max_message_size_setting(make_appliance):
    app = make_appliance(imap={"max_message_size": 1000})
    app.start()
    client = Client(app)
    assert b"APPENDLIMIT=1000" in capabilities(client.login())
    assert client.command(b"a", b"APPEND INBOX {1001}") == [
        b"a NO [TOOBIG] Message over APPENDLIMIT=1000"
    ]
    data = b"Subject: exactly\r\n\r\n"
    data += b"y" * (1000 - len(data))
    client.send(b"b APPEND INBOX {1000}\r\n")
    assert client.line() == b"+ Ready for literal data"
    client.send(data + b"\r\n")
    assert client.until(b"b")[-1].startswith(b"b OK [APPENDUID ")
    client.close()
    assert app.inbox(USER) == [data]


# -- nesting, sequence sets and long lines --------------------------------------------


def test_hundred_thousand_nested_parentheses_are_bad_and_quick(make_appliance):
    app = make_appliance(imap={"max_line": 1024 * 1024})  # so that the parser sees it all
    app.start()
    client = Client(app)
    client.login()
    client.command(b"s", b"SELECT INBOX")
    started = time.monotonic()
    search = b"SEARCH " + b"(" * 100_000 + b"ALL" + b")" * 100_000
    assert client.command(b"a", search) == [b"a BAD Search keys nested too deeply"]
    assert time.monotonic() - started < 5
    assert client.command(b"n", b"NOOP")[-1] == b"n OK NOOP completed"
    client.close()
    assert "Traceback" not in app.log() and "RecursionError" not in app.log()


def million_ranges() -> bytes:
    return b",".join(b"%d" % number for number in range(1, 2_000_000, 2))


def test_million_range_sequence_set_is_bad_and_quick(make_appliance):
    big = 16 * 1024 * 1024
    app = make_appliance(imap={"max_line": big, "max_discard": big})
    app.start()
    client = Client(app)
    client.login()
    client.command(b"s", b"SELECT INBOX")
    peak = rss_kib(app, "VmHWM")
    started = time.monotonic()
    reply = client.command(b"a", b"UID FETCH " + million_ranges() + b" FLAGS")
    assert reply == [b"a BAD Too many ranges in a sequence set"]
    assert time.monotonic() - started < 10
    # The line itself (7 MB) is held a few times; a million parsed ranges would be 150 MB.
    assert rss_kib(app, "VmHWM") - peak < 64 * 1024
    assert client.command(b"n", b"NOOP")[-1] == b"n OK NOOP completed"
    client.close()


def test_million_range_sequence_set_with_default_limits_is_refused_unread(appliance):
    client = Client(appliance)
    client.login()
    client.command(b"s", b"SELECT INBOX")
    sender = client.send_meanwhile(b"a UID FETCH " + million_ranges() + b" FLAGS\r\n")
    # Longer than max_line, and than max_discard: not worth reading to its end.
    assert client.line() == b"a BAD Command line too long"
    assert client.line() == b"* BYE Closing connection"
    assert client.closed()
    sender.join(30)
    client.close()


def test_over_long_line_is_bad_and_its_rest_never_runs(appliance):
    client = Client(appliance)
    client.login()
    # What lies past the 64 KiB limit reads like a command; it is dropped with the line.
    line = b"a NOOP " + b"x" * (64 * 1024 - 7) + b"b LOGOUT"
    assert client.command(b"a", line[2:]) == [b"a BAD Command line too long"]
    assert client.command(b"c", b"NOOP") == [b"c OK NOOP completed"]
    # Its literals go with it, whatever they hold.
    octets = b"d LOGOUT\r\n" * 1000
    client.send(line + b" {%d+}\r\n" % len(octets) + octets + b" tail\r\n")
    assert client.until(b"a") == [b"a BAD Command line too long"]
    assert client.command(b"e", b"NOOP") == [b"e OK NOOP completed"]
    client.close()


# -- floods and guesses -----------------------------------------------------------------


def test_noop_flood_before_login_is_cut_off(appliance):
    client = Client(appliance)
    # One small write, read by the server at once: what it says is all there is.
    client.send(b"".join(b"n%d NOOP\r\n" % number for number in range(200)))
    lines = []
    while True:
        try:
            lines.append(client.line())
        except ConnectionError:
            break
    assert lines == [b"n%d OK NOOP completed" % number for number in range(20)] + [
        b"* BYE Too many commands before login"
    ]
    client.close()


def timed_login(client, tag: bytes, password: bytes = b"wrong") -> tuple[bytes, float]:
    started = time.monotonic()
    reply = client.command(tag, b"LOGIN " + USER.encode() + b" " + password)[-1]
    return reply, time.monotonic() - started


FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed"


def test_third_wrong_login_on_one_connection_ends_it(appliance):
    client = Client(appliance)
    assert timed_login(client, b"a")[0] == b"a " + FAILED
    reply, took = timed_login(client, b"b")
    assert reply == b"b " + FAILED
    assert took >= 1.0  # [login] failure_delay after the first failure
    assert timed_login(client, b"c")[0] == b"c " + FAILED
    assert client.line() == b"* BYE Too many failed logins"
    assert client.closed()
    client.close()


SLOW = {"failure_delay": 0.125, "max_failure_delay": 1.0}  # doubling: 0.125 ... 1.0


def test_tenth_wrong_guess_on_one_connection_takes_measurably_longer(make_appliance):
    app = make_appliance(imap={"max_failed_logins": 10}, login=SLOW)
    app.start()
    client = Client(app)
    times = []
    for number in range(10):
        reply, took = timed_login(client, b"g%d" % number)
        assert reply == b"g%d " % number + FAILED
        times.append(took)
    assert client.line() == b"* BYE Too many failed logins"
    client.close()
    assert times[9] >= 1.0 and times[9] > times[0] + 0.5, times


def test_guesses_over_several_connections_share_the_slowdown(make_appliance):
    app = make_appliance(login=SLOW)
    app.start()
    times = []
    while len(times) < 10:
        client = Client(app)
        for _ in range(min(3, 10 - len(times))):
            reply, took = timed_login(client, b"g")
            assert reply == b"g " + FAILED
            times.append(took)
        client.close()
    assert times[9] >= 1.0 and times[9] > times[0] + 0.5, times
    # The right password waits its turn too: the slowdown is per client address.
    client = Client(app)
    reply, took = timed_login(client, b"r", f'"{PASSWORD}"'.encode())
    assert reply.startswith(b"r OK ") and took >= 1.0
    client.close()


# -- IDLE without DONE --------------------------------------------------------------------


def test_idle_without_done_ends_with_bye_after_idle_timeout(make_appliance):
    app = make_appliance(imap={"idle_timeout": 3.0})
    app.start()
    client = Client(app)
    client.login()
    client.command(b"s", b"SELECT INBOX")
    client.send(b"i IDLE\r\n")
    assert client.line() == b"+ idling"
    started = time.monotonic()
    assert client.line() == b"* BYE Autologout; idle for too long"
    assert 2.5 <= time.monotonic() - started < 15
    assert client.closed()
    client.close()
    assert "imap timeout client=127.0.0.1" in app.log()


def test_a_client_trickling_bytes_without_logging_in_is_let_go(make_appliance):
    app = make_appliance(imap={"idle_timeout": 60.0, "login_timeout": 2.0})
    app.start()
    client = Client(app)
    client.sock.settimeout(0.5)
    started, received = time.monotonic(), b""
    while time.monotonic() - started < 15:
        try:
            client.send(b"x")  # never a whole line, and never idle for long
            chunk = client.sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionError:
            break
        if not chunk:
            break
        received += chunk
    assert received.startswith(b"* BYE") and time.monotonic() - started < 10
    client.close()


# -- mailbox names on the wire (RFC 3501 5.1.3, RFC 6855 3) -----------------------------


def test_mailbox_names_are_modified_utf7_until_utf8_is_enabled(appliance):
    client = Client(appliance)
    client.login()
    # 8-bit in a name before ENABLE UTF8=ACCEPT, and a bare "&": not modified UTF-7.
    assert client.command(b"a", 'CREATE "été"'.encode()) == [
        b"a BAD Mailbox name is not valid modified UTF-7"
    ]
    assert client.command(b"b", b'CREATE "Tom & Jerry"') == [
        b"b BAD Mailbox name is not valid modified UTF-7"
    ]
    assert client.command(b"c", b'CREATE "Tom &- Jerry"')[-1] == b"c OK CREATE completed"
    assert client.command(b"d", b"CREATE &AOk-t&AOk-")[-1] == b"d OK CREATE completed"
    utf8 = Client(appliance)
    utf8.login()
    assert utf8.command(b"e", b"ENABLE UTF8=ACCEPT")[-1] == b"e OK ENABLE completed"
    listed = utf8.command(b"f", b'LIST "" *')
    assert '* LIST (\\HasNoChildren) "/" "été"'.encode() in listed
    assert b'* LIST (\\HasNoChildren) "/" "Tom & Jerry"' in listed
    # In UTF-8 "&" is itself: this name is the five characters, not é.
    assert utf8.command(b"g", b'CREATE "&AOk-"')[-1] == b"g OK CREATE completed"
    listed = client.command(b"h", b'LIST "" *')
    assert b'* LIST (\\HasNoChildren) "/" &-AOk-' in listed
    assert b'* LIST (\\HasNoChildren) "/" &AOk-t&AOk-' in listed
    client.close()
    utf8.close()


# -- mailbox names ------------------------------------------------------------------


def test_names_that_escape_or_confuse_the_hierarchy_are_refused(appliance):
    client = Client(appliance)
    assert client.login().startswith(b"l OK")
    before = client.command(b"b", b'LIST "" "*"')
    bad = [b'"a//b"', b'"/top"', b'"x/../y"', b'"."', b"&AAk-tab", b"&ICg-sep", b'"a%b"']
    bad.append(b'"' + b"x" * 256 + b'"')
    for number, name in enumerate(bad):
        reply = client.command(b"c%d" % number, b"CREATE " + name)[-1]
        assert reply.startswith(b"c%d NO [CANNOT] Mailbox name" % number), (name, reply)
    assert client.command(b"r", b'RENAME Archive "ok//x"')[-1].startswith(b"r NO [CANNOT]")
    assert client.command(b"d", b'LIST "" "*"')[:-1] == before[:-1]
    assert client.command(b"p", b'CREATE "Projects/"')[-1].startswith(b"p OK")
    listed = client.command(b"q", b'LIST "" "Projects*"')
    assert listed[:-1] == [b'* LIST (\\HasNoChildren) "/" Projects']
    client.close()
