"""One INBOX, two protocols: what POP3 deletes IMAP sees expunged, and the reverse."""

import imaplib
import poplib
import re

import pytest

from tests.conftest import PASSWORD
from tests.integration.test_pop3 import USER, deliver, login


def imap_login(app) -> imaplib.IMAP4:
    imap = imaplib.IMAP4(app.host, app.imap_port, timeout=30)
    imap.login(USER, PASSWORD)
    imap.select("INBOX")
    return imap


def imap_uids(imap) -> list[int]:
    _, data = imap.uid("SEARCH", "ALL")
    return [int(uid) for uid in data[0].split()]


def test_pop3_deletions_reach_imap_and_imap_expunges_do_not_break_pop3(appliance):
    stored = deliver(appliance, 4)
    imap = imap_login(appliance)
    _, data = imap.status("INBOX", "(UIDVALIDITY)")
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", data[0]).group(1))

    # UIDLs agree with IMAP's UIDs and UIDVALIDITY.
    pop = login(appliance)
    _, listing, _ = pop.uidl()
    assert [line.split()[1] for line in listing] == [
        b"%08X%08X" % (uid, uidvalidity) for uid in imap_uids(imap)
    ]
    # POP3 deletes message 1; IMAP is told at its next command.
    pop.dele(1)
    assert pop.quit().startswith(b"+OK")
    imap.noop()
    assert imap.untagged_responses.pop("EXPUNGE", None) == [b"1"]
    assert imap_uids(imap) == [2, 3, 4]

    # IMAP expunges a message that a new POP3 session holds in its maildrop.
    pop = login(appliance)
    assert pop.stat()[0] == 3
    imap.store("1", "+FLAGS", "(\\Deleted)")
    imap.expunge()
    with pytest.raises(poplib.error_proto, match="deleted by another client"):
        pop.retr(1)
    _, lines, _ = pop.retr(2)
    assert b"\r\n".join(lines) + b"\r\n" == stored[2]
    pop.dele(1)  # already gone: deleting it again is no fault
    pop.dele(3)
    assert pop.quit().startswith(b"+OK")
    imap.noop()
    assert imap_uids(imap) == [3]
    assert appliance.inbox(USER) == [stored[2]]
    imap.logout()
