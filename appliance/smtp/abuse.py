"""Abuse protection on port 25: what is remembered per client address, and
what DNS says about a client.

`ClientLedger` counts, per address (an IPv6 client per /64, which one
subscriber usually holds whole), the MAIL commands of the current minute and
the unknown recipients asked for: a dictionary attack is slowed, then
refused with 421 and its address turned away for a cooldown. Its memory is
bounded: past max_tracked_clients the longest untouched addresses are
forgotten, as appliance/login.py's LoginGuard does.

`ClientLookups` asks DNS about a client through the configured resolver:
whether a DNS blocklist (RFC 5782) lists it, and its host name when the
name's own addresses include it (forward-confirmed reverse DNS). Every lookup
is bounded in time, and a failed one never refuses mail.

`helo_check` says what is wrong with a HELO name; RFC 5321 4.1.4 forbids
refusing mail for it, so it is only recorded.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.config import ResolverSettings, SmtpSettings

if TYPE_CHECKING:  # dnspython weighs some 9 MB: loaded with the first lookup
    from appliance.delivery.dns import Resolver

log = logging.getLogger(__name__)

# Messages are counted per minute, in fixed windows, as Postfix's anvil
# counts smtpd_client_message_rate_limit per anvil_rate_time_unit (60 s).
MESSAGE_WINDOW = 60.0
# An IPv6 subscriber gets a /64 at least (RFC 6177): hopping addresses in it
# is free, so the prefix counts as one client.
IPV6_CLIENT_PREFIX = 64
# PTR names whose addresses are checked; RFC 7208 4.6.4 sets the same bound
# for SPF's ptr mechanism, against a client that publishes hundreds.
MAX_PTR_NAMES = 10
# RFC 5782 2.1: a listing is an A record in 127.0.0.0/8. Spamhaus and others
# answer 127.255.255.0/24 for errors (a query through a public resolver,
# over quota): those say nothing about the client.
_LISTED = ipaddress.ip_network("127.0.0.0/8")
_LIST_ERROR = ipaddress.ip_network("127.255.255.0/24")
# A blocklist's TXT explanation goes into one log line: this much of it.
MAX_LISTING_TEXT = 200

# RFC 1035 2.3.1 labels (with RFC 1123 2.1's leading digits), at least two,
# the last not all digits: "a.example" yes, "localhost" and "192.0.2.1" no.
_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
_FQDN = re.compile(rf"(?:{_LABEL}\.)+(?![0-9]+\.?$){_LABEL}\.?")


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def plain_address(client: str) -> Address:
    """The client's address, an IPv4-mapped IPv6 one as the IPv4 it is; ValueError if none."""
    address = ipaddress.ip_address(client)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def client_key(client: str) -> str:
    """What the per-address limits count under: the address, an IPv6 one's /64."""
    try:
        address = plain_address(client)
    except ValueError:
        return client
    if address.version == 6:
        network = ipaddress.ip_network(f"{address}/{IPV6_CLIENT_PREFIX}", strict=False)
        return str(network)
    return str(address)


def is_exempt(client: str, settings: SmtpSettings) -> bool:
    """Loopback clients (local tools) skip the abuse checks unless the settings say
    otherwise; so does a client without an IP address, which no check could name."""
    try:
        address = plain_address(client)
    except ValueError:
        return True
    return settings.abuse_exempt_loopback and address.is_loopback


def dnsbl_zones(value: str | Iterable[str]) -> tuple[str, ...]:
    """The [smtp] dnsbl setting as zones: a lone string is one zone, not its letters."""
    zones = (value,) if isinstance(value, str) else tuple(value)
    return tuple(zone.strip().strip(".") for zone in zones if zone.strip().strip("."))


