"""Webmail from end to end in chromium, as two people use it.

Two people of one box, ann and bob, each in a browser context of their own:
ann reads a plain and an HTML message and opens an attachment (all
delivered over SMTP beforehand), writes to bob with a file attached; bob's
open list shows it without a reload, he opens it, downloads the file, and a
mail client reading it over IMAP gets the same octets; bob replies and
forwards it; ann moves one message, deletes one (to Trash, then for good)
and searches by text and by sender. Every view is saved as a screenshot at
a laptop's and a phone's width (test-artifacts/screenshots/webmail-flow-*)
and checked by axe-core at both.

The box is set up (over tests.web_client's HTTP client) before chromium
starts: once Playwright's sync API runs, that client's event loop cannot.
"""

from __future__ import annotations

import base64
import email
import email.policy
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.browser import (
    VIEWPORTS,
    assert_accessible,
    browser_fixture,  # noqa: F401 - fixture browser
    browser_log_in,
    new_page,
    screenshot,
)
from tests.conftest import PASSWORD, Appliance
from tests.web_client import DOMAIN, deliver, imap_client, set_up_appliance

ANN = f"ann@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
# Seconds for mail to arrive in an open list, a download or an IMAP exchange
# on a shared, busy machine.
MAIL_TIMEOUT = 30
# A file holding every octet value, so that a lost CR, a changed 8-bit octet
# or a NUL cut anywhere on the way shows as a difference.
EVERY_OCTET = bytes(range(256)) * 64
SENT_NAME = "every-octet.bin"
SUBJECT = "Figures for the quarter"
REPLY_WORD = "pineapple"  # only in bob's reply: what a search by text finds

PLAIN = f"""\
From: Zoe Stranger <zoe@elsewhere.test>
To: {ANN}
Subject: Plain hello
Date: Mon, 01 Jul 2024 08:00:00 +0000
Message-ID: <plain@elsewhere.test>
Content-Type: text/plain; charset=utf-8

Hello from far away, see https://example.com/ for more.
"""
RICH = f"""\
From: Carol Designer <carol@studio.test>
To: {ANN}
Subject: Rich hello
Date: Mon, 01 Jul 2024 09:00:00 +0000
Message-ID: <rich@studio.test>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="alt"

--alt
Content-Type: text/plain; charset=utf-8

Styled text.
--alt
Content-Type: text/html; charset=utf-8

<h2>Rich</h2><p>Styled <b>text</b> with <i>markup</i>.</p>
--alt--
"""
RECEIVED_FILE = b"%PDF-1.4\n" + EVERY_OCTET
WITH_FILE = f"""\
From: Zoe Stranger <zoe@elsewhere.test>
To: {ANN}
Subject: Files for you
Date: Mon, 01 Jul 2024 10:00:00 +0000
Message-ID: <files@elsewhere.test>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="mix"

--mix
Content-Type: text/plain; charset=utf-8

The report is attached.
--mix
Content-Type: application/pdf; name="report.pdf"
Content-Disposition: attachment; filename="report.pdf"
Content-Transfer-Encoding: base64

{base64.encodebytes(RECEIVED_FILE).decode()}
--mix--
"""


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Iterator[Appliance]:
    app = set_up_appliance(tmp_path_factory.mktemp("flow"))
    app.add_user(ANN)
    app.add_user(BOB)
    for message in (PLAIN, RICH, WITH_FILE):
        deliver(app, ANN, message.replace("\n", "\r\n").encode())
    yield app
    assert app.stop() == 0, app.log()


# -- what a person sees -------------------------------------------------------------


class Views:
    """Each view saved and checked by axe at a laptop's width and at a phone's.

    The page is narrowed to the phone's viewport and widened back: the same
    session, the same state, the layout a phone's width gives (the phone's
    own context, touch and all, is what the other webmail tests use).
    """

    def __init__(self, person: str) -> None:
        self.person = person

    def look(self, page, view: str) -> None:
        for size in ("desktop", "phone"):
            page.set_viewport_size(VIEWPORTS[size]["viewport"])
            screenshot(page, f"webmail-flow-{self.person}-{view}-{size}")
            assert_accessible(page)
        page.set_viewport_size(VIEWPORTS["desktop"]["viewport"])


def click(page, name: str, role: str = "button") -> None:
    """Press a button or follow a link that loads another page."""
    with page.expect_navigation():
        page.get_by_role(role, name=name, exact=True).first.click()


def subjects(page) -> list[str]:
    """The list's subjects, newest first, as a person reads them."""
    return [link.inner_text() for link in page.locator("table.messages td.subject a").all()]


def status(page) -> str:
    return page.get_by_role("status").first.inner_text()


