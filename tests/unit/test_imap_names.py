"""Mailbox names the server lets exist: the decoded name, and the wire forms that lead to it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.imap.names import (
    MAX_LEVEL_OCTETS,
    MAX_LEVELS,
    MAX_NAME_OCTETS,
    mailbox_name_error,
)
from appliance.imap.parser import (
    MailboxArgs,
    ParseError,
    decode_mailbox_name,
    mailbox_name,
    parse_command,
)


@pytest.mark.parametrize(
    "name",
    [
        "INBOX",
        "INBOX/Receipts",
        "Archive/2024/March",
        "Tom & Jerry",
        "&AOk-",  # sent by a UTF-8 client: the characters themselves, never decoded
        "été",
        "台北/日本語",
        "\U0001f600 later",
        "Projects/",  # CREATE's trailing delimiter (RFC 9051 6.3.4)
        "~peter/mail",
        " spaced out ",
        "a.b/.hidden/..dots",
        "x" * MAX_LEVEL_OCTETS,
        "日" * (MAX_LEVEL_OCTETS // 3),
        "/".join(["a"] * MAX_LEVELS),
        "/".join(["y" * 199] * 5),  # 999 octets
    ],
)
def test_names_people_use_are_accepted(name):
    assert mailbox_name_error(name) is None


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("", "Mailbox name is empty"),
        ("/", "Mailbox name starts with the hierarchy delimiter /"),
        ("/etc/passwd", "Mailbox name starts with the hierarchy delimiter /"),
        ("a//b", "Mailbox name has an empty level (//)"),
        ("a//", "Mailbox name has an empty level (//)"),
        (".", "Mailbox name has a . or .. level"),
        ("..", "Mailbox name has a . or .. level"),
        ("a/../b", "Mailbox name has a . or .. level"),
        ("a/./b", "Mailbox name has a . or .. level"),
        ("a/..", "Mailbox name has a . or .. level"),
        ("a%b", "Mailbox name has a LIST wildcard (% or *)"),
        ("*", "Mailbox name has a LIST wildcard (% or *)"),
        ("tab\there", "Mailbox name has a control character or is not valid Unicode"),
        ("nul\0", "Mailbox name has a control character or is not valid Unicode"),
        ("line\r\nbreak", "Mailbox name has a control character or is not valid Unicode"),
        ("del\x7f", "Mailbox name has a control character or is not valid Unicode"),
        ("c1\x85next", "Mailbox name has a control character or is not valid Unicode"),
        ("line\u2028sep", "Mailbox name has a control character or is not valid Unicode"),
        ("para\u2029sep", "Mailbox name has a control character or is not valid Unicode"),
        ("lone\ud800", "Mailbox name has a control character or is not valid Unicode"),
        ("x" * (MAX_LEVEL_OCTETS + 1), "Mailbox name has a level longer than 255 octets"),
        ("日" * 86, "Mailbox name has a level longer than 255 octets"),  # 258 octets
        ("/".join(["a"] * (MAX_LEVELS + 1)), "Mailbox name has more than 32 levels"),
        ("/".join(["y" * 200] * 5), "Mailbox name is longer than 1000 octets"),  # 1004
        ("é" * 501, "Mailbox name is longer than 1000 octets"),  # 1002 octets
    ],
)
def test_names_that_cannot_exist_are_refused_with_a_reason(name, error):
    assert mailbox_name_error(name) == error


def test_the_limits_are_what_the_messages_say():
    assert (MAX_NAME_OCTETS, MAX_LEVEL_OCTETS, MAX_LEVELS) == (1000, 255, 32)


def test_the_error_never_repeats_the_name():
    name = "evil\r\n* OK [ALERT] forged/a//b"
    error = mailbox_name_error(name)
    assert error is not None and "evil" not in error and "\r" not in error


def test_another_delimiter_is_honoured():
    assert mailbox_name_error("a/b//c", delimiter=".") is None
    assert mailbox_name_error("a..b", delimiter=".") == "Mailbox name has an empty level (..)"
    assert mailbox_name_error(".a", delimiter=".") == (
        "Mailbox name starts with the hierarchy delimiter ."
    )


# -- from the wire: modified UTF-7 until UTF8=ACCEPT (RFC 3501 5.1.3, RFC 6855 3) --------


def judged(raw: str, utf8: bool) -> str | None:
    """What a name sent as raw comes to: the parser's verdict, then this module's."""
    try:
        name = decode_mailbox_name(raw, utf8)
    except ValueError:
        return "not modified UTF-7"
    return mailbox_name_error(name)


@pytest.mark.parametrize(
    ("raw", "utf8", "verdict"),
    [
        ("Tom &- Jerry", False, None),  # "&-" is the "&" itself
        ("Tom & Jerry", False, "not modified UTF-7"),  # a bare "&" starts a shift
        ("Tom & Jerry", True, None),  # in UTF-8 "&" is just "&"
        ("&AOk-t&AOk-", False, None),  # été
        ("été", False, "not modified UTF-7"),  # 8-bit before UTF8=ACCEPT: BAD
        ("été", True, None),
        ("&AC8-etc", False, "not modified UTF-7"),  # "/" in disguise: printable, so not encoded
        ("&AC4ALg-", False, "not modified UTF-7"),  # ".." in disguise
        # Characters that only a shift can carry, and that no name may hold:
        ("a&AAk-b", False, "Mailbox name has a control character or is not valid Unicode"),
        ("a&AIU-b", False, "Mailbox name has a control character or is not valid Unicode"),
        ("a&ICg-b", False, "Mailbox name has a control character or is not valid Unicode"),
        ("a&2D0-", False, "not modified UTF-7"),  # a lone surrogate
    ],
)
def test_wire_forms_and_what_becomes_of_them(raw, utf8, verdict):
    assert judged(raw, utf8) == verdict


def test_utf8_name_without_utf8_accept_is_a_syntax_error():
    with pytest.raises(ParseError, match="modified UTF-7") as caught:
        parse_command('a CREATE "été"'.encode())
    assert caught.value.status == "BAD"
    assert parse_command('a CREATE "été"'.encode(), utf8=True).args.mailbox == "été"


@given(st.text(max_size=60))
def test_every_accepted_name_travels_both_ways(name):
    if mailbox_name_error(name) is not None:
        return
    for utf8 in (False, True):
        parsed = parse_command(b"a SUBSCRIBE " + mailbox_name(name, utf8), utf8=utf8).args
        assert parsed == MailboxArgs("INBOX" if name.upper() == "INBOX" else name)


@given(st.text())
def test_any_text_gets_an_answer_and_never_an_exception(name):
    error = mailbox_name_error(name)
    assert error is None or error.startswith("Mailbox name ")
