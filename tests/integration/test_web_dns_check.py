"""The DNS page's record checks against a DNS server on loopback, over real UDP.

Each test publishes records in tests/dns_server.py's server, asks for the
live state of what one domain needs through the service's Resolver on
uvloop, and checks the state the owner would see for every record, with the
words that say what is wrong.
"""

from __future__ import annotations

import datetime
import time

import pytest
import uvloop

from appliance.delivery.dns import Resolver, ResolverSettings
from appliance.mailauth import dkim
from appliance.web.dns_records import Checked, State, check, expected_records
from tests.dns_server import DnsServer, dns_server_fixture  # noqa: F401 - fixture dns_server

# Loose enough for a loaded two-core machine answering some twenty queries at once.
QUERY_TIMEOUT = 1.0
LOOKUP_TIMEOUT = 3.0
# For the test of a server that never answers: short, so it costs little.
STALL_QUERY_TIMEOUT = 0.3
STALL_LOOKUP_TIMEOUT = 0.8
KEYS_MADE = datetime.date(2026, 1, 5)

OK, WRONG, MISSING, ERROR = State.OK, State.WRONG, State.MISSING, State.ERROR


def resolver_for(server: DnsServer, query_timeout=QUERY_TIMEOUT, lookup_timeout=LOOKUP_TIMEOUT):
    settings = ResolverSettings(
        nameservers=(server.nameserver,),
        query_timeout=query_timeout,
        lookup_timeout=lookup_timeout,
    )
    return Resolver(settings)


def run_check(server: DnsServer, expected, **timeouts) -> list[Checked]:
    return uvloop.run(check(expected, resolver_for(server, **timeouts)))


def states(checked: list[Checked]) -> dict[tuple[str, str], State]:
    table = {(c.expected.name, c.expected.type): c.state for c in checked}
    assert len(table) == len(checked), "each record has its own name and type here"
    return table


def detail(checked: list[Checked], name: str, rdtype: str) -> str:
    (found,) = [c for c in checked if (c.expected.name, c.expected.type) == (name, rdtype)]
    return found.detail


def txt(text: str, size: int = 255) -> str:
    """TXT data in presentation format, cut into strings of size."""
    return " ".join(f'"{text[i : i + size]}"' for i in range(0, len(text), size))


def zone_text(records) -> str:
    """The records as the owner pastes them: the page's zone lines under a default TTL."""
    return "$TTL 300\n" + "\n".join(record.zone_line for record in records) + "\n"


def keys_for(tmp_path, domain: str) -> dict[str, str]:
    """Make the domain's DKIM keys; its records as {name: value}."""
    dkim.make_keys(tmp_path, domain, today=KEYS_MADE)
    return {record.name: record.value for record in dkim.dns_records(tmp_path, domain)}


def every_record(domain: str, host: str, reverse: str) -> dict[tuple[str, str], State]:
    """The (name, type) of every record for domain, all in one state to start from."""
    names = [
        (domain, "MX"),
        (host, "A"),
        (domain, "TXT"),
        (host, "TXT"),
        (f"a20260105r._domainkey.{domain}", "TXT"),
        (f"a20260105e._domainkey.{domain}", "TXT"),
        (f"_dmarc.{domain}", "TXT"),
        (f"_mta-sts.{domain}", "TXT"),
        (f"mta-sts.{domain}", "CNAME"),
        (f"_smtp._tls.{domain}", "TXT"),
        (f"autoconfig.{domain}", "CNAME"),
        (f"autodiscover.{domain}", "CNAME"),
        (f"_submissions._tcp.{domain}", "SRV"),
        (f"_submission._tcp.{domain}", "SRV"),
        (f"_imaps._tcp.{domain}", "SRV"),
        (f"_pop3s._tcp.{domain}", "SRV"),
        (f"_autodiscover._tcp.{domain}", "SRV"),
        (reverse, "PTR"),
    ]
    return dict.fromkeys(names, OK)


def test_records_published_as_the_page_gives_them_are_all_right(dns_server, tmp_path):
    dkim.make_keys(tmp_path, "right.test", today=KEYS_MADE)
    addresses = ["192.0.2.10", "2001:db8::10"]
    expected = expected_records("mail.right.test", "right.test", tmp_path, addresses)
    dns_server.load(zone_text(expected))

    checked = run_check(dns_server, expected)

    assert [c.expected for c in checked] == expected  # in the order given
    wanted = every_record("right.test", "mail.right.test", "10.2.0.192.in-addr.arpa")
    wanted[("mail.right.test", "AAAA")] = OK
    wanted[("0.1.0.0" + ".0" * 20 + ".8.b.d.0.1.0.0.2.ip6.arpa", "PTR")] = OK
    assert states(checked) == wanted
    assert [c.detail for c in checked] == [""] * len(checked)
    mx = checked[0]
    assert mx.found == ("10 mail.right.test.",)
    assert dns_server.errors == []


