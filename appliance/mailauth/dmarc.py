"""DMARC evaluation of inbound mail (RFC 7489).

The steps, in the order the inbound session takes them:

1. `author_domain(message)`: the domain of the one RFC5322.From address.
   A message with no From field, several, or a From with several addresses
   (or none, or one that does not parse) raises AuthorError: RFC 7489 6.6.1
   lets a receiver refuse it, and we do (550 5.7.1 at end of DATA), because
   a checked domain that is not the one a reader sees is worthless.
2. `evaluate_dmarc(from_domain, spf, dkim_results, txt_lookup)`: finds the
   policy record (_dmarc.<from domain>, then _dmarc.<organizational domain>,
   RFC 7489 6.6.3), checks identifier alignment of SPF and of each passing
   DKIM signature (3.1), and says what to do with the message (6.6.4):
   DmarcResult.result is pass / fail / none / temperror / permerror for
   Authentication-Results, DmarcResult.disposition is none / quarantine /
   reject for the session.

Organizational domains come from the public suffix list (publicsuffixlist's
bundled copy, private section included): mail.example.co.uk has the
organizational domain example.co.uk.

Decisions where RFC 7489 leaves room:
- several DMARC records at one name, or none: no policy there (6.6.3);
- a record whose p= (or sp=) is missing or invalid: with an rua= it counts
  as p=none (6.6.3 step 6), without one the result is permerror and nothing
  is applied; other bad tags take their defaults (6.3);
- a failing message that pct= does not select gets the next policy down:
  reject becomes quarantine, quarantine becomes none (6.6.4);
- temperror (the record lookup failed for now) applies nothing; the session
  may answer 451 4.7.5 (RFC 7372) and let the sender retry.

3. `AggregateRecords(directory).add(...)`: what aggregate reports are made
   of (RFC 7489 7.2), kept per day; `rows(day)` counts them into report
   records. Sending reports is not done (RFC 7489 makes it optional).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import logging
import os
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from publicsuffixlist import PublicSuffixList

from appliance.mailauth.results import field_value, header_fields
from appliance.mailauth.spf import SpfResult
from appliance.mailauth.verify import DkimResult, DnsTempError, TxtLookup, txt_records

PASS = "pass"
FAIL = "fail"
NONE = "none"
TEMPERROR = "temperror"
PERMERROR = "permerror"

# Dispositions (RFC 7489 6.3 p=), mildest first.
QUARANTINE = "quarantine"
REJECT = "reject"
_POLICIES = (NONE, QUARANTINE, REJECT)

RELAXED = "r"
STRICT = "s"

# RFC 7489 7.2.1 PolicyOverrideType: why a policy was not applied.
SAMPLED_OUT = "sampled_out"
TRUSTED_FORWARDER = "trusted_forwarder"

log = logging.getLogger(__name__)


class AuthorError(ValueError):
    """The message does not have exactly one From address with a domain (RFC 7489 6.6.1)."""


@dataclass(slots=True, frozen=True)
class DmarcRecord:
    policy: str  # p=
    subdomain_policy: str  # sp=, p= when absent
    percent: int = 100  # pct=
    dkim_alignment: str = RELAXED  # adkim=
    spf_alignment: str = RELAXED  # aspf=


class RecordError(ValueError):
    """Not a usable DMARC record; the text says why."""


@dataclass(slots=True, frozen=True)
class DmarcResult:
    result: str  # pass / fail / none / temperror / permerror
    disposition: str  # none / quarantine / reject: what the receiver applies
    from_domain: str
    policy: str = ""  # the p= or sp= that applied, "" with no record
    record_domain: str = ""  # where the record was found: from or organizational domain
    spf_aligned: bool = False
    dkim_aligned: bool = False
    sampled_out: bool = False  # pct= left this message out: disposition one step down
    reason: str = ""
    # An RFC 7489 7.2.1 PolicyOverrideType when a failing message's policy was
    # set aside (TRUSTED_FORWARDER: a trusted ARC sealer vouched for it); reason says more.
    override: str = ""


# RFC5322.From


def author_domain(message: bytes | memoryview) -> str:
    """The domain of the message's one From address, lower case, A-labels. Raises AuthorError."""
    values = [
        field_value(message, field) for field in header_fields(message) if field.name == b"from"
    ]
    if len(values) != 1:
        raise AuthorError(f"{len(values)} From fields, not one")
    addresses = _mailboxes(values[0])
    if len(addresses) != 1:
        raise AuthorError(f"{len(addresses)} From addresses, not one")
    domain = addresses[0]
    if domain.startswith(b"["):
        raise AuthorError("the From address has an address literal, not a domain")
    try:
        return _domain(domain.decode("utf-8"))
    except (UnicodeError, ValueError):
        raise AuthorError("the From domain is not a domain name") from None


