"""The DNS page and the self-test button, through the admin's HTTPS pages.

A loopback DNS server plays the Internet: the domain's records are right,
wrong or missing, and the page must say which, record by record. The
appliance's own smtp listener plays port 25 ([queue] mx_port points at it).
"""

from __future__ import annotations

import html
import re

import pytest

from appliance.mailauth import dkim
from appliance.web import dns_records
from tests.conftest import Appliance
from tests.dns_server import dns_server_fixture  # noqa: F401 - fixture dns_server
from tests.web_client import ADMIN, ADMIN_PASSWORD, DOMAIN, HOSTNAME, complete_setup, log_in

_ROW = re.compile(
    r'<tr class="record" data-name="([^"]+)" data-type="([^"]+)" data-state="([^"]+)">(.*?)</tr>',
    re.S,
)
_STEP = re.compile(
    r'<tr class="step" data-ok="(true|false)">\s*<td[^>]*>([^<]+)</td>(.*?)</tr>', re.S
)


@pytest.fixture
def box(tmp_path, dns_server):
    app = Appliance(data=tmp_path / "data")
    app.data.mkdir()
    app.settings = {
        "resolver": {"nameservers": [dns_server.nameserver]},
        "queue": {"mx_port": app.port},
        # The box itself plays the outside MX that proves port 25 out is open.
        "web": {"selftest_probe_domain": "probe.test", "selftest_step_timeout": 10},
    }
    app.start()
    try:
        assert complete_setup(app).status == 200
        yield app
    finally:
        assert app.stop() == 0, app.log()


def publish_right_records(dns_server, app: Appliance, domain: str) -> None:
    """What the DNS page asks the owner to publish, published as asked."""
    for record in dns_records.expected_records(HOSTNAME, domain, app.data):
        if record.type == "A" and not record.value:
            dns_server.add(record.name, "A", "127.0.0.1")
        elif record.type == "TXT":
            dns_server.add(record.name, "TXT", " ".join(f'"{s}"' for s in _strings(record.value)))
        else:
            dns_server.add(record.name, record.type, record.value)


def _strings(text: str) -> list[str]:
    return [text[i : i + 255] for i in range(0, len(text), 255)]


def rows(page_text: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(name, type) -> (state, the row's text) of the DNS page."""
    found = {}
    for name, rtype, state, cells in _ROW.findall(page_text):
        found[(name, rtype)] = (state, html.unescape(re.sub(r"<[^>]+>", " ", cells)))
    return found


def test_dns_page_shows_right_wrong_and_missing_records(box, dns_server):
    with log_in(box, ADMIN, ADMIN_PASSWORD) as admin:
        for name in ("wrong.test", "missing.test"):
            page = admin.submit("/admin/domains", "/admin/domains", {"name": name})
            assert page.status == 303
        publish_right_records(dns_server, box, DOMAIN)
        dns_server.add("wrong.test", "MX", "10 mx.elsewhere.test.")
        dns_server.add("wrong.test", "TXT", '"v=spf1 mx -all"')
        dns_server.add("wrong.test", "TXT", '"v=spf1 a -all"')
        dns_server.add("_dmarc.wrong.test", "TXT", '"v=DMARC1; rua=mailto:x@wrong.test"')

        right = rows(admin.get(f"/admin/domains/{DOMAIN}").text)
        assert right, "no records on the page"
        assert {state for state, _ in right.values()} == {"ok"}, right
        selectors = [s.name for s in dkim.selectors(box.data, DOMAIN)]
        for selector in selectors:
            assert right[(f"{selector}._domainkey.{DOMAIN}", "TXT")][0] == "ok"

        wrong = rows(admin.get("/admin/domains/wrong.test").text)
        state, text = wrong[("wrong.test", "MX")]
        assert state == "wrong" and "mx.elsewhere.test" in text
        assert wrong[("wrong.test", "TXT")][0] == "wrong"  # two SPF records
        assert wrong[("_dmarc.wrong.test", "TXT")][0] == "wrong"  # no p=
        assert wrong[("_mta-sts.wrong.test", "TXT")][0] == "missing"

        missing = rows(admin.get("/admin/domains/missing.test").text)
        host_records = {(HOSTNAME, "A"), (HOSTNAME, "TXT")}  # the box's own, published already
        states = {key: state for key, (state, _) in missing.items() if key not in host_records}
        assert set(states.values()) == {"missing"}, states


def selftest(admin) -> dict[str, tuple[bool, str]]:
    page = admin.submit("/admin/selftest", "/admin/selftest", {"domain": DOMAIN})
    assert page.status == 200, page.text[:500]
    steps = {}
    for ok, name, cells in _STEP.findall(page.text):
        steps[html.unescape(name)] = (ok == "true", html.unescape(re.sub(r"<[^>]+>", " ", cells)))
    assert len(steps) == 6, page.text
    return steps


def test_selftest_passes_when_the_box_is_set_up_right(box, dns_server):
    publish_right_records(dns_server, box, DOMAIN)
    dns_server.add("probe.test", "MX", f"10 {HOSTNAME}.")
    with log_in(box, ADMIN, ADMIN_PASSWORD) as admin:
        steps = selftest(admin)
    assert all(ok for ok, _ in steps.values()), steps
    assert "web action=selftest by=admin@example.test" in box.log()
    assert b"X-Selftest-Id" not in b"".join(box.inbox(ADMIN))  # it cleaned up after itself


def test_selftest_names_the_mx_that_points_elsewhere(box, dns_server):
    publish_right_records(dns_server, box, DOMAIN)
    dns_server.remove(DOMAIN, "MX")
    dns_server.load({DOMAIN: {"MX": "10 mx.other.test."}, "mx.other.test": {"A": "127.0.0.9"}})
    with log_in(box, ADMIN, ADMIN_PASSWORD) as admin:
        steps = selftest(admin)
    first_ok, first_text = next(iter(steps.values()))
    assert not first_ok and "mx.other.test" in first_text
    assert "What to do" in first_text


def test_selftest_says_to_open_port_25_when_nothing_answers(box, dns_server):
    publish_right_records(dns_server, box, DOMAIN)
    dns_server.remove(HOSTNAME, "A")
    dns_server.load({HOSTNAME: {"A": "127.0.0.3"}})  # nothing listens there
    with log_in(box, ADMIN, ADMIN_PASSWORD) as admin:
        steps = list(selftest(admin).items())
    assert steps[0][1][0], steps  # the MX is right
    port_ok, port_text = steps[1][1]
    assert not port_ok and "open port" in port_text and "forward" in port_text
