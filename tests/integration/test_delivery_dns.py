"""The outbound resolver against a DNS server on loopback, over real UDP and TCP.

Each test publishes a zone in tests/dns_server.py's server and checks what
the queue would get: hosts in order with their addresses, or the error class
and enhanced status code of a deferral or bounce.
"""

from __future__ import annotations

import asyncio
import itertools
import textwrap
import time
from collections import Counter

import dns.flags
import dns.message
import dns.query
import pytest
import uvloop

from appliance.delivery.dns import (
    MAX_MX_HOSTS,
    DnsPermanentError,
    DnsTemporaryError,
    MailLoop,
    MxTarget,
    NoSuchDomain,
    NullMx,
    Resolver,
    ResolverSettings,
    TlsaRecord,
    parse_nameserver,
)
from tests.dns_server import DnsServer, dns_server_fixture  # noqa: F401 - fixture dns_server

# Short enough that a stalled server costs the suite little, long enough for
# a loaded two-core machine to answer on loopback.
QUERY_TIMEOUT = 0.5
LOOKUP_TIMEOUT = 2.0

DIGEST = bytes.fromhex("8cb0fc6c527506a053f4f14c8464bebbd6dede2738d11468dd953d7d6a3021f1")


def run(coroutine):
    return asyncio.run(coroutine)


def make_resolver(server: DnsServer, **settings) -> Resolver:
    settings.setdefault("query_timeout", QUERY_TIMEOUT)
    settings.setdefault("lookup_timeout", LOOKUP_TIMEOUT)
    return Resolver(ResolverSettings(nameservers=(server.nameserver,), **settings))


@pytest.fixture
def resolver(dns_server):
    return make_resolver(dns_server)


def hosts(targets: list[MxTarget]) -> list[str]:
    return [t.host for t in targets]


# -- MX ordering and addresses ------------------------------------------------


def test_mx_hosts_by_preference_each_with_ipv6_before_ipv4(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {"MX": ["20 backup.example.test.", "10 mx.example.test."]},
            "mx.example.test": {"A": ["192.0.2.1", "192.0.2.2"], "AAAA": "2001:db8::1"},
            "backup.example.test": {"A": "192.0.2.9"},
        }
    )
    best, backup = run(resolver.mx_hosts("example.test"))
    assert (best.host, best.preference, best.canonical) == (
        "mx.example.test",
        10,
        "mx.example.test",
    )
    # Every IPv6 address first; within a family, the order of the RRset.
    assert best.addresses == ("2001:db8::1", "192.0.2.1", "192.0.2.2")
    assert backup == MxTarget(
        "backup.example.test", 20, ("192.0.2.9",), "backup.example.test", secure=False
    )


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_lookups_work_on_the_services_event_loop(dns_server, loop):
    dns_server.load(
        {"example.test": {"MX": "10 mx.example.test."}, "mx.example.test": {"A": "192.0.2.1"}}
    )
    resolver = make_resolver(dns_server)
    runner = asyncio.run if loop == "asyncio" else uvloop.run
    targets = runner(resolver.mx_hosts("Example.TEST."))
    assert [(t.host, t.addresses) for t in targets] == [("mx.example.test", ("192.0.2.1",))]


def test_equal_preferences_are_shuffled_and_never_reordered_across_preferences(dns_server):
    equal = ["a.example.test", "b.example.test", "c.example.test"]
    zone = {"example.test": {"MX": ["5 first.example.test.", "20 last.example.test."]}}
    zone["example.test"]["MX"] += [f"10 {h}." for h in equal]
    for number, host in enumerate(["first.example.test", "last.example.test", *equal]):
        zone[host] = {"A": f"192.0.2.{number + 1}"}
    dns_server.load(zone)
    resolver = make_resolver(dns_server)

    async def orders(count: int) -> list[tuple[str, ...]]:
        return [tuple(hosts(await resolver.mx_hosts("example.test"))) for _ in range(count)]

    # 90 lookups: each order of the three has probability 1/6, so one missing
    # by chance has probability under 6 * (5/6)**90 < 1e-6.
    seen = run(orders(90))
    assert all(o[0] == "first.example.test" and o[-1] == "last.example.test" for o in seen)
    middles = Counter(o[1:4] for o in seen)
    assert set(middles) == set(itertools.permutations(equal)), middles