_TOKENS = re.compile(
    rb"""(?P<space>[ \t\r\n]+)
    |(?P<quoted>"(?:[^"\\]|\\.)*")
    |(?P<literal>\[(?:[^\[\]\\]|\\.)*\])
    |(?P<special>[()<>@,;:\\".\[\]])
    |(?P<atom>[^ \t\r\n()<>@,;:\\".\[\]\x00-\x1f\x7f]+)""",
    re.VERBOSE | re.DOTALL,
)


def _tokens(value: bytes) -> list[tuple[str, bytes]]:
    """RFC 5322 3.2 lexical tokens, comments dropped. Raises AuthorError."""
    tokens = []
    i = 0
    while i < len(value):
        if value[i : i + 1] == b"(":
            i = _after_comment(value, i)
            continue
        match = _TOKENS.match(value, i)
        if match is None or match.lastgroup == "special" and match.group() in (b"\\", b'"', b")"):
            raise AuthorError("the From field does not parse")
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
        i = match.end()
    return tokens


def _after_comment(value: bytes, i: int) -> int:
    depth = 0
    while i < len(value):
        char = value[i : i + 1]
        if char == b"\\":
            i += 1
        elif char == b"(":
            depth += 1
        elif char == b")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise AuthorError("the From field has an unclosed comment")


def _mailboxes(value: bytes) -> list[bytes]:
    """The domain of each mailbox of an address-list (RFC 5322 3.4). Raises AuthorError."""
    domains: list[bytes] = []
    current: list[tuple[str, bytes]] = []
    in_angle = in_group = False
    for kind, text in _tokens(value):
        if kind == "special" and text == b"<":
            in_angle = True
        elif kind == "special" and text == b">":
            in_angle = False
        if in_angle or kind != "special" or text not in (b":", b";", b","):
            current.append((kind, text))
            continue
        if text == b":":
            if in_group or not _is_phrase(current):
                raise AuthorError("the From field does not parse")
            in_group, current = True, []
            continue
        if text == b";" and not in_group:
            raise AuthorError("the From field does not parse")
        in_group = in_group and text != b";"
        if current:
            domains.append(_mailbox_domain(current))
        current = []
    if in_angle or in_group:
        raise AuthorError("the From field does not parse")
    if current:
        domains.append(_mailbox_domain(current))
    return domains


def _is_phrase(tokens: list[tuple[str, bytes]]) -> bool:
    # obs-phrase (RFC 5322 4.1) allows "." among the words.
    return bool(tokens) and all(kind in ("atom", "quoted") or text == b"." for kind, text in tokens)


def _mailbox_domain(tokens: list[tuple[str, bytes]]) -> bytes:
    """name-addr or addr-spec to its domain."""
    texts = [text for _kind, text in tokens]
    if b"<" in texts:
        open_at = texts.index(b"<")
        if texts[-1] != b">" or (open_at and not _is_phrase(tokens[:open_at])):
            raise AuthorError("the From field does not parse")
        tokens = tokens[open_at + 1 : -1]
        texts = texts[open_at + 1 : -1]
        if b":" in texts:  # obs-route (RFC 5322 4.4): "<@relay:user@example.org>"
            tokens = tokens[texts.index(b":") + 1 :]
            texts = texts[texts.index(b":") + 1 :]
    if texts.count(b"@") != 1:
        raise AuthorError("a From address without exactly one @")
    at = texts.index(b"@")
    local, domain = tokens[:at], tokens[at + 1 :]
    if not local or not domain or not _is_phrase(local):
        raise AuthorError("the From field does not parse")
    if len(domain) == 1 and domain[0][0] == "literal":
        return domain[0][1]
    if any(kind != "atom" and text != b"." for kind, text in domain):
        raise AuthorError("the From domain does not parse")
    return b"".join(text for _kind, text in domain)


