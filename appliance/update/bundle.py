"""Update bundles: a signed manifest, then the images it describes.

Layout (all integers big-endian):

    offset  size  field
    0       8     magic b"APLBNDL\\n"
    8       2     format version (1)
    10      4     manifest length n (at most MANIFEST_LIMIT)
    14      n     manifest: canonical JSON (UTF-8, sorted keys, no spaces)
    14+n    8     key id: first 8 bytes of SHA-256 of the signer's raw public key
    22+n    64    Ed25519 signature (RFC 8032) over bytes 0 .. 14+n (magic to manifest)
    86+n    ...   the payload: each part of manifest["payload"] in order, back to back

The manifest:

    {"format": 1, "product": "appliance", "board": "x86_64",
     "version": "0.2.0", "build_date": "2026-01-31T12:00:00Z",
     "min_version": "0.1.0",             # the box must run at least this
     "payload": [{"name": "rootfs", "size": 123, "sha256": "<hex>"},
                 {"name": "vmlinuz", ...}, {"name": "initrd.img", ...}],
     "keys": {"add": ["<raw public key hex>"], "revoke": ["<key id>"]}}

The first part is the root filesystem image, written to the inactive slot;
the others are that slot's boot files, written to the EFI system partition.
"keys" is optional: the rotation the box applies once the bundle installed.

Verification order (what RAUC learned from CVE-2020-25860): only the fixed
header and the signature block are looked at before the signature is checked
with a trusted key chosen by the key id; no manifest field is read before
that. Each part is then hashed as its bytes pass on their way to where they
are written, so what is checked is what is written: never a file that was
checked earlier and could have changed since. A part whose hash differs, a
payload that ends early (truncated) or goes on after the last part (padded)
is refused. BundleReader does this on bytes, without any I/O: the installer
feeds it whatever it reads, from a file, a download or an upload.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.update import keys

MAGIC = b"APLBNDL\n"
FORMAT_VERSION = 1
HEADER = struct.Struct(">8sHI")
SIGNATURE_SIZE = 64
SIGNATURE_BLOCK = keys.KEY_ID_SIZE + SIGNATURE_SIZE
# A manifest is a few hundred bytes; this bounds what is buffered before the
# signature is checked, whatever a header claims.
MANIFEST_LIMIT = 64 * 1024
ROOTFS = "rootfs"
# Part names become file names on the EFI system partition.
PART_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION = re.compile(r"\d{1,9}(\.\d{1,9}){0,3}")
_VERSION_LENGTH = 4  # "1.2" compares as 1.2.0.0


class BundleError(ValueError):
    """Why a bundle is refused, in one line for the owner."""


def version_key(text: str) -> tuple[int, ...]:
    """Dotted numbers, compared number by number: 0.10 is newer than 0.9."""
    if not isinstance(text, str) or not VERSION.fullmatch(text):
        raise BundleError(f"not a version: {text!r} (expected numbers like 1.2.3)")
    numbers = tuple(int(n) for n in text.split("."))
    return numbers + (0,) * (_VERSION_LENGTH - len(numbers))


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    size: int
    sha256: str  # hex

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not PART_NAME.fullmatch(self.name):
            raise BundleError(f"manifest: bad part name {self.name!r}")
        if not isinstance(self.size, int) or self.size < 0:
            raise BundleError(f"manifest: bad size of part {self.name}")
        if not isinstance(self.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise BundleError(f"manifest: bad SHA-256 of part {self.name}")


@dataclass(frozen=True, slots=True)
class Manifest:
    product: str
    board: str
    version: str
    min_version: str
    parts: tuple[Part, ...]
    build_date: str = field(default_factory=lambda: build_date())
    rotation: keys.Rotation = field(default_factory=keys.Rotation)

    def __post_init__(self) -> None:
        version_key(self.version)
        version_key(self.min_version)
        if not self.parts or self.parts[0].name != ROOTFS:
            raise BundleError(f"manifest: the first part must be {ROOTFS}")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise BundleError("manifest: a part name appears twice")

    @property
    def rootfs(self) -> Part:
        return self.parts[0]

    @property
    def payload_size(self) -> int:
        return sum(p.size for p in self.parts)

    def encode(self) -> bytes:
        document = {
            "format": FORMAT_VERSION,
            "product": self.product,
            "board": self.board,
            "version": self.version,
            "build_date": self.build_date,
            "min_version": self.min_version,
            "payload": [{"name": p.name, "size": p.size, "sha256": p.sha256} for p in self.parts],
        }
        if self.rotation.add or self.rotation.revoke:
            document["keys"] = {
                "add": [keys.raw_public(k).hex() for k in self.rotation.add],
                "revoke": list(self.rotation.revoke),
            }
        return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """A manifest whose signature has been checked; a malformed one is refused."""
        try:
            document = json.loads(data)
            rotation = document.get("keys", {})
            return cls(
                product=_text(document, "product"),
                board=_text(document, "board"),
                version=_text(document, "version"),
                min_version=_text(document, "min_version"),
                build_date=_text(document, "build_date"),
                parts=tuple(Part(p["name"], p["size"], p["sha256"]) for p in document["payload"]),
                rotation=keys.Rotation(
                    add=tuple(keys.public_from_hex(raw) for raw in rotation.get("add", [])),
                    revoke=tuple(str(i) for i in rotation.get("revoke", [])),
                ),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise BundleError(f"manifest unreadable: {error}") from None


def _text(document: dict, name: str) -> str:
    value = document[name]
    if not isinstance(value, str):
        raise BundleError(f"manifest: {name} is not text")
    return value


def build_date(epoch: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


# -- making a bundle ----------------------------------------------------------------


def signed_header(manifest: Manifest, key: Ed25519PrivateKey) -> bytes:
    """Everything before the payload: header, manifest, key id, signature."""
    encoded = manifest.encode()
    if len(encoded) > MANIFEST_LIMIT:
        raise BundleError(f"manifest of {len(encoded)} bytes: at most {MANIFEST_LIMIT}")
    signed = HEADER.pack(MAGIC, FORMAT_VERSION, len(encoded)) + encoded
    identifier = bytes.fromhex(keys.key_id(key.public_key()))
    return signed + identifier + key.sign(signed)


def describe_bytes(name: str, data: bytes) -> Part:
    return Part(name, len(data), hashlib.sha256(data).hexdigest())


def describe_file(name: str, path: Path, chunk_size: int = 1 << 20) -> Part:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
    return Part(name, size, digest.hexdigest())


def write_bundle(
    out: Path, manifest: Manifest, key: Ed25519PrivateKey, files: Iterable[Path]
) -> None:
    """The bundle at out: the signed header, then each file (one per part, in order).

    The files are read a second time here, after describe_file hashed them;
    a file changed in between makes a bundle every box refuses, never one
    that installs something other than what was signed."""
    with open(out, "wb") as bundle:
        bundle.write(signed_header(manifest, key))
        for path in files:
            with open(path, "rb") as file:
                while chunk := file.read(1 << 20):
                    bundle.write(chunk)


# -- reading a bundle ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verified:
    """The manifest, once its signature checked out with a trusted key."""

    manifest: Manifest
    key_id: str


@dataclass(frozen=True, slots=True)
class PartBytes:
    """The next bytes of a part, already counted into its hash."""

    part: Part
    data: memoryview


@dataclass(frozen=True, slots=True)
class PartDone:
    """A part whose bytes all arrived and hash to what the manifest says."""

    part: Part


class BundleReader:
    """Bytes of a bundle in, events out; raises BundleError at the first fault.

    The events of one feed() come in bundle order: Verified before any
    PartBytes, so a caller checks the manifest before it writes anything.
    """

    def __init__(self, keyring: keys.Keyring):
        self.keyring = keyring
        self.manifest: Manifest | None = None
        self.received = 0  # bytes fed so far
        self._head = bytearray()  # header, manifest and signature, until checked
        self._head_size = HEADER.size  # then all of it: where the payload starts
        self._pending: list[Part] = []
        self._part: Part | None = None
        self._left = 0
        self._digest = hashlib.sha256()

    def feed(self, data: bytes | memoryview) -> list[Verified | PartBytes | PartDone]:
        events: list[Verified | PartBytes | PartDone] = []
        view = memoryview(data)
        self.received += len(view)
        if self.manifest is None:
            view = self._take_head(view, events)
        while view:
            if self._part is None:
                raise BundleError("padded: the file goes on after the signed payload")
            piece = view[: self._left]
            self._digest.update(piece)
            self._left -= len(piece)
            events.append(PartBytes(self._part, piece))
            view = view[len(piece) :]
            if self._left == 0:
                self._end_part(events)
        return events

    @property
    def expected_size(self) -> int | None:
        """The whole bundle's size, once the manifest is verified."""
        return None if self.manifest is None else self._head_size + self.manifest.payload_size

    def finish(self) -> Manifest:
        """The end of the bundle: refused if anything signed is missing."""
        if self.manifest is None:
            raise BundleError("truncated: the file ends inside the bundle's header")
        if self._part is not None:
            raise BundleError(f"truncated: {self.received} of {self.expected_size} bytes")
        return self.manifest

    def _take_head(self, view: memoryview, events: list) -> memoryview:
        """Buffer the header and signature block; check them once complete."""
        while view and self.manifest is None:
            wanted = self._head_size - len(self._head)
            self._head += view[:wanted]
            view = view[wanted:]
            if len(self._head) < self._head_size:
                break
            if self._head_size == HEADER.size:
                self._head_size += self._manifest_length() + SIGNATURE_BLOCK
            else:
                self._verify(events)
        return view

    def _manifest_length(self) -> int:
        magic, version, length = HEADER.unpack(self._head)
        if magic != MAGIC:
            raise BundleError("not an update bundle (its first bytes are not the bundle magic)")
        if version != FORMAT_VERSION:
            raise BundleError(f"bundle format {version}: this box reads format {FORMAT_VERSION}")
        if length > MANIFEST_LIMIT:
            raise BundleError(f"manifest of {length} bytes: at most {MANIFEST_LIMIT}")
        return length

    def _verify(self, events: list) -> None:
        signed = bytes(self._head[:-SIGNATURE_BLOCK])
        block = self._head[-SIGNATURE_BLOCK:]
        key_id = block[: keys.KEY_ID_SIZE].hex()
        signature = bytes(block[keys.KEY_ID_SIZE :])
        if self.keyring.get(key_id) is None:
            raise BundleError(f"signed by unknown key {key_id}")
        if not self.keyring.verify(key_id, signature, signed):
            raise BundleError(f"bad signature: the bundle is not as key {key_id} signed it")
        self.manifest = Manifest.decode(signed[HEADER.size :])
        self._head = bytearray()
        events.append(Verified(self.manifest, key_id))
        self._pending = list(self.manifest.parts)
        self._next_part(events)

    def _next_part(self, events: list) -> None:
        self._part = self._pending.pop(0) if self._pending else None
        self._left = self._part.size if self._part else 0
        self._digest = hashlib.sha256()
        if self._part is not None and self._left == 0:
            self._end_part(events)

    def _end_part(self, events: list) -> None:
        if self._digest.hexdigest() != self._part.sha256:
            raise BundleError(
                f"payload part {self._part.name}: its SHA-256 differs from the signed manifest"
            )
        events.append(PartDone(self._part))
        self._next_part(events)