def test_each_exchange_once_at_its_best_preference(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {"MX": ["30 mx.example.test.", "10 MX.example.test."]},
            "mx.example.test": {"A": "192.0.2.1"},
        }
    )
    targets = run(resolver.mx_hosts("example.test"))
    assert [(t.host, t.preference) for t in targets] == [("mx.example.test", 10)]


def test_no_mx_means_the_domains_own_addresses(dns_server, resolver):
    dns_server.load({"example.test": {"A": "192.0.2.5", "AAAA": "2001:db8::5", "TXT": '"x"'}})
    targets = run(resolver.mx_hosts("example.test"))
    assert targets == [
        MxTarget(
            "example.test",
            0,
            ("2001:db8::5", "192.0.2.5"),
            "example.test",
            secure=False,
            implicit=True,
        )
    ]


def test_many_mx_hosts_are_cut_to_the_best_ones(dns_server, resolver):
    zone = {"example.test": {"MX": [f"{n} mx{n}.example.test." for n in range(1, 31)]}}
    zone.update({f"mx{n}.example.test": {"A": f"192.0.2.{n}"} for n in range(1, 31)})
    dns_server.load(zone)
    targets = run(resolver.mx_hosts("example.test"))
    assert [t.preference for t in targets] == list(range(1, MAX_MX_HOSTS + 1))
    asked = {q.name for q in dns_server.queries if q.rdtype == "A"}
    assert asked == {f"mx{n}.example.test" for n in range(1, MAX_MX_HOSTS + 1)}


def test_mx_host_without_address_is_skipped(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {"MX": ["10 gone.example.test.", "20 mx.example.test."]},
            "mx.example.test": {"A": "192.0.2.1"},
        }
    )
    assert hosts(run(resolver.mx_hosts("example.test"))) == ["mx.example.test"]


def test_one_address_family_failing_leaves_the_other(dns_server, resolver):
    dns_server.load(
        {"example.test": {"MX": "10 mx.example.test."}, "mx.example.test": {"A": "192.0.2.1"}}
    )
    dns_server.fail("mx.example.test", "SERVFAIL", rdtype="AAAA")
    targets = run(resolver.mx_hosts("example.test"))
    assert [t.addresses for t in targets] == [("192.0.2.1",)]


# -- CNAMEs, addresses in MX, address literals, loops ---------------------------------


def test_mx_naming_a_cname_follows_it(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {"MX": "10 alias.example.test."},
            "alias.example.test": {"CNAME": "real.example.net."},
            "real.example.net": {"A": "192.0.2.7", "AAAA": "2001:db8::7"},
        }
    )
    (target,) = run(resolver.mx_hosts("example.test"))
    assert (target.host, target.canonical) == ("alias.example.test", "real.example.net")
    assert target.addresses == ("2001:db8::7", "192.0.2.7")


def test_cname_at_the_domain_is_processed_as_its_target(dns_server, resolver):
    dns_server.load(
        {
            "alias.test": {"CNAME": "example.test."},
            "example.test": {"MX": "10 mx.example.test."},
            "mx.example.test": {"A": "192.0.2.1"},
            "bare-alias.test": {"CNAME": "bare.test."},
            "bare.test": {"A": "192.0.2.2"},
        }
    )
    assert hosts(run(resolver.mx_hosts("alias.test"))) == ["mx.example.test"]
    (implicit,) = run(resolver.mx_hosts("bare-alias.test"))
    assert (implicit.host, implicit.canonical, implicit.addresses) == (
        "bare-alias.test",
        "bare.test",
        ("192.0.2.2",),
    )


def test_cname_to_a_missing_name_is_no_such_domain(dns_server, resolver):
    dns_server.load({"alias.test": {"CNAME": "missing.test."}})
    with pytest.raises(NoSuchDomain):
        run(resolver.mx_hosts("alias.test"))


def test_mx_naming_an_ip_address_is_used_without_lookup(dns_server, resolver):
    dns_server.load({"example.test": {"MX": "10 192.0.2.44."}})
    (target,) = run(resolver.mx_hosts("example.test"))
    assert (target.host, target.addresses, target.secure) == ("192.0.2.44", ("192.0.2.44",), False)
    assert dns_server.queries_for("192.0.2.44") == []


