"""The administrator's pages and what clients fetch, over real sockets.

One box for the module, set up through its setup page. Its DNS is a loopback
server where remote.test's MX is this machine, on a port where nothing
listens: mail forwarded there waits in the queue for the queue page to act on.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
import time
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import Appliance, free_port
from tests.dns_server import DnsServer
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
)

REMOTE = "far@remote.test"
# The queue's first retry comes only when a test asks for it.
QUEUE = {"retry_delays": [3600]}
# How long mail takes to reach the queue or a mailbox, and a retry to run:
# well under a second on loopback; the bound keeps a hung step from hanging.
SETTLE = 15.0
DOCTYPE_REQUEST = (
    b'<?xml version="1.0"?>\r\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>\r\n'
    b"<Autodiscover><Request><EMailAddress>&lol2;</EMailAddress></Request></Autodiscover>"
)
AUTODISCOVER_REQUEST = (
    '<?xml version="1.0" encoding="utf-8"?>\r\n'
    '<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
    'requestschema/2006">\r\n  <Request>\r\n'
    f"    <EMailAddress>ann@{DOMAIN}</EMailAddress>\r\n"
    "    <AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/"
    "outlook/responseschema/2006a</AcceptableResponseSchema>\r\n"
    "  </Request>\r\n</Autodiscover>\r\n"
).encode()
AUTODISCOVER_NS = (
    "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
)


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    zone = {"remote.test": {"MX": ["10 mx.remote.test."]}, "mx.remote.test": {"A": "127.0.0.1"}}
    with DnsServer(zone) as dns:
        app = set_up_appliance(
            tmp_path_factory.mktemp("admin"),
            login={"failure_delay": 0.01, "max_failure_delay": 0.05},
            resolver={"nameservers": [dns.nameserver]},
            queue={**QUEUE, "mx_port": free_port()},  # nothing listens there
        )
        yield app
        assert app.stop() == 0, app.log()


@pytest.fixture(scope="module")
def admin(box):
    browser = log_in(box, ADMIN, ADMIN_PASSWORD)
    yield browser
    browser.close()


def act(admin: Browser, page_path: str, action: str, fields: dict | None = None) -> list[str]:
    """Send a form of the page and return the notices the page shows after."""
    page = admin.submit(page_path, action, fields or {})
    assert (page.status, page.location) == (303, page_path), (action, page.text[:300])
    return admin.get(page_path).notices()


def form_action(page: Page, ending: str) -> str:
    """The action of the page's one form that ends so, as a browser would post it."""
    [action] = [a for a in page.form_actions() if a.endswith(ending)]
    return action


def audited(app: Appliance, action: str, **details: str) -> bool:
    """Whether the log has the audit line of action by the administrator."""
    wanted = [f"web action={action} by={ADMIN} "] + [f"{k}={v}" for k, v in details.items()]
    return any(all(part in line for part in wanted) for line in app.log().splitlines())


def wait_for(condition, what: str, timeout: float = SETTLE):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"not within {timeout} s: {what}")


def send(app: Appliance, sender: str, recipient: str, subject: str) -> None:
    message = f"From: <{sender}>\r\nTo: <{recipient}>\r\nSubject: {subject}\r\n\r\nhello\r\n"
    with smtplib.SMTP(app.host, app.port, timeout=30) as client:
        client.sendmail(sender, [recipient], message.encode())


# -- status ------------------------------------------------------------------------


def test_status_page_shows_listeners_and_the_queue(box, admin):
    page = admin.get("/admin")
    assert page.status == 200 and f"Status of {HOSTNAME}" in page.text
    for port in (
        box.port,
        box.imap_port,
        box.imaps_port,
        box.pop3_port,
        box.pop3s_port,
        box.submission_port,
        box.submissions_port,
        box.http_port,
        box.https_port,
    ):
        assert f">{box.host}:{port}</td>" in page.text, port
    queued = len(box.queue_entries())
    assert f"{queued} message(s) waiting" in page.text


# -- domains -----------------------------------------------------------------------