def download(page, name: str) -> tuple[bytes, str]:
    """The octets of an attachment saved from the message page, and its part's URL."""
    link = page.get_by_role("link", name=name, exact=True)
    with page.expect_download(timeout=MAIL_TIMEOUT * 1000) as saved:
        link.click()
    assert saved.value.suggested_filename == name
    return saved.value.path().read_bytes(), link.get_attribute("href")


def wait_in_list(page, subject: str) -> None:
    """The open list shows the message when it arrives, with no reload."""
    page.evaluate("window.notReloaded = true")
    page.get_by_role("link", name=subject, exact=True).wait_for(timeout=MAIL_TIMEOUT * 1000)
    assert page.evaluate("window.notReloaded") is True


def open_folder(page, label: str) -> None:
    """Follow the mailbox's link (named by its label and its unread count, if any)."""
    folders = page.get_by_role("navigation", name="Mailboxes")
    with page.expect_navigation():
        folders.get_by_role("link", name=re.compile(rf"^{label}( \d+ unread)?$")).click()
    assert page.locator("h1").inner_text() == label


# -- what a mail client sees --------------------------------------------------------


def imap_part(box: Appliance, address: str, part_url: str) -> bytes:
    """The part an attachment link names, as an IMAP client fetches it
    (BODY[n], its base64 undone), from the INBOX by the link's UID."""
    _, _, uid, _, number = urlsplit(part_url).path.strip("/").split("/")
    client = imap_client(box, address)
    try:
        client.select("INBOX", readonly=True)
        _, data = client.uid("FETCH", uid, f"(BODY.PEEK[{number}.MIME] BODY.PEEK[{number}])")
    finally:
        client.logout()
    mime, content = data[0][1], data[1][1]
    assert b"base64" in mime.lower(), mime
    return base64.b64decode(content)


def imap_headers(box: Appliance, address: str, subject: str) -> email.message.Message:
    """The header of the INBOX's message with that subject, over IMAP."""
    client = imap_client(box, address)
    try:
        client.select("INBOX", readonly=True)
        _, found = client.uid("SEARCH", "HEADER", "Subject", f'"{subject}"')
        [uid] = found[0].split()
        _, data = client.uid("FETCH", uid, "(BODY.PEEK[HEADER])")
    finally:
        client.logout()
    return email.message_from_bytes(data[0][1], policy=email.policy.default)


def imap_count(box: Appliance, address: str, mailbox: str) -> int:
    client = imap_client(box, address)
    try:
        _, data = client.select(mailbox, readonly=True)
    finally:
        client.logout()
    return int(data[0])


# -- the flow -----------------------------------------------------------------------


