"""The IMAP server as two more real clients see it: curl and the imapclient library.

test_imap.py proves each command with imaplib. Here clients written by others,
with their own parsers and habits, do what their users do, and the test checks
what those users would see: the bytes that arrived, the exit codes, the values
the library hands back.
"""

import imaplib
import re
import shutil
import smtplib
import ssl
import subprocess
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from imapclient import IMAPClient
from imapclient.exceptions import LoginError
from imapclient.response_parser import parse_response

from appliance.tls import self_signed_paths
from tests.conftest import PASSWORD, Appliance

USER = "ann@example.test"
# The name in the appliance's self-signed certificate (conftest's hostname).
HOSTNAME = "mail.example.test"
# curl's exit codes (libcurl-errors(3)).
CURLE_PEER_FAILED_VERIFICATION = 60
CURLE_LOGIN_DENIED = 67
# Extensions that clients look for after login, each named in RFC 9051 or its own RFC.
EXTENSIONS = (
    "IMAP4rev1",
    "IMAP4rev2",
    "IDLE",  # RFC 2177
    "UIDPLUS",  # RFC 4315
    "MOVE",  # RFC 6851
    "CONDSTORE",  # RFC 7162
    "QRESYNC",  # RFC 7162
    "SPECIAL-USE",  # RFC 6154
    "NAMESPACE",  # RFC 2342
    "ID",  # RFC 2971
    "ENABLE",  # RFC 5161
    "LITERAL+",  # RFC 7888
    "SASL-IR",  # RFC 4959
    "UNSELECT",  # RFC 3691
    "ESEARCH",  # RFC 4731
    "LIST-EXTENDED",  # RFC 5258
    "LIST-STATUS",  # RFC 5819
    "APPENDLIMIT",  # RFC 7889, with or without =<limit>
    "STATUS=SIZE",  # RFC 8438
)

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One appliance for the module: each test works in a mailbox of its own."""
    app = Appliance(data=tmp_path_factory.mktemp("imap-clients"))
    assert app.cli("domain", "add", "example.test").returncode == 0
    app.add_user(USER)
    app.start()
    yield app
    assert app.stop() == 0, app.log()


def message(subject: str, lines: int = 5) -> bytes:
    """A message with an 8-bit body and a line that SMTP would have dot-stuffed."""
    head = (
        f"From: Sender <sender@elsewhere.test>\r\nTo: {USER}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@elsewhere.test>\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    body = "".join(f"line {i} of {subject}, Grüße\r\n" for i in range(lines))
    return (head + body + ".\r\n.. the end\r\n").encode()


def tls_context(app) -> ssl.SSLContext:
    """Trusts the appliance's certificate and nothing else; 127.0.0.1 is not its name."""
    context = ssl.create_default_context(cafile=str(self_signed_paths(app.data)[0]))
    context.check_hostname = False
    return context


def session(app, folder: str | None = None) -> IMAPClient:
    client = IMAPClient(app.host, port=app.imap_port, ssl=False, timeout=30)
    client.login(USER, PASSWORD)
    if folder is not None:
        client.create_folder(folder)
    return client


def response_code(client: IMAPClient, name: str) -> bytes:
    """The latest [NAME ...] response code, which imapclient leaves with imaplib.

    imapclient's copy() and move() return None: they go through imaplib's
    uid(), which returns untagged FETCH data and keeps response codes aside.
    """
    return client._imap.untagged_responses.pop(name)[-1]


def fetch_bytes(client: IMAPClient, uids: list[int]) -> list[bytes]:
    fetched = client.fetch(uids, ["BODY.PEEK[]"])
    return [fetched[uid][b"BODY[]"] for uid in uids]


def deliver(app, data: bytes) -> None:
    with smtplib.SMTP(app.host, app.port, timeout=30) as client:
        client.sendmail("sender@elsewhere.test", [USER], data)


# -- curl ---------------------------------------------------------------------------------


def curl(*args: str, password: str = PASSWORD) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "30"]
        + ["--user", f"{USER}:{password}", *args],
        capture_output=True,
        timeout=60,
    )


def stored(app, folder: str, uid: int) -> bytes:
    """The message as imaplib reads it, without setting \\Seen."""
    imap = imaplib.IMAP4(app.host, app.imap_port, timeout=30)
    try:
        imap.login(USER, PASSWORD)
        imap.select(folder, readonly=True)
        typ, data = imap.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert typ == "OK" and isinstance(data[0], tuple), data
        return data[0][1]
    finally:
        imap.logout()


