"""The update bundle format on bytes: what is trusted, and when.

The helpers at the top make keys and bundles; the install and integration
tests use them too.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.update import keys
from appliance.update.bundle import (
    HEADER,
    MAGIC,
    MANIFEST_LIMIT,
    SIGNATURE_BLOCK,
    BundleError,
    BundleReader,
    Manifest,
    PartBytes,
    PartDone,
    Verified,
    describe_bytes,
    signed_header,
    version_key,
)

PRODUCT = "appliance"
BOARD = "x86_64"
PAYLOAD = bytes(range(256)) * 40  # a stand-in root image of 10 KiB


def trust(directory: Path, key: Ed25519PrivateKey) -> str:
    """Put key's public half into a keyring directory; its key id."""
    directory.mkdir(parents=True, exist_ok=True)
    identifier = keys.key_id(key.public_key())
    (directory / f"{identifier}.pub").write_bytes(keys.public_pem(key.public_key()))
    return identifier


def make_manifest(
    payload: bytes = PAYLOAD,
    version: str = "1.1.0",
    product: str = PRODUCT,
    board: str = BOARD,
    min_version: str = "0.1.0",
    boot_files: dict[str, bytes] | None = None,
    rotation: keys.Rotation | None = None,
) -> Manifest:
    parts = [describe_bytes("rootfs", payload)]
    parts += [describe_bytes(name, data) for name, data in (boot_files or {}).items()]
    return Manifest(
        product=product,
        board=board,
        version=version,
        min_version=min_version,
        parts=tuple(parts),
        rotation=rotation or keys.Rotation(),
    )


def make_bundle(key: Ed25519PrivateKey, payload: bytes = PAYLOAD, **fields) -> bytes:
    """A bundle's bytes: fields as make_manifest takes them."""
    manifest = make_manifest(payload, **fields)
    boot_files = fields.get("boot_files") or {}
    return signed_header(manifest, key) + payload + b"".join(boot_files.values())


def flip_bit(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def payload_offset(bundle: bytes) -> int:
    return HEADER.size + HEADER.unpack(bundle[: HEADER.size])[2] + SIGNATURE_BLOCK


def read_all(keyring: keys.Keyring, data: bytes, chunk: int | None = None):
    """Every event of reading data in pieces of chunk bytes, then finish()."""
    reader = BundleReader(keyring)
    events = []
    step = chunk or max(len(data), 1)
    for start in range(0, len(data), step):
        events += reader.feed(data[start : start + step])
    return events, reader.finish()


def written(events) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, PartBytes))


def test_a_valid_bundle_yields_the_verified_manifest_before_any_payload_byte(key, keyring):
    events, manifest = read_all(keyring, make_bundle(key))
    assert isinstance(events[0], Verified)
    assert events[0].key_id == keys.key_id(key.public_key())
    assert (manifest.product, manifest.board, manifest.version) == (PRODUCT, BOARD, "1.1.0")
    assert written(events) == PAYLOAD
    assert isinstance(events[-1], PartDone) and events[-1].part.name == "rootfs"


def test_bytes_arriving_one_at_a_time_are_the_same_bundle(key, keyring):
    bundle = make_bundle(key, boot_files={"vmlinuz": b"kernel", "initrd.img": b"initrd"})
    events, _ = read_all(keyring, bundle, chunk=1)
    done = [e.part.name for e in events if isinstance(e, PartDone)]
    assert done == ["rootfs", "vmlinuz", "initrd.img"]
    assert written(events) == PAYLOAD + b"kernel" + b"initrd"


@pytest.fixture(scope="module")
def signer(tmp_path_factory) -> tuple[Ed25519PrivateKey, keys.Keyring]:
    """One key and keyring for every example hypothesis tries."""
    key, directory = Ed25519PrivateKey.generate(), tmp_path_factory.mktemp("signer")
    trust(directory / "trusted", key)
    return key, keys.Keyring(directory / "trusted", directory / "state")


@settings(max_examples=30, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12))
def test_any_split_into_pieces_reads_the_same(signer, cuts):
    key, ring = signer
    bundle = make_bundle(key)
    reader, events, start = BundleReader(ring), [], 0
    for cut in sorted(set(cuts)):
        events += reader.feed(bundle[start:cut])
        start = max(start, cut)
    events += reader.feed(bundle[start:])
    reader.finish()
    assert written(events) == PAYLOAD


def test_a_flipped_bit_in_the_manifest_is_a_bad_signature(key, keyring):
    bundle = make_bundle(key)
    with pytest.raises(BundleError, match="bad signature"):
        read_all(keyring, flip_bit(bundle, (HEADER.size + 20) * 8))


def test_a_flipped_bit_in_the_signature_is_a_bad_signature(key, keyring):
    bundle = make_bundle(key)
    signature_start = payload_offset(bundle) - 64
    with pytest.raises(BundleError, match="bad signature"):
        read_all(keyring, flip_bit(bundle, (signature_start + 10) * 8 + 3))


