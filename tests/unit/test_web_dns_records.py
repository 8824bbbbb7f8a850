"""The records the DNS page tells the owner to publish, and the MTA-STS policy the box serves.

The values are what an owner pastes into their DNS provider's form; the zone
lines are read back by dnspython's zone parser to prove they are zone syntax,
and the policy by the queue's own RFC 8461 parser.
"""

from __future__ import annotations

import datetime
import re

import dns.rdatatype
import dns.zone
import pytest

from appliance.addresses import AddressError
from appliance.delivery.mta_sts import Mode, parse_policy
from appliance.mailauth import dkim
from appliance.web.dns_records import (
    DEFAULT_SRV_PORTS,
    PTR,
    Expected,
    expected_records,
    mta_sts_id,
    mta_sts_policy,
)

HOST = "mail.example.com"
DOMAIN = "example.com"
KEYS_MADE = datetime.date(2026, 1, 5)


@pytest.fixture
def data_dir(tmp_path):
    dkim.make_keys(tmp_path, DOMAIN, today=KEYS_MADE)
    return tmp_path


def by_name(records: list[Expected]) -> dict[tuple[str, str], list[str]]:
    table: dict[tuple[str, str], list[str]] = {}
    for record in records:
        table.setdefault((record.name, record.type), []).append(record.value)
    return table


def test_mx_spf_dmarc_tls_rpt_and_aliases_name_the_box(data_dir):
    table = by_name(expected_records(HOST, DOMAIN, data_dir))
    assert table[(DOMAIN, "MX")] == ["10 mail.example.com."]
    assert table[(DOMAIN, "TXT")] == ["v=spf1 mx -all"]
    assert table[(HOST, "TXT")] == ["v=spf1 a -all"]  # the HELO name, checked for bounces
    assert table[("_dmarc.example.com", "TXT")] == [
        "v=DMARC1; p=quarantine; rua=mailto:postmaster@example.com"
    ]
    assert table[("_smtp._tls.example.com", "TXT")] == [
        "v=TLSRPTv1; rua=mailto:postmaster@example.com"
    ]
    for alias in ("mta-sts", "autoconfig", "autodiscover"):
        assert table[(f"{alias}.example.com", "CNAME")] == ["mail.example.com."]


def test_srv_records_for_every_client_service(data_dir):
    table = by_name(expected_records(HOST, DOMAIN, data_dir))
    srv = {name: values for (name, kind), values in table.items() if kind == "SRV"}
    assert srv == {
        "_submissions._tcp.example.com": ["0 0 465 mail.example.com."],
        "_submission._tcp.example.com": ["1 0 587 mail.example.com."],
        "_imaps._tcp.example.com": ["0 0 993 mail.example.com."],
        "_pop3s._tcp.example.com": ["10 0 995 mail.example.com."],
        "_autodiscover._tcp.example.com": ["0 0 443 mail.example.com."],
    }


def test_srv_records_follow_the_ports_given(data_dir):
    records = expected_records(HOST, DOMAIN, data_dir, ports={"imaps": 10993})
    assert [(r.name, r.value) for r in records if r.type == "SRV"] == [
        ("_imaps._tcp.example.com", "0 0 10993 mail.example.com.")
    ]
    with pytest.raises(ValueError, match="gopher"):
        expected_records(HOST, DOMAIN, data_dir, ports={"gopher": 70})


def test_dkim_records_are_the_keys_of_every_selector(data_dir):
    table = by_name(expected_records(HOST, DOMAIN, data_dir))
    published = {
        (record.name, "TXT"): [record.value] for record in dkim.dns_records(data_dir, DOMAIN)
    }
    assert set(published) == {
        ("a20260105r._domainkey.example.com", "TXT"),
        ("a20260105e._domainkey.example.com", "TXT"),
    }
    for key, value in published.items():
        assert table[key] == value
        assert value[0].startswith(("v=DKIM1; k=rsa; p=MII", "v=DKIM1; k=ed25519; p="))


def test_a_retired_dkim_key_stays_to_publish_and_says_so(data_dir):
    dkim.rotate(data_dir, DOMAIN, today=KEYS_MADE + datetime.timedelta(days=1))
    records = [r for r in expected_records(HOST, DOMAIN, data_dir) if "_domainkey" in r.name]
    retired = {r.name.partition(".")[0] for r in records if "Retired" in r.purpose}
    active = {r.name.partition(".")[0] for r in records if "Retired" not in r.purpose}
    assert retired == {"a20260105r", "a20260105e"}
    assert active == {"a20260106r", "a20260106e"}


def test_known_addresses_give_address_and_reverse_records(data_dir):
    records = expected_records(HOST, DOMAIN, data_dir, ["192.0.2.10", "2001:DB8:0::10"])
    table = by_name(records)
    assert table[(HOST, "A")] == ["192.0.2.10"]
    assert table[(HOST, "AAAA")] == ["2001:db8::10"]
    reverse_v6 = "0.1.0.0" + ".0" * 20 + ".8.b.d.0.1.0.0.2.ip6.arpa"
    assert table[("10.2.0.192.in-addr.arpa", "PTR")] == ["mail.example.com."]
    assert table[(reverse_v6, "PTR")] == ["mail.example.com."]
    ptrs = [r for r in records if r.type == "PTR"]
    assert all(r.kind == PTR and not r.in_zone for r in ptrs)
    assert all(r.in_zone for r in records if r.type != "PTR")