def helo_check(helo: str, client: str, hostname: str) -> str:
    """What is wrong with the HELO/EHLO name, for the log: "ok", "not-fqdn",
    "literal-mismatch" (an address literal that is not the client's) or
    "our-name" (the client calls itself by this server's name)."""
    if helo.startswith("[") and helo.endswith("]"):
        inner = helo[1:-1]
        if inner[:5].upper() == "IPV6:":
            inner = inner[5:]
        try:
            claimed = plain_address(inner)
        except ValueError:
            return "not-fqdn"  # brackets around something that is no address
        return "ok" if _same_address(client, claimed) else "literal-mismatch"
    name = helo.rstrip(".").lower()
    if name == hostname.rstrip(".").lower():
        return "our-name"
    return "ok" if _FQDN.fullmatch(helo) else "not-fqdn"


# -- per-address bookkeeping ---------------------------------------------------------------


@dataclass(slots=True)
class _Client:
    """What one address did lately."""

    minute_started: float = float("-inf")
    messages: int = 0  # MAIL commands since minute_started
    unknown_started: float = float("-inf")  # the first unknown recipient of the window
    unknown: int = 0
    cooldown_until: float = float("-inf")


@dataclass(frozen=True, slots=True)
class UnknownRecipient:
    """What becomes of one more unknown recipient from an address."""

    count: int  # unknown recipients from the address in the window, this one included
    delay: float  # seconds to wait before the 550
    refused: bool  # past the limit: 421, and the address is turned away for a cooldown


