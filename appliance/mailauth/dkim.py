"""DKIM signing keys per domain and the signatures made with them (RFC 6376, RFC 8463).

Keys. Every domain gets two key pairs made together: rsa-sha256 with 2048 bits
(RFC 8301 3.2), which every verifier knows, and ed25519-sha256 (RFC 8463), which
is short and fast; a verifier that does not know one algorithm still checks the
other signature. They live in the data directory:

    DATA/dkim/<domain>/<selector>.<algorithm>.key      e.g. a20261125r.rsa-sha256.key

the directories mode 0700, the files 0600. An RSA key is PKCS#1 PEM ("BEGIN RSA
PRIVATE KEY"), the form dkimpy parses; an ed25519 key is the base64 of its
32-byte seed (RFC 8032 5.1.5), the form dkimpy hands to PyNaCl. A key file is
written to a temporary name, synced, then linked to its final name: the link
fails rather than replace a key that may already be published in DNS.

Selectors. `a` + the UTC creation date + `r` (RSA) or `e` (ed25519), with a
two-digit counter when a domain rotates more than once a day: a20261125r,
a20261125e, then a20261125r02, a20261125e02. Within one algorithm the names
sort by creation. A new pair is never dated before the newest existing one,
so a clock set back (a box booting before NTP) still makes the newest name.

The file names are the index. There is no separate list to keep in step with
the files: the newest selector of each algorithm signs, older ones are
retired and stay (and stay in the DNS records to publish) so that mail already
signed with them keeps verifying, until `remove_retired` deletes them. A
selector was retired on the creation date of its successor. Linking a key file
commits it; a crash leaves at most a dot-named temporary file, which is ignored.

Signing. `Signer.sign` returns one DKIM-Signature field per algorithm, to be
prepended to the message: relaxed/relaxed, a t= timestamp, no l= (RFC 6376
8.2: a length limit lets anyone append to the body), and the fields in
SIGNED_FIELDS that the message has, with From once more than it occurs so that
no second From can be added (RFC 6376 5.4.2). dkimpy parses the message once
for both signatures; the caller's bytes (or memoryview) are not copied here.
Signing is CPU work: dkimpy does RSA in pure Python, about 10 ms per message
on a small CPU (ed25519 about 1 ms), so run it in the executor, not on the loop.

What the caller must handle: `SigningError` (a malformed header section, no
From or more than one, RFC 5322 3.6) and its subclass `NoKeyError` (the domain
has no usable key): send unsigned or refuse, a policy decision above this
module. `make_keys`, `rotate`, `remove_retired` and `dns_records` raise
`appliance.addresses.AddressError` (a ValueError) for a name that is not a
domain, and OSError when the data directory cannot be written.
"""

from __future__ import annotations

import base64
import datetime
import functools
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import dkim
import dkim.crypto
import nacl.exceptions
import nacl.signing
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from appliance.addresses import AddressError, normalize_domain
from appliance.files import sync_directory

log = logging.getLogger(__name__)

RSA = "rsa-sha256"
ED25519 = "ed25519-sha256"
# Also the order of the signatures in a message: RSA on top, for verifiers
# that check only the first signature.
ALGORITHMS = (RSA, ED25519)

RSA_BITS = 2048  # RFC 8301 3.2: at least 1024, SHOULD 2048
# k= of the key record, RFC 6376 3.6.1 and RFC 8463 4.2.
_KEY_TYPES = {RSA: "rsa", ED25519: "ed25519"}
_LETTERS = {RSA: "r", ED25519: "e"}
_ALGORITHM_OF_LETTER = {letter: algorithm for algorithm, letter in _LETTERS.items()}

# Rotations of one domain in one day before rotate() refuses: the counter
# has two digits so that names keep sorting.
MAX_SAME_DAY = 99
# A suggested keep_days for remove_retired: longer than a message waits in
# an outbound queue (5 days in Postfix), with room for late re-verification.
RETIRED_KEEP_DAYS = 30

# RFC 1035 3.3: a TXT record is a sequence of strings of at most 255 octets.
TXT_STRING_MAX = 255

# Signed when present (RFC 6376 5.4.1 recommends these). Fields a relay or
# mailing list adds (Received, List-*) are left out so that they can be added.
SIGNED_FIELDS = (
    b"from",
    b"to",
    b"cc",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"in-reply-to",
    b"references",
    b"mime-version",
    b"content-type",
    b"content-transfer-encoding",
)
# Signed once more than they occur, so that adding one breaks the signature.
OVERSIGNED_FIELDS = (b"from",)

_SELECTOR = re.compile(r"^a(?P<date>\d{8})(?P<letter>[re])(?P<sequence>\d{2})?$")
_FIRST_LINE_END = re.compile(rb"\r?\n")


class SigningError(Exception):
    """The message cannot be signed; the text says why."""


