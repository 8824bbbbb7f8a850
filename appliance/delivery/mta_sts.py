"""MTA-STS (RFC 8461): which MX hosts of a domain may take its mail, and over what TLS.

A domain that publishes a `_mta-sts` TXT record (its id read by
`Resolver.mta_sts_txt`) serves a policy at
https://mta-sts.<domain>/.well-known/mta-sts.txt. This module parses such a
policy (`parse_policy`), fetches it (`fetch_policy`), keeps it across
deliveries and restarts (`PolicyCache`), and tells the queue what a policy
means for a list of MX hosts (`apply_policy`).

What the queue does with a policy (RFC 8461 4, 5):

- "enforce": only the MX hosts the policy names are tried (4.1), each with
  STARTTLS and a certificate that chains to a trusted root and is valid for
  the MX host name as published, not the CNAME target (4.2:
  `verifying_context()`, the host name as SNI). A host that fails this is
  skipped for the next one (5.1 step 2), and a message that no host took
  is deferred, never bounced at once: the next attempt asks the DNS for the
  policy id again first, as 5.1 step 3 wants before anything fails for good.
- "testing": every MX host is tried as without a policy; a mismatch is only
  logged (5, where TLSRPT would report it).
- "none", or no policy: as if the domain had none (opportunistic TLS).

DANE comes first (RFC 8461 2): a host whose TLSA records apply
(`appliance.delivery.dane.dane_applies`) is authenticated by them, and no
MTA-STS check may turn a failed DANE check into a pass. Under "enforce" such
a host must still be one the policy names.

Fetching uses asyncio streams with the ssl module and a minimal HTTP/1.1 GET
rather than urllib in an executor: no thread waits out a stalled server, one
timeout covers connect, handshake and body, a redirect is simply an error
(3.3 forbids following one, which urllib does by default), and the address
to connect to can be given while SNI and the certificate check still use
mta-sts.<domain>. The policy is one small text file, so the client needs
only a status line, header fields, and a body by Content-Length, chunked, or
until the connection closes.

The cache is a JSON file written atomically (a temporary file renamed over
the old one): a policy is worth keeping across a restart, since an attacker
who blocks the fetch after a reboot would otherwise get opportunistic TLS
back (RFC 8461 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import dns.exception
import dns.name

from appliance.delivery.dns import DnsError, MxTarget, Resolver
from appliance.files import replace_file

log = logging.getLogger(__name__)

# RFC 8461 3.2: max_age is at most 31557600 seconds (a year); a larger value
# is taken as this.
MAX_AGE_LIMIT = 31_557_600
# RFC 8461 3.3's suggested caps: a policy is a few lines; one minute is its
# suggested timeout, shortened here because a delivery waits for the fetch.
MAX_POLICY_SIZE = 64 * 1024
FETCH_TIMEOUT = 15.0
# RFC 8461 3.3: refresh cached policies before they expire, once a day.
REFRESH_INTERVAL = 24 * 3600
# RFC 8461 3.3: after a failed fetch, wait five minutes or more before asking
# again for the same policy id, so a struggling policy host is not flooded.
FAILED_FETCH_BACKOFF = 300
# Domains kept in the cache; past this the ones expiring soonest go. Each is a
# few hundred bytes, and a small box mails far fewer domains than this.
MAX_CACHED_DOMAINS = 10_000
HTTPS_PORT = 443
POLICY_PATH = "/.well-known/mta-sts.txt"
# HTTP response head limits: a policy host has no reason to send more.
MAX_LINE = 8 * 1024
MAX_HEADER_FIELDS = 64
CACHE_FORMAT = 1


class PolicyError(Exception):
    """No usable policy: the fetch failed or what came back is not a policy."""


class InvalidPolicy(PolicyError):
    """The policy text breaks the grammar of RFC 8461 3.2."""


class FetchError(PolicyError):
    """The policy could not be fetched as RFC 8461 3.3 requires."""


class Mode(StrEnum):
    ENFORCE = "enforce"
    TESTING = "testing"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Policy:
    mode: Mode
    max_age: int  # seconds, at most MAX_AGE_LIMIT
    mx: tuple[str, ...]  # lower case: "mail.example.com" or "*.example.net"

    def allows(self, mx_host: str) -> bool:
        """Whether the policy names this MX host (RFC 8461 4.1).

        A pattern "*.example.com" stands for exactly one label in front of
        example.com: it matches mail.example.com, but neither example.com
        nor a.b.example.com. Case does not matter (RFC 4343).
        """
        host = mx_host.lower().removesuffix(".")
        return any(_pattern_matches(pattern, host) for pattern in self.mx)

    def to_text(self) -> str:
        """The policy in its own syntax, as the cache stores it."""
        lines = ["version: STSv1", f"mode: {self.mode}", f"max_age: {self.max_age}"]
        lines += [f"mx: {pattern}" for pattern in self.mx]
        return "\r\n".join(lines) + "\r\n"


def _pattern_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        label, dot, parent = host.partition(".")
        return bool(label) and bool(dot) and parent == pattern[2:]
    return host == pattern


# -- the policy grammar (RFC 8461 3.2) ---------------------------------------

# sts-policy-vchar: visible ASCII or any UTF-8 character beyond it.
_VCHAR = "\x21-\x7e\x80-\ud7ff\ue000-\U0010ffff"
# A field: a name, ":" *WSP, a value without leading or trailing space, then
# the *WSP the record allows before each line end. Names are case-sensitive
# (RFC 7405 %s), so "Mode" is an extension field, not the mode.
_FIELD = re.compile(
    rf"(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]{{0,31}}):[ \t]*"
    rf"(?P<value>[{_VCHAR}](?:[ {_VCHAR}]*[{_VCHAR}])?)[ \t]*"
)
_MAX_AGE = re.compile(r"[0-9]{1,10}")
# RFC 5321 4.1.2 Domain: letter-digit-hyphen labels, no hyphen at either end.
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_ONCE = ("version", "mode", "max_age")  # "required once" in the ABNF


def parse_policy(text: str) -> Policy:
    """The policy in text, or InvalidPolicy naming the first thing wrong with it.

    Strict as the ABNF of RFC 8461 3.2 is: each line one field, lines ended
    by LF or CRLF (the last one may have none), no blank lines; version,
    mode and max_age exactly once each, mx at least once unless the mode
    is none. Fields of other names are extensions and ignored once their
    syntax is checked.
    """
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the optional sts-policy-term after the last field
    if not lines:
        raise InvalidPolicy("empty policy")
    once: dict[str, str] = {}
    patterns: list[str] = []
    for number, line in enumerate(lines, 1):
        match = _FIELD.fullmatch(line.removesuffix("\r"))
        if match is None:
            raise InvalidPolicy(f"line {number}: not a 'name: value' field: {line[:80]!r}")
        name, value = match["name"], match["value"]
        if name == "mx":
            patterns.append(_mx_pattern(value, number))
        elif name in _ONCE:
            if name in once:
                raise InvalidPolicy(f"line {number}: {name} given a second time")
            once[name] = value
    for name in _ONCE:
        if name not in once:
            raise InvalidPolicy(f"no {name} field")
    if once["version"] != "STSv1":
        raise InvalidPolicy(f"version {once['version']!r}, not STSv1")
    try:
        mode = Mode(once["mode"])
    except ValueError:
        raise InvalidPolicy(f"mode {once['mode']!r}: not enforce, testing or none") from None
    if not _MAX_AGE.fullmatch(once["max_age"]):
        raise InvalidPolicy(f"max_age {once['max_age']!r}: not 1 to 10 digits")
    if not patterns and mode is not Mode.NONE:
        raise InvalidPolicy(f"mode {mode} without any mx field")
    return Policy(mode, min(int(once["max_age"]), MAX_AGE_LIMIT), tuple(patterns))


def _mx_pattern(value: str, number: int) -> str:
    """An mx value: ["*."] Domain, in lower case (RFC 8461 3.2, RFC 5321 4.1.2)."""
    pattern = value.lower()
    domain = pattern.removeprefix("*.")
    labels = domain.split(".")
    # RFC 1035 2.3.4: 63 octets a label, 255 a name on the wire (253 as text).
    if len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise InvalidPolicy(f"line {number}: mx {value!r} is not a domain or *.domain")
    return pattern


# -- fetching (RFC 8461 3.3) --------------------------------------------------


def policy_host(domain: str) -> str:
    """mta-sts.<domain>, in A-labels and lower case (RFC 8461 3.3, 3.2 for IDNs)."""
    try:
        name = dns.name.from_text(domain.strip(), origin=dns.name.root)
    except (dns.exception.DNSException, UnicodeError) as error:
        raise FetchError(f"{domain!r} is not a domain name ({error})") from None
    if name == dns.name.root:
        raise FetchError(f"{domain!r} is not a domain name")
    return "mta-sts." + name.to_text(omit_final_dot=True).lower()


def verifying_context(cafile: str | os.PathLike | None = None) -> ssl.SSLContext:
    """TLS that checks the certificate chain and the host name.

    For the policy host (RFC 8461 3.3) and for MX hosts under an "enforce"
    policy (4.2): trusted roots (the system's, or only those in cafile), and
    a DNS name in the subject alternative names, the common name not
    consulted (4.2 asks for a SAN). TLS 1.2 at least (RFC 8996).
    """
    context = ssl.create_default_context(cafile=cafile)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.hostname_checks_common_name = False
    return context


async def fetch_policy(
    domain: str,
    timeout: float = FETCH_TIMEOUT,
    *,
    tls: ssl.SSLContext | None = None,
    addresses: Sequence[str] = (),
    port: int = HTTPS_PORT,
) -> Policy:
    """GET https://mta-sts.<domain>/.well-known/mta-sts.txt and parse it.

    tls: the context checking the policy host's certificate (default
    `verifying_context()`); the certificate must be valid for mta-sts.<domain>
    whatever address is connected to. addresses: where to connect, in order;
    empty asks the system resolver for the policy host's addresses. Anything
    but a 200 with Content-Type text/plain and at most MAX_POLICY_SIZE bytes
    within timeout seconds raises FetchError; a bad policy InvalidPolicy.
    """
    host = policy_host(domain)
    context = tls if tls is not None else verifying_context()
    try:
        async with asyncio.timeout(timeout):
            body = await _get(host, tuple(addresses) or (host,), port, context)
    except TimeoutError:
        raise FetchError(f"{host}: no policy within {timeout:g} s") from None
    except (OSError, EOFError) as error:  # ssl.SSLError is an OSError
        raise FetchError(f"{host}: {_describe(error)}") from None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidPolicy(f"{host}: policy is not UTF-8 ({error})") from None
    return parse_policy(text)


Fetch = Callable[[str], Awaitable[Policy]]


def resolving_fetcher(
    resolver: Resolver,
    tls: ssl.SSLContext | None = None,
    timeout: float = FETCH_TIMEOUT,
    port: int = HTTPS_PORT,
) -> Fetch:
    """fetch_policy with the policy host's addresses from the appliance's resolver.

    The service's [resolver] nameservers answer, as for every other lookup
    of the queue, rather than the system's; a failed lookup is a FetchError.
    """

    async def fetch(domain: str) -> Policy:
        host = policy_host(domain)
        try:
            addresses = await resolver.addresses(host)
        except DnsError as error:
            raise FetchError(f"{host}: {error}") from None
        return await fetch_policy(domain, timeout, tls=tls, addresses=addresses, port=port)

    return fetch


async def _get(host: str, targets: Sequence[str], port: int, context: ssl.SSLContext) -> bytes:
    reader, writer = await _connect(host, targets, port, context)
    try:
        writer.write(_request(host))
        await writer.drain()
        status, fields = await _read_head(reader)
        _check_head(host, status, fields)
        return await _read_body(reader, fields)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1):  # a TLS close need not be waited for long
                await writer.wait_closed()


async def _connect(
    host: str, targets: Sequence[str], port: int, context: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to the first address that takes one; SNI and the check use host."""
    failure: OSError | None = None
    for target in targets:
        try:
            return await asyncio.open_connection(
                target, port, ssl=context, server_hostname=host, limit=MAX_LINE
            )
        except OSError as error:
            log.info("mta-sts connect-failed host=%s address=%s error=%r", host, target, error)
            failure = error
    raise failure or OSError(f"no address for {host}")


