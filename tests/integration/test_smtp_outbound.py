"""Outbound SMTP over real sockets: to a private Postfix, and to small hostile servers."""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
import time
from collections.abc import Awaitable, Callable

import pytest

from appliance.smtp.client import Credentials, Kind, Timeouts
from appliance.smtp.outbound import Host, OutboundMessage, OutboundSettings, deliver
from appliance.smtp.protocol import (
    Authenticate,
    Limits,
    MessageReceived,
    Reply,
    ServerConnection,
)
from tests.conftest import free_port
from tests.postfix import OPENSSL, PostfixPeer, postfix_missing

HELO = "client.test"
SETTINGS = OutboundSettings(HELO)
# Bounds every delivery a test makes, whatever goes wrong.
DELIVERY_LIMIT = 60.0
# What Postfix's virtual agent adds before the message, one field per entry.
POSTFIX_FIELDS = ("Return-Path:", "X-Original-To:", "Delivered-To:", "Received:")


def run(coroutine: Awaitable):
    async def bounded():
        async with asyncio.timeout(DELIVERY_LIMIT):
            return await coroutine

    return asyncio.run(bounded())


def message(to: str | tuple[str, ...], body: bytes | memoryview, sender="ann@client.test"):
    recipients = (to,) if isinstance(to, str) else to
    return OutboundMessage(sender, recipients, body)


def outcomes(results) -> dict:
    return {r.recipient: r.outcome for message_results in results for r in message_results}


# -- a private Postfix ------------------------------------------------------------------


@pytest.fixture(scope="module")
def postfix(tmp_path_factory):
    reason = postfix_missing()
    if reason:
        pytest.skip(reason)
    peer = PostfixPeer(
        tmp_path_factory.mktemp("postfix"),
        users=("ann", "bob", "carl", "dora", "emil", "fay", "gus", "hal"),
        access={"busy@postfix.test": "451 4.3.0 Try again later"},
        settings={
            # A sender whose messages Postfix defers once it has them whole.
            "smtpd_end_of_data_restrictions": (
                "check_sender_access inline:{ {late@client.test = 451 4.3.0 Come back later} }"
            ),
        },
    )
    with peer:
        yield peer


@pytest.fixture
def log_since(postfix):
    """Postfix's log since the test started, once a line matches the pattern given."""
    start = len(postfix.log())
    return lambda pattern: postfix.wait_for_log(pattern, start)


def to_postfix(postfix, **options) -> Host:
    trusting = ssl.create_default_context(cafile=str(postfix.certificate))
    return Host(postfix.hostname, ("127.0.0.1",), postfix.port, tls=trusting, **options)


def split_added_fields(delivered: bytes, body: bytes) -> list[bytes]:
    """The header fields Postfix put before the body, which must end the file unchanged."""
    assert delivered.endswith(body), delivered[:2000]
    head = delivered[: len(delivered) - len(body)]
    fields = re.split(rb"\r\n(?![ \t])", head.removesuffix(b"\r\n"))
    assert all(f.startswith(tuple(name.encode() for name in POSTFIX_FIELDS)) for f in fields), head
    return fields


def tricky_body(size: int) -> bytes:
    """Lines that dot-stuffing, 8-bit and chunking can get wrong, to about size octets."""
    lines = [
        b"From: Ann <ann@client.test>",
        b"To: Ann <ann@postfix.test>",
        b"Subject: =?utf-8?q?caf=C3=A9?= test",
        b"Date: Mon, 2 Mar 2026 10:00:00 +0000",
        b"Message-ID: <outbound-test@client.test>",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Transfer-Encoding: 8bit",
        b"",
        b".",
        b"..",
        b". leading dot and space",
        b"caf\xc3\xa9 \xe2\x82\xac 8-bit octets",
        b"trailing spaces and a tab   \t",
        b"",
    ]
    filler, number = [], 0
    while sum(len(line) + 2 for line in lines + filler) < size:
        number += 1
        filler.append(b"." * (number % 3) + b"line %d " % number + b"x" * (number % 900))
    return b"\r\n".join(lines + filler) + b"\r\n.\r\nlast line\r\n"


def test_message_arrives_byte_exact_after_postfix_fields(postfix):
    body = tricky_body(2 * 1024 * 1024)  # many chunks of content, lines cut everywhere
    results = run(deliver(to_postfix(postfix), [message("ann@postfix.test", body)], SETTINGS))
    outcome = outcomes(results)["ann@postfix.test"]
    assert outcome.kind is Kind.DELIVERED, outcome.diagnostic
    assert outcome.reply.code == 250 and outcome.text.startswith("Ok: queued as ")
    [delivered] = postfix.wait_for_messages("ann", 1)
    fields = split_added_fields(delivered, body)
    assert fields[0] == b"Return-Path: <ann@client.test>"