def test_records_right_in_other_ways_are_right_with_a_note(dns_server, tmp_path):
    keys = keys_for(tmp_path, "alt.test")
    expected = expected_records("mail.alt.test", "alt.test", tmp_path, ["192.0.2.11"])
    sts = next(r for r in expected if r.name == "_mta-sts.alt.test")
    dns_server.load(
        {
            "alt.test": {
                "MX": ["5 backup.alt.test.", "10 mail.alt.test."],
                "TXT": [txt("v=spf1 ip4:192.0.2.0/24 ~all"), txt("google-site-verification=x")],
            },
            "mail.alt.test": {"A": "192.0.2.11", "TXT": txt("v=spf1 +a:MAIL.alt.test. -all")},
            "backup.alt.test": {"A": "198.51.100.5"},
            "web.alt.test": {"A": "192.0.2.11"},
            **{name: {"TXT": txt(value, size=100)} for name, value in keys.items()},
            "_dmarc.alt.test": {"TXT": txt("v=DMARC1;p=reject")},
            "_mta-sts.alt.test": {"TXT": txt(sts.value)},
            "mta-sts.alt.test": {"A": "192.0.2.11"},
            "_smtp._tls.alt.test": {"TXT": txt("v=TLSRPTv1; rua=mailto:tls@reports.example")},
            "autoconfig.alt.test": {"CNAME": "web.alt.test."},
            "autodiscover.alt.test": {"CNAME": "mail.alt.test."},
            "_submissions._tcp.alt.test": {
                "SRV": ["0 0 465 mail.alt.test.", "5 0 465 smtp.provider.example."]
            },
            "_submission._tcp.alt.test": {"SRV": "1 0 587 mail.alt.test."},
            "_imaps._tcp.alt.test": {"SRV": "0 0 993 MAIL.ALT.TEST."},
            "_pop3s._tcp.alt.test": {"SRV": "10 0 995 mail.alt.test."},
            "_autodiscover._tcp.alt.test": {"SRV": "0 0 443 mail.alt.test."},
            "11.2.0.192.in-addr.arpa": {"PTR": "mail.alt.test."},
        }
    )

    checked = run_check(dns_server, expected)

    assert states(checked) == every_record("alt.test", "mail.alt.test", "11.2.0.192.in-addr.arpa")
    assert "backup.alt.test is preferred to mail.alt.test" in detail(checked, "alt.test", "MX")
    assert "p=reject rather than p=quarantine" in detail(checked, "_dmarc.alt.test", "TXT")
    assert "address records" in detail(checked, "mta-sts.alt.test", "CNAME")
    assert "a CNAME to web.alt.test" in detail(checked, "autoconfig.alt.test", "CNAME")
    assert "tls@reports.example" in detail(checked, "_smtp._tls.alt.test", "TXT")
    submissions = detail(checked, "_submissions._tcp.alt.test", "SRV")
    assert "smtp.provider.example port 465" in submissions


