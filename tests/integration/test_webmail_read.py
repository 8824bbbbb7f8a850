"""Reading mail in the browser, over real sockets.

One box for the module, set up through its setup page. Each test makes its
own accounts (through the CLI, as an administrator would) so that what one
test delivers never shows in another's lists. Mail arrives over SMTP, as it
would from elsewhere; what the pages say is checked against what a mail
client sees over IMAP. The tests that drive chromium come last: once
Playwright's sync API runs, the HTTP client of tests/web_client.py (its own
event loop) can no longer be used in this module.
"""

from __future__ import annotations

import base64
import email
import email.policy
import html
import re
import secrets
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from email.message import EmailMessage
from urllib.parse import urlsplit

import pytest

from appliance.store import open_store
from tests.browser import (
    assert_accessible,
    browser_fixture,  # noqa: F401 - fixture browser
    browser_log_in,
    new_page,
    screenshot,
)
from tests.conftest import PASSWORD, Appliance
from tests.web_client import DOMAIN, Browser, deliver, imap_client, log_in, set_up_appliance

STRANGER = "Zoë Stranger <zoe@elsewhere.test>"
PAGE_SIZE = 50
MAIL_TIMEOUT = 30  # seconds for one SMTP or IMAP exchange, or an event, on a busy machine
# A PDF's first octets and some binary: what a download must give back octet for octet.
PDF = b"%PDF-1.4\n" + bytes(range(256)) * 8


@pytest.fixture(scope="module")
def box(tmp_path_factory) -> Iterator[Appliance]:
    app = set_up_appliance(tmp_path_factory.mktemp("webmail"))
    yield app
    assert app.stop() == 0, app.log()


def new_user(box: Appliance, name: str) -> str:
    address = f"{name}-{secrets.token_hex(3)}@{DOMAIN}"
    box.add_user(address)
    return address


def text_message(subject: str, body: str, sender: str = STRANGER, to: str = "") -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to or "someone@example.test"
    message["Subject"] = subject
    message.set_content(body)
    return message


def mailboxes(page_text: str) -> dict[str, int]:
    """Label -> id of the mailboxes the page lists."""
    found = re.findall(
        r'<a href="/mail/(\d+)"[^>]*>\s*<span class="folder-name">([^<]*)</span>', page_text
    )
    return {html.unescape(label): int(number) for number, label in found}


def unread_counts(page_text: str) -> dict[str, int]:
    found = re.findall(
        r'<span class="folder-name">([^<]*)</span>\s*<span class="count">(\d+)', page_text
    )
    return {html.unescape(label): int(count) for label, count in found}


def rows(page_text: str) -> list[tuple[int, int, str]]:
    """(mailbox id, UID, subject as a person reads it) of each listed message."""
    found = re.findall(r'<a href="/mail/(\d+)/(\d+)">([^<]*)</a>', page_text)
    return [(int(m), int(u), html.unescape(s)) for m, u, s in found]


def inbox_of(reader: Browser) -> tuple[int, str]:
    """The INBOX's id and its list page's HTML."""
    page = reader.get("/mail")
    assert page.status == 303, page.text
    listed = reader.get(page.location)
    assert listed.status == 200, listed.text
    return int(page.location.rsplit("/", 1)[1]), listed.text


def imap_flags(box: Appliance, address: str, mailbox: str = "INBOX") -> dict[int, str]:
    client = imap_client(box, address)
    try:
        client.select(mailbox, readonly=True)
        typ, data = client.uid("FETCH", "1:*", "(FLAGS)")
        found = {}
        for line in data:
            if line:
                match = re.search(rb"UID (\d+) FLAGS \(([^)]*)\)", line)
                found[int(match.group(1))] = match.group(2).decode()
        return found
    finally:
        client.logout()


def act(reader: Browser, page_path: str, mailbox_id: int, uids: list[int], **fields: str):
    form = {"csrf": reader.get(page_path).csrf(), "back": page_path, **fields}
    data = [*form.items(), *(("uid", str(uid)) for uid in uids)]
    return reader.post(f"/mail/{mailbox_id}/act", data=data)


