"""Writing and sending mail in the browser, over real sockets.

One box for the module, set up through its setup page, with users ann and
bob. Its DNS is a loopback server where remote.test's MX is this machine on
a port where nothing listens: mail for remote.test waits in the queue. Forms
are sent as a browser sends them (multipart/form-data, file names in raw
UTF-8), with the fields the page shows; what arrives is read back over IMAP.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import json
import secrets
import smtplib
from html.parser import HTMLParser

import pytest

from appliance.mailauth.dkim import dns_records
from appliance.store import open_store
from tests.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LAUNCH_TIMEOUT_MS,
    assert_accessible,
    browser_log_in,
    missing_parts,
    new_page,
    screenshot,
)
from tests.conftest import PASSWORD, Appliance, free_port
from tests.dns_server import DnsServer
from tests.web_client import DOMAIN, REQUEST_TIMEOUT, Browser, Page, log_in, set_up_appliance

ANN = f"ann@{DOMAIN}"
BOB = f"bob@{DOMAIN}"
FAR = "far@remote.test"
MAX_REQUEST_SIZE = 1 << 20  # [web] max_request_size left at its default
MAX_UPLOAD_SIZE = 2 << 20  # [web] max_upload_size made small for the test


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    zone = {"remote.test": {"MX": ["10 mx.remote.test."]}, "mx.remote.test": {"A": "127.0.0.1"}}
    with DnsServer(zone) as dns:
        app = set_up_appliance(
            tmp_path_factory.mktemp("compose"),
            resolver={"nameservers": [dns.nameserver]},
            # Nothing listens at the MX: mail for remote.test stays queued.
            queue={"retry_delays": [3600], "mx_port": free_port()},
            web={"max_upload_size": MAX_UPLOAD_SIZE},
        )
        app.add_user(ANN)
        app.add_user(BOB)
        yield app
        assert app.stop() == 0, app.log()


@pytest.fixture
def ann(box):
    browser = log_in(box, ANN, PASSWORD)
    yield browser
    browser.close()


@pytest.fixture
def bob(box):
    browser = log_in(box, BOB, PASSWORD)
    yield browser
    browser.close()


# -- a browser's view of the form --------------------------------------------------------


class _FormReader(HTMLParser):
    """The fields the compose form would send as shown: hidden and visible
    inputs, ticked boxes, the selected option, the textarea's text."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: list[tuple[str, str]] = []
        self._inside = False
        self._textarea: tuple[str, list[str]] | None = None
        self._select: str | None = None
        self._options: list[tuple[str, bool]] = []

    def handle_starttag(self, tag, attrs):
        found = dict(attrs)
        if tag == "form":
            self._inside = found.get("action") == "/mail/compose"
        if not self._inside:
            return
        if tag == "input" and found.get("name") and found.get("type") != "file":
            if found.get("type") != "checkbox" or "checked" in found:
                self.fields.append((found["name"], found.get("value") or ""))
        elif tag == "textarea":
            self._textarea = (found["name"], [])
        elif tag == "select":
            self._select, self._options = found["name"], []
        elif tag == "option" and self._select:
            self._options.append((found.get("value") or "", "selected" in found))

    def handle_data(self, data):
        if self._textarea is not None:
            self._textarea[1].append(data)

    def handle_endtag(self, tag):
        if tag == "form":
            self._inside = False
        elif tag == "textarea" and self._textarea is not None:
            name, pieces = self._textarea
            text = "".join(pieces)
            # HTML drops one line break right after <textarea>, as browsers do.
            self.fields.append((name, text[1:] if text.startswith("\n") else text))
            self._textarea = None
        elif tag == "select" and self._select is not None:
            chosen = [value for value, selected in self._options if selected]
            self.fields.append((self._select, (chosen or [self._options[0][0]])[0]))
            self._select = None


def form_fields(page: Page) -> dict[str, list[str]]:
    reader = _FormReader()
    reader.feed(page.text)
    fields: dict[str, list[str]] = {}
    for name, value in reader.fields:
        fields.setdefault(name, []).append(value)
    return fields


def shown(page: Page, name: str) -> str:
    return form_fields(page)[name][0]