def test_wrong_records_say_what_differs(dns_server, tmp_path):
    keys = keys_for(tmp_path, "wrong.test")
    other_keys = keys_for(tmp_path / "other", "wrong.test")
    rsa, ed25519 = "a20260105r._domainkey.wrong.test", "a20260105e._domainkey.wrong.test"
    expected = expected_records("mail.wrong.test", "wrong.test", tmp_path, ["192.0.2.20"])
    dns_server.load(
        {
            "wrong.test": {
                "MX": "10 other.example.",
                "TXT": [txt("v=spf1 mx -all"), txt("v=spf1 include:_spf.other.example -all")],
            },
            "mail.wrong.test": {"A": "198.51.100.7", "TXT": txt("v=spf1 -a:mail.wrong.test -all")},
            "other.example": {"A": "198.51.100.99"},
            rsa: {"TXT": txt(other_keys[rsa])},  # a key the box does not have
            ed25519: {"TXT": txt(keys[ed25519].replace("k=ed25519", "k=rsa"))},
            "_dmarc.wrong.test": {"TXT": txt("v=DMARC1; rua=mailto:d@wrong.test")},
            "_mta-sts.wrong.test": {"TXT": txt("v=STSv1; id=20240101")},
            "mta-sts.wrong.test": {"CNAME": "other.example."},
            "_smtp._tls.wrong.test": {"TXT": txt("v=TLSRPTv1;")},
            "autoconfig.wrong.test": {"A": "198.51.100.8"},
            "autodiscover.wrong.test": {"CNAME": "nowhere.wrong.test."},
            "_submissions._tcp.wrong.test": {"SRV": "0 0 465 other.example."},
            "_submission._tcp.wrong.test": {"SRV": "1 0 25 mail.wrong.test."},
            "_imaps._tcp.wrong.test": {"SRV": "0 0 0 ."},
            "_pop3s._tcp.wrong.test": {"SRV": "10 0 995 mail.wrong.test."},
            "20.2.0.192.in-addr.arpa": {"PTR": "host-20.provider.example."},
        }
    )

    checked = run_check(dns_server, expected)

    wanted = dict.fromkeys(
        every_record("wrong.test", "mail.wrong.test", "20.2.0.192.in-addr.arpa"), WRONG
    )
    wanted[("_pop3s._tcp.wrong.test", "SRV")] = OK
    wanted[("_autodiscover._tcp.wrong.test", "SRV")] = MISSING
    assert states(checked) == wanted

    def says(name: str, rdtype: str, *words: str) -> None:
        text = detail(checked, name, rdtype)
        for word in words:
            assert word in text, f"{name} {rdtype}: {text!r} lacks {word!r}"

    says("wrong.test", "MX", "MX points to other.example, not mail.wrong.test")
    says("mail.wrong.test", "A", "198.51.100.7", "not 192.0.2.20")
    says("wrong.test", "TXT", "2 SPF records", "RFC 7208 4.5", "Merge them")
    says("mail.wrong.test", "TXT", "does not authorize this box")
    says(rsa, "TXT", "is not the box's")
    says(ed25519, "TXT", "k=rsa", "ed25519")
    says("_dmarc.wrong.test", "TXT", "no p= tag")
    says("_mta-sts.wrong.test", "TXT", "id=20240101", "policy served now")
    says("mta-sts.wrong.test", "CNAME", "points to other.example, not mail.wrong.test")
    says("_smtp._tls.wrong.test", "TXT", "no rua=")
    says("autoconfig.wrong.test", "CNAME", "198.51.100.8")
    says("autodiscover.wrong.test", "CNAME", "nowhere.wrong.test", "no address")
    says("_submissions._tcp.wrong.test", "SRV", "other.example port 465")
    says("_submission._tcp.wrong.test", "SRV", "port 25", "not mail.wrong.test port 587")
    says("_imaps._tcp.wrong.test", "SRV", "not offered")
    says("20.2.0.192.in-addr.arpa", "PTR", "host-20.provider.example", "provider")
    two_spf = next(
        c for c in checked if (c.expected.name, c.expected.type) == ("wrong.test", "TXT")
    )
    assert sorted(two_spf.found) == [
        "v=spf1 include:_spf.other.example -all",
        "v=spf1 mx -all",
    ]


def test_a_domain_with_nothing_published_misses_every_record(dns_server, tmp_path):
    keys_for(tmp_path, "empty.test")
    dns_server.load({"unrelated.test": {"A": "192.0.2.99"}})
    expected = expected_records("mail.empty.test", "empty.test", tmp_path, ["192.0.2.30"])

    checked = run_check(dns_server, expected)

    wanted = every_record("empty.test", "mail.empty.test", "30.2.0.192.in-addr.arpa")
    assert states(checked) == dict.fromkeys(wanted, MISSING)
    assert all(c.found == () for c in checked)


def test_other_txt_records_do_not_stand_for_a_missing_one(dns_server, tmp_path):
    expected = [
        r
        for r in expected_records("mail.txt.test", "txt.test", tmp_path)
        if r.type == "TXT" and r.name == "txt.test"
    ]
    dns_server.load({"txt.test": {"TXT": txt("google-site-verification=abc")}})

    (spf,) = run_check(dns_server, expected)

    assert spf.state == MISSING
    assert spf.found == ("google-site-verification=abc",)