def test_two_people_read_write_answer_forward_file_and_search(box, browser, tmp_path):
    upload = tmp_path / SENT_NAME
    upload.write_bytes(EVERY_OCTET)
    ann_views, bob_views = Views("ann"), Views("bob")
    with new_page(browser, box.https_url) as ann, new_page(browser, box.https_url) as bob:
        # ann's INBOX: the three messages, newest first.
        browser_log_in(ann, ANN, PASSWORD)
        ann.goto("/mail")
        assert ann.locator("h1").inner_text() == "Inbox"
        assert subjects(ann) == ["Files for you", "Rich hello", "Plain hello"]
        ann_views.look(ann, "inbox")

        # A plain message: its text, its link made a link.
        click(ann, "Plain hello", "link")
        assert "Hello from far away" in ann.locator("pre.mail-text").inner_text()
        link = ann.locator("pre.mail-text a")
        assert link.get_attribute("href") == "https://example.com/"
        ann_views.look(ann, "plain")
        click(ann, "Back to Inbox", "link")

        # An HTML message: shown, sanitized, in its sandboxed frame.
        click(ann, "Rich hello", "link")
        frame = ann.frame_locator("iframe.mail-body")
        assert frame.locator("h2").inner_text() == "Rich"
        assert frame.locator("b").inner_text() == "text"
        ann_views.look(ann, "html")
        click(ann, "Back to Inbox", "link")

        # An attachment: downloaded, octet for octet.
        click(ann, "Files for you", "link")
        saved, _ = download(ann, "report.pdf")
        assert saved == RECEIVED_FILE
        ann_views.look(ann, "attachment")

        # bob looks at his (empty) INBOX before anything is sent to him.
        browser_log_in(bob, BOB, PASSWORD)
        bob.goto("/mail")
        assert subjects(bob) == []
        bob.evaluate("window.notReloaded = true")

        # ann writes to bob with a file holding every octet value.
        click(ann, "Back to Inbox", "link")
        click(ann, "Write", "link")
        ann.get_by_label("To", exact=True).fill(f"Bob <{BOB}>")
        ann.get_by_label("Subject", exact=True).fill(SUBJECT)
        ann.get_by_label("Message", exact=True).fill("Hello Bob,\nthe quarterly figures.\n")
        ann.get_by_label("Attach files", exact=True).set_input_files(upload)
        limit = ann.locator("#attachment-help").inner_text()
        assert limit == "Up to 25.0 MiB for the whole message."  # [web] max_upload_size
        ann_views.look(ann, "compose")
        click(ann, "Send")
        assert status(ann) == "Message sent."

        # bob's open list shows it without a reload; he opens it and saves the file.
        wait_in_list(bob, SUBJECT)
        bob_views.look(bob, "inbox")
        click(bob, SUBJECT, "link")
        assert "the quarterly figures." in bob.locator("pre.mail-text").inner_text()
        saved, part_url = download(bob, SENT_NAME)
        assert saved == EVERY_OCTET
        assert imap_part(box, BOB, part_url) == EVERY_OCTET
        original = imap_headers(box, BOB, SUBJECT)["Message-ID"]
        assert original
        bob_views.look(bob, "message")
        message_url = bob.url

        # bob replies: ann's INBOX shows the answer, threaded to her message.
        click(bob, "Reply", "link")
        assert bob.get_by_label("To", exact=True).input_value() == ANN
        assert bob.get_by_label("Subject", exact=True).input_value() == f"Re: {SUBJECT}"
        reply = bob.get_by_label("Message", exact=True)
        quoted = reply.input_value()
        assert "> the quarterly figures." in quoted
        reply.fill(f"Thanks, the {REPLY_WORD} numbers look fine.\n{quoted}")
        bob_views.look(bob, "reply")
        click(bob, "Send")
        assert status(bob) == "Message sent."
        ann.goto("/mail")
        wait_in_list(ann, f"Re: {SUBJECT}")
        answer = imap_headers(box, ANN, f"Re: {SUBJECT}")
        assert answer["In-Reply-To"] == original
        assert original in answer["References"]

        # bob forwards it to ann with its attachment.
        bob.goto(message_url)
        click(bob, "Forward", "link")
        assert bob.get_by_label("Subject", exact=True).input_value() == f"Fwd: {SUBJECT}"
        kept = bob.get_by_role("checkbox", name=re.compile(re.escape(SENT_NAME)))
        assert kept.is_checked()
        bob.get_by_label("To", exact=True).fill(ANN)
        bob_views.look(bob, "forward")
        click(bob, "Send")
        assert status(bob) == "Message sent."
        wait_in_list(ann, f"Fwd: {SUBJECT}")
        click(ann, f"Fwd: {SUBJECT}", "link")
        saved, _ = download(ann, SENT_NAME)
        assert saved == EVERY_OCTET
        ann_views.look(ann, "forwarded")
        click(ann, "Back to Inbox", "link")

        # ann moves the plain message to Archive.
        ann.get_by_role("checkbox", name="Select: Plain hello").check()
        ann.get_by_label("Move to").select_option(label="Archive")
        click(ann, "Move")
        assert status(ann) == "Moved 1 message."
        assert "Plain hello" not in subjects(ann)
        open_folder(ann, "Archive")
        assert subjects(ann) == ["Plain hello"]
        ann_views.look(ann, "archive")

        # ann deletes the HTML one: to Trash, and from Trash for good.
        open_folder(ann, "Inbox")
        ann.get_by_role("checkbox", name="Select: Rich hello").check()
        click(ann, "Delete")
        assert status(ann) == "Moved 1 message to Trash."
        open_folder(ann, "Trash")
        assert subjects(ann) == ["Rich hello"]
        ann_views.look(ann, "trash")
        ann.get_by_role("checkbox", name="Select: Rich hello").check()
        ann.once("dialog", lambda dialog: dialog.accept())  # "Delete ... for good?"
        click(ann, "Delete for good")
        assert status(ann) == "Deleted 1 message for good."
        assert subjects(ann) == []
        assert imap_count(box, ANN, "Trash") == 0
        assert imap_count(box, ANN, "Archive") == 1

        # ann searches her INBOX by text and by sender.
        open_folder(ann, "Inbox")
        assert subjects(ann) == [f"Fwd: {SUBJECT}", f"Re: {SUBJECT}", "Files for you"]
        search(ann, REPLY_WORD, "Text")
        assert subjects(ann) == [f"Re: {SUBJECT}"]
        assert "1 message found" in ann.locator("main").inner_text()
        ann_views.look(ann, "search-text")
        search(ann, "zoe@elsewhere.test", "From")
        assert subjects(ann) == ["Files for you"]
        search(ann, BOB, "From")
        assert subjects(ann) == [f"Fwd: {SUBJECT}", f"Re: {SUBJECT}"]
        ann_views.look(ann, "search-from")


def search(page, query: str, where: str) -> None:
    page.get_by_role("searchbox", name="Search in Inbox").fill(query)
    page.get_by_label("Where to look").select_option(label=where)
    click(page, "Search")
