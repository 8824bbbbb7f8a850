"""Abuse on port 25 over real sockets: pregreeting bots, connection floods,
dictionary attacks, DNS blocklists, and the client's reverse DNS in Received:.

The appliance treats loopback clients as strangers here (abuse_exempt_loopback
= false); the attacker is 127.0.0.1, the legitimate sender binds 127.0.0.2 (or
127.0.0.3) as its source, which Linux routes to itself like any loopback address.
"""

import asyncio
import smtplib
import socket
import threading
import time

import pytest

from appliance.config import ResolverSettings
from appliance.smtp.abuse import ClientLookups
from tests.dns_server import DnsServer

GREET_DELAY = 0.3
MESSAGE = b"From: s@elsewhere.test\r\nTo: ann@example.test\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def dns():
    with DnsServer() as server:
        yield server


def stranger_appliance(make_appliance, dns, **smtp):
    app = make_appliance(
        smtp={"abuse_exempt_loopback": False, "greet_delay": GREET_DELAY, **smtp},
        resolver={"nameservers": [dns.nameserver]},
    )
    app.start()
    time.sleep(0.2)  # start()'s own probe connection has ended
    return app


def connect(app, source="127.0.0.1", timeout=10) -> socket.socket:
    return socket.create_connection(
        (app.host, app.port), timeout=timeout, source_address=(source, 0)
    )


