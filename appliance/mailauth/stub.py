"""The blocking DNS stub that SPF, DKIM and DMARC share, with one answer cache.

The checks run in executor threads with dnspython's blocking resolver. Every
message from a sender asks the same few names (its SPF, DMARC and DKIM key
records), so answers are kept for their TTL in one cache shared by every
check: after the first message of a sender its checks cost no round trip.
"""

from __future__ import annotations

import functools

import dns.nameserver
import dns.resolver

from appliance.config import ResolverSettings, parse_nameserver

# Answers kept, each for its own TTL (negative ones too); the least recently
# used go first. A few thousand senders' records fit in a few MB.
CACHE_SIZE = 10_000
_MAX_CACHES = 4  # resolver sets remembered (reloads); the oldest is dropped
# DNS Flag Day 2020's EDNS buffer size: a UDP answer that no path fragments.
EDNS_PAYLOAD = 1232

# One cache per set of nameservers: answers from one resolver are not
# handed out as another's (a reload that changes [resolver] starts afresh).
_CACHES: dict[tuple[str, ...], dns.resolver.LRUCache] = {}


def stub_resolver(settings: ResolverSettings) -> dns.resolver.Resolver:
    """A stub resolver asking the nameservers of settings (or of /etc/resolv.conf).

    With nameservers configured, one stub per settings is kept and shared by
    the checks' threads (dnspython's resolve() is safe to call from several);
    the system's is made per check, so a change of network is seen by the
    next one. The answer cache outlives both (LRUCache is thread-safe).
    """
    if settings.nameservers:
        return _configured_stub(settings)
    try:
        stub = dns.resolver.Resolver(configure=True)
    except dns.resolver.NoResolverConfiguration:
        stub = dns.resolver.Resolver(configure=False)  # every lookup: temperror
    return _tuned(stub, settings)


@functools.lru_cache(maxsize=_MAX_CACHES)
def _configured_stub(settings: ResolverSettings) -> dns.resolver.Resolver:
    stub = dns.resolver.Resolver(configure=False)
    stub.nameservers = [
        dns.nameserver.Do53Nameserver(address, port)
        for address, port in map(parse_nameserver, settings.nameservers)
    ]
    return _tuned(stub, settings)


def _tuned(stub: dns.resolver.Resolver, settings: ResolverSettings) -> dns.resolver.Resolver:
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
