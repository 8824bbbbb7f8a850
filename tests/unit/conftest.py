"""Fixtures the unit tests of signed updates share: a signing key and a
keyring that trusts it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.update import keys
from tests.unit.test_update_bundle import trust


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def keyring(tmp_path, key) -> keys.Keyring:
    trust(tmp_path / "trusted", key)
    return keys.Keyring(tmp_path / "trusted", tmp_path / "state")