def test_a_domain_is_added_with_dkim_keys_rotated_and_removed(box, admin):
    notices = act(admin, "/admin/domains", "/admin/domains", {"name": "Other.TEST"})
    assert notices == ["Added other.test. Publish its DNS records below."]
    assert "other.test" in listing(box)["domain"].split()
    keys = box.cli("dkim", "show", "other.test")
    assert keys.returncode == 0 and "._domainkey.other.test. IN TXT" in keys.stdout
    assert audited(box, "domain.add", domain="other.test")

    page = admin.get("/admin/domains/other.test")
    assert page.status == 200 and "DNS records for other.test" in page.text
    assert 'data-state="missing"' in page.text  # the test DNS knows nothing of it
    rotate = form_action(page, "/dkim-rotate")
    page = admin.submit("/admin/domains/other.test", rotate, {})
    assert (page.status, page.location) == (303, "/admin/domains/other.test")
    assert admin.get("/admin/domains/other.test").notices()[0].startswith("New DKIM keys")
    assert box.cli("dkim", "show", "other.test").stdout != keys.stdout
    assert audited(box, "dkim.rotate", domain="other.test")

    remove = form_action(admin.get("/admin/domains"), "/admin/domains/other.test/remove")
    assert act(admin, "/admin/domains", remove) == ["Removed other.test."]
    assert "other.test" not in listing(box)["domain"].split()
    assert audited(box, "domain.remove", domain="other.test")

    remove = form_action(admin.get("/admin/domains"), f"/admin/domains/{DOMAIN}/remove")
    [notice] = act(admin, "/admin/domains", remove)  # it has accounts
    assert notice.startswith("Not done:")
    assert DOMAIN in listing(box)["domain"].split()


# -- users -------------------------------------------------------------------------


def test_a_user_is_added_given_a_new_password_and_removed(box, admin):
    address = f"fay@{DOMAIN}"
    fields = {"address": address, "password": "Tr4ct0r!"}
    [notice] = act(admin, "/admin/users", "/admin/users", fields)
    assert notice.startswith("Not done: password too")
    assert address not in listing(box)["user"]

    fields = {"address": address, "password": USER_PASSWORD}
    assert act(admin, "/admin/users", "/admin/users", fields) == [f"Added {address}."]
    assert address in listing(box)["user"].split()
    assert imap_login_works(box, address, USER_PASSWORD)
    assert audited(box, "user.add", address=address, admin="false")
    [notice] = act(admin, "/admin/users", "/admin/users", fields)
    assert notice.startswith("Not done:")  # there already

    fay = log_in(box, address, USER_PASSWORD)
    with fay:
        reset = form_action(admin.get("/admin/users"), f"/{address.replace('@', '%40')}/password")
        notices = act(admin, "/admin/users", reset, {"password": NEW_PASSWORD})
        assert notices == [f"New password set for {address}."]
        assert fay.get("/account").location == "/login"  # logged out everywhere
    assert not imap_login_works(box, address, USER_PASSWORD)
    assert imap_login_works(box, address, NEW_PASSWORD)
    assert audited(box, "user.password", address=address)

    remove = form_action(admin.get("/admin/users"), f"/{address.replace('@', '%40')}/remove")
    assert act(admin, "/admin/users", remove) == [f"Removed {address} and its mail."]
    assert address not in listing(box)["user"]
    assert not imap_login_works(box, address, NEW_PASSWORD)
    assert audited(box, "user.remove", address=address)


def test_the_administrator_cannot_remove_their_own_account(box, admin):
    remove = form_action(admin.get("/admin/users"), f"/{ADMIN.replace('@', '%40')}/remove")
    notices = act(admin, "/admin/users", remove)
    assert notices == ["Not done: you cannot remove the account you are logged in with."]
    assert ADMIN in listing(box)["user"].split()


# -- aliases -----------------------------------------------------------------------