@pytest.mark.parametrize(
    ("domain", "address"),
    [("[192.0.2.1]", "192.0.2.1"), ("[IPv6:2001:DB8::1]", "2001:db8::1")],
)
def test_address_literal_is_its_own_target(dns_server, resolver, domain, address):
    (target,) = run(resolver.mx_hosts(domain))
    assert target.addresses == (address,) and target.implicit
    assert dns_server.queries == []


@pytest.mark.parametrize("domain", ["[mx.example.test]", "[2001:db8::1]", "[IPv6:192.0.2.1]"])
def test_malformed_address_literal_is_permanent(resolver, domain):
    with pytest.raises(NoSuchDomain):
        run(resolver.mx_hosts(domain))


def test_this_box_and_every_less_preferred_host_are_dropped(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {
                "MX": ["10 a.example.test.", "20 me.example.test.", "30 b.example.test."]
            },
            "a.example.test": {"A": "192.0.2.1"},
            "me.example.test": {"A": "192.0.2.2"},
            "b.example.test": {"A": "192.0.2.3"},
        }
    )
    targets = run(resolver.mx_hosts("example.test", local_names=["ME.example.test"]))
    assert hosts(targets) == ["a.example.test"]
    with pytest.raises(MailLoop) as error:
        run(resolver.mx_hosts("example.test", local_names=["a.example.test"]))
    assert error.value.status == "5.4.6"


def test_international_domain_is_asked_in_a_labels(dns_server, resolver):
    dns_server.load({"xn--bcher-kva.test": {"A": "192.0.2.8"}})
    (target,) = run(resolver.mx_hosts("bücher.test"))
    assert target.addresses == ("192.0.2.8",)
    assert [q.name for q in dns_server.queries_for("xn--bcher-kva.test", "MX")] == [
        "xn--bcher-kva.test"
    ]


# -- permanent and temporary failures --------------------------------------------


def test_null_mx_bounces_without_looking_for_addresses(dns_server, resolver):
    dns_server.load({"example.test": {"MX": "0 .", "A": "192.0.2.1"}})
    with pytest.raises(NullMx) as error:
        run(resolver.mx_hosts("example.test"))
    assert isinstance(error.value, DnsPermanentError)
    assert error.value.status == "5.1.10"
    assert dns_server.queries_for("example.test", "A") == []


def test_null_mx_beside_real_hosts_is_ignored(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {"MX": ["0 .", "10 mx.example.test."]},
            "mx.example.test": {"A": "192.0.2.1"},
        }
    )
    assert hosts(run(resolver.mx_hosts("example.test"))) == ["mx.example.test"]


def test_nxdomain_is_permanent(dns_server, resolver):
    dns_server.load({"example.test": {"A": "192.0.2.1"}})
    with pytest.raises(NoSuchDomain) as error:
        run(resolver.mx_hosts("nowhere.example.test"))
    assert error.value.status == "5.1.2"


def test_domain_with_neither_mx_nor_address_is_permanent(dns_server, resolver):
    dns_server.load({"example.test": {"TXT": '"v=spf1 -all"'}})
    with pytest.raises(DnsPermanentError) as error:
        run(resolver.mx_hosts("example.test"))
    assert error.value.status == "5.4.4"


def test_mx_hosts_that_do_not_exist_are_permanent(dns_server, resolver):
    dns_server.load({"example.test": {"MX": ["10 a.example.test.", "20 b.example.test."]}})
    with pytest.raises(DnsPermanentError) as error:
        run(resolver.mx_hosts("example.test"))
    assert not isinstance(error.value, DnsTemporaryError)


def test_mx_host_failing_temporarily_makes_the_domain_temporary(dns_server, resolver):
    dns_server.load({"example.test": {"MX": ["10 a.example.test.", "20 gone.example.test."]}})
    dns_server.load({"a.example.test": "SERVFAIL"})
    with pytest.raises(DnsTemporaryError):
        run(resolver.mx_hosts("example.test"))


@pytest.mark.parametrize("rcode", ["SERVFAIL", "REFUSED"])
def test_server_failure_is_temporary(dns_server, resolver, rcode):
    dns_server.fail("example.test", rcode)
    with pytest.raises(DnsTemporaryError) as error:
        run(resolver.mx_hosts("example.test"))
    assert error.value.status == "4.4.3"
    assert rcode in str(error.value)


