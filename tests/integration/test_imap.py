"""IMAP over real sockets with imaplib: what a mail client sees and relies on."""

import base64
import hashlib
import imaplib
import re
import smtplib
import socket
import ssl
import time

import pytest

from tests.conftest import PASSWORD

USER = "ann@example.test"
OTHER = "bob@example.test"

# imaplib refuses commands it has no entry for (RFC 2971 ID).
imaplib.Commands.setdefault("ID", ("NONAUTH", "AUTH", "SELECTED"))


def message(number: int, subject: str = "") -> bytes:
    return (
        f"From: Sender <sender@elsewhere.test>\r\nTo: {USER}\r\n"
        f"Subject: {subject or f'message {number}'}\r\n"
        f"Date: Tue, 03 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <m{number}@elsewhere.test>\r\n\r\n"
    ).encode() + b"".join(b"line %d of message %d\r\n" % (i, number) for i in range(20))


def deliver(app, count: int = 1, start: int = 0, to: str = USER) -> list[bytes]:
    with smtplib.SMTP(app.host, app.port) as client:
        for number in range(start, start + count):
            client.sendmail("sender@elsewhere.test", [to], message(number))
    return app.inbox(to)


def client_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connect(app, user: str = USER) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(app.host, app.imap_port, timeout=30)
    imap.login(user, PASSWORD)
    return imap


def ok(result) -> list:
    status, data = result
    assert status == "OK", data
    return data


def fetch_data(data: list) -> dict[bytes, bytes]:
    """Literal payloads of a FETCH answer, by the item that announced them."""
    out = {}
    for part in data:
        if isinstance(part, tuple):
            label = re.search(rb"([A-Z0-9.]+(?:\[[^\]]*\])?(?:<\d+>)?) \{\d+\}$", part[0])
            out[label[1]] = part[1]
    return out


def code(imap: imaplib.IMAP4, name: str) -> bytes:
    return imap.untagged_responses[name][-1]


def test_login_and_the_commands_of_any_state(appliance):
    imap = imaplib.IMAP4(appliance.host, appliance.imap_port, timeout=30)
    assert "IMAP4REV2" in imap.capabilities and "AUTH=PLAIN" in imap.capabilities
    ok(imap.noop())
    ok(imap.login(USER, PASSWORD))
    ok(imap.noop())
    assert ok(imap.capability())[0].startswith(b"IMAP4rev1 IMAP4rev2")
    assert ok(imap.namespace()) == [b'(("" "/")) NIL NIL']
    typ, data = imap._simple_command("ID", '("name" "imaplib")')
    assert typ == "OK"
    assert imap.untagged_responses.pop("ID") == [b'("name" "appliance")']
    assert imap.logout()[0] == "BYE"


def test_authenticate_plain(appliance):
    imap = imaplib.IMAP4(appliance.host, appliance.imap_port, timeout=30)
    typ, _ = imap.authenticate("PLAIN", lambda _: f"\0{USER}\0{PASSWORD}".encode())
    assert typ == "OK"
    ok(imap.select())
    imap.logout()


