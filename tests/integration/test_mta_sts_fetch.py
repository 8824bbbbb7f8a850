"""Fetching MTA-STS policies (RFC 8461 3.3) over real HTTPS from a server on loopback.

The test makes a CA and certificates for mta-sts.example.test, serves each
response from an asyncio TLS server on 127.0.0.1, and points the fetcher at
that address while it checks the certificate for the policy host's name, as
it would on the internet.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.delivery.dns import Resolver, ResolverSettings
from appliance.delivery.mta_sts import (
    MAX_POLICY_SIZE,
    FetchError,
    InvalidPolicy,
    Mode,
    Policy,
    PolicyCache,
    apply_policy,
    fetch_policy,
    resolving_fetcher,
    verifying_context,
)
from tests.dns_server import dns_server_fixture  # noqa: F401 - fixture dns_server

DOMAIN = "example.test"
HOST = "mta-sts.example.test"
POLICY = b"version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 86400\r\n"
EXPECTED = Policy(Mode.ENFORCE, 86400, ("mx.example.test",))
# Long enough for a TLS handshake on a loaded two-core machine.
TIMEOUT = 5.0


# -- certificates ---------------------------------------------------------------


@dataclass
class Pki:
    directory: Path
    ca_file: Path

    def server_context(self, name: str) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        return context

    def client_context(self) -> ssl.SSLContext:
        return verifying_context(cafile=self.ca_file)


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _certificate(subject, issuer_name, issuer_key, key, *, ca: bool, san: str | None):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, certificate, key) -> None:
    (directory / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    """A trusted CA with certificates for the policy host and another name, and a rogue CA."""
    directory = tmp_path_factory.mktemp("pki")
    authorities = {}
    for ca in ("trusted", "rogue"):
        key = ec.generate_private_key(ec.SECP256R1())
        name = _name(f"{ca} test CA")
        authorities[ca] = (name, key)
        _write(directory, f"{ca}-ca", _certificate(name, name, key, key, ca=True, san=None), key)
    servers = {
        "good": ("trusted", HOST, HOST),
        "other-name": ("trusted", "mta-sts.other.test", "mta-sts.other.test"),
        "common-name-only": ("trusted", HOST, None),
        "rogue": ("rogue", HOST, HOST),
    }
    for label, (ca, common_name, san) in servers.items():
        key = ec.generate_private_key(ec.SECP256R1())
        issuer_name, issuer_key = authorities[ca]
        certificate = _certificate(
            _name(common_name), issuer_name, issuer_key, key, ca=False, san=san
        )
        _write(directory, label, certificate, key)
    return Pki(directory, directory / "trusted-ca.pem")


# -- the policy host ------------------------------------------------------------

STALL = object()  # in a response: say nothing more until the client gives up


class PolicyServer:
    """An HTTPS server on 127.0.0.1 answering every request with the same bytes.

    response: bytes, or a list of bytes to send one by one and STALL.
    Each request head received is kept in `requests`.
    """

    def __init__(self, context: ssl.SSLContext | None, response):
        self.context = context
        self.response = response if isinstance(response, list) else [response]
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                self.requests.append(await reader.readuntil(b"\r\n\r\n"))
            for piece in self.response:
                if piece is STALL:
                    await asyncio.sleep(3 * TIMEOUT)  # cancelled when the test's loop ends
                    continue
                writer.write(piece)
                await writer.drain()
        except (OSError, EOFError, TimeoutError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()


def fetch_from(
    server: PolicyServer,
    pki: Pki,
    *,
    timeout: float = TIMEOUT,
    addresses: tuple[str, ...] = ("127.0.0.1",),
    runner=asyncio.run,
) -> Policy:
    async def scenario():
        port = await server.start()
        try:
            return await fetch_policy(
                DOMAIN, timeout, tls=pki.client_context(), addresses=addresses, port=port
            )
        finally:
            await server.stop()

    return runner(scenario())


def ok(body: bytes = POLICY, content_type: bytes | None = b"text/plain") -> bytes:
    """A 200 response with a Content-Length; no Content-Type field when content_type is None."""
    head = b"HTTP/1.1 200 OK\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


# -- what arrives ------------------------------------------------------------------


@pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_policy_fetched_over_verified_https(pki, runner):
    server = PolicyServer(pki.server_context("good"), ok())
    assert fetch_from(server, pki, runner=runner) == EXPECTED
    [request] = server.requests
    lines = request.split(b"\r\n")
    assert lines[0] == b"GET /.well-known/mta-sts.txt HTTP/1.1"
    assert b"Host: mta-sts.example.test" in lines


def test_content_type_parameters_and_case_do_not_matter(pki):
    response = ok(content_type=b"Text/Plain; charset=utf-8")
    assert fetch_from(PolicyServer(pki.server_context("good"), response), pki) == EXPECTED


def test_chunked_body_with_extensions_and_trailers(pki):
    first, rest = POLICY[:20], POLICY[20:]
    body = (
        b"%x;note=x\r\n" % len(first) + first + b"\r\n"
        b"%X\r\n" % len(rest) + rest + b"\r\n"
        b"0\r\nExpires: never\r\n\r\n"
    )
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    # Sent in pieces: lines split across reads are the ordinary case.
    pieces = [head[:10], head[10:], body[:7], body[7:30], body[30:]]
    assert fetch_from(PolicyServer(pki.server_context("good"), pieces), pki) == EXPECTED


def test_body_without_length_ends_with_the_connection(pki):
    response = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n" + POLICY
    assert fetch_from(PolicyServer(pki.server_context("good"), response), pki) == EXPECTED


def test_next_address_is_tried_when_one_refuses(pki):
    # Nothing listens on 127.0.0.2 at the server's port: refused, then 127.0.0.1.
    server = PolicyServer(pki.server_context("good"), ok())
    assert fetch_from(server, pki, addresses=("127.0.0.2", "127.0.0.1")) == EXPECTED


# -- what is refused -------------------------------------------------------------


@pytest.mark.parametrize("status", [b"301 Moved Permanently", b"302 Found", b"307 Temporary"])
def test_redirect_is_not_followed(pki, status):
    response = (
        b"HTTP/1.1 " + status + b"\r\nLocation: https://mta-sts.example.test/policy.txt\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
    )
    server = PolicyServer(pki.server_context("good"), response)
    with pytest.raises(FetchError, match="redirect"):
        fetch_from(server, pki)
    assert len(server.requests) == 1


def test_status_other_than_200_is_no_policy(pki):
    response = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(FetchError, match="404"):
        fetch_from(PolicyServer(pki.server_context("good"), response), pki)


@pytest.mark.parametrize("content_type", [b"text/html", b"application/octet-stream", None])
def test_content_type_must_be_text_plain(pki, content_type):
    response = ok(content_type=content_type)
    with pytest.raises(FetchError, match="Content-Type"):
        fetch_from(PolicyServer(pki.server_context("good"), response), pki)


@pytest.mark.parametrize("certificate", ["other-name", "rogue", "common-name-only"])
def test_certificate_must_chain_to_a_trusted_root_and_name_the_policy_host(pki, certificate):
    server = PolicyServer(pki.server_context(certificate), ok())
    with pytest.raises(FetchError, match="certificate"):
        fetch_from(server, pki)
    assert server.requests == []  # nothing was asked over the untrusted connection


def test_size_cap_declared_length(pki):
    big = POLICY + b"x: " + b"y" * MAX_POLICY_SIZE + b"\r\n"
    with pytest.raises(FetchError, match="bytes"):
        fetch_from(PolicyServer(pki.server_context("good"), ok(big)), pki)


def test_size_cap_until_close(pki):
    big = POLICY + b"x: " + b"y" * MAX_POLICY_SIZE + b"\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n" + big
    with pytest.raises(FetchError, match="bytes"):
        fetch_from(PolicyServer(pki.server_context("good"), response), pki)


def test_size_cap_chunked(pki):
    chunk = b"y" * 4096
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    body = (b"1000\r\n" + chunk + b"\r\n") * (MAX_POLICY_SIZE // 4096 + 1) + b"0\r\n\r\n"
    with pytest.raises(FetchError, match="bytes"):
        fetch_from(PolicyServer(pki.server_context("good"), head + body), pki)


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 500\r\n\r\n" + POLICY,
        b"SMTP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1, 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n folded: line\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"y" * 10_000 + b"\r\n\r\n",
    ],
    ids=["short-body", "not-http", "gzip", "two-lengths", "folded", "long-line"],
)
def test_malformed_responses(pki, response):
    with pytest.raises(FetchError):
        fetch_from(PolicyServer(pki.server_context("good"), response), pki)


def test_invalid_policy_is_reported_as_such(pki):
    response = ok(POLICY.replace(b"mode: enforce", b"mode: strict"))
    with pytest.raises(InvalidPolicy, match="strict"):
        fetch_from(PolicyServer(pki.server_context("good"), response), pki)


@pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
@pytest.mark.parametrize("where", ["before-tls", "mid-response"])
def test_silent_server_times_out(pki, runner, where):
    if where == "before-tls":
        server = PolicyServer(None, [STALL])  # takes the connection, never answers the hello
    else:
        server = PolicyServer(pki.server_context("good"), [b"HTTP/1.1 200 OK\r\n", STALL])
    started = time.monotonic()
    with pytest.raises(FetchError, match="within 0.5 s"):
        fetch_from(server, pki, timeout=0.5, runner=runner)
    assert time.monotonic() - started < 3


# -- the whole path: DNS, fetch, cache, MX plan -------------------------------------


def test_policy_found_by_dns_fetched_cached_and_applied(pki, dns_server, tmp_path):
    dns_server.load(
        {
            DOMAIN: {"MX": ["10 mx.example.test.", "20 backup.elsewhere.test."]},
            "mx.example.test": {"A": "127.0.0.1"},
            "backup.elsewhere.test": {"A": "127.0.0.1"},
            "_mta-sts.example.test": {"TXT": '"v=STSv1; id=20240101T000000"'},
            HOST: {"A": "127.0.0.1"},
        }
    )
    settings = ResolverSettings(
        nameservers=(dns_server.nameserver,), query_timeout=0.5, lookup_timeout=2
    )
    resolver = Resolver(settings)
    path = tmp_path / "mta-sts.json"
    server = PolicyServer(pki.server_context("good"), ok())

    async def scenario():
        port = await server.start()
        fetch = resolving_fetcher(resolver, pki.client_context(), TIMEOUT, port)
        cache = PolicyCache(fetch, path)
        try:
            policy_id = await resolver.mta_sts_txt(DOMAIN)
            policy = await cache.policy_for(DOMAIN, policy_id, time.time())
            plan = apply_policy(policy, await resolver.mx_hosts(DOMAIN), DOMAIN)
        finally:
            await server.stop()
        # The policy host is gone and the record names a new id: the cached
        # policy still holds (RFC 8461 3.3).
        later = await cache.policy_for(DOMAIN, "20250101T000000", time.time())
        return policy_id, plan, later

    policy_id, plan, later = asyncio.run(scenario())
    assert policy_id == "20240101T000000"
    assert [t.host for t in plan.targets] == ["mx.example.test"]
    assert plan.verify_tls and plan.unlisted == ("backup.elsewhere.test",)
    assert later == EXPECTED
    assert len(server.requests) == 1
    stored = json.loads(path.read_text())["policies"][DOMAIN]
    assert stored["id"] == "20240101T000000"