def test_unanswered_lookup_times_out_temporarily_and_in_bounded_time(dns_server, resolver):
    dns_server.load({"example.test": "STALL"})
    started = time.monotonic()
    with pytest.raises(DnsTemporaryError, match="timed out"):
        run(resolver.mx_hosts("example.test"))
    elapsed = time.monotonic() - started
    assert LOOKUP_TIMEOUT * 0.9 <= elapsed < LOOKUP_TIMEOUT + 1.5
    assert len(dns_server.queries_for("example.test", "MX")) >= 2  # it retried before giving up


def test_stalled_mx_host_defers_only_when_no_other_host_answers(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {"MX": ["10 slow.example.test.", "20 mx.example.test."]},
            "slow.example.test": "STALL",
            "mx.example.test": {"A": "192.0.2.1"},
        }
    )
    assert hosts(run(resolver.mx_hosts("example.test"))) == ["mx.example.test"]
    dns_server.stall("mx.example.test")
    with pytest.raises(DnsTemporaryError):
        run(resolver.mx_hosts("example.test"))


def test_no_nameserver_listening_is_temporary(dns_server):
    resolver = make_resolver(dns_server)
    dns_server.stop()  # the port is now closed: ICMP port unreachable
    with pytest.raises(DnsTemporaryError):
        run(resolver.mx_hosts("example.test"))


# -- DNSSEC: the AD bit ---------------------------------------------------------


def test_every_query_asks_for_dnssec_with_a_1232_byte_buffer(dns_server, resolver):
    dns_server.load(
        {"example.test": {"MX": "10 mx.example.test."}, "mx.example.test": {"A": "192.0.2.1"}}
    )
    run(resolver.mx_hosts("example.test"))
    run(resolver.tlsa("mx.example.test"))
    assert len(dns_server.queries) == 4  # MX, AAAA, A, TLSA
    assert all(q.ad and q.do and q.payload == 1232 for q in dns_server.queries)


def test_test_server_sets_ad_only_when_asked(dns_server):
    dns_server.load({"example.test": {"A": "192.0.2.1"}})
    dns_server.secure("example.test")
    host, port = dns_server.host, dns_server.port
    plain = dns.query.udp(dns.message.make_query("example.test.", "A"), host, port=port, timeout=2)
    asked = dns.message.make_query("example.test.", "A", want_dnssec=True)
    validated = dns.query.udp(asked, host, port=port, timeout=2)
    assert not plain.flags & dns.flags.AD
    assert validated.flags & dns.flags.AD


def test_mx_target_is_secure_only_when_mx_and_addresses_are(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {"MX": ["10 signed.example.test.", "20 unsigned.example.net."]},
            "signed.example.test": {"A": "192.0.2.1"},
            "unsigned.example.net": {"A": "192.0.2.2"},
        }
    )
    dns_server.secure("example.test", "signed.example.test")
    secure = {t.host: t.secure for t in run(resolver.mx_hosts("example.test"))}
    assert secure == {"signed.example.test": True, "unsigned.example.net": False}

    dns_server.secure("example.test", validated=False)
    assert not any(t.secure for t in run(resolver.mx_hosts("example.test")))


def test_cname_chain_is_secure_only_when_every_link_is(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {"MX": "10 alias.example.test."},
            "alias.example.test": {"CNAME": "mx.example.net."},
            "mx.example.net": {"A": "192.0.2.1"},
        }
    )
    dns_server.secure("example.test", "alias.example.test")
    assert [t.secure for t in run(resolver.mx_hosts("example.test"))] == [False]
    dns_server.secure("mx.example.net")
    assert [t.secure for t in run(resolver.mx_hosts("example.test"))] == [True]


def test_ad_bit_counts_only_from_loopback_nameservers():
    def trusts(*nameservers: str) -> bool:
        return Resolver(ResolverSettings(nameservers=nameservers)).trusts_ad

    assert trusts("127.0.0.1:5300")
    assert trusts("[::1]:53", "127.0.0.53")
    assert not trusts("127.0.0.1:5300", "192.0.2.53:53")
    assert not trusts("9.9.9.9")


# -- TLSA -----------------------------------------------------------------------