# -- lists -------------------------------------------------------------------------


def test_the_mail_link_leads_to_the_inbox_newest_first_fifty_a_page(box):
    address = new_user(box, "paging")
    with smtplib.SMTP(box.host, box.port, timeout=MAIL_TIMEOUT) as smtp:
        for n in range(PAGE_SIZE + 5):
            message = text_message(f"Number {n:02d}", "hello")
            raw = message.as_bytes(policy=email.policy.SMTP)
            smtp.sendmail("zoe@elsewhere.test", [address], raw)
    with log_in(box, address, PASSWORD) as reader:
        assert '<a href="/mail"' in reader.get("/account").text  # the nav's Mail link
        inbox, first = inbox_of(reader)
        subjects = [subject for _, _, subject in rows(first)]
        assert subjects == [f"Number {n:02d}" for n in range(54, 4, -1)]
        assert "Zoë Stranger" in first
        assert "Page 1 of 2" in first
        second = reader.get(f"/mail/{inbox}?page=2").text
        assert [s for _, _, s in rows(second)] == [f"Number {n:02d}" for n in range(4, -1, -1)]
        assert unread_counts(first)["Inbox"] == PAGE_SIZE + 5
        # Special-use mailboxes come right after the INBOX.
        assert list(mailboxes(first)) == ["Inbox", "Drafts", "Sent", "Archive", "Junk", "Trash"]


def test_reading_a_message_marks_it_seen_everywhere(box):
    address = new_user(box, "seen")
    deliver(box, address, text_message("Café au lait", "Read me."))
    with log_in(box, address, PASSWORD) as reader:
        inbox, listed = inbox_of(reader)
        [(_, uid, subject)] = rows(listed)
        assert subject == "Café au lait"
        assert unread_counts(listed) == {"Inbox": 1}
        assert "\\Seen" not in imap_flags(box, address)[uid]
        page = reader.get(f"/mail/{inbox}/{uid}")
        assert page.status == 200
        assert '<h1 id="subject">Café au lait</h1>' in page.text
        assert unread_counts(page.text) == {}
        assert "\\Seen" in imap_flags(box, address)[uid]
        assert 'class="read"' in reader.get(f"/mail/{inbox}").text


def test_plain_text_is_shown_as_text_with_its_links_clickable(box):
    address = new_user(box, "plain")
    body = "See https://example.com/a?b=1&c=2. And <b>not bold</b>.\nmailto:x@example.com"
    deliver(box, address, text_message("links", body))
    with log_in(box, address, PASSWORD) as reader:
        inbox, listed = inbox_of(reader)
        page = reader.get(f"/mail/{inbox}/{rows(listed)[0][1]}").text
        assert (
            '<a href="https://example.com/a?b=1&amp;c=2" rel="noopener noreferrer" '
            'target="_blank">https://example.com/a?b=1&amp;c=2</a>.'
        ) in page
        assert "&lt;b&gt;not bold&lt;/b&gt;" in page
        assert 'href="mailto:x@example.com"' in page
        assert "<iframe" not in page  # plain text needs no frame


def attachment_message() -> bytes:
    """Names in RFC 2047 (name=) and RFC 2231 (filename*=), and parts a
    browser would render if it were let."""
    pdf = EmailMessage()
    pdf["From"] = STRANGER
    pdf["To"] = "someone@example.test"
    pdf["Subject"] = "files"
    pdf.set_content("Files attached.")
    pdf.add_attachment(PDF, maintype="application", subtype="pdf", filename="Rapport €.pdf")
    raw = pdf.as_bytes(policy=email.policy.SMTP)
    extra = (
        b'Content-Type: text/html; name="=?utf-8?q?p=C3=A4ge.html?="\r\n'
        b"Content-Disposition: attachment\r\n\r\n<script>alert(1)</script>\r\n"
    )
    svg = (
        b"Content-Type: image/svg+xml\r\n"
        b"Content-Disposition: attachment; filename*=iso-8859-1''d%E9sign.svg\r\n\r\n"
        b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>\r\n'
    )
    boundary = re.search(rb'boundary="([^"]+)"', raw).group(1)
    closing = b"--" + boundary + b"--"
    more = b"--" + boundary + b"\r\n" + extra + b"--" + boundary + b"\r\n" + svg + closing
    return raw.replace(closing, more)