class ClientLedger:
    """The per-address limits of port 25; one per service, kept across reloads."""

    def __init__(
        self,
        settings: SmtpSettings,
        previous: ClientLedger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self._clock = clock
        # Least recently touched first (dicts keep insertion order).
        self._clients: dict[str, _Client] = previous._clients if previous else {}

    @property
    def tracked_clients(self) -> int:
        return len(self._clients)

    def cooldown_left(self, client: str) -> float:
        """Seconds the address is still turned away for; 0 when it is welcome."""
        record = self._clients.get(client_key(client))
        if record is None:
            return 0.0
        return max(0.0, record.cooldown_until - self._clock())

    def count_message(self, client: str) -> bool:
        """Count a MAIL command; False when it is one too many this minute."""
        limit = self.settings.max_messages_per_minute
        if limit <= 0:
            return True
        now = self._clock()
        record = self._touch(client)
        if now - record.minute_started >= MESSAGE_WINDOW:
            record.minute_started, record.messages = now, 0
        record.messages += 1
        return record.messages <= limit

    def count_unknown_recipient(self, client: str) -> UnknownRecipient:
        """Count a recipient refused as unknown (550 5.1.1) and say what follows.

        Within unknown_recipient_window of the first: up to
        unknown_recipient_delay_after of them go unhindered, each further one
        waits unknown_recipient_delay longer than the one before (up to
        max_unknown_recipient_delay), and the one past max_unknown_recipients
        is refused and starts the cooldown.
        """
        settings = self.settings
        now = self._clock()
        record = self._touch(client)
        if now - record.unknown_started >= settings.unknown_recipient_window:
            record.unknown_started, record.unknown = now, 0
        record.unknown += 1
        if record.unknown > settings.max_unknown_recipients:
            record.cooldown_until = now + settings.unknown_recipient_cooldown
            record.unknown_started, record.unknown = float("-inf"), 0  # a new start after it
            return UnknownRecipient(settings.max_unknown_recipients + 1, 0.0, True)
        over = record.unknown - settings.unknown_recipient_delay_after
        delay = 0.0
        if over > 0:
            delay = min(
                settings.unknown_recipient_delay * over, settings.max_unknown_recipient_delay
            )
        return UnknownRecipient(record.unknown, delay, False)

    def _touch(self, client: str) -> _Client:
        key = client_key(client)
        record = self._clients.pop(key, None) or _Client()
        self._clients[key] = record  # now the most recently touched
        while len(self._clients) > self.settings.max_tracked_clients:
            del self._clients[next(iter(self._clients))]
        return record


# -- DNS lookups about a client ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listing:
    """A DNS blocklist's entry for a client (RFC 5782 2.1)."""

    zone: str
    answer: str  # the A records, e.g. "127.0.0.2"
    text: str  # the TXT record: the list's reason, often a URL


class ClientLookups:
    """DNSBL and FCrDNS lookups through the configured resolver, each bounded by timeout.

    The resolver (dnspython) is built by the first lookup, so that a box
    whose clients are all exempt never loads it.
    """

    def __init__(self, resolver: ResolverSettings, timeout: float):
        self._resolver_settings = resolver
        self.timeout = timeout
        self._resolver: Resolver | None = None

    def _dns(self) -> Resolver:
        if self._resolver is None:
            from appliance.delivery.dns import Resolver

            self._resolver = Resolver(self._resolver_settings)
        return self._resolver

    async def verified_name(self, client: str) -> str | None:
        """The client's host name when one of its PTR names has the client's
        address among its A/AAAA records (forward-confirmed reverse DNS);
        None when none does, or the lookups fail or take too long."""
        from appliance.delivery.dns import DnsError

        try:
            address = plain_address(client)
            async with asyncio.timeout(self.timeout):
                names = await self._dns().records(address.reverse_pointer, "PTR")
                candidates = [n.rstrip(".").lower() for n in names[:MAX_PTR_NAMES]]
                found = await asyncio.gather(
                    *(self._dns().addresses(name) for name in candidates), return_exceptions=True
                )
        except (ValueError, DnsError, TimeoutError) as error:
            log.info("smtp fcrdns failed client=%s error=%s", client, str(error) or "timeout")
            return None
        for name, addresses in zip(candidates, found, strict=True):
            if isinstance(addresses, BaseException):
                if not isinstance(addresses, DnsError):
                    raise addresses  # a bug, not a DNS failure
                continue
            if any(_same_address(a, address) for a in addresses):
                return name
        return None

    async def listing(self, client: str, zones: Iterable[str]) -> Listing | None:
        """The first of zones (in their order) that lists the client, or None.

        The zones are asked at once; one that fails or does not answer within
        timeout counts as not listing the client (logged).
        """
        try:
            address = plain_address(client)
        except ValueError:
            return None
        listings = await asyncio.gather(*(self._listed(address, zone) for zone in zones))
        return next((listing for listing in listings if listing is not None), None)

    async def _listed(self, address: Address, zone: str) -> Listing | None:
        from appliance.delivery.dns import DnsError

        # RFC 5782 2.1 and 2.4: the address's reverse labels (octets for IPv4,
        # nibbles for IPv6) under the zone.
        reversed_labels = address.reverse_pointer.rsplit(".", 2)[0]
        name = f"{reversed_labels}.{zone}"
        try:
            async with asyncio.timeout(self.timeout):
                answers = await self._dns().records(name, "A")
                listed = [a for a in answers if _listing_answer(a)]
                if not listed:
                    if answers:
                        log.info(
                            "smtp dnsbl not-a-listing zone=%s answer=%s", zone, ",".join(answers)
                        )
                    return None
                text = await self._reason(name)
        except (DnsError, TimeoutError) as error:
            log.info(
                "smtp dnsbl failed zone=%s client=%s error=%s",
                zone,
                address,
                str(error) or "timeout",
            )
            return None
        return Listing(zone, ",".join(listed), text)

    async def _reason(self, name: str) -> str:
        """The listing's TXT record (RFC 5782 2.1), or "" when it has none."""
        from appliance.delivery.dns import DnsError

        try:
            records = await self._dns().txt(name)
        except DnsError:
            return ""
        text = " ".join(r.decode("utf-8", "replace") for r in records)
        return text[:MAX_LISTING_TEXT]


def _listing_answer(answer: str) -> bool:
    try:
        address = ipaddress.ip_address(answer)
    except ValueError:
        return False
    return address in _LISTED and address not in _LIST_ERROR


def _same_address(text: str, address: Address) -> bool:
    try:
        return plain_address(text) == address
    except ValueError:
        return False
