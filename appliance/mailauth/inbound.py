"""What the inbound SMTP session asks of mailauth: one verdict per message.

SPF is checked when MAIL FROM arrives (it needs only the client's address,
the HELO name and the sender), while the client sends its recipients and
data; DKIM, ARC and DMARC when the message is complete, before the reply to
the end of data, so that a DMARC reject is a 550 and never a bounce
afterwards (RFC 7489 6.7 prefers rejection during the SMTP transaction).
Then, when [filter] names one, the spam filter (rspamd) is asked, and the
stricter of the two answers wins.

The DNS checks do blocking DNS through the configured resolver and run in
an executor thread. Nothing here loses mail over DNS trouble or a filter
that is down: a temperror is recorded in Authentication-Results, an
unchecked message is marked so, and the message is delivered.

A DMARC failure is forgiven when the message carries an intact ARC chain
(RFC 8617) last sealed by a domain the owner trusts ([smtp]
arc_trusted_sealers): a mailing list that changed the message vouches for
what it received (RFC 7489 7.2.1 trusted_forwarder).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from appliance.config import ResolverSettings
from appliance.mailauth import rspamd
from appliance.mailauth.arc import ArcResult, verify_arc
from appliance.mailauth.dmarc import (
    FAIL,
    NONE,
    PASS,
    TRUSTED_FORWARDER,
    AggregateRecords,
    AuthorError,
    DmarcResult,
    author_domain,
    evaluate_dmarc,
    organizational_domain,
)
from appliance.mailauth.results import authentication_results, our_results_ranges
from appliance.mailauth.rspamd import Envelope, FilterResult, RspamdClient
from appliance.mailauth.spf import SpfResult, check_spf
from appliance.mailauth.verify import TxtLookup, resolver_txt_lookup, verify_dkim

log = logging.getLogger(__name__)

# What becomes of a message, mildest first: the stricter of two answers wins.
DELIVER, JUNK, DEFER, REJECT = "deliver", "junk", "defer", "reject"
# Threads that run the checks. A lookup that misses the cache waits on the
# network without the interpreter, so a few cover many sessions at once.
CHECK_THREADS = 4
_SEVERITY = (DELIVER, JUNK, DEFER, REJECT)

# The spam filter's actions as ours.
_FILTER_ACTIONS = {
    rspamd.REJECT: REJECT,
    rspamd.SOFT_REJECT: DEFER,
    rspamd.GREYLIST: DEFER,
    rspamd.REWRITE_SUBJECT: JUNK,
    rspamd.ADD_HEADER: JUNK,
    rspamd.NO_ACTION: DELIVER,
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of a message, and the fields that tell its reader why."""

    action: str  # DELIVER, JUNK (the Junk mailbox), DEFER (451 4.7.1) or REJECT (550 5.7.1)
    results_field: bytes  # Authentication-Results, to go in front of the message
    dmarc: DmarcResult | None
    reason: str = ""  # why it is refused or deferred
    # Authentication-Results fields in the message that claim our name:
    # forged (RFC 8601 5), to be dropped from what is stored.
    forged: list[tuple[int, int]] = field(default_factory=list)
    arc: ArcResult | None = None
    filter_fields: bytes = b""  # X-Spam-Checked (and X-Spam) when a filter is set
    junk_by_filter: bool = False  # the spam filter, not the author's domain, chose Junk

    @property
    def refused(self) -> bool:
        return self.action == REJECT

    @property
    def deferred(self) -> bool:
        return self.action == DEFER

    @property
    def quarantined(self) -> bool:
        return self.action == JUNK

    @property
    def author_may_be_spared(self) -> bool:
        """Junk by the filter alone, from an author DMARC authenticated: a
        recipient who took this author's mail out of Junk before gets it in
        the INBOX. A DMARC failure is never spared: its From may be forged."""
        return self.junk_by_filter and self.dmarc is not None and self.dmarc.result == PASS

    @property
    def head(self) -> bytes:
        """Every field to put in front of the delivered message."""
        return self.results_field + self.filter_fields

    @property
    def refusal(self) -> tuple[int, str, str] | None:
        """The SMTP reply (code, enhanced status, text) to the end of data
        when the message is not taken; None when it is."""
        if self.action == REJECT:
            return 550, "5.7.1", f"Message rejected: {self.reason}"
        if self.action == DEFER:
            return 451, "4.7.1", f"Try again later: {self.reason}"
        return None


