"""The web pages' defences, seen from a browser over real sockets.

Most tests share two boxes, each started once: `blank`, never set up (its
setup code is replaced after a few wrong tries), and `box`, set up through
its setup page. Tests that need other settings (the default slow-down of
wrong codes, a one-second session) start their own.
"""

from __future__ import annotations

import html
import http.client
import plistlib
import smtplib
import ssl
import time
import xml.etree.ElementTree as ET
from urllib.parse import quote

import pytest

from tests.conftest import Appliance
from tests.web_client import (
    ADMIN,
    ADMIN_PASSWORD,
    DOMAIN,
    HOSTNAME,
    NEW_PASSWORD,
    USER_PASSWORD,
    Browser,
    Page,
    imap_login_works,
    listing,
    log_in,
    set_up_appliance,
    setup_fields,
)

# Wrong guesses in these tests must not wait the real delay (1 s, doubling).
FAST_LOGIN = {"failure_delay": 0.01, "max_failure_delay": 0.05}
SETUP_CODE_ATTEMPTS = 3
# Never a setup code: the codes' alphabet has no 0.
WRONG_CODE = "0000-0000-0000"
XSS_PAYLOADS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')
# What a browser would run if a payload reached the page unescaped.
XSS_MARKERS = ("<script>alert", "<img src=x")
ADMIN_PAGES = (
    "/admin",
    "/admin/domains",
    f"/admin/domains/{DOMAIN}",
    "/admin/users",
    "/admin/aliases",
    "/admin/queue",
    "/admin/tls",
    "/admin/selftest",
)
# Each admin action with a form that would change something if it were let through.
ADMIN_ACTIONS = (
    ("/admin/domains", {"name": "taken.test"}),
    (f"/admin/domains/{DOMAIN}/remove", {}),
    (f"/admin/domains/{DOMAIN}/dkim-rotate", {}),
    ("/admin/users", {"address": f"mallory@{DOMAIN}", "password": USER_PASSWORD, "admin": "on"}),
    (f"/admin/users/{ADMIN}/password", {"password": USER_PASSWORD}),
    (f"/admin/users/{ADMIN}/remove", {}),
    ("/admin/aliases", {"source": f"@{DOMAIN}", "targets": "mallory@elsewhere.test"}),
    (f"/admin/aliases/postmaster@{DOMAIN}/remove", {}),
    ("/admin/queue/1/delete", {}),
    ("/admin/tls", {"certificate": "x", "key": "y"}),
    ("/admin/selftest", {"domain": DOMAIN}),
)


@pytest.fixture(scope="module")
def blank(tmp_path_factory):
    """A box nobody has set up: no domain, no account."""
    settings = {"login": FAST_LOGIN, "web": {"setup_code_attempts": SETUP_CODE_ATTEMPTS}}
    app = Appliance(data=tmp_path_factory.mktemp("blank"), settings=settings)
    app.start()
    yield app
    assert app.stop() == 0, app.log()


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """A box set up through its setup page, with a postmaster alias."""
    app = set_up_appliance(tmp_path_factory.mktemp("box"), login=FAST_LOGIN)
    assert app.cli("alias", "add", f"postmaster@{DOMAIN}", ADMIN).returncode == 0
    yield app
    assert app.stop() == 0, app.log()


@pytest.fixture(scope="module")
def admin(box):
    """The administrator's browser, logged in for the whole module."""
    browser = log_in(box, ADMIN, ADMIN_PASSWORD)
    yield browser
    browser.close()


def add_user(admin: Browser, address: str, password: str = USER_PASSWORD) -> None:
    """The administrator adds an account on the users page."""
    page = admin.submit("/admin/users", "/admin/users", {"address": address, "password": password})
    assert page.status == 303 and page.location == "/admin/users", page.text
    assert admin.get("/admin/users").notices() == [f"Added {address}."]


def assert_no_unescaped_payload(page: Page) -> None:
    for marker in XSS_MARKERS:
        assert marker not in page.text, f"{page.url} shows a payload unescaped"


# -- before setup ----------------------------------------------------------------


def test_before_setup_every_page_leads_to_setup(blank):
    for base in (blank.http_url, blank.https_url):
        with Browser(base) as browser:
            for path in ("/", "/login", "/admin", "/admin/users", "/account", "/nowhere"):
                page = browser.get(path)
                assert (page.status, page.location) == (303, "/setup"), (base, path)
            page = browser.post("/login", {"address": ADMIN, "password": "x"})
            assert (page.status, page.location) == (303, "/setup")
            page = browser.get("/setup")
            assert page.status == 200 and "Setup code" in page.text