def multipart(fields: list[tuple[str, str]], files=()) -> tuple[bytes, dict[str, str]]:
    """A form body as a browser makes it (file names in raw UTF-8, quotes and
    line breaks percent-encoded, as the HTML standard says)."""
    boundary = "----WebKitFormBoundary" + secrets.token_hex(8)
    chunks = []
    for name, value in fields:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
        chunks.append(head.encode() + value.encode() + b"\r\n")
    for name, filename, data, content_type in files:
        escaped = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{escaped}"\r\nContent-Type: {content_type}\r\n\r\n'
        )
        chunks.append(head.encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def compose(
    browser: Browser,
    changes: dict[str, str] | None = None,
    files=(),
    page: str = "/mail/compose",
    action: str = "send",
    csrf: bool = True,
) -> Page:
    """Open the compose page, change some fields, attach files, press a button."""
    opened = browser.get(page)
    assert opened.status == 200, (page, opened.status, opened.text[:500])
    fields = form_fields(opened)
    for name, value in (changes or {}).items():
        fields[name] = [value]
    if not csrf:
        del fields["csrf"]
    flat = [(name, value) for name, values in fields.items() for value in values]
    body, headers = multipart([*flat, ("action", action)], files)
    return browser.post("/mail/compose", data=body, headers=headers)


# -- what a mail client sees -------------------------------------------------------------


def imap_messages(app: Appliance, address: str, mailbox: str = "INBOX") -> list[tuple[str, bytes]]:
    """(FLAGS response text, message) of every message of the mailbox."""
    with imaplib.IMAP4(app.host, app.imap_port, timeout=REQUEST_TIMEOUT) as client:
        client.login(address, PASSWORD)
        assert client.select(f'"{mailbox}"', readonly=True)[0] == "OK"
        uids = client.uid("SEARCH", None, "ALL")[1][0].split()
        found = []
        for uid in uids:
            response = client.uid("FETCH", uid, "(FLAGS BODY.PEEK[])")[1]
            meta = response[0][0] + b"".join(x for x in response[1:] if isinstance(x, bytes))
            found.append((meta.decode(), response[0][1]))
        client.logout()
        return found


def parsed(raw: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(raw, policy=email.policy.default)


def last_ref(app: Appliance, address: str, mailbox: str = "INBOX") -> str:
    """The "<mailbox id>:<uid>" of the newest message, as the reading pages link it."""
    store = open_store(app.data)
    try:

        def read(txn):
            box = txn.mailbox(txn.account(address).id, mailbox)
            return f"{box.id}:{txn.messages(box.id)[-1].uid}"

        return store.read(read)
    finally:
        store.close()


def _entry(app: Appliance, ref: str, read):
    mailbox_id, uid = map(int, ref.split(":"))
    store = open_store(app.data)
    try:
        return store.read(lambda txn: read(txn, txn.message(mailbox_id, uid)))
    finally:
        store.close()


def stored(app: Appliance, ref: str) -> bytes:
    """The message as its owner sees it: trace fields and body."""
    return _entry(app, ref, lambda txn, entry: bytes(entry.head) + bytes(txn.blob(entry.blob_id)))


def flags_of(app: Appliance, ref: str) -> tuple[str, ...]:
    return _entry(app, ref, lambda txn, entry: entry.flags)


def counts(app: Appliance) -> tuple[int, int, int]:
    """Messages in bob's INBOX, ann's Sent, and the queue: what a send changes."""
    inbox = len(app.inbox(BOB))
    sent = len(app.inbox(ANN, "Sent"))
    return inbox, sent, len(app.queue_entries())


def dkim_verifies(app: Appliance, message: bytes) -> bool:
    import dkim

    records = {f"{r.name}.".encode(): r.value.encode() for r in dns_records(app.data, DOMAIN)}
    signed = message[message.index(b"DKIM-Signature:") :]  # without our trace fields
    verifier = dkim.DKIM(signed)
    return verifier.verify(0, dnsfunc=lambda name, timeout=5: records[name])


def deliver_from_outside(app: Appliance, message: str, recipients: list[str]) -> None:
    with smtplib.SMTP(app.host, app.port, timeout=REQUEST_TIMEOUT) as client:
        client.sendmail("carol@remote.test", recipients, message.replace("\n", "\r\n").encode())


# -- sending -------------------------------------------------------------------------------


def test_a_message_with_an_attachment_reaches_a_local_user_exactly(box, ann):
    attachment = secrets.token_bytes(50_000) + b"\r\n\x00end"
    before = counts(box)
    page = compose(
        ann,
        {
            "from_name": "Ännchen Müller",
            "to": f"Bob Brown <{BOB}>",
            "subject": "Grüße aus Köln",
            "body": "Hallo Bob,\nanbei der Bericht.\n",
        },
        files=[("attachment", "Prüfbericht März.pdf", attachment, "application/pdf")],
    )
    assert (page.status, page.location) == (303, "/mail"), page.text[:500]
    assert ann.get("/mail/compose").notices() == ["Message sent."]

    [(_, raw)] = imap_messages(box, BOB)[before[0] :]
    message = parsed(raw)
    head = raw.partition(b"\r\n\r\n")[0]
    assert head.isascii()  # RFC 2047 words and RFC 2231 parameters, no raw UTF-8
    assert message["Subject"] == "Grüße aus Köln" and b"=?utf-8?" in head
    assert message["From"].addresses[0].display_name == "Ännchen Müller"
    assert message["Date"] and message["Message-ID"]  # added by the submission path
    assert b"with HTTPS id" in head and f"Return-Path: <{ANN}>".encode() in head
    assert dkim_verifies(box, raw)
    text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text == "Hallo Bob,\nanbei der Bericht.\n"
    [part] = message.iter_attachments()
    assert part.get_filename() == "Prüfbericht März.pdf"
    assert b"filename*=utf-8''Pr%C3%BCfbericht%20M%C3%A4rz.pdf" in raw
    assert part.get_content_type() == "application/pdf"
    assert part.get_content() == attachment

    [(flags, copy)] = imap_messages(box, ANN, "Sent")[before[1] :]
    assert "\\Seen" in flags
    assert copy == raw[raw.index(b"DKIM-Signature:") :]  # as sent, without bob's trace


def test_mail_to_a_remote_address_is_queued_and_bcc_stays_in_sent(box, ann):
    before = counts(box)
    page = compose(
        ann,
        {"to": BOB, "bcc": f"Far Away <{FAR}>", "subject": "secret plan", "body": "hi"},
        files=[("attachment", "", b"", "application/octet-stream")],  # no file chosen
    )
    assert (page.status, page.location) == (303, "/mail"), page.text[:500]
    after = counts(box)
    assert after == (before[0] + 1, before[1] + 1, before[2] + 1)

    [entry] = [q for q in box.queue_entries() if FAR in q.recipients]
    assert entry.sender == ANN and entry.recipients == (FAR,)
    [(_, _, queued)] = [q for q in box.queue() if q[1] == (FAR,)]
    [(_, local)] = imap_messages(box, BOB)[before[0] :]
    for copy in (queued, local):  # RFC 5322 3.6.3: Bcc is in no copy that is sent
        assert b"\r\nBcc:" not in copy and parsed(copy)["Bcc"] is None
        assert parsed(copy)["Subject"] == "secret plan" and dkim_verifies(box, copy)
    assert FAR.encode() not in local  # bob cannot tell who else got it
    [(_, sent)] = imap_messages(box, ANN, "Sent")[before[1] :]
    assert parsed(sent)["Bcc"] == f"Far Away <{FAR}>"


def test_a_from_address_that_is_not_the_users_is_refused(box, ann):
    before = counts(box)
    page = compose(ann, {"from": BOB, "to": BOB, "subject": "forged", "body": "x"})
    assert page.status == 403
    assert f"You may not send as {BOB}." in page.notices()
    assert shown(page, "subject") == "forged"  # the form comes back as it was written
    assert counts(box) == before


def test_an_alias_of_the_user_is_offered_as_from(box, ann):
    assert box.cli("alias", "add", f"sales@{DOMAIN}", ANN).returncode == 0
    before = counts(box)
    page = ann.get("/mail/compose")
    assert form_fields(page)["from"] == [ANN]  # the first address is chosen
    assert f'<option value="sales@{DOMAIN}">' in page.text
    assert compose(ann, {"from": f"sales@{DOMAIN}", "to": BOB, "body": "x"}).status == 303
    [(_, raw)] = imap_messages(box, BOB)[before[0] :]
    assert parsed(raw)["From"] == f"sales@{DOMAIN}" and dkim_verifies(box, raw)
    assert f"Return-Path: <sales@{DOMAIN}>" in raw.decode()  # bounces go to the alias
    assert f"webmail sent user={ANN} client=127.0.0.1 from=<sales@{DOMAIN}>" in box.log()


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "hello\r\nBcc: victim@remote.test"},
        {"subject": "hello\nX-Injected: yes"},
        {"to": f"{BOB}\r\nBcc: victim@remote.test"},
        {"from_name": "Ann\r\nBcc: victim@remote.test"},
        {"to": f"=?utf-8?q?Bob=0D=0ABcc=3A_victim=40remote=2Etest?= <{BOB}>"},
    ],
)
def test_line_breaks_in_header_fields_are_refused(box, ann, changes):
    before = counts(box)
    page = compose(ann, {"to": BOB, "body": "x", **changes})
    assert page.status == 400
    [text] = page.notices()
    assert "line breaks" in text
    assert counts(box) == before