def test_a_failing_lookup_is_an_error_and_the_others_are_still_checked(dns_server, tmp_path):
    dkim.make_keys(tmp_path, "right.test", today=KEYS_MADE)
    expected = expected_records("mail.right.test", "right.test", tmp_path, ["192.0.2.10"])
    dns_server.load(zone_text(expected))
    dns_server.fail("_dmarc.right.test")
    dns_server.fail("right.test", rdtype="MX")

    checked = run_check(dns_server, expected)

    wanted = every_record("right.test", "mail.right.test", "10.2.0.192.in-addr.arpa")
    wanted[("_dmarc.right.test", "TXT")] = ERROR
    wanted[("right.test", "MX")] = ERROR
    assert states(checked) == wanted
    assert "SERVFAIL" in detail(checked, "_dmarc.right.test", "TXT")
    assert detail(checked, "right.test", "MX").startswith("The lookup failed for now")


def test_lookups_that_time_out_are_errors_and_run_at_once(dns_server, tmp_path):
    expected = expected_records("mail.slow.test", "slow.test", tmp_path, ["192.0.2.40"])
    dns_server.load(zone_text(expected))
    stalled = ["slow.test", "_dmarc.slow.test", "_smtp._tls.slow.test", "_imaps._tcp.slow.test"]
    for name in stalled:
        dns_server.stall(name)

    started = time.monotonic()
    checked = run_check(
        dns_server,
        expected,
        query_timeout=STALL_QUERY_TIMEOUT,
        lookup_timeout=STALL_LOOKUP_TIMEOUT,
    )
    elapsed = time.monotonic() - started

    errors = {c.expected.name for c in checked if c.state is ERROR}
    assert errors == set(stalled)
    assert all("timed out" in c.detail for c in checked if c.state is ERROR)
    # Four stalled names waited out one after the other would take four timeouts.
    assert elapsed < 2.5 * STALL_LOOKUP_TIMEOUT, f"took {elapsed:.2f}s"


@pytest.mark.parametrize(
    "published, state, words",
    [
        ("v=spf1 a:mail.spf.test -all", OK, ""),
        ("v=spf1 ip6:2001:db8::/32 -all", OK, ""),
        ("v=spf1 mx/24 -all", OK, ""),
        ("v=spf1 -all mx", WRONG, "does not authorize"),  # nothing after all counts
        ("v=spf1 ~mx -all", WRONG, "does not authorize"),  # softfail is no authorization
        ("v=spf1 include:_spf.provider.example -all", WRONG, "include: or redirect="),
        ("v=spf1 +all", WRONG, "every server on the internet"),
    ],
)
def test_spf_records_are_judged_by_what_they_authorize(
    dns_server, tmp_path, published, state, words
):
    expected = [
        r
        for r in expected_records("mail.spf.test", "spf.test", tmp_path, ["2001:db8::7"])
        if r.type == "TXT" and r.name == "spf.test"
    ]
    dns_server.load({"spf.test": {"TXT": txt(published)}})

    (spf,) = run_check(dns_server, expected)

    assert spf.state == state
    assert words in spf.detail


def test_without_known_addresses_any_address_of_the_host_is_right(dns_server, tmp_path):
    expected = [
        r
        for r in expected_records("mail.home.test", "home.test", tmp_path)
        if r.type in ("A", "CNAME")
    ]
    dns_server.load(
        {
            "mail.home.test": {"A": "203.0.113.5"},
            "mta-sts.home.test": {"CNAME": "mail.home.test."},
            "autoconfig.home.test": {"A": "203.0.113.5"},  # the host's address: right
            "autodiscover.home.test": {"A": "203.0.113.6"},  # another address: wrong
        }
    )

    address, sts, autoconfig, autodiscover = run_check(dns_server, expected)

    assert (address.state, address.found) == (OK, ("203.0.113.5",))
    assert "only its presence is checked" in address.detail
    assert (sts.state, autoconfig.state, autodiscover.state) == (OK, OK, WRONG)
    assert autodiscover.detail == "It points to 203.0.113.6, not mail.home.test."


def test_a_host_address_that_is_not_the_box_s_is_wrong(dns_server, tmp_path):
    expected = [
        r
        for r in expected_records("mail.two.test", "two.test", tmp_path, ["192.0.2.50"])
        if r.type == "A"
    ]
    dns_server.load({"mail.two.test": {"A": ["192.0.2.50", "198.51.100.50"]}})

    (address,) = run_check(dns_server, expected)

    assert address.state == WRONG
    assert "also points to 198.51.100.50, not an address of this box" in address.detail