@pytest.fixture(scope="module")
def curl_folder(server) -> tuple[str, list[int]]:
    """A mailbox whose UIDs and sequence numbers differ: message 1 has UID 2."""
    client = session(server, "Curl")
    for number in range(3):
        client.append("Curl", message(f"for curl {number}"))
    client.select_folder("Curl")
    client.delete_messages([1])
    client.expunge()
    uids = client.search()
    client.logout()
    assert uids == [2, 3]
    return "Curl", uids


@needs_curl
def test_curl_fetches_by_uid_and_by_index_byte_exact(server, curl_folder):
    folder, (first, second) = curl_folder
    base = f"imap://{server.host}:{server.imap_port}/{folder}"
    expected = stored(server, folder, second)
    assert expected == message("for curl 2")
    by_uid = curl(f"{base};UID={second}")
    assert by_uid.returncode == 0, by_uid.stderr
    assert by_uid.stdout == expected
    by_index = curl(f"{base};MAILINDEX=1")
    assert by_index.returncode == 0, by_index.stderr
    assert by_index.stdout == stored(server, folder, first)
    text = curl(f"{base};UID={second}/;SECTION=TEXT")
    assert text.returncode == 0, text.stderr
    assert text.stdout == expected.partition(b"\r\n\r\n")[2]
    # curl asks for BODY[], not BODY.PEEK[]: the message now reads as seen (RFC 9051 6.4.5).
    client = session(server)
    assert client.folder_status(folder, ["UNSEEN"])[b"UNSEEN"] == 0
    client.logout()


@needs_curl
def test_curl_lists_mailboxes(server, curl_folder):
    listing = curl(f"imap://{server.host}:{server.imap_port}/")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert b'* LIST (\\HasNoChildren) "/" INBOX' in lines
    assert b'* LIST (\\HasNoChildren \\Sent) "/" Sent' in lines
    assert b'* LIST (\\HasNoChildren) "/" Curl' in lines


@needs_curl
def test_curl_over_tls_verifies_the_certificate(server, curl_folder):
    folder, (_, uid) = curl_folder
    expected = stored(server, folder, uid)
    pinned = ["--cacert", str(self_signed_paths(server.data)[0])]
    for scheme, port, extra in (
        ("imaps", server.imaps_port, []),
        ("imap", server.imap_port, ["--ssl-reqd"]),  # STARTTLS, or fail
    ):
        by_name = [*pinned, "--resolve", f"{HOSTNAME}:{port}:{server.host}"]
        result = curl(*extra, *by_name, f"{scheme}://{HOSTNAME}:{port}/{folder};UID={uid}")
        assert result.returncode == 0, (scheme, result.stderr)
        assert result.stdout == expected
    # The checks above verify something: without the pin the certificate is refused.
    unpinned = curl(f"imaps://{server.host}:{server.imaps_port}/{folder};UID={uid}")
    assert unpinned.returncode == CURLE_PEER_FAILED_VERIFICATION, unpinned.stderr
    insecure = curl("--insecure", f"imaps://{server.host}:{server.imaps_port}/{folder};UID={uid}")
    assert insecure.returncode == 0, insecure.stderr
    assert insecure.stdout == expected


@needs_curl
def test_curl_with_a_wrong_password_is_denied(server):
    result = curl(f"imap://{server.host}:{server.imap_port}/INBOX", password="wrong password")
    assert result.returncode == CURLE_LOGIN_DENIED, result.stderr
    assert result.stdout == b""
    # The next attempt with the right password waits out the failure delay and succeeds.
    result = curl(f"imap://{server.host}:{server.imap_port}/")
    assert result.returncode == 0, result.stderr


# -- imapclient ---------------------------------------------------------------------------


def test_imapclient_sees_every_extension_it_may_use(server):
    client = IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=30)
    before = set(client.capabilities())
    assert {b"AUTH=PLAIN", b"SASL-IR", b"STARTTLS"} <= before
    client.login(USER, PASSWORD)
    after = {c.split(b"=")[0] if c.startswith(b"APPENDLIMIT") else c for c in client.capabilities()}
    missing = [name for name in EXTENSIONS if name.upper().encode() not in after]
    assert missing == [], f"CAPABILITY after login lacks {missing}"
    client.logout()