def test_message_given_as_chunks_arrives_byte_exact(postfix):
    body = tricky_body(300 * 1024)
    pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]  # lines split across
    chunked = OutboundMessage("ann@client.test", ("bob@postfix.test",), lambda: iter(pieces))
    results = run(deliver(to_postfix(postfix), [chunked], SETTINGS))
    assert outcomes(results)["bob@postfix.test"].kind is Kind.DELIVERED
    [delivered] = postfix.wait_for_messages("bob", 1)
    split_added_fields(delivered, body)


def test_two_messages_over_one_connection(postfix, log_since):
    first = b"Subject: first\r\n\r\none\r\n"
    second = b"Subject: second\r\n\r\ntwo\r\n"
    messages = [message("carl@postfix.test", first), message("carl@postfix.test", second)]
    results = run(deliver(to_postfix(postfix), messages, SETTINGS))
    assert [r[0].outcome.kind for r in results] == [Kind.DELIVERED, Kind.DELIVERED]
    delivered = postfix.wait_for_messages("carl", 2)
    assert sorted(m.rsplit(b"\r\n\r\n", 1)[1] for m in delivered) == [b"one\r\n", b"two\r\n"]
    log = log_since(r"disconnect from .* quit=1")
    assert log.count(" connect from ") == 1, log
    assert re.search(r"disconnect from .* mail=2 rcpt=2 data=2 rset=1 quit=1", log), log


def test_refused_and_deferred_recipients_get_their_own_results(postfix):
    recipients = ("dora@postfix.test", "nobody@postfix.test", "busy@postfix.test")
    body = b"Subject: three recipients\r\n\r\nhello\r\n"
    results = run(deliver(to_postfix(postfix), [message(recipients, body)], SETTINGS))
    dora, nobody, busy = (outcomes(results)[r] for r in recipients)
    assert dora.kind is Kind.DELIVERED
    assert (nobody.kind, nobody.status, nobody.command) == (Kind.PERMANENT, "5.1.1", "RCPT TO")
    assert "User unknown in virtual mailbox table" in nobody.text
    assert nobody.host == f"{postfix.hostname}[127.0.0.1]:{postfix.port}"
    assert (busy.kind, busy.status, busy.reply.code) == (Kind.TEMPORARY, "4.3.0", 451)
    assert "Try again later" in busy.diagnostic
    [delivered] = postfix.wait_for_messages("dora", 1)
    assert b"Delivered-To: dora@postfix.test" in delivered


def test_message_deferred_at_the_end_of_data_is_temporary(postfix):
    late = message(
        "emil@postfix.test", b"Subject: late\r\n\r\nlater\r\n", sender="late@client.test"
    )
    results = run(deliver(to_postfix(postfix), [late], SETTINGS))
    outcome = outcomes(results)["emil@postfix.test"]
    assert (outcome.kind, outcome.reply.code, outcome.command) == (
        Kind.TEMPORARY,
        451,
        "end of data",
    )
    assert "Come back later" in outcome.text
    time.sleep(0.5)
    assert postfix.messages("emil") == []


def test_starttls_is_used_when_offered(postfix, log_since):
    body = b"Subject: tls\r\n\r\nover TLS\r\n"
    results = run(deliver(to_postfix(postfix), [message("fay@postfix.test", body)], SETTINGS))
    assert outcomes(results)["fay@postfix.test"].kind is Kind.DELIVERED
    [delivered] = postfix.wait_for_messages("fay", 1)
    assert b"with ESMTPS id" in delivered
    log_since(r"TLS connection established from")


def test_failed_tls_handshake_falls_back_to_clear_text(postfix, log_since):
    # The system's CAs do not know Postfix's self-signed certificate.
    host = Host(postfix.hostname, ("127.0.0.1",), postfix.port, tls=ssl.create_default_context())
    body = b"Subject: fallback\r\n\r\nin clear\r\n"
    results = run(deliver(host, [message("gus@postfix.test", body)], SETTINGS))
    assert outcomes(results)["gus@postfix.test"].kind is Kind.DELIVERED
    [delivered] = postfix.wait_for_messages("gus", 1)
    assert b"with ESMTP id" in delivered
    log = log_since(r"(?s)disconnect from .*disconnect from .* quit=1")
    assert log.count(" connect from ") == 2, log
    assert "TLS connection established" not in log


def test_failed_tls_handshake_is_temporary_when_tls_is_required(postfix):
    host = Host(
        postfix.hostname,
        ("127.0.0.1",),
        postfix.port,
        tls=ssl.create_default_context(),
        require_tls=True,
    )
    body = b"Subject: required\r\n\r\nnot in clear\r\n"
    results = run(deliver(host, [message("hal@postfix.test", body)], SETTINGS))
    outcome = outcomes(results)["hal@postfix.test"]
    assert (outcome.kind, outcome.status) == (Kind.TEMPORARY, "4.4.2")
    assert outcome.text.startswith("TLS handshake failed: ")
    time.sleep(0.5)
    assert postfix.messages("hal") == []


