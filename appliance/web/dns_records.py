"""The DNS records a domain needs for mail through this box, and what the DNS holds now.

`expected_records(hostname, domain, data_dir, addresses)` lists every record
the owner publishes for a domain whose mail host is this box: MX, the host's
addresses, SPF, DKIM (every selector with a key), DMARC, MTA-STS, TLS-RPT,
names and SRV records that let mail clients set themselves up, and the
reverse (PTR) names that the provider of each address sets. Each `Expected`
carries its value as a DNS provider's form takes it, a line for a zone file,
and one sentence saying what it is for.

`check(expected, resolver)` looks each record up through the configured
resolver (all at once) and says whether it is there and right, there and
wrong (with what differs), missing, or could not be looked up just now.
"Right" means right for mail, not equal to the text: an SPF record that
authorizes the box in another way, or an MX list with a backup host, is right.
How each kind is judged is in its `_check_*` function.

`mta_sts_policy(hostname)` is the MTA-STS policy text (RFC 8461 3.2) that the
web server serves at https://mta-sts.DOMAIN/.well-known/mta-sts.txt; the id of
the _mta-sts record is derived from it (`mta_sts_id`), so the two change
together.

Values are ours or come from the DNS; this module renders no HTML, and the
page that shows them escapes them.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from appliance.addresses import normalize_domain
from appliance.delivery.dns import DnsPermanentError, DnsTemporaryError, Resolver
from appliance.mailauth import dkim

log = logging.getLogger(__name__)

MX_PREFERENCE = 10
# RFC 7208 5.4, 5.1: the domain's mail leaves from its MX host, the box, and
# from nowhere else, so anything else fails (-all) rather than soft-fails
# (~all): the box is the only sender this record describes.
SPF_RECORD = "v=spf1 mx -all"
# RFC 7208 2.3: receivers check the HELO name too, and a bounce (empty MAIL
# FROM) is checked as postmaster@<HELO name> (2.4): this record covers both.
HELO_SPF_RECORD = "v=spf1 a -all"
# RFC 7489 6.3. quarantine, not reject: the box signs everything it sends, so
# its own mail passes; mail that a mailing list or forwarder altered fails
# DKIM and lands in spam rather than bouncing, while forgeries are marked.
# Not none: a policy that asks for nothing protects the domain from nothing,
# and the owner of a small box rarely reads aggregate reports to move on.
DMARC_POLICY = "quarantine"
# RFC 8461 3.2: "testing" because a fresh box has a self-signed certificate;
# under "enforce" senders that honour the policy would refuse to deliver to
# it at all. The owner moves to "enforce" once a trusted certificate is in place.
MTA_STS_MODE = "testing"
# RFC 8461 3.2 expects weeks or more; one week while testing, so that a
# mistake in the policy does not stay in senders' caches for long.
MTA_STS_MAX_AGE = 604_800
MTA_STS_MAX_AGE_LIMIT = 31_557_600  # RFC 8461 3.2: at most a year
MTA_STS_MODES = ("enforce", "testing", "none")
MTA_STS_ID_LENGTH = 20  # hex digits of the policy's SHA-256; RFC 8461 3.1 allows 1 to 32
TXT_STRING_MAX = 255  # RFC 1035 3.3: one string of a TXT record

# RFC 6186 3 and RFC 8314 5.1: SRV records that tell mail clients where each
# service is; _autodiscover._tcp is Outlook's (MS-OXDSCLI 3.1.5.1). Ports are
# the standard ones; a caller passes others, or leaves out a service the box
# does not offer.
DEFAULT_SRV_PORTS = MappingProxyType(
    {"submissions": 465, "submission": 587, "imaps": 993, "pop3s": 995, "autodiscover": 443}
)
# RFC 6186 3.4: clients compare priorities across the services of one kind,
# so lower numbers say which to prefer: implicit TLS over STARTTLS (RFC 8314
# asks clients to prefer it) and IMAP, which keeps mail on the box, over POP3.
_SRV_PRIORITY = {"submissions": 0, "submission": 1, "imaps": 0, "pop3s": 10, "autodiscover": 0}
_SRV_USE = {
    "submissions": "send mail (SMTP submission over TLS)",
    "submission": "send mail (SMTP submission with STARTTLS)",
    "imaps": "read mail (IMAP over TLS)",
    "pop3s": "download mail (POP3 over TLS)",
    "autodiscover": "find their settings (Outlook's autodiscover over HTTPS)",
}

# Kinds of record: each is judged by its own rule in check().
MX, ADDRESS, SPF, DKIM, DMARC = "mx", "address", "spf", "dkim", "dmarc"
MTA_STS, TLS_RPT, ALIAS, SRV, PTR = "mta-sts", "tls-rpt", "alias", "srv", "ptr"

# Record versions, matched at the start of a TXT record followed by ";" or
# its end (RFC 7208 4.5, RFC 7489 6.6.3, RFC 8461 3.1, RFC 8460 3).
_SPF_VERSION = re.compile(r"v=spf1(?=$| )", re.IGNORECASE)
_DMARC_VERSION = re.compile(r"v[ \t]*=[ \t]*DMARC1[ \t]*(?=;|$)")
_STS_VERSION = re.compile(r"v=STSv1[ \t]*(?=;|$)")
_TLSRPT_VERSION = re.compile(r"v=TLSRPTv1[ \t]*(?=;|$)")
_DMARC_POLICIES = ("none", "quarantine", "reject")
_SPF_QUALIFIERS = "+-~?"


class State(StrEnum):
    OK = "ok"  # present and right
    WRONG = "wrong"  # present, and not what mail needs
    MISSING = "missing"
    ERROR = "error"  # the lookup failed for now: nothing is known


@dataclass(frozen=True, slots=True)
class MailHost:
    """The box as the records name it: its host name and the public addresses the owner gave."""

    name: str
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Expected:
    """One record to publish."""

    name: str  # owner name: lower case, A-labels, no final dot
    type: str  # "MX", "TXT", ...
    # As a DNS provider's form takes it: names absolute with their final dot;
    # TXT text unquoted, in one piece (zone_line cuts and quotes it). Empty for
    # an address the box does not know: any address then passes the check.
    value: str
    purpose: str  # one sentence for the owner
    kind: str  # the rule check() judges it by: MX, ADDRESS, SPF...
    host: MailHost
    in_zone: bool = True  # False: set by whoever provides the address (PTR)

    @property
    def zone_line(self) -> str:
        """The record as a line of a zone file (RFC 1035 5.1)."""
        if not self.value:
            return f"{self.name}. IN {self.type} ; the box's public address"
        value = _quoted_strings(self.value) if self.type == "TXT" else self.value
        return f"{self.name}. IN {self.type} {value}"


@dataclass(frozen=True, slots=True)
class Checked:
    """What the DNS holds for one expected record."""

    expected: Expected
    state: State
    found: tuple[str, ...] = ()  # the records of that type at that name, as the DNS gave them
    detail: str = ""  # what differs, a note on a right record, or why the lookup failed


# -- what to publish -----------------------------------------------------------


def expected_records(
    hostname: str,
    domain: str,
    data_dir: Path,
    addresses: Sequence[str] = (),
    ports: Mapping[str, int] = DEFAULT_SRV_PORTS,
    mta_sts_mode: str = MTA_STS_MODE,
) -> list[Expected]:
    """Every record the owner publishes for domain, whose mail goes to the box at hostname.

    addresses are the box's public IP addresses when the owner has said them;
    without any, the host's address record is only checked for presence and
    no PTR can be named. ports maps the SRV services to publish to their
    ports (DEFAULT_SRV_PORTS). Raises AddressError (a ValueError) for a
    hostname or domain that is not a domain name, ValueError for an address
    that is not one or an unknown service.
    """
    hostname, domain = normalize_domain(hostname), normalize_domain(domain)
    host = MailHost(hostname, tuple(str(ipaddress.ip_address(a.strip())) for a in addresses))
    unknown = set(ports) - set(_SRV_USE)
    if unknown:
        raise ValueError(f"unknown SRV services: {', '.join(sorted(unknown))}")
    records = [_mx(host, domain), *_host_addresses(host), _spf(host, domain)]
    if hostname != domain:
        records.append(_helo_spf(host))
    records += _dkim(host, domain, data_dir)
    records += [_dmarc(host, domain), *_mta_sts(host, domain, mta_sts_mode), _tls_rpt(host, domain)]
    records += [_alias(host, f"autoconfig.{domain}", "Thunderbird and other mail clients")]
    records += [_alias(host, f"autodiscover.{domain}", "Outlook")]
    records += [_srv(host, domain, service, port) for service, port in ports.items()]
    records += [_ptr(host, address) for address in host.addresses]
    return records


def _mx(host: MailHost, domain: str) -> Expected:
    return Expected(
        domain,
        "MX",
        f"{MX_PREFERENCE} {host.name}.",
        f"Tells other mail servers to deliver mail for {domain} to this box.",
        MX,
        host,
    )


def _host_addresses(host: MailHost) -> list[Expected]:
    if not host.addresses:
        # Presence only: the box behind a router does not see its public
        # address. IPv4 is the one asked for, since most senders reach mail
        # hosts over it; an IPv6 address is welcome but not enough alone.
        purpose = (
            f"The public IPv4 address of the box, where senders and mail clients reach "
            f"{host.name}; the box does not know it, so any address passes this check."
        )
        return [Expected(host.name, "A", "", purpose, ADDRESS, host)]
    records = []
    for address in host.addresses:
        kind = "AAAA" if ipaddress.ip_address(address).version == 6 else "A"
        purpose = f"The address of the box, where senders and mail clients reach {host.name}."
        records.append(Expected(host.name, kind, address, purpose, ADDRESS, host))
    return records


def _spf(host: MailHost, domain: str) -> Expected:
    purpose = (
        f"Says that mail from @{domain} is sent by this box only, so receivers can "
        "tell forgeries from it."
    )
    return Expected(domain, "TXT", SPF_RECORD, purpose, SPF, host)


def _helo_spf(host: MailHost) -> Expected:
    purpose = (
        f"Lets receivers check the name the box introduces itself with ({host.name}), "
        "which is what they check for bounces."
    )
    return Expected(host.name, "TXT", HELO_SPF_RECORD, purpose, SPF, host)


def _dkim(host: MailHost, domain: str, data_dir: Path) -> list[Expected]:
    active = {selector.name for selector in dkim.active_selectors(data_dir, domain)}
    records = []
    for record in dkim.dns_records(data_dir, domain):
        selector = record.name.partition(".")[0]
        if selector in active:
            purpose = (
                f"Public key of DKIM selector {selector}: receivers check the box's "
                "signature on every message it sends with it."
            )
        else:
            purpose = (
                f"Retired public key of DKIM selector {selector}: kept so that mail signed "
                "before the last key change still verifies."
            )
        records.append(Expected(record.name, "TXT", record.value, purpose, DKIM, host))
    return records


def _dmarc(host: MailHost, domain: str) -> Expected:
    # Aggregate reports go to the domain itself: no permission record is
    # needed (RFC 7489 7.1), and RFC 5321 4.5.1 has every domain keep a postmaster.
    value = f"v=DMARC1; p={DMARC_POLICY}; rua=mailto:postmaster@{domain}"
    purpose = (
        f"Asks receivers to treat mail from @{domain} that fails both SPF and DKIM as "
        f"spam, and to send daily reports to postmaster@{domain}."
    )
    return Expected(f"_dmarc.{domain}", "TXT", value, purpose, DMARC, host)


def _mta_sts(host: MailHost, domain: str, mode: str) -> list[Expected]:
    policy_id = mta_sts_id(mta_sts_policy(host.name, mode))
    announce = (
        "Announces the MTA-STS policy, which asks senders to use TLS to reach the box; "
        "its id changes whenever the policy does."
    )
    serve = (
        f"The web name where the box serves that policy: "
        f"https://mta-sts.{domain}/.well-known/mta-sts.txt."
    )
    return [
        Expected(f"_mta-sts.{domain}", "TXT", f"v=STSv1; id={policy_id}", announce, MTA_STS, host),
        Expected(f"mta-sts.{domain}", "CNAME", f"{host.name}.", serve, ALIAS, host),
    ]


def _tls_rpt(host: MailHost, domain: str) -> Expected:
    value = f"v=TLSRPTv1; rua=mailto:postmaster@{domain}"
    purpose = (
        f"Asks senders to report to postmaster@{domain} when they cannot reach the box over TLS."
    )
    return Expected(f"_smtp._tls.{domain}", "TXT", value, purpose, TLS_RPT, host)


def _alias(host: MailHost, name: str, clients: str) -> Expected:
    purpose = f"Lets {clients} find their settings from an email address and password."
    return Expected(name, "CNAME", f"{host.name}.", purpose, ALIAS, host)


def _srv(host: MailHost, domain: str, service: str, port: int) -> Expected:
    if not 0 < port < 65536:
        raise ValueError(f"port out of range for {service}: {port}")
    # Weight 0: RFC 2782 asks for it when there is no choice among servers to weigh.
    value = f"{_SRV_PRIORITY[service]} 0 {port} {host.name}."
    purpose = f"Tells mail clients where to {_SRV_USE[service]}: port {port} of {host.name}."
    return Expected(f"_{service}._tcp.{domain}", "SRV", value, purpose, SRV, host)


def _ptr(host: MailHost, address: str) -> Expected:
    # in_zone=False says who sets it: the page adds that in its own words.
    purpose = (
        f"Reverse DNS of {address}: many receivers refuse mail from an address whose "
        "name does not lead back to the box."
    )
    name = ipaddress.ip_address(address).reverse_pointer
    return Expected(name, "PTR", f"{host.name}.", purpose, PTR, host, in_zone=False)


def _quoted_strings(text: str) -> str:
    """TXT text as zone-file strings of at most 255 octets each (RFC 1035 3.3.14, 5.1)."""
    pieces = [text[i : i + TXT_STRING_MAX] for i in range(0, len(text), TXT_STRING_MAX)] or [""]
    escaped = (piece.replace("\\", "\\\\").replace('"', '\\"') for piece in pieces)
    return " ".join(f'"{piece}"' for piece in escaped)


# -- MTA-STS policy --------------------------------------------------------------


def mta_sts_policy(hostname: str, mode: str = MTA_STS_MODE, max_age: int = MTA_STS_MAX_AGE) -> str:
    """The MTA-STS policy for domains whose MX is hostname (RFC 8461 3.2).

    Lines end in CRLF, which the RFC's grammar allows along with LF, and
    the last one is ended too. The default mode is "testing" (see MTA_STS_MODE).
    """
    if mode not in MTA_STS_MODES:
        raise ValueError(f"MTA-STS mode {mode!r}: not one of {', '.join(MTA_STS_MODES)}")
    if not 0 <= max_age <= MTA_STS_MAX_AGE_LIMIT:
        raise ValueError(f"MTA-STS max_age {max_age}: not 0 to {MTA_STS_MAX_AGE_LIMIT}")
    lines = ["version: STSv1", f"mode: {mode}", f"mx: {normalize_domain(hostname)}"]
    return "\r\n".join([*lines, f"max_age: {max_age}", ""])


def mta_sts_id(policy: str) -> str:
    """The id= of the _mta-sts record: it changes whenever the policy text does (RFC 8461 3.1)."""
    return hashlib.sha256(policy.encode("utf-8")).hexdigest()[:MTA_STS_ID_LENGTH]


# -- checking ------------------------------------------------------------------


async def check(expected: Sequence[Expected], resolver: Resolver) -> list[Checked]:
    """The live state of each expected record, in the same order.

    Every lookup starts at once, and one asked by several records (the box's
    addresses) is asked once; each is bounded by the resolver's lookup_timeout,
    and a record needs at most three in a row.
    """
    lookups = _Lookups(resolver)
    return list(await asyncio.gather(*(_check_one(record, lookups) for record in expected)))


async def _check_one(expected: Expected, lookups: _Lookups) -> Checked:
    try:
        return await _CHECKS[expected.kind](expected, lookups)
    except DnsTemporaryError as error:
        log.info("dns record check failed name=%s type=%s", expected.name, expected.type)
        return Checked(expected, State.ERROR, detail=f"The lookup failed for now: {error.text}.")


class _Lookups:
    """The resolver's answers for one check(): each question asked once, its answer shared.

    A permanent failure (NXDOMAIN, no address at all) is an empty answer:
    for a record to publish it means "missing". Temporary ones are raised.
    """

    def __init__(self, resolver: Resolver):
        self._resolver = resolver
        self._asked: dict[tuple[str, str], asyncio.Future] = {}

    async def records(self, name: str, rdtype: str) -> tuple[str, ...]:
        """Records in presentation format ("10 mail.example.com.")."""
        return await self._ask((name, rdtype), lambda: self._resolver.records(name, rdtype), ())

    async def txt(self, name: str) -> tuple[str, ...]:
        """Each TXT record's strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2)."""
        return await self._ask((name, "TXT"), lambda: self._txt(name), ())

    async def addresses(self, name: str) -> frozenset[str]:
        """Every IPv4 and IPv6 address of name, CNAMEs followed."""
        return await self._ask((name, "A+AAAA"), lambda: self._addresses(name), frozenset())

    async def _ask(self, key: tuple[str, str], lookup: Callable[[], Coroutine], empty):
        if key not in self._asked:
            self._asked[key] = asyncio.ensure_future(self._empty_if_permanent(lookup(), empty))
        return await self._asked[key]

    @staticmethod
    async def _empty_if_permanent(lookup: Coroutine, empty):
        try:
            return await lookup
        except DnsPermanentError:
            return empty

    async def _txt(self, name: str) -> tuple[str, ...]:
        found = await self._resolver.txt(name)
        return tuple(record.decode("utf-8", "replace") for record in found)

    async def _addresses(self, name: str) -> frozenset[str]:
        return frozenset(await self._resolver.addresses(name))


