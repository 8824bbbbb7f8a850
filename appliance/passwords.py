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


# A password set from the web must be long, or long enough and mixed: a
# page on the network is guessed at harder than a terminal on the box.
STRONG_LENGTH = 12
MIXED_LENGTH = 10
# Parts of the passwords tried first by every guesser, whatever their length.
_GUESSED_FIRST = ("password", "passw0rd", "qwerty", "123456", "letmein", "admin", "welcome")


def check_strength(password: str, address: str) -> None:
    """Raise WeakPassword, saying why, unless the password is hard to guess."""
    local, _, domain = address.lower().partition("@")
    lowered = password.lower()
    if len(set(password)) < 5 or any(part in lowered for part in _GUESSED_FIRST):
        raise WeakPassword("password too easy to guess: use a passphrase of several words")
    if (local and local in lowered) or (domain and domain.split(".")[0] in lowered):
        raise WeakPassword("password must not contain the address or the domain")
    classes = sum(
        any(test(c) for c in password)
        for test in (str.islower, str.isupper, str.isdigit, lambda c: not c.isalnum())
    )
    if len(password) < STRONG_LENGTH and not (len(password) >= MIXED_LENGTH and classes >= 3):
        raise WeakPassword(
            f"password too weak: at least {STRONG_LENGTH} characters, or {MIXED_LENGTH} "
            "mixing upper and lower case, digits and symbols"
        )
