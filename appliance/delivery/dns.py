"""DNS lookups for outbound mail: where a domain's mail goes, and what secures it.

`Resolver` answers the questions the outbound queue asks, as values that need
no dnspython to read:

- `mx_hosts(domain)`: the hosts to try, in order, with their addresses
  (RFC 5321 5.1, null MX of RFC 7505);
- `tlsa(host, port)`: DANE records for a host and whether DNSSEC vouched for
  them (RFC 7672);
- `mta_sts_txt(domain)`: the MTA-STS policy id (RFC 8461 3.1);
- `txt(name)` and `addresses(host)`: for SPF, DKIM, DMARC and the relay host.

A lookup that cannot be answered raises a `DnsError` carrying the enhanced
status code (RFC 3463) of the deferral or bounce it leads to:
`DnsTemporaryError` (try again later) or `DnsPermanentError` (bounce), with
`NoSuchDomain` and `NullMx` as the permanent cases a bounce names.

DNSSEC is not validated here: the resolver asks a validating recursive
resolver to set the AD bit (RFC 6840 5.7) and believes it only when every
nameserver is on loopback, the one path an attacker cannot write to
(RFC 4035 4.9.3, RFC 7672 2.1).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from appliance.config import DNS_PORT, ResolverSettings, parse_nameserver

log = logging.getLogger(__name__)

SYSTEM_RESOLV_CONF = Path("/etc/resolv.conf")
# The EDNS buffer size of DNS Flag Day 2020: a UDP answer this big crosses any
# path unfragmented; a bigger one comes truncated and is asked again over TCP.
EDNS_PAYLOAD = 1232
# MX hosts resolved per domain, best preferences first. A real domain has a
# handful; hundreds would make one message cost hundreds of queries.
MAX_MX_HOSTS = 10
_UNREAD = object()  # resolv.conf not read yet


class DnsError(Exception):
    """A lookup without a usable answer; status is the RFC 3463 code of the outcome."""

    status = "4.4.3"

    def __init__(self, text: str, status: str | None = None):
        super().__init__(text)
        self.text = text
        if status is not None:
            self.status = status


class DnsTemporaryError(DnsError):
    """SERVFAIL, REFUSED, a timeout, no nameserver: the message waits and is tried again."""

    status = "4.4.3"  # RFC 3463 X.4.3: directory server failure


class DnsPermanentError(DnsError):
    """The DNS says there is nowhere to deliver: the message bounces."""

    status = "5.4.4"  # RFC 3463 X.4.4: unable to route


class NoSuchDomain(DnsPermanentError):
    """NXDOMAIN, or a name that cannot be a domain."""

    status = "5.1.2"  # RFC 3463 X.1.2: bad destination system address


class NullMx(DnsPermanentError):
    """The domain says it accepts no mail (RFC 7505 3: a lone MX "." record)."""

    status = "5.1.10"  # RFC 7505: recipient address has null MX


class MailLoop(DnsPermanentError):
    """Every MX host left is this box itself (RFC 5321 5.1)."""

    status = "5.4.6"  # RFC 3463 X.4.6: routing loop detected


@dataclass(frozen=True, slots=True)
class MxTarget:
    """One host to try for a domain, in the order `mx_hosts` returns them."""

    host: str  # the MX exchange as published (lower case, no final dot); the domain if implicit
    preference: int
    addresses: tuple[str, ...]  # IPv6 before IPv4, as RFC 6724's default policy orders them
    # The host after CNAMEs: with `host`, a TLSA base domain (RFC 7672 2.2.2, 2.3).
    canonical: str
    # MX and address records were DNSSEC-validated: DANE applies (RFC 7672 2.2.1, 2.2.2).
    secure: bool
    implicit: bool = False  # no MX records: the domain's own addresses (RFC 5321 5.1)


@dataclass(frozen=True, slots=True)
class TlsaRecord:
    usage: int  # RFC 6698 2.1.1; RFC 7672 3.1: only 2 (DANE-TA) and 3 (DANE-EE) apply to SMTP
    selector: int  # 0 whole certificate, 1 SubjectPublicKeyInfo
    matching_type: int  # 0 exact, 1 SHA-256, 2 SHA-512
    data: bytes


@dataclass(frozen=True, slots=True)
class TlsaAnswer:
    """TLSA records at _port._tcp.host. DANE applies only when `secure` (RFC 7672 2.2)."""

    records: tuple[TlsaRecord, ...]
    secure: bool  # validated by the resolver: records, or their absence, are authentic


@dataclass(frozen=True, slots=True)
class _Result:
    """One lookup: the records (None for NODATA/NXDOMAIN), after CNAMEs."""

    rrset: object | None
    canonical: dns.name.Name
    secure: bool
    nxdomain: bool = False


class Resolver:
    """Async lookups for the outbound queue; one per service, shared by every delivery."""

    def __init__(
        self,
        settings: ResolverSettings | None = None,
        rng: random.Random | None = None,
        resolv_conf: Path = SYSTEM_RESOLV_CONF,
    ):
        self.settings = settings or ResolverSettings()
        self._random = rng or random.Random()
        self._resolv_conf = resolv_conf
        self._resolv_conf_stamp: object = _UNREAD
        self._stub = self._make_stub([parse_nameserver(s) for s in self.settings.nameservers])

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """The (address, port) pairs queries go to now."""
        self._refresh_system_nameservers()
        return [(ns.address, ns.port) for ns in self._stub.nameservers]

    @property
    def trusts_ad(self) -> bool:
        """Whether an AD bit counts: only from nameservers on loopback (RFC 4035 4.9.3)."""
        servers = self.nameservers
        return bool(servers) and all(ipaddress.ip_address(a).is_loopback for a, _ in servers)

    async def mx_hosts(self, domain: str, local_names: Collection[str] = ()) -> list[MxTarget]:
        """Where mail for domain goes, best first (RFC 5321 5.1).

        MX hosts sorted by preference, equal preferences in random order; each
        with its addresses. No MX records: the domain itself (implicit MX).
        local_names are this box's own names: an MX host among them is
        dropped with every less preferred one, so mail never loops back here.
        Takes at most twice lookup_timeout: the MX lookup, then every host's
        address lookups at once.
        """
        literal = _address_literal(domain)
        if literal is not None:
            return [MxTarget(domain, 0, (literal,), domain, secure=False, implicit=True)]
        name = _domain_name(domain)
        mx = await self._lookup(name, dns.rdatatype.MX)
        if mx.nxdomain:
            raise NoSuchDomain(f"{_text(name)}: no such domain (NXDOMAIN)")
        # RFC 5321 5.1: no MX records is an implicit MX of preference 0 to the domain.
        exchanges = [(0, name)] if mx.rrset is None else self._ordered_exchanges(name, mx.rrset)
        exchanges = _before_self(name, exchanges, local_names)[:MAX_MX_HOSTS]
        targets = await asyncio.gather(
            *(self._target(p, h, mx.secure, mx.rrset is None) for p, h in exchanges)
        )
        found = [t for t in targets if isinstance(t, MxTarget)]
        log.debug("dns mx domain=%s hosts=%d usable=%d", _text(name), len(exchanges), len(found))
        if found:
            return found
        if any(isinstance(t, DnsTemporaryError) for t in targets):
            raise DnsTemporaryError(f"{_text(name)}: address lookups of its MX hosts failed")
        raise DnsPermanentError(f"{_text(name)}: no MX host has an address")

    async def addresses(self, host: str) -> tuple[str, ...]:
        """IPv6 then IPv4 addresses of host (the relay host, SPF's a mechanism)."""
        name = _domain_name(host)
        found = await self._addresses(name)
        if isinstance(found, DnsError):
            raise found
        return found[0]

    async def tlsa(self, host: str, port: int = 25) -> TlsaAnswer:
        """TLSA records at _port._tcp.host (RFC 7672 2.3; RFC 6698 3).

        No records (NODATA or NXDOMAIN) is an empty answer, secure when the
        denial was validated. A failed lookup raises DnsTemporaryError: for a
        secure host that means the host is not tried (RFC 7672 2.1.1).
        """
        if not 0 < port < 65536:
            raise ValueError(f"port out of range: {port}")
        name = dns.name.Name((f"_{port}".encode(), b"_tcp")).concatenate(_domain_name(host))
        result = await self._lookup(name, dns.rdatatype.TLSA)
        records = tuple(
            TlsaRecord(r.usage, r.selector, r.mtype, bytes(r.cert)) for r in result.rrset or ()
        )
        return TlsaAnswer(records, result.secure)

    async def mta_sts_txt(self, domain: str) -> str | None:
        """The policy id of the _mta-sts TXT record, or None when there is no valid one.

        RFC 8461 3.1: records not starting with v=STSv1 are ignored; anything
        but exactly one remaining record, or one that is not valid, means no policy.
        """
        name = dns.name.Name((b"_mta-sts",)).concatenate(_domain_name(domain))
        result = await self._lookup(name, dns.rdatatype.TXT)
        sts = [r for r in _txt_records(result.rrset) if _STS_VERSION.match(r)]
        if len(sts) != 1 or not _STS_RECORD.fullmatch(sts[0]):
            return None
        ids = _STS_ID.findall(sts[0])
        return ids[0].decode("ascii") if len(ids) == 1 else None

    async def txt(self, name: str) -> tuple[bytes, ...]:
        """Each TXT record at name, its strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2).

        NODATA is an empty tuple; NXDOMAIN raises NoSuchDomain, since SPF and
        DMARC tell the two apart.
        """
        qname = _domain_name(name)
        result = await self._lookup(qname, dns.rdatatype.TXT)
        if result.nxdomain:
            raise NoSuchDomain(f"{_text(qname)}: no such domain (NXDOMAIN)")
        return tuple(_txt_records(result.rrset))

    async def records(self, name: str, rdtype: str) -> tuple[str, ...]:
        """The records of one type at name, each as zone files write it ("10 mx.example.").

        CNAMEs are followed unless rdtype is CNAME. NODATA and NXDOMAIN are an
        empty tuple: the web page's record checks call both "missing".
        """
        qname = _domain_name(name)
        result = await self._lookup(qname, dns.rdatatype.from_text(rdtype))
        return tuple(rdata.to_text() for rdata in result.rrset or ())

    # -- MX ordering -------------------------------------------------------

    def _ordered_exchanges(self, domain: dns.name.Name, rrset) -> list[tuple[int, dns.name.Name]]:
        records = list(rrset)
        # RFC 7505 3: a null MX is the only MX of its domain; a "." among real
        # hosts is a mistake that names no host, so the others are used.
        if all(r.exchange == dns.name.root for r in records):
            raise NullMx(f"{_text(domain)}: the domain accepts no mail (null MX)")
        # RFC 5321 5.1: lowest preference first, equal ones shuffled to spread load.
        records.sort(key=lambda r: (r.preference, self._random.random()))
        ordered: dict[dns.name.Name, int] = {}
        for r in records:
            if r.exchange != dns.name.root:
                ordered.setdefault(r.exchange, r.preference)
        return [(preference, exchange) for exchange, preference in ordered.items()]

    async def _target(
        self, preference: int, host: dns.name.Name, mx_secure: bool, implicit: bool
    ) -> MxTarget | DnsError:
        text = _text(host)
        literal = _ip_text(text)
        if literal is not None:
            # RFC 5321 5.1 wants a host name here; a published IP address is
            # used as it stands (no name, so no DANE) rather than refused.
            log.info("dns mx_is_address host=%s", text)
            return MxTarget(text, preference, (literal,), text, secure=False, implicit=implicit)
        found = await self._addresses(host)
        if isinstance(found, DnsError):
            log.info("dns mx_host_unusable host=%s error=%s", text, found)
            return found
        addresses, canonical, secure = found
        # RFC 2181 10.3 forbids an MX naming a CNAME, yet such hosts receive
        # mail: the CNAME is followed and the target recorded as canonical.
        return MxTarget(
            text, preference, addresses, _text(canonical), mx_secure and secure, implicit
        )

    # -- lookups -----------------------------------------------------------

    async def _addresses(
        self, name: dns.name.Name
    ) -> tuple[tuple[str, ...], dns.name.Name, bool] | DnsError:
        """AAAA and A of name at once: (addresses, canonical name, secure) or the error."""
        results = await asyncio.gather(
            self._lookup(name, dns.rdatatype.AAAA),
            self._lookup(name, dns.rdatatype.A),
            return_exceptions=True,
        )
        answered = [r for r in results if isinstance(r, _Result)]
        for r in results:
            if not isinstance(r, _Result | DnsError):
                raise r  # a bug, not a DNS failure
        addresses = tuple(rdata.address for r in answered for rdata in r.rrset or ())
        if addresses:
            # One family failing while the other answers still gives a host to try.
            canonical = next(r.canonical for r in answered if r.rrset is not None)
            return addresses, canonical, all(r.secure for r in answered)
        temporary = [r for r in results if isinstance(r, DnsTemporaryError)]
        if temporary:
            return temporary[0]
        if all(isinstance(r, _Result) and r.nxdomain for r in results):
            return NoSuchDomain(f"{_text(name)}: no such host (NXDOMAIN)")
        return DnsPermanentError(f"{_text(name)}: host has no address")

    async def _lookup(self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> _Result:
        """One query, CNAMEs followed, errors sorted into temporary and permanent."""
        self._refresh_system_nameservers()
        if not self._stub.nameservers:
            raise DnsTemporaryError(f"no nameservers configured in {self._resolv_conf}")
        what = f"{_text(name)} {dns.rdatatype.to_text(rdtype)}"
        try:
            answer = await self._stub.resolve(name, rdtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as error:
            response = error.kwargs["responses"].get(name)
            return _Result(None, error.canonical_name, self._secure(response), nxdomain=True)
        except dns.resolver.LifetimeTimeout:
            raise DnsTemporaryError(f"{what}: timed out") from None
        except dns.resolver.NoNameservers as error:
            raise DnsTemporaryError(f"{what}: {_failures(error)}") from None
        except dns.resolver.YXDOMAIN:
            raise NoSuchDomain(f"{what}: name too long after DNAME substitution") from None
        except dns.exception.DNSException as error:
            raise DnsTemporaryError(f"{what}: {error}") from None
        return _Result(answer.rrset, answer.canonical_name, self._secure(answer.response))

    def _secure(self, response: dns.message.Message | None) -> bool:
        if response is None or not response.flags & dns.flags.AD:
            return False
        return self.trusts_ad

    # -- configuration -----------------------------------------------------

    def _make_stub(self, nameservers: Sequence[tuple[str, int]]) -> dns.asyncresolver.Resolver:
        stub = dns.asyncresolver.Resolver(configure=False)
        stub.nameservers = [dns.nameserver.Do53Nameserver(a, p) for a, p in nameservers]
        stub.timeout = self.settings.query_timeout
        stub.lifetime = self.settings.lookup_timeout
        # Ask for the AD bit (RFC 6840 5.7) and, with DO, for DNSSEC records so
        # that a validating resolver validates (RFC 4035 3.2.1).
        stub.set_flags(dns.flags.RD | dns.flags.AD)
        stub.use_edns(0, dns.flags.DO, EDNS_PAYLOAD)
        return stub

    def _refresh_system_nameservers(self) -> None:
        """Re-read resolv.conf when it changes: DHCP rewrites it after the service starts."""
        if self.settings.nameservers:
            return
        try:
            info = os.stat(self._resolv_conf)
            stamp = (info.st_mtime_ns, info.st_size)
        except OSError:
            stamp = None
        if stamp == self._resolv_conf_stamp:
            return
        self._resolv_conf_stamp = stamp
        nameservers = []
        if stamp is not None:
            try:
                system = dns.resolver.Resolver(filename=str(self._resolv_conf))
                nameservers = [(str(a), DNS_PORT) for a in system.nameservers]
            except (dns.resolver.NoResolverConfiguration, OSError):
                nameservers = []
        log.info("dns nameservers source=%s count=%d", self._resolv_conf, len(nameservers))
        self._stub = self._make_stub(nameservers)


# RFC 8461 3.1: sts-text-record, fields separated by *WSP ";" *WSP.
_STS_FIELD = rb"(?:id=[A-Za-z0-9]{1,32}|[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}=[\x21-\x3a\x3c\x3e-\x7e]+)"
_STS_RECORD = re.compile(rb"v=STSv1(?:[ \t]*;[ \t]*" + _STS_FIELD + rb")+(?:[ \t]*;)?[ \t]*")
_STS_VERSION = re.compile(rb"v=STSv1(?![^ \t;])")  # v=STSv1 then a delimiter or the end
_STS_ID = re.compile(rb"(?:^|;)[ \t]*id=([A-Za-z0-9]{1,32})[ \t]*(?=;|$)")


def _txt_records(rrset) -> list[bytes]:
    return [b"".join(r.strings) for r in rrset or ()]


def _domain_name(text: str) -> dns.name.Name:
    """An absolute DNS name from a domain as written in an address; IDNs become A-labels."""
    try:
        name = dns.name.from_text(text.strip(), origin=dns.name.root)
    except (dns.exception.DNSException, UnicodeError) as error:
        raise NoSuchDomain(f"{text!r}: not a domain name ({error})") from None
    if name == dns.name.root:
        raise NoSuchDomain(f"{text!r}: not a domain name")
    return name


def _before_self(
    domain: dns.name.Name, exchanges: list[tuple[int, dns.name.Name]], local_names: Collection[str]
) -> list[tuple[int, dns.name.Name]]:
    """RFC 5321 5.1: drop this box and every MX not preferred over it."""
    own = {_domain_name(n) for n in local_names}
    mine = [p for p, host in exchanges if host in own]
    if not mine:
        return exchanges
    kept = [(p, host) for p, host in exchanges if p < min(mine)]
    if not kept:
        raise MailLoop(f"mail for {_text(domain)} loops back to myself")
    return kept


def _address_literal(domain: str) -> str | None:
    """The address of a domain literal: "[192.0.2.1]" or "[IPv6:2001:db8::1]" (RFC 5321 4.1.3)."""
    text = domain.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    if inner[:5].lower() == "ipv6:":
        address = _ip_text(inner[5:])
        if address is not None and ":" in address:
            return address
    elif ":" not in inner:
        address = _ip_text(inner)
        if address is not None:
            return address
    raise NoSuchDomain(f"{domain!r}: not an address literal")


def _ip_text(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


def _failures(error: dns.resolver.NoNameservers) -> str:
    """What each nameserver said, e.g. 'SERVFAIL from Do53:127.0.0.1@5300'."""
    parts = [f"{failure} from {server}" for server, _, _, failure, _ in error.kwargs["errors"]]
    return "; ".join(parts) or "no nameserver answered"
