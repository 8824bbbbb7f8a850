"""What the inbound SMTP session asks of mailauth: one verdict per message.

SPF is checked when MAIL FROM arrives (it needs only the client's address,
the HELO name and the sender), while the client sends its recipients and
data; DKIM and DMARC when the message is complete, before the reply to the
end of data, so that a DMARC reject is a 550 and never a bounce afterwards
(RFC 7489 6.7 prefers rejection during the SMTP transaction).

All of it does blocking DNS through the configured resolver and runs in an
executor thread. Nothing here loses mail over DNS trouble: a temperror is
recorded in Authentication-Results and the message is delivered.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.config import ResolverSettings
from appliance.mailauth.dmarc import AuthorError, DmarcResult, author_domain, evaluate_dmarc
from appliance.mailauth.results import authentication_results, our_results_ranges
from appliance.mailauth.spf import SpfResult, check_spf
from appliance.mailauth.verify import TxtLookup, resolver_txt_lookup, verify_dkim

DELIVER, JUNK, REJECT = "deliver", "junk", "reject"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What becomes of a message, and the field that tells its reader why."""

    action: str  # DELIVER, JUNK (the Junk mailbox) or REJECT (550 5.7.1)
    results_field: bytes  # Authentication-Results, to go in front of the message
    dmarc: DmarcResult | None
    reason: str = ""  # why it is refused
    # Authentication-Results fields in the message that claim our name:
    # forged (RFC 8601 5), to be dropped from what is stored.
    forged: list[tuple[int, int]] = field(default_factory=list)

    @property
    def refused(self) -> bool:
        return self.action == REJECT

    @property
    def quarantined(self) -> bool:
        return self.action == JUNK


class Checker:
    """The checks of one server: its name (the authserv-id) and its resolver."""

    def __init__(self, authserv_id: str, resolver: ResolverSettings, spf_timeout: float = 20.0):
        self.authserv_id = authserv_id
        self._resolver = resolver
        self._spf_timeout = spf_timeout
        self._txt: TxtLookup = resolver_txt_lookup(resolver)

    def spf(self, client_ip: str, sender: str, helo: str) -> SpfResult | None:
        """The MAIL FROM identity's SPF result (the HELO name's for <>); blocking."""
        try:
            return check_spf(client_ip, sender, helo, self._resolver, self._spf_timeout)
        except ValueError:
            return None  # not an IP we can check (a Unix socket, say): no SPF result

    def verdict(self, message: bytes | memoryview, spf: SpfResult | None) -> Verdict:
        """DKIM, DMARC and the Authentication-Results field; blocking."""
        dkim_results = verify_dkim(message, self._txt)
        try:
            author = author_domain(message)
        except AuthorError as error:
            # RFC 7489 6.6.1: without exactly one author domain there is no
            # policy to apply, and such mail is how a forger would slip by.
            field_ = authentication_results(self.authserv_id, spf, dkim_results, None)
            return Verdict(REJECT, field_, None, reason=f"{error} (RFC 7489 6.6.1)")
        dmarc = evaluate_dmarc(author, spf, dkim_results, self._txt)
        field_ = authentication_results(self.authserv_id, spf, dkim_results, dmarc)
        action, reason = DELIVER, ""
        if dmarc.disposition == "reject":
            action, reason = REJECT, f"the DMARC policy of {dmarc.from_domain} (RFC 7489)"
        elif dmarc.disposition == "quarantine":
            action = JUNK
        forged = our_results_ranges(message, self.authserv_id)
        return Verdict(action, field_, dmarc, reason, forged)
