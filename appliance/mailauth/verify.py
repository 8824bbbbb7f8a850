"""DKIM verification of inbound mail (RFC 6376, RFC 8301, RFC 8463), and the
TXT lookups that DKIM and DMARC make.

`verify_dkim(message, txt_lookup)` checks every DKIM-Signature field of a
message and returns one DkimResult per field, top to bottom; no signature
gives an empty list (Authentication-Results says dkim=none). It never raises
for anything a message or a DNS record holds: dkimpy does the hashing and the
signature arithmetic, and this module decides beforehand everything that
dkimpy would turn into an exception or a crash.

The results are the RFC 8601 2.7.1 words:

  pass       the signature verifies with the key published for s= and d=.
  fail       it does not: the body hash differs (body changed) or the
             signature over the header fields does (a signed field changed).
  neutral    the signature field cannot be read: a tag-list syntax error, a
             required tag missing, bad base64, an unknown a= or c=, i= outside
             d=, t= in the future (RFC 8601: "contained syntax errors").
  policy     it might verify, but we do not accept it: a=rsa-sha1 (RFC 8301
             3.1: MUST NOT be considered valid), an RSA key under 1024 bits
             (RFC 8301 3.2), or x= in the past (RFC 6376 3.5: expired
             signatures MAY be considered invalid; we do).
  permerror  the key cannot be had for good: no key record, a revoked key
             (empty p=, RFC 6376 3.6.1), a record that does not parse, a key
             type that is not the one a= names, h= of the key excluding the
             signature's hash, or a key not meant for email (s=).
  temperror  the key lookup failed for now (a timeout, SERVFAIL): retrying
             later may give another answer.

l= (body length). dkimpy honours it: it hashes only the first l octets of
the canonicalized body, so text appended after signing still verifies (pass).
RFC 6376 8.2 warns about this; DkimResult.body_length carries l= so that a
caller can tell such a pass from one that covers the whole body. If l= is
larger than the body, dkimpy hashes the whole body and does not object.

DNS. `txt_lookup(name)` is injected so that the inbound session resolves
through the configured [resolver] and tests use a dict. It takes a name
without the final dot and returns the TXT records there, each one's strings
joined (RFC 6376 3.6.2.2, RFC 7489 6.6.3): a list of bytes, or a single
bytes, or None / [] when there is nothing (NXDOMAIN or no TXT). It raises
DnsTempError for a temporary failure. `resolver_txt_lookup(settings)` makes
the default one from ResolverSettings.

CPU. Verifying is like signing: dkimpy's RSA is Python arithmetic, a few ms
a signature; ed25519 is PyNaCl. Call verify_dkim in the executor, not on the
loop; it blocks in txt_lookup as well.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dkim
import dkim.util
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError

from appliance.config import ResolverSettings
from appliance.mailauth.stub import stub_resolver

log = logging.getLogger(__name__)

PASS = "pass"
FAIL = "fail"
NEUTRAL = "neutral"
POLICY = "policy"
PERMERROR = "permerror"
TEMPERROR = "temperror"

RSA_SHA256 = "rsa-sha256"
RSA_SHA1 = "rsa-sha1"
ED25519_SHA256 = "ed25519-sha256"
# The key type (k=) each algorithm needs (RFC 6376 3.6.1, RFC 8463 4).
_KEY_TYPE = {RSA_SHA256: b"rsa", RSA_SHA1: b"rsa", ED25519_SHA256: b"ed25519"}

RSA_MIN_BITS = 1024  # RFC 8301 3.2
# Signatures checked per message: each costs a DNS lookup and an RSA
# operation, and a message may carry hundreds of copied fields. RFC 6376
# 6.1 lets a verifier limit the number it checks; the rest report policy.
MAX_SIGNATURES = 10


class DnsTempError(Exception):
    """A DNS lookup failed in a way that may succeed later (RFC 6376 6.1.2, RFC 7489 6.6.3)."""


TxtAnswer = Sequence[bytes] | bytes | None
TxtLookup = Callable[[str], TxtAnswer]


def txt_records(lookup: TxtLookup, name: str) -> list[bytes]:
    """The TXT records at name as a list, whatever form the lookup answers in.
    Raises DnsTempError."""
    answer = lookup(name)
    if answer is None:
        return []
    if isinstance(answer, bytes | bytearray | memoryview):
        return [bytes(answer)]
    return [bytes(record) for record in answer]


@dataclass(slots=True, frozen=True)
class DkimResult:
    """The outcome for one DKIM-Signature field."""

    result: str  # pass / fail / neutral / policy / permerror / temperror
    domain: str  # d=, lower case; "" if the field has none
    selector: str  # s=
    algorithm: str  # a=, lower case
    reason: str = ""  # why it is not pass, for logs and reason= (RFC 8601 2.7.1)
    identity: str = ""  # i= (the AUID), "" if absent
    body_length: int | None = None  # l=: only this much of the body is signed

    @property
    def passed(self) -> bool:
        return self.result == PASS


class _Verdict(Exception):
    """A signature's result, decided before the cryptography."""

    def __init__(self, result: str, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


def verify_dkim(
    message: bytes | memoryview,
    txt_lookup: TxtLookup,
    *,
    now: float | None = None,
) -> list[DkimResult]:
    """One DkimResult per DKIM-Signature field of message, in order.

    now is the verification time (seconds since the epoch) for x=; tests set it.
    """
    if not _MAY_BE_SIGNED.search(message):
        return []  # most mail: no need for dkimpy to parse it at all
    parsed = _parse(message)
    if parsed is None:
        return []
    fields = [value for name, value in parsed.headers if name.lower() == b"dkim-signature"]
    clock = time.time() if now is None else now
    results = []
    for index, value in enumerate(fields):
        if index >= MAX_SIGNATURES:
            tags = _loose_tags(value)
            results.append(_result(tags, POLICY, f"more than {MAX_SIGNATURES} signatures"))
            continue
        results.append(_verify_one(parsed, index, value, txt_lookup, clock))
    return results


# A line that starts like a signature field, anywhere (a body line too: then
# dkimpy's parse decides); without one the message holds no signature.
_MAY_BE_SIGNED = re.compile(rb"^dkim-signature[ \t]*:", re.IGNORECASE | re.MULTILINE)


def _parse(message: bytes | memoryview) -> dkim.DKIM | None:
    """The message as dkimpy reads it, or None if it cannot hold a signature."""
    if not len(message) or message[0] in b" \t":
        # dkimpy raises IndexError on a continuation line with no field before it.
        return None
    try:
        return dkim.DKIM(message, minkey=RSA_MIN_BITS)
    except dkim.DKIMException as error:
        # Not a header section dkimpy can read; there is no signature to check.
        log.info("dkim unreadable message error=%s", error)
        return None


def _verify_one(
    parsed: dkim.DKIM, index: int, value: bytes, txt_lookup: TxtLookup, now: float
) -> DkimResult:
    tags = _loose_tags(value)
    try:
        tags = _signature_tags(value, now)
        record = _key_record(tags, txt_lookup)
        verified = parsed.verify(index, dnsfunc=lambda _name, timeout=0: record)
    except _Verdict as verdict:
        return _result(tags, verdict.result, verdict.reason)
    except dkim.ValidationError as error:
        # Everything else dkimpy validates was checked above: this is bh=.
        return _result(tags, FAIL, f"body hash did not verify ({_first_line(error)})")
    except dkim.DKIMException as error:
        return _result(tags, PERMERROR, _first_line(error))
    except Exception as error:  # noqa: BLE001 - dkimpy must not take the session down
        log.warning("dkim verifier error=%s: %s", type(error).__name__, _first_line(error))
        return _result(tags, PERMERROR, f"cannot verify: {type(error).__name__}")
    if not verified:
        return _result(tags, FAIL, "signature did not verify")
    return _result(tags, PASS, "")


def _signature_tags(value: bytes, now: float) -> dict[bytes, bytes]:
    """The tags of a signature field, or a _Verdict saying why it is not acceptable."""
    try:
        tags = dkim.util.parse_tag_value(value)
    except dkim.util.InvalidTagValueList as error:
        raise _Verdict(NEUTRAL, f"signature syntax: {_first_line(error)}") from None
    algorithm = tags.get(b"a", b"").lower()
    if algorithm == RSA_SHA1.encode():
        raise _Verdict(POLICY, "rsa-sha1 is not accepted (RFC 8301 3.1)")
    expiry = tags.get(b"x", b"")
    if expiry.isdigit() and int(expiry) < now:
        raise _Verdict(POLICY, "signature expired (x=)")
    try:
        dkim.validate_signature_fields(tags)
    except dkim.ValidationError as error:
        raise _Verdict(NEUTRAL, f"signature syntax: {_first_line(error)}") from None
    if algorithm.decode("ascii", "replace") not in _KEY_TYPE:
        raise _Verdict(NEUTRAL, "unknown signature algorithm")
    try:
        CanonicalizationPolicy.from_c_value(tags.get(b"c", b"simple/simple"))
    except InvalidCanonicalizationPolicyError:
        raise _Verdict(NEUTRAL, "unknown canonicalization (c=)") from None
    return tags


def _key_record(tags: dict[bytes, bytes], txt_lookup: TxtLookup) -> bytes:
    """The key record for the signature, checked as far as dkimpy would not."""
    try:
        name = (tags[b"s"] + b"._domainkey." + tags[b"d"]).decode("ascii")
    except UnicodeDecodeError:
        raise _Verdict(PERMERROR, "d= or s= is not an ASCII name") from None
    try:
        records = txt_records(txt_lookup, name)
    except DnsTempError as error:
        raise _Verdict(TEMPERROR, f"key lookup: {error}") from None
    if not records:
        raise _Verdict(PERMERROR, f"no key record at {name}")
    if len(records) > 1:
        # RFC 6376 3.6.2.2 leaves several records undefined; guessing one is worse.
        raise _Verdict(PERMERROR, f"{len(records)} key records at {name}")
    record = records[0]
    try:
        key = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList:
        raise _Verdict(PERMERROR, "key record syntax") from None
    return _checked_key(key, tags[b"a"].lower())


def _checked_key(key: dict[bytes, bytes], algorithm: bytes) -> bytes:
    """The key record for dkimpy, after RFC 6376 3.6.1 and 6.1.2 on its tags."""
    if key.get(b"v", b"DKIM1") != b"DKIM1":
        raise _Verdict(PERMERROR, "key record version is not DKIM1")
    public = re.sub(rb"\s+", b"", key.get(b"p", b""))
    if b"p" not in key:
        raise _Verdict(PERMERROR, "key record has no p=")
    if not public:
        raise _Verdict(PERMERROR, "key revoked (empty p=)")
    key_type = key.get(b"k", b"rsa").lower()
    if key_type != _KEY_TYPE[algorithm.decode("ascii")]:
        raise _Verdict(
            PERMERROR, f"key type {key_type.decode('ascii', 'replace')} for {algorithm.decode()}"
        )
    hashes = key.get(b"h")
    if hashes is not None:
        allowed = [h.strip().lower() for h in hashes.split(b":")]
        if algorithm.split(b"-")[-1] not in allowed:
            raise _Verdict(PERMERROR, "the key's h= excludes the signature's hash")
    services = [s.strip().lower() for s in key.get(b"s", b"*").split(b":")]
    if b"*" not in services and b"email" not in services:
        raise _Verdict(PERMERROR, "the key is not for email (s=)")
    # Only what dkimpy reads: its s= handling would drop a key with "email:tlsrpt".
    record = b"k=" + key_type + b"; p=" + public
    try:
        base64.b64decode(public, validate=True)
        _pk, bits, _type, _tlsrpt = dkim.evaluate_pk("", record)
    except (dkim.DKIMException, binascii.Error, ValueError, TypeError) as error:
        raise _Verdict(PERMERROR, f"key record: {_first_line(error)}") from None
    if key_type == b"rsa" and bits < RSA_MIN_BITS:
        raise _Verdict(POLICY, f"RSA key of {bits} bits (RFC 8301 3.2)")
    return record


def _loose_tags(value: bytes) -> dict[bytes, bytes]:
    """d=, s=, a=, i=, l= as far as they can be read from a field that may be malformed."""
    tags = {}
    for part in value.split(b";"):
        name, sep, tag_value = part.partition(b"=")
        name = name.strip()
        if sep and name in (b"d", b"s", b"a", b"i", b"l") and name not in tags:
            tags[name] = re.sub(rb"\s+", b"", tag_value)
    return tags


def _result(tags: dict[bytes, bytes], result: str, reason: str) -> DkimResult:
    def text(name: bytes) -> str:
        return tags.get(name, b"").decode("utf-8", "replace")

    length = tags.get(b"l", b"")
    return DkimResult(
        result=result,
        domain=text(b"d").lower().rstrip("."),
        selector=text(b"s"),
        algorithm=text(b"a").lower(),
        reason=reason,
        identity=text(b"i"),
        body_length=int(length) if length.isdigit() and len(length) <= 76 else None,
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


# DNS


def resolver_txt_lookup(settings: ResolverSettings) -> TxtLookup:
    """A blocking txt_lookup through the configured nameservers (or /etc/resolv.conf).

    NXDOMAIN and an empty answer are no records; a timeout, SERVFAIL or
    refusal from every server is DnsTempError. Run it in a thread.
    """
    resolver = stub_resolver(settings)

    def lookup(name: str) -> list[bytes]:
        try:
            qname = dns.name.from_text(name, origin=dns.name.root)
        except (dns.exception.DNSException, UnicodeError):
            return []  # not a name that can exist
        try:
            answer = resolver.resolve(qname, dns.rdatatype.TXT, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return []
        except dns.exception.DNSException as error:
            raise DnsTempError(f"{name}: {type(error).__name__}") from None
        return [b"".join(record.strings) for record in answer.rrset or ()]

    return lookup
