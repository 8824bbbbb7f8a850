"""DANE for outbound SMTP (RFC 7672, on RFC 6698 and RFC 7671): does the
certificate chain an MX host presents match its TLSA records?

Where it fits in a delivery (RFC 7672 2.2):

- DANE applies only to a host whose MX and address lookups were validated
  (`MxTarget.secure`); for such a host the queue asks `Resolver.tlsa(host,
  port)`. A lookup that fails is no answer at all: the host is not tried
  (2.1.1).
- `dane_applies(answer)`: validated records, some usable. TLS is then
  mandatory and the server is authenticated by `tlsa_matches`, not by the
  public CAs: the handshake itself checks nothing (`unverified_context()`),
  the chain is read with `peer_chain()` once it is done, and a mismatch ends
  the connection before EHLO is sent again (2.2, 3.1).
- `dane_requires_tls(answer)` without `dane_applies`: validated records,
  none usable. TLS is still mandatory, but unauthenticated (2.2).
- An answer that is not validated, or empty: DANE does not apply; MTA-STS,
  if the domain has a policy, or opportunistic TLS.

Usable records (RFC 7672 3.1): usage DANE-EE(3), any name, no expiry, no
chain, just the leaf; or DANE-TA(2), a chain from the leaf up to a
certificate the record matches, with the leaf's name checked against the
names the caller gives (the TLSA base domain, 3.2.2). PKIX-TA(0) and
PKIX-EE(1) are unusable for SMTP (3.1.3). Selectors 0 (whole certificate)
and 1 (SubjectPublicKeyInfo), matching types 0 (exact), 1 (SHA-256) and
2 (SHA-512).

Memory: DANE-EE needs only a hash and a short walk through the DER of the
leaf to find its SubjectPublicKeyInfo, done here. Only a DANE-TA record
loads cryptography's X.509 code, when one is first met, for the signatures
along the chain: the server stays as lean as tls/selfsigned.py keeps it.

Chains: in Python 3.11 `getpeercert(binary_form=True)` gives the leaf only.
`peer_chain()` reads the whole chain the server sent through
`get_unverified_chain()`, public from Python 3.13 and present on the
underlying _ssl object since 3.10; where neither exists it returns the leaf
alone, which is all DANE-EE 3 1 1, the common case, needs.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Collection, Iterable, Sequence
from datetime import UTC, datetime

from appliance.delivery.dns import TlsaAnswer, TlsaRecord

log = logging.getLogger(__name__)

# RFC 6698 2.1.1, RFC 7218 names.
PKIX_TA, PKIX_EE, DANE_TA, DANE_EE = 0, 1, 2, 3
CERT, SPKI = 0, 1  # selectors
FULL, SHA2_256, SHA2_512 = 0, 1, 2  # matching types
_DIGEST_SIZES = {SHA2_256: 32, SHA2_512: 64}
# Certificates looked at in a presented chain: real ones have 2 to 4; more
# is padding that would only cost signature checks.
MAX_CHAIN = 10


def usable_records(records: Iterable[TlsaRecord]) -> tuple[TlsaRecord, ...]:
    """The records DANE for SMTP can use (RFC 7672 3.1.3; RFC 7671 4).

    Usages 2 and 3 with a known selector and matching type, and a digest
    of the right length: a record with a truncated digest can never match
    and must not count as usable.
    """
    return tuple(
        r
        for r in records
        if r.usage in (DANE_TA, DANE_EE)
        and r.selector in (CERT, SPKI)
        and r.matching_type in (FULL, SHA2_256, SHA2_512)
        and r.data
        and len(r.data) == _DIGEST_SIZES.get(r.matching_type, len(r.data))
    )


def dane_applies(answer: TlsaAnswer) -> bool:
    """Validated TLSA records with one usable: authenticate by them (RFC 7672 2.2)."""
    return answer.secure and bool(usable_records(answer.records))


def dane_requires_tls(answer: TlsaAnswer) -> bool:
    """Validated TLSA records of any kind: TLS is mandatory (RFC 7672 2.2)."""
    return answer.secure and bool(answer.records)


def tlsa_matches(
    records: Iterable[TlsaRecord],
    certificate_chain_der: Sequence[bytes],
    *,
    names: Collection[str],
    now: datetime | None = None,
) -> bool:
    """Whether the chain a server presented (leaf first, DER) satisfies a record.

    DANE-EE(3): the leaf matches; its names and dates do not matter
    (RFC 7672 3.1.1). DANE-TA(2): some certificate of the chain matches,
    the leaf chains up to it by valid signatures through CA certificates,
    every certificate below it is within its dates at now, and the leaf
    carries one of names (RFC 7672 3.1.2, 3.2.2): the TLSA base domain,
    and the MX host name when that was expanded by a CNAME. Without names
    no DANE-TA record can match. Unusable records never match; garbage
    in the chain is a mismatch, not an exception.
    """
    chain = [bytes(der) for der in certificate_chain_der[:MAX_CHAIN]]
    if not chain:
        return False
    usable = usable_records(records)
    if any(r.usage == DANE_EE and _record_matches(r, chain[0]) for r in usable):
        return True
    anchors = [r for r in usable if r.usage == DANE_TA]
    matched = {i for i, der in enumerate(chain) if any(_record_matches(r, der) for r in anchors)}
    if not matched or not names:
        return False
    return _chains_to_anchor(chain, matched, names, now or datetime.now(UTC))


def peer_chain(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The certificates the server sent, leaf first, as DER (after the handshake)."""
    leaf = ssl_object.getpeercert(binary_form=True)
    if not leaf:
        return []
    chain = _unverified_chain(ssl_object)
    return [leaf, *(der for der in chain if der != leaf)]


