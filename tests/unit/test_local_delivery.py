"""Where an address leads: accounts, aliases, plus-addresses, catch-alls, relay refusal."""

import pytest

from appliance.delivery.local import Refused, may_send_as, resolve
from appliance.store import open_store


@pytest.fixture
def store(tmp_path):
    store = open_store(tmp_path)

    def setup(txn):
        txn.add_domain("example.org")
        txn.add_domain("other.org")
        for address in ("ann@example.org", "bob@example.org", "cat@other.org"):
            txn.add_account(address, "hash")
        txn.add_alias("team@example.org", ["ann@example.org", "bob@example.org"])
        txn.add_alias("fwd@example.org", ["someone@elsewhere.test", "ann@example.org"])
        txn.add_alias("postmaster@other.org", ["cat@other.org"])
        txn.add_alias("loop1@example.org", ["loop2@example.org"])
        txn.add_alias("loop2@example.org", ["loop1@example.org", "bob@example.org"])
        txn.add_alias("@other.org", ["cat@other.org"])

    store.apply(setup)
    yield store
    store.close()


def route(store, address):
    return store.read(lambda txn: resolve(txn, address))


def test_account_address_is_case_insensitive(store):
    assert route(store, "Ann@Example.ORG").accounts == ("ann@example.org",)


def test_alias_reaches_every_target(store):
    assert route(store, "team@example.org").accounts == ("ann@example.org", "bob@example.org")


def test_external_alias_target_is_forwarded(store):
    r = route(store, "fwd@example.org")
    assert r.forwards == ("someone@elsewhere.test",) and r.accounts == ("ann@example.org",)


def test_plus_address_reaches_the_account(store):
    assert route(store, "ann+lists@example.org").accounts == ("ann@example.org",)


def test_catch_all_takes_unknown_addresses_only(store):
    assert route(store, "whoever@other.org").accounts == ("cat@other.org",)


def test_alias_loop_ends(store):
    assert route(store, "loop1@example.org").accounts == ("bob@example.org",)


def test_bare_postmaster_is_accepted(store):
    assert route(store, "postmaster").accounts == ("cat@other.org",)


@pytest.mark.parametrize(
    ("address", "code", "status"),
    [
        ("nobody@example.org", 550, "5.1.1"),
        ("ann@elsewhere.test", 550, "5.7.1"),
        ("not an address", 501, "5.1.3"),
    ],
)
def test_refusals_carry_their_reply(store, address, code, status):
    with pytest.raises(Refused) as refusal:
        route(store, address)
    assert (refusal.value.code, refusal.value.status) == (code, status)


@pytest.mark.parametrize(
    "account, sender, allowed",
    [
        ("ann@example.org", "ann@example.org", True),
        ("ann@example.org", "ANN@Example.Org", True),
        ("ann@example.org", "ann+news@example.org", True),
        ("ann@example.org", "team@example.org", True),  # an alias that reaches her
        ("ann@example.org", "loop1@example.org", False),  # reaches bob only
        ("bob@example.org", "loop1@example.org", True),
        ("ann@example.org", "bob@example.org", False),
        ("cat@other.org", "whoever@other.org", False),  # a catch-all gives no right
        ("ann@example.org", "ann@elsewhere.test", False),
        ("ann@example.org", "", False),
        ("ann@example.org", "not an address", False),
    ],
)
def test_who_may_send_as_whom(store, account, sender, allowed):
    assert store.read(lambda txn: may_send_as(txn, account, sender)) is allowed
