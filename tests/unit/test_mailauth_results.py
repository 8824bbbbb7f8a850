"""The Authentication-Results field (RFC 8601): built, parsed back, and
forged copies of ours removed."""

from __future__ import annotations

import email
import email.policy
import re

import pytest

from appliance.mailauth.dmarc import DmarcResult
from appliance.mailauth.results import (
    authentication_results,
    field_value,
    header_fields,
    our_results_ranges,
    without_ranges,
)
from appliance.mailauth.spf import SpfResult
from appliance.mailauth.verify import DkimResult

AUTHSERV_ID = "mx.example.com"


def parse(field: bytes) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """(authserv-id, [(method, result, {ptype.property: value})]) of an
    Authentication-Results field (RFC 8601 2.2), comments dropped."""
    name, _, value = field.decode("utf-8").partition(":")
    assert name == "Authentication-Results"
    value = re.sub(r"\r\n(?=[ \t])", "", value).removesuffix("\r\n")
    tokens = re.findall(r'\((?:[^()\\]|\\.)*\)|;|(?:[^\s;"()]|"(?:[^"\\]|\\.)*")+', value)
    words = [t for t in tokens if not t.startswith("(")]
    groups: list[list[str]] = [[]]
    for word in words:
        if word == ";":
            groups.append([])
        else:
            groups[-1].append(word)
    authserv_id, *resinfos = groups
    parsed = []
    for resinfo in resinfos:
        method, _, result = resinfo[0].partition("=")
        properties = {}
        for word in resinfo[1:]:
            key, _, raw = word.partition("=")
            if raw.startswith('"'):
                raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
            properties[key] = raw
        parsed.append((method, result, properties))
    return authserv_id[0], parsed


SPF = SpfResult("pass", "bounces.example.org", "mailfrom", explanation="", comment="")
DKIM = [
    DkimResult("pass", "example.org", "a20260101r", "rsa-sha256"),
    DkimResult("fail", "example.org", "a20260101e", "ed25519-sha256", reason='body hash "bh="'),
]
DMARC = DmarcResult("pass", "none", "example.org", policy="reject", record_domain="example.org")


def test_every_method_parses_back_in_order():
    field = authentication_results(AUTHSERV_ID, SPF, DKIM, DMARC)
    authserv_id, resinfos = parse(field)
    assert authserv_id == AUTHSERV_ID
    assert resinfos == [
        ("spf", "pass", {"smtp.mailfrom": "bounces.example.org"}),
        (
            "dkim",
            "pass",
            {"header.d": "example.org", "header.s": "a20260101r", "header.a": "rsa-sha256"},
        ),
        (
            "dkim",
            "fail",
            {
                "reason": 'body hash "bh="',
                "header.d": "example.org",
                "header.s": "a20260101e",
                "header.a": "ed25519-sha256",
            },
        ),
        ("dmarc", "pass", {"header.from": "example.org"}),
    ]
    assert b"(p=reject dis=none)" in field


def test_field_is_folded_within_78_octets_and_reads_the_same_to_the_stdlib():
    long_dkim = [
        DkimResult(
            "permerror", "sub." * 10 + "example.org", "s" * 30, "rsa-sha256", reason="x" * 90
        )
    ]
    field = authentication_results(AUTHSERV_ID, SPF, DKIM + long_dkim, DMARC)
    assert field.endswith(b"\r\n") and b"\n" not in field.replace(b"\r\n", b"")
    lines = field.split(b"\r\n")[:-1]
    assert all(line[:1] in (b" ", b"\t") for line in lines[1:])
    # Only a single quoted word longer than a line may exceed it.
    assert all(len(line) <= 78 or b'"' + b"x" * 90 in line for line in lines)
    message = email.message_from_bytes(field + b"\r\nbody\r\n", policy=email.policy.compat32)
    unfolded = re.sub(r"\r\n(?=[ \t])", "", field.decode()).partition(": ")[2].strip()
    assert message["Authentication-Results"].replace("\r\n", "") == unfolded
    assert parse(field)[1][-2][2]["reason"] == "x" * 90


def test_helo_identity_and_missing_methods():
    helo = SpfResult("none", "mx.sender.example", "helo", explanation="", comment="")
    _, resinfos = parse(authentication_results(AUTHSERV_ID, helo, [], None))
    assert resinfos == [
        ("spf", "none", {"smtp.helo": "mx.sender.example"}),
        ("dkim", "none", {}),
    ]
    _, resinfos = parse(authentication_results(AUTHSERV_ID, None, [], None))
    assert resinfos == [("dkim", "none", {})]


def test_dmarc_failure_reports_the_disposition_applied():
    dmarc = DmarcResult("fail", "quarantine", "example.org", policy="reject", sampled_out=True)
    field = authentication_results(AUTHSERV_ID, None, [], dmarc)
    assert b"dmarc=fail (p=reject dis=quarantine) header.from=example.org" in field


def test_value_with_specials_is_quoted():
    odd = [DkimResult("neutral", "exa mple.org", "se;l", "rsa-sha256", reason="syntax")]
    _, resinfos = parse(authentication_results(AUTHSERV_ID, None, odd, None))
    assert resinfos[0][2]["header.d"] == "exa mple.org"
    assert resinfos[0][2]["header.s"] == "se;l"


# Removing forged fields of our authserv-id

FORGED_MESSAGE = (
    b"Received: from relay.example.net\r\n"
    b"Authentication-Results: MX.Example.COM;\r\n"
    b"  dkim=pass header.d=bank.example\r\n"
    b"Authentication-Results: relay.example.net; spf=pass smtp.mailfrom=example.net\r\n"
    b"authentication-results:(forged) mx.example.com 1; dmarc=pass\r\n"
    b"Authentication-Results: mx.example.com.evil.example; dkim=pass\r\n"
    b'Authentication-Results: "mx.example.com"; spf=pass\r\n'
    b"Subject: hello\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.com; in the body, untouched\r\n"
)
KEPT = (
    b"Received: from relay.example.net\r\n"
    b"Authentication-Results: relay.example.net; spf=pass smtp.mailfrom=example.net\r\n"
    b"Authentication-Results: mx.example.com.evil.example; dkim=pass\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"Authentication-Results: mx.example.com; in the body, untouched\r\n"
)


@pytest.mark.parametrize("kind", [bytes, memoryview])
def test_fields_with_our_authserv_id_are_removed_and_others_kept(kind):
    message = kind(FORGED_MESSAGE)
    ranges = our_results_ranges(message, AUTHSERV_ID)
    assert len(ranges) == 3
    assert b"".join(without_ranges(message, ranges)) == KEPT


def test_nothing_to_remove_keeps_the_message_whole():
    message = KEPT.replace(b"\r\n\r\nAuthentication-Results: mx.example.com;", b"\r\n\r\nx")
    assert our_results_ranges(message, AUTHSERV_ID) == []
    assert b"".join(without_ranges(message, [])) == message


def test_header_fields_with_bare_lf_and_folding():
    message = (
        b"From: a@example.org\nSubject: one\n two\nnot a field\nTo: b@example.com\n\nbody: x\n"
    )
    fields = list(header_fields(message))
    assert [f.name for f in fields] == [b"from", b"subject", b"", b"to"]
    assert field_value(message, fields[1]) == b" one two"
    assert message[fields[-1].end :] == b"\nbody: x\n"