def test_a_line_break_in_a_file_name_is_refused(box, ann):
    before = counts(box)
    # A browser percent-encodes a line break in a file name (the HTML standard):
    # the name arrives with a literal "%0D%0A" and is sent as such, harmless.
    name = "a\r\nX-Injected: yes\r\n.txt"
    page = compose(ann, {"to": BOB, "body": "x"}, files=[("attachment", name, b"x", "text/plain")])
    assert page.status == 303
    [(_, raw)] = imap_messages(box, BOB)[before[0] :]
    [part] = parsed(raw).iter_attachments()
    assert part.get_filename() == "a%0D%0AX-Injected: yes%0D%0A.txt"
    assert part.get_content_type() == "text/plain"
    # Another client may encode it (RFC 7578 4.2 allows filename*): refused.
    before = counts(box)
    opened = ann.get("/mail/compose")
    body, headers = multipart([("csrf", opened.csrf()), ("from", ANN), ("to", BOB)])
    boundary = headers["Content-Type"].partition("boundary=")[2].encode()
    smuggled = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="attachment"; '
        b"filename*=utf-8''a%0D%0AContent-Type%3A%20text%2Fhtml%0D%0A.txt\r\n"
        b"Content-Type: text/plain\r\n\r\nx\r\n"
    )
    page = ann.post("/mail/compose", data=smuggled + body, headers=headers)
    assert page.status == 400
    assert "A file name may not contain line breaks" in page.notices()[0]
    assert counts(box) == before