class NoKeyError(SigningError):
    """The domain has no usable signing key."""


@dataclass(slots=True, frozen=True, order=True)
class Selector:
    """One key pair of a domain. Ordered by creation."""

    created: datetime.date
    sequence: int  # 1 for the first pair made that day
    algorithm: str

    @property
    def name(self) -> str:
        counter = f"{self.sequence:02d}" if self.sequence > 1 else ""
        return f"a{self.created:%Y%m%d}{_LETTERS[self.algorithm]}{counter}"

    @property
    def file_name(self) -> str:
        return f"{self.name}.{self.algorithm}.key"

    @classmethod
    def from_file_name(cls, file_name: str) -> Selector | None:
        """The selector a key file is named for, or None for any other file."""
        name, _, rest = file_name.partition(".")
        match = _SELECTOR.match(name)
        if match is None:
            return None
        algorithm = _ALGORITHM_OF_LETTER[match["letter"]]
        if rest != f"{algorithm}.key":
            return None
        try:
            created = datetime.datetime.strptime(match["date"], "%Y%m%d").date()
        except ValueError:
            return None
        sequence = int(match["sequence"] or "1")
        if match["sequence"] and sequence < 2:
            return None  # "00" and "01" are never written: one name per selector
        return cls(created, sequence, algorithm)


class DnsRecord(NamedTuple):
    """A TXT record to publish: its owner name (no final dot) and its value."""

    name: str
    value: str

    @property
    def strings(self) -> tuple[str, ...]:
        """The value cut into strings a TXT record can hold; a resolver joins
        them back with nothing in between (RFC 6376 3.6.2.2)."""
        value = self.value
        return tuple(
            value[i : i + TXT_STRING_MAX] for i in range(0, len(value), TXT_STRING_MAX)
        ) or ("",)

    @property
    def zone_line(self) -> str:
        """The record as a line of a zone file (RFC 1035 5.1); values hold no quotes."""
        quoted = " ".join(f'"{string}"' for string in self.strings)
        return f"{self.name}. IN TXT {quoted}"


# Keys


def key_directory(data_dir: Path, domain: str) -> Path:
    return Path(data_dir) / "dkim" / normalize_domain(domain)


def selectors(data_dir: Path, domain: str) -> list[Selector]:
    """Every key pair the domain has, oldest first."""
    directory = key_directory(data_dir, domain)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = (Selector.from_file_name(name) for name in names)
    return sorted(selector for selector in found if selector is not None)


def active_selectors(data_dir: Path, domain: str) -> list[Selector]:
    """The selectors that sign: the newest of each algorithm."""
    return _newest_per_algorithm(selectors(data_dir, domain))


def make_keys(data_dir: Path, domain: str, *, today: datetime.date | None = None) -> list[Selector]:
    """The active selectors, RSA then ed25519, making a key for any algorithm that has none."""
    domain = normalize_domain(domain)
    existing = selectors(data_dir, domain)
    have = {selector.algorithm for selector in existing}
    missing = [algorithm for algorithm in ALGORITHMS if algorithm not in have]
    if missing:
        _make_pair(data_dir, domain, existing, missing, today)
    return active_selectors(data_dir, domain)


def rotate(data_dir: Path, domain: str, *, today: datetime.date | None = None) -> list[Selector]:
    """Make a new pair that signs from now on; the old pairs stay to verify."""
    domain = normalize_domain(domain)
    _make_pair(data_dir, domain, selectors(data_dir, domain), ALGORITHMS, today)
    return active_selectors(data_dir, domain)


def remove_retired(
    data_dir: Path, domain: str, keep_days: int, *, today: datetime.date | None = None
) -> list[Selector]:
    """Delete the keys retired at least keep_days ago; the removed selectors.

    Their DNS records can go once this returns them. Active keys are never removed.
    """
    domain = normalize_domain(domain)
    today = today or _utc_today()
    directory = key_directory(data_dir, domain)
    removed = []
    for algorithm in ALGORITHMS:
        chain = [s for s in selectors(data_dir, domain) if s.algorithm == algorithm]
        # Each selector was retired the day its successor was made.
        for selector, successor in zip(chain, chain[1:], strict=False):
            if (today - successor.created).days >= keep_days:
                (directory / selector.file_name).unlink(missing_ok=True)
                removed.append(selector)
    if removed:
        sync_directory(directory)
        names = ",".join(selector.name for selector in removed)
        log.info("dkim keys removed domain=%s selectors=%s", domain, names)
    return sorted(removed)


