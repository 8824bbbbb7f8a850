"""The update check: a signed index of the bundles on offer.

The index is a small JSON document, signed with a key of the same keyring
as bundles (keys.py), so whoever can serve or alter it can at most hide an
update, never offer one the box would trust:

    {"format": 1, "key": "<key id, hex>", "signature": "<Ed25519, hex>",
     "signed": "<the index itself, JSON text>"}

The signature is over INDEX_MAGIC followed by the UTF-8 of "signed", so that
neither a bundle's signature nor an index's can pass for the other. The
index itself:

    {"format": 1, "date": "2026-12-01T00:00:00Z",
     "bundles": [{"product": "appliance", "board": "x86_64", "version": "0.2.0",
                  "url": "appliance-0.2.0-x86_64.bundle",   # relative to the index
                  "size": 123, "sha256": "<hex>"}]}

As with a bundle, nothing of "signed" is read before its signature checks
out. The box then keeps the newest bundle for its product and board that is
newer than anything it has run or installed (the anti-rollback floor of
install.py); the bundle, once downloaded, is checked like any other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import __version__
from appliance.update import install, keys
from appliance.update.bundle import build_date, version_key
from appliance.update.settings import UpdateSettings

log = logging.getLogger("appliance.update")

FORMAT_VERSION = 1
INDEX_MAGIC = b"APLINDEX\n"
# An index lists a few bundles in a few hundred bytes each; a larger answer
# is not one, and is not read into memory.
INDEX_LIMIT = 1 << 20


class UpdateIndexError(ValueError):
    """Why an index is refused, in one line."""


@dataclass(frozen=True, slots=True)
class Offer:
    product: str
    board: str
    version: str
    url: str  # absolute, resolved against the index's URL
    size: int
    sha256: str

    def __post_init__(self) -> None:
        version_key(self.version)
        if not all(isinstance(v, str) for v in (self.product, self.board, self.url, self.sha256)):
            raise UpdateIndexError("index: a bundle's product, board, url and sha256 are text")
        if not isinstance(self.size, int) or self.size <= 0:
            raise UpdateIndexError(f"index: bad size of bundle {self.version}")

    def describe(self) -> dict:
        return {
            "product": self.product,
            "board": self.board,
            "version": self.version,
            "url": self.url,
            "size": self.size,
            "sha256": self.sha256,
        }


# -- making an index (the release side, and tests) ----------------------------------------


def sign_index(offers: Iterable[Offer], key: Ed25519PrivateKey, date: str | None = None) -> bytes:
    document = {
        "format": FORMAT_VERSION,
        "date": date or build_date(),
        "bundles": [offer.describe() for offer in offers],
    }
    signed = json.dumps(document, sort_keys=True, separators=(",", ":"))
    envelope = {
        "format": FORMAT_VERSION,
        "key": keys.key_id(key.public_key()),
        "signature": key.sign(INDEX_MAGIC + signed.encode()).hex(),
        "signed": signed,
    }
    return json.dumps(envelope, sort_keys=True, indent=1).encode()


# -- reading one ----------------------------------------------------------------------------


def read_index(data: bytes, trusted: keys.Keyring, base_url: str = "") -> tuple[Offer, ...]:
    """The offers of an index whose signature a trusted key made; refused otherwise."""
    try:
        envelope = json.loads(data)
        key_id, signed = str(envelope["key"]), envelope["signed"]
        signature = bytes.fromhex(envelope["signature"])
    except (ValueError, KeyError, TypeError) as error:
        raise UpdateIndexError(f"not an update index: {error}") from None
    if not isinstance(signed, str):
        raise UpdateIndexError("not an update index: nothing signed")
    if trusted.get(key_id) is None:
        raise UpdateIndexError(f"index signed by unknown key {key_id}")
    if not trusted.verify(key_id, signature, INDEX_MAGIC + signed.encode()):
        raise UpdateIndexError(f"bad signature: the index is not as key {key_id} signed it")
    try:
        document = json.loads(signed)
        found, entries = document["format"], document["bundles"]
    except (ValueError, KeyError, TypeError) as error:
        raise UpdateIndexError(f"index unreadable: {error}") from None
    if found != FORMAT_VERSION:
        raise UpdateIndexError(f"index format {found}: this box reads format {FORMAT_VERSION}")
    try:
        return tuple(_offer(entry, base_url) for entry in entries)
    except (ValueError, KeyError, TypeError) as error:  # BundleError: a bad version
        raise UpdateIndexError(f"index: a bundle entry is unreadable: {error}") from None


def _offer(entry: dict, base_url: str) -> Offer:
    return Offer(
        product=entry["product"],
        board=entry["board"],
        version=entry["version"],
        url=urljoin(base_url, entry["url"]),
        size=entry["size"],
        sha256=entry["sha256"],
    )


def newest_for(offers: Iterable[Offer], settings: UpdateSettings, floor: str) -> Offer | None:
    """The newest offer for this product and board above floor, if any."""
    mine = [
        offer
        for offer in offers
        if offer.product == settings.product
        and offer.board == settings.board
        and version_key(offer.version) > version_key(floor)
    ]
    return max(mine, key=lambda offer: version_key(offer.version), default=None)


# -- fetching it ----------------------------------------------------------------------------


async def fetch(url: str, timeout: float) -> bytes:
    limit = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=limit) as client, client.get(url) as response:
        if response.status != 200:
            raise UpdateIndexError(f"{url}: HTTP {response.status}")
        # read(n) gives what has arrived, up to n: an index sent in several
        # packets is read to its end, and no further than the limit.
        data = bytearray()
        async for chunk in response.content.iter_any():
            data += chunk
            if len(data) > INDEX_LIMIT:
                raise UpdateIndexError(f"{url}: more than {INDEX_LIMIT} bytes, not an update index")
    return bytes(data)


async def check(
    settings: UpdateSettings, data_dir: Path, running_version: str = __version__
) -> tuple[tuple[Offer, ...], Offer | None]:
    """Everything the index at settings.url offers, and what this box should take."""
    if not settings.url:
        raise UpdateIndexError("no update index: update.url is not set in appliance.toml")
    data = await fetch(settings.url, settings.check_timeout)
    offers = read_index(data, install.keyring(settings, data_dir), settings.url)
    floor = install.highest_version(data_dir, running_version)
    return offers, newest_for(offers, settings, floor)