def test_bad_addresses_are_refused_with_the_reason(box, ann):
    before = counts(box)
    for to, reason in (
        ("bob", "not a list of addresses"),
        (f"{BOB}; {FAR}", "not a list of addresses"),
        (f"nobody@{DOMAIN}", "User unknown"),
        ("", "Add at least one recipient"),
    ):
        page = compose(ann, {"to": to, "body": "x"})
        assert page.status == 400, to
        assert reason in " ".join(page.notices()), (to, page.notices())
    assert counts(box) == before


def test_a_form_without_its_csrf_token_is_refused(box, ann):
    before = counts(box)
    page = compose(ann, {"to": BOB, "body": "x"}, csrf=False)
    assert page.status == 403
    assert counts(box) == before


def test_an_upload_past_the_limit_is_refused_and_nothing_is_sent(box, ann):
    before = counts(box)
    files = [("attachment", "big.bin", secrets.token_bytes(MAX_UPLOAD_SIZE + 1), "x/y")]
    page = compose(ann, {"to": BOB, "body": "x"}, files=files)
    assert page.status == 413
    assert counts(box) == before
    assert compose(ann, {"to": BOB, "body": "small one"}).status == 303  # the session goes on


def test_an_attachment_larger_than_a_form_may_be_goes_out(box, ann):
    """Attachments have their own limit, above the one of other forms."""
    data = secrets.token_bytes(MAX_REQUEST_SIZE + MAX_REQUEST_SIZE // 2)
    files = [("attachment", "photo.bin", data, "application/octet-stream")]
    assert compose(ann, {"to": BOB, "body": "a big one"}, files=files).status == 303
    with imaplib.IMAP4("127.0.0.1", box.imap_port) as imap:
        imap.login(BOB, PASSWORD)
        imap.select("INBOX", readonly=True)
        _, found = imap.search(None, "BODY", '"a big one"')
        [number] = found[0].split()
        _, fetched = imap.fetch(number, "(RFC822)")
    message = email.message_from_bytes(fetched[0][1], policy=email.policy.default)
    [attachment] = list(message.iter_attachments())
    assert attachment.get_content() == data


# -- replying and forwarding ---------------------------------------------------------------

ORIGINAL = f"""\
From: Carol Smith <carol@remote.test>
Reply-To: Plans list <plans@remote.test>
To: {ANN}, Bob <{BOB}>, dave@remote.test
Cc: erin@remote.test
Subject: Plans for =?utf-8?q?M=C3=A4rz?=
Date: Mon, 4 Mar 2024 10:00:00 +0000
Message-ID: <orig@remote.test>
References: <root@remote.test>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=utf-8

Shall we meet on Friday?
> an older quote

--b1
Content-Type: application/octet-stream
Content-Disposition: attachment; filename="agenda.bin"
Content-Transfer-Encoding: base64

AAECAwQF

--b1--
"""


@pytest.fixture
def original(box):
    """A message from outside in ann's INBOX: its "<mailbox id>:<uid>"."""
    deliver_from_outside(box, ORIGINAL, [ANN])
    return last_ref(box, ANN)


def test_reply_answers_the_reply_to_address_with_the_thread_fields(box, ann, original):
    page = ann.get(f"/mail/compose?reply={original}")
    assert page.status == 200
    assert shown(page, "to") == "Plans list <plans@remote.test>"
    assert shown(page, "cc") == ""
    assert shown(page, "subject") == "Re: Plans for März"
    assert shown(page, "in_reply_to") == "<orig@remote.test>"
    assert shown(page, "references") == "<root@remote.test> <orig@remote.test>"
    body = shown(page, "body")
    assert body.startswith("\n\nOn Mon, 04 Mar 2024 10:00:00 +0000, Carol Smith wrote:\n")
    assert "> Shall we meet on Friday?\n>> an older quote" in body
    assert "keep" not in form_fields(page)  # a reply carries no attachment

    before = counts(box)
    sent = compose(ann, {"to": BOB}, page=f"/mail/compose?reply={original}")
    assert sent.status == 303, sent.text[:500]
    [(_, raw)] = imap_messages(box, BOB)[before[0] :]
    message = parsed(raw)
    assert message["In-Reply-To"] == "<orig@remote.test>"
    assert message["References"] == "<root@remote.test> <orig@remote.test>"
    assert message["Subject"] == "Re: Plans for März"
    assert "\\Answered" in flags_of(box, original)


def test_reply_all_adds_the_other_recipients_but_not_oneself(box, ann, original):
    page = ann.get(f"/mail/compose?replyall={original}")
    assert page.status == 200
    assert shown(page, "to") == f"Plans list <plans@remote.test>, Bob <{BOB}>, dave@remote.test"
    assert shown(page, "cc") == "erin@remote.test"
    assert ANN not in shown(page, "to") + shown(page, "cc")


def test_forward_inline_quotes_the_header_block_and_keeps_the_attachments(box, ann, original):
    page = ann.get(f"/mail/compose?forward={original}")
    assert page.status == 200
    assert shown(page, "subject") == "Fwd: Plans for März"
    assert shown(page, "to") == "" and shown(page, "in_reply_to") == ""
    body = shown(page, "body")
    assert "-------- Forwarded message --------\nSubject: Plans for März\n" in body
    assert "From: Carol Smith <carol@remote.test>\n" in body
    assert "Shall we meet on Friday?" in body
    assert form_fields(page)["keep"] == [f"{original}/0"]
    assert "agenda.bin" in page.text

    before = counts(box)
    assert compose(ann, {"to": BOB}, page=f"/mail/compose?forward={original}").status == 303
    [(_, raw)] = imap_messages(box, BOB)[before[0] :]
    [part] = parsed(raw).iter_attachments()
    assert (part.get_filename(), part.get_content()) == ("agenda.bin", b"\x00\x01\x02\x03\x04\x05")
    assert "$Forwarded" in flags_of(box, original)


def test_forward_as_attachment_sends_the_original_octet_for_octet(box, ann, original):
    page_path = f"/mail/compose?forward={original}&as=attachment"
    page = ann.get(page_path)
    assert page.status == 200 and shown(page, "body") == ""
    assert form_fields(page)["keep"] == [f"{original}/message"]

    before = counts(box)
    assert compose(ann, {"to": BOB}, page=page_path).status == 303
    [(_, raw)] = imap_messages(box, BOB)[before[0] :]
    [part] = parsed(raw).iter_attachments()
    assert part.get_content_type() == "message/rfc822"
    assert part["Content-Transfer-Encoding"] == "7bit"  # RFC 2046 5.2.1
    assert part.get_filename() == "Plans for März.eml"
    assert stored(box, original) in raw
    assert dkim_verifies(box, raw)


def test_another_users_message_cannot_be_answered_or_attached(box, bob, original):
    for page in ("reply", "replyall", "forward", "draft"):
        assert bob.get(f"/mail/compose?{page}={original}").status == 404
    before = counts(box)
    opened = bob.get("/mail/compose")
    fields = [("csrf", opened.csrf()), ("from", BOB), ("to", BOB), ("action", "send")]
    body, headers = multipart([*fields, ("keep", f"{original}/message")])
    assert bob.post("/mail/compose", data=body, headers=headers).status == 404
    assert counts(box) == before
    assert bob.get("/mail/compose?reply=1:999999").status == 404
    assert bob.get("/mail/compose?reply=garbage").status == 404


# -- drafts ------------------------------------------------------------------------------------


def test_a_draft_is_saved_opened_again_replaced_and_sent(box, ann):
    drafts_before = len(imap_messages(box, ANN, "Drafts"))
    attachment = secrets.token_bytes(3000)
    page = compose(
        ann,
        {"to": BOB, "cc": FAR, "bcc": "", "subject": "Entwurf über", "body": "first\nlines\n"},
        files=[("attachment", "notes.bin", attachment, "application/octet-stream")],
        action="draft",
    )
    assert page.status == 303 and page.location.startswith("/mail/compose?draft="), page.text
    draft_page = page.location

    opened = ann.get(draft_page)
    assert opened.notices() == ["Draft saved."]
    assert (shown(opened, "to"), shown(opened, "cc")) == (BOB, FAR)
    assert shown(opened, "subject") == "Entwurf über"
    assert shown(opened, "body") == "first\nlines\n"
    assert shown(opened, "draft") == draft_page.rpartition("=")[2]
    [keep] = form_fields(opened)["keep"]
    assert "notes.bin" in opened.text
    [(flags, raw)] = imap_messages(box, ANN, "Drafts")[drafts_before:]
    assert "\\Draft" in flags and parsed(raw)["Subject"] == "Entwurf über"

    # Saved again: one draft, the new one.
    page = compose(ann, {"subject": "Entwurf zwei"}, page=draft_page, action="draft")
    assert page.status == 303
    draft_page = page.location
    drafts = imap_messages(box, ANN, "Drafts")[drafts_before:]
    assert [parsed(raw)["Subject"] for _, raw in drafts] == ["Entwurf zwei"]
    assert form_fields(ann.get(draft_page))["keep"] != [keep]  # now taken from the new draft

    # Sent: the draft is gone, and the attachment it kept arrives.
    before = counts(box)
    assert compose(ann, {"cc": ""}, page=draft_page).status == 303
    assert imap_messages(box, ANN, "Drafts")[drafts_before:] == []
    [(_, raw)] = imap_messages(box, BOB)[before[0] :]
    [part] = parsed(raw).iter_attachments()
    assert (part.get_filename(), part.get_content()) == ("notes.bin", attachment)
    assert parsed(raw)["Subject"] == "Entwurf zwei"


# -- address completion --------------------------------------------------------------------------


def test_contacts_suggest_the_people_one_has_written_to(box, ann, bob):
    page = compose(ann, {"to": "Zoë Zimmermann <zoe@remote.test>", "body": "hello Zoë"})
    assert page.status == 303, page.text[:500]
    found = ann.get("/mail/contacts?q=zim")
    assert found.status == 200 and found.headers["Content-Type"].startswith("application/json")
    assert found.headers["Cache-Control"] == "no-store"
    assert json.loads(found.body) == [
        {
            "name": "Zoë Zimmermann",
            "address": "zoe@remote.test",
            "label": "Zoë Zimmermann <zoe@remote.test>",
        }
    ]
    assert json.loads(ann.get("/mail/contacts?q=ZOE@").body)[0]["address"] == "zoe@remote.test"
    assert json.loads(ann.get("/mail/contacts?q=nobody-like-this").body) == []
    assert json.loads(bob.get("/mail/contacts?q=zim").body) == []  # ann's, not bob's
    assert ann.get("/static/compose.js").status == 200
    assert 'list="to-contacts"' in ann.get("/mail/compose").text


def test_the_pages_need_a_login(box):
    with Browser(box.https_url) as stranger:
        for path in ("/mail/compose", "/mail/contacts?q=bo"):
            page = stranger.get(path)
            assert (page.status, page.location) == (303, "/login"), path


# -- in a real browser ----------------------------------------------------------------------


def test_in_a_browser_a_file_is_sent_and_addresses_complete(box, tmp_path):
    """Chromium under the box's Content-Security-Policy: the form uploads a
    file, compose.js completes an address, and axe finds nothing serious."""
    missing = missing_parts()
    if missing:
        pytest.skip("browser tests need " + "; ".join(missing))
    from playwright.sync_api import sync_playwright

    upload = tmp_path / "Übersicht 2024.bin"
    upload.write_bytes(secrets.token_bytes(20_000))
    before = counts(box)
    # Its own Playwright, closed before the test reads mail: the sync API runs an
    # event loop that the other tests' HTTP client cannot share.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), timeout=LAUNCH_TIMEOUT_MS
        )
        try:
            with new_page(chromium, box.https_url, "desktop") as page:
                open_compose_as_ann(page)
                page.get_by_label("To", exact=True).fill(
                    f"Yannick Yellow <yannick@remote.test>, {BOB}"
                )
                page.get_by_label("Subject", exact=True).fill("Sent from chromium")
                page.get_by_label("Message", exact=True).fill("See the file.")
                page.get_by_label("Attach files", exact=True).set_input_files(upload)
                with page.expect_navigation():
                    page.get_by_role("button", name="Send", exact=True).click()
                assert page.get_by_role("status").filter(has_text="Message sent.").count() == 1
            for viewport in ("desktop", "phone"):
                with new_page(chromium, box.https_url, viewport) as page:
                    open_compose_as_ann(page)
                    page.get_by_label("To", exact=True).press_sequentially(f"{BOB}, yell")
                    option = page.locator("#to-contacts option").first
                    option.wait_for(state="attached")  # the page's CSP forbids eval
                    assert option.get_attribute("value") == (
                        f"{BOB}, Yannick Yellow <yannick@remote.test>, "
                    )
                    assert_accessible(page)
                    screenshot(page, f"webmail-compose-{viewport}")
        finally:
            chromium.close()
    [(_, raw)] = imap_messages(box, BOB)[before[0] :]
    [part] = parsed(raw).iter_attachments()
    assert (part.get_filename(), part.get_content()) == (upload.name, upload.read_bytes())


def open_compose_as_ann(page) -> None:
    """Log in as ann in chromium and open the compose page."""
    browser_log_in(page, ANN, PASSWORD)
    page.goto("/mail/compose")