async def _check_mx(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when the box is among the MX hosts; others may be backups, noted."""
    found = await lookups.records(expected.name, "MX")
    if not found:
        return Checked(expected, State.MISSING)
    exchanges = [_mx_record(record) for record in found]
    hosts = [host for _, host in exchanges]
    box = expected.host.name
    if hosts == [""]:
        detail = "A null MX (RFC 7505) says the domain accepts no mail."
        return Checked(expected, State.WRONG, found, detail)
    if box not in hosts:
        detail = f"MX points to {_listed([host for host in hosts if host])}, not {box}."
        return Checked(expected, State.WRONG, found, detail)
    mine = min(preference for preference, host in exchanges if host == box)
    before = [host for preference, host in exchanges if preference < mine]
    others = [host for host in hosts if host != box and host]
    if before:
        detail = f"{_listed(before)} is preferred to {box}: senders try it first."
    elif others:
        detail = f"Also lists {_listed(others)}, tried when {box} does not answer."
    else:
        detail = ""
    return Checked(expected, State.OK, found, detail)


async def _check_address(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when the address is there; other addresses of the box's name are wrong."""
    found = await lookups.records(expected.name, expected.type)
    if not found:
        return Checked(expected, State.MISSING)
    if not expected.value:
        detail = f"{expected.name} has {_listed(found)}; only its presence is checked."
        return Checked(expected, State.OK, found, detail)
    addresses = [_address(record) for record in found]
    if expected.value not in addresses:
        detail = f"{expected.name} points to {_listed(found)}, not {expected.value}."
        return Checked(expected, State.WRONG, found, detail)
    strangers = [a for a in addresses if a not in expected.host.addresses]
    if strangers:
        detail = (
            f"{expected.name} also points to {_listed(strangers)}, not an address of this "
            "box: senders that pick it do not reach the box."
        )
        return Checked(expected, State.WRONG, found, detail)
    return Checked(expected, State.OK, found)


async def _check_spf(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when exactly one SPF record authorizes the box (RFC 7208 4.5)."""
    found = await lookups.txt(expected.name)
    spf = [record for record in found if _SPF_VERSION.match(record)]
    if not spf:
        return Checked(expected, State.MISSING, found)
    if len(spf) > 1:
        detail = (
            f"{len(spf)} SPF records: receivers then reject the check (RFC 7208 4.5 "
            "permerror). Merge them into one."
        )
        return Checked(expected, State.WRONG, found, detail)
    authorized, allows_all, follows = _spf_verdict(
        spf[0], _spf_authorizing(expected), expected.host.addresses
    )
    if allows_all:
        detail = '"+all" lets every server on the internet send as this name.'
        return Checked(expected, State.WRONG, found, detail)
    if not authorized:
        ways = _listed(_spf_ways(expected), "or")
        detail = f'It does not authorize this box: add {ways}, before any "all".'
        if follows:
            detail += " Its include: or redirect= is not followed by this check."
        return Checked(expected, State.WRONG, found, detail)
    return Checked(expected, State.OK, found)


def _spf_authorizing(expected: Expected) -> set[str]:
    """The mechanisms that authorize the box, lower case, in the record at expected.name."""
    name, box = expected.name, expected.host.name
    ours = {term for term in expected.value.lower().split()[1:] if term != "-all"}
    ways = {f"a:{box}"} | ours
    if "mx" in ours:
        ways.add(f"mx:{name}")
    if "a" in ours:
        ways.add(f"a:{name}")
    return ways


def _spf_ways(expected: Expected) -> list[str]:
    ways = expected.value.split()[1:-1] + [f"a:{expected.host.name}"]
    return ways + [f"ip{ipaddress.ip_address(a).version}:{a}" for a in expected.host.addresses]


def _spf_verdict(
    record: str, authorizing: set[str], addresses: Sequence[str]
) -> tuple[bool, bool, bool]:
    """(authorizes the box, ends in +all, has include:/redirect=) for one SPF record.

    Mechanisms count left to right up to "all", and only with the pass
    qualifier (RFC 7208 4.6.2). include: and redirect= are not followed:
    what they authorize is someone else's to change.
    """
    follows = False
    for term in record.split()[1:]:
        qualifier = term[0] if term[0] in _SPF_QUALIFIERS else "+"
        mechanism = term.lstrip(_SPF_QUALIFIERS).lower()
        follows = follows or mechanism.startswith(("include:", "redirect="))
        if mechanism == "all":
            return qualifier == "+", qualifier == "+", follows
        if qualifier == "+" and _spf_names_box(mechanism, authorizing, addresses):
            return True, False, follows
    return False, False, follows


def _spf_names_box(mechanism: str, authorizing: set[str], addresses: Sequence[str]) -> bool:
    kind, _, value = mechanism.partition(":")
    if kind in ("ip4", "ip6"):
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return False
        return any(ipaddress.ip_address(address) in network for address in addresses)
    # a and mx may carry a CIDR length (RFC 7208 5.3, 5.4), which still
    # covers the box's own address.
    return mechanism.partition("/")[0].rstrip(".") in authorizing


async def _check_dkim(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when the one record at the selector's name holds the box's key (RFC 6376 3.6.1)."""
    found = await lookups.txt(expected.name)
    if not found:
        return Checked(expected, State.MISSING)
    if len(found) > 1:
        detail = f"{len(found)} records at this name: verifiers read only one (RFC 6376 3.6.2.2)."
        return Checked(expected, State.WRONG, found, detail)
    wanted, published = _tags(expected.value), _tags(found[0])
    key = re.sub(r"\s", "", published.get("p", ""))
    if "p" in published and not key:
        return Checked(expected, State.WRONG, found, "The key is revoked (p= is empty).")
    if key != wanted["p"]:
        detail = (
            f"The key published (p={_abridged(key)}) is not the box's (p={_abridged(wanted['p'])})."
        )
        return Checked(expected, State.WRONG, found, detail)
    # RFC 6376 3.6.1: k= defaults to rsa; an ed25519 key under k=rsa fails to verify.
    if published.get("k", "rsa").lower() != wanted["k"]:
        detail = f"k={published.get('k', 'rsa (by default)')}, but the key is {wanted['k']}."
        return Checked(expected, State.WRONG, found, detail)
    return Checked(expected, State.OK, found)


async def _check_dmarc(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when exactly one DMARC record has a valid p= (RFC 7489 6.6.3); any policy will do."""
    found = await lookups.txt(expected.name)
    dmarc = [record for record in found if _DMARC_VERSION.match(record)]
    if not dmarc:
        return Checked(expected, State.MISSING, found)
    if len(dmarc) > 1:
        detail = f"{len(dmarc)} DMARC records: receivers then use none (RFC 7489 6.6.3)."
        return Checked(expected, State.WRONG, found, detail)
    policy = _tags(dmarc[0]).get("p", "").lower()
    if policy not in _DMARC_POLICIES:
        what = f"p={policy} is not none, quarantine or reject" if policy else "It has no p= tag"
        detail = f"{what}: receivers apply no policy (RFC 7489 6.6.3)."
        return Checked(expected, State.WRONG, found, detail)
    if policy != _tags(expected.value)["p"]:
        detail = f"p={policy} rather than p={DMARC_POLICY}: your choice, and a valid one."
        return Checked(expected, State.OK, found, detail)
    return Checked(expected, State.OK, found)


async def _check_mta_sts(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when exactly one STS record carries the id of the policy served now (RFC 8461 3.1)."""
    found = await lookups.txt(expected.name)
    sts = [record for record in found if _STS_VERSION.match(record)]
    if not sts:
        return Checked(expected, State.MISSING, found)
    if len(sts) > 1:
        detail = f"{len(sts)} MTA-STS records: senders then assume no policy (RFC 8461 3.1)."
        return Checked(expected, State.WRONG, found, detail)
    published, wanted = _tags(sts[0]).get("id", ""), _tags(expected.value)["id"]
    if published != wanted:
        detail = (
            f"id={published or '(none)'}, but the policy served now has id={wanted}: "
            "senders fetch a changed policy only when the id changes."
        )
        return Checked(expected, State.WRONG, found, detail)
    return Checked(expected, State.OK, found)


async def _check_tls_rpt(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when exactly one TLS-RPT record has a rua= (RFC 8460 3); any address will do."""
    found = await lookups.txt(expected.name)
    tlsrpt = [record for record in found if _TLSRPT_VERSION.match(record)]
    if not tlsrpt:
        return Checked(expected, State.MISSING, found)
    if len(tlsrpt) > 1:
        detail = f"{len(tlsrpt)} TLS-RPT records: senders then report nothing (RFC 8460 3)."
        return Checked(expected, State.WRONG, found, detail)
    rua = _tags(tlsrpt[0]).get("rua", "")
    if not rua:
        return Checked(expected, State.WRONG, found, "It has no rua=: reports have nowhere to go.")
    if rua != _tags(expected.value)["rua"]:
        return Checked(expected, State.OK, found, f"Reports go to {rua}.")
    return Checked(expected, State.OK, found)


async def _check_alias(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when the name leads to the box: a CNAME to its host name, or to its addresses.

    Clients and senders only need the name to reach the box, so address
    records of the box, or a CNAME to another name of it, are right too
    (noted: they need changing by hand when the box's address changes).
    "The box's addresses" are those the owner gave and those its host name has.
    """
    cname = await lookups.records(expected.name, "CNAME")
    box = expected.host.name
    target = _name(cname[0]) if cname else ""
    if target == box:
        return Checked(expected, State.OK, cname)
    reached, own = await asyncio.gather(lookups.addresses(expected.name), lookups.addresses(box))
    own = own | set(expected.host.addresses)
    found = cname or tuple(sorted(reached))
    if not found:
        return Checked(expected, State.MISSING)
    via = f"a CNAME to {target}" if target else "address records"
    if reached and reached <= own:
        detail = f"It reaches the box through {via} rather than a CNAME to {box}."
        return Checked(expected, State.OK, found, detail)
    if not reached:
        return Checked(expected, State.WRONG, found, f"It is {via} that has no address.")
    if not own:
        detail = f"{box} has no address to compare its addresses with."
        return Checked(expected, State.WRONG, found, detail)
    strangers = sorted(reached - own)
    detail = f"It points to {target or _listed(strangers)}, not {box}."
    return Checked(expected, State.WRONG, found, detail)


async def _check_srv(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when one record names the box and the port (RFC 2782); others are noted."""
    found = await lookups.records(expected.name, "SRV")
    if not found:
        return Checked(expected, State.MISSING)
    wanted = _srv_record(expected.value)[2:]
    targets = [_srv_record(record)[2:] for record in found]
    if wanted in targets:
        others = [f"{host} port {port}" for port, host in targets if (port, host) != wanted]
        detail = f"Also names {_listed(others)}." if others else ""
        return Checked(expected, State.OK, found, detail)
    if targets == [(0, "")]:
        detail = 'Its target "." says the service is not offered (RFC 2782).'
        return Checked(expected, State.WRONG, found, detail)
    named = _listed([f"{host} port {port}" for port, host in targets])
    detail = f"It names {named}, not {wanted[1]} port {wanted[0]}."
    return Checked(expected, State.WRONG, found, detail)


async def _check_ptr(expected: Expected, lookups: _Lookups) -> Checked:
    """Right when the address's name is the box's host name (one PTR is usual; more are noted)."""
    found = await lookups.records(expected.name, "PTR")
    if not found:
        return Checked(expected, State.MISSING)
    names = [_name(record) for record in found]
    box = expected.host.name
    if box not in names:
        detail = (
            f"The address is named {_listed(names)}, not {box}. Ask your provider to change it."
        )
        return Checked(expected, State.WRONG, found, detail)
    others = [name for name in names if name != box]
    detail = f"It also has the names {_listed(others)}." if others else ""
    return Checked(expected, State.OK, found, detail)


_CHECKS: dict[str, Callable[[Expected, _Lookups], Awaitable[Checked]]] = {
    MX: _check_mx,
    ADDRESS: _check_address,
    SPF: _check_spf,
    DKIM: _check_dkim,
    DMARC: _check_dmarc,
    MTA_STS: _check_mta_sts,
    TLS_RPT: _check_tls_rpt,
    ALIAS: _check_alias,
    SRV: _check_srv,
    PTR: _check_ptr,
}


# -- reading records -------------------------------------------------------------


def _name(text: str) -> str:
    """A domain name from record data: lower case, no final dot ("" for the root)."""
    return text.strip().rstrip(".").lower()


def _mx_record(text: str) -> tuple[int, str]:
    preference, _, exchange = text.partition(" ")
    return int(preference), _name(exchange)


def _srv_record(text: str) -> tuple[int, int, int, str]:
    priority, weight, port, target = text.split()
    return int(priority), int(weight), int(port), _name(target)


def _address(text: str) -> str:
    return str(ipaddress.ip_address(text))


def _tags(text: str) -> dict[str, str]:
    """A tag=value list (RFC 6376 3.2, which DMARC, MTA-STS and TLS-RPT share): first one wins."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        name, equals, value = part.partition("=")
        if equals:
            tags.setdefault(name.strip().lower(), value.strip())
    return tags


def _abridged(key: str) -> str:
    """A public key short enough to compare by eye: its start and its end."""
    return key if len(key) <= 24 else f"{key[:10]}…{key[-10:]}"


def _listed(items: Sequence[str], conjunction: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {conjunction} {items[-1]}"
