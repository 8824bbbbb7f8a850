"""Schema version of the store and the forward migrations between versions.

A migration takes a write Transaction at version N and leaves it at N + 1.
The pending migrations run in one transaction, so a crash part way leaves
the old version intact.

Rollback: after an update the new version runs on trial,
and the boot loader may go back to the old version at any moment, with the
mail that arrived in between in the store. So the old version must still
open the store the new one left, and each migration says whether it lets it:

- compatible: versions before it still read and write the store correctly
  (a new LMDB database, a new optional msgpack field that older code
  ignores and does not lose). An older appliance opens such a store and
  leaves what it does not know alone.
- incompatible: older versions would misread the store (a field renamed,
  records rewritten). It runs only when the caller allows it, which the
  service does once the update booted good (appliance-booted.service
  records it, then sends the service SIGHUP), never while the version is
  on trial: a rollback during the trial then always meets a store the old
  version reads. The CLI and the health check never run one.

Beside "schema", the store keeps "compatible_from": the oldest schema version
whose code can still use it, raised by each incompatible migration to its
own result. An appliance that knows a schema at least that old opens a
newer store; one that does not raises SchemaTooNew naming the version needed.

Because incompatible migrations wait, code must keep working on the store as
it was before its own incompatible migrations (expand, then contract): a
version that changes a layout first writes both (compatible), and a later
incompatible migration only drops what the old layout needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from appliance.store.errors import SchemaTooNew
from appliance.store.transaction import Transaction

CURRENT_VERSION = 1

SCHEMA = "schema"  # meta record: the version the store is at
COMPATIBLE_FROM = "compatible_from"  # meta record: the oldest schema that can still use it


@dataclass(frozen=True, slots=True)
class Migration:
    upgrade: Callable[[Transaction], None]
    # Whether code of the versions before this one still uses the store correctly after it.
    compatible: bool


# version N -> the migration that upgrades a store at version N to N + 1
MIGRATIONS: dict[int, Migration] = {}


def oldest_reader(version: int) -> int:
    """The oldest schema whose code can use a store brought to version by MIGRATIONS."""
    breaking = [n + 1 for n, m in MIGRATIONS.items() if n < version and not m.compatible]
    return max(breaking, default=1)


def pending(txn: Transaction) -> int:
    """How many migrations the store still needs to reach CURRENT_VERSION."""
    found = txn.meta(SCHEMA)
    return 0 if found is None else max(0, CURRENT_VERSION - found)


def upgrade(txn: Transaction, incompatible: bool = False) -> int:
    """Bring the store towards CURRENT_VERSION; return the version it was found at.

    Without incompatible, stops before the first incompatible migration."""
    found = txn.meta(SCHEMA)
    if found is None:
        txn.set_meta(SCHEMA, CURRENT_VERSION)
        txn.set_meta(COMPATIBLE_FROM, oldest_reader(CURRENT_VERSION))
        return CURRENT_VERSION
    if found > CURRENT_VERSION:
        _check_readable(txn, found)
        return found
    if txn.meta(COMPATIBLE_FROM) is None:  # written before the record existed
        txn.set_meta(COMPATIBLE_FROM, oldest_reader(found))
    for version in range(found, CURRENT_VERSION):
        migration = MIGRATIONS[version]
        if not (migration.compatible or incompatible):
            break
        migration.upgrade(txn)
        txn.set_meta(SCHEMA, version + 1)
        if not migration.compatible:
            txn.set_meta(COMPATIBLE_FROM, version + 1)
    return found


def _check_readable(txn: Transaction, found: int) -> None:
    """A store of a newer version: usable if its migrations since ours were compatible."""
    # A store that predates COMPATIBLE_FROM was written by code that knew no other rule.
    needed = txn.meta(COMPATIBLE_FROM) or found
    if needed > CURRENT_VERSION:
        raise SchemaTooNew(
            f"the store has schema version {found} and needs an appliance that knows "
            f"schema {needed} or later; this one knows up to {CURRENT_VERSION}"
        )
