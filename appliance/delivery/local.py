"""Local delivery: which mailboxes an address reaches, and the trace fields added.

Resolution follows what a Postfix virtual-domain user expects:
an alias wins, then an account, then plus-addressing (user+tag), then the
domain's catch-all. Alias targets in a local domain are resolved again (up to
MAX_ALIAS_DEPTH); targets elsewhere are forwarded.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.addresses import AddressError, domain_of, normalize_address
from appliance.store import Transaction

MAX_ALIAS_DEPTH = 10  # aliases of aliases; deeper is a loop or a mistake
MAX_EXPANSION = 1000  # destinations one recipient may expand to


@dataclass(frozen=True, slots=True)
class Route:
    accounts: tuple[str, ...]  # local accounts, each gets a copy in its INBOX
    forwards: tuple[str, ...]  # external addresses the message is queued for


class Refused(Exception):
    """Why an address cannot be delivered to: (code, enhanced status, text)."""

    def __init__(self, code: int, status: str, text: str):
        super().__init__(text)
        self.code, self.status, self.text = code, status, text


def resolve(txn: Transaction, address: str, delimiter: str = "+") -> Route:
    """Where mail to address goes, or Refused."""
    if "@" not in address and address.lower() == "postmaster":
        return _postmaster(txn, delimiter)
    try:
        normalized = normalize_address(address)
    except AddressError:
        raise Refused(501, "5.1.3", f"<{address}>: Bad recipient address syntax") from None
    if txn.domain(domain_of(normalized)) is None:
        # RFC 5321 3.6.2: never an open relay; mail for others needs AUTH.
        raise Refused(550, "5.7.1", f"<{address}>: Relay access denied")
    accounts: dict[str, None] = {}
    forwards: dict[str, None] = {}
    _expand(txn, normalized, delimiter, 0, set(), accounts, forwards)
    if not accounts and not forwards:
        raise Refused(550, "5.1.1", f"<{address}>: Recipient address rejected: User unknown")
    return Route(tuple(accounts), tuple(forwards))


def _postmaster(txn: Transaction, delimiter: str) -> Route:
    # RFC 5321 4.5.1: "postmaster" with no domain must be accepted; it reaches
    # the postmaster of the first local domain that has one.
    for domain in txn.domains():
        try:
            return resolve(txn, f"postmaster@{domain.name}", delimiter)
        except Refused:
            continue
    raise Refused(550, "5.1.1", "<postmaster>: Recipient address rejected: User unknown")


def _expand(
    txn: Transaction,
    address: str,
    delimiter: str,
    depth: int,
    seen: set[str],
    accounts: dict[str, None],
    forwards: dict[str, None],
) -> None:
    if address in seen or depth > MAX_ALIAS_DEPTH or len(accounts) + len(forwards) >= MAX_EXPANSION:
        return
    seen.add(address)
    local, _, domain = address.rpartition("@")
    if txn.domain(domain) is None:
        forwards[address] = None
        return
    candidates = [address]
    if delimiter and delimiter in local:
        candidates.append(f"{local.split(delimiter, 1)[0]}@{domain}")
    for candidate in candidates:
        alias = txn.alias(candidate)
        if alias is not None:
            for target in alias.targets:
                _expand(txn, target, delimiter, depth + 1, seen, accounts, forwards)
            return
        if txn.account(candidate) is not None:
            accounts[candidate] = None
            return
    catch_all = txn.alias("@" + domain)
    if catch_all is not None:
        for target in catch_all.targets:
            if target != address:
                _expand(txn, target, delimiter, depth + 1, seen, accounts, forwards)


def may_send_as(txn: Transaction, account: str, sender: str, delimiter: str = "+") -> bool:
    """Whether a user logged in as `account` may use `sender` as envelope
    sender or From: (RFC 6409 8.1 lets a submission server refuse the rest):
    their own address, with a +tag or not, and any alias that delivers to
    them. A catch-all does not count: receiving a domain's stray mail is no
    right to speak for every address in it."""
    try:
        normalized = normalize_address(sender)
    except AddressError:
        return False
    local, _, domain = normalized.rpartition("@")
    candidates = [normalized]
    if delimiter and delimiter in local:
        candidates.append(f"{local.split(delimiter, 1)[0]}@{domain}")
    for candidate in candidates:
        if candidate == account:
            return True
        if txn.alias(candidate) is not None:
            accounts: dict[str, None] = {}
            _expand(txn, candidate, delimiter, 0, set(), accounts, {})
            return account in accounts
    return False