def test_attachments_show_decoded_names_and_always_download(box):
    address = new_user(box, "files")
    deliver(box, address, attachment_message())
    with log_in(box, address, PASSWORD) as reader:
        inbox, listed = inbox_of(reader)
        uid = rows(listed)[0][1]
        assert 'aria-label="Has attachments"' in listed
        page = reader.get(f"/mail/{inbox}/{uid}").text
        links = dict(
            (html.unescape(name), path)
            for path, name in re.findall(
                r'<a href="(/mail/\d+/\d+/part/[\d.]+)" download>([^<]*)<', page
            )
        )
        assert sorted(links) == ["Rapport €.pdf", "désign.svg", "päge.html"]
        pdf = reader.get(links["Rapport €.pdf"])
        assert pdf.body == PDF
        assert pdf.headers["Content-Type"] == "application/pdf"
        assert pdf.headers["Content-Disposition"].startswith("attachment;")
        assert "filename*=UTF-8''Rapport%20%E2%82%AC.pdf" in pdf.headers["Content-Disposition"]
        for name in ("päge.html", "désign.svg"):
            download = reader.get(links[name])
            assert download.status == 200
            assert download.headers["Content-Type"] == "application/octet-stream", name
            assert download.headers["Content-Disposition"].startswith("attachment;")
            assert download.headers["X-Content-Type-Options"] == "nosniff"
            assert "sandbox" in download.headers["Content-Security-Policy"]
        assert reader.get(f"/mail/{inbox}/{uid}/part/9").status == 404


def test_show_original_is_the_message_a_mail_client_gets(box):
    address = new_user(box, "raw")
    deliver(box, address, attachment_message())
    with log_in(box, address, PASSWORD) as reader:
        inbox, listed = inbox_of(reader)
        uid = rows(listed)[0][1]
        page = reader.get(f"/mail/{inbox}/{uid}/raw")
    client = imap_client(box, address)
    try:
        client.select("INBOX", readonly=True)
        _, data = client.uid("FETCH", str(uid), "(BODY.PEEK[])")
    finally:
        client.logout()
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.body == data[0][1]


# -- whose mail ----------------------------------------------------------------------


def test_another_accounts_mailboxes_and_messages_are_not_found(box):
    ann, bob = new_user(box, "ann"), new_user(box, "bob")
    deliver(box, bob, attachment_message())
    with log_in(box, bob, PASSWORD) as bob_reader:
        bob_inbox, listed = inbox_of(bob_reader)
        bob_uid = rows(listed)[0][1]
        bob_trash = mailboxes(listed)["Trash"]
    deliver(box, ann, text_message("mine", "ann's"))
    with log_in(box, ann, PASSWORD) as reader:
        ann_inbox, listed = inbox_of(reader)
        csrf = reader.get(f"/mail/{ann_inbox}").csrf()
        for path in (
            f"/mail/{bob_inbox}",
            f"/mail/{bob_inbox}?page=2",
            f"/mail/{bob_inbox}/{bob_uid}",
            f"/mail/{bob_inbox}/{bob_uid}/body",
            f"/mail/{bob_inbox}/{bob_uid}/raw",
            f"/mail/{bob_inbox}/{bob_uid}/part/2",
            f"/mail/search?q=files&mailbox={bob_inbox}",
            f"/mail/{ann_inbox}/999999",
            f"/mail/{2**64}",
            f"/mail/{ann_inbox}/{2**40}",
        ):
            page = reader.get(path)
            assert page.status == 404, path
            assert "files" not in page.text
        posts = (
            (f"/mail/{bob_inbox}/act", {"uid": str(bob_uid), "action": "delete"}),
            (f"/mail/{bob_inbox}/{bob_uid}/trust", {}),
            (  # moving one's own message into another's mailbox
                f"/mail/{ann_inbox}/act",
                {"uid": str(rows(listed)[0][1]), "action": "move", "target": str(bob_trash)},
            ),
        )
        for path, fields in posts:
            assert reader.post(path, {"csrf": csrf, **fields}).status == 404, path
    assert imap_flags(box, bob) == {bob_uid: ""}  # untouched, still unread
    assert len(imap_flags(box, ann)) == 1


