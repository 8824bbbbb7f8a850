"""Schema version of the store and the forward migrations between versions.

A migration takes a write Transaction at version N and leaves it at N + 1. All
pending migrations run in the one transaction that opens the store, so a crash
part way leaves the old version intact.
"""

from __future__ import annotations

from collections.abc import Callable

from appliance.store.errors import SchemaTooNew
from appliance.store.transaction import Transaction

CURRENT_VERSION = 1

# version N -> function that upgrades a store at version N to N + 1
MIGRATIONS: dict[int, Callable[[Transaction], None]] = {}


def upgrade(txn: Transaction) -> int:
    """Bring the store to CURRENT_VERSION; return the version it was found at."""
    found = txn.meta("schema")
    if found is None:
        txn.set_meta("schema", CURRENT_VERSION)
        return CURRENT_VERSION
    if found > CURRENT_VERSION:
        raise SchemaTooNew(
            f"the store has schema version {found}; this appliance knows up to {CURRENT_VERSION}"
        )
    for version in range(found, CURRENT_VERSION):
        MIGRATIONS[version](txn)
        txn.set_meta("schema", version + 1)
    return found