def test_an_alias_and_a_catch_all_are_added_and_removed(box, admin):
    notices = act(
        admin, "/admin/aliases", "/admin/aliases", {"source": f"info@{DOMAIN}", "targets": ADMIN}
    )
    assert notices == [f"info@{DOMAIN} now goes to {ADMIN}."]
    notices = act(
        admin, "/admin/aliases", "/admin/aliases", {"source": f"@{DOMAIN}", "targets": ADMIN}
    )
    assert notices == [f"@{DOMAIN} now goes to {ADMIN}."]
    aliases = listing(box)["alias"].splitlines()
    assert f"info@{DOMAIN} -> {ADMIN}" in aliases and f"@{DOMAIN} -> {ADMIN}" in aliases
    page = admin.get("/admin/aliases")
    assert f"@{DOMAIN} (catch-all)" in page.text
    assert audited(box, "alias.add", source=f"@{DOMAIN}", targets=ADMIN)

    before = len(box.inbox(ADMIN))
    send(box, f"someone@{DOMAIN}", f"whoever@{DOMAIN}", "caught")
    wait_for(lambda: len(box.inbox(ADMIN)) > before, "mail to any address reaches the catch-all")

    for source in (f"info@{DOMAIN}", f"@{DOMAIN}"):
        remove = form_action(admin.get("/admin/aliases"), f"/{source.replace('@', '%40')}/remove")
        assert act(admin, "/admin/aliases", remove) == [f"Removed the alias {source}."]
        assert audited(box, "alias.remove", source=source)
    aliases = listing(box)["alias"].splitlines()
    assert not any(line.startswith((f"info@{DOMAIN} ", f"@{DOMAIN} ")) for line in aliases)


# -- the outbound queue ------------------------------------------------------------


def forward_and_wait(app: Appliance, admin: Browser, count: int) -> list:
    """count messages forwarded to the remote domain, each tried once (refused
    by the closed port) and waiting for its next try in an hour."""
    fields = {"source": f"fwd@{DOMAIN}", "targets": REMOTE}
    act(admin, "/admin/aliases", "/admin/aliases", fields)
    known = {entry.id for entry in app.queue_entries()}
    for n in range(count):
        send(app, ADMIN, f"fwd@{DOMAIN}", f"stuck {n}")

    def tried():
        new = [e for e in app.queue_entries() if e.id not in known and e.attempts >= 1]
        return new if len(new) == count else None

    entries = wait_for(tried, f"{count} forwarded message(s) tried once")
    assert all(entry.recipients == (REMOTE,) for entry in entries)
    return entries


def test_queue_entries_are_retried_deleted_and_bounced(box, admin):
    first, second, third = (entry.id for entry in forward_and_wait(box, admin, 3))
    assert f"{len(box.queue_entries())} message(s) waiting" in admin.get("/admin").text
    page = admin.get("/admin/queue")
    assert page.text.count(REMOTE) == 3 and f"&lt;{ADMIN}&gt;" in page.text

    retry = form_action(page, f"/admin/queue/{first}/retry")
    assert act(admin, "/admin/queue", retry) == [f"Queued message {first}: retry done."]
    assert audited(box, "queue.retry", id=str(first))

    delete = form_action(admin.get("/admin/queue"), f"/admin/queue/{second}/delete")
    assert act(admin, "/admin/queue", delete) == [f"Queued message {second}: delete done."]
    assert second not in [e.id for e in box.queue_entries()]
    assert audited(box, "queue.delete", id=str(second))

    before = len(box.inbox(ADMIN))
    bounce = form_action(admin.get("/admin/queue"), f"/admin/queue/{third}/bounce")
    assert act(admin, "/admin/queue", bounce) == [f"Queued message {third}: bounce done."]
    assert third not in [e.id for e in box.queue_entries()]
    assert audited(box, "queue.bounce", id=str(third))
    [notice] = box.inbox(ADMIN)[before:]
    report = email.message_from_bytes(notice, policy=email.policy.default)
    assert report.get_content_type() == "multipart/report"
    assert f"Final-Recipient: rfc822; {REMOTE}" in notice.decode()
    assert "Subject: stuck 2" in notice.decode()

    token = admin.get("/admin/queue").csrf()
    assert admin.post(f"/admin/queue/{first}/explode", {"csrf": token}).status == 404
    [notice] = act(admin, "/admin/queue", "/admin/queue/999999/delete")
    assert notice.startswith("Not done:")


def test_retry_now_tries_the_message_now(box, admin):
    """ "Retry now" means now, not at the queue's next idle look (30 s later)."""
    [entry] = forward_and_wait(box, admin, 1)
    retry = form_action(admin.get("/admin/queue"), f"/admin/queue/{entry.id}/retry")
    act(admin, "/admin/queue", retry)

    def tried_again():
        return any(e.id == entry.id and e.attempts >= 2 for e in box.queue_entries())

    wait_for(tried_again, "the retried message tried again", timeout=10)