def test_autoconfig_knows_no_domain_before_one_exists(blank):
    with Browser(blank.http_url) as browser:
        page = browser.get(
            f"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=ann@{DOMAIN}"
        )
        assert page.status == 404
        page = browser.get("/mail/config-v1.1.xml", headers={"Host": f"autoconfig.{DOMAIN}"})
        assert page.status == 404


# -- the setup code ----------------------------------------------------------------


def assert_nothing_set_up(app: Appliance) -> None:
    assert listing(app) == {"domain": "", "user": "", "alias": ""}
    assert 'hostname = "mail.example.test"' in (app.data / "appliance.toml").read_text()
    assert (app.data / "setup-code").exists()


def test_a_wrong_setup_code_is_refused_and_sets_nothing_up(blank):
    with Browser(blank.http_url) as browser:
        page = browser.submit("/setup", "/setup", setup_fields(blank, code=WRONG_CODE))
    assert page.status == 403
    assert page.notices() == ["That is not the setup code shown on the box's console."]
    assert ADMIN_PASSWORD not in page.text and WRONG_CODE not in page.text
    assert page.field_value("hostname") == HOSTNAME  # what was typed stays, but no secret
    assert_nothing_set_up(blank)


def test_too_many_wrong_codes_replace_the_code(blank):
    old_code = blank.setup_code()
    renewals = blank.log().count("setup code (new)")
    with Browser(blank.http_url) as browser:
        for _ in range(SETUP_CODE_ATTEMPTS):
            page = browser.submit("/setup", "/setup", setup_fields(blank, code=WRONG_CODE))
            assert page.status == 403
            if blank.log().count("setup code (new)") > renewals:
                break
        else:
            pytest.fail(f"no new code after {SETUP_CODE_ATTEMPTS} wrong ones: {blank.log()}")
        new_code = blank.setup_code()
        assert new_code != old_code
        assert (blank.data / "setup-code").read_text().strip() == new_code
        page = browser.submit("/setup", "/setup", setup_fields(blank, code=old_code))
        assert page.status == 403
        # The new code is taken (a weak password keeps the box blank for the other tests).
        weak = {"code": new_code, "password": "aaaaaaaaaaaa", "password2": "aaaaaaaaaaaa"}
        page = browser.submit("/setup", "/setup", setup_fields(blank, **weak))
        assert page.status == 400
    assert_nothing_set_up(blank)


def test_wrong_setup_codes_are_slowed_down(tmp_path):
    """With the default [login] failure_delay (1 s), the second wrong code waits."""
    tmp_path.joinpath("data").mkdir()
    app = Appliance(data=tmp_path / "data")
    app.start()
    try:
        with Browser(app.http_url) as browser:
            token = browser.get("/setup").csrf()
            form = {"csrf": token, **setup_fields(app, code=WRONG_CODE)}
            started = time.monotonic()
            assert browser.post("/setup", form).status == 403
            first = time.monotonic() - started
            started = time.monotonic()
            assert browser.post("/setup", form).status == 403
            second = time.monotonic() - started
        assert second >= 0.9 and second > first, (first, second)
    finally:
        assert app.stop() == 0, app.log()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"password": "aaaaaaaaaaaa", "password2": "aaaaaaaaaaaa"}, "password too easy to guess"),
        ({"password": "Plum7!rain", "password2": "Plum7!rain "}, "The two passwords differ."),
        ({"password": "Tr4ct0r!", "password2": "Tr4ct0r!"}, "password too weak: at least 12"),
        ({"password": "admin horse 42x", "password2": "admin horse 42x"}, "too easy to guess"),
        ({"address": "admin@elsewhere.test"}, "The administrator's address must be at"),
        ({"hostname": "box"}, "The mail host name must be a full name like mail.example.com."),
        ({"hostname": "box.example.test\r\nevil = 1"}, "must be a full name like mail.example.com"),
        ({"domain": "example.test\r\nBcc: a@b"}, "not a valid domain name"),
    ],
)
def test_setup_refuses_a_bad_form_with_its_reason(blank, changes, reason):
    with Browser(blank.http_url) as browser:
        page = browser.submit("/setup", "/setup", setup_fields(blank, **changes))
    assert page.status == 400
    [shown] = page.notices()
    assert reason in shown
    assert not any("evil" in value or "Bcc" in value for value in page.headers.values())
    assert_nothing_set_up(blank)