def test_imapclient_enable_and_fetch_changedsince(server):
    client = session(server, "Condstore")
    assert client.enable("CONDSTORE", "X-NO-SUCH-EXTENSION") == [b"CONDSTORE"]
    assert client.enable("QRESYNC") == [b"QRESYNC"]
    for number in range(4):
        client.append("Condstore", message(f"condstore {number}"))
    selected = client.select_folder("Condstore")
    assert selected[b"EXISTS"] == 4
    since = selected[b"HIGHESTMODSEQ"]  # RFC 7162 3.1.2.1, now that CONDSTORE is on
    assert since > 0
    client.add_flags([2], [b"\\Flagged"])
    client.add_flags([4], [b"$Important"])
    client.delete_messages([3])
    client.expunge()
    # RFC 7162 3.1.4.1: only what changed since, each with its MODSEQ; with
    # VANISHED (3.2.6) also the UIDs expunged since.
    modifiers = [f"CHANGEDSINCE {since}", "VANISHED"]
    changed = client.fetch([1, 2, 3, 4], ["FLAGS"], modifiers=modifiers)
    assert sorted(changed) == [2, 4]
    assert changed[2][b"FLAGS"] == (b"\\Flagged",) and changed[4][b"FLAGS"] == (b"$Important",)
    assert all(item[b"MODSEQ"][0] > since for item in changed.values())
    assert client._imap.untagged_responses.pop("VANISHED")[-1] == b"(EARLIER) 3"
    status = client.folder_status("Condstore", ["HIGHESTMODSEQ"])
    assert status[b"HIGHESTMODSEQ"] >= max(item[b"MODSEQ"][0] for item in changed.values())
    client.logout()


def test_imapclient_folder_status_counts_size(server):
    client = session(server, "Sizes")
    messages = [message(f"size {number}", lines=10 * number) for number in range(3)]
    for data in messages:
        client.append("Sizes", data, flags=[b"\\Seen"] if len(data) > 500 else [])
    status = client.folder_status("Sizes", ["MESSAGES", "SIZE", "UNSEEN", "UIDNEXT"])
    assert status == {
        b"MESSAGES": 3,
        b"SIZE": sum(map(len, messages)),
        b"UNSEEN": sum(1 for data in messages if len(data) <= 500),
        b"UIDNEXT": 4,
    }
    client.logout()


def test_imapclient_lists_folders_with_their_special_use(server):
    client = session(server, "Projects/2026")
    listing = client.list_folders()
    assert {delimiter for _, delimiter, _ in listing} == {b"/"}
    folders = {name: set(flags) for flags, _, name in listing}
    for name, use in (
        ("Sent", b"\\Sent"),
        ("Drafts", b"\\Drafts"),
        ("Trash", b"\\Trash"),
        ("Junk", b"\\Junk"),
        ("Archive", b"\\Archive"),
    ):
        assert use in folders[name], (name, folders[name])
        assert client.find_special_folder(use) == name
    assert b"\\HasChildren" in folders["Projects"]
    assert b"\\HasNoChildren" in folders["Projects/2026"]
    assert [name for _, _, name in client.list_folders("Projects/", "%")] == ["Projects/2026"]
    client.logout()


def test_imapclient_namespace_and_id(server):
    client = session(server)
    namespace = client.namespace()
    assert namespace.personal == (("", "/"),)
    assert namespace.other is None and namespace.shared is None
    answer = dict(client.id_({"name": "imapclient"}))
    assert answer[b"name"] == b"appliance"
    client.logout()


def test_imapclient_append_returns_appenduid(server):
    client = session(server, "Appended")
    sent = datetime(2026, 3, 1, 12, 30, tzinfo=timezone(timedelta(hours=2)))
    data = message("appended")
    answer = client.append("Appended", data, flags=[b"\\Draft", b"$Later"], msg_time=sent)
    uidvalidity, uid = map(int, re.match(rb"\[APPENDUID (\d+) (\d+)\]", answer).groups())
    selected = client.select_folder("Appended")
    assert selected[b"UIDVALIDITY"] == uidvalidity and uid == 1
    fetched = client.fetch([uid], ["FLAGS", "INTERNALDATE", "BODY.PEEK[]"])[uid]
    assert fetched[b"BODY[]"] == data
    assert set(fetched[b"FLAGS"]) == {b"\\Draft", b"$Later"}
    assert fetched[b"INTERNALDATE"].astimezone(UTC) == sent.astimezone(UTC)
    client.logout()