# -- what clients fetch ----------------------------------------------------------


def test_thunderbird_autoconfig_for_the_box_domains_only(box):
    path = "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress="
    with Browser(box.http_url) as client:
        page = client.get(path + f"ann@{DOMAIN}")
        at_subdomain = client.get("/mail/config-v1.1.xml", headers={"Host": f"autoconfig.{DOMAIN}"})
        assert client.get(path + "ann@unknown.test").status == 404
        assert (
            client.get("/mail/config-v1.1.xml", headers={"Host": "autoconfig.unknown.test"}).status
            == 404
        )
        assert client.get(path + "not-an-address").status == 400
    for answer in (page, at_subdomain):
        assert answer.status == 200
        assert answer.headers["Content-Type"].startswith("application/xml")
        config = ET.fromstring(answer.body)
        assert config.find("emailProvider").get("id") == DOMAIN
        imaps = config.find(".//incomingServer[@type='imap']")
        assert imaps.findtext("hostname") == HOSTNAME
        assert (imaps.findtext("port"), imaps.findtext("socketType")) == (
            str(box.imaps_port),
            "SSL",
        )
        smtp = config.find(".//outgoingServer")
        assert (smtp.findtext("hostname"), smtp.findtext("port")) == (
            HOSTNAME,
            str(box.submissions_port),
        )


def test_outlook_autodiscover_answers_a_request_and_refuses_a_doctype(box):
    with Browser(box.https_url) as client:
        xml = {"Content-Type": "text/xml"}
        page = client.post("/autodiscover/autodiscover.xml", data=AUTODISCOVER_REQUEST, headers=xml)
        hostile = client.post("/autodiscover/autodiscover.xml", data=DOCTYPE_REQUEST, headers=xml)
        elsewhere = client.post(
            "/autodiscover/autodiscover.xml",
            data=AUTODISCOVER_REQUEST.replace(f"ann@{DOMAIN}".encode(), b"ann@gmail.com"),
            headers=xml,
        )
    assert elsewhere.status == 404  # the box describes only the domains it serves
    assert page.status == 200, page.text
    protocols = {
        p.findtext(f"{AUTODISCOVER_NS}Type"): p
        for p in ET.fromstring(page.body).iter(f"{AUTODISCOVER_NS}Protocol")
    }
    imap = protocols["IMAP"]
    assert imap.findtext(f"{AUTODISCOVER_NS}Server") == HOSTNAME
    assert imap.findtext(f"{AUTODISCOVER_NS}Port") == str(box.imaps_port)
    assert imap.findtext(f"{AUTODISCOVER_NS}LoginName") == f"ann@{DOMAIN}"
    assert hostile.status == 400 and "document type" in hostile.text


def test_the_mta_sts_policy_is_served_over_https_at_mta_sts_domain(box):
    host = {"Host": f"mta-sts.{DOMAIN}"}
    with Browser(box.https_url) as client:
        page = client.get("/.well-known/mta-sts.txt", headers=host)
        unknown = client.get("/.well-known/mta-sts.txt", headers={"Host": "mta-sts.unknown.test"})
    with Browser(box.http_url) as client:
        plain = client.get("/.well-known/mta-sts.txt", headers=host)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/plain")
    lines = page.text.splitlines()
    assert lines[:3] == ["version: STSv1", "mode: testing", f"mx: {HOSTNAME}"]
    assert re.fullmatch(r"max_age: \d+", lines[3])
    assert (unknown.status, plain.status) == (404, 404)


def test_an_autodiscover_request_sent_in_two_packets_is_read_whole(box):
    async def in_two_parts():
        yield AUTODISCOVER_REQUEST[:100]
        await asyncio.sleep(0.3)  # the second part comes in a packet of its own
        yield AUTODISCOVER_REQUEST[100:]

    with Browser(box.https_url) as client:
        page = client.post(
            "/autodiscover/autodiscover.xml",
            data=in_two_parts(),
            headers={"Content-Type": "text/xml"},
        )
    assert page.status == 200, page.text
    servers = ET.fromstring(page.body).iter(f"{AUTODISCOVER_NS}Server")
    assert HOSTNAME in [server.text for server in servers]