def test_a_very_long_password_at_setup_is_refused_not_an_error(blank):
    """A password past passwords.MAX_LENGTH is a 400 with its reason, like any weak one."""
    long_password = "velvet tractor plum 42 " * 50
    changes = {"password": long_password, "password2": long_password}
    with Browser(blank.http_url) as browser:
        page = browser.submit("/setup", "/setup", setup_fields(blank, **changes))
    assert page.status == 400, page.text[:300]
    assert_nothing_set_up(blank)


def test_setup_makes_the_domain_and_admin_and_never_runs_again(box):
    listed = listing(box)
    assert listed["domain"] == f"{DOMAIN}\n"
    assert listed["user"] == f"{ADMIN}\n"
    assert not (box.data / "setup-code").exists()
    assert f'hostname = "{HOSTNAME}"' in (box.data / "appliance.toml").read_text()
    assert "setup is done" in box.cli("setup-code").stderr
    assert f"web action=setup by=- client=127.0.0.1 hostname={HOSTNAME}" in box.log()

    old_code = box.setup_code()  # as printed on the console at first boot
    for base in (box.http_url, box.https_url):
        with Browser(base) as browser:
            assert browser.get("/setup").status == 404
            token = browser.get(box.https_url + "/login").csrf()
            replay = {"csrf": token, **setup_fields(box, code=old_code, address=f"eve@{DOMAIN}")}
            assert browser.post("/setup", replay).status == 404
    assert listing(box) == listed


def test_pages_move_to_https_once_set_up(box):
    with Browser(box.http_url) as browser:
        for path in ("/", "/login", "/admin/users?x=1", "/account"):
            page = browser.get(path)
            assert page.status == 301
            assert page.location == f"https://{box.host}:{box.https_port}{path}"
        # Clients fetch autoconfig over plain HTTP first: that stays.
        page = browser.get(f"/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a@{DOMAIN}")
        assert page.status == 200


# -- CSRF --------------------------------------------------------------------------


def test_a_form_without_its_token_is_refused(box, admin):
    before = listing(box)
    page = admin.post("/admin/domains", {"name": "csrf.test"})
    assert page.status == 403 and "This form has expired" in page.text
    page = admin.post("/admin/users", {"address": f"x@{DOMAIN}", "password": USER_PASSWORD})
    assert page.status == 403
    with Browser(box.https_url) as stranger:
        page = stranger.post("/login", {"address": ADMIN, "password": ADMIN_PASSWORD})
        assert page.status == 403  # no login without the form's token either
    assert listing(box) == before


def test_a_token_of_another_session_is_refused(box, admin):
    before = listing(box)
    with Browser(box.https_url) as stranger:
        token = stranger.get("/login").csrf()
    page = admin.post("/admin/domains", {"csrf": token, "name": "csrf.test"})
    assert page.status == 403
    assert listing(box) == before


def test_a_cross_site_post_is_refused_even_with_the_token(box, admin):
    before = listing(box)
    for origin in ("cross-site", "same-site"):
        page = admin.submit(
            "/admin/domains",
            "/admin/domains",
            {"name": "csrf.test"},
            headers={"Sec-Fetch-Site": origin},
        )
        assert page.status == 403 and "Cross-site request refused" in page.text
    assert listing(box) == before


def test_a_path_climbing_out_of_a_public_prefix_reaches_no_page(box, admin):
    """Autoconfig and static files skip the token check; ".." must not carry
    an admin action through that door. http.client sends the path as it is
    (aiohttp's client would resolve the dots first)."""
    before = listing(box)
    cookie = {"Cookie": f"session={admin.session_id()}"}
    form = {**cookie, "Content-Type": "application/x-www-form-urlencoded"}
    for prefix in ("/.well-known/", "/static/", "/autodiscover/", "/.well-known/%2e%2e/"):
        connection = http.client.HTTPSConnection(
            box.host, box.https_port, timeout=30, context=ssl._create_unverified_context()
        )
        try:
            connection.request("POST", f"{prefix}../admin/domains", "name=climbed.test", form)
            posted = connection.getresponse()
            posted.read()
            connection.request("GET", f"{prefix}../admin/users", headers=cookie)
            shown = connection.getresponse()
            page = shown.read().decode()
        finally:
            connection.close()
        assert posted.status in (403, 404), (prefix, posted.status)
        assert shown.status in (303, 403, 404) and ADMIN not in page, (prefix, shown.status)
    assert listing(box) == before


