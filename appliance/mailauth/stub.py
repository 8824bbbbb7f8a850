"""The blocking DNS stub that SPF, DKIM and DMARC share, with one answer cache.

The checks run in executor threads with dnspython's blocking resolver. Every
message from a sender asks the same few names (its SPF, DMARC and DKIM key
records), so answers are kept for their TTL in one cache shared by every
check: after the first message of a sender its checks cost no round trip.
"""

from __future__ import annotations

import dns.nameserver
import dns.resolver

from appliance.config import ResolverSettings, parse_nameserver

# Answers kept, each for its own TTL (negative ones too); the least recently
# used go first. A few thousand senders' records fit in a few MB.
CACHE_SIZE = 10_000
_MAX_CACHES = 4  # resolver sets remembered (reloads); the oldest is dropped
# RFC 9715's advice for a UDP payload that is not fragmented on any path.
EDNS_PAYLOAD = 1232

# One cache per set of nameservers: answers from one resolver are not
# handed out as another's (a reload that changes [resolver] starts afresh).
_CACHES: dict[tuple[str, ...], dns.resolver.LRUCache] = {}


def stub_resolver(settings: ResolverSettings) -> dns.resolver.Resolver:
    """A stub resolver asking the nameservers of settings (or of /etc/resolv.conf).

    Cheap to make, so it is made per check: a change of network is seen by
    the next one. The cache outlives it (LRUCache is thread-safe).
    """
    if settings.nameservers:
        stub = dns.resolver.Resolver(configure=False)
        stub.nameservers = [
            dns.nameserver.Do53Nameserver(address, port)
            for address, port in map(parse_nameserver, settings.nameservers)
        ]
    else:
        try:
            stub = dns.resolver.Resolver(configure=True)
        except dns.resolver.NoResolverConfiguration:
            stub = dns.resolver.Resolver(configure=False)  # every lookup: temperror
    stub.timeout = settings.query_timeout  # one try at one nameserver
    stub.lifetime = settings.lookup_timeout
    stub.use_edns(0, 0, EDNS_PAYLOAD)
    stub.cache = _cache_for(settings.nameservers)
    return stub


def _cache_for(nameservers: tuple[str, ...]) -> dns.resolver.LRUCache:
    cache = _CACHES.get(nameservers)
    if cache is None:
        if len(_CACHES) >= _MAX_CACHES:
            _CACHES.pop(next(iter(_CACHES)))
        cache = _CACHES.setdefault(nameservers, dns.resolver.LRUCache(CACHE_SIZE))
    return cache