def _domain(text: str) -> str:
    """A domain in lower case with A-labels, no final dot. Raises ValueError."""
    name = text.strip().rstrip(".").lower()
    if not name or ".." in name:
        raise ValueError(f"not a domain: {text!r}")
    if not name.isascii():
        name = name.encode("idna").decode("ascii")
    return name


# Organizational domains and alignment


@functools.cache
def _suffix_list() -> PublicSuffixList:
    return PublicSuffixList()


def organizational_domain(domain: str) -> str:
    """RFC 7489 3.2: the public suffix plus one label; a public suffix itself stays as it is."""
    domain = _domain(domain)
    return _suffix_list().privatesuffix(domain) or domain


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    """Identifier alignment (RFC 7489 3.1): the same domain (strict), or the
    same organizational domain (relaxed)."""
    try:
        domain, from_domain = _domain(domain), _domain(from_domain)
    except (UnicodeError, ValueError):
        return False
    if domain == from_domain:
        return True
    return mode == RELAXED and organizational_domain(domain) == organizational_domain(from_domain)


# The record


def parse_record(text: bytes) -> DmarcRecord:
    """A DMARC record (RFC 7489 6.3, 6.4); raises RecordError."""
    tags = _tag_list(text)
    if not tags or tags[0] != ("v", "DMARC1"):
        raise RecordError("the record does not start with v=DMARC1")
    values: dict[str, str] = {}
    for name, value in tags[1:]:
        values.setdefault(name.lower(), value)
    policy = values.get("p", "").lower()
    subdomain = values.get("sp", policy).lower()
    if policy not in _POLICIES or subdomain not in _POLICIES:
        if not _has_report_uri(values.get("rua", "")):
            raise RecordError("no valid p= or sp=")
        policy = policy if policy in _POLICIES else NONE  # 6.6.3 step 6
        subdomain = subdomain if subdomain in _POLICIES else policy
    percent = values.get("pct", "100")
    return DmarcRecord(
        policy=policy,
        subdomain_policy=subdomain,
        percent=int(percent) if percent.isdigit() and int(percent) <= 100 else 100,
        dkim_alignment=STRICT if values.get("adkim", "").lower() == STRICT else RELAXED,
        spf_alignment=STRICT if values.get("aspf", "").lower() == STRICT else RELAXED,
    )


def _tag_list(text: bytes) -> list[tuple[str, str]]:
    """tag=value pairs separated by ";" with white space around (RFC 7489 6.4)."""
    try:
        decoded = text.decode("ascii")
    except UnicodeDecodeError:
        raise RecordError("the record is not ASCII") from None
    tags = []
    for part in decoded.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name.strip()):
            raise RecordError(f"not a tag: {part.strip()!r}")
        tags.append((name.strip(), value.strip()))
    return tags