def dns_records(data_dir: Path, domain: str) -> list[DnsRecord]:
    """The TXT records to publish for every key the domain has, oldest first."""
    domain = normalize_domain(domain)
    directory = key_directory(data_dir, domain)
    records = []
    for selector in selectors(data_dir, domain):
        key = (directory / selector.file_name).read_bytes()
        public = base64.b64encode(_public_key(selector.algorithm, key)).decode("ascii")
        value = f"v=DKIM1; k={_KEY_TYPES[selector.algorithm]}; p={public}"
        records.append(DnsRecord(f"{selector.name}._domainkey.{domain}", value))
    return records


def _make_pair(
    data_dir: Path,
    domain: str,
    existing: list[Selector],
    algorithms: tuple[str, ...] | list[str],
    today: datetime.date | None,
) -> None:
    created, sequence = _next_name(existing, today or _utc_today())
    directory = _private_directory(data_dir, domain)
    made = []
    for algorithm in algorithms:
        selector = Selector(created, sequence, algorithm)
        _write_new_file(directory / selector.file_name, _new_private_key(algorithm))
        made.append(selector.name)
    sync_directory(directory)
    sync_directory(directory.parent)  # in case the domain's directory is new
    log.info("dkim keys made domain=%s selectors=%s", domain, ",".join(made))


def _next_name(existing: list[Selector], today: datetime.date) -> tuple[datetime.date, int]:
    """Date and counter of a new pair: after every existing one, even if the clock went back."""
    if not existing:
        return today, 1
    newest = max(existing)
    if today > newest.created:
        return today, 1
    if newest.sequence >= MAX_SAME_DAY:
        raise OSError(f"{MAX_SAME_DAY} DKIM key pairs made on {newest.created}; try tomorrow")
    return newest.created, newest.sequence + 1


def _newest_per_algorithm(found: list[Selector]) -> list[Selector]:
    newest: dict[str, Selector] = {}
    for selector in sorted(found):
        newest[selector.algorithm] = selector
    return [newest[algorithm] for algorithm in ALGORITHMS if algorithm in newest]


def _new_private_key(algorithm: str) -> bytes:
    if algorithm == RSA:
        key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, what dkimpy parses
            serialization.NoEncryption(),
        )
    seed = bytes(nacl.signing.SigningKey.generate())
    return base64.b64encode(seed) + b"\n"


def _public_key(algorithm: str, private: bytes) -> bytes:
    """The p= bytes: RSA as SubjectPublicKeyInfo DER (what verifiers and
    opendkim-genkey use), ed25519 as the raw 32 bytes (RFC 8463 4.2)."""
    if algorithm == RSA:
        key = serialization.load_pem_private_key(private, password=None)
        return key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    seed = base64.b64decode(private.strip(), validate=True)
    return bytes(nacl.signing.SigningKey(seed).verify_key)


def _private_directory(data_dir: Path, domain: str) -> Path:
    directory = key_directory(data_dir, domain)
    for path in (directory.parent, directory):
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)  # whatever the umask or an older mode was
    return directory