def test_imapclient_multiappend_returns_all_uids(server):
    client = session(server, "Multi")
    uidvalidity = client.folder_status("Multi", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    messages = [message(f"multiappend {number}") for number in range(3)]
    # imapclient writes two spaces between the messages of its MULTIAPPEND
    # where RFC 3502's grammar has one. Dovecot 2.3 accepts that, so its users
    # expect it to work.
    typ, data = client.multiappend("Multi", messages)
    assert typ == "OK" and data[0].startswith(b"[APPENDUID %d 1:3]" % uidvalidity), data
    client.select_folder("Multi")
    assert fetch_bytes(client, [1, 2, 3]) == messages
    client.logout()


def test_imapclient_copy_and_move_report_copyuid(server):
    client = session(server, "Source")
    client.create_folder("Target")
    messages = [message(f"to copy {number}") for number in range(4)]
    for data in messages:
        client.append("Source", data)
    target_validity = client.folder_status("Target", ["UIDVALIDITY"])[b"UIDVALIDITY"]
    client.select_folder("Source")
    client.copy([1, 2], "Target")
    assert response_code(client, "COPYUID") == b"%d 1:2 1:2" % target_validity
    client.move([3, 4], "Target")
    assert response_code(client, "COPYUID") == b"%d 3:4 3:4" % target_validity
    assert client.search() == [1, 2]  # the moved ones left the source
    client.select_folder("Target", readonly=True)
    assert fetch_bytes(client, [1, 2, 3, 4]) == messages
    client.logout()


def test_imapclient_idle_hears_of_a_delivery_within_a_second(server):
    client = session(server)
    exists = client.select_folder("INBOX")[b"EXISTS"]
    client.idle()
    deliver(server, message("while idling"))
    delivered = time.monotonic()
    responses = client.idle_check(timeout=1.0)
    waited = time.monotonic() - delivered
    client.idle_done()
    assert (exists + 1, b"EXISTS") in responses, responses
    assert waited < 1.0
    client.logout()


def test_imapclient_search_and_esearch(server):
    client = session(server, "Searched")
    for number in range(6):  # the odd ones read
        flags = [b"\\Seen"] if number % 2 else []
        client.append("Searched", message(f"search {number}"), flags=flags)
    client.select_folder("Searched")
    assert client.search(["UNSEEN"]) == [1, 3, 5]
    assert client.search(["BODY", "Grüße", "SUBJECT", "search 4"], charset="UTF-8") == [5]
    # imapclient has no ESEARCH method; its generic command path sends one
    # (RFC 4731) and its own parser reads the answer.
    for uid in (False, True):
        data = client._raw_command_untagged(
            b"SEARCH",
            [b"RETURN", b"(MIN MAX COUNT ALL)", b"UNSEEN"],
            response_name="ESEARCH",
            uid=uid,
        )
        answer = parse_response(data)
        assert answer[0][0] == b"TAG" and (answer[1] == b"UID") == uid, answer
        assert answer[-8:] == (b"MIN", 1, b"MAX", 5, b"COUNT", 3, b"ALL", b"1,3,5"), answer
    client.logout()


def test_imapclient_unselect_keeps_deleted_messages(server):
    client = session(server, "Unselected")
    for number in range(3):
        client.append("Unselected", message(f"unselect {number}"))
    client.select_folder("Unselected")
    client.delete_messages([2])
    assert client.unselect_folder() == b"UNSELECT completed"
    # RFC 3691: unlike CLOSE, UNSELECT expunges nothing.
    status = client.folder_status("Unselected", ["MESSAGES", "DELETED"])
    assert status == {b"MESSAGES": 3, b"DELETED": 1}
    client.select_folder("Unselected")
    client.close_folder()
    assert client.folder_status("Unselected", ["MESSAGES"])[b"MESSAGES"] == 2
    client.logout()


def test_imapclient_login_with_a_wrong_password_fails(server):
    client = IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=30)
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        client.login(USER, "wrong password")
    with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
        client.plain_login(USER, "wrong password")
    client.login(USER, PASSWORD)  # after the failure delay, the right one works
    assert b"READ-ONLY" in client.select_folder("INBOX", readonly=True)
    client.logout()


def test_imapclient_authenticate_plain_over_tls(server):
    with IMAPClient(
        server.host, port=server.imaps_port, ssl=True, ssl_context=tls_context(server), timeout=30
    ) as client:
        answer = client.plain_login(USER, PASSWORD)
        assert b"AUTH=PLAIN" not in answer and answer.endswith(b"Logged in")
        assert "INBOX" in [name for _, _, name in client.list_folders()]
    client = IMAPClient(server.host, port=server.imap_port, ssl=False, timeout=30)
    client.starttls(tls_context(server))
    assert b"STARTTLS" not in client.capabilities()
    client.plain_login(USER, PASSWORD)
    assert "INBOX" in [name for _, _, name in client.list_folders()]
    client.logout()
