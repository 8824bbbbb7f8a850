"""Which passwords the web pages accept, and the reason they give for the rest."""

import pytest

from appliance.passwords import (
    MAX_LENGTH,
    MIN_LENGTH,
    WeakPassword,
    check_strength,
    hash_password,
    verify_password,
)

ADDRESS = "ann@example.com"


@pytest.mark.parametrize(
    "password",
    [
        "correct horse battery",  # a passphrase of a few words
        "lantern orchard 77 bicycle",
        "abcdefghijkm",  # 12 characters: long enough unmixed
        "Plum7!rain",  # 10, mixing upper and lower case, digits and symbols
        "Plum7rainX",  # 10 with three kinds: upper, lower, digits
        "plum7!rainy",  # 11 with lower, digits and symbols
        "Kärnten Wölfe 42",  # any letters count
    ],
)
def test_strong_passwords_are_accepted(password):
    check_strength(password, ADDRESS)


@pytest.mark.parametrize(
    ("password", "reason"),
    [
        ("aaaaaaaaaaaaaaaa", "too easy to guess"),  # long, but few different characters
        ("abababcdcdcd", "too easy to guess"),  # four different characters
        ("my password is long", "too easy to guess"),
        ("MyPassWord is long", "too easy to guess"),  # whatever the case
        ("QWERTY but longer", "too easy to guess"),
        ("the 123456 of mine", "too easy to guess"),
        ("welcome to the box", "too easy to guess"),
        ("i am the admin here", "too easy to guess"),
        ("ann is a great name", "must not contain the address or the domain"),
        ("I love Example mail", "must not contain the address or the domain"),
        ("plumrainxy", "too weak"),  # 10, only lower case
        ("plum7rainy", "too weak"),  # 10, two kinds
        ("Plum7!rai", "too weak"),  # mixed but 9
        ("plumrainxyz", "too weak"),  # 11 unmixed
        ("", "too easy to guess"),
    ],
)
def test_weak_passwords_are_refused_with_their_reason(password, reason):
    with pytest.raises(WeakPassword, match=reason):
        check_strength(password, ADDRESS)


def test_the_reason_for_a_short_password_says_what_would_do():
    with pytest.raises(WeakPassword) as refused:
        check_strength("plumrainxy", ADDRESS)
    assert str(refused.value) == (
        "password too weak: at least 12 characters, or 10 mixing upper and lower case, "
        "digits and symbols"
    )


def test_an_address_without_local_part_or_domain_is_no_reason_to_refuse():
    check_strength("lantern orchard 77 bicycle", "")


def test_hashing_refuses_passwords_outside_its_lengths():
    with pytest.raises(WeakPassword, match="too short"):
        hash_password("x" * (MIN_LENGTH - 1))
    with pytest.raises(WeakPassword, match="too long"):
        hash_password("x" * (MAX_LENGTH + 1))


def test_a_hash_verifies_its_password_only():
    hashed = hash_password("lantern orchard 77 bicycle")
    assert hashed.startswith("$argon2id$")
    assert verify_password(hashed, "lantern orchard 77 bicycle")
    assert not verify_password(hashed, "lantern orchard 77 bicyclE")
    assert not verify_password(hashed, "x" * (MAX_LENGTH + 1))
    assert not verify_password("not a hash", "lantern orchard 77 bicycle")
