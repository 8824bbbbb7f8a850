"""End to end in a real browser: a fresh box is set up, administered and used.

The owner opens the box's web page with nothing configured, types the setup
code the box printed on its console, names the box and its first domain,
follows the link to HTTPS, logs in, looks at every admin page, adds a user
and an alias for her; then a stranger's message to the alias arrives over
SMTP and the user reads it over IMAP. Every page is saved as a screenshot
(test-artifacts/screenshots/e2e-*.png, numbered in the order a person sees
them) and checked by axe-core for serious and critical violations: at
desktop size, and the pages a person meets on a phone (setup, login, their
account) at phone size too.

No asyncio.run() in this module: see tests/browser.py.
"""

from __future__ import annotations

import imaplib
import smtplib
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.browser import (
    assert_accessible,
    browser_fixture,  # noqa: F401 - fixture browser
    new_page,
    screenshot,
)
from tests.conftest import Appliance
from tests.dns_server import dns_server_fixture  # noqa: F401 - fixture dns_server

HOSTNAME = "mail.example.test"
DOMAIN = "example.test"
ADMIN = "admin@example.test"
ADMIN_PASSWORD = "velvet lantern orbit 42"
ANN = "ann@example.test"
ANN_PASSWORD = "quiet harbour pebble 7"
ALIAS = "info@example.test"
STRANGER = "someone@elsewhere.test"
WRONG_CODE = "AAAA-BBBB-CCCC"
BODY = b"Hello Ann, this came to info@ and reached you.\r\n"
# The box's public address as its owner tells it (RFC 5737 documentation range).
BOX_ADDRESS = "192.0.2.10"
# What the DNS holds for the domain page: one record right, one wrong, the rest
# missing, so that its screenshot shows every state a person can meet.
ZONE = {
    DOMAIN: {"MX": [f"10 {HOSTNAME}."], "TXT": ['"v=spf1 -all"']},
    HOSTNAME: {"A": [BOX_ADDRESS]},
}
MAIL_TIMEOUT = 30  # seconds for one SMTP or IMAP exchange on a busy 2-core machine

# Each admin page: its path, the heading a person reads there, its screenshot's name.
ADMIN_PAGES = (
    ("/admin", f"Status of {HOSTNAME}", "admin-status"),
    ("/admin/domains", "Domains", "admin-domains"),
    (f"/admin/domains/{DOMAIN}", f"DNS records for {DOMAIN}", "admin-domain-dns"),
    ("/admin/users", "Users", "admin-users"),
    ("/admin/aliases", "Aliases", "admin-aliases"),
    ("/admin/queue", "Outbound queue", "admin-queue"),
    ("/admin/tls", "TLS certificate", "admin-certificate"),
    ("/admin/selftest", "Is my mail working?", "admin-selftest"),  # shown, not run
    ("/account", "My account", "account"),
)


@pytest.fixture
def fresh_box(tmp_path, dns_server) -> Iterator[Appliance]:
    """A running appliance as it first boots: no domain, no user, setup not done."""
    dns_server.load(ZONE)
    app = Appliance(
        data=tmp_path / "data",
        settings={
            "resolver": {"nameservers": [dns_server.nameserver]},
            "web": {"public_addresses": [BOX_ADDRESS]},
        },
    )
    app.data.mkdir()
    app.start()
    yield app
    assert app.stop() == 0, app.log()


class Shots:
    """Screenshots numbered in the order they were taken, each page checked by axe-core."""

    def __init__(self) -> None:
        self.count = 0

    def take(self, page, name: str) -> None:
        self.count += 1
        screenshot(page, f"e2e-{self.count:02d}-{name}")
        assert_accessible(page)


def heading(page) -> str:
    return page.locator("h1").inner_text()


def submit(page, button: str):
    """Click a form's button and wait for the page the form leads to; returns its response."""
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name=button, exact=True).click()
    return navigation.value


def fill(page, fields: dict[str, str]) -> None:
    for label, value in fields.items():
        page.get_by_label(label, exact=True).fill(value)


