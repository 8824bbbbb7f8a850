"""Hostile mail opened in webmail: nothing runs, nothing is fetched.

The corpus (tests/hostile_html.py, 40 messages) arrives over SMTP from a
stranger. Each payload, if it worked, would ask the test's beacon for
/hit/NAME or set the page's title to "pwned". The beacon is an HTTPS server
on loopback that records every request it gets. Over HTTP, each body as
served must hold no active content and no reference to the beacon; in
chromium, opening every message must leave the title alone and the beacon
unasked; the tracking pixel arrives only once the reader clicks "load
remote content". Markup in a Subject, a From display name, an attachment
name and a mailbox name is shown as text.

The test that drives chromium comes last (see tests/browser.py: the HTTP
client of tests/web_client.py cannot run once Playwright has started).
"""

from __future__ import annotations

import html
import imaplib
import re
import smtplib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from markupsafe import escape

from appliance import tls
from tests import hostile_html
from tests.browser import (
    assert_accessible,
    browser_fixture,  # noqa: F401 - fixture browser
    browser_log_in,
    new_page,
    screenshot,
)
from tests.conftest import PASSWORD, Appliance, free_port
from tests.web_client import DOMAIN, log_in, set_up_appliance

ANN = f"ann@{DOMAIN}"
MAIL_TIMEOUT = 30  # seconds for one SMTP or IMAP exchange on a busy machine
# After a page and its frame have loaded: time for a late payload (a timer,
# a refresh, a lazy image) to show itself.
SETTLE_SECONDS = 0.3
PIXEL_TIMEOUT = 15  # seconds for the allowed pixel to reach the beacon
HOSTILE_MAILBOX = "<img src=x onerror=document.title='pwned'>"
GIF = bytes.fromhex(
    "47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b"
)
# What must never be in a body served to the frame (between <body> and </body>).
ACTIVE = re.compile(
    r"<\s*(script|iframe|frame|object|embed|form|input|button|meta|base|link|style|svg|math"
    r"|video|audio|source)\b|\son\w+\s*=|javascript:|vbscript:|srcdoc|data:text|data:image/svg",
    re.IGNORECASE,
)


