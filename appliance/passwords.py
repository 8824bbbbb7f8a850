"""Password hashes: Argon2id (RFC 9106) with a per-hash random salt.

The cost is OWASP's minimum for Argon2id (19 MiB, 2 passes, 1 lane): a small
box must hash without exhausting its memory, and the salt and parameters are
kept in the encoded hash, so raising them later re-hashes on the next login.
"""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_HASHER = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)

MIN_LENGTH = 8
MAX_LENGTH = 1024  # bounds the work an attacker can ask of us per attempt


class WeakPassword(ValueError):
    pass


def hash_password(password: str) -> str:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"password too short: at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"password too long: at most {MAX_LENGTH} characters")
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
