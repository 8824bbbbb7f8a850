"""A small DNS server on loopback for tests: UDP and TCP on one free port.

It answers from a zone the test gives, the way a recursive resolver would
answer a stub: CNAME chains inside the zone are followed into one answer,
NXDOMAIN for names that do not exist, NODATA for names that do. Tests can
also make it misbehave per name: answer SERVFAIL (or any rcode), or never
answer at all ("stall", for timeouts), and play a validating resolver by
setting the AD bit for names marked secure.

Use the fixture, named dns_server, by importing it into a test module or a
conftest.py (pytest finds fixtures imported there; the import's name differs
from the fixture's so that ruff's F811 does not mistake arguments for
redefinitions):

    from tests.dns_server import dns_server_fixture  # noqa: F401 - fixture dns_server

    def test_mx(dns_server):
        dns_server.load({
            "example.test": {"MX": ["10 mx.example.test."]},
            "mx.example.test": {"A": "127.0.0.1", "AAAA": ["::1"]},
            "broken.test": "SERVFAIL",     # a string instead of records: a behaviour
            "slow.test": "STALL",
        })
        resolver = Resolver(ResolverSettings(nameservers=(dns_server.nameserver,)))
        # or, for an appliance: make_appliance(resolver={"nameservers": [dns_server.nameserver]})

An outbound test points the domain's MX at a host whose A record is
127.0.0.1 and sets [delivery] mx_port to the port its peer (Postfix, say)
listens on; the peer itself needs no DNS.

or `with DnsServer(zone) as server:` where a fixture does not fit (module
scope, several servers). Zone text (RFC 1035 master file format) works too:
`dns_server.load(text, origin="example.test")`.

Behaviour:
- names are case-insensitive and absolute whether or not written with the
  final dot; record data is presentation format, names in it absolute too;
- an answer bigger than the query's EDNS buffer (512 without EDNS) goes over
  UDP truncated (TC, no records), in full over TCP;
- the AD bit is set only when the query asked for it (AD or DO, RFC 6840
  5.7) and every name of the answer's CNAME chain is secure: marked with
  `secure(name, ...)`, or all names with DnsServer(validated=True);
- records are sent in the order they were added, never rotated;
- `queries` records every query received (name, type, transport, flags), so
  a test can check what a client asked and how.
"""

from __future__ import annotations

import selectors
import socket
import struct
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import pytest

STALL = "STALL"  # a behaviour: read the query, never answer
MAX_CNAME_CHAIN = 8  # longer chains are a loop in the test's zone
POLL_INTERVAL = 0.05  # how often the server thread notices stop()
STOP_TIMEOUT = 5.0
TCP_SEND_TIMEOUT = 2.0
MAX_TCP_BUFFER = 70_000  # a DNS message over TCP is at most 65,535 bytes plus its length


@dataclass(frozen=True, slots=True)
class Query:
    """One query as the server received it."""

    name: str  # lower case, no final dot
    rdtype: str  # "MX", "TLSA", ...
    transport: str  # "udp" or "tcp"
    ad: bool  # AD bit set in the query (RFC 6840 5.7)
    do: bool  # EDNS DO bit set (RFC 3225)
    payload: int  # EDNS UDP buffer size; 0 without EDNS