def test_mail_actions_need_the_forms_token(box):
    address = new_user(box, "csrf")
    deliver(box, address, text_message("keep me", "x"))
    with log_in(box, address, PASSWORD) as reader:
        inbox, listed = inbox_of(reader)
        uid = rows(listed)[0][1]
        for form in ({}, {"csrf": "forged"}):
            for action in ("delete", "seen", "flag"):
                page = reader.post(
                    f"/mail/{inbox}/act", {**form, "uid": str(uid), "action": action}
                )
                assert page.status == 403, (form, action)
            assert reader.post(f"/mail/{inbox}/{uid}/trust", form).status == 403
        with Browser(box.https_url) as stranger:  # a session of its own, not logged in
            token = stranger.get("/login").csrf()
            page = stranger.post(f"/mail/{inbox}/act", {"csrf": token, "uid": str(uid)})
            assert (page.status, page.location) == (303, "/login")
    assert imap_flags(box, address) == {uid: ""}


def test_flag_mark_move_and_delete_many_at_once(box):
    address = new_user(box, "acts")
    for n in range(4):
        deliver(box, address, text_message(f"act {n}", "x"))
    with log_in(box, address, PASSWORD) as reader:
        inbox, listed = inbox_of(reader)
        ids = mailboxes(listed)
        uids = sorted(uid for _, uid, _ in rows(listed))
        page = act(reader, f"/mail/{inbox}", inbox, uids[:3], action="flag")
        assert (page.status, page.location) == (303, f"/mail/{inbox}")
        act(reader, f"/mail/{inbox}", inbox, uids[:2], action="seen")
        assert reader.get(f"/mail/{inbox}").notices() == ["Marked as read."]
        flags = imap_flags(box, address)
        assert flags[uids[0]] in ("\\Flagged \\Seen", "\\Seen \\Flagged")
        assert flags[uids[2]] == "\\Flagged" and flags[uids[3]] == ""
        act(reader, f"/mail/{inbox}", inbox, [uids[0]], action="unseen")
        act(reader, f"/mail/{inbox}", inbox, [uids[0]], action="unflag")
        assert imap_flags(box, address)[uids[0]] == ""
        act(reader, f"/mail/{inbox}", inbox, uids[:2], action="move", target=str(ids["Archive"]))
        assert [s for _, _, s in rows(reader.get(f"/mail/{ids['Archive']}").text)] == [
            "act 1",
            "act 0",
        ]
        act(reader, f"/mail/{inbox}", inbox, [uids[2]], action="delete")
        assert reader.get(f"/mail/{inbox}").notices() == ["Moved 1 message to Trash."]
        trash = reader.get(f"/mail/{ids['Trash']}").text
        [(_, trashed, subject)] = rows(trash)
        assert subject == "act 2"
        assert "Delete for good" in trash
        act(reader, f"/mail/{ids['Trash']}", ids["Trash"], [trashed], action="delete")
        assert reader.get(f"/mail/{ids['Trash']}").notices() == ["Deleted 1 message for good."]
        empty = act(reader, f"/mail/{inbox}", inbox, [], action="delete")
        assert reader.get(empty.location).notices() == ["Select one or more messages first."]
    assert list(imap_flags(box, address)) == [uids[3]]
    assert len(imap_flags(box, address, "Archive")) == 2
    assert imap_flags(box, address, "Trash") == {}


