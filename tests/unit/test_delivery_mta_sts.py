"""MTA-STS policies (RFC 8461): the grammar of 3.2, MX matching of 4.1, what
a policy means for the MX hosts (5), and the cache of 3.3 and 5.1 driven by
a fake clock and a fake fetcher."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.delivery.dns import MxTarget
from appliance.delivery.mta_sts import (
    FAILED_FETCH_BACKOFF,
    MAX_AGE_LIMIT,
    REFRESH_INTERVAL,
    FetchError,
    InvalidPolicy,
    Mode,
    Policy,
    PolicyCache,
    apply_policy,
    parse_policy,
    policy_host,
)

GOOD = (
    "version: STSv1\r\nmode: enforce\r\n"
    "mx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n"
)


def run(coroutine):
    return asyncio.run(coroutine)


# -- grammar (RFC 8461 3.2) -----------------------------------------------------


def test_the_example_policy_of_the_rfc():
    policy = parse_policy(GOOD)
    assert policy == Policy(Mode.ENFORCE, 604800, ("mail.example.com", "*.example.net"))


@pytest.mark.parametrize(
    "text",
    [
        GOOD.replace("\r\n", "\n"),  # LF alone ends a line too
        GOOD.rstrip("\r\n"),  # the last line end is optional
        GOOD.replace("mode: enforce", "mode:enforce"),  # *WSP after the colon
        GOOD.replace("mode: enforce", "mode:\t \tenforce \t"),  # and at the end of a line
        GOOD + "comment: any value, even = ; and € signs\r\n",  # extensions are ignored
        GOOD + "Mode: testing\r\n",  # names are case-sensitive: this is an extension
        "max_age: 604800\nmx: *.example.net\nmx: mail.example.com\nmode: enforce\nversion: STSv1",
        GOOD.replace("mail.example.com", "MAIL.Example.COM"),
    ],
)
def test_valid_spellings_of_the_same_policy(text):
    policy = parse_policy(text)
    assert policy.mode is Mode.ENFORCE
    assert policy.max_age == 604800
    assert set(policy.mx) == {"mail.example.com", "*.example.net"}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("\r\n", "line 1"),
        (GOOD.replace("version: STSv1\r\n", ""), "no version"),
        (GOOD.replace("mode: enforce\r\n", ""), "no mode"),
        (GOOD.replace("max_age: 604800\r\n", ""), "no max_age"),
        (GOOD.replace("STSv1", "STSv2"), "not STSv1"),
        (GOOD.replace("STSv1", "stsv1"), "not STSv1"),
        (GOOD.replace("version:", "Version:"), "no version"),
        (GOOD.replace("enforce", "Enforce"), "not enforce"),
        (GOOD.replace("enforce", "reject"), "not enforce"),
        (GOOD.replace("enforce", "enforce testing"), "not enforce"),
        (GOOD + "mode: testing\r\n", "second time"),
        (GOOD + "version: STSv1\r\n", "second time"),
        (GOOD + "max_age: 1\r\n", "second time"),
        (GOOD.replace("604800", "-1"), "digits"),
        (GOOD.replace("604800", "1e6"), "digits"),
        (GOOD.replace("604800", "12345678901"), "digits"),  # 1*10DIGIT
        (GOOD.replace("604800", ""), "line 5"),
        ("version: STSv1\nmode: testing\nmax_age: 86400\n", "without any mx"),
        ("version: STSv1\r\n\r\nmode: none\r\nmax_age: 1\r\n", "line 2"),  # blank line
        (GOOD + "\r\n", "line 6"),  # a blank line after the last term
        (GOOD.replace("\r\n", "\n") + "\n", "line 6"),
        (" " + GOOD, "line 1"),  # leading white space
        ("version : STSv1\nmode: none\nmax_age: 1\n", "line 1"),  # space before the colon
        ("version STSv1\nmode: none\nmax_age: 1\n", "line 1"),  # no colon
        ("version: STSv1\rmode: none\rmax_age: 1\r", "line 1"),  # CR is no line end
        (GOOD.replace("mode: enforce", "mode: enforce\x00"), "line 2"),  # control character
        (GOOD + "x: a\x7fb\n", "line 6"),
        (GOOD + "_x: value\n", "line 6"),  # a name starts with a letter or digit
        (GOOD + "x" * 33 + ": value\n", "line 6"),  # and has at most 32 characters
        (GOOD + "x:\n", "line 6"),  # an extension value is not empty
    ],
)
def test_invalid_policies(text, complaint):
    with pytest.raises(InvalidPolicy, match=re.escape(complaint)):
        parse_policy(text)


@pytest.mark.parametrize(
    "mx",
    [
        "*.*.example.com",
        "mail.*.example.com",
        "*example.com",
        "*",
        "-mail.example.com",
        "mail-.example.com",
        "mail..example.com",
        "mail.example.com.",
        "mail_1.example.com",
        "[192.0.2.1]",
        "mail.example.com extra",
        "m" * 64 + ".example.com",
        ".".join(["a" * 60] * 5),
        "bücher.example",  # RFC 8461 3.2: IDNs as A-labels
    ],
)
def test_mx_values_that_are_not_patterns(mx):
    with pytest.raises(InvalidPolicy, match="mx"):
        parse_policy(GOOD.replace("mail.example.com", mx))


def test_mode_none_needs_no_mx():
    policy = parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n")
    assert policy == Policy(Mode.NONE, 86400, ())


def test_max_age_is_capped_at_a_year():
    assert parse_policy(GOOD.replace("604800", "9999999999")).max_age == MAX_AGE_LIMIT
    assert parse_policy(GOOD.replace("604800", str(MAX_AGE_LIMIT))).max_age == MAX_AGE_LIMIT
    assert parse_policy(GOOD.replace("604800", "0")).max_age == 0


def test_a_policy_survives_its_own_text():
    policy = parse_policy(GOOD + "extension: dropped\n")
    assert parse_policy(policy.to_text()) == policy


@given(st.text(max_size=200))
def test_any_text_is_a_policy_or_invalid_policy(text):
    try:
        policy = parse_policy(text)
    except InvalidPolicy:
        return
    assert policy.mode in Mode and 0 <= policy.max_age <= MAX_AGE_LIMIT


labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=4).map(".".join)


@given(
    mode=st.sampled_from(["enforce", "testing"]),
    max_age=st.integers(0, 9_999_999_999),
    patterns=st.lists(st.tuples(st.booleans(), domains), min_size=1, max_size=5),
    line_end=st.sampled_from(["\n", "\r\n"]),
)
def test_generated_policies_parse_to_what_was_written(mode, max_age, patterns, line_end):
    mx = [("*." if wild else "") + domain for wild, domain in patterns]
    lines = ["version: STSv1", f"mode: {mode}", f"max_age: {max_age}"]
    lines += [f"mx: {pattern}" for pattern in mx]
    policy = parse_policy(line_end.join(lines))
    assert policy == Policy(Mode(mode), min(max_age, MAX_AGE_LIMIT), tuple(mx))


# -- MX matching (RFC 8461 4.1) -------------------------------------------------


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("mail.example.com", True),
        ("MAIL.EXAMPLE.COM", True),
        ("mail.example.com.", True),
        ("mx1.example.net", True),  # *.example.net
        ("MX2.Example.Net.", True),
        ("example.net", False),  # the wildcard is one whole label, not none
        ("a.b.example.net", False),  # nor two
        ("example.com", False),
        ("mail.example.com.evil.test", False),
        ("evilmail.example.com", False),
        ("xexample.net", False),
        ("", False),
    ],
)
def test_policy_allows_mx_hosts_as_4_1_says(host, allowed):
    assert parse_policy(GOOD).allows(host) is allowed


# -- what a policy means for the MX hosts (RFC 8461 5) -------------------------


def target(host: str, preference: int = 10) -> MxTarget:
    return MxTarget(host, preference, ("192.0.2.1",), host, secure=False)


TARGETS = [target("mail.example.com"), target("backup.other.test", 20), target("mx.example.net")]


def test_enforce_keeps_only_named_hosts_in_order_and_verifies_tls(caplog):
    caplog.set_level(logging.INFO, "appliance.delivery.mta_sts")
    plan = apply_policy(parse_policy(GOOD), TARGETS, "example.com")
    assert [t.host for t in plan.targets] == ["mail.example.com", "mx.example.net"]
    assert plan.verify_tls
    assert plan.unlisted == ("backup.other.test",)
    assert "mx-not-in-policy mode=enforce domain=example.com host=backup.other.test" in caplog.text


def test_enforce_with_no_named_host_leaves_nothing_to_try():
    plan = apply_policy(parse_policy(GOOD), [target("mx.elsewhere.test")], "example.com")
    assert plan.targets == () and plan.verify_tls


def test_testing_tries_every_host_and_only_logs(caplog):
    caplog.set_level(logging.INFO, "appliance.delivery.mta_sts")
    policy = parse_policy(GOOD.replace("enforce", "testing"))
    plan = apply_policy(policy, TARGETS, "example.com")
    assert plan.targets == tuple(TARGETS)
    assert not plan.verify_tls
    assert plan.unlisted == ("backup.other.test",)
    assert "mx-not-in-policy mode=testing domain=example.com host=backup.other.test" in caplog.text


@pytest.mark.parametrize("policy", [None, Policy(Mode.NONE, 86400, ())])
def test_none_or_no_policy_changes_nothing(policy):
    plan = apply_policy(policy, TARGETS, "example.com")
    assert plan.targets == tuple(TARGETS)
    assert not plan.verify_tls and plan.unlisted == ()


def test_policy_host_is_mta_sts_dot_domain_in_a_labels():
    assert policy_host("Example.COM.") == "mta-sts.example.com"
    assert policy_host("bücher.example") == "mta-sts.xn--bcher-kva.example"
    with pytest.raises(FetchError):
        policy_host("")


# -- the cache (RFC 8461 3.3, 5.1) ----------------------------------------------

DAY = 24 * 3600
T0 = 1_700_000_000.0
ENFORCE = parse_policy(GOOD)  # max_age a week
TESTING = parse_policy(GOOD.replace("enforce", "testing"))


class FakeFetcher:
    """Answers with the policies (or errors) queued, and counts the fetches."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.asked: list[str] = []
        self.gate: asyncio.Event | None = None

    async def __call__(self, domain: str) -> Policy:
        self.asked.append(domain)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_no_txt_record_and_nothing_cached_is_no_policy():
    fetch = FakeFetcher()
    assert run(PolicyCache(fetch).policy_for("example.com", None, T0)) is None
    assert fetch.asked == []