def test_a_flipped_bit_in_the_payload_fails_its_hash_and_the_part_never_completes(key, keyring):
    bundle = flip_bit(make_bundle(key), (payload_offset(make_bundle(key)) + 5000) * 8)
    reader = BundleReader(keyring)
    verified = reader.feed(bundle[: payload_offset(bundle)])
    assert isinstance(verified[0], Verified)  # the manifest itself is fine
    with pytest.raises(BundleError, match="rootfs: its SHA-256 differs"):
        reader.feed(bundle[payload_offset(bundle) :])


def test_every_single_bit_flip_anywhere_is_refused(key, keyring):
    bundle = make_bundle(key, payload=b"tiny root image")
    for bit in range(len(bundle) * 8):
        with pytest.raises(BundleError):
            read_all(keyring, flip_bit(bundle, bit))


def test_a_key_the_box_does_not_trust_is_refused_by_its_id(keyring):
    stranger = Ed25519PrivateKey.generate()
    with pytest.raises(BundleError, match=f"unknown key {keys.key_id(stranger.public_key())}"):
        read_all(keyring, make_bundle(stranger))


def test_a_trusted_key_id_with_another_keys_signature_is_a_bad_signature(key, keyring):
    stranger = make_bundle(Ed25519PrivateKey.generate())
    offset = payload_offset(stranger)
    block_start = offset - SIGNATURE_BLOCK
    forged = stranger[:block_start] + bytes.fromhex(keys.key_id(key.public_key()))
    forged += stranger[block_start + 8 :]
    with pytest.raises(BundleError, match="bad signature"):
        read_all(keyring, forged)


def test_the_manifest_is_not_read_before_its_signature_checks_out(key, keyring):
    """Nonsense in the manifest's place, with a signature by nobody trusted:
    the refusal is about the signature, never about the manifest's content."""
    nonsense = b'{"version": "99.0", "payload": "not a list"'
    signed = HEADER.pack(MAGIC, 1, len(nonsense)) + nonsense
    stranger = Ed25519PrivateKey.generate()
    bundle = signed + bytes.fromhex(keys.key_id(key.public_key())) + stranger.sign(signed)
    with pytest.raises(BundleError, match="bad signature"):
        read_all(keyring, bundle + PAYLOAD)


def test_a_signed_but_malformed_manifest_is_refused(key, keyring):
    nonsense = b'{"product": "appliance"}'
    signed = HEADER.pack(MAGIC, 1, len(nonsense)) + nonsense
    bundle = signed + bytes.fromhex(keys.key_id(key.public_key())) + key.sign(signed)
    with pytest.raises(BundleError, match="manifest unreadable"):
        read_all(keyring, bundle)


def test_a_truncated_payload_is_refused_at_the_end(key, keyring):
    bundle = make_bundle(key)
    with pytest.raises(BundleError, match=f"truncated: {len(bundle) - 1} of {len(bundle)} bytes"):
        read_all(keyring, bundle[:-1])


def test_a_bundle_cut_inside_its_header_is_truncated(key, keyring):
    with pytest.raises(BundleError, match="truncated: the file ends inside the bundle's header"):
        read_all(keyring, make_bundle(key)[:40])


def test_bytes_after_the_payload_are_refused(key, keyring):
    with pytest.raises(BundleError, match="padded"):
        read_all(keyring, make_bundle(key) + b"\0")


def test_padding_arriving_in_a_later_piece_is_refused_too(key, keyring):
    reader = BundleReader(keyring)
    reader.feed(make_bundle(key))
    with pytest.raises(BundleError, match="padded"):
        reader.feed(b"x")


def test_not_a_bundle(keyring):
    with pytest.raises(BundleError, match="not an update bundle"):
        BundleReader(keyring).feed(b"\x7fELF" + bytes(100))


def test_a_later_format_is_refused(key, keyring):
    bundle = bytearray(make_bundle(key))
    struct.pack_into(">H", bundle, 8, 2)
    with pytest.raises(BundleError, match="bundle format 2"):
        read_all(keyring, bytes(bundle))


def test_a_huge_manifest_length_is_refused_before_anything_is_buffered(keyring):
    header = HEADER.pack(MAGIC, 1, MANIFEST_LIMIT + 1)
    reader = BundleReader(keyring)
    with pytest.raises(BundleError, match="manifest of 65537 bytes"):
        reader.feed(header)


def test_versions_compare_number_by_number():
    assert version_key("0.10") > version_key("0.9")
    assert version_key("1.2") == version_key("1.2.0")
    assert version_key("2") > version_key("1.99.99")
    for bad in ("1.2.3-rc1", "", "v1", "1..2", "1.2.3.4.5"):
        with pytest.raises(BundleError, match="not a version"):
            version_key(bad)


def test_the_manifest_round_trips_with_a_rotation(key):
    new = Ed25519PrivateKey.generate().public_key()
    rotation = keys.Rotation(add=(new,), revoke=("00112233aabbccdd",))
    manifest = make_manifest(rotation=rotation)
    again = Manifest.decode(manifest.encode())
    assert [keys.key_id(k) for k in again.rotation.add] == [keys.key_id(new)]
    assert again.rotation.revoke == ("00112233aabbccdd",)
    assert again.encode() == manifest.encode()  # canonical: one spelling per manifest


def test_a_part_name_that_could_leave_the_esp_directory_is_refused():
    with pytest.raises(BundleError, match="bad part name"):
        make_manifest(boot_files={"../../loader/loader.conf": b"default slot-b"})