class Checker:
    """The checks of one server: its name (the authserv-id), its resolver,
    the ARC sealers it trusts, where it keeps DMARC aggregate records, and
    the spam filter it asks, if any.

    authenticate False leaves out SPF, DKIM, ARC and DMARC (the [smtp] checks
    setting), for a box that only wants its filter asked.
    """

    def __init__(
        self,
        authserv_id: str,
        resolver: ResolverSettings,
        spf_timeout: float = 20.0,
        *,
        trusted_sealers: Iterable[str] = (),
        records: AggregateRecords | None = None,
        spam_filter: RspamdClient | None = None,
        authenticate: bool = True,
    ):
        self.authserv_id = authserv_id
        self._resolver = resolver
        self._spf_timeout = spf_timeout
        self._txt: TxtLookup = resolver_txt_lookup(resolver)
        self._trusted_sealers = frozenset(trusted_sealers)
        self._records = records
        self._filter = spam_filter
        self._authenticate = authenticate

    def spf_soon(self, client_ip: str, sender: str, helo: str) -> asyncio.Future:
        """spf() on the checks' threads, for the session to await at end of data."""
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(_checks_pool(), self.spf, client_ip, sender, helo)

    def warm_up(self) -> None:
        """Load what the first message would otherwise wait for (the Public
        Suffix List takes most of a second to parse); blocking, run it in a
        thread once the listeners are up."""
        organizational_domain(self.authserv_id)

    def spf(self, client_ip: str, sender: str, helo: str) -> SpfResult | None:
        """The MAIL FROM identity's SPF result (the HELO name's for <>); blocking."""
        if not self._authenticate:
            return None
        try:
            return check_spf(client_ip, sender, helo, self._resolver, self._spf_timeout)
        except ValueError:
            return None  # not an IP we can check (a Unix socket, say): no SPF result

    async def check(
        self,
        message: bytes | bytearray,
        spf: SpfResult | None,
        *,
        client_ip: str,
        helo: str,
        sender: str,
        recipients: Iterable[str],
        client_name: str = "",
    ) -> Verdict:
        """The verdict on a complete message: the DNS checks in the executor,
        then the spam filter (unless the checks already refuse it)."""
        envelope = Envelope(client_ip, helo, sender, tuple(recipients), client_name)
        loop = asyncio.get_running_loop()
        verdict = await loop.run_in_executor(_checks_pool(), self.verdict, message, spf, envelope)
        if self._filter is None or verdict.refused:
            return verdict
        return _filtered(verdict, await self._filter.check(message, envelope))

    def verdict(
        self, message: bytes | memoryview, spf: SpfResult | None, envelope: Envelope | None = None
    ) -> Verdict:
        """DKIM, ARC, DMARC and the Authentication-Results field; blocking.
        envelope gives the client's address (for ARC's smtp.remote-ip and the
        DMARC aggregate records); without it they go without."""
        if not self._authenticate:
            return Verdict(DELIVER, b"", None)
        client_ip = envelope.client_ip if envelope is not None else ""
        dkim_results = verify_dkim(message, self._txt)
        try:
            author = author_domain(message)
        except AuthorError as error:
            # RFC 7489 6.6.1: without exactly one author domain there is no
            # policy to apply, and such mail is how a forger would slip by.
            field_ = authentication_results(self.authserv_id, spf, dkim_results, None)
            return Verdict(REJECT, field_, None, reason=f"{error} (RFC 7489 6.6.1)")
        arc = verify_arc(message, self._txt)
        dmarc = self._arc_override(evaluate_dmarc(author, spf, dkim_results, self._txt), arc)
        if self._records is not None:
            self._records.add(dmarc, client_ip, spf, dkim_results)
        field_ = authentication_results(
            self.authserv_id, spf, dkim_results, dmarc, arc, remote_ip=client_ip
        )
        action, reason = DELIVER, ""
        if dmarc.disposition == "reject":
            action, reason = REJECT, f"the DMARC policy of {dmarc.from_domain} (RFC 7489)"
        elif dmarc.disposition == "quarantine":
            action = JUNK
        forged = our_results_ranges(message, self.authserv_id)
        return Verdict(action, field_, dmarc, reason, forged, arc)

    def _arc_override(self, dmarc: DmarcResult, arc: ArcResult) -> DmarcResult:
        """dmarc with its policy set aside when a trusted sealer vouches for the message."""
        if dmarc.result != FAIL or dmarc.disposition == NONE or not arc.passed:
            return dmarc
        if arc.sealer not in self._trusted_sealers:
            return dmarc
        log.info(
            "dmarc override from=%s policy=%s reason=arc sealer=%s",
            dmarc.from_domain,
            dmarc.disposition,
            arc.sealer,
        )
        return dataclasses.replace(
            dmarc,
            disposition=NONE,
            override=TRUSTED_FORWARDER,
            reason=f"arc override: trusted sealer {arc.sealer}",
        )


@functools.cache
def _checks_pool() -> ThreadPoolExecutor:
    """The checks' own threads, one set per process (a reload makes a new
    Checker, not new threads): few, so that they do not take the interpreter
    from the event loop and from each other by turns."""
    return ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="checks")


def _filtered(verdict: Verdict, result: FilterResult) -> Verdict:
    """verdict with the filter's fields, and its action when that is stricter."""
    fields = rspamd.head_fields(result)
    action = _FILTER_ACTIONS[result.action] if result.checked else DELIVER
    if _SEVERITY.index(action) <= _SEVERITY.index(verdict.action):
        return dataclasses.replace(verdict, filter_fields=fields)
    reason = f"spam filter: {result.action}" + (f" ({result.text})" if result.text else "")
    return dataclasses.replace(
        verdict,
        action=action,
        reason=reason,
        filter_fields=fields,
        junk_by_filter=action == JUNK,
    )