# -- cookies and headers ---------------------------------------------------------


def test_the_session_cookie_is_httponly_samesite_strict_and_secure_over_https(blank, box):
    with Browser(blank.http_url) as browser:
        cookie = browser.get("/setup").cookie()
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    with Browser(box.https_url) as browser:
        cookie = browser.get("/login").cookie()
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["secure"]
        form = {"address": ADMIN, "password": ADMIN_PASSWORD}
        cookie = browser.submit("/login", "/login", form).cookie()
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["secure"]


def assert_security_headers(page: Page) -> None:
    policy = page.headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy, page.url
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert page.headers.get("X-Frame-Options") == "DENY", page.url
    assert page.headers.get("X-Content-Type-Options") == "nosniff", page.url


def test_every_answer_has_the_security_headers(blank, box):
    seen = []
    with Browser(blank.http_url) as browser:
        seen += [browser.get("/setup"), browser.get("/admin")]
    with Browser(box.http_url) as browser:
        seen.append(browser.get("/login"))  # the move to https
    with Browser(box.https_url) as browser:
        seen += [browser.get("/login"), browser.get("/nowhere"), browser.get("/setup")]
        seen.append(browser.post("/login", {"address": ADMIN}))  # no token
        form = {"address": ADMIN, "password": "wrong password here"}
        seen.append(browser.submit("/login", "/login", form))
        seen.append(browser.get("/static/style.css"))
    assert sorted({page.status for page in seen}) == [200, 301, 303, 401, 403, 404]
    for page in seen:
        assert_security_headers(page)
    for page in seen:
        if page.headers.get("Content-Type", "").startswith("text/html"):
            assert page.headers["Cache-Control"] == "no-store", page.url


# -- logging in and out ------------------------------------------------------------


def test_a_wrong_password_and_an_unknown_user_get_the_same_answer(box):
    answers = []
    with Browser(box.https_url) as browser:
        for address in (ADMIN, f"nobody@{DOMAIN}", "not an address"):
            form = {"address": address, "password": "wrong password here"}
            page = browser.submit("/login", "/login", form)
            answers.append((page.status, page.notices()))
        assert browser.get("/admin").location == "/login"
    assert answers == [(401, ["Wrong address or password."])] * 3


def test_logging_in_gives_a_new_session_id(box):
    with Browser(box.https_url) as browser:
        planted = browser.get("/login").cookie().value
        form = {"address": ADMIN, "password": ADMIN_PASSWORD}
        page = browser.submit("/login", "/login", form)
        assert (page.status, page.location) == (303, "/admin")
        assert browser.session_id() != planted
        assert browser.get("/admin").status == 200
    with Browser(box.https_url) as attacker:
        page = attacker.get("/admin", headers={"Cookie": f"session={planted}"})
        assert (page.status, page.location) == (303, "/login")


def test_logging_out_ends_the_session(box):
    browser = log_in(box, ADMIN, ADMIN_PASSWORD)
    with browser:
        copied = browser.session_id()
        page = browser.submit("/admin", "/logout", {})
        assert (page.status, page.location) == (303, "/login")
        assert browser.get("/admin").location == "/login"
    with Browser(box.https_url) as thief:
        page = thief.get("/admin", headers={"Cookie": f"session={copied}"})
        assert (page.status, page.location) == (303, "/login")


def test_a_session_idle_too_long_must_log_in_again(tmp_path):
    app = set_up_appliance(tmp_path / "data", login=FAST_LOGIN, web={"session_idle_timeout": 1})
    try:
        with log_in(app, ADMIN, ADMIN_PASSWORD) as browser:
            assert browser.get("/admin").status == 200
            time.sleep(1.5)
            page = browser.get("/admin")
            assert (page.status, page.location) == (303, "/login")
    finally:
        assert app.stop() == 0, app.log()


# -- accounts that are not administrators ----------------------------------------


