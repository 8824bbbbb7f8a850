"""Mail addresses and domain names as the store keys them.

Lookups are case-insensitive, as in Postfix's virtual tables: keys are the
lower-cased address with the domain in its ASCII (A-label) form.
"""

from __future__ import annotations

import re

# RFC 1035 2.3.1 labels, RFC 1123 2.1 letting them start with a digit.
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
# RFC 5322 3.2.3 atext, plus any non-ASCII character (RFC 6531 3.3 UTF8-non-ascii).
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_ATOM = re.compile(rf"^{_ATOM}(\.{_ATOM})*$")

MAX_LOCAL_PART = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 4.5.3.1.2


class AddressError(ValueError):
    pass


def normalize_domain(domain: str) -> str:
    """The domain lower-cased in A-label form, or AddressError."""
    name = domain.strip().rstrip(".").lower()
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError:
        raise AddressError(f"not a valid domain name: {domain!r}") from None
    labels = ascii_name.split(".")
    if (
        len(ascii_name) > MAX_DOMAIN
        or len(labels) < 2
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise AddressError(f"not a valid domain name: {domain!r}")
    return ascii_name


def normalize_address(address: str) -> str:
    """local@domain lower-cased with an A-label domain, or AddressError."""
    local, at, domain = address.strip().rpartition("@")
    if not at or not local:
        raise AddressError(f"not a valid address: {address!r}")
    if len(local.encode("utf-8")) > MAX_LOCAL_PART or not _DOT_ATOM.match(local):
        raise AddressError(f"not a valid address: {address!r}")
    try:
        return f"{local.lower()}@{normalize_domain(domain)}"
    except AddressError:
        raise AddressError(f"not a valid address: {address!r}") from None


def normalize_alias_source(source: str) -> str:
    """An address, or "@domain" for a domain's catch-all."""
    if source.startswith("@"):
        return "@" + normalize_domain(source[1:])
    return normalize_address(source)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2]
