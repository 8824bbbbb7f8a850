"""ARC chains (RFC 8617) sealed in the test with dkimpy, as a mailing list
would seal them, and verified through a TXT lookup the test answers; the arc
resinfo of Authentication-Results; the DMARC aggregate records kept per day
(RFC 7489 7.2); the spam filter's answer turned into a verdict."""

from __future__ import annotations

import base64
import datetime
import json
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mailauth.arc import MAX_ARC_SETS, verify_arc
from appliance.mailauth.dmarc import AggregateRecords, DmarcResult
from appliance.mailauth.inbound import REJECT, Verdict, _filtered
from appliance.mailauth.results import authentication_results
from appliance.mailauth.rspamd import FilterResult
from appliance.mailauth.spf import SpfResult
from appliance.mailauth.verify import DkimResult, DnsTempError

SIGNED = [b"from", b"to", b"subject"]


def new_key() -> tuple[bytes, bytes]:
    """A 2048-bit RSA key: (PEM private key, base64 public key for p=)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public)


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[bytes, bytes]]:
    return {"author.test": new_key(), "lists.test": new_key(), "relay.test": new_key()}


@pytest.fixture
def zone(keys) -> dict[str, bytes]:
    return {f"k._domainkey.{d}": b"v=DKIM1; k=rsa; p=" + key[1] for d, key in keys.items()}


def lookup_in(zone: dict):
    def lookup(name: str):
        answer = zone.get(name)
        if isinstance(answer, Exception):
            raise answer
        return [answer] if answer else []

    return lookup


def seal(message: bytes, domain: str, keys, results: str) -> bytes:
    """The message as `domain` forwards it: its Authentication-Results on
    top, then its ARC set (dkimpy's arc_sign), as RFC 8617 5.1 has a sealer do."""
    pytest.importorskip("authres", reason="dkimpy seals ARC sets only with authres installed")
    field = f"Authentication-Results: {domain}; {results}\r\n".encode()
    name = domain.encode()
    sets = dkim.arc_sign(field + message, b"k", name, keys[domain][0], name, include_headers=SIGNED)
    return b"".join(sets) + field + message


def authored(keys) -> bytes:
    message = b"From: a@author.test\r\nTo: list@lists.test\r\nSubject: hi\r\n\r\nhello\r\n"
    key = keys["author.test"][0]
    signature = dkim.sign(message, b"k", b"author.test", key, include_headers=SIGNED)
    return signature + message


def through_list(keys) -> bytes:
    """A message that the list changed (subject tag, footer), breaking the
    author's signature, then sealed with what the list saw: dkim=pass."""
    changed = authored(keys).replace(b"Subject: hi", b"Subject: [list] hi") + b"-- \r\nfooter\r\n"
    return seal(changed, "lists.test", keys, "dkim=pass header.d=author.test; arc=none")


def test_a_message_without_arc_fields_has_no_chain(keys, zone):
    assert verify_arc(authored(keys), lookup_in(zone)).result == "none"


def test_a_list_seal_over_a_broken_signature_passes(keys, zone):
    message = through_list(keys)
    assert not dkim.verify(message, dnsfunc=lambda name, timeout=5: zone.get(name.decode()[:-1]))
    result = verify_arc(message, lookup_in(zone))
    assert (result.result, result.sealer, result.instance, result.oldest_pass) == (
        "pass",
        "lists.test",
        1,
        0,
    )


def test_a_second_hop_extends_the_chain_and_is_the_sealer(keys, zone):
    message = seal(through_list(keys), "relay.test", keys, "arc=pass; dkim=fail")
    result = verify_arc(message, lookup_in(zone))
    assert (result.result, result.sealer, result.instance) == ("pass", "relay.test", 2)


def test_a_body_changed_after_sealing_fails(keys, zone):
    message = through_list(keys).replace(b"footer", b"footer, changed")
    result = verify_arc(message, lookup_in(zone))
    assert result.result == "fail"
    assert "ARC-Message-Signature" in result.reason


def test_a_changed_seal_fails(keys, zone):
    message = through_list(keys).replace(b"dkim=pass header.d=author.test", b"dkim=pass")
    assert verify_arc(message, lookup_in(zone)).result == "fail"


def test_a_sealer_without_a_key_fails(keys, zone):
    del zone["k._domainkey.lists.test"]
    assert verify_arc(through_list(keys), lookup_in(zone)).result == "fail"


def test_a_key_lookup_failing_for_now_fails_and_says_so(keys, zone):
    zone["k._domainkey.lists.test"] = DnsTempError("SERVFAIL")
    result = verify_arc(through_list(keys), lookup_in(zone))
    assert result.result == "fail" and "for now" in result.reason


def test_a_seal_over_a_failed_chain_is_a_failed_chain(keys, zone):
    broken = through_list(keys).replace(b"footer", b"footer, changed")
    message = seal(broken, "relay.test", keys, "arc=fail")
    result = verify_arc(message, lookup_in(zone))
    assert (result.result, result.instance) == ("fail", 2)


def test_more_than_fifty_sets_fail_without_a_lookup(keys):
    asked = []
    fields = b"".join(
        f"ARC-Seal: i={i}; cv=pass; a=rsa-sha256; d=x.test; s=k; b=AA==\r\n".encode()
        for i in range(1, MAX_ARC_SETS + 2)
    )
    result = verify_arc(fields + authored(keys), lambda name: asked.append(name))
    assert result.result == "fail" and asked == []


def test_lookups_stop_at_the_chain_deadline(keys, zone):
    result = verify_arc(through_list(keys), lookup_in(zone), timeout=-1)
    assert result.result == "fail" and "too long" in result.reason


@pytest.mark.parametrize(
    "fields",
    [
        b"ARC-Seal: i=1\r\n",
        b"ARC-Message-Signature:i=1;a=rsa-sha256;d=x;s=k;h=from;bh=AA==;b=AA==\r\n"
        b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=x; s=k; b=AA==\r\n"
        b"ARC-Authentication-Results: i=1; x; none\r\n",
        b"ARC-Seal: i=1; cv=none; a=rsa-sha1; d=x; s=k; b=AA==\r\n",
        b"ARC-Seal: i=0; cv=none\r\nARC-Seal: i=x\r\n",
        b"ARC-Authentication-Results: i=99999999999999999999\r\n",
    ],
)
def test_malformed_arc_fields_fail_without_raising(keys, zone, fields):
    assert verify_arc(fields + authored(keys), lookup_in(zone)).result == "fail"


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_no_arc_field_makes_the_verifier_raise(value):
    message = b"ARC-Seal: " + value.replace(b"\n", b" ") + b"\r\nFrom: a@b.test\r\n\r\nx\r\n"
    assert verify_arc(message, lambda name: []).result in ("none", "pass", "fail")


# Authentication-Results


def test_the_arc_resinfo_names_the_sealer_and_the_registered_properties(keys, zone):
    arc = verify_arc(through_list(keys), lookup_in(zone))
    field = authentication_results("mx.test", None, [], None, arc, remote_ip="192.0.2.1")
    assert b"arc=pass (i=1 d=lists.test) header.oldest-pass=0 smtp.remote-ip=192.0.2.1" in field


def test_a_hostile_sealer_name_cannot_end_the_comment(keys, zone):
    message = through_list(keys).replace(b"d=lists.test; s=k;", b"d=a) dmarc=pass (x; s=k;", 1)
    field = authentication_results("mx.test", None, [], None, verify_arc(message, lookup_in(zone)))
    # Without its quoted strings and comments, the field says only what we found.
    bare = re.sub(rb'"(?:[^"\\]|\\.)*"|\([^()]*\)', b"", field)
    assert b"arc=fail" in bare and b"dmarc" not in bare


# DMARC aggregate records


def dmarc_result(**changes) -> DmarcResult:
    values = dict(
        result="fail",
        disposition="reject",
        from_domain="author.test",
        policy="reject",
        record_domain="author.test",
    )
    return DmarcResult(**{**values, **changes})


SPF = SpfResult("pass", "lists.test", "mailfrom", "", "")
DKIM_FAIL = [DkimResult("fail", "author.test", "k", "rsa-sha256", "body hash")]
NOON = datetime.datetime(2030, 1, 15, 12, tzinfo=datetime.UTC).timestamp()


def test_records_count_alike_messages_into_one_row(tmp_path):
    records = AggregateRecords(tmp_path)
    for _ in range(3):
        records.add(dmarc_result(), "192.0.2.1", SPF, DKIM_FAIL, now=NOON)
    records.add(dmarc_result(), "192.0.2.9", SPF, DKIM_FAIL, now=NOON)
    overridden = dmarc_result(disposition="none", override="trusted_forwarder")
    records.add(overridden, "192.0.2.1", SPF, DKIM_FAIL, now=NOON)
    rows = records.rows(datetime.date(2030, 1, 15))
    assert [(r.source_ip, r.disposition, r.override, r.count) for r in rows] == [
        ("192.0.2.1", "reject", "", 3),
        ("192.0.2.1", "none", "trusted_forwarder", 1),
        ("192.0.2.9", "reject", "", 1),
    ]
    first = rows[0]
    assert (first.header_from, first.envelope_from, first.dkim, first.spf) == (
        "author.test",
        "lists.test",
        "fail",
        "fail",
    )
    assert first.dkim_results == (("author.test", "k", "fail"),)
    assert first.spf_result == ("lists.test", "mfrom", "pass")


def test_records_keep_only_domains_with_a_policy(tmp_path):
    records = AggregateRecords(tmp_path)
    records.add(dmarc_result(result="none", record_domain="", policy=""), "192.0.2.1", SPF, [])
    assert list(tmp_path.iterdir()) == []


def test_a_line_cut_by_a_crash_is_skipped(tmp_path):
    records = AggregateRecords(tmp_path)
    records.add(dmarc_result(), "192.0.2.1", SPF, DKIM_FAIL, now=NOON)
    day = datetime.date(2030, 1, 15)
    with records.path(day).open("a") as f:
        f.write('{"ip": "192.0.2.')
    assert [row.count for row in records.rows(day)] == [1]


def test_a_full_day_stops_growing_and_old_days_are_removed(tmp_path):
    records = AggregateRecords(tmp_path, keep_days=2, max_bytes=1000)
    for _ in range(20):
        records.add(dmarc_result(), "192.0.2.1", SPF, DKIM_FAIL, now=NOON)
    day = datetime.date(2030, 1, 15)
    assert records.path(day).stat().st_size <= 1000
    assert all(json.loads(line) for line in records.path(day).read_text().splitlines())
    records.add(dmarc_result(), "192.0.2.1", SPF, DKIM_FAIL, now=NOON + 3 * 86400)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2030-01-18.jsonl"]


def test_records_never_cost_a_message(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    AggregateRecords(blocked / "dmarc").add(dmarc_result(), "192.0.2.1", SPF, DKIM_FAIL)


# The spam filter's answer


DELIVERED = Verdict("deliver", b"Authentication-Results: mx.test; dkim=none\r\n", None)


@pytest.mark.parametrize(
    ("action", "ours", "refusal"),
    [
        ("reject", "reject", (550, "5.7.1")),
        ("soft reject", "defer", (451, "4.7.1")),
        ("greylist", "defer", (451, "4.7.1")),
        ("add header", "junk", None),
        ("rewrite subject", "junk", None),
        ("no action", "deliver", None),
    ],
)
def test_each_filter_action_becomes_ours(action, ours, refusal):
    verdict = _filtered(DELIVERED, FilterResult(action, 9.0, 15.0, "Gtube pattern"))
    assert verdict.action == ours
    assert (verdict.refusal or (None, None))[:2] == (refusal or (None, None))
    assert verdict.head.startswith(DELIVERED.results_field)
    assert b"X-Spam-Checked: yes (rspamd: " + action.encode() in verdict.head
    assert (b"X-Spam: Yes\r\n" in verdict.head) == (ours == "junk")


def test_the_stricter_answer_wins():
    quarantined = Verdict("junk", b"", None)
    assert _filtered(quarantined, FilterResult("no action")).action == "junk"
    assert _filtered(quarantined, FilterResult("reject")).action == REJECT


def test_an_unavailable_filter_delivers_marked_unchecked():
    verdict = _filtered(DELIVERED, FilterResult(error="ClientConnectorError"))
    assert verdict.action == "deliver" and verdict.refusal is None
    assert verdict.head.endswith(b"X-Spam-Checked: no (filter unavailable)\r\n")
