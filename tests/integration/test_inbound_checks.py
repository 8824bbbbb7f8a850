"""SPF, DKIM and DMARC on port 25, with a loopback DNS server answering for
the senders: delivered with Authentication-Results, filed in Junk, or
refused with 550 5.7.1 before any 250, as each sender's domain asks."""

import base64
import smtplib

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.dns_server import DnsServer

OUR_ID = "mail.example.test"  # the appliance's hostname: its authserv-id


def txt(value: str) -> list[str]:
    """One TXT record, in strings of at most 255 characters (RFC 1035 3.3.14)."""
    return [" ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))]


@pytest.fixture(scope="module")
def key():
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, base64.b64encode(public).decode()


@pytest.fixture
def app(make_appliance, key):
    zone = {
        "good.test": {"TXT": txt("v=spf1 ip4:127.0.0.1 -all")},
        "_dmarc.good.test": {"TXT": txt("v=DMARC1; p=reject")},
        "s1._domainkey.good.test": {"TXT": txt(f"v=DKIM1; k=rsa; p={key[1]}")},
        "strict.test": {"TXT": txt("v=spf1 -all")},
        "_dmarc.strict.test": {"TXT": txt("v=DMARC1; p=reject")},
        "careful.test": {"TXT": txt("v=spf1 -all")},
        "_dmarc.careful.test": {"TXT": txt("v=DMARC1; p=quarantine")},
    }
    with DnsServer(zone) as dns:
        app = make_appliance(smtp={"checks": True}, resolver={"nameservers": [dns.nameserver]})
        app.start()
        yield app


def message(author: str, extra: str = "", body: str = "hello\r\n") -> bytes:
    return f"From: {author}\r\nTo: ann@example.test\r\nSubject: hi\r\n{extra}\r\n{body}".encode()


def send(app, sender: str, data: bytes):
    with smtplib.SMTP(app.host, app.port) as client:
        client.ehlo("client.good.test")
        return client.sendmail(sender, ["ann@example.test"], data)


def results_field(stored: bytes) -> bytes:
    field = stored.split(b"Authentication-Results: ", 1)[1]
    end = 0
    while True:  # the field and its continuation lines
        end = field.index(b"\r\n", end) + 2
        if field[end : end + 1] not in (b" ", b"\t"):
            return field[:end]


def test_aligned_mail_is_delivered_with_its_results(app, key):
    signed = dkim.sign(
        message("a@good.test"),
        b"s1",
        b"good.test",
        key[0],
        include_headers=[b"from", b"to", b"subject"],
    )
    send(app, "a@good.test", signed + message("a@good.test"))
    [stored] = app.inbox("ann@example.test")
    field = results_field(stored)
    assert field.startswith(OUR_ID.encode() + b";")
    assert b"spf=pass smtp.mailfrom=good.test" in field
    assert b"dkim=pass header.d=good.test header.s=s1" in field
    assert b"dmarc=pass" in field and b"header.from=good.test" in field


def test_a_reject_policy_is_a_550_before_anything_is_stored(app):
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(app, "x@strict.test", message("x@strict.test"))
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (550, b"5.7.1")
    assert b"strict.test" in refused.value.smtp_error
    assert app.inbox("ann@example.test") == [] and app.inbox("ann@example.test", "Junk") == []


def test_a_quarantine_policy_files_the_message_in_junk(app):
    send(app, "x@careful.test", message("x@careful.test"))
    assert app.inbox("ann@example.test") == []
    [junk] = app.inbox("ann@example.test", "Junk")
    assert b"dmarc=fail" in results_field(junk) and b"spf=fail" in results_field(junk)


def test_forged_results_with_our_name_are_dropped_and_others_kept(app):
    forged = (
        f"Authentication-Results: {OUR_ID}; dmarc=pass header.from=good.test\r\n"
        "Authentication-Results: other.example; spf=pass smtp.mailfrom=good.test\r\n"
    )
    send(app, "a@good.test", message("a@good.test", extra=forged))
    [stored] = app.inbox("ann@example.test")
    assert stored.count(f"Authentication-Results: {OUR_ID};".encode()) == 1  # ours, on top
    assert b"Authentication-Results: other.example; spf=pass" in stored
    assert b"dkim=none" in results_field(stored)


def test_mail_without_a_single_author_is_refused(app):
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(app, "a@good.test", message("a@good.test, b@strict.test"))
    assert refused.value.smtp_code == 550 and b"6.6.1" in refused.value.smtp_error
    assert app.inbox("ann@example.test") == []
