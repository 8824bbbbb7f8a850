"""SPF checks (RFC 7208) asking a loopback DNS server, and the RFC 7208 conformance suite.

The conformance suite (the openspf.org test suite, release 2014.04) ships in
pyspf's source distribution. It is not kept in this repository: the test
downloads the sdist from PyPI once into the pytest cache, checks its SHA-256,
and reads test/rfc7208-tests.yml from it. Each scenario's zone is served by a
DnsServer and each case goes through check_spf as the SMTP server would call it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SPF
import dns.rdtypes.ANY.TXT
import pytest
import spf

import appliance.mailauth.spf as spf_module
from appliance.config import ResolverSettings
from appliance.mailauth.spf import RESULTS, check_helo, check_spf
from tests.dns_server import (
    DnsServer,
    dns_server_fixture,  # noqa: F401 - fixture dns_server
)

# Short enough that a stalled query fails fast, long enough for a loaded machine.
FAST = {"query_timeout": 0.3, "lookup_timeout": 1.0}


def settings_for(server: DnsServer, **timeouts) -> ResolverSettings:
    return ResolverSettings(nameservers=(server.nameserver,), **{**FAST, **timeouts})


# -- DNS goes where [resolver] says ---------------------------------------------


def test_pass_asks_the_configured_nameserver(dns_server):
    dns_server.load({"example.org": {"TXT": '"v=spf1 ip4:192.0.2.0/24 -all"'}})
    outcome = check_spf("192.0.2.7", "ann@example.org", "mx.example.org", settings_for(dns_server))
    assert outcome.result == "pass"
    assert (outcome.domain, outcome.identity) == ("example.org", "mailfrom")
    assert outcome.mechanism == "ip4:192.0.2.0/24"
    assert "designates 192.0.2.7 as permitted sender" in outcome.comment
    assert dns_server.queries_for("example.org", "TXT")


def test_fail_carries_the_domains_explanation(dns_server):
    dns_server.load(
        {
            "example.org": {"TXT": '"v=spf1 -all exp=why.example.org"'},
            "why.example.org": {"TXT": '"%{i} may not send for %{d}"'},
        }
    )
    outcome = check_spf("198.51.100.9", "bob@example.org", "x.test", settings_for(dns_server))
    assert outcome.result == "fail"
    assert outcome.explanation == "198.51.100.9 may not send for example.org"


def test_fail_without_exp_has_no_explanation(dns_server):
    dns_server.load({"example.org": {"TXT": '"v=spf1 -all"'}})
    outcome = check_spf("198.51.100.9", "bob@example.org", "x.test", settings_for(dns_server))
    assert (outcome.result, outcome.explanation) == ("fail", "")


def test_no_record_is_none(dns_server):
    dns_server.load({"example.org": {"TXT": '"not spf"', "A": "192.0.2.1"}})
    outcome = check_spf("192.0.2.1", "a@example.org", "x.test", settings_for(dns_server))
    assert outcome.result == "none"


def test_null_sender_checks_the_helo_name(dns_server):
    dns_server.load(
        {
            "example.org": {"TXT": '"v=spf1 -all"'},
            "mx.example.net": {"TXT": '"v=spf1 a -all"', "A": "192.0.2.25"},
        }
    )
    outcome = check_spf("192.0.2.25", "", "mx.example.net", settings_for(dns_server))
    assert (outcome.result, outcome.domain, outcome.identity) == ("pass", "mx.example.net", "helo")
    assert not dns_server.queries_for("example.org")


def test_helo_is_checked_on_its_own(dns_server):
    dns_server.load({"mx.example.net": {"TXT": '"v=spf1 a ~all"', "A": "192.0.2.25"}})
    settings = settings_for(dns_server)
    assert check_helo("192.0.2.25", "mx.example.net", settings).result == "pass"
    softfail = check_helo("203.0.113.1", "mx.example.net", settings)
    assert (softfail.result, softfail.identity) == ("softfail", "helo")


def test_helo_address_literal_is_none_without_a_query(dns_server):
    outcome = check_helo("192.0.2.25", "[192.0.2.25]", settings_for(dns_server))
    assert outcome.result == "none"
    assert dns_server.queries == []


def test_ipv6_client_matches_aaaa_through_a_cname(dns_server):
    dns_server.load(
        {
            "example.org": {"TXT": '"v=spf1 a:out.example.org//64 -all"'},
            "out.example.org": {"CNAME": "relay.example.net."},
            "relay.example.net": {"AAAA": "2001:db8:5::1"},
        }
    )
    outcome = check_spf("2001:db8:5::77", "a@example.org", "x.test", settings_for(dns_server))
    assert outcome.result == "pass"


def test_record_too_big_for_udp_is_read_over_tcp(dns_server):
    networks = " ".join(f"ip4:10.{n // 256}.{n % 256}.0/24" for n in range(120))
    chunks = [networks[i : i + 200] for i in range(0, len(networks), 200)]
    record = " ".join(f'"{c}"' for c in [f"v=spf1 {chunks[0]}", *chunks[1:]])
    dns_server.load({"example.org": {"TXT": f'{record} " ip4:192.0.2.9 -all"'}})
    outcome = check_spf("192.0.2.9", "a@example.org", "x.test", settings_for(dns_server))
    assert outcome.result == "pass"
    transports = {q.transport for q in dns_server.queries_for("example.org", "TXT")}
    assert transports == {"udp", "tcp"}


# -- errors and limits ---------------------------------------------------------


def test_servfail_is_temperror(dns_server):
    dns_server.fail("example.org")
    outcome = check_spf("192.0.2.1", "a@example.org", "x.test", settings_for(dns_server))
    assert outcome.result == "temperror"
    assert "temporary error" in outcome.comment


def test_ptr_skips_a_name_whose_address_lookup_fails(dns_server):
    # RFC 7208 5.5: "If a DNS error occurs while doing an A RR lookup, then
    # that domain name is skipped and the search continues."
    dns_server.load(
        {
            "example.org": {"TXT": '"v=spf1 ptr -all"'},
            "4.2.0.192.in-addr.arpa": {"PTR": ["broken.example.org.", "mx.example.org."]},
            "broken.example.org": "SERVFAIL",
            "mx.example.org": {"A": "192.0.2.4"},
        }
    )
    outcome = check_spf("192.0.2.4", "a@example.org", "x.test", settings_for(dns_server))
    assert outcome.result == "pass"
    assert dns_server.queries_for("broken.example.org", "A")


def test_ptr_lookup_error_is_no_match_and_p_macro_unknown(dns_server):
    # RFC 7208 5.5: a DNS error on the PTR lookup: the mechanism fails to
    # match. RFC 7208 7.3: %{p} is then "unknown".
    dns_server.load(
        {
            "example.org": {"TXT": '"v=spf1 ptr -all exp=why.example.org"'},
            "why.example.org": {"TXT": '"refused from %{p}"'},
            "4.2.0.192.in-addr.arpa": "SERVFAIL",
        }
    )
    outcome = check_spf("192.0.2.4", "a@example.org", "x.test", settings_for(dns_server))
    assert (outcome.result, outcome.explanation) == ("fail", "refused from unknown")


def test_stalled_dns_is_temperror_within_the_checks_time_limit(dns_server):
    dns_server.stall("example.org")
    settings = settings_for(dns_server, query_timeout=0.2, lookup_timeout=30.0)
    started = time.monotonic()
    outcome = check_spf("192.0.2.1", "a@example.org", "x.test", settings, timeout=1.0)
    elapsed = time.monotonic() - started
    assert outcome.result == "temperror"
    assert 0.9 < elapsed < 5.0


def test_stalled_dns_is_temperror_within_the_lookup_timeout(dns_server):
    dns_server.stall("example.org")
    settings = settings_for(dns_server, query_timeout=0.2, lookup_timeout=0.8)
    started = time.monotonic()
    outcome = check_spf("192.0.2.1", "a@example.org", "x.test", settings, timeout=20.0)
    assert outcome.result == "temperror"
    assert time.monotonic() - started < 5.0


def test_time_limit_covers_the_whole_check_not_each_query(dns_server):
    # Three includes, each answered after its query times out once (about 0.5 s):
    # a 1 s limit for the check runs out before the third.
    dns_server.load(
        {"example.org": {"TXT": '"v=spf1 include:a.test include:b.test include:c.test -all"'}}
    )
    for name in ("a.test", "b.test", "c.test"):
        dns_server.stall(name)
    settings = settings_for(dns_server, query_timeout=0.2, lookup_timeout=0.5)
    started = time.monotonic()
    outcome = check_spf("192.0.2.1", "a@example.org", "x.test", settings, timeout=1.0)
    assert outcome.result == "temperror"
    assert time.monotonic() - started < 2.0
    assert not dns_server.queries_for("c.test")


def lookup_terms(count: int) -> dict:
    """A policy with count a: terms (each one DNS-querying term) before -all, and their names."""
    terms = " ".join(f"a:h{n}.example.org" for n in range(count))
    zone = {f"h{n}.example.org": {"A": f"198.51.100.{n + 1}"} for n in range(count)}
    return {"example.org": {"TXT": f'"v=spf1 {terms} -all"'}, **zone}


@pytest.mark.parametrize(("terms", "result"), [(10, "fail"), (11, "permerror")])
def test_ten_dns_querying_terms_at_most(dns_server, terms, result):
    dns_server.load(lookup_terms(terms))  # RFC 7208 4.6.4
    outcome = check_spf("192.0.2.1", "a@example.org", "x.test", settings_for(dns_server))
    assert outcome.result == result


@pytest.mark.parametrize(("voids", "result"), [(2, "fail"), (3, "permerror")])
def test_two_void_lookups_at_most(dns_server, voids, result):
    terms = " ".join(f"a:nx{n}.example.org" for n in range(voids))
    dns_server.load({"example.org": {"TXT": f'"v=spf1 {terms} -all"'}})  # RFC 7208 4.6.4
    outcome = check_spf("192.0.2.1", "a@example.org", "x.test", settings_for(dns_server))
    assert outcome.result == result


def test_not_an_ip_address_is_refused(dns_server):
    with pytest.raises(ValueError):
        check_spf("not-an-ip", "a@example.org", "x.test", settings_for(dns_server))


def test_no_time_limit_is_refused(dns_server):
    with pytest.raises(ValueError):
        check_spf("192.0.2.1", "a@example.org", "x.test", settings_for(dns_server), timeout=0)


# -- concurrent checks with different settings --------------------------------


def test_concurrent_checks_each_ask_their_own_nameserver():
    allow = {"example.org": {"TXT": '"v=spf1 ip4:192.0.2.1 -all"'}}
    deny = {"example.org": {"TXT": '"v=spf1 ?all"'}}
    with DnsServer(allow) as first, DnsServer(deny) as second:
        # Eight checks start together, alternating between the two servers.
        plan = [(settings_for(first), "pass"), (settings_for(second), "neutral")] * 20
        start = threading.Barrier(8, timeout=10)

        def run(item):
            settings, expected = item
            start.wait()
            return check_spf("192.0.2.1", "a@example.org", "x.test", settings).result, expected

        with ThreadPoolExecutor(max_workers=8) as pool:
            outcomes = list(pool.map(run, plan, timeout=60))
    assert [got for got, _ in outcomes] == [expected for _, expected in outcomes]
    # Each server was asked, and only by its own checks' cache misses.
    assert 1 <= len(first.queries_for("example.org")) <= 20
    assert 1 <= len(second.queries_for("example.org")) <= 20


def test_answers_are_cached_for_their_ttl_across_checks():
    zone = {"example.org": {"TXT": '"v=spf1 ip4:192.0.2.1 -all"'}}
    with DnsServer(zone) as server:
        for _ in range(3):
            outcome = check_spf("192.0.2.1", "a@example.org", "x.test", settings_for(server))
            assert outcome.result == "pass"
        assert len(server.queries_for("example.org")) == 1
    with DnsServer(zone, ttl=0) as server:  # a TTL of 0 is not kept
        for _ in range(2):
            check_spf("192.0.2.1", "a@example.org", "x.test", settings_for(server))
        assert len(server.queries_for("example.org")) == 2


def test_pyspf_outside_a_check_keeps_its_own_lookup(monkeypatch):
    asked = []

    def pyspf_own(name, qtype, strict=True, timeout=None):
        asked.append((name, qtype))
        return [((name, "TXT"), (b"v=spf1 ip4:192.0.2.1 -all",))]

    monkeypatch.setattr(spf_module, "_pyspf_lookup", pyspf_own)
    result, _code, _text = spf.query(i="192.0.2.1", s="a@example.org", h="x.test").check()
    assert result == "pass"
    assert asked == [("example.org", "TXT")]


# -- the RFC 7208 conformance suite ---------------------------------------------

PYSPF_SDIST = "pyspf-2.0.14.tar.gz"
PYSPF_SDIST_SHA256 = "57a7ef01bda090173aafb6af0106251686ed73f03db4e911fcd34c57fc347186"
SUITE_MEMBER = "pyspf-2.0.14/test/rfc7208-tests.yml"
DOWNLOAD_TIMEOUT = 300  # pip builds the sdist's metadata, which may fetch setuptools
SUITE_TIMEOUT = 5.0  # the time limit of one case's check
SUITE_RESOLVER = {"query_timeout": 0.2, "lookup_timeout": 0.6}

# Cases whose result we knowingly differ on, with the RFC reason: none so far.
KNOWN_DIFFERENCES: dict[str, str] = {}


@pytest.fixture(scope="session")
def rfc7208_scenarios(request, tmp_path_factory) -> list[dict]:
    yaml = pytest.importorskip(
        "yaml", reason="PyYAML is not installed: it reads the RFC 7208 test suite"
    )
    cache = _cache_dir(request, tmp_path_factory)
    sdist = cache / PYSPF_SDIST
    if not sdist.exists():
        _download_sdist(cache)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != PYSPF_SDIST_SHA256:
        sdist.unlink()
        pytest.fail(f"{PYSPF_SDIST} has SHA-256 {digest}, expected {PYSPF_SDIST_SHA256}")
    with tarfile.open(sdist) as archive:
        text = archive.extractfile(SUITE_MEMBER).read()
    return list(yaml.safe_load_all(text))


def _cache_dir(request, tmp_path_factory) -> Path:
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    if cache is not None:
        return Path(cache.mkdir("pyspf-sdist"))
    return tmp_path_factory.mktemp("pyspf-sdist")


def _download_sdist(cache: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    command += ["--disable-pip-version-check", "-d", str(cache), "pyspf==2.0.14"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"cannot download {PYSPF_SDIST} from PyPI for the RFC 7208 suite: {error}")
    if done.returncode != 0 or not (cache / PYSPF_SDIST).exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        pytest.skip(f"cannot download {PYSPF_SDIST} from PyPI for the RFC 7208 suite: {tail}")


def test_rfc7208_conformance_suite(rfc7208_scenarios):
    cases = passed = 0
    failures, known = [], []
    for scenario in rfc7208_scenarios:
        with DnsServer() as server:
            _load_scenario(server, scenario["zonedata"])
            settings = ResolverSettings(nameservers=(server.nameserver,), **SUITE_RESOLVER)
            for name, case in scenario["tests"].items():
                cases += 1
                problem = _run_case(case, settings)
                if problem is None:
                    passed += 1
                    if name in KNOWN_DIFFERENCES:
                        failures.append(f"{name}: listed as a known difference but passes")
                elif name in KNOWN_DIFFERENCES:
                    known.append(name)
                else:
                    failures.append(f"{name} (RFC 7208 {case['spec']}): {problem}")
            assert not server.errors, f"{scenario['description']}: {server.errors}"
    print(f"RFC 7208 suite: {cases} cases, {passed} pass, {len(known)} known differences")
    assert not failures, "\n".join(failures)
    assert cases == passed + len(known) and cases > 200


def _run_case(case: dict, settings: ResolverSettings) -> str | None:
    """What is wrong with our answer to one case, or None."""
    expected = case["result"] if isinstance(case["result"], list) else [case["result"]]
    assert set(expected) <= set(RESULTS)
    outcome = check_spf(
        case["host"], case["mailfrom"], case["helo"], settings, timeout=SUITE_TIMEOUT
    )
    if outcome.result not in expected:
        return f"result {outcome.result}, expected {' or '.join(expected)} ({outcome.comment})"
    wanted = case.get("explanation")
    # The suite's driver sets "DEFAULT" as the default explanation; ours is "".
    if wanted is not None and outcome.explanation != ("" if wanted == "DEFAULT" else wanted):
        return f"explanation {outcome.explanation!r}, expected {wanted!r}"
    return None


# The suite's zone format: {name: ["TIMEOUT" | {TYPE: value}, ...]}. TXT and
# SPF values are a string or a list of strings; SPF records are also served as
# TXT at a name that has no TXT entry ("TXT: NONE" is such an entry and serves
# nothing). "TIMEOUT" alone: queries for types not listed before it go unanswered.
STALLABLE_TYPES = ("A", "AAAA", "MX", "PTR", "TXT", "SPF", "CNAME")


def _load_scenario(server: DnsServer, zonedata: dict) -> None:
    for name, entries in zonedata.items():
        answered, generated_txt, has_txt = set(), [], False
        for entry in entries:
            if entry == "TIMEOUT":
                for rdtype in set(STALLABLE_TYPES) - answered:
                    server.stall(name, rdtype)
                continue
            ((rdtype, value),) = entry.items()
            if rdtype == "TXT":
                has_txt = True
            if value == "NONE":
                continue
            answered.add(rdtype)
            if rdtype == "SPF":
                generated_txt.append(value)
            _add_record(server, name, rdtype, value)
        if not has_txt:
            for value in generated_txt:
                _add_record(server, name, "TXT", value)


def _add_record(server: DnsServer, name: str, rdtype: str, value) -> None:
    if rdtype in ("TXT", "SPF"):
        strings = [value] if isinstance(value, str) else value
        # Bytes as the suite's driver makes them: the text in UTF-8, so "\xEF"
        # in the YAML is two bytes. Longer than a DNS string: split, as a
        # publisher must (RFC 7208 3.3 joins them again).
        chunks = [
            data[i : i + 255]
            for data in (s.encode() for s in strings)
            for i in range(0, len(data) or 1, 255)
        ]
        if not chunks:
            return  # a record with no strings cannot be sent; pyspf skips one anyway
        kind = dns.rdtypes.ANY.TXT.TXT if rdtype == "TXT" else dns.rdtypes.ANY.SPF.SPF
        server.add(name, rdtype, kind(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), chunks))
    elif rdtype == "MX":
        preference, exchange = value
        server.add(name, "MX", f"{preference} {exchange or '.'}")
    else:
        server.add(name, rdtype, str(value))