def test_moving_out_of_junk_remembers_the_sender_as_not_junk(box):
    address = new_user(box, "junk")
    deliver(box, address, text_message("not spam", "x", sender="Friend <friend@pals.test>"))
    with log_in(box, address, PASSWORD) as reader:
        inbox, listed = inbox_of(reader)
        ids = mailboxes(listed)
        uid = rows(listed)[0][1]
        act(reader, f"/mail/{inbox}", inbox, [uid], action="move", target=str(ids["Junk"]))
        [(_, junk_uid, _)] = rows(reader.get(f"/mail/{ids['Junk']}").text)
        page = f"/mail/{ids['Junk']}"
        act(reader, page, ids["Junk"], [junk_uid], action="move", target=str(inbox))
    store = open_store(box.data)
    try:
        account = store.read(lambda txn: txn.account(address))
        assert store.read(lambda txn: txn.not_junk_senders(account.id)) == ["friend@pals.test"]
    finally:
        store.close()


def test_search_finds_what_imap_search_finds(box):
    address = new_user(box, "search")
    messages = [
        text_message("Quarterly report", "Numbers inside.", sender="Ann <ann@partner.test>"),
        text_message("Lunch?", "Shall we meet at the Crème café?", to="team@example.test"),
        text_message("Re: report", "The résumé is attached.", sender="Bob <bob@other.test>"),
        text_message("Holiday", "Nothing to see."),
    ]
    for message in messages:
        deliver(box, address, message)
    cases = (  # (field, query, IMAP SEARCH criteria)
        ("from", "partner.test", ("FROM", "partner.test")),
        ("to", "team@", ("OR", "TO", "team@", "CC", "team@")),
        ("subject", "REPORT", ("SUBJECT", "REPORT")),
        ("body", "creme cafe", ("BODY", "creme cafe")),
        ("body", "resume", ("BODY", "resume")),
        ("all", "report", None),
    )
    client = imap_client(box, address)
    client.select("INBOX", readonly=True)
    try:
        with log_in(box, address, PASSWORD) as reader:
            inbox, _ = inbox_of(reader)
            for field, query, criteria in cases:
                page = reader.get(
                    "/mail/search", params={"q": query, "in": field, "mailbox": str(inbox)}
                )
                assert page.status == 200
                found = {uid for _, uid, _ in rows(page.text)}
                if criteria is not None:
                    quoted = [f'"{c}"' if " " in c else c for c in criteria]
                    _, data = client.uid("SEARCH", "CHARSET", "UTF-8", *quoted)
                    assert found == {int(n) for n in data[0].split()}, (field, query)
                assert found, (field, query)
            everything = reader.get("/mail/search", params={"q": "report", "mailbox": str(inbox)})
            assert [s for _, _, s in rows(everything.text)] == ["Re: report", "Quarterly report"]
            assert "2 messages found" in everything.text
            nothing = reader.get("/mail/search", params={"q": "zebra", "mailbox": str(inbox)})
            assert rows(nothing.text) == [] and "Nothing found." in nothing.text
    finally:
        client.logout()


def html_message(subject: str, markup: str, sender: str = STRANGER) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "someone@example.test"
    message["Subject"] = subject
    message.set_content("plain version")
    message.add_alternative(markup, subtype="html")
    return message


def test_remote_content_waits_for_the_reader_then_is_remembered_for_the_sender(box):
    address = new_user(box, "remote")
    markup = '<p>News</p><img src="https://tracker.example/p.gif">'
    deliver(box, address, html_message("one", markup, sender="News <news@letters.test>"))
    deliver(box, address, html_message("two", markup, sender="News <news@letters.test>"))
    with log_in(box, address, PASSWORD) as reader:
        inbox, listed = inbox_of(reader)
        first, second = sorted(uid for _, uid, _ in rows(listed))
        page = reader.get(f"/mail/{inbox}/{first}")
        assert "frame-src 'self'" in page.headers["Content-Security-Policy"]
        assert f'src="/mail/{inbox}/{first}/body"' in page.text
        assert "Load remote content" in page.text
        body = reader.get(f"/mail/{inbox}/{first}/body")
        policy = body.headers["Content-Security-Policy"]
        assert "img-src data:;" in policy and "script-src" not in policy
        assert (
            "frame-ancestors 'self'" in policy and body.headers["X-Frame-Options"] == "SAMEORIGIN"
        )
        assert "tracker.example" not in body.text
        allowed = reader.get(f"/mail/{inbox}/{first}?remote=1")
        assert f'src="/mail/{inbox}/{first}/body?remote=1"' in allowed.text
        body = reader.get(f"/mail/{inbox}/{first}/body?remote=1")
        assert "img-src data: https: http:;" in body.headers["Content-Security-Policy"]
        assert 'src="https://tracker.example/p.gif"' in body.text
        # Not remembered for the second message of the sender...
        assert "Load remote content" in reader.get(f"/mail/{inbox}/{second}").text
        csrf = reader.get(f"/mail/{inbox}/{second}").csrf()
        trusted = reader.post(f"/mail/{inbox}/{second}/trust", {"csrf": csrf})
        assert trusted.location == f"/mail/{inbox}/{second}"
        # ... until the reader says so; then every message of that sender shows it.
        page = reader.get(f"/mail/{inbox}/{first}")
        assert "Load remote content" not in page.text
        assert f'src="/mail/{inbox}/{first}/body?remote=1"' in page.text
        body = reader.get(f"/mail/{inbox}/{first}/body")
        assert "https:" in body.headers["Content-Security-Policy"]


