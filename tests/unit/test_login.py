"""Logins: right and wrong passwords, unknown users, the growing delay per client."""

import asyncio

import pytest

from appliance.login import LoginGuard, LoginSettings
from appliance.passwords import hash_password
from appliance.store import open_store


@pytest.fixture
def guard(tmp_path):
    store = open_store(tmp_path)
    store.apply(lambda txn: txn.add_domain("example.org"))
    store.apply(lambda txn: txn.add_account("ann@example.org", hash_password("right password")))
    settings = LoginSettings(failure_delay=0.05, max_failure_delay=0.2, max_tracked_clients=3)
    guard = LoginGuard(store, settings)
    yield guard
    guard.close()
    store.close()


def login(guard, client, user, password):
    return asyncio.run(guard.authenticate(client, user, password))


def test_right_password_gives_the_account(guard):
    assert login(guard, "192.0.2.1", "Ann@Example.org", "right password").address == (
        "ann@example.org"
    )


@pytest.mark.parametrize(
    ("user", "password"),
    [("ann@example.org", "wrong"), ("nobody@example.org", "right password"), ("not-an", "x")],
)
def test_wrong_credentials_give_none(guard, user, password):
    assert login(guard, "192.0.2.1", user, password) is None


def test_failures_slow_down_that_client_only(guard):
    for _ in range(3):
        login(guard, "192.0.2.1", "ann@example.org", "wrong")
    assert guard.delay_for("192.0.2.1") == 0.2  # 0.05, 0.1, 0.2: doubled, capped
    assert guard.delay_for("192.0.2.2") == 0.0
    login(guard, "192.0.2.1", "ann@example.org", "right password")
    assert guard.delay_for("192.0.2.1") == 0.0


def test_failures_are_forgotten_after_the_window(guard):
    login(guard, "192.0.2.1", "ann@example.org", "wrong")
    assert guard.delay_for("192.0.2.1", now=10**9) == 0.0


def test_tracked_clients_are_bounded(guard):
    for n in range(10):
        login(guard, f"192.0.2.{n}", "ann@example.org", "wrong")
    assert guard.tracked_clients == 3
    assert guard.delay_for("192.0.2.9") > 0


def test_guesses_sent_at_once_wait_their_turn(guard, monkeypatch):
    waits = []
    real_sleep = asyncio.sleep

    async def recorded_sleep(delay):
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", recorded_sleep)

    async def at_once(client, password, count):
        tries = [guard.authenticate(client, "ann@example.org", password) for _ in range(count)]
        return await asyncio.gather(*tries)

    # A client that has not failed logs in on several connections at once.
    assert all(asyncio.run(at_once("192.0.2.6", "right password", 4)))
    assert waits == []
    # Once it has failed, each guess behind the others counts as a failure ahead.
    login(guard, "192.0.2.7", "ann@example.org", "wrong")
    waits.clear()
    assert asyncio.run(at_once("192.0.2.7", "guess", 4)) == [None] * 4
    assert waits == [0.05, 0.1, 0.2, 0.2]  # doubled per attempt ahead, capped