def test_a_new_policy_id_is_fetched_once_then_served_from_the_cache():
    fetch = FakeFetcher(ENFORCE)
    cache = PolicyCache(fetch)

    async def scenario():
        first = await cache.policy_for("example.com", "id1", T0)
        second = await cache.policy_for("EXAMPLE.com.", "id1", T0 + 3600)
        return first, second

    assert run(scenario()) == (ENFORCE, ENFORCE)
    assert fetch.asked == ["example.com"]
    assert cache.get("example.com").policy_id == "id1"


def test_a_changed_id_is_fetched_again():
    fetch = FakeFetcher(ENFORCE, TESTING)
    cache = PolicyCache(fetch)

    async def scenario():
        await cache.policy_for("example.com", "id1", T0)
        return await cache.policy_for("example.com", "id2", T0 + 60)

    assert run(scenario()) == TESTING
    assert len(fetch.asked) == 2
    assert cache.get("example.com").policy_id == "id2"


def test_a_failed_fetch_keeps_the_unexpired_cached_policy():
    fetch = FakeFetcher(ENFORCE, FetchError("refused"))
    cache = PolicyCache(fetch)

    async def scenario():
        await cache.policy_for("example.com", "id1", T0)
        return await cache.policy_for("example.com", "id2", T0 + DAY)

    assert run(scenario()) == ENFORCE  # 3.3: the cached policy MUST be applied
    assert cache.get("example.com").policy_id == "id1"