def test_without_addresses_only_the_presence_of_an_address_is_asked(data_dir):
    records = expected_records(HOST, DOMAIN, data_dir)
    addresses = [r for r in records if r.type in ("A", "AAAA")]
    assert [(r.name, r.type, r.value) for r in addresses] == [(HOST, "A", "")]
    assert not [r for r in records if r.type == "PTR"]


def test_a_box_named_as_its_domain_publishes_one_spf_record(tmp_path):
    records = expected_records("example.com", "example.com", tmp_path)
    assert [r.value for r in records if r.type == "TXT" and r.name == "example.com"] == [
        "v=spf1 mx -all"
    ]


def test_names_are_lower_case_a_labels(tmp_path):
    records = expected_records("Mail.Bücher.Example", "BÜCHER.example.", tmp_path)
    assert records[0].name == "xn--bcher-kva.example"
    assert records[0].value == "10 mail.xn--bcher-kva.example."


@pytest.mark.parametrize("hostname, domain", [("mail", DOMAIN), (HOST, "not a domain")])
def test_a_name_that_is_not_a_domain_is_refused(tmp_path, hostname, domain):
    with pytest.raises(AddressError):
        expected_records(hostname, domain, tmp_path)


def test_an_address_that_is_not_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="192.0.2"):
        expected_records(HOST, DOMAIN, tmp_path, ["192.0.2"])


def test_zone_lines_are_a_zone_that_holds_the_values(data_dir):
    records = expected_records(HOST, DOMAIN, data_dir, ["192.0.2.10", "2001:db8::10"])
    text = "$TTL 3600\n" + "\n".join(record.zone_line for record in records) + "\n"
    zone = dns.zone.from_text(text, origin=".", relativize=False, check_origin=False)
    for record in records:
        rdataset = zone.find_rdataset(record.name + ".", dns.rdatatype.from_text(record.type))
        if record.type == "TXT":
            published = {b"".join(rdata.strings).decode() for rdata in rdataset}
        else:
            published = {rdata.to_text() for rdata in rdataset}
        assert record.value in published, record.zone_line


def test_a_long_txt_value_is_cut_into_strings_of_255(data_dir):
    rsa = next(
        r for r in expected_records(HOST, DOMAIN, data_dir) if r.name.startswith("a20260105r.")
    )
    head, _, data = rsa.zone_line.partition(" IN TXT ")
    assert head == "a20260105r._domainkey.example.com."
    strings = re.findall(r'"([^"]*)" ?', data)
    assert "".join(f'"{s}" ' for s in strings).strip() == data  # nothing outside the quotes
    assert len(rsa.value) > 255 and len(strings) > 1
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == rsa.value


def test_the_policy_is_rfc_8461_text():
    policy = mta_sts_policy(HOST)
    assert policy == (
        "version: STSv1\r\nmode: testing\r\nmx: mail.example.com\r\nmax_age: 604800\r\n"
    )
    parsed = parse_policy(policy)  # the queue's own parser reads what the box serves
    assert (parsed.mode, parsed.max_age, parsed.mx) == (Mode.TESTING, 604800, (HOST,))
    enforce = parse_policy(mta_sts_policy(HOST, "enforce", 86400))
    assert (enforce.mode, enforce.max_age) == (Mode.ENFORCE, 86400)


@pytest.mark.parametrize("mode, max_age", [("strict", 86400), ("testing", -1), ("none", 10**9)])
def test_a_policy_out_of_the_rfc_is_refused(mode, max_age):
    with pytest.raises(ValueError):
        mta_sts_policy(HOST, mode, max_age)


def test_the_sts_id_is_the_policy_s_and_changes_with_the_mode(data_dir):
    def published_id(mode: str) -> str:
        records = expected_records(HOST, DOMAIN, data_dir, mta_sts_mode=mode)
        (value,) = [r.value for r in records if r.name == "_mta-sts.example.com"]
        assert value.startswith("v=STSv1; id=")
        return value.removeprefix("v=STSv1; id=")

    testing, enforce = published_id("testing"), published_id("enforce")
    assert testing == mta_sts_id(mta_sts_policy(HOST, "testing"))
    assert enforce == mta_sts_id(mta_sts_policy(HOST, "enforce"))
    assert testing != enforce
    assert testing == published_id("testing")  # the same policy keeps its id
    assert all(1 <= len(i) <= 32 and i.isalnum() for i in (testing, enforce))  # RFC 8461 3.1


def test_every_record_says_what_it_is_for(data_dir):
    records = expected_records(HOST, DOMAIN, data_dir, ["192.0.2.10"])
    assert all(record.purpose.endswith(".") and len(record.purpose) > 30 for record in records)
    assert len(records) == len({(r.name, r.type, r.value) for r in records})
    assert set(DEFAULT_SRV_PORTS) <= {r.name.split(".")[0].lstrip("_") for r in records}
