"""ARC chain validation of inbound mail (RFC 8617).

A mailing list or a forwarder that changes a message breaks its DKIM
signature, so the author's DMARC fails at the next hop. ARC lets such an
intermediary seal what it saw: each hop adds an ARC set (ARC-Authentication-
Results, ARC-Message-Signature, ARC-Seal, all with the instance i=), and a
receiver that trusts the last sealer may believe the results recorded in the
chain instead of its own (RFC 8617 7.2). Which sealers are trusted is the
owner's choice ([smtp] arc_trusted_sealers); this module only says whether
the chain is intact and who sealed it last.

`verify_arc(message, txt_lookup)` returns an ArcResult whose result is the
chain validation status of RFC 8617 4.4: none (no ARC sets), pass or fail.
dkimpy checks the signatures (every ARC-Message-Signature and ARC-Seal, with
rsa-sha256 only, RFC 8617 4.1.3 and its ARC_HASH_ALGORITHMS); this module
gives it our DNS, bounds its work and turns whatever it raises into fail.

Decisions where RFC 8617 leaves room:
- more than MAX_ARC_SETS sets is fail without any lookup (RFC 8617 4.2.1
  caps i= at 50, 5.1.1 makes more a failed chain);
- a chain whose newest seal says cv=fail is fail (RFC 8617 5.2 step 2: the
  chain was already broken when it reached the last hop);
- a key lookup that fails for now makes the chain fail: RFC 8617 has no
  temperror, and a failed chain only means that no override applies;
- all of a chain's lookups share ARC_TIMEOUT, so fifty sets with fifty slow
  key domains cannot hold the session for fifty lookup timeouts.

Call it in the executor: it blocks on DNS and does RSA in Python.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import dkim

from appliance.mailauth.results import field_value, header_fields
from appliance.mailauth.verify import DnsTempError, TxtLookup, txt_records

log = logging.getLogger(__name__)

NONE = "none"
PASS = "pass"
FAIL = "fail"

# RFC 8617 4.2.1: i= is 1 to 50.
MAX_ARC_SETS = 50
# All key lookups of one chain together; RFC 8617 sets no figure. As long as
# one SPF check may take (RFC 7208 4.6.4), which the session already waits for.
ARC_TIMEOUT = 20.0
# The RSA key size below which a seal does not count (RFC 8301 3.2, as for DKIM).
RSA_MIN_BITS = 1024

_ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*(\d+)\s*(?:;|$)")


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The chain validation status of one message (RFC 8617 4.4)."""

    result: str  # none / pass / fail
    sealer: str = ""  # d= of the newest ARC-Seal, lower case; "" without a chain
    instance: int = 0  # i= of the newest ARC set; 0 without a chain
    # RFC 8617 5.2 step 6, for Authentication-Results header.oldest-pass: the
    # oldest instance whose ARC-Message-Signature still verifies, 0 if all do.
    oldest_pass: int = 0
    reason: str = ""  # why it failed, for logs and reason=

    @property
    def passed(self) -> bool:
        return self.result == PASS


class _OutOfTime(Exception):
    """The chain's lookups took longer than ARC_TIMEOUT."""


def verify_arc(
    message: bytes | memoryview, txt_lookup: TxtLookup, *, timeout: float = ARC_TIMEOUT
) -> ArcResult:
    """The ARC chain validation status of message; never raises for what it holds."""
    instances = _instances(message)
    if not instances:
        return ArcResult(NONE)
    newest = max(instances)
    if newest > MAX_ARC_SETS:
        return ArcResult(FAIL, instance=newest, reason=f"more than {MAX_ARC_SETS} ARC sets")
    lookup = _ChainLookup(txt_lookup, time.monotonic() + timeout)
    try:
        verifier = dkim.ARC(bytes(message), minkey=RSA_MIN_BITS)
        status, sets, comment = verifier.verify(dnsfunc=lookup)
    except _OutOfTime:
        return ArcResult(FAIL, instance=newest, reason="key lookups took too long")
    except Exception as error:  # noqa: BLE001 - dkimpy must not take the session down
        # A hostile field can make dkimpy raise more than DKIMException
        # (an IndexError for an AMS it cannot find again, say).
        log.info("arc unverifiable error=%s: %s", type(error).__name__, _first_line(error))
        return ArcResult(FAIL, instance=newest, reason=f"cannot verify: {type(error).__name__}")
    sealer = _text(sets[0].get("as-domain", b"")).lower() if sets else ""
    if status == dkim.CV_Pass:
        return ArcResult(PASS, sealer, newest, _oldest_pass(sets))
    if status is None:  # dkimpy: the newest seal itself says cv=fail
        comment = "the chain was already broken when sealed (cv=fail)"
    reason = lookup.failure or _first_line(comment)
    return ArcResult(FAIL, sealer, newest, reason=reason)


def _instances(message: bytes | memoryview) -> list[int]:
    """The i= of every ARC field in the header section; a field without one counts as 0."""
    found = []
    for field in header_fields(message):
        if field.name in _ARC_FIELDS:
            match = _INSTANCE.search(field_value(message, field))
            digits = match.group(1) if match else b"0"
            # Not int() of a thousand digits: past two, more than MAX_ARC_SETS anyway.
            found.append(int(digits) if len(digits) <= 9 else MAX_ARC_SETS + 1)
    return found


def _oldest_pass(sets: list[dict]) -> int:
    """RFC 8617 5.2 step 6: walking down from the newest set, the instance
    after the first whose ARC-Message-Signature fails; 0 if none fails."""
    for arc_set in sets[1:]:  # newest first; the newest AMS verified or the chain failed
        if not arc_set.get("ams-valid"):
            return arc_set["instance"] + 1
    return 0


class _ChainLookup:
    """dkimpy's dnsfunc over our txt_lookup: one deadline for the chain, each
    key asked once (sets of one sealer share their key), and the first
    temporary failure kept to say why the chain failed."""

    def __init__(self, txt_lookup: TxtLookup, deadline: float) -> None:
        self._txt_lookup = txt_lookup
        self._deadline = deadline
        self._answers: dict[bytes, bytes | None] = {}
        self.failure = ""

    def __call__(self, name: bytes, timeout: float = 0) -> bytes | None:
        if name not in self._answers:
            self._answers[name] = self._key_record(name)
        return self._answers[name]

    def _key_record(self, name: bytes) -> bytes | None:
        if time.monotonic() > self._deadline:
            raise _OutOfTime
        try:
            records = txt_records(self._txt_lookup, name.decode("ascii").rstrip("."))
        except UnicodeDecodeError:
            return None  # not a name that can be looked up: no key
        except DnsTempError as error:
            self.failure = self.failure or f"key lookup failed for now: {error}"
            return None
        # RFC 6376 3.6.2.2 leaves several records undefined; none of them is the key.
        return records[0] if len(records) == 1 else None


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip()


def _first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else "chain did not verify"