def test_an_invalid_new_policy_keeps_the_cached_one():
    fetch = FakeFetcher(ENFORCE, InvalidPolicy("no mode field"))
    cache = PolicyCache(fetch)

    async def scenario():
        await cache.policy_for("example.com", "id1", T0)
        return await cache.policy_for("example.com", "id2", T0 + 60)

    assert run(scenario()) == ENFORCE


def test_a_failed_fetch_with_an_expired_cache_is_no_policy():
    fetch = FakeFetcher(ENFORCE, FetchError("timed out"))
    cache = PolicyCache(fetch)

    async def scenario():
        await cache.policy_for("example.com", "id1", T0)
        return await cache.policy_for("example.com", "id2", T0 + ENFORCE.max_age + 1)

    assert run(scenario()) is None
    assert cache.get("example.com") is None


def test_a_vanished_txt_record_leaves_the_cached_policy_in_force_until_it_expires():
    fetch = FakeFetcher(ENFORCE)
    cache = PolicyCache(fetch)

    async def scenario():
        await cache.policy_for("example.com", "id1", T0)
        during = await cache.policy_for("example.com", None, T0 + ENFORCE.max_age - 1)
        after = await cache.policy_for("example.com", None, T0 + ENFORCE.max_age)
        return during, after

    assert run(scenario()) == (ENFORCE, None)
    assert fetch.asked == ["example.com"]