def unverified_context() -> ssl.SSLContext:
    """A client context for DANE hosts: the handshake checks no chain and no name.

    The certificate is judged afterwards by tlsa_matches, since the public
    CAs have no say under DANE (RFC 7672 3.1). TLS 1.2 at least (RFC 8996).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _unverified_chain(ssl_object) -> list[bytes]:
    method = getattr(ssl_object, "get_unverified_chain", None)  # Python 3.13+
    if method is None:
        method = getattr(getattr(ssl_object, "_sslobj", None), "get_unverified_chain", None)
    if method is None:
        return []
    certificates = method() or []
    # 3.13's public method gives bytes; the _ssl one gives Certificate objects.
    return [
        c if isinstance(c, bytes) else c.public_bytes(ssl._ssl.ENCODING_DER) for c in certificates
    ]


# -- matching one record ------------------------------------------------------


def _record_matches(record: TlsaRecord, der: bytes) -> bool:
    selected = der if record.selector == CERT else _subject_public_key_info(der)
    if selected is None:
        return False
    if record.matching_type == SHA2_256:
        selected = hashlib.sha256(selected).digest()
    elif record.matching_type == SHA2_512:
        selected = hashlib.sha512(selected).digest()
    return selected == record.data


def _subject_public_key_info(der: bytes) -> bytes | None:
    """The SubjectPublicKeyInfo of a certificate, as the bytes it was sent in.

    RFC 5280 4.1: Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
    [0] version OPTIONAL, serialNumber, signature, issuer, validity,
    subject, subjectPublicKeyInfo, ... }, ... }. The bytes are taken as
    they are, never re-encoded, since TLSA digests are over exactly them.
    """
    try:
        tag, start, end = _tlv(der, 0)
        if tag != 0x30 or end != len(der):
            return None
        tag, position, tbs_end = _tlv(der, start)
        if tag != 0x30:
            return None
        tag, _, end = _tlv(der, position, tbs_end)
        if tag == 0xA0:  # the explicit version
            position = end
        for _ in range(5):  # serialNumber, signature, issuer, validity, subject
            _, _, position = _tlv(der, position, tbs_end)
        tag, _, end = _tlv(der, position, tbs_end)
    except ValueError:
        return None
    return der[position:end] if tag == 0x30 else None


def _tlv(der: bytes, offset: int, limit: int | None = None) -> tuple[int, int, int]:
    """(tag, start of contents, end) of the DER element at offset (X.690 8.1)."""
    limit = len(der) if limit is None else limit
    if offset + 2 > limit:
        raise ValueError("truncated")
    tag, length = der[offset], der[offset + 1]
    if tag & 0x1F == 0x1F:
        raise ValueError("multi-byte tag")  # none in a certificate's TBS prefix
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or start + count > limit:
            raise ValueError("bad length")  # 0x80 is BER's indefinite form
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    if start + length > limit:
        raise ValueError("overruns its container")
    return tag, start, start + length


# -- DANE-TA: the chain and the name (RFC 7672 3.1.2, 3.2.2) ------------------


def _chains_to_anchor(
    chain: list[bytes], anchors: set[int], names: Collection[str], now: datetime
) -> bool:
    """Whether the leaf leads up to one of the anchors (indexes into chain).

    The trust anchor is a name and a key (RFC 5280 6.1.1 d): its own dates
    and flags are not checked. Every certificate below it must be within
    its dates, and each issuer below the anchor must be a CA.
    """
    from cryptography import x509  # only for DANE-TA: see the module docstring

    try:
        certificates = [x509.load_der_x509_certificate(der) for der in chain]
    except ValueError:
        return False
    if not _has_name(certificates[0], names):
        return False
    # Breadth first over "issued by" among the presented certificates, in any order.
    reached, frontier = {0}, [0]
    while frontier:
        index = frontier.pop(0)
        if index in anchors:
            return True
        if not _within_dates(certificates[index], now):
            continue
        for issuer, candidate in enumerate(certificates):
            if issuer in reached:
                continue
            if issuer not in anchors and not _is_ca(candidate):
                continue
            if _issued_by(certificates[index], candidate):
                reached.add(issuer)
                frontier.append(issuer)
    return False


def _issued_by(certificate, issuer) -> bool:
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    try:
        certificate.verify_directly_issued_by(issuer)  # issuer name and signature
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _within_dates(certificate, now: datetime) -> bool:
    before = getattr(certificate, "not_valid_before_utc", None)  # cryptography 42+
    after = getattr(certificate, "not_valid_after_utc", None)
    if before is None or after is None:
        before = certificate.not_valid_before.replace(tzinfo=UTC)
        after = certificate.not_valid_after.replace(tzinfo=UTC)
    return before <= now <= after


def _is_ca(certificate) -> bool:
    """A CA certificate (RFC 5280 6.1.4 k, n): basicConstraints cA, keyCertSign if usage given."""
    from cryptography import x509

    try:
        constraints = _extension(certificate, x509.BasicConstraints)
        usage = _extension(certificate, x509.KeyUsage)
    except ValueError:  # malformed or repeated extensions
        return False
    if constraints is None or not constraints.ca:
        return False
    return usage is None or usage.key_cert_sign


def _extension(certificate, kind):
    """The value of the certificate's extension of this class, or None."""
    from cryptography import x509

    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _has_name(certificate, names: Collection[str]) -> bool:
    """Whether the leaf carries a reference identifier (RFC 7672 3.2.2).

    DNS names of the subject alternative names when there are any, else
    the common name; a "*" as the whole first label stands for exactly one
    label.
    """
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = _extension(certificate, x509.SubjectAlternativeName)
    except ValueError:
        return False
    presented = san.get_values_for_type(x509.DNSName) if san is not None else []
    if not presented:
        attributes = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        presented = [a.value for a in attributes if isinstance(a.value, str)]
    wanted = {_name(n) for n in names}
    return any(_identifier_matches(_name(p), wanted) for p in presented)


def _identifier_matches(presented: str, wanted: set[str]) -> bool:
    if presented.startswith("*."):
        parent = presented[2:]
        return any(
            label and parent and rest == parent
            for label, _, rest in (name.partition(".") for name in wanted)
        )
    return presented in wanted


def _name(text: str) -> str:
    return text.strip().lower().removesuffix(".")