class Beacon:
    """An HTTPS server on loopback that answers every request with a pixel
    and remembers its path."""

    def __init__(self, directory) -> None:
        certificate, key = tls.ensure_self_signed(directory, "127.0.0.1")
        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Type", "image/gif")
                self.send_header("Content-Length", str(len(GIF)))
                self.end_headers()
                self.wfile.write(GIF)

            do_POST = do_GET  # noqa: N815 - a form posting elsewhere

            def log_message(self, *args) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = tls.server_context(certificate, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Iterator[Appliance]:
    app = set_up_appliance(tmp_path_factory.mktemp("hostile"))
    app.add_user(ANN)
    yield app
    assert app.stop() == 0, app.log()


@pytest.fixture(scope="module")
def beacon(tmp_path_factory) -> Iterator[Beacon]:
    server = Beacon(tmp_path_factory.mktemp("beacon"))
    yield server
    server.close()


@pytest.fixture(scope="module")
def corpus(box, beacon) -> list[hostile_html.Hostile]:
    """The corpus in ann's INBOX (UID n+1 for message n), and a mailbox with a hostile name."""
    messages = hostile_html.corpus(beacon.url)
    with smtplib.SMTP(box.host, box.port, timeout=MAIL_TIMEOUT) as smtp:
        for hostile in messages:
            smtp.sendmail(hostile_html.SENDER, [ANN], hostile.message)
    with imaplib.IMAP4(box.host, box.imap_port, timeout=MAIL_TIMEOUT) as client:
        client.login(ANN, PASSWORD)
        typ, answer = client.create(f'"{HOSTILE_MAILBOX}"')
        assert typ == "OK", answer
    return messages


@pytest.fixture(scope="module")
def inbox(box, corpus) -> int:
    with log_in(box, ANN, PASSWORD) as reader:
        return int(reader.get("/mail").location.rsplit("/", 1)[1])


def body_of(document: str) -> str:
    return document[document.index("<body>") : document.rindex("</body>")]


# -- over HTTP ---------------------------------------------------------------------


def test_the_corpus_is_large_enough_and_delivered(corpus):
    assert len(corpus) >= 30
    assert len({hostile.name for hostile in corpus}) == len(corpus)


def test_every_body_is_served_without_active_content_or_remote_reference(
    box, beacon, inbox, corpus
):
    with log_in(box, ANN, PASSWORD) as reader:
        for uid, hostile in enumerate(corpus, 1):
            served = reader.get(f"/mail/{inbox}/{uid}/body")
            assert served.status == 200, hostile.name
            policy = served.headers["Content-Security-Policy"]
            assert policy.startswith("default-src 'none'; img-src data:;"), hostile.name
            assert "sandbox" in policy and "script-src" not in policy
            body = body_of(served.text)
            assert not ACTIVE.search(body), (hostile.name, ACTIVE.search(body), body[:500])
            # The beacon's URL may be shown as text, never be in a tag.
            for tag in re.findall(r"<[^>]*>", body):
                assert f"127.0.0.1:{beacon.port}" not in tag, (hostile.name, tag)
            for link in re.findall(r"<a [^>]*>", body):
                assert 'rel="noopener noreferrer"' in link and 'target="_blank"' in link
                href = re.search(r'href="([^"]*)"', link)
                assert href is None or href.group(1).startswith(("https:", "http:", "mailto:"))
    assert beacon.hits == []


def test_markup_in_headers_and_names_is_shown_as_text(box, inbox, corpus):
    names = [hostile.name for hostile in corpus]
    headers_uid = names.index("headers") + 1
    attachments_uid = names.index("attachments") + 1
    with log_in(box, ANN, PASSWORD) as reader:
        listed = reader.get(f"/mail/{inbox}").text
        page = reader.get(f"/mail/{inbox}/{headers_uid}").text
        attachments = reader.get(f"/mail/{inbox}/{attachments_uid}").text
    for shown in (listed, page):
        assert escape(hostile_html.HEADER_SUBJECT_MARKER) in shown
        assert escape(hostile_html.HEADER_FROM_MARKER) in shown
        assert "<img src=x" not in shown and "<script>document" not in shown
    # The RFC 2047 word in the Subject, decoded, is markup too: text as well.
    assert "&lt;script&gt;document.title=" in page
    assert escape(hostile_html.ATTACHMENT_NAME) in attachments
    assert escape(HOSTILE_MAILBOX) in listed
    assert HOSTILE_MAILBOX not in listed


def test_hostile_attachments_are_downloads_never_pages(box, inbox, corpus):
    uid = [hostile.name for hostile in corpus].index("attachments") + 1
    with log_in(box, ANN, PASSWORD) as reader:
        page = reader.get(f"/mail/{inbox}/{uid}").text
        parts = dict(
            (html.unescape(name), path)
            for path, name in re.findall(
                r'<a href="(/mail/[^"]+/part/[\d.]+)" download>([^<]*)<', page
            )
        )
        assert set(parts) == {"page.html", "drawing.svg", hostile_html.ATTACHMENT_NAME}
        for name in ("page.html", "drawing.svg"):
            download = reader.get(parts[name])
            assert download.headers["Content-Type"] == "application/octet-stream", name
            assert download.headers["Content-Disposition"].startswith("attachment;"), name
            assert download.headers["X-Content-Type-Options"] == "nosniff"
            assert "sandbox" in download.headers["Content-Security-Policy"]
        # An SVG named by cid: is not inlined into the HTML body (it could hold script).
        body = body_of(reader.get(f"/mail/{inbox}/{uid}/body").text)
        assert "data:image/svg" not in body and "cid:" not in body


# -- in chromium (last) ------------------------------------------------------------


def open_message(page, box: Appliance, inbox: int, uid: int) -> None:
    """Open a message and wait for its frame (the page's load event waits for it)."""
    page.goto(f"{box.https_url}/mail/{inbox}/{uid}", wait_until="load")
    time.sleep(SETTLE_SECONDS)


def test_opening_hostile_mail_runs_nothing_and_fetches_nothing_until_allowed(
    box, corpus, inbox, beacon, browser
):
    with new_page(browser, box.https_url) as page:
        browser_log_in(page, ANN, PASSWORD)
        page.goto(f"/mail/{inbox}", wait_until="load")
        time.sleep(SETTLE_SECONDS)
        assert page.title() == "Inbox · Mail box"
        screenshot(page, "webmail-hostile-list")
        assert_accessible(page)
        for uid, hostile in enumerate(corpus, 1):
            open_message(page, box, inbox, uid)
            assert page.title() != hostile_html.PWNED, hostile.name
            assert beacon.hits == [], hostile.name
            frame = page.frame_locator("iframe.mail-body")
            if page.locator("iframe.mail-body").count():
                # Links that were javascript: or data: lead nowhere when clicked.
                for link in frame.locator("a:not([href])").all():
                    link.click()
                time.sleep(SETTLE_SECONDS)
                assert beacon.hits == [], hostile.name
            if hostile.name == "headers":
                screenshot(page, "webmail-hostile-headers")
                assert_accessible(page)

        pixel = [hostile.name for hostile in corpus].index(hostile_html.PIXEL) + 1
        open_message(page, box, inbox, pixel)
        screenshot(page, "webmail-pixel-blocked")
        assert_accessible(page)
        assert beacon.hits == []
        with page.expect_navigation():
            page.get_by_role("link", name="Load remote content").click()
        deadline = time.monotonic() + PIXEL_TIMEOUT
        while f"/{hostile_html.PIXEL}.gif" not in beacon.hits and time.monotonic() < deadline:
            time.sleep(0.1)
        assert beacon.hits == [f"/{hostile_html.PIXEL}.gif"]
        screenshot(page, "webmail-pixel-loaded")

    with new_page(browser, box.https_url, viewport="phone") as phone:
        browser_log_in(phone, ANN, PASSWORD)
        phone.goto(f"/mail/{inbox}", wait_until="load")
        screenshot(phone, "webmail-hostile-list-phone")
        assert_accessible(phone)
        open_message(phone, box, inbox, pixel - 1)
        screenshot(phone, "webmail-hostile-headers-phone")
        assert_accessible(phone)
    assert beacon.hits == [f"/{hostile_html.PIXEL}.gif"]