def test_implicit_tls_from_the_first_byte(postfix):
    trusting = ssl.create_default_context(cafile=str(postfix.certificate))
    host = Host(postfix.hostname, ("127.0.0.1",), postfix.smtps_port, trusting, implicit_tls=True)
    body = b"Subject: implicit\r\n\r\nport 465 style\r\n"
    results = run(deliver(host, [message("ann@postfix.test", body)], SETTINGS))
    assert outcomes(results)["ann@postfix.test"].kind is Kind.DELIVERED
    delivered = postfix.wait_for_messages("ann", 2)
    assert any(m.endswith(body) and b"with ESMTPS id" in m for m in delivered)


def test_address_refusing_connections_is_skipped_for_the_next(postfix):
    # Postfix listens on 127.0.0.1 only: 127.0.0.3 refuses the connection.
    host = Host(postfix.hostname, ("127.0.0.3", "127.0.0.1"), postfix.port)
    body = b"Subject: second address\r\n\r\nvia the second\r\n"
    results = run(deliver(host, [message("bob@postfix.test", body)], SETTINGS))
    assert outcomes(results)["bob@postfix.test"].kind is Kind.DELIVERED
    assert any(m.endswith(body) for m in postfix.wait_for_messages("bob", 2))


# -- hosts that fail ---------------------------------------------------------------------