def test_tlsa_records_and_their_validation(dns_server, resolver):
    dns_server.load(
        {
            "_25._tcp.mx.example.test": {
                "TLSA": [f"3 1 1 {DIGEST.hex()}", f"2 0 1 {DIGEST.hex()}"]
            },
            "_465._tcp.mx.example.test": {"TLSA": f"3 1 1 {DIGEST.hex()}"},
        }
    )
    answer = run(resolver.tlsa("mx.example.test"))
    assert sorted(answer.records, key=lambda r: r.usage) == [
        TlsaRecord(2, 0, 1, DIGEST),
        TlsaRecord(3, 1, 1, DIGEST),
    ]
    assert not answer.secure
    dns_server.secure("_25._tcp.mx.example.test")
    assert run(resolver.tlsa("mx.example.test")).secure
    assert len(run(resolver.tlsa("mx.example.test", 465)).records) == 1
    assert {q.name for q in dns_server.queries} == {
        "_25._tcp.mx.example.test",
        "_465._tcp.mx.example.test",
    }


def test_tlsa_absent_is_empty_and_secure_when_the_denial_is(dns_server, resolver):
    dns_server.load({"mx.example.test": {"A": "192.0.2.1"}})
    answer = run(resolver.tlsa("mx.example.test"))
    assert (answer.records, answer.secure) == ((), False)
    dns_server.secure("_25._tcp.mx.example.test")
    answer = run(resolver.tlsa("mx.example.test"))
    assert (answer.records, answer.secure) == ((), True)


def test_tlsa_through_a_cname(dns_server, resolver):
    dns_server.load(
        {
            "_25._tcp.mx.example.test": {"CNAME": "_dane.example.net."},
            "_dane.example.net": {"TLSA": f"3 1 1 {DIGEST.hex()}"},
        }
    )
    assert run(resolver.tlsa("mx.example.test")).records == (TlsaRecord(3, 1, 1, DIGEST),)


def test_tlsa_lookup_failure_is_temporary(dns_server, resolver):
    dns_server.fail("_25._tcp.mx.example.test", "SERVFAIL")
    with pytest.raises(DnsTemporaryError):
        run(resolver.tlsa("mx.example.test"))


def test_tlsa_port_must_be_a_port(resolver):
    with pytest.raises(ValueError):
        run(resolver.tlsa("mx.example.test", 0))


# -- MTA-STS ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("records", "policy_id"),
    [
        (['"v=STSv1; id=20240101T000000;"'], "20240101T000000"),
        (['"v=STSv1;id=abc123"'], "abc123"),
        (['"v=STSv1; " "id=split1"'], "split1"),  # one record in two strings
        (['"v=STSv1; ext=x; id=withext"'], "withext"),
        (['"v=spf1 -all"', '"v=STSv1; id=beside"'], "beside"),  # others are ignored
        (['"v=STSv1; id=one"', '"v=STSv1; id=two"'], None),  # not exactly one
        (['"v=STSv1; id=good"', '"v=STSv1; id=bad!"'], None),  # an invalid one counts too
        (['"v=STSv1 ; id=spaced ;"'], "spaced"),  # *WSP ";" *WSP
        (['"v=STSv1x; id=other"'], None),
        (['"v=STSv1;"'], None),  # no id
        (['"v=STSv1; id=' + "a" * 33 + '"'], None),  # id of more than 32 characters
        (['"v=STSv1; id=not-alnum"'], None),
        (['"v=STSv2; id=future"'], None),
        (['"V=STSV1; id=case"'], None),  # %s"v=STSv1": case-sensitive
    ],
)
def test_mta_sts_policy_id(dns_server, resolver, records, policy_id):
    dns_server.load({"_mta-sts.example.test": {"TXT": records}})
    assert run(resolver.mta_sts_txt("example.test")) == policy_id


def test_mta_sts_absent_is_none_and_failure_temporary(dns_server, resolver):
    dns_server.load({"example.test": {"A": "192.0.2.1"}})
    assert run(resolver.mta_sts_txt("example.test")) is None
    assert run(resolver.mta_sts_txt("elsewhere.test")) is None
    dns_server.fail("_mta-sts.example.test")
    with pytest.raises(DnsTemporaryError):
        run(resolver.mta_sts_txt("example.test"))


# -- TXT ---------------------------------------------------------------------------