def test_the_same_id_is_refreshed_daily_which_extends_the_expiry():
    refreshed = parse_policy(GOOD.replace("604800", "1209600"))
    fetch = FakeFetcher(ENFORCE, refreshed)
    cache = PolicyCache(fetch)

    async def scenario():
        await cache.policy_for("example.com", "id1", T0)
        before = await cache.policy_for("example.com", "id1", T0 + REFRESH_INTERVAL - 1)
        after = await cache.policy_for("example.com", "id1", T0 + REFRESH_INTERVAL)
        return before, after

    assert run(scenario()) == (ENFORCE, refreshed)
    assert len(fetch.asked) == 2
    assert cache.get("example.com").expires == T0 + REFRESH_INTERVAL + 1209600


def test_a_failed_refresh_keeps_the_policy_and_is_not_retried_within_the_backoff():
    fetch = FakeFetcher(ENFORCE, FetchError("refused"), ENFORCE)
    cache = PolicyCache(fetch)

    async def scenario():
        await cache.policy_for("example.com", "id1", T0)
        moment = T0 + REFRESH_INTERVAL
        results = [await cache.policy_for("example.com", "id1", moment)]
        results.append(await cache.policy_for("example.com", "id1", moment + 1))
        assert len(fetch.asked) == 2  # the failure is remembered
        results.append(await cache.policy_for("example.com", "id1", moment + FAILED_FETCH_BACKOFF))
        return results

    assert run(scenario()) == [ENFORCE] * 3
    assert len(fetch.asked) == 3
    assert cache.get("example.com").fetched == T0 + REFRESH_INTERVAL + FAILED_FETCH_BACKOFF


def test_failed_fetches_of_an_uncached_domain_back_off_per_id():
    fetch = FakeFetcher(FetchError("a"), FetchError("b"), ENFORCE)
    cache = PolicyCache(fetch)

    async def scenario():
        results = [await cache.policy_for("example.com", "id1", T0)]
        results.append(await cache.policy_for("example.com", "id1", T0 + 10))
        results.append(await cache.policy_for("example.com", "id2", T0 + 20))  # a new id
        results.append(await cache.policy_for("example.com", "id2", T0 + 30))
        results.append(await cache.policy_for("example.com", "id2", T0 + 20 + FAILED_FETCH_BACKOFF))
        return results

    assert run(scenario()) == [None, None, None, None, ENFORCE]
    assert len(fetch.asked) == 3