def _request(host: str) -> bytes:
    # HTTP/1.1 with Connection: close, so the body may also end with the connection.
    return (
        f"GET {POLICY_PATH} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Accept: text/plain\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode("ascii")


_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 5.6.2


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, list[str]]]:
    """The status code and the header fields, names in lower case (RFC 9112 2-5)."""
    line = await _read_line(reader)
    status = _STATUS_LINE.fullmatch(line)
    if status is None:
        raise FetchError(f"not an HTTP/1.x status line: {line[:80]!r}")
    fields: dict[str, list[str]] = {}
    for _ in range(MAX_HEADER_FIELDS + 1):
        line = await _read_line(reader)
        if not line:
            return int(status[1]), fields
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name):
            # A folded line (RFC 9112 5.2: obsolete) lands here too.
            raise FetchError(f"malformed header field: {line[:80]!r}")
        fields.setdefault(name.decode("ascii").lower(), []).append(
            value.strip(b" \t").decode("latin-1")
        )
    raise FetchError(f"more than {MAX_HEADER_FIELDS} header fields")


def _check_head(host: str, status: int, fields: dict[str, list[str]]) -> None:
    if 300 <= status < 400:
        # RFC 8461 3.3: a redirect is not followed; the policy must be here.
        raise FetchError(f"{host}: redirect ({status}) not followed")
    if status != 200:
        raise FetchError(f"{host}: HTTP status {status}")
    media_types = [value.split(";")[0].strip().lower() for value in fields.get("content-type", [])]
    if media_types != ["text/plain"]:
        # RFC 8461 3.3: the policy is served as text/plain.
        raise FetchError(f"{host}: Content-Type {fields.get('content-type')}, not text/plain")