class Replies:
    """Reads whole SMTP replies from a socket."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = b""

    def next(self) -> bytes:
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

    def closed(self) -> bool:
        try:
            return self.buffer == b"" and self.sock.recv(1) == b""
        except ConnectionError:
            return True


def send_mail(app, source: str, helo: str = "client.good.test") -> dict:
    with smtplib.SMTP(app.host, app.port, source_address=(source, 0), timeout=30) as client:
        client.ehlo(helo)
        return client.sendmail("s@elsewhere.test", ["ann@example.test"], MESSAGE)


def refusals(app, reason: str) -> list[str]:
    return [
        line
        for line in app.log().splitlines()
        if "smtp refused client=" in line and f"reason={reason}" in line
    ]


def wait_for(condition, what: str, limit: float = 10):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"waited {limit} s for {what}")


# -- pregreet ---------------------------------------------------------------------------------


def test_a_client_that_talks_before_the_greeting_is_refused_and_cut_off(make_appliance, dns):
    app = stranger_appliance(make_appliance, dns)
    sock = connect(app)
    sock.sendall(b"EHLO bot.test\r\n")
    replies = Replies(sock)
    assert replies.next().startswith(b"521 5.5.1")
    assert replies.closed()
    sock.close()
    wait_for(lambda: refusals(app, "pregreet"), "the refusal in the log")
    [line] = refusals(app, "pregreet")
    assert "client=127.0.0.1" in line and "bytes=15" in line


def test_a_patient_client_is_greeted_after_the_delay(make_appliance, dns):
    app = stranger_appliance(make_appliance, dns)
    started = time.monotonic()
    with connect(app) as sock:
        assert Replies(sock).next().startswith(b"220 ")
    assert time.monotonic() - started >= GREET_DELAY * 0.9
    assert send_mail(app, "127.0.0.2") == {}
    assert refusals(app, "pregreet") == []


def test_loopback_clients_are_exempt_by_default(appliance):
    started = time.monotonic()
    with socket.create_connection((appliance.host, appliance.port), timeout=10) as sock:
        sock.sendall(b"EHLO local.tool\r\n")  # before the greeting: a local tool may
        replies = Replies(sock)
        assert replies.next().startswith(b"220 ")
        assert replies.next().startswith(b"250-")
    assert time.monotonic() - started < 0.5  # no greeting delay either


# -- per-address limits -----------------------------------------------------------------------


def test_a_hundred_connections_from_one_address_get_only_their_share(make_appliance, dns):
    app = stranger_appliance(make_appliance, dns, max_connections_per_client=20)
    sockets = [connect(app) for _ in range(100)]
    try:
        # Another address meanwhile: its mail goes through at once.
        assert send_mail(app, "127.0.0.2") == {}
        firsts = [Replies(s).next()[:9] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()
    assert firsts.count(b"220 mail.") == 20
    assert firsts.count(b"421 4.7.0") == 80
    assert len(refusals(app, "too-many-connections")) == 80
    assert len(app.inbox("ann@example.test")) == 1


def test_messages_past_the_rate_limit_get_450_at_mail(make_appliance, dns):
    app = stranger_appliance(make_appliance, dns, max_messages_per_minute=2)
    with connect(app) as sock:
        replies = Replies(sock)
        assert replies.next().startswith(b"220 ")
        sock.sendall(b"EHLO client.good.test\r\n")
        replies.next()
        answers = []
        for _ in range(3):
            sock.sendall(b"MAIL FROM:<s@elsewhere.test>\r\nRSET\r\n")
            answers.append(replies.next()[:9])
            replies.next()
    assert answers == [b"250 2.1.0", b"250 2.1.0", b"450 4.7.1"]
    assert len(refusals(app, "message-rate")) == 1
    assert send_mail(app, "127.0.0.2") == {}  # another address has its own count


def test_a_dictionary_attack_is_slowed_then_refused_while_other_mail_flows(make_appliance, dns):
    app = stranger_appliance(
        make_appliance,
        dns,
        unknown_recipient_delay_after=5,
        unknown_recipient_delay=0.05,
        max_unknown_recipient_delay=0.2,
        max_unknown_recipients=20,
        unknown_recipient_cooldown=60,
    )
    legitimate: dict[str, object] = {}

    def deliver_meanwhile():
        try:
            legitimate["refused"] = send_mail(app, "127.0.0.2")
        finally:
            legitimate["done"] = time.monotonic()

    sock = connect(app, timeout=30)
    replies = Replies(sock)
    assert replies.next().startswith(b"220 ")
    sock.sendall(b"EHLO bot.test\r\n")
    replies.next()
    sock.sendall(b"MAIL FROM:<s@elsewhere.test>\r\n")
    assert replies.next().startswith(b"250 ")
    sock.sendall(b"".join(b"RCPT TO:<guess%d@example.test>\r\n" % i for i in range(200)))
    answers, times = [], []
    sender = threading.Thread(target=deliver_meanwhile)
    while True:
        try:
            answer = replies.next()
        except ConnectionError:
            break
        answers.append(answer[:9])
        times.append(time.monotonic())
        if len(answers) == 6:
            sender.start()  # the attack is being slowed now
    sock.close()
    sender.join(30)
    assert answers == [b"550 5.1.1"] * 20 + [b"421 4.7.0"]
    # The first five come at once; the next fifteen wait 0.05, 0.1 ... 0.2 s
    # each, 2.7 s together (measured loosely: the machine is shared).
    assert times[4] - times[0] < 1.5
    assert times[19] - times[4] > 2.0
    # The other address's message was delivered before the attack was over.
    assert legitimate["refused"] == {} and legitimate["done"] < times[20]
    assert len(app.inbox("ann@example.test")) == 1
    [line] = refusals(app, "unknown-recipients")
    assert "client=127.0.0.1" in line and "count=21" in line
    # The attacker's address is turned away for the cooldown; others are not.
    with connect(app) as again:
        assert Replies(again).next().startswith(b"421 4.7.0")
    assert "seconds_left=" in refusals(app, "cooldown")[0]
    with connect(app, "127.0.0.2") as other:
        assert Replies(other).next().startswith(b"220 ")


# -- DNSBL --------------------------------------------------------------------------------------

BLOCKLIST = {
    "2.0.0.127.bl.test": {"A": "127.0.0.2", "TXT": '"listed: see https://bl.test/127.0.0.2"'},
    "3.0.0.127.bl.test": "SERVFAIL",
}


def test_a_client_on_a_dnsbl_is_refused_with_the_zone_named(make_appliance, dns):
    dns.load(BLOCKLIST)
    app = stranger_appliance(make_appliance, dns, dnsbl=["bl.test"])
    with connect(app, "127.0.0.2") as sock:
        replies = Replies(sock)
        greeting = replies.next()
        assert greeting == (
            b"554 5.7.1 Service unavailable; client [127.0.0.2] blocked using bl.test"
        )
        # RFC 5321 3.1: nothing but QUIT from here on.
        sock.sendall(b"EHLO listed.test\r\nMAIL FROM:<s@elsewhere.test>\r\nQUIT\r\n")
        assert replies.next().startswith(b"503 5.5.1")
        assert replies.next().startswith(b"503 5.5.1")
        assert replies.next().startswith(b"221 ")
        assert replies.closed()
    [line] = refusals(app, "dnsbl")
    assert "client=127.0.0.2" in line and "zone=bl.test" in line and "answer=127.0.0.2" in line
    assert "listed: see https://bl.test/127.0.0.2" in line
    assert app.inbox("ann@example.test") == []


def test_unlisted_clients_and_failed_dnsbl_lookups_are_accepted(make_appliance, dns):
    dns.load(BLOCKLIST)
    app = stranger_appliance(make_appliance, dns, dnsbl=["bl.test"])
    assert send_mail(app, "127.0.0.1") == {}  # not listed (NXDOMAIN)
    assert send_mail(app, "127.0.0.3") == {}  # the list answers SERVFAIL
    assert len(app.inbox("ann@example.test")) == 2
    assert refusals(app, "dnsbl") == []
    assert "smtp dnsbl failed zone=bl.test client=127.0.0.3" in app.log()


def lookups(dns, timeout=2.0) -> ClientLookups:
    return ClientLookups(ResolverSettings(nameservers=(dns.nameserver,)), timeout)


def test_dnsbl_error_codes_and_answers_outside_127_are_no_listing(dns):
    dns.load(
        {
            # Spamhaus's "query through a public resolver" code (RFC 5782 2.1: not a listing).
            "1.2.0.192.zen.test": {"A": "127.255.255.254"},
            # A hijacked or wildcarded zone answering with a real address.
            "1.2.0.192.bad.test": {"A": "198.51.100.7"},
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.v6.test": {
                "A": "127.0.0.4"
            },
        }
    )
    looked_up = lookups(dns)
    assert asyncio.run(looked_up.listing("192.0.2.1", ["zen.test", "bad.test"])) is None
    listed = asyncio.run(looked_up.listing("2001:db8::1", ["zen.test", "v6.test"]))
    assert (listed.zone, listed.answer, listed.text) == ("v6.test", "127.0.0.4", "")


def test_a_dnsbl_that_never_answers_costs_only_the_lookup_timeout(dns):
    dns.stall("1.2.0.192.slow.test")
    started = time.monotonic()
    assert asyncio.run(lookups(dns, timeout=0.5).listing("192.0.2.1", ["slow.test"])) is None
    assert time.monotonic() - started < 2.0


# -- FCrDNS and HELO checks ---------------------------------------------------------------------


def received_field(stored: bytes) -> bytes:
    return stored.split(b"Received: ", 1)[1].split(b";", 1)[0]


def test_received_names_a_verified_client_and_calls_the_others_unknown(make_appliance, dns):
    dns.load(
        {
            "1.0.0.127.in-addr.arpa": {"PTR": "client.good.test."},
            "client.good.test": {"A": "127.0.0.1"},
            # A PTR name whose address is not the client's: not verified.
            "2.0.0.127.in-addr.arpa": {"PTR": "liar.test."},
            "liar.test": {"A": "192.0.2.1"},
        }
    )
    app = stranger_appliance(make_appliance, dns)
    assert send_mail(app, "127.0.0.1") == {}
    assert send_mail(app, "127.0.0.2", helo="localhost") == {}
    assert send_mail(app, "127.0.0.3", helo="[127.0.0.9]") == {}  # no PTR at all
    fields = [received_field(m) for m in app.inbox("ann@example.test")]
    assert fields[0].startswith(b"from client.good.test (client.good.test [127.0.0.1])")
    assert fields[1].startswith(b"from localhost (unknown [127.0.0.2])")
    assert fields[2].startswith(b"from [127.0.0.9] (unknown [127.0.0.3])")
    checks = [
        line.rpartition("helo_check=")[2]
        for line in app.log().splitlines()
        if " result=250" in line
    ]
    assert checks == ["ok", "not-fqdn", "literal-mismatch"]