class FakeServer:
    """A listening socket on loopback whose every connection runs handler."""

    def __init__(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable]):
        self.handler = handler
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> FakeServer:
        async def serve(reader, writer):
            self.connections += 1
            self._tasks.add(asyncio.current_task())
            try:
                await self.handler(reader, writer)
            finally:
                writer.close()

        self._server = await asyncio.start_server(serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def host(self, **options) -> Host:
        return Host("fake.test", ("127.0.0.1",), self.port, **options)


async def stall(reader, writer):
    await asyncio.sleep(DELIVERY_LIMIT)  # accepts, never greets


def test_host_that_never_greets_times_out_as_a_temporary_failure():
    settings = OutboundSettings(HELO, timeouts=Timeouts(greeting=0.5))

    async def scenario():
        async with FakeServer(stall) as server:
            started = time.monotonic()
            results = await deliver(server.host(), [message("a@fake.test", b"x\r\n")], settings)
            return results, time.monotonic() - started

    results, elapsed = run(scenario())
    outcome = outcomes(results)["a@fake.test"]
    assert (outcome.kind, outcome.status) == (Kind.TEMPORARY, "4.4.2")
    assert outcome.text == "timed out waiting (greeting timeout)"
    assert 0.5 <= elapsed < 10


def test_nothing_listening_is_a_temporary_failure_for_every_recipient():
    host = Host("down.test", ("127.0.0.1",), free_port())
    messages = [message(("a@down.test", "b@down.test"), b"x\r\n"), message("c@down.test", b"y\r\n")]
    results = run(deliver(host, messages, SETTINGS))
    assert len(results) == 2
    for outcome in outcomes(results).values():
        assert (outcome.kind, outcome.status, outcome.command) == (
            Kind.TEMPORARY,
            "4.4.1",
            "connect",
        )
        assert "Connection refused" in outcome.text


def test_host_without_addresses_is_a_temporary_failure():
    results = run(
        deliver(Host("nowhere.test", ()), [message("a@nowhere.test", b"x\r\n")], SETTINGS)
    )
    outcome = outcomes(results)["a@nowhere.test"]
    assert (outcome.kind, outcome.status, outcome.reply) == (Kind.TEMPORARY, "4.4.1", None)


def test_connection_dropped_during_the_content_is_temporary():
    async def drop_in_data(reader, writer):
        writer.write(b"220 fake.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-fake.test\r\n250 PIPELINING\r\n")
        for _ in range(3):  # MAIL, RCPT, DATA
            await reader.readline()
        writer.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        await reader.read(1000)
        writer.transport.abort()

    async def scenario():
        async with FakeServer(drop_in_data) as server:
            body = b"Subject: big\r\n\r\n" + b"x" * 78 * 200_000
            return await deliver(server.host(), [message("a@fake.test", body)], SETTINGS)

    outcome = outcomes(run(scenario()))["a@fake.test"]
    assert (outcome.kind, outcome.status) == (Kind.TEMPORARY, "4.4.2")


def test_refusal_before_the_end_of_the_content_is_kept():
    async def refuse_in_data(reader, writer):
        writer.write(b"220 fake.test ESMTP\r\n")
        await reader.readline()
        writer.write(b"250-fake.test\r\n250 PIPELINING\r\n")
        for _ in range(3):
            await reader.readline()
        writer.write(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go ahead\r\n")
        await reader.read(1000)
        writer.write(b"552 5.3.4 Message size exceeds fixed limit\r\n")
        await writer.drain()
        await asyncio.sleep(DELIVERY_LIMIT)  # and reads no more

    async def scenario():
        async with FakeServer(refuse_in_data) as server:
            body = b"Subject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * 400_000
            return await deliver(server.host(), [message("a@fake.test", body)], SETTINGS)

    outcome = outcomes(run(scenario()))["a@fake.test"]
    assert (outcome.kind, outcome.status, outcome.reply.code) == (Kind.PERMANENT, "5.3.4", 552)


def test_greeting_421_tries_the_next_address():
    async def busy(reader, writer):
        writer.write(b"421 4.7.0 fake.test too busy\r\n")
        await writer.drain()

    async def scenario():
        async with FakeServer(busy) as server:
            host = Host("fake.test", ("127.0.0.1", "127.0.0.2"), server.port)
            results = await deliver(host, [message("a@fake.test", b"x\r\n")], SETTINGS)
            return results, server.connections

    results, connections = run(scenario())
    outcome = outcomes(results)["a@fake.test"]
    assert (outcome.kind, outcome.reply.code) == (Kind.TEMPORARY, 421)
    assert connections == 1  # the server listens on 127.0.0.1 only; .2 was refused


def test_host_deferring_recipients_past_its_limit_gets_them_in_the_next_transaction():
    received = []

    async def two_per_transaction(reader, writer):
        await serve_core(reader, writer, received, max_recipients=2)

    async def scenario():
        async with FakeServer(two_per_transaction) as server:
            recipients = tuple(f"r{n}@fake.test" for n in range(5))
            body = b"Subject: many\r\n\r\nhello\r\n"
            return await deliver(server.host(), [message(recipients, body)], SETTINGS)

    results = run(scenario())
    assert {o.kind for o in outcomes(results).values()} == {Kind.DELIVERED}
    assert [len(recipients) for recipients, _ in received] == [2, 2, 1]


# -- a relay with AUTH, played by the appliance's own submission core ------------------


ACCOUNT = ("box@relay.test", "relay password")


async def serve_core(reader, writer, received, max_recipients=1000, submission=False):
    """Our server core on the connection: takes every message into received."""
    core = ServerConnection(
        "relay.test",
        limits=Limits(max_recipients=max_recipients),
        tls_active=submission,
        submission=submission,
    )
    core.greet()
    while not core.closed:
        writer.write(core.data_to_send())
        data = await reader.read(65536)
        core.receive_data(data)
        while (event := core.next_event()) is not None:
            if isinstance(event, Authenticate):
                if (event.username, event.password) == ACCOUNT:
                    core.auth_succeeded(event.username)
                else:
                    core.auth_failed()
            elif isinstance(event, MessageReceived):
                received.append((core.recipients, bytes(event.content)))
                core.respond(Reply(250, "2.0.0", "Ok: queued"))
            else:
                core.respond(None)
    writer.write(core.data_to_send())
    await writer.drain()


@pytest.fixture
def relay_tls(tmp_path):
    """A server context with a fresh self-signed certificate, and a client context trusting it."""
    if OPENSSL is None:
        pytest.skip("openssl is missing: it makes the relay's certificate (Debian package openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [OPENSSL, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
        + ["-nodes", "-days", "2", "-subj", "/CN=relay.test"]
        + ["-addext", "subjectAltName=DNS:relay.test", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    return server, ssl.create_default_context(cafile=str(cert))


@pytest.mark.parametrize(
    ("password", "kind"), [(ACCOUNT[1], Kind.DELIVERED), ("wrong", Kind.TEMPORARY)]
)
def test_relay_with_auth_over_implicit_tls(relay_tls, password, kind):
    server_tls, client_tls = relay_tls
    received = []

    async def relay(reader, writer):
        await serve_core(reader, writer, received, submission=True)

    async def scenario():
        server = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=server_tls)
        try:
            port = server.sockets[0].getsockname()[1]
            host = Host(
                "relay.test",
                ("127.0.0.1",),
                port,
                tls=client_tls,
                implicit_tls=True,
                credentials=Credentials(ACCOUNT[0], password),
            )
            body = b"Subject: relayed\r\n\r\nvia the relay\r\n"
            return await deliver(host, [message("box@relay.test", body)], SETTINGS)
        finally:
            server.close()

    outcome = outcomes(run(scenario()))["box@relay.test"]
    assert outcome.kind is kind, outcome.diagnostic
    if kind is Kind.DELIVERED:
        assert received == [(("box@relay.test",), b"Subject: relayed\r\n\r\nvia the relay\r\n")]
    else:
        assert received == []
        assert (outcome.reply.code, outcome.command) == (535, "AUTH")