def test_a_user_is_refused_every_admin_page_and_action(box, admin):
    add_user(admin, f"carol@{DOMAIN}")
    before = listing(box)
    dkim_before = box.cli("dkim", "show", DOMAIN).stdout
    with log_in(box, f"carol@{DOMAIN}", USER_PASSWORD) as carol:
        assert carol.get("/").location == "/account"
        for path in ADMIN_PAGES:
            assert carol.get(path).status == 403, path
        token = carol.get("/account").csrf()
        for path, form in ADMIN_ACTIONS:
            assert carol.post(path, {"csrf": token, **form}).status == 403, path
        assert carol.get("/account").status == 200  # still logged in
    assert listing(box) == before
    assert box.cli("dkim", "show", DOMAIN).stdout == dkim_before


def test_a_user_downloads_client_settings(box, admin):
    add_user(admin, f"dora@{DOMAIN}")
    with log_in(box, f"dora@{DOMAIN}", USER_PASSWORD) as dora:
        page = dora.get("/account")
        assert f"<strong>dora@{DOMAIN}</strong>" in page.text and HOSTNAME in page.text
        thunderbird = dora.get("/account/thunderbird.xml")
        profile = dora.get("/account/mail.mobileconfig")
    assert thunderbird.status == 200
    assert thunderbird.headers["Content-Disposition"] == 'attachment; filename="config-v1.1.xml"'
    imap = ET.fromstring(thunderbird.body).find(".//incomingServer[@type='imap']")
    assert imap.findtext("hostname") == HOSTNAME
    assert imap.findtext("port") == str(box.imaps_port)
    assert profile.status == 200
    disposition = profile.headers["Content-Disposition"]
    assert disposition == 'attachment; filename="mail.mobileconfig"'
    [account] = plistlib.loads(profile.body)["PayloadContent"]
    assert account["EmailAddress"] == f"dora@{DOMAIN}"
    assert account["IncomingMailServerHostName"] == HOSTNAME
    assert account["IncomingMailServerPortNumber"] == box.imaps_port
    with Browser(box.https_url) as stranger:
        assert stranger.get("/account/mail.mobileconfig").location == "/login"


def test_a_user_changes_own_password_everywhere(box, admin):
    address = f"emil@{DOMAIN}"
    add_user(admin, address)
    other_device = log_in(box, address, USER_PASSWORD)
    with log_in(box, address, USER_PASSWORD) as emil:
        fields = {"current": "not my password", "password": NEW_PASSWORD, "password2": NEW_PASSWORD}
        page = emil.submit("/account", "/account/password", fields)
        assert page.location == "/account"
        assert emil.get("/account").notices() == ["The current password is wrong."]
        fields = {"current": USER_PASSWORD, "password": "tooshort", "password2": "tooshort"}
        emil.submit("/account", "/account/password", fields)
        assert "password too" in emil.get("/account").notices()[0]

        fields = {"current": USER_PASSWORD, "password": NEW_PASSWORD, "password2": NEW_PASSWORD}
        page = emil.submit("/account", "/account/password", fields)
        assert (page.status, page.location) == (303, "/account")
        page = emil.get("/account")
        assert page.status == 200
        assert page.notices() == ["Password changed. Other devices must log in again."]
    with other_device:
        assert other_device.get("/account").location == "/login"
    assert not imap_login_works(box, address, USER_PASSWORD)
    assert imap_login_works(box, address, NEW_PASSWORD)
    with Browser(box.https_url) as browser:
        form = {"address": address, "password": USER_PASSWORD}
        assert browser.submit("/login", "/login", form).status == 401
    assert f"web action=password-changed by={address}" in box.log()


# -- hostile form fields ---------------------------------------------------------


def assert_no_injected_header(page: Page) -> None:
    for name, value in page.headers.items():
        assert "Bcc" not in name and "Bcc" not in value, (name, value)
        assert "injected" not in name.lower() and "injected" not in value, (name, value)


def assert_refused(admin: Browser, page_path: str, action: str, fields: dict) -> None:
    """A form sent from page_path changes nothing: it comes back to its page
    with a notice saying why, or, where the URL names something that is no
    name at all, is not found."""
    page = admin.submit(page_path, action, fields)
    assert_no_injected_header(page)
    if page.status == 404 and action != page_path:
        return
    assert (page.status, page.location) == (303, page_path), (action, fields, page.text[:300])
    shown = admin.get(page_path)
    assert_no_injected_header(shown)
    assert_no_unescaped_payload(shown)
    assert shown.notices()[0].startswith("Not done:"), (action, fields, shown.notices())


