"""SPF (RFC 7208): may this client IP send mail for the MAIL FROM domain, or for its HELO name?

`check_spf(ip, sender, helo, resolver)` checks the MAIL FROM identity; for a
null reverse-path (bounces) it checks postmaster@<HELO name> instead
(RFC 7208 2.4). `check_helo(ip, helo, resolver)` checks the HELO identity on
its own (RFC 7208 2.3), which a receiver may do before MAIL FROM. Both return
an `SpfResult` whose `result` is one of RESULTS (RFC 7208 2.6).

Evaluation is pyspf's: macros, mechanisms, the limit of 10 DNS-querying terms
and of 2 void lookups (RFC 7208 4.6.4, pyspf's MAX_LOOKUP and
MAX_VOID_LOOKUPS, checked at import below). This module adds the DNS: every
query goes to the nameservers of [resolver] in appliance.toml (or
/etc/resolv.conf when that lists none), through a dnspython stub resolver,
never through pyspf's own use of the system resolver. pyspf calls a module
function, `spf.DNSLookup`, for every query and offers no way to pass a resolver
per check; so at import that function is replaced, once, by one that asks the
resolver of the check running in the current thread (a context variable set
for the duration of one check). Checks with different settings may run at the
same time in different threads; code that calls pyspf outside a check still
gets pyspf's own lookup.

A check is synchronous and may wait on DNS for up to `timeout` seconds (the
whole check, RFC 7208 4.6.4 asks for at least 20): callers on the event loop
run it in an executor thread, e.g.
`await loop.run_in_executor(None, check_spf, ip, sender, helo, settings)`.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import spf

from appliance.config import ResolverSettings
from appliance.mailauth.stub import stub_resolver

log = logging.getLogger(__name__)

# RFC 7208 2.6: the results a check can have.
RESULTS = ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
# RFC 7208 4.6.4: at least 20 seconds for the whole check before a temperror.
SPF_TIMEOUT = 20.0
# pyspf's name for a result it reports under an older name (RFC 4408).
_OLD_NAMES = {"error": "temperror", "unknown": "permerror"}

# RFC 7208 4.6.4: at most 10 terms that cause DNS queries, at most 2 lookups
# that return nothing. pyspf enforces these values; a pyspf that changed them
# would change what we promise, so say so at import rather than silently.
if spf.MAX_LOOKUP != 10 or spf.MAX_VOID_LOOKUPS != 2:
    raise ImportError(
        f"pyspf limits are {spf.MAX_LOOKUP} lookups and {spf.MAX_VOID_LOOKUPS} void lookups;"
        " RFC 7208 4.6.4 asks for 10 and 2"
    )


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one SPF check."""

    result: str  # one of RESULTS
    domain: str  # the domain whose policy was checked: MAIL FROM's, or the HELO name
    identity: str  # "mailfrom" or "helo" (RFC 7208 2.3, 2.4), as Received-SPF names it
    # For "fail": the text of the domain's exp= modifier (RFC 7208 6.2), or ""
    # when it gave none and the caller's own words go in the 550 reply.
    explanation: str
    # For people and logs: what was decided and why, e.g. "domain of
    # example.org designates 192.0.2.1 as permitted sender".
    comment: str
    mechanism: str = ""  # the term that matched ("ip4:192.0.2.0/24"), if one did


def check_spf(
    ip: str,
    sender: str,
    helo: str,
    resolver: ResolverSettings,
    timeout: float = SPF_TIMEOUT,
) -> SpfResult:
    """Check the MAIL FROM identity; a null sender ("") checks the HELO name (RFC 7208 2.4).

    sender is the reverse-path without angle brackets; a sender without a
    local part ("@example.org", "example.org") is postmaster at that domain
    (RFC 7208 4.3). Blocking: run it in an executor thread.
    """
    return _check(ip, sender, helo, resolver, timeout)


def check_helo(
    ip: str, helo: str, resolver: ResolverSettings, timeout: float = SPF_TIMEOUT
) -> SpfResult:
    """Check the HELO identity (RFC 7208 2.3): postmaster@helo. A name that is not a
    fully qualified domain (an address literal, one label) gives "none"."""
    return _check(ip, "", helo, resolver, timeout)


def _check(ip: str, sender: str, helo: str, settings: ResolverSettings, timeout: float):
    if not timeout > 0:  # pyspf reads a time limit of 0 as none at all
        raise ValueError(f"spf: the time limit must be positive, got {timeout!r}")
    lookup = _Lookup(stub_resolver(settings))
    try:
        query = _Query(i=ip, s=sender, h=helo, strict=True, querytime=timeout)
    except spf.PermError as error:  # the client address is not an IP address
        raise ValueError(f"spf: not an IP address: {ip!r}") from error
    # Only the domain's exp= text counts as an explanation: a marker that is
    # not a string tells pyspf's default apart from any text a domain can publish.
    no_explanation = object()
    query.set_default_explanation(no_explanation)
    if not _multi_label(query.o):
        return _none_without_lookup(query)
    token = _current_lookup.set(lookup)
    try:
        result, _code, explanation = query.check()
    finally:
        _current_lookup.reset(token)
    result = _OLD_NAMES.get(result, result)
    if result not in RESULTS:  # "ambiguous" comes only with strict=2, never asked for
        result = "permerror"
    outcome = SpfResult(
        result=result,
        domain=query.o,
        identity=query.ident,
        explanation=explanation if result == "fail" and isinstance(explanation, str) else "",
        comment=query.get_header_comment(result),
        mechanism=(query.mechanism or "") if result not in ("temperror", "permerror") else "",
    )
    # Debug only: the result goes into the message's Authentication-Results.
    log.debug(
        "spf result=%s identity=%s domain=%s ip=%s mechanism=%s",
        outcome.result,
        outcome.identity,
        outcome.domain,
        ip,
        outcome.mechanism or "-",
    )
    return outcome