# A 1x1 PNG: what an HTML message's cid: image may be.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082"
)


def test_images_of_the_message_itself_are_shown_inline(box):
    address = new_user(box, "cid")
    message = html_message("logo", '<p>Hi</p><img src="cid:logo@example.test" alt="Logo">')
    html_part = message.get_payload()[1]
    html_part.add_related(PNG, maintype="image", subtype="png", cid="<logo@example.test>")
    deliver(box, address, message)
    with log_in(box, address, PASSWORD) as reader:
        inbox, listed = inbox_of(reader)
        uid = rows(listed)[0][1]
        page = reader.get(f"/mail/{inbox}/{uid}").text
        assert "Load remote content" not in page
        body = reader.get(f"/mail/{inbox}/{uid}/body").text
    encoded = base64.b64encode(PNG).decode()
    assert f'src="data:image/png;base64,{encoded}"' in body
    assert "cid:" not in body


def open_events(box: Appliance, session_id: str) -> ssl.SSLSocket:
    """GET /mail/events as EventSource does, on a raw TLS socket."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the box's self-signed certificate
    raw = socket.create_connection((box.host, box.https_port), timeout=MAIL_TIMEOUT)
    stream = context.wrap_socket(raw)
    request = (
        f"GET /mail/events HTTP/1.1\r\nHost: {box.host}:{box.https_port}\r\n"
        f"Cookie: session={session_id}\r\nAccept: text/event-stream\r\n\r\n"
    )
    stream.sendall(request.encode())
    return stream


def read_until(stream: ssl.SSLSocket, wanted: bytes, timeout: float = MAIL_TIMEOUT) -> bytes:
    got = b""
    deadline = time.monotonic() + timeout
    while wanted not in got:
        left = deadline - time.monotonic()
        assert left > 0, f"no {wanted!r} in {got!r}"
        stream.settimeout(left)
        piece = stream.recv(4096)
        assert piece, f"closed before {wanted!r}: {got!r}"
        got += piece
    return got


def test_new_mail_is_announced_on_the_event_stream(box):
    address = new_user(box, "events")
    with log_in(box, address, PASSWORD) as reader:
        inbox_of(reader)
        stream = open_events(box, reader.session_id())
        try:
            head = read_until(stream, b"retry:")
            assert head.startswith(b"HTTP/1.1 200")
            assert b"Content-Type: text/event-stream" in head
            assert b"event: change" not in head
            deliver(box, address, text_message("live", "x"))
            read_until(stream, b"event: change")
        finally:
            stream.close()
    with Browser(box.https_url) as stranger:
        page = stranger.get("/mail/events")
        assert (page.status, page.location) == (303, "/login")


def test_logged_out_no_mail_page_answers(box):
    address = new_user(box, "logout")
    deliver(box, address, text_message("private", "x"))
    reader = log_in(box, address, PASSWORD)
    inbox, listed = inbox_of(reader)
    uid = rows(listed)[0][1]
    csrf = reader.get(f"/mail/{inbox}").csrf()
    assert reader.post("/logout", {"csrf": csrf}).location == "/login"
    for path in ("/mail", f"/mail/{inbox}", f"/mail/{inbox}/{uid}", f"/mail/{inbox}/{uid}/raw"):
        page = reader.get(path)
        assert (page.status, page.location) == (303, "/login"), path
    reader.close()


def test_an_idle_session_reads_no_more_mail(tmp_path):
    app = set_up_appliance(tmp_path / "data", web={"session_idle_timeout": 1})
    try:
        address = new_user(app, "idle")
        with log_in(app, address, PASSWORD) as reader:
            inbox, _ = inbox_of(reader)
            time.sleep(1.5)
            page = reader.get(f"/mail/{inbox}")
            assert (page.status, page.location) == (303, "/login")
    finally:
        assert app.stop() == 0, app.log()


# -- in a real browser (last: see the module's docstring) ---------------------------


class Shots:
    """Screenshots of each view, each checked by axe-core."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def take(self, page, name: str) -> None:
        screenshot(page, f"{self.prefix}-{name}")
        assert_accessible(page)


