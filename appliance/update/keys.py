"""The keys update bundles are signed with, and the box's trusted keyring.

A key is Ed25519 (RFC 8032). Its id is the first 8 bytes of the SHA-256 of
its 32 raw public bytes, in hex: short enough for a bundle's header and a log
line, long enough that two keys of one project never share one.

The keyring is what the image ships (a directory of *.pub files, PEM) plus
what signed bundles have changed since: a bundle may add keys and revoke
keys (rotation), and the box remembers that on its data partition, so a
rollback to an older image keeps trusting the new key and distrusting the
revoked one. The signing key itself stays outside the repository.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PACKAGED_KEYRING = Path(__file__).parent / "keys"
ROTATION_FILE = "keyring.json"  # in the update state directory on /data
KEY_ID_SIZE = 8


class KeyringError(ValueError):
    """A key file or a rotation that cannot be used."""


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).digest()[:KEY_ID_SIZE].hex()


def public_from_hex(text: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(text))
    except ValueError:
        raise KeyringError(f"not an Ed25519 public key: {text[:80]!r}") from None


def generate(private_path: Path) -> str:
    """A new key pair: the private key at private_path (mode 0600), the public
    key beside it as private_path + '.pub'. Returns the key id."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    public_path(private_path).write_bytes(public_pem(key.public_key()))
    return key_id(key.public_key())


def public_path(private_path: Path) -> Path:
    return private_path.with_name(private_path.name + ".pub")


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyringError(f"{path}: not an Ed25519 private key")
    return key


def load_public(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except ValueError:
        raise KeyringError(f"{path}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyringError(f"{path}: not an Ed25519 public key")
    return key


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a signed manifest asks of the keyring: keys to add, key ids to revoke."""

    add: tuple[Ed25519PublicKey, ...] = ()
    revoke: tuple[str, ...] = ()


class Keyring:
    """Trusted keys: the image's directory, changed by the rotations on /data."""

    def __init__(self, directory: Path, state_dir: Path):
        self.directory = directory
        self.rotation_path = state_dir / ROTATION_FILE
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._load()

    def _load(self) -> None:
        shipped = {key_id(k): k for k in map(load_public, sorted(self.directory.glob("*.pub")))}
        document = self._rotations()
        added = {i: public_from_hex(raw) for i, raw in document["added"].items()}
        revoked = set(document["revoked"])
        self._keys = {i: k for i, k in {**shipped, **added}.items() if i not in revoked}

    def _rotations(self) -> dict:
        """The rotation file as written: {"added": {id: raw hex}, "revoked": [id]}."""
        if not self.rotation_path.exists():
            return {"added": {}, "revoked": []}
        return json.loads(self.rotation_path.read_text())

    def ids(self) -> list[str]:
        return sorted(self._keys)

    def get(self, wanted: str) -> Ed25519PublicKey | None:
        return self._keys.get(wanted)

    def verify(self, wanted: str, signature: bytes, data: bytes) -> bool:
        key = self.get(wanted)
        if key is None:
            return False
        try:
            key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def check_rotation(self, rotation: Rotation) -> None:
        """Refuse a rotation that would leave the box trusting no key at all:
        it could never be updated again."""
        remaining = (set(self._keys) | {key_id(k) for k in rotation.add}) - set(rotation.revoke)
        if not remaining:
            raise KeyringError("the bundle's key rotation would leave no trusted key")

    def apply(self, rotation: Rotation) -> None:
        """Remember the rotation on /data: written beside and renamed over, so
        a power cut leaves the old keyring or the new one."""
        if not rotation.add and not rotation.revoke:
            return
        self.check_rotation(rotation)
        document = self._rotations()
        added = {**document["added"], **{key_id(k): raw_public(k).hex() for k in rotation.add}}
        revoked = sorted(set(document["revoked"]) | set(rotation.revoke))
        write_atomically(self.rotation_path, json.dumps({"added": added, "revoked": revoked}))
        self._load()


def write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
