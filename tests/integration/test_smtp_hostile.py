"""Hostile input over real sockets: the right reply, no crash, nothing smuggled or leaked."""

import socket
import ssl
import time
from pathlib import Path

import pytest


class Client:
    """A raw SMTP client that sends exactly the bytes it is given."""

    def __init__(self, app, timeout=30):
        self.sock = socket.create_connection((app.host, app.port), timeout=timeout)
        self.buffer = b""
        assert self.reply().startswith(b"220 ")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> bytes:
        """One whole reply (all its lines)."""
        lines = []
        while True:
            while b"\r\n" not in self.buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {lines!r} {self.buffer!r}")
                self.buffer += chunk
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            lines.append(line)
            if line[3:4] != b"-":
                return b"\r\n".join(lines)

    def command(self, line: bytes) -> bytes:
        self.send(line + b"\r\n")
        return self.reply()

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionError:
            return True

    def close(self):
        self.sock.close()


def rss_kib(app) -> int:
    status = Path(f"/proc/{app.process.pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def start_transaction(client, rcpt=b"ann@example.test"):
    assert client.command(b"EHLO client.test").startswith(b"250-")
    assert client.command(b"MAIL FROM:<s@elsewhere.test>").startswith(b"250 2.1.0")
    assert client.command(b"RCPT TO:<" + rcpt + b">").startswith(b"250 2.1.5")


@pytest.mark.parametrize("smuggle", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n", b"\r.\r\n"])
def test_smuggled_second_message_is_never_delivered(appliance, smuggle):
    client = Client(appliance)
    start_transaction(client)
    assert client.command(b"DATA").startswith(b"354 ")
    client.send(
        b"Subject: first\r\n\r\nbody"
        + smuggle
        + b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nevil\r\n.\r\n"
    )
    reply = client.reply()
    assert reply.startswith(b"550 5.6.0"), reply
    assert client.command(b"NOOP").startswith(b"250 ")  # still in step: one reply per command
    client.close()
    assert appliance.inbox("ann@example.test") == []
    assert appliance.inbox("bob@example.test") == []
    [logged] = [line for line in appliance.log().splitlines() if " result=" in line]
    assert "to=<ann@example.test>" in logged and "result=550 status=5.6.0" in logged


def test_megabyte_command_line_is_refused_and_memory_stays_flat(appliance):
    client = Client(appliance)
    before = rss_kib(appliance)
    for _ in range(5):
        client.send(b"EHLO " + b"a" * (1024 * 1024) + b"\r\n")
        assert client.reply().startswith(b"500 5.5.2")
    assert client.command(b"NOOP").startswith(b"250 ")
    assert rss_kib(appliance) - before < 8 * 1024
    client.close()


def test_nul_filled_command_is_a_syntax_error(appliance):
    client = Client(appliance)
    assert client.command(b"\0" * 2000).startswith(b"500 5.5.2")
    assert client.command(b"EH\0LO x").startswith(b"500 5.5.2")
    assert client.command(b"EHLO client.test").startswith(b"250")
    client.close()


def test_ten_thousand_recipients_stop_at_the_limit(appliance):
    client = Client(appliance)
    client.command(b"EHLO client.test")
    client.command(b"MAIL FROM:<s@elsewhere.test>")
    client.send(b"".join(b"RCPT TO:<ann+%d@example.test>\r\n" % i for i in range(10_000)))
    replies = [client.reply()[:9] for _ in range(10_000)]
    assert replies.count(b"250 2.1.5") == 1000
    assert replies.count(b"452 4.5.3") == 9000
    assert client.command(b"DATA").startswith(b"354")
    assert client.command(b"Subject: many\r\n\r\nhi\r\n.").startswith(b"250 2.0.0")
    client.close()
    assert len(appliance.inbox("ann@example.test")) == 1  # one account, one copy


def trickle(client, data: bytes, limit: float = 15) -> tuple[bytes, float]:
    """Send data one byte a second until the server speaks; (its words, seconds taken)."""
    started = time.monotonic()
    client.sock.settimeout(1)
    received = b""
    for byte in data:
        try:
            client.send(bytes([byte]))
            received += client.sock.recv(1000)
        except TimeoutError:
            continue
        except OSError:
            pass
        break
    if time.monotonic() - started > limit:
        raise AssertionError("the server never cut the slow client off")
    return received, time.monotonic() - started


def test_client_sending_one_byte_a_second_is_cut_off(make_appliance):
    app = make_appliance(smtp={"command_timeout": 2.0})
    app.start()
    client = Client(app)
    received, seconds = trickle(client, b"EHLO slow.test\r\n" * 2)
    assert received.startswith(b"421 4.4.2"), received
    assert 1.5 < seconds < 6
    assert client.closed()


def test_slow_message_data_is_cut_off(make_appliance):
    app = make_appliance(smtp={"command_timeout": 30.0, "data_timeout": 2.0, "min_data_rate": 500})
    app.start()
    client = Client(app)
    start_transaction(client)
    assert client.command(b"DATA").startswith(b"354")
    received, seconds = trickle(client, b"Subject: slow\r\n" * 2)
    assert received.startswith(b"421 4.4.2"), received
    assert 1.5 < seconds < 6
    assert client.closed()
    assert app.inbox("ann@example.test") == []


def test_commands_pipelined_before_starttls_are_discarded(appliance):
    client = Client(appliance)
    client.command(b"EHLO client.test")
    client.send(b"STARTTLS\r\nMAIL FROM:<evil@elsewhere.test>\r\nRCPT TO:<ann@example.test>\r\n")
    assert client.reply().startswith(b"220 ")
    assert client.buffer == b""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    tls = context.wrap_socket(client.sock, server_hostname="mail.example.test")
    client.sock, client.buffer = tls, b""
    assert client.command(b"EHLO client.test").startswith(b"250-")
    # Had the injected MAIL run, this RCPT would be accepted.
    assert client.command(b"RCPT TO:<ann@example.test>").startswith(b"503 5.5.1")
    client.close()


def test_eight_bit_data_without_8bitmime_is_stored_as_sent(appliance):
    client = Client(appliance)
    start_transaction(client)
    assert client.command(b"DATA").startswith(b"354")
    body = "Subject: caf\u00e9\r\n\r\nna\u00efve r\u00e9sum\u00e9\r\n".encode("latin-1")
    assert client.command(body + b".").startswith(b"250 2.0.0")
    client.close()
    [stored] = appliance.inbox("ann@example.test")
    assert stored.endswith(b"\r\n" + body)


def test_message_over_the_size_limit_is_refused(make_appliance):
    app = make_appliance(smtp={"max_message_size": 10_000})
    app.start()
    client = Client(app)
    client.command(b"EHLO client.test")
    assert client.command(b"MAIL FROM:<s@elsewhere.test> SIZE=20000").startswith(b"552 5.3.4")
    start_transaction(client)
    assert client.command(b"DATA").startswith(b"354")
    assert client.command(b"x" * 50_000 + b"\r\n.").startswith(b"552 5.3.4")
    assert client.command(b"NOOP").startswith(b"250")
    client.close()
    assert app.inbox("ann@example.test") == []


def test_connections_over_the_per_client_limit_get_421(make_appliance):
    app = make_appliance(smtp={"max_connections_per_client": 3})
    app.start()
    clients = [Client(app) for _ in range(3)]
    extra = socket.create_connection((app.host, app.port), timeout=10)
    assert extra.recv(1000).startswith(b"421 4.7.0")
    extra.close()
    clients.pop().close()
    time.sleep(0.2)
    clients.append(Client(app))  # a slot is free again
    for client in clients:
        client.close()


def test_server_survives_the_abuse(appliance):
    for _ in range(50):
        client = Client(appliance)
        client.send(b"\xff\xfe garbage \0\r\n" * 10 + b"QUIT\r\n")
        client.close()
    client = Client(appliance)
    start_transaction(client)
    assert client.command(b"DATA").startswith(b"354")
    assert client.command(b"Subject: ok\r\n\r\nstill here\r\n.").startswith(b"250 2.0.0")
    client.close()