def test_wrong_password_and_bad_commands(appliance):
    imap = imaplib.IMAP4(appliance.host, appliance.imap_port, timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
        imap.login(USER, "wrong password")
    imap.login(USER, PASSWORD)
    with pytest.raises(imaplib.IMAP4.error, match="BAD.*Unknown command"):
        imap.xatom("FROBNICATE")
    imap.send(b"x1 FETCH 1 FLAGS\r\n")  # no mailbox selected
    assert imap.readline() == b"x1 BAD Command not valid in this state\r\n"
    imap.send(b"x2 LIST (unbalanced\r\n")
    assert imap.readline().startswith(b"x2 BAD ")
    ok(imap.select())
    with pytest.raises(imaplib.IMAP4.error, match="BAD"):
        imap.fetch("5", "(FLAGS)")  # no such message
    ok(imap.noop())
    imap.logout()


def test_login_needs_tls_where_plaintext_is_not_allowed(make_appliance):
    app = make_appliance(imap={"plaintext_login_on_loopback": False})
    app.start()
    imap = imaplib.IMAP4(app.host, app.imap_port, timeout=30)
    assert "LOGINDISABLED" in imap.capabilities and "STARTTLS" in imap.capabilities
    with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
        imap.login(USER, PASSWORD)
    imap.starttls(client_context())
    assert "AUTH=PLAIN" in imap.capabilities
    ok(imap.login(USER, PASSWORD))
    ok(imap.select())
    imap.logout()
    with imaplib.IMAP4_SSL(app.host, app.imaps_port, ssl_context=client_context()) as imaps:
        ok(imaps.login(USER, PASSWORD))
        ok(imaps.select())


def test_mailboxes_list_create_rename_delete_subscribe_status(appliance):
    imap = connect(appliance)
    listing = ok(imap.list())
    assert b'(\\HasNoChildren) "/" INBOX' in listing
    assert b'(\\HasNoChildren \\Sent) "/" Sent' in listing
    assert ok(imap.list('""', '""')) == [b'(\\Noselect) "/" ""']
    ok(imap.create("Projects/2026/Q1"))  # the parents come along
    names = [line.rsplit(b" ", 1)[1] for line in ok(imap.list('""', "Projects*"))]
    assert names == [b"Projects", b"Projects/2026", b"Projects/2026/Q1"]
    assert ok(imap.list("Projects/", "%")) == [b'(\\HasChildren) "/" Projects/2026']
    typ, data = imap.create("Projects")
    assert typ == "NO" and b"ALREADYEXISTS" in data[0]
    ok(imap.rename("Projects", "Work"))
    names = [line.rsplit(b" ", 1)[1] for line in ok(imap.list('""', "*"))]
    assert b"Work/2026/Q1" in names and b"Projects" not in names
    typ, data = imap.delete("INBOX")
    assert typ == "NO"
    ok(imap.delete("Work/2026/Q1"))
    typ, data = imap.delete("Nowhere")
    assert typ == "NO" and b"NONEXISTENT" in data[0]
    ok(imap.unsubscribe("Junk"))
    lsub = ok(imap.lsub())
    assert not any(line.endswith(b" Junk") for line in lsub)
    assert any(line.endswith(b" Trash") for line in lsub)
    ok(imap._simple_command("LIST", '""', '"*"', "RETURN", "(SUBSCRIBED)"))
    subscribed = imap.untagged_responses.pop("LIST")
    assert b'(\\HasNoChildren \\Subscribed \\Trash) "/" Trash' in subscribed
    assert b'(\\HasNoChildren \\Junk) "/" Junk' in subscribed
    ok(imap.subscribe("Junk"))

    stored = deliver(appliance, 3)
    ok(imap.select())
    ok(imap.store("1", "+FLAGS", "(\\Seen)"))
    ok(imap.store("2", "+FLAGS", "(\\Deleted)"))
    status = ok(
        imap.status("INBOX", "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN SIZE HIGHESTMODSEQ DELETED)")
    )[0]
    fields = dict(re.findall(rb"([A-Z]+) (\d+)", status))
    assert fields[b"MESSAGES"] == b"3" and fields[b"UIDNEXT"] == b"4"
    assert fields[b"UNSEEN"] == b"2" and fields[b"DELETED"] == b"1"
    assert int(fields[b"SIZE"]) == sum(map(len, stored))
    assert int(fields[b"UIDVALIDITY"]) > 0 and int(fields[b"HIGHESTMODSEQ"]) > 3
    imap.logout()


def test_select_and_fetch_what_was_delivered(appliance):
    stored = deliver(appliance, 2)
    imap = connect(appliance)
    assert ok(imap.select()) == [b"2"]
    assert imap.untagged_responses["FLAGS"][0].startswith(b"(\\Answered \\Flagged")
    uidvalidity = int(code(imap, "UIDVALIDITY"))
    assert code(imap, "UIDNEXT") == b"3"
    data = ok(imap.fetch("1:2", "(UID FLAGS RFC822.SIZE INTERNALDATE BODY.PEEK[])"))
    assert [fetch_data([part])[b"BODY[]"] for part in data if isinstance(part, tuple)] == stored
    assert b"RFC822.SIZE %d" % len(stored[0]) in data[0][0]
    assert re.search(
        rb'INTERNALDATE "\d\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"', data[0][0]
    )
    flags = ok(imap.fetch("1", "(FLAGS)"))
    assert b"\\Seen" not in flags[0]  # PEEK left it alone
    data = ok(imap.fetch("1", "(BODY[]<10.20>)"))
    assert data[0][1] == stored[0][10:30] and b"BODY[]<10>" in data[0][0]
    data = ok(imap.fetch("2", "(RFC822)"))
    assert data[0][1] == stored[1] and b"\\Seen" in b"".join(
        p[0] if isinstance(p, tuple) else p for p in data
    )
    data = ok(imap.uid("FETCH", "2", "(BINARY.PEEK[] FLAGS)"))
    assert data[0][1] == stored[1] and b"UID 2" in data[0][0]
    data = ok(imap.fetch("1", "(BODY[] FLAGS)"))  # not PEEK: \Seen, and FLAGS says so
    assert data[0][1] == stored[0]
    assert b"\\Seen" in b"".join(p[0] if isinstance(p, tuple) else p for p in data)
    imap.logout()

    imap = connect(appliance)  # flags persist
    ok(imap.select())
    flags = ok(imap.fetch("1:2", "(FLAGS)"))
    assert all(b"\\Seen" in line for line in flags)
    imap.logout()

    appliance.stop()
    appliance.start()
    imap = connect(appliance)
    ok(imap.select())
    assert int(code(imap, "UIDVALIDITY")) == uidvalidity
    assert ok(imap.uid("SEARCH", "ALL")) == [b"1 2"]
    imap.logout()


def test_fetch_structure_header_text_envelope(appliance):
    stored = deliver(appliance, 1)
    imap = connect(appliance)
    ok(imap.select(readonly=True))
    data = ok(
        imap.fetch("1", "(BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    )
    parts = fetch_data(data)
    head, _, text = stored[0].partition(b"\r\n\r\n")
    assert parts[b"BODY[HEADER]"] == head + b"\r\n\r\n"
    assert parts[b"BODY[TEXT]"] == text
    assert parts[b"BODY[HEADER.FIELDS (SUBJECT)]"] == b"Subject: message 0\r\n\r\n"
    data = ok(imap.fetch("1", "(ENVELOPE BODYSTRUCTURE)"))
    line = data[0] if isinstance(data[0], bytes) else data[0][0]
    assert b'"message 0"' in line and b'"<m0@elsewhere.test>"' in line
    assert b'(("Sender" NIL "sender" "elsewhere.test"))' in line
    assert b'BODYSTRUCTURE ("text" "plain"' in line
    assert b"\\Seen" not in b"".join(
        p if isinstance(p, bytes) else p[0] for p in ok(imap.fetch("1", "FLAGS"))
    )
    imap.logout()


def test_store_expunge_close_and_condstore(appliance):
    deliver(appliance, 4)
    imap = connect(appliance)
    ok(imap.select())
    data = ok(imap.store("1:2", "+FLAGS", "(\\Flagged $Work)"))
    assert all(b"\\Flagged $Work" in line for line in data)
    assert ok(imap.store("1", "-FLAGS.SILENT", "($Work)")) == [None]
    data = ok(imap.store("2", "FLAGS", "(\\Deleted)"))
    assert b"FLAGS (\\Deleted)" in data[0]
    data = ok(imap.fetch("1:4", "(FLAGS)"))
    assert data[0] == b"1 (FLAGS (\\Flagged))"
    # CONDSTORE: a STORE against a stale modseq is refused with MODIFIED.
    line = ok(imap.fetch("3", "(MODSEQ)"))[0]
    modseq = int(re.search(rb"MODSEQ \((\d+)\)", line)[1])
    ok(imap.store("3", "+FLAGS", "(\\Answered)"))
    typ, data = imap._simple_command(
        "STORE", "3", f"(UNCHANGEDSINCE {modseq})", "+FLAGS", "(\\Seen)"
    )
    assert typ == "OK" and b"[MODIFIED 3]" in data[0]
    typ, data = imap.expunge()
    assert data == [b"2"]
    assert ok(imap.search(None, "ALL")) == [b"1 2 3"]
    ok(imap.store("1", "+FLAGS", "(\\Deleted)"))
    ok(imap.close())
    ok(imap.select())
    assert ok(imap.uid("SEARCH", "ALL")) == [b"3 4"]
    ok(imap.uid("STORE", "4", "+FLAGS", "(\\Deleted)"))
    ok(imap.uid("STORE", "3", "+FLAGS", "(\\Deleted)"))
    ok(imap.uid("EXPUNGE", "4"))
    assert ok(imap.uid("SEARCH", "ALL")) == [b"3"]
    ok(imap.unselect())
    imap.logout()


def test_copy_move_append_with_uidplus(appliance):
    stored = deliver(appliance, 3)
    imap = connect(appliance)
    ok(imap.select("Archive"))
    archive_validity = int(code(imap, "UIDVALIDITY"))
    ok(imap.select())
    typ, data = imap.copy("1:2", "Archive")
    assert typ == "OK"
    assert data[0].startswith(b"[COPYUID %d 1:2 1:2]" % archive_validity)
    typ, data = imap.uid("MOVE", "3", "Archive")
    assert typ == "OK"
    assert imap.untagged_responses.get("EXPUNGE") == [b"3"]
    assert code(imap, "OK").startswith(b"[COPYUID %d 3 3]" % archive_validity)
    typ, data = imap.copy("1", "Nowhere")
    assert typ == "NO" and b"TRYCREATE" in data[0]
    assert appliance.inbox(USER, "Archive") == stored

    draft = b"From: ann@example.test\r\nSubject: draft\r\n\r\nnot yet\r\n"
    when = imaplib.Time2Internaldate(1_700_000_000)
    typ, data = imap.append("Drafts", "(\\Draft \\Seen)", when, draft)
    assert typ == "OK"
    ok(imap.select("Drafts"))
    validity = int(code(imap, "UIDVALIDITY"))
    assert data[0].startswith(b"[APPENDUID %d 1]" % validity)
    data = ok(imap.fetch("1", "(FLAGS INTERNALDATE BODY.PEEK[])"))
    assert data[0][1] == draft
    assert b"\\Draft" in data[0][0] and b"14-Nov-2023 22:13:20 +0000" in data[0][0]
    assert appliance.inbox(USER, "Drafts") == [draft]
    typ, data = imap.append("Nowhere", None, None, draft)
    assert typ == "NO" and b"TRYCREATE" in data[0]
    imap.logout()


def test_two_sessions_see_each_others_changes(appliance):
    deliver(appliance, 2)
    one, two = connect(appliance), connect(appliance)
    ok(one.select())
    ok(two.select())
    two.untagged_responses.clear()
    deliver(appliance, 1, start=2)
    ok(two.noop())
    assert two.untagged_responses.pop("EXISTS") == [b"3"]
    ok(one.store("1", "+FLAGS", "(\\Flagged)"))
    ok(two.noop())
    assert two.untagged_responses.pop("FETCH") == [b"1 (FLAGS (\\Flagged) UID 1)"]
    ok(one.store("2", "+FLAGS", "(\\Deleted)"))
    ok(one.expunge())
    # Not during FETCH: the message keeps its number there ...
    data = ok(two.fetch("3", "(UID)"))
    assert data == [b"3 (UID 3)"] and "EXPUNGE" not in two.untagged_responses
    two.untagged_responses.pop("FETCH", None)
    # ... and the EXPUNGE comes with the next command that allows it.
    ok(two.noop())
    assert two.untagged_responses.pop("EXPUNGE") == [b"2"]
    assert ok(two.search(None, "ALL")) == [b"1 2"]
    one.logout()
    two.logout()


def test_idle_is_told_of_a_delivery_within_a_second(appliance):
    deliver(appliance, 1)
    imap = connect(appliance)
    ok(imap.select())
    sock = imap.socket()
    tag = imap._new_tag().decode()
    sock.sendall(f"{tag} IDLE\r\n".encode())
    assert imap.readline().startswith(b"+ ")
    sent = time.monotonic()
    deliver(appliance, 1, start=1)
    sock.settimeout(5)
    line = imap.readline()
    assert line == b"* 2 EXISTS\r\n"
    assert time.monotonic() - sent < 1.0 + 0.5  # the delivery itself takes a moment
    sock.sendall(b"DONE\r\n")
    assert imap.readline() == f"{tag} OK IDLE terminated\r\n".encode()
    ok(imap.noop())
    imap.logout()


def test_search_keys_and_esearch(appliance):
    deliver(appliance, 5)
    imap = connect(appliance)
    ok(imap.select())
    ok(imap.store("2,4", "+FLAGS", "(\\Seen)"))
    ok(imap.store("5", "+FLAGS", "(\\Flagged $Later)"))
    assert ok(imap.search(None, "UNSEEN")) == [b"1 3 5"]
    assert ok(imap.search(None, "SEEN")) == [b"2 4"]
    assert ok(imap.search(None, "OR", "FLAGGED", "SEEN")) == [b"2 4 5"]
    assert ok(imap.search(None, "NOT", "SEEN", "UNFLAGGED")) == [b"1 3"]
    assert ok(imap.search(None, "KEYWORD", "$Later")) == [b"5"]
    assert ok(imap.search(None, "2:3")) == [b"2 3"]
    assert ok(imap.uid("SEARCH", "UID", "4:*")) == [b"4 5"]
    assert ok(imap.search(None, "LARGER", "10", "SMALLER", "100000")) == [b"1 2 3 4 5"]
    assert ok(imap.search(None, "SINCE", "1-Jan-2020")) == [b"1 2 3 4 5"]
    assert ok(imap.search(None, "BEFORE", "1-Jan-2020")) == [b""]
    assert ok(imap.search(None, "SUBJECT", '"message 3"')) == [b"4"]
    assert ok(imap.search(None, "BODY", '"line 7 of message 1"')) == [b"2"]
    typ, data = imap._simple_command("SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "UNSEEN")
    assert typ == "OK"
    esearch = imap.untagged_responses.pop("ESEARCH")[0]
    assert esearch.endswith(b"MIN 1 MAX 5 COUNT 3 ALL 1,3,5")
    imap.logout()


def test_a_closed_connection_mid_command_is_harmless(appliance):
    with socket.create_connection((appliance.host, appliance.imap_port), timeout=10) as s:
        assert s.recv(1000).startswith(b"* OK")
        s.sendall(b"a LOGIN ann@example.test {100}\r\n")
        assert s.recv(1000).startswith(b"+")
    imap = connect(appliance)
    ok(imap.noop())
    imap.logout()


def test_qresync_gets_vanished_instead_of_expunge(appliance):
    deliver(appliance, 3)
    one, two = connect(appliance), connect(appliance)
    ok(one.enable("QRESYNC"))
    ok(one.select())
    validity = int(code(one, "UIDVALIDITY"))
    modseq = int(code(one, "HIGHESTMODSEQ"))
    ok(two.select())
    ok(two.store("2", "+FLAGS", "(\\Deleted)"))
    ok(two.store("3", "+FLAGS", "(\\Flagged)"))
    ok(two.expunge())
    one.untagged_responses.clear()
    ok(one.noop())
    assert one.untagged_responses.pop("VANISHED") == [b"2"]
    assert "EXPUNGE" not in one.untagged_responses
    one.logout()

    again = connect(appliance)
    ok(again.enable("QRESYNC"))
    typ, _ = again._simple_command("SELECT", "INBOX", f"(QRESYNC ({validity} {modseq} 1:3))")
    assert typ == "OK"
    assert again.untagged_responses.pop("VANISHED") == [b"(EARLIER) 2"]
    fetched = again.untagged_responses.pop("FETCH")
    assert len(fetched) == 1 and fetched[0].startswith(b"2 (FLAGS (\\Flagged) UID 3 MODSEQ (")
    again.logout()
    two.logout()


def test_list_shows_a_level_whose_mailbox_was_deleted(appliance):
    imap = connect(appliance)
    ok(imap.create("Lists/python"))
    ok(imap.delete("Lists"))
    assert ok(imap.list('""', "%")).count(b'(\\Noselect \\HasChildren) "/" Lists') == 1
    assert ok(imap.list('""', "Lists/%")) == [b'(\\HasNoChildren) "/" Lists/python']
    imap.logout()


def test_a_large_message_arrives_whole_and_in_parts(appliance):
    body = b"".join(b"%07d 0123456789abcdefghijklmnopqrstuvwxyz\r\n" % i for i in range(80_000))
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.sendmail("sender@elsewhere.test", [USER], b"Subject: big\r\n\r\n" + body)
    stored = appliance.inbox(USER)
    assert len(stored[0]) > 3_000_000
    imap = connect(appliance)
    ok(imap.select())
    assert ok(imap.fetch("1", "(BODY.PEEK[])"))[0][1] == stored[0]
    assert ok(imap.fetch("1", "(BODY.PEEK[TEXT]<1000000.5000>)"))[0][1] == body[1_000_000:1_005_000]
    imap.logout()


def test_imap4rev2_special_use_and_list_status(appliance):
    deliver(appliance, 2)
    imap = connect(appliance)
    ok(imap.enable("IMAP4rev2"))
    typ, _ = imap._simple_command("CREATE", "Receipts", "(USE (\\Archive))")
    assert typ == "OK"
    typ, _ = imap._simple_command(
        "LIST", '""', '"*"', "RETURN", "(SPECIAL-USE STATUS (MESSAGES UNSEEN))"
    )
    assert typ == "OK"
    listing = imap.untagged_responses.pop("LIST")
    assert b'(\\HasNoChildren \\Archive) "/" Receipts' in listing
    assert b"INBOX (MESSAGES 2 UNSEEN 2)" in imap.untagged_responses.pop("STATUS")
    ok(imap.select())
    assert "RECENT" not in imap.untagged_responses
    assert imap.untagged_responses["LIST"][-1] == b'() "/" INBOX'
    typ, _ = imap._simple_command("SEARCH", "ALL")
    assert typ == "OK"
    assert imap.untagged_responses.pop("ESEARCH")[0].endswith(b"ALL 1:2")
    imap.logout()


def test_an_idling_client_is_told_goodbye_at_shutdown(appliance):
    imap = connect(appliance)
    ok(imap.select())
    tag = imap._new_tag().decode()
    imap.send(f"{tag} IDLE\r\n".encode())
    assert imap.readline().startswith(b"+ ")
    started = time.monotonic()
    assert appliance.stop() == 0
    assert time.monotonic() - started < 5
    assert imap.readline().startswith(b"* BYE")
    appliance.start()  # for the fixture's own stop


def _rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def test_a_50_mb_message_is_fetched_in_under_10_mb_of_memory(appliance):
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-=\r\n"
    body = b"Subject: huge\r\n\r\n" + line * (50_000_000 // len(line))
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.sendmail("sender@elsewhere.test", [USER], body)
    pid = appliance.process.pid
    imap = connect(appliance)
    ok(imap.select())
    time.sleep(0.5)  # the delivery's buffers are freed
    rss_before, heap_before = _rss_kib(pid), _rss_kib(pid, "RssAnon")
    heap_peak = heap_before
    imap.send(b"a1 FETCH 1 (BODY.PEEK[])\r\n")
    header = imap.readline()
    size = int(re.search(rb"\{(\d+)\}\r\n$", header).group(1))
    received, digest = 0, hashlib.sha256()
    while received < size:
        chunk = imap.read(min(1 << 20, size - received))
        assert chunk, "the connection closed mid-literal"
        digest.update(chunk)
        received += len(chunk)
        heap_peak = max(heap_peak, _rss_kib(pid, "RssAnon"))
    assert imap.readline() == b")\r\n"
    assert imap.readline().startswith(b"a1 OK")
    rss_after = _rss_kib(pid)
    imap.logout()
    assert size > 50_000_000
    assert digest.digest() == hashlib.sha256(appliance.inbox(USER)[0]).digest()
    # Never copied into the heap: it grows by a few read chunks at most.
    assert heap_peak - heap_before < 10 * 1024, f"heap grew by {heap_peak - heap_before} KiB"
    # The map's pages that were read are file-backed, and unmapped as the
    # literal goes out (how many are mapped at once in between depends on
    # the kernel's fault-around); afterwards the process is no bigger.
    assert rss_after - rss_before < 10 * 1024, f"RSS grew by {rss_after - rss_before} KiB"


def test_search_decodes_words_transfer_encodings_and_charsets(appliance):
    encoded = (
        b"From: =?utf-8?q?Ren=C3=A9e?= <renee@elsewhere.test>\r\n"
        b"Subject: =?utf-8?q?Caf=C3=A9_cr=C3=A8me?=\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes("Grüße aus Köln, hidden-word inside.\r\n".encode()).replace(
            b"\n", b"\r\n"
        )
    )
    latin = (
        b"Subject: plain\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\nna=EFve soft=\r\nbreak\r\n"
    )
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        client.sendmail("a@elsewhere.test", [USER], encoded)
        client.sendmail("a@elsewhere.test", [USER], latin)
    imap = connect(appliance)
    ok(imap.select())

    def search(*criteria: str | bytes) -> bytes:
        return ok(imap.search("UTF-8", *criteria))[0]

    assert search("SUBJECT", '"cafe creme"') == b"1"
    imap.literal = "Café".encode()
    assert search("SUBJECT") == b"1"
    assert search("FROM", "renee") == b"1"
    assert search("BODY", "hidden-word") == b"1"
    imap.literal = "GRÜSSE".encode()
    assert search("BODY") == b"1"
    assert search("BODY", "naive") == b"2"
    assert search("BODY", "softbreak") == b"2"
    assert search("BODY", "Subject") == b""  # BODY matches no header field
    assert search("TEXT", "subject") == b"1 2"
    # The trace fields that delivery put in front are part of the message.
    assert search("HEADER", "Received", "mail.example.test") == b"1 2"
    assert search("TEXT", "mail.example.test") == b"1 2"
    imap.logout()