def test_txt_records_with_their_strings_joined(dns_server, resolver):
    dns_server.load(
        {
            "example.test": {"TXT": ['"v=spf1 " "ip4:192.0.2.0/24 -all"', '"other"']},
            "empty.example.test": {"A": "192.0.2.1"},
        }
    )
    assert sorted(run(resolver.txt("example.test"))) == [b"other", b"v=spf1 ip4:192.0.2.0/24 -all"]
    assert run(resolver.txt("empty.example.test")) == ()
    with pytest.raises(NoSuchDomain):
        run(resolver.txt("missing.example.test"))


def test_big_answer_is_truncated_over_udp_and_read_over_tcp(dns_server, resolver):
    strings = [f'"{n:03d}{"k" * 250}"' for n in range(12)]  # about 3 kB: over 1232 bytes
    dns_server.load({"sel._domainkey.example.test": {"TXT": " ".join(strings)}})
    (record,) = run(resolver.txt("sel._domainkey.example.test"))
    assert record == b"".join(f"{n:03d}{'k' * 250}".encode() for n in range(12))
    transports = [q.transport for q in dns_server.queries_for("sel._domainkey.example.test")]
    assert transports == ["udp", "tcp"]


def test_addresses_of_a_host(dns_server, resolver):
    dns_server.load({"relay.example.test": {"A": "192.0.2.1", "AAAA": "2001:db8::1"}})
    assert run(resolver.addresses("relay.example.test")) == ("2001:db8::1", "192.0.2.1")
    with pytest.raises(NoSuchDomain):
        run(resolver.addresses("missing.example.test"))


# -- settings and the system's resolv.conf --------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("127.0.0.1:5300", ("127.0.0.1", 5300)),
        ("[::1]:5353", ("::1", 5353)),
        ("192.0.2.53", ("192.0.2.53", 53)),
        ("::1", ("::1", 53)),
    ],
)
def test_nameserver_forms(text, parsed):
    assert parse_nameserver(text) == parsed


@pytest.mark.parametrize("text", ["dns.example:53", "127.0.0.1:0", "127.0.0.1:99999", "", "[::1]"])
def test_nameserver_must_be_an_address_and_port(text):
    with pytest.raises(ValueError):
        ResolverSettings(nameservers=[text])


def test_settings_take_a_toml_list_not_a_string():
    assert ResolverSettings(nameservers=["127.0.0.1:5300"]).nameservers == ("127.0.0.1:5300",)
    with pytest.raises(ValueError):
        ResolverSettings(nameservers="127.0.0.1:5300")


def test_system_nameservers_follow_resolv_conf_as_it_changes(tmp_path):
    resolv_conf = tmp_path / "resolv.conf"
    resolver = Resolver(resolv_conf=resolv_conf)
    with pytest.raises(DnsTemporaryError, match="no nameservers"):
        run(resolver.mx_hosts("example.test"))
    resolv_conf.write_text("search example.test\nnameserver 127.0.0.53\noptions edns0 trust-ad\n")
    assert resolver.nameservers == [("127.0.0.53", 53)]
    assert resolver.trusts_ad
    resolv_conf.write_text("nameserver 192.0.2.53\nnameserver 2001:db8::53\n")
    assert resolver.nameservers == [("192.0.2.53", 53), ("2001:db8::53", 53)]
    assert not resolver.trusts_ad


# -- the test server itself ---------------------------------------------------------


def test_zone_text_is_served_and_failures_heal(dns_server, resolver):
    # A line starting with blanks belongs to the owner of the line before.
    zone = textwrap.dedent(
        f"""\
        $TTL 60
        @        MX   10 mx
        mx       A    192.0.2.1
                 AAAA 2001:db8::1
        _25._tcp.mx TLSA 3 1 1 {DIGEST.hex()}
        """
    )
    dns_server.load(zone, origin="example.test")
    (target,) = run(resolver.mx_hosts("example.test"))
    assert (target.host, target.addresses) == ("mx.example.test", ("2001:db8::1", "192.0.2.1"))
    assert run(resolver.tlsa("mx.example.test")).records == (TlsaRecord(3, 1, 1, DIGEST),)
    dns_server.fail("example.test", "SERVFAIL", rdtype="MX")
    with pytest.raises(DnsTemporaryError):
        run(resolver.mx_hosts("example.test"))
    dns_server.heal("example.test", rdtype="MX")
    assert hosts(run(resolver.mx_hosts("example.test"))) == ["mx.example.test"]
    assert dns_server.errors == []