def click(page, name: str, role: str = "button") -> None:
    with page.expect_navigation():
        page.get_by_role(role, name=name, exact=True).first.click()


def test_reading_mail_in_a_browser(box, browser):
    address = new_user(box, "browser")
    deliver(box, address, text_message("Plain hello", "Hello from far away: https://example.com/"))
    deliver(box, address, html_message("Rich hello", "<h2>Rich</h2><p>Styled <b>text</b>.</p>"))
    deliver(box, address, attachment_message())
    shots = Shots("webmail")
    with new_page(browser, box.https_url) as page:
        browser_log_in(page, address, PASSWORD)
        page.goto("/mail")
        assert page.locator("h1").inner_text() == "Inbox"
        assert page.locator("table.messages tbody tr").count() == 3
        shots.take(page, "list")

        click(page, "Plain hello", "link")
        assert "Hello from far away" in page.locator("pre.mail-text").inner_text()
        shots.take(page, "plain")
        click(page, "Back to Inbox", "link")

        click(page, "Rich hello", "link")
        frame = page.frame_locator("iframe.mail-body")
        assert frame.locator("h2").inner_text() == "Rich"
        shots.take(page, "html")
        click(page, "Back to Inbox", "link")

        click(page, "files", "link")
        with page.expect_download() as download:
            page.get_by_role("link", name="Rapport €.pdf").click()
        assert download.value.suggested_filename == "Rapport €.pdf"
        assert download.value.path().read_bytes() == PDF
        shots.take(page, "attachments")
        page.get_by_label("Move to").select_option(label="Archive")
        click(page, "Move")
        assert re.fullmatch(r"/mail/\d+", urlsplit(page.url).path)
        assert page.locator("table.messages tbody tr").count() == 2

        # New mail shows in the open list without a reload.
        page.evaluate("window.notReloaded = true")
        deliver(box, address, text_message("Arrived live", "x"))
        page.get_by_role("link", name="Arrived live").wait_for(timeout=MAIL_TIMEOUT * 1000)
        assert page.evaluate("window.notReloaded") is True

        # Select all, then mark read.
        page.get_by_label("Select all messages on this page").check()
        click(page, "Mark read")
        assert page.locator("tr.unread").count() == 0

        page.get_by_role("checkbox", name="Select: Plain hello").check()
        click(page, "Delete")
        assert page.get_by_role("status").first.inner_text() == "Moved 1 message to Trash."

        page.get_by_label("Search in Inbox").fill("styled")
        page.get_by_label("Where to look").select_option(label="Text")
        click(page, "Search")
        assert [r.inner_text() for r in page.locator("td.subject a").all()] == ["Rich hello"]
        shots.take(page, "search")

    with new_page(browser, box.https_url, viewport="phone") as phone:
        browser_log_in(phone, address, PASSWORD)
        phone.goto("/mail")
        shots.take(phone, "list-phone")
        click(phone, "Rich hello", "link")
        shots.take(phone, "html-phone")