async def _read_body(reader: asyncio.StreamReader, fields: dict[str, list[str]]) -> bytes:
    """The body by Transfer-Encoding, else Content-Length, else until close (RFC 9112 6.3)."""
    if "transfer-encoding" in fields:
        codings = [
            coding.strip().lower()
            for value in fields["transfer-encoding"]
            for coding in value.split(",")
            if coding.strip()
        ]
        if codings != ["chunked"]:
            raise FetchError(f"unsupported Transfer-Encoding {fields['transfer-encoding']}")
        return await _read_chunked(reader)
    if "content-length" in fields:
        values = {v.strip() for value in fields["content-length"] for v in value.split(",")}
        if len(values) != 1 or not re.fullmatch(r"[0-9]{1,10}", next(iter(values))):
            raise FetchError(f"bad Content-Length {fields['content-length']}")
        length = int(values.pop())
        if length > MAX_POLICY_SIZE:
            raise FetchError(f"policy of {length} bytes, over {MAX_POLICY_SIZE}")
        return await _read_exactly(reader, length)
    return await _read_to_close(reader)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body (RFC 9112 7.1); chunk extensions and trailers are read and dropped."""
    body = bytearray()
    # Each chunk but the last adds a byte at least: the loop ends by the size cap.
    for _ in range(MAX_POLICY_SIZE + 1):
        line = await _read_line(reader)
        size = line.split(b";", 1)[0].strip(b" \t")
        if not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", size):
            raise FetchError(f"malformed chunk size line: {line[:80]!r}")
        if int(size, 16) == 0:
            break
        if len(body) + int(size, 16) > MAX_POLICY_SIZE:
            raise FetchError(f"policy over {MAX_POLICY_SIZE} bytes")
        body += await _read_exactly(reader, int(size, 16))
        if await _read_line(reader):
            raise FetchError("chunk data longer than its size")
    for _ in range(MAX_HEADER_FIELDS + 1):
        if not await _read_line(reader):  # the trailer section ends with an empty line
            return bytes(body)
    raise FetchError(f"more than {MAX_HEADER_FIELDS} trailer fields")


async def _read_to_close(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while chunk := await reader.read(MAX_POLICY_SIZE + 1 - len(body)):
        body += chunk
        if len(body) > MAX_POLICY_SIZE:
            raise FetchError(f"policy over {MAX_POLICY_SIZE} bytes")
    return bytes(body)


async def _read_line(reader: asyncio.StreamReader) -> bytes:
    """One line without its CRLF (a bare LF accepted, RFC 9112 2.2)."""
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        raise FetchError("connection closed in the middle of the response") from None
    except asyncio.LimitOverrunError:
        raise FetchError(f"response line over {MAX_LINE} bytes") from None
    return line.removesuffix(b"\n").removesuffix(b"\r")


async def _read_exactly(reader: asyncio.StreamReader, size: int) -> bytes:
    try:
        return await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise FetchError("connection closed in the middle of the body") from None


def _describe(error: BaseException) -> str:
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate not accepted: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error.reason or error}"
    return str(error) or type(error).__name__


# -- the cache (RFC 8461 3.3, 5.1) ------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedPolicy:
    policy_id: str  # the TXT record's id when the policy was fetched
    policy: Policy
    fetched: float  # time.time() of the last successful fetch

    @property
    def expires(self) -> float:
        # RFC 8461 3.2: max_age counts from the last fetch.
        return self.fetched + self.policy.max_age


class PolicyCache:
    """Policies by domain, refetched as RFC 8461 3.3 and 5.1 say, kept in a JSON file.

    One per service. fetch(domain) returns a Policy or raises PolicyError
    (`resolving_fetcher` in the service, a fake in tests). path: the JSON
    file, or None to keep policies in memory only.
    """

    def __init__(
        self, fetch: Fetch, path: Path | None = None, max_domains: int = MAX_CACHED_DOMAINS
    ):
        self._fetch = fetch
        self._path = path
        self._max_domains = max_domains
        self._entries: dict[str, CachedPolicy] = self._load() if path is not None else {}
        # domain -> (policy id, no new attempt before): failed fetches, in memory.
        self._failures: dict[str, tuple[str, float]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._waiting: dict[str, int] = {}
        self._saving = asyncio.Lock()

    def get(self, domain: str) -> CachedPolicy | None:
        """The cached entry, expired or not, as it stands."""
        return self._entries.get(_key(domain))

    async def policy_for(
        self, domain: str, resolver_txt_id: str | None, now: float
    ) -> Policy | None:
        """The policy that applies to mail for domain now, or None.

        resolver_txt_id: the id of the domain's _mta-sts TXT record
        (`Resolver.mta_sts_txt`), None when it has no valid one. RFC 8461:
        - a new id, or a cached policy due for its daily refresh (3.3), is
          fetched; a failed fetch is not retried for the same id within
          FAILED_FETCH_BACKOFF;
        - when nothing can be fetched, or the TXT record is gone, an
          unexpired cached policy still applies (3.3), an expired one is
          dropped;
        - no TXT record and nothing cached: None.
        The returned policy may have mode none: `apply_policy` ignores it.
        """
        domain = _key(domain)
        async with self._lock(domain):
            cached = self._unexpired(domain, now)
            changed = cached is None and domain in self._entries
            if changed:
                del self._entries[domain]
            policy = None
            # No TXT record: no live policy to fetch (3.3); what is cached stands.
            if resolver_txt_id is not None and self._should_fetch(
                domain, cached, resolver_txt_id, now
            ):
                policy = await self._try_fetch(domain, resolver_txt_id, now)
            if policy is not None:
                self._store(domain, CachedPolicy(resolver_txt_id, policy, now))
                changed = True
            if changed:
                await self._save()
            if policy is not None:
                return policy
            return cached.policy if cached is not None else None

    def _unexpired(self, domain: str, now: float) -> CachedPolicy | None:
        cached = self._entries.get(domain)
        return cached if cached is not None and now < cached.expires else None

    def _should_fetch(
        self, domain: str, cached: CachedPolicy | None, txt_id: str, now: float
    ) -> bool:
        fresh = cached is not None and now - cached.fetched < REFRESH_INTERVAL
        if fresh and cached.policy_id == txt_id:
            return False  # the same policy, fetched within the day
        failure = self._failures.get(domain)
        return failure is None or failure[0] != txt_id or now >= failure[1]

    async def _try_fetch(self, domain: str, txt_id: str, now: float) -> Policy | None:
        try:
            policy = await self._fetch(domain)
        except PolicyError as error:
            self._failures[domain] = (txt_id, now + FAILED_FETCH_BACKOFF)
            self._forget_old_failures(now)
            log.info("mta-sts fetch-failed domain=%s id=%s error=%s", domain, txt_id, error)
            return None
        self._failures.pop(domain, None)
        log.info(
            "mta-sts fetched domain=%s id=%s mode=%s max_age=%d mx=%s",
            domain,
            txt_id,
            policy.mode,
            policy.max_age,
            ",".join(policy.mx) or "-",
        )
        return policy

    def _forget_old_failures(self, now: float) -> None:
        if len(self._failures) > self._max_domains:
            self._failures = {d: f for d, f in self._failures.items() if f[1] > now}

    def _store(self, domain: str, entry: CachedPolicy) -> None:
        self._entries[domain] = entry
        if len(self._entries) > self._max_domains:
            by_expiry = sorted(self._entries, key=lambda d: self._entries[d].expires)
            for old in by_expiry[: len(self._entries) - self._max_domains]:
                del self._entries[old]

    @contextlib.asynccontextmanager
    async def _lock(self, domain: str):
        """One decision per domain at a time: messages to a domain fetch its policy once."""
        lock = self._locks.setdefault(domain, asyncio.Lock())
        self._waiting[domain] = self._waiting.get(domain, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._waiting[domain] -= 1
            if not self._waiting[domain]:
                del self._waiting[domain], self._locks[domain]

    # -- the file ------------------------------------------------------------

    def _load(self) -> dict[str, CachedPolicy]:
        assert self._path is not None
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
            if data.get("format") != CACHE_FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            stored = data["policies"].items()
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as error:
            # Only a cache: policies are fetched again as mail goes out.
            log.warning("mta-sts cache-unreadable path=%s error=%r", self._path, error)
            return {}
        entries = {}
        for domain, item in stored:
            try:
                entry = CachedPolicy(
                    str(item["id"]), parse_policy(item["policy"]), float(item["fetched"])
                )
            except (PolicyError, KeyError, TypeError, ValueError) as error:
                log.warning("mta-sts cache-entry-dropped domain=%s error=%r", domain, error)
                continue
            entries[_key(domain)] = entry
        return entries

    async def _save(self) -> None:
        if self._path is None:
            return
        async with self._saving:  # one writer: the last snapshot taken is the one left
            text = json.dumps(
                {
                    "format": CACHE_FORMAT,
                    "policies": {
                        domain: {
                            "id": e.policy_id,
                            "fetched": e.fetched,
                            "policy": e.policy.to_text(),
                        }
                        for domain, e in self._entries.items()
                    },
                },
                indent=1,
                sort_keys=True,
            )
            try:
                await asyncio.to_thread(replace_file, self._path, text.encode("utf-8"))
            except OSError as error:
                log.warning("mta-sts cache-not-saved path=%s error=%r", self._path, error)


def _key(domain: str) -> str:
    return domain.strip().lower().removesuffix(".")


# -- what a policy means for the MX hosts (RFC 8461 4, 5) -------------------


@dataclass(frozen=True, slots=True)
class MxPlan:
    """The MX hosts to try under a domain's policy, and how."""

    targets: tuple[MxTarget, ...]  # in the order given; under enforce, only those named
    # Each needs STARTTLS with a certificate valid for its host name, checked
    # by verifying_context() (RFC 8461 4.2); a host that fails is skipped.
    verify_tls: bool
    unlisted: tuple[str, ...]  # MX hosts the policy does not name


def apply_policy(policy: Policy | None, targets: Sequence[MxTarget], domain: str = "") -> MxPlan:
    """What a policy (from PolicyCache.policy_for) means for a domain's MX hosts.

    enforce: only the hosts it names, with verified TLS; testing: all
    hosts as usual, the unnamed ones logged; none or no policy: all hosts
    as usual. An enforce plan with no targets left means: defer the mail.
    """
    if policy is None or policy.mode is Mode.NONE:
        return MxPlan(tuple(targets), False, ())
    unlisted = tuple(t.host for t in targets if not policy.allows(t.host))
    for host in unlisted:
        log.info("mta-sts mx-not-in-policy mode=%s domain=%s host=%s", policy.mode, domain, host)
    if policy.mode is Mode.TESTING:
        return MxPlan(tuple(targets), False, unlisted)
    allowed = tuple(t for t in targets if policy.allows(t.host))
    return MxPlan(allowed, True, unlisted)
