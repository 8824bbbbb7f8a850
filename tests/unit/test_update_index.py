"""The signed update index with bytes: what the box trusts
and which offer it keeps."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.update import index, install, keys
from appliance.update.settings import UpdateSettings
from tests.unit.test_update_bundle import BOARD, PRODUCT

INDEX_URL = "https://updates.example.net/stable/index.json"
SETTINGS = UpdateSettings(product=PRODUCT, board=BOARD)


def offer(version: str, board: str = BOARD, product: str = PRODUCT, url: str = "") -> index.Offer:
    name = url or f"appliance-{version}-{board}.bundle"
    return index.Offer(product, board, version, name, 1000, "ab" * 32)


def test_a_signed_index_is_read_with_urls_resolved_against_it(key, keyring):
    data = index.sign_index([offer("0.2.0"), offer("0.3.0", url="https://cdn.example/x")], key)
    offers = index.read_index(data, keyring, INDEX_URL)
    assert [o.version for o in offers] == ["0.2.0", "0.3.0"]
    assert offers[0].url == "https://updates.example.net/stable/appliance-0.2.0-x86_64.bundle"
    assert offers[1].url == "https://cdn.example/x"


def test_a_tampered_index_is_refused(key, keyring):
    envelope = json.loads(index.sign_index([offer("0.2.0")], key))
    envelope["signed"] = envelope["signed"].replace("0.2.0", "9.9.9")
    with pytest.raises(index.UpdateIndexError, match="bad signature"):
        index.read_index(json.dumps(envelope).encode(), keyring, INDEX_URL)


def test_an_index_signed_by_an_unknown_key_is_refused(keyring):
    stranger = Ed25519PrivateKey.generate()
    data = index.sign_index([offer("0.2.0")], stranger)
    with pytest.raises(index.UpdateIndexError, match="unknown key"):
        index.read_index(data, keyring, INDEX_URL)


def test_a_trusted_key_id_with_another_keys_signature_is_refused(key, keyring):
    envelope = json.loads(index.sign_index([offer("0.2.0")], Ed25519PrivateKey.generate()))
    envelope["key"] = keys.key_id(key.public_key())
    with pytest.raises(index.UpdateIndexError, match="bad signature"):
        index.read_index(json.dumps(envelope).encode(), keyring, INDEX_URL)


def test_a_bundle_signature_does_not_pass_for_an_index(key, keyring):
    """The index's signature covers INDEX_MAGIC: bytes signed for another
    purpose with the same key are not an index."""
    signed = json.dumps({"format": 1, "date": "x", "bundles": []})
    envelope = {"key": keys.key_id(key.public_key()), "signed": signed}
    envelope["signature"] = key.sign(signed.encode()).hex()
    with pytest.raises(index.UpdateIndexError, match="bad signature"):
        index.read_index(json.dumps(envelope).encode(), keyring, INDEX_URL)


@pytest.mark.parametrize("data", [b"", b"<html>", b"[]", b'{"key": 1}'])
def test_what_is_not_an_index_is_refused_in_one_line(keyring, data):
    with pytest.raises(index.UpdateIndexError, match="not an update index"):
        index.read_index(data, keyring, INDEX_URL)


def test_other_boards_and_products_are_ignored():
    offers = [offer("0.5.0", board="arm64"), offer("0.6.0", product="other"), offer("0.2.0")]
    assert index.newest_for(offers, SETTINGS, floor="0.1.0").version == "0.2.0"


def test_older_and_equal_versions_are_ignored_and_the_newest_kept():
    offers = [offer("0.1.0"), offer("0.10.0"), offer("0.9.0"), offer("0.0.9")]
    assert index.newest_for(offers, SETTINGS, floor="0.1.0").version == "0.10.0"
    assert index.newest_for(offers, SETTINGS, floor="0.10.0") is None


def test_nothing_below_the_anti_rollback_floor_is_offered(tmp_path, key):
    """A box that installed 0.3.0 (then rolled back to 0.1.0) is not offered 0.2.0."""
    state = tmp_path / "update"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"highest_version": "0.3.0"}))
    floor = install.highest_version(tmp_path, "0.1.0")
    assert index.newest_for([offer("0.2.0"), offer("0.3.0")], SETTINGS, floor) is None
    assert index.newest_for([offer("0.3.1")], SETTINGS, floor).version == "0.3.1"


@pytest.mark.parametrize(
    "url",
    ["http://updates.example.net/index.json", "ftp://127.0.0.1/x", "file:///etc/passwd", "x"],
)
def test_the_index_url_is_https_or_http_to_loopback_only(url):
    with pytest.raises(ValueError, match="update.url"):
        UpdateSettings(url=url)
    assert UpdateSettings(url="http://127.0.0.1:8000/index.json").url
    assert UpdateSettings(url=INDEX_URL).url