def test_a_policy_with_max_age_zero_applies_once_and_is_not_kept():
    fleeting = parse_policy(GOOD.replace("604800", "0"))
    fetch = FakeFetcher(fleeting, fleeting)
    cache = PolicyCache(fetch)

    async def scenario():
        first = await cache.policy_for("example.com", "id1", T0)
        second = await cache.policy_for("example.com", "id1", T0 + 1)
        return first, second

    assert run(scenario()) == (fleeting, fleeting)
    assert len(fetch.asked) == 2


def test_deliveries_at_once_to_one_domain_fetch_its_policy_once():
    fetch = FakeFetcher(ENFORCE)
    cache = PolicyCache(fetch)

    async def scenario():
        fetch.gate = asyncio.Event()
        waiting = [
            asyncio.ensure_future(cache.policy_for("example.com", "id1", T0)) for _ in range(5)
        ]
        await asyncio.sleep(0)
        fetch.gate.set()
        return await asyncio.wait_for(asyncio.gather(*waiting), 5)

    assert run(scenario()) == [ENFORCE] * 5
    assert fetch.asked == ["example.com"]


def test_the_cache_holds_at_most_max_domains_dropping_the_soonest_to_expire():
    short = parse_policy(GOOD.replace("604800", "3600"))
    fetch = FakeFetcher(ENFORCE, short, ENFORCE)
    cache = PolicyCache(fetch, max_domains=2)

    async def scenario():
        for domain in ("a.test", "b.test", "c.test"):
            await cache.policy_for(domain, "id1", T0)

    run(scenario())
    assert [d for d in ("a.test", "b.test", "c.test") if cache.get(d)] == ["a.test", "c.test"]


# -- the cache file ------------------------------------------------------------


def test_the_cache_survives_a_restart(tmp_path):
    path = tmp_path / "mta-sts.json"
    run(PolicyCache(FakeFetcher(ENFORCE), path).policy_for("example.com", "id1", T0))
    assert [p.name for p in tmp_path.iterdir()] == ["mta-sts.json"]  # no temporary left

    fetch = FakeFetcher()
    restarted = PolicyCache(fetch, path)
    # The TXT lookup fails after the restart (an attacker, say): the policy holds.
    assert run(restarted.policy_for("example.com", None, T0 + DAY)) == ENFORCE
    assert run(restarted.policy_for("example.com", "id1", T0 + 60)) == ENFORCE
    assert fetch.asked == []
    assert restarted.get("example.com").fetched == T0


def test_an_expired_policy_leaves_the_file(tmp_path):
    path = tmp_path / "mta-sts.json"
    cache = PolicyCache(FakeFetcher(ENFORCE), path)
    run(cache.policy_for("example.com", "id1", T0))
    run(cache.policy_for("example.com", None, T0 + ENFORCE.max_age))
    assert json.loads(path.read_text())["policies"] == {}


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        '{"format": 99, "policies": {}}',
        '{"format": 1}',
        "",
    ],
)
def test_an_unreadable_cache_file_starts_empty(tmp_path, caplog, content):
    path = tmp_path / "mta-sts.json"
    path.write_text(content)
    fetch = FakeFetcher(ENFORCE)
    cache = PolicyCache(fetch, path)
    assert "cache-unreadable" in caplog.text
    assert run(cache.policy_for("example.com", "id1", T0)) == ENFORCE
    assert json.loads(path.read_text())["policies"]["example.com"]["id"] == "id1"


def test_a_bad_entry_in_the_cache_file_is_dropped_alone(tmp_path, caplog):
    path = tmp_path / "mta-sts.json"
    good = {"id": "id1", "fetched": T0, "policy": ENFORCE.to_text()}
    bad = {"id": "id1", "fetched": T0, "policy": "version: STSv1\nmode: enforce\n"}
    path.write_text(
        json.dumps({"format": 1, "policies": {"good.test": good, "bad.test": bad, "x": 5}})
    )
    cache = PolicyCache(FakeFetcher(), path)
    assert cache.get("good.test").policy == ENFORCE
    assert cache.get("bad.test") is None and cache.get("x") is None
    assert "cache-entry-dropped domain=bad.test" in caplog.text