def _write_new_file(path: Path, data: bytes) -> None:
    """Write a 0600 file that did not exist, whole or not at all."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # A link, unlike a rename, fails if the name exists: two rotations at
        # once cannot replace a key that one of them may have published.
        os.link(temporary, path)
    finally:
        os.unlink(temporary)


def _utc_today() -> datetime.date:
    return datetime.datetime.now(datetime.UTC).date()


# Signing


@dataclass(slots=True, frozen=True)
class _SigningKey:
    selector: bytes
    algorithm: bytes
    private: bytes  # the file's bytes, as dkimpy takes them


@dataclass(slots=True, frozen=True)
class _DomainKeys:
    file_names: frozenset[str]  # what the directory held when these were read
    keys: tuple[_SigningKey, ...]


class Signer:
    """Signs outgoing mail with the active keys under a data directory.

    Keys are read once per domain and kept. Each sign() lists the domain's
    key directory (a few microseconds), so a rotation made by the CLI in
    another process is picked up with the next message; reload() drops
    everything read so far. Safe to call from several executor threads.
    """

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = Path(data_dir)
        self._domains: dict[str, _DomainKeys] = {}

    def reload(self) -> None:
        self._domains = {}

    def sign(self, message: bytes | memoryview, domain: str) -> bytes:
        """The DKIM-Signature fields to prepend to message, one per algorithm.

        They end in the message's own line ending (CRLF, or LF if its first
        line ends in a bare LF). Raises SigningError, or NoKeyError.
        """
        try:
            domain = normalize_domain(domain)
        except AddressError as error:
            raise NoKeyError(f"no DKIM key: {error}") from None
        keys = self._keys(domain)
        parsed = _parse(message)
        signed_fields = _fields_to_sign(parsed.headers)
        fields = []
        for key in keys:
            try:
                fields.append(
                    parsed.sign(
                        key.selector,
                        domain.encode("ascii"),
                        key.private,
                        signature_algorithm=key.algorithm,
                        canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=signed_fields,
                        length=False,
                    )
                )
            except dkim.DKIMException as error:
                raise SigningError(f"cannot sign: {error}") from None
        return b"".join(fields)

    def _keys(self, domain: str) -> tuple[_SigningKey, ...]:
        directory = self._data_dir / "dkim" / domain
        try:
            file_names = frozenset(os.listdir(directory))
        except FileNotFoundError:
            file_names = frozenset()
        except OSError as error:
            raise NoKeyError(f"DKIM keys of {domain} unreadable: {error}") from None
        cached = self._domains.get(domain)
        if cached is None or cached.file_names != file_names:
            cached = _DomainKeys(file_names, _load_active_keys(directory, file_names, domain))
            self._domains[domain] = cached
        if not cached.keys:
            raise NoKeyError(f"no DKIM key for {domain}")
        return cached.keys


def _rsa_sign_with_openssl(hashed, private_key: dict) -> bytes:
    """RSASSA-PKCS1-v1_5 (RFC 8017 8.2) of a SHA-256 digest, done by OpenSSL.

    dkimpy does the RSA arithmetic in Python, about 10 ms a message, which
    would cap a small box at a hundred signed messages a second; OpenSSL
    (through cryptography) takes under one. dkimpy still does everything
    else: canonicalization, the hashes, the header field."""
    digest = hashed.digest()
    if len(digest) != 32:  # not SHA-256 (rsa-sha1, which we never sign with): as dkimpy does
        return _python_rsa_sign(hashed, private_key)
    key = _openssl_key(
        private_key["modulus"],
        private_key["publicExponent"],
        private_key["privateExponent"],
        private_key["prime1"],
        private_key["prime2"],
        private_key["exponent1"],
        private_key["exponent2"],
        private_key["coefficient"],
    )
    return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


@functools.lru_cache(maxsize=64)
def _openssl_key(n: int, e: int, d: int, p: int, q: int, dmp1: int, dmq1: int, iqmp: int):
    public = rsa.RSAPublicNumbers(e, n)
    return rsa.RSAPrivateNumbers(p, q, d, dmp1, dmq1, iqmp, public).private_key()


# The name dkimpy's DKIM.sign() looks up when it signs with RSA.
_python_rsa_sign = dkim.RSASSA_PKCS1_v1_5_sign
dkim.RSASSA_PKCS1_v1_5_sign = _rsa_sign_with_openssl


@functools.cache
def signer_for(data_dir: Path) -> Signer:
    """The one Signer of a data directory, made when first needed."""
    return Signer(data_dir)


def _load_active_keys(
    directory: Path, file_names: frozenset[str], domain: str
) -> tuple[_SigningKey, ...]:
    found = (Selector.from_file_name(name) for name in file_names)
    keys = []
    for selector in _newest_per_algorithm([s for s in found if s is not None]):
        try:
            private = (directory / selector.file_name).read_bytes()
            _check_private_key(selector.algorithm, private)
        except (OSError, ValueError, dkim.DKIMException, nacl.exceptions.CryptoError) as error:
            # One unusable key must not stop the other algorithm from signing.
            log.error(
                "dkim key unusable domain=%s selector=%s error=%s", domain, selector.name, error
            )
            continue
        keys.append(_SigningKey(selector.name.encode(), selector.algorithm.encode(), private))
    log.info(
        "dkim keys loaded domain=%s selectors=%s",
        domain,
        ",".join(key.selector.decode() for key in keys) or "-",
    )
    return tuple(keys)


def _check_private_key(algorithm: str, private: bytes) -> None:
    """Raise if dkimpy could not sign with this key, so that it fails at load, not per message."""
    if algorithm == RSA:
        dkim.crypto.parse_pem_private_key(private)
    else:
        nacl.signing.SigningKey(base64.b64decode(private.strip(), validate=True))


def _parse(message: bytes | memoryview) -> dkim.DKIM:
    if len(message) and message[0] in b" \t":
        # dkimpy would fail on a continuation line with no field before it.
        raise SigningError("cannot sign: the message begins with a folded line")
    first_line_end = _FIRST_LINE_END.search(message)
    line_end = b"\n" if first_line_end and first_line_end.group() == b"\n" else b"\r\n"
    try:
        return dkim.DKIM(message, linesep=line_end)
    except dkim.DKIMException as error:
        raise SigningError(f"cannot sign: {error}") from None


def _fields_to_sign(headers: list[list[bytes]]) -> list[bytes]:
    names = [name.lower() for name, _value in headers]
    from_count = names.count(b"from")
    if from_count != 1:
        # RFC 5322 3.6: exactly one From; DMARC has no author domain otherwise.
        raise SigningError(f"cannot sign: the message has {from_count} From fields, not one")
    signed = [name for name in names if name in SIGNED_FIELDS]
    return signed + [name for name in OVERSIGNED_FIELDS if name in names]
