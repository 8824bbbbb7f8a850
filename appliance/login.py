"""Password logins for POP3, IMAP and submission, slowed down per client address.

Hashes are checked on a small thread pool: Argon2id takes tens of
milliseconds and 19 MiB each, which must neither stall the event loop nor
multiply with the number of clients guessing at once.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from appliance.addresses import AddressError, normalize_address
from appliance.passwords import hash_password, verify_password
from appliance.store import Account, Store

T = TypeVar("T")

ONE_TIME_LIFETIME = 60.0  # seconds a one-time password stays usable


@dataclass(frozen=True, slots=True)
class LoginSettings:
    # Delay before checking a client's next attempt after its first failure;
    # it doubles with each further failure, up to max_failure_delay (like
    # Dovecot's auth_failure_delay, but growing).
    failure_delay: float = 1.0
    max_failure_delay: float = 15.0
    # Failures older than this are forgotten.
    failure_window: float = 600.0
    # Client addresses remembered; past this the oldest are dropped, so a
    # flood from many addresses cannot grow memory without bound.
    max_tracked_clients: int = 10_000
    # Hashes checked at once (each holds 19 MiB while it runs).
    hash_workers: int = 2


class LoginGuard:
    def __init__(self, store: Store, settings: LoginSettings = LoginSettings()):
        self._store = store
        self.settings = settings
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (count, last)
        self._in_flight: Counter[str] = Counter()  # client -> attempts being checked
        self._pool = ThreadPoolExecutor(settings.hash_workers, thread_name_prefix="login")
        # Checked against when the user does not exist, so that the answer
        # takes as long as for a wrong password (no account enumeration).
        self._decoy = hash_password("decoy password that matches nothing")
        self._one_time: dict[str, tuple[str, float]] = {}  # address -> (password, expiry)

    def one_time_password(self, address: str) -> str:
        """A random password that logs address in once, within a minute.

        The delivery self-test logs in over IMAP as the administrator who
        started it, whose own password the box does not keep.
        """
        password = secrets.token_urlsafe(24)
        self._one_time[address] = (password, time.monotonic() + ONE_TIME_LIFETIME)
        return password

    def delay_for(self, client: str, now: float | None = None, ahead: int = 0) -> float:
        """How long the client's next attempt waits: by its recent failures
        and, once it has failed, by the `ahead` attempts of its still being
        checked, counted as failures too, so that guesses sent at once queue
        up instead of all going through undelayed. A client that has not
        failed is not held back: a mail client opens several connections
        at once, each logging in."""
        now = time.monotonic() if now is None else now
        count, last = self._failures.get(client, (0, 0.0))
        if count == 0 or now - last > self.settings.failure_window:
            return 0.0
        count += ahead
        delay = self.settings.failure_delay * 2 ** (count - 1)
        return min(delay, self.settings.max_failure_delay)

    async def authenticate(self, client: str, username: str, password: str) -> Account | None:
        """The account when username and password match, else None (after a delay)."""
        return await self.guarded(client, self._check, username, password)

    async def guarded(self, client: str, check: Callable[..., T | None], *args) -> T | None:
        """check(*args) on the hash pool, after the client's failure delay.

        A None result counts as a failure of the client's; anything else
        forgets its failures. Passwords and the web's setup code go through
        here, so a guesser is slowed the same way whatever it guesses at.
        """
        ahead = self._in_flight[client]
        self._in_flight[client] += 1
        try:
            delay = self.delay_for(client, ahead=ahead)
            if delay:
                await asyncio.sleep(delay)
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._pool, check, *args)
        finally:
            self._in_flight[client] -= 1
            if not self._in_flight[client]:
                del self._in_flight[client]
        if result is None:
            self._record_failure(client)
        else:
            self._failures.pop(client, None)
        return result

    def _check(self, username: str, password: str) -> Account | None:
        try:
            address = normalize_address(username)
        except AddressError:
            address = None
        account = self._store.read(lambda txn: txn.account(address)) if address else None
        if account is not None and self._one_time_matches(address, password):
            return account
        if account is None:
            verify_password(self._decoy, password)
            return None
        return account if verify_password(account.password_hash, password) else None

    def _one_time_matches(self, address: str, password: str) -> bool:
        issued, expiry = self._one_time.get(address, ("", 0.0))
        if not issued or not hmac.compare_digest(issued.encode(), password.encode()):
            return False
        self._one_time.pop(address, None)  # used once
        return time.monotonic() < expiry

    def _record_failure(self, client: str) -> None:
        count, _ = self._failures.pop(client, (0, 0.0))
        self._failures[client] = (count + 1, time.monotonic())
        if len(self._failures) > self.settings.max_tracked_clients:
            del self._failures[next(iter(self._failures))]  # the longest untouched

    @property
    def tracked_clients(self) -> int:
        return len(self._failures)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