class _Query(spf.query):
    """pyspf's evaluation, with the DNS errors of "ptr" handled as RFC 7208 5.5 says."""

    def validated_ptrs(self) -> list[str]:
        """The validated names of the client (RFC 7208 5.5), for "ptr" and %{p}.

        At most 10 PTR names are looked at (RFC 7208 4.6.4). A DNS error on the
        PTR lookup means no names (the mechanism does not match, %{p} is
        "unknown", RFC 7208 7.3); a DNS error on one name's address lookup
        skips that name. pyspf would make both a temperror.
        """
        try:
            names = self.dns_ptr(self.i)[: spf.MAX_PTR]
        except spf.TempError:
            return []
        return [name for name in names if self._points_back(name)]

    def _points_back(self, name: str) -> bool:
        try:
            return self.cidrmatch(self.dns_a(name, self.A), self.cidrmax)
        except spf.TempError:
            return False


def _multi_label(domain: str) -> bool:
    """RFC 7208 4.3: a name that is not a multi-label domain (one label, an address
    literal such as "[192.0.2.1]") has no policy: "none", and nothing to ask the DNS."""
    labels = domain.removesuffix(".").split(".")
    return len(labels) > 1 and not domain.startswith("[")


def _none_without_lookup(query: spf.query) -> SpfResult:
    log.info("spf result=none identity=%s domain=%s reason=not-a-domain", query.ident, query.o)
    return SpfResult(
        result="none",
        domain=query.o,
        identity=query.ident,
        explanation="",
        comment=f"{query.o} is not a domain name with an SPF policy",
    )


# -- DNS through the configured nameservers ------------------------------------


class _Lookup:
    """pyspf's DNSLookup contract, answered by one stub resolver.

    A call gets (name, qtype, strict, timeout) and returns [((owner, type),
    data), ...] for every record of the answer, CNAMEs included (pyspf follows
    and counts chains itself, RFC 7208 4.6.4); no records for a name that does
    not exist or has none of the type; spf.TempError when the DNS could not
    answer (RFC 7208 5: a DNS error is a temperror).
    """

    def __init__(self, resolver: dns.resolver.Resolver):
        self.resolver = resolver

    def __call__(self, name: str, qtype: str, strict=True, timeout: float = SPF_TIMEOUT):
        try:
            qname = dns.name.from_text(name)
        except (dns.exception.DNSException, UnicodeError):
            return []  # not a domain name: nothing can be published there
        try:
            answer = self.resolver.resolve(
                qname,
                qtype,
                search=False,
                raise_on_no_answer=False,
                lifetime=timeout,
            )
        except dns.resolver.NXDOMAIN:
            return []
        except dns.resolver.NoNameservers as error:  # SERVFAIL, REFUSED from all of them
            raise spf.TempError(f"DNS {qtype} {name}: {error}") from None
        except dns.exception.Timeout:
            raise spf.TempError(f"DNS {qtype} {name}: timed out after {timeout:.1f}s") from None
        except dns.exception.DNSException as error:
            raise spf.TempError(f"DNS {qtype} {name}: {error!r}") from None
        records = []
        for rrset in answer.response.answer:
            # The asked name keeps pyspf's spelling: pyspf files answers under it.
            owner = name if rrset.name == qname else _text(rrset.name)
            kind = dns.rdatatype.to_text(rrset.rdtype)
            records.extend(((owner, kind), _data(rdata)) for rdata in rrset if _known(kind))
        return records


def _known(kind: str) -> bool:
    return kind in ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME")


def _data(rdata):
    """A record's data as pyspf expects it from a lookup."""
    kind = rdata.rdtype
    if kind in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return rdata.address
    if kind == dns.rdatatype.MX:
        return (rdata.preference, _text(rdata.exchange))
    if kind in (dns.rdatatype.PTR, dns.rdatatype.CNAME):
        return _text(rdata.target)
    return tuple(rdata.strings)  # TXT, SPF: pyspf joins the strings (RFC 7208 3.3)


def _text(name: dns.name.Name) -> str:
    if name == dns.name.root:  # "MX 0 ." names no host: pyspf's empty name (RFC 7505)
        return ""
    return name.to_text(omit_final_dot=True)


_current_lookup: contextvars.ContextVar[_Lookup | None] = contextvars.ContextVar(
    "spf_lookup", default=None
)
_pyspf_lookup = spf.DNSLookup


def _lookup_for_current_check(name, qtype, strict=True, timeout=SPF_TIMEOUT):
    """What spf.DNSLookup becomes: the lookup of this thread's check, else pyspf's own."""
    lookup = _current_lookup.get()
    if lookup is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    return lookup(name, qtype, strict, min(timeout, lookup.resolver.lifetime))


spf.DNSLookup = _lookup_for_current_check