def _has_report_uri(rua: str) -> bool:
    return any(re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+", u.strip()) for u in rua.split(","))


def _dmarc_records(txt_lookup: TxtLookup, domain: str) -> list[bytes]:
    """The records at _dmarc.<domain> that start with v=DMARC1 (RFC 7489 6.6.3 step 3)."""
    found = txt_records(txt_lookup, f"_dmarc.{domain}")
    return [r for r in found if re.match(rb"v[ \t]*=[ \t]*DMARC1[ \t]*(;|$)", r)]


# Evaluation


def evaluate_dmarc(
    from_domain: str,
    spf: SpfResult | None,
    dkim_results: Sequence[DkimResult],
    txt_lookup: TxtLookup,
    *,
    sample: Callable[[], float] = random.random,
) -> DmarcResult:
    """The DMARC result and disposition for a message whose author domain is from_domain.

    spf is the MAIL FROM check (check_spf, which checks HELO for a null
    sender), None if SPF was not checked; dkim_results are verify_dkim's.

    sample returns a number in [0, 1) for pct= (RFC 7489 6.6.4); tests pass a fixed one.
    """
    from_domain = _domain(from_domain)
    org_domain = organizational_domain(from_domain)
    try:
        found = _find_record(from_domain, org_domain, txt_lookup)
    except DnsTempError as error:
        return DmarcResult(TEMPERROR, NONE, from_domain, reason=f"record lookup: {error}")
    except RecordError as error:
        return DmarcResult(PERMERROR, NONE, from_domain, reason=str(error))
    if found is None:
        return DmarcResult(NONE, NONE, from_domain, reason="no DMARC record")
    record, record_domain = found
    policy = record.policy if record_domain == from_domain else record.subdomain_policy
    # The SPF-authenticated identifier: MAIL FROM's domain, or HELO's for a
    # null sender (RFC 7489 3.1.2, RFC 7208 2.4); spf.domain is whichever was checked.
    spf_aligned = (
        spf is not None
        and spf.result == PASS
        and aligned(spf.domain, from_domain, record.spf_alignment)
    )
    dkim_aligned = any(
        result.passed and aligned(result.domain, from_domain, record.dkim_alignment)
        for result in dkim_results
    )
    common = dict(
        from_domain=from_domain,
        policy=policy,
        record_domain=record_domain,
        spf_aligned=spf_aligned,
        dkim_aligned=dkim_aligned,
    )
    if spf_aligned or dkim_aligned:
        return DmarcResult(PASS, NONE, **common)
    if sample() * 100 < record.percent:
        return DmarcResult(FAIL, policy, **common, reason="no aligned pass")
    milder = _POLICIES[max(0, _POLICIES.index(policy) - 1)]
    return DmarcResult(FAIL, milder, **common, sampled_out=True, reason=f"pct={record.percent}")


def _find_record(
    from_domain: str, org_domain: str, txt_lookup: TxtLookup
) -> tuple[DmarcRecord, str] | None:
    """The record and where it was found (RFC 7489 6.6.3). Raises DnsTempError, RecordError."""
    for domain in dict.fromkeys((from_domain, org_domain)):
        records = _dmarc_records(txt_lookup, domain)
        if len(records) == 1:
            return parse_record(records[0]), domain
        if len(records) > 1:
            return None  # step 5: several records, no DMARC processing
    return None


# Aggregate report records (RFC 7489 7.2)
#
# One JSON line per message whose author domain publishes a policy, in one
# file per UTC day under DATA/dmarc/. Appending a line is one write(2), safe
# from several executor threads and from a crash (at worst the last line is
# cut, and reading skips it); the counting into report records is done when
# a report is read, not on the delivery path. Lines are not synced: a
# power loss may lose the last seconds of counts, which a report survives.

# Days of records kept: a report covers a day (RFC 7489 6.3 ri= defaults to
# 86400 s); a month lets the owner look back before reports are sent.
RECORD_DAYS = 31
# A day's file stops growing here (some 80,000 messages): a flood of mail
# must not fill the data partition with bookkeeping.
MAX_RECORD_BYTES = 16 << 20


@dataclass(frozen=True, slots=True)
class AggregateRow:
    """One <record> of an aggregate report (RFC 7489 Appendix C): messages
    that were evaluated alike, and how many."""

    source_ip: str
    header_from: str
    envelope_from: str  # the MAIL FROM domain, "" for a null sender
    policy_domain: str  # where the policy record was found
    policy: str  # the p= or sp= that applied
    disposition: str  # none / quarantine / reject, as applied
    dkim: str  # policy_evaluated: pass if a DKIM pass was aligned, else fail
    spf: str  # likewise for SPF
    override: str  # a PolicyOverrideType, or ""
    dkim_results: tuple[tuple[str, str, str], ...]  # (domain, selector, result) per signature
    spf_result: tuple[str, str, str]  # (domain, scope mfrom/helo, result); empty if not checked
    count: int = 1


class AggregateRecords:
    """The aggregate report records of a data directory, one file per day."""

    def __init__(
        self,
        directory: Path,
        *,
        keep_days: int = RECORD_DAYS,
        max_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self._directory = Path(directory)
        self._keep_days = keep_days
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._day: datetime.date | None = None  # the day whose file is open, pruned once a day
        self._file: int | None = None  # that day's file, open for appending
        self._size = 0  # its length
        self._full_day: datetime.date | None = None  # the day whose file was found full

    def path(self, day: datetime.date) -> Path:
        return self._directory / f"{day.isoformat()}.jsonl"

    def add(
        self,
        dmarc: DmarcResult,
        source_ip: str,
        spf: SpfResult | None,
        dkim_results: Sequence[DkimResult],
        *,
        now: float | None = None,
    ) -> None:
        """Keep the evaluation of one message; nothing if its domain has no policy.
        Never raises: bookkeeping must not cost a message."""
        if not dmarc.record_domain or dmarc.result not in (PASS, FAIL):
            return
        line = json.dumps(_record(dmarc, source_ip, spf, dkim_results), separators=(",", ":"))
        day = datetime.datetime.fromtimestamp(
            time.time() if now is None else now, datetime.UTC
        ).date()
        try:
            with self._lock:
                if day != self._day:
                    self._new_day(day)
                self._append(day, line.encode("utf-8") + b"\n")
        except OSError as error:
            log.warning("dmarc records not written dir=%s error=%s", self._directory, error)

    def rows(self, day: datetime.date) -> list[AggregateRow]:
        """The day's records counted into report rows, the most frequent first."""
        try:
            text = self.path(day).read_text("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        counts: Counter[AggregateRow] = Counter()
        for line in text.splitlines():
            row = _row(line)
            if row is not None:
                counts[row] += 1
        rows = [dataclasses.replace(row, count=count) for row, count in counts.items()]
        return sorted(rows, key=lambda row: (-row.count, row.header_from, row.source_ip))

    def _new_day(self, day: datetime.date) -> None:
        self.close()
        self._directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        oldest = day - datetime.timedelta(days=self._keep_days)
        for name in os.listdir(self._directory):
            try:
                file_day = datetime.date.fromisoformat(name.removesuffix(".jsonl"))
            except ValueError:
                continue  # not ours
            if file_day < oldest:
                (self._directory / name).unlink(missing_ok=True)
        # Kept open for the day: one write per message, no open and close.
        self._file = os.open(self.path(day), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._file).st_size
        self._day = day

    def _append(self, day: datetime.date, line: bytes) -> None:
        if self._size + len(line) > self._max_bytes:
            if self._full_day != day:
                self._full_day = day
                log.warning("dmarc records full day=%s bytes=%d", day, self._max_bytes)
            return
        self._size += os.write(self._file, line)

    def close(self) -> None:
        if self._file is not None:
            os.close(self._file)
            self._file, self._day = None, None


def _record(
    dmarc: DmarcResult, source_ip: str, spf: SpfResult | None, dkim_results: Sequence[DkimResult]
) -> dict:
    spf_result = []
    if spf is not None:
        scope = "helo" if spf.identity == "helo" else "mfrom"  # RFC 7489 SPFDomainScope
        spf_result = [spf.domain, scope, spf.result]
    return {
        "ip": source_ip,
        "from": dmarc.from_domain,
        "envelope_from": spf.domain if spf is not None and spf.identity != "helo" else "",
        "policy_domain": dmarc.record_domain,
        "p": dmarc.policy,
        "disposition": dmarc.disposition,
        "dkim": PASS if dmarc.dkim_aligned else FAIL,
        "spf": PASS if dmarc.spf_aligned else FAIL,
        "override": dmarc.override or (SAMPLED_OUT if dmarc.sampled_out else ""),
        "dkim_results": [[r.domain, r.selector, r.result] for r in dkim_results],
        "spf_result": spf_result,
    }


def _row(line: str) -> AggregateRow | None:
    """A record line as a row of count 1; None for a line cut short or not ours."""
    try:
        value = json.loads(line)
        return AggregateRow(
            source_ip=str(value["ip"]),
            header_from=str(value["from"]),
            envelope_from=str(value["envelope_from"]),
            policy_domain=str(value["policy_domain"]),
            policy=str(value["p"]),
            disposition=str(value["disposition"]),
            dkim=str(value["dkim"]),
            spf=str(value["spf"]),
            override=str(value["override"]),
            dkim_results=tuple(tuple(str(x) for x in r) for r in value["dkim_results"]),
            spf_result=tuple(str(x) for x in value["spf_result"]),
        )
    except (ValueError, KeyError, TypeError):
        return None