def test_owner_sets_up_the_box_and_a_new_user_reads_mail(browser, fresh_box):
    app, shots = fresh_box, Shots()
    code = app.setup_code()

    with new_page(browser, app.http_url, viewport="phone") as phone:
        phone.goto("/")
        assert urlsplit(phone.url).path == "/setup"
        shots.take(phone, "setup-phone")

    with new_page(browser, app.http_url) as page:
        set_up(page, app, code, shots)
        log_in(page, ADMIN, ADMIN_PASSWORD)
        assert urlsplit(page.url).path == "/admin"
        for path, title, name in ADMIN_PAGES:
            page.goto(app.https_url + path)
            assert heading(page) == title, path
            shots.take(page, name)
        add_ann_and_her_alias(page, app, shots)
        log_out(page, app)

    with new_page(browser, app.https_url, viewport="phone") as phone:
        phone.goto("/login")
        shots.take(phone, "login-phone")
        log_in(phone, ANN, ANN_PASSWORD)
        assert urlsplit(phone.url).path == "/account"
        assert ANN in phone.locator("main").inner_text()
        shots.take(phone, "account-ann-phone")

    send_to_alias(app)
    assert BODY in read_inbox(app, ANN, ANN_PASSWORD)


def set_up(page, app: Appliance, code: str, shots: Shots) -> None:
    """From the first page to the link to HTTPS: a wrong code first, then the right one."""
    page.goto("/")
    assert urlsplit(page.url).path == "/setup"
    shots.take(page, "setup")
    answers = {
        "Mail host name": HOSTNAME,
        "Mail domain": DOMAIN,
        "Administrator's address": ADMIN,
        "Administrator's password": ADMIN_PASSWORD,
        "Password again": ADMIN_PASSWORD,
    }
    fill(page, {"Setup code": WRONG_CODE, **answers})
    refused = submit(page, "Set up the box")
    assert refused.status == 403
    assert "not the setup code" in page.get_by_role("alert").inner_text()
    shots.take(page, "setup-wrong-code")

    # The page keeps the names typed, never the code or the passwords.
    assert page.get_by_label("Mail host name", exact=True).input_value() == HOSTNAME
    fill(page, {"Setup code": code, **answers})
    done = submit(page, "Set up the box")
    assert done.status == 200
    assert heading(page) == "Your mail box is set up"
    assert page.locator(".fingerprint code").inner_text().count(":") == 31  # SHA-256, 32 bytes
    continue_link = page.get_by_role("link", name="Continue to the secure login")
    target = urlsplit(continue_link.get_attribute("href"))
    assert (target.scheme, target.port, target.path) == ("https", app.https_port, "/login")
    shots.take(page, "setup-done")
    continue_link.click()
    page.wait_for_url(f"{app.https_url}/login")
    shots.take(page, "login")


def log_in(page, address: str, password: str) -> None:
    fill(page, {"Address": address, "Password": password})
    submit(page, "Log in")


def add_ann_and_her_alias(page, app: Appliance, shots: Shots) -> None:
    page.goto(app.https_url + "/admin/users")
    fill(page, {"Address": ANN, "Password": ANN_PASSWORD})
    submit(page, "Add user")
    assert page.get_by_role("status").inner_text() == f"Added {ANN}."
    assert page.get_by_role("cell", name=ANN, exact=True).is_visible()
    shots.take(page, "admin-users-ann-added")

    page.goto(app.https_url + "/admin/aliases")
    fill(page, {"Address (or @domain for every other address of a domain)": ALIAS})
    fill(page, {"Goes to (addresses, separated by commas)": ANN})
    submit(page, "Add alias")
    assert page.get_by_role("status").inner_text() == f"{ALIAS} now goes to {ANN}."
    row = page.get_by_role("row").filter(has_text=ALIAS)
    assert row.get_by_role("cell", name=ANN, exact=True).is_visible()
    shots.take(page, "admin-aliases-info-added")


def log_out(page, app: Appliance) -> None:
    submit(page, "Log out")
    assert urlsplit(page.url).path == "/login"
    page.goto(app.https_url + "/admin")
    assert urlsplit(page.url).path == "/login"


def send_to_alias(app: Appliance) -> None:
    message = (
        f"From: <{STRANGER}>\r\nTo: <{ALIAS}>\r\nSubject: Welcome\r\n"
        "Message-ID: <e2e-welcome@elsewhere.test>\r\n\r\n"
    ).encode() + BODY
    with smtplib.SMTP(app.host, app.port, timeout=MAIL_TIMEOUT) as smtp:
        refused = smtp.sendmail(STRANGER, [ALIAS], message)
    assert refused == {}


def read_inbox(app: Appliance, address: str, password: str) -> bytes:
    """Every message of the INBOX, as IMAP hands it to a mail client."""
    imap = imaplib.IMAP4(app.host, app.imap_port, timeout=MAIL_TIMEOUT)
    try:
        imap.login(address, password)
        status, _ = imap.select("INBOX", readonly=True)
        assert status == "OK"
        status, found = imap.fetch("1:*", "(BODY.PEEK[])")
        assert status == "OK"
        return b"".join(part[1] for part in found if isinstance(part, tuple))
    finally:
        imap.logout()
