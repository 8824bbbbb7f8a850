"""DMARC (RFC 7489): author domain, organizational domain, record, alignment
and disposition, with DNS answered from a dict."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mailauth.dmarc import (
    FAIL,
    NONE,
    PASS,
    PERMERROR,
    QUARANTINE,
    REJECT,
    TEMPERROR,
    AuthorError,
    RecordError,
    author_domain,
    evaluate_dmarc,
    organizational_domain,
    parse_record,
)
from appliance.mailauth.spf import SpfResult
from appliance.mailauth.verify import DkimResult, DnsTempError


def lookup(records: dict[str, object]):
    asked: list[str] = []

    def answer(name: str):
        asked.append(name)
        value = records.get(name)
        if isinstance(value, Exception):
            raise value
        return value

    answer.asked = asked
    return answer


def dkim_pass(domain: str) -> DkimResult:
    return DkimResult("pass", domain, "sel", "rsa-sha256")


def spf(result: str, domain: str, identity: str = "mailfrom") -> SpfResult:
    return SpfResult(result, domain, identity, explanation="", comment="")


def spf_pass(mail_from: str) -> SpfResult:
    return spf("pass", mail_from.rpartition("@")[2])


NEVER_SAMPLED = lambda: 0.999  # noqa: E731 - above any pct below 100
ALWAYS_SAMPLED = lambda: 0.0  # noqa: E731


# The author domain


@pytest.mark.parametrize(
    ("field", "domain"),
    [
        (b"From: Alice <alice@Example.ORG>\r\n", "example.org"),
        (b"From: alice@example.org (Alice)\r\n", "example.org"),
        (b'From: "Doe, Jane" <jane@mail.example.co.uk>\r\n', "mail.example.co.uk"),
        (b"From: J. Doe\r\n <j@example.org>\r\n", "example.org"),
        (b"fRoM: (comment) <alice@example.org.>\r\n", "example.org"),
        (b"From: Team: alice@example.org;\r\n", "example.org"),
    ],
)
def test_author_domain_of_one_from_address(field, domain):
    assert (
        author_domain(b"To: bob@example.com\r\n" + field + b"\r\nFrom: body@not.header\r\n")
        == domain
    )


@pytest.mark.parametrize(
    "header",
    [
        b"To: bob@example.com\r\n",  # no From
        b"From: a@example.org\r\nFrom: b@example.net\r\n",  # two fields
        b"From: a@example.org, b@example.net\r\n",  # two addresses
        b"From: undisclosed-recipients:;\r\n",  # a group with none
        b"From: alice@example.org)<bob@evil.example>\r\n",  # ambiguous
        b"From: Alice\r\n",  # no address
        b"From: alice@[192.0.2.1]\r\n",  # no domain
        b'From: "unterminated <a@example.org>\r\n',
    ],
)
def test_anything_but_one_from_address_is_refused(header):
    with pytest.raises(AuthorError):
        author_domain(header + b"\r\nbody\r\n")


# Organizational domains


@pytest.mark.parametrize(
    ("domain", "organizational"),
    [
        ("mail.example.co.uk", "example.co.uk"),
        ("example.co.uk", "example.co.uk"),
        ("a.b.example.com", "example.com"),
        ("co.uk", "co.uk"),
    ],
)
def test_organizational_domain_is_one_label_below_the_public_suffix(domain, organizational):
    assert organizational_domain(domain) == organizational


# Records


def test_record_tags_and_defaults():
    record = parse_record(b"v=DMARC1; p=quarantine; rua=mailto:d@example.org")
    assert (record.policy, record.subdomain_policy, record.percent) == (QUARANTINE, QUARANTINE, 100)
    assert (record.dkim_alignment, record.spf_alignment) == ("r", "r")
    record = parse_record(b"v=DMARC1;p=reject;sp=none;pct=20;adkim=s;aspf=s;fo=1")
    assert (record.policy, record.subdomain_policy, record.percent) == (REJECT, NONE, 20)
    assert (record.dkim_alignment, record.spf_alignment) == ("s", "s")


@pytest.mark.parametrize(
    "text", [b"p=reject; v=DMARC1", b"v=DMARC2; p=reject", b"v=DMARC1; p=bogus", b"v=DMARC1"]
)
def test_unusable_records_are_refused(text):
    with pytest.raises(RecordError):
        parse_record(text)


def test_invalid_policy_with_a_report_address_counts_as_none():
    record = parse_record(b"v=DMARC1; p=bogus; rua=mailto:d@example.org")
    assert record.policy == NONE


# Evaluation: each policy with aligned and misaligned identifiers

POLICY_CASES = [
    # (p, spf outcome, dkim results, result, disposition)
    (REJECT, spf_pass("bounce@example.org"), [], PASS, NONE),
    (REJECT, spf_pass("bounce@mail.example.org"), [], PASS, NONE),  # relaxed
    (REJECT, None, [dkim_pass("example.org")], PASS, NONE),
    (REJECT, None, [dkim_pass("news.example.org")], PASS, NONE),  # relaxed
    (REJECT, spf_pass("bounce@esp.example"), [dkim_pass("esp.example")], FAIL, REJECT),
    (REJECT, spf("fail", "example.org"), [], FAIL, REJECT),
    (QUARANTINE, spf_pass("bounce@example.org"), [], PASS, NONE),
    (QUARANTINE, None, [dkim_pass("example.org")], PASS, NONE),
    (QUARANTINE, spf_pass("bounce@esp.example"), [dkim_pass("esp.example")], FAIL, QUARANTINE),
    (NONE, spf_pass("bounce@example.org"), [], PASS, NONE),
    (NONE, None, [dkim_pass("esp.example")], FAIL, NONE),
]


@pytest.mark.parametrize(("policy", "spf", "dkim", "result", "disposition"), POLICY_CASES)
def test_policy_with_alignment(policy, spf, dkim, result, disposition):
    keys = lookup({"_dmarc.example.org": f"v=DMARC1; p={policy}".encode()})
    outcome = evaluate_dmarc("example.org", spf, dkim, keys)
    assert (outcome.result, outcome.disposition, outcome.policy) == (result, disposition, policy)


def test_failed_dkim_signature_of_the_author_domain_does_not_align():
    keys = lookup({"_dmarc.example.org": b"v=DMARC1; p=reject"})
    failed = DkimResult("fail", "example.org", "sel", "rsa-sha256")
    outcome = evaluate_dmarc("example.org", None, [failed], keys)
    assert (outcome.result, outcome.disposition, outcome.dkim_aligned) == (FAIL, REJECT, False)


def test_strict_alignment_needs_the_same_domain():
    keys = lookup({"_dmarc.example.org": b"v=DMARC1; p=reject; adkim=s; aspf=s"})
    sub = evaluate_dmarc(
        "example.org", spf_pass("b@mail.example.org"), [dkim_pass("news.example.org")], keys
    )
    assert (sub.result, sub.disposition) == (FAIL, REJECT)
    same = evaluate_dmarc("example.org", None, [dkim_pass("EXAMPLE.org")], keys)
    assert same.result == PASS


def test_null_sender_aligns_by_the_helo_name():
    keys = lookup({"_dmarc.example.org": b"v=DMARC1; p=reject"})
    helo = spf("pass", "mx.example.org", identity="helo")
    outcome = evaluate_dmarc("example.org", helo, [], keys)
    assert (outcome.result, outcome.spf_aligned) == (PASS, True)


def test_subdomain_gets_sp_from_the_organizational_record():
    keys = lookup({"_dmarc.example.org": b"v=DMARC1; p=reject; sp=quarantine"})
    outcome = evaluate_dmarc("shop.example.org", None, [dkim_pass("esp.example")], keys)
    assert keys.asked == ["_dmarc.shop.example.org", "_dmarc.example.org"]
    assert (outcome.result, outcome.policy, outcome.disposition) == (FAIL, QUARANTINE, QUARANTINE)
    assert outcome.record_domain == "example.org"


def test_subdomain_with_its_own_record_gets_its_p():
    keys = lookup(
        {
            "_dmarc.shop.example.org": b"v=DMARC1; p=none",
            "_dmarc.example.org": b"v=DMARC1; p=reject; sp=reject",
        }
    )
    outcome = evaluate_dmarc("shop.example.org", None, [], keys)
    assert (outcome.result, outcome.disposition, outcome.record_domain) == (
        FAIL,
        NONE,
        "shop.example.org",
    )


def test_organizational_domain_under_a_multi_label_suffix():
    keys = lookup({"_dmarc.example.co.uk": b"v=DMARC1; p=reject; sp=reject"})
    failing = evaluate_dmarc("mail.example.co.uk", None, [dkim_pass("other.co.uk")], keys)
    assert keys.asked == ["_dmarc.mail.example.co.uk", "_dmarc.example.co.uk"]
    assert (failing.result, failing.disposition) == (FAIL, REJECT)
    passing = evaluate_dmarc("mail.example.co.uk", None, [dkim_pass("news.example.co.uk")], keys)
    assert passing.result == PASS
    # co.uk is a suffix, not an organization: a signature by it does not align.
    by_suffix = evaluate_dmarc("mail.example.co.uk", None, [dkim_pass("co.uk")], keys)
    assert by_suffix.result == FAIL


@pytest.mark.parametrize(
    ("policy", "sampled_out_disposition"), [(REJECT, QUARANTINE), (QUARANTINE, NONE)]
)
def test_pct_applies_the_policy_to_the_sampled_share_and_the_next_milder_to_the_rest(
    policy, sampled_out_disposition
):
    keys = lookup({"_dmarc.example.org": f"v=DMARC1; p={policy}; pct=30".encode()})
    inside = evaluate_dmarc("example.org", None, [], keys, sample=lambda: 0.29)
    assert (inside.disposition, inside.sampled_out) == (policy, False)
    outside = evaluate_dmarc("example.org", None, [], keys, sample=lambda: 0.30)
    assert (outside.result, outside.disposition, outside.sampled_out) == (
        FAIL,
        sampled_out_disposition,
        True,
    )


def test_pct_zero_never_applies_and_passing_mail_is_never_sampled():
    keys = lookup({"_dmarc.example.org": b"v=DMARC1; p=reject; pct=0"})
    assert evaluate_dmarc("example.org", None, [], keys, sample=ALWAYS_SAMPLED).disposition == (
        QUARANTINE
    )
    passing = evaluate_dmarc("example.org", None, [dkim_pass("example.org")], keys)
    assert (passing.result, passing.disposition, passing.sampled_out) == (PASS, NONE, False)


def test_no_record_is_none():
    keys = lookup({"_dmarc.example.org": [b"v=spf1 -all", b"something else"]})
    outcome = evaluate_dmarc("example.org", None, [], keys)
    assert (outcome.result, outcome.disposition, outcome.policy) == (NONE, NONE, "")


def test_two_records_are_no_policy():
    keys = lookup({"_dmarc.example.org": [b"v=DMARC1; p=reject", b"v=DMARC1; p=none"]})
    assert evaluate_dmarc("example.org", None, [], keys).result == NONE


def test_dns_failure_is_temperror_and_applies_nothing():
    keys = lookup({"_dmarc.example.org": DnsTempError("timed out")})
    outcome = evaluate_dmarc("example.org", None, [], keys, sample=ALWAYS_SAMPLED)
    assert (outcome.result, outcome.disposition) == (TEMPERROR, NONE)


def test_broken_record_is_permerror_and_applies_nothing():
    keys = lookup({"_dmarc.example.org": b"v=DMARC1; p=bogus"})
    outcome = evaluate_dmarc("example.org", None, [], keys, sample=ALWAYS_SAMPLED)
    assert (outcome.result, outcome.disposition) == (PERMERROR, NONE)


def test_without_pct_every_failing_message_gets_the_policy():
    keys = lookup({"_dmarc.example.org": b"v=DMARC1; p=reject"})
    outcome = evaluate_dmarc("example.org", None, [], keys, sample=NEVER_SAMPLED)
    assert (outcome.disposition, outcome.sampled_out) == (REJECT, False)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.sampled_from(list(b'<>()[]@,;:\\". \t') + [b"\r\n ", b"a", b"example.org", b"\xc3\xa9"])
        | st.binary(max_size=4),
        max_size=30,
    )
)
def test_from_fields_either_give_a_domain_or_are_refused(pieces):
    value = b"".join(bytes([p]) if isinstance(p, int) else p for p in pieces)
    try:
        domain = author_domain(b"From: " + value + b"\r\n\r\n")
    except AuthorError:
        return
    assert domain and domain == domain.lower() and domain.isascii()