class DnsServer:
    """An authoritative-looking DNS server in a thread, on one loopback port (UDP and TCP)."""

    def __init__(
        self,
        zone: Mapping | str | None = None,
        host: str = "127.0.0.1",
        ttl: int = 300,
        validated: bool = False,
    ):
        self.host = host
        self.port = 0
        self.ttl = ttl
        self.validated = validated  # AD for every name not marked otherwise
        self.queries: list[Query] = []
        self.errors: list[str] = []  # queries it could not parse or answer
        self._records: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
        self._behaviours: dict[tuple[dns.name.Name, int | None], str] = {}
        self._secure: dict[dns.name.Name, bool] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None
        if zone is not None:
            self.load(zone)

    @property
    def nameserver(self) -> str:
        """The server as "host:port", the form [resolver] nameservers takes."""
        return f"{self.host}:{self.port}"

    # -- the zone ------------------------------------------------------------

    def load(self, zone: Mapping | str, origin: str = ".") -> None:
        """Add records from {name: {type: data or [data, ...]} or behaviour} or zone text."""
        if isinstance(zone, str):
            parsed = dns.zone.from_text(
                zone, origin=_name(origin), relativize=False, check_origin=False
            )
            for name, rdataset in parsed.iterate_rdatasets():
                self.add(name.to_text(), dns.rdatatype.to_text(rdataset.rdtype), *rdataset)
            return
        for name, value in zone.items():
            if isinstance(value, str):
                self._behave(name, value.upper(), None)
                continue
            for rdtype, data in value.items():
                items = [data] if isinstance(data, str | dns.rdata.Rdata) else list(data)
                self.add(name, rdtype, *items)

    def add(self, name: str, rdtype: str, *data: str | dns.rdata.Rdata, ttl: int | None = None):
        """Add records of one type at name; data in presentation format ("10 mx.example.")."""
        owner, kind = _name(name), dns.rdatatype.from_text(rdtype)
        rdatas = [d if isinstance(d, dns.rdata.Rdata) else _rdata(kind, d) for d in data]
        with self._lock:
            node = self._records.setdefault(owner, {})
            rrset = node.setdefault(kind, dns.rrset.RRset(owner, dns.rdataclass.IN, kind))
            for rdata in rdatas:
                rrset.add(rdata, ttl if ttl is not None else self.ttl)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove records at name: one type, or all of them (the name then no longer exists)."""
        owner = _name(name)
        with self._lock:
            if rdtype is None:
                self._records.pop(owner, None)
            else:
                self._records.get(owner, {}).pop(dns.rdatatype.from_text(rdtype), None)

    # -- behaviours ----------------------------------------------------------

    def fail(self, name: str, rcode: str = "SERVFAIL", rdtype: str | None = None) -> None:
        """Answer queries for name (of one type, or all) with rcode: SERVFAIL, REFUSED..."""
        dns.rcode.from_text(rcode)  # a typo fails here, not as a puzzling answer
        self._behave(name, rcode.upper(), rdtype)

    def stall(self, name: str, rdtype: str | None = None) -> None:
        """Never answer queries for name (of one type, or all): the client times out."""
        self._behave(name, STALL, rdtype)

    def heal(self, name: str, rdtype: str | None = None) -> None:
        """Answer name normally again."""
        with self._lock:
            self._behaviours.pop((_name(name), _rdtype(rdtype)), None)

    def secure(self, *names: str, validated: bool = True) -> None:
        """Mark names as DNSSEC-validated (or not): their answers carry the AD bit."""
        with self._lock:
            for name in names:
                self._secure[_name(name)] = validated

    def _behave(self, name: str, behaviour: str, rdtype: str | None) -> None:
        with self._lock:
            self._behaviours[(_name(name), _rdtype(rdtype))] = behaviour

    # -- what was asked --------------------------------------------------------

    def queries_for(self, name: str, rdtype: str | None = None) -> list[Query]:
        wanted = _name(name).to_text(omit_final_dot=True).lower()
        with self._lock:
            return [
                q
                for q in self.queries
                if q.name == wanted and (rdtype is None or q.rdtype == rdtype.upper())
            ]

    # -- running ---------------------------------------------------------------

    def start(self) -> DnsServer:
        self._udp, self._tcp = _bind_pair(self.host)
        self.port = self._udp.getsockname()[1]
        self._stopping.clear()
        self._thread = threading.Thread(target=self._serve, name="dns-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT)
            self._thread = None

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._udp, selectors.EVENT_READ, "udp")
        selector.register(self._tcp, selectors.EVENT_READ, "accept")
        buffers: dict[socket.socket, bytearray] = {}
        try:
            while not self._stopping.is_set():
                for key, _events in selector.select(POLL_INTERVAL):
                    try:
                        self._ready(key, selector, buffers)
                    except Exception as error:  # keep serving; the test sees errors
                        self._error(f"serving {key.data}: {error!r}")
        finally:
            for connection in buffers:
                connection.close()
            selector.close()
            self._udp.close()
            self._tcp.close()

    def _ready(self, key, selector, buffers) -> None:
        if key.data == "udp":
            self._serve_udp()
        elif key.data == "accept":
            self._accept(selector, buffers)
        else:
            self._serve_tcp(key.fileobj, selector, buffers)

    def _serve_udp(self) -> None:
        try:
            wire, peer = self._udp.recvfrom(65535)
        except OSError:
            return
        query = self._parse(wire, "udp")
        if query is None:
            return
        response = self._respond(query)
        if response is not None:
            limit = max(512, int(query.payload)) if query.edns >= 0 else 512
            self._udp.sendto(_to_wire(response, limit), peer)

    def _accept(self, selector, buffers) -> None:
        try:
            connection, _peer = self._tcp.accept()
        except OSError:
            return
        connection.settimeout(TCP_SEND_TIMEOUT)
        buffers[connection] = bytearray()
        selector.register(connection, selectors.EVENT_READ, "tcp")

    def _serve_tcp(self, connection, selector, buffers) -> None:
        try:
            data = connection.recv(65535)
        except OSError:
            data = b""
        buffer = buffers[connection]
        buffer += data
        if not data or len(buffer) > MAX_TCP_BUFFER:
            selector.unregister(connection)
            del buffers[connection]
            connection.close()
            return
        # RFC 1035 4.2.2: each message is preceded by its two-byte length.
        while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack("!H", buffer[:2])[0]:
            length = struct.unpack("!H", buffer[:2])[0]
            wire = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            query = self._parse(wire, "tcp")
            response = None if query is None else self._respond(query)
            if response is not None:
                reply = _to_wire(response, 65535)
                try:
                    connection.sendall(struct.pack("!H", len(reply)) + reply)
                except OSError:
                    return

    def _parse(self, wire: bytes, transport: str) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(wire)
            question = query.question[0]
        except (dns.exception.DNSException, IndexError) as error:
            self._error(f"unparsable {transport} query: {error!r}")
            return None
        with self._lock:
            self.queries.append(
                Query(
                    name=question.name.to_text(omit_final_dot=True).lower(),
                    rdtype=dns.rdatatype.to_text(question.rdtype),
                    transport=transport,
                    ad=bool(query.flags & dns.flags.AD),
                    do=bool(query.ednsflags & dns.flags.DO),
                    payload=int(query.payload) if query.edns >= 0 else 0,
                )
            )
        return query

    def _respond(self, query: dns.message.Message) -> dns.message.Message | None:
        """The answer to query, or None to stall."""
        try:
            with self._lock:
                return self._answer(query)
        except Exception as error:  # the test's zone is wrong: say so, answer nothing
            self._error(f"cannot answer {query.question[0]}: {error!r}")
            return None

    def _answer(self, query: dns.message.Message) -> dns.message.Message | None:
        question = query.question[0]
        response = dns.message.make_response(query, recursion_available=True)
        response.flags &= ~dns.flags.AD
        if query.edns >= 0 and query.ednsflags & dns.flags.DO:
            response.ednsflags |= dns.flags.DO  # RFC 3225 3: the DO bit is copied
        name, validated = question.name, True
        for _ in range(MAX_CNAME_CHAIN):
            behaviour = self._behaviour(name, question.rdtype)
            if behaviour == STALL:
                return None
            if behaviour is not None:
                response.set_rcode(dns.rcode.from_text(behaviour))
                return response
            validated = validated and self._secure.get(name, self.validated)
            node = self._records.get(name)
            if node is not None and question.rdtype in node:
                response.answer.append(node[question.rdtype])
            elif node is not None and dns.rdatatype.CNAME in node:
                cname = node[dns.rdatatype.CNAME]
                response.answer.append(cname)
                name = next(iter(cname)).target
                continue
            elif node is None and not self._exists(name):
                response.set_rcode(dns.rcode.NXDOMAIN)
            break
        if validated and (query.flags & dns.flags.AD or query.ednsflags & dns.flags.DO):
            response.flags |= dns.flags.AD
        return response

    def _behaviour(self, name: dns.name.Name, rdtype: int) -> str | None:
        return self._behaviours.get((name, rdtype)) or self._behaviours.get((name, None))

    def _exists(self, name: dns.name.Name) -> bool:
        """An empty non-terminal (a name with names below it) exists: NODATA, not NXDOMAIN."""
        return any(owner.is_subdomain(name) for owner in self._records)

    def _error(self, text: str) -> None:
        print(f"dns_server: {text}", file=sys.stderr)
        with self._lock:
            self.errors.append(text)


def _to_wire(response: dns.message.Message, limit: int) -> bytes:
    """The response in at most limit bytes: truncated (TC, no records) when it does not fit.

    Records go out in the order they were added. Real servers often rotate
    them; a fixed order lets a test prove that a client shuffles on its own.
    """
    try:
        return response.to_wire(max_size=limit, want_shuffle=False)
    except dns.exception.TooBig:
        for section in (response.answer, response.authority, response.additional):
            section.clear()
        response.flags |= dns.flags.TC
        return response.to_wire(max_size=limit, want_shuffle=False)


def _bind_pair(host: str, attempts: int = 20) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port."""
    for _ in range(attempts):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind((host, udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        return udp, tcp
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


def _name(text: str | dns.name.Name) -> dns.name.Name:
    if isinstance(text, dns.name.Name):
        return text if text.is_absolute() else text.derelativize(dns.name.root)
    return dns.name.from_text(text, origin=dns.name.root)


def _rdtype(rdtype: str | None) -> int | None:
    return None if rdtype is None else dns.rdatatype.from_text(rdtype)


def _rdata(kind: int, text: str) -> dns.rdata.Rdata:
    # Names inside record data are absolute, with or without their final dot.
    return dns.rdata.from_text(
        dns.rdataclass.IN, kind, text, origin=dns.name.root, relativize=False
    )


@pytest.fixture(name="dns_server")
def dns_server_fixture() -> Iterator[DnsServer]:
    """A DnsServer on a free loopback port with an empty zone: load() what the test needs."""
    with DnsServer() as server:
        yield server