def test_header_injection_in_form_fields_is_refused(box, admin):
    before = listing(box)
    attempts = [
        (
            "/admin/users",
            "/admin/users",
            {"address": f"x@{DOMAIN}\r\nBcc: a@b", "password": USER_PASSWORD},
        ),
        (
            "/admin/users",
            "/admin/users",
            {"address": f"Bob\r\nBcc: a@b <bob@{DOMAIN}>", "password": USER_PASSWORD},
        ),
        ("/admin/domains", "/admin/domains", {"name": "evil.test\r\nSet-Cookie: injected=1"}),
        (
            "/admin/aliases",
            "/admin/aliases",
            {"source": f"info@{DOMAIN}\nBcc: a@b", "targets": ADMIN},
        ),
        (
            "/admin/aliases",
            "/admin/aliases",
            {"source": f"info@{DOMAIN}", "targets": f"{ADMIN}\r\nBcc: a@b"},
        ),
        ("/admin/users", f"/admin/users/x%0D%0ABcc:%20a@{DOMAIN}/remove", {}),
        (
            "/admin/users",
            f"/admin/users/x%0D%0ABcc:%20a@{DOMAIN}/password",
            {"password": USER_PASSWORD},
        ),
    ]
    for page_path, action, fields in attempts:
        assert_refused(admin, page_path, action, fields)
    with Browser(box.https_url) as browser:
        form = {"address": f"{ADMIN}\r\nBcc: a@b", "password": "wrong password here"}
        page = browser.submit("/login", "/login", form)
        assert page.status == 401
        assert_no_injected_header(page)
    assert listing(box) == before
    # The log keeps one line per event: a field's line break starts no forged line.
    assert not any(line.startswith(("Bcc", "Set-Cookie")) for line in box.log().splitlines())


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_xss_payloads_are_refused_or_shown_escaped(box, admin, payload):
    before = listing(box)
    attempts = [
        ("/admin/aliases", "/admin/aliases", {"source": payload, "targets": ADMIN}),
        ("/admin/aliases", "/admin/aliases", {"source": f"@{payload}", "targets": ADMIN}),
        ("/admin/aliases", "/admin/aliases", {"source": f"info@{DOMAIN}", "targets": payload}),
        (
            "/admin/aliases",
            "/admin/aliases",
            {"source": f"info@{DOMAIN}", "targets": f"a@{payload}"},
        ),
        ("/admin/domains", "/admin/domains", {"name": payload}),
        (
            "/admin/users",
            "/admin/users",
            {"address": f"{payload}@{DOMAIN}", "password": USER_PASSWORD},
        ),
        ("/admin/domains", f"/admin/domains/{quote(payload, safe='')}/remove", {}),
        ("/admin/aliases", f"/admin/aliases/{quote(payload, safe='')}/remove", {}),
    ]
    for page_path, action, fields in attempts:
        assert_refused(admin, page_path, action, fields)
    assert listing(box) == before
    for path in ADMIN_PAGES:
        assert_no_unescaped_payload(admin.get(path))
    assert admin.get(f"/admin/domains/{quote(payload, safe='')}").status == 404

    with Browser(box.https_url) as browser:
        page = browser.submit("/login", "/login", {"address": payload, "password": "x"})
        assert page.status == 401
        assert_no_unescaped_payload(page)
        assert page.field_value("address") == payload  # kept, escaped


def test_a_payload_sent_by_mail_is_shown_escaped_on_the_status_page(box, admin):
    """The status page lists the SMTP log: what a sender says there is theirs to choose."""
    payload = XSS_PAYLOADS[0]
    with smtplib.SMTP(box.host, box.port, local_hostname="helo.test", timeout=30) as client:
        client.ehlo("<script>alert(1)</script>")
        client.sendmail(
            f'"{payload}"@sender.test', [f"postmaster@{DOMAIN}"], b"Subject: x\r\n\r\nx\r\n"
        )
    page = admin.get("/admin")
    assert payload in html.unescape(page.text), page.text
    assert_no_unescaped_payload(page)


@pytest.mark.parametrize("payload", XSS_PAYLOADS)
def test_the_setup_form_shows_what_was_typed_escaped(blank, payload):
    with Browser(blank.http_url) as browser:
        page = browser.submit("/setup", "/setup", setup_fields(blank, hostname=payload))
        assert page.status == 400
        assert_no_unescaped_payload(page)
        assert page.field_value("hostname") == payload
    assert_nothing_set_up(blank)
