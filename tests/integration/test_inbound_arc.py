"""A message through a mailing list, on port 25: the list changed it (a
subject tag, a footer), which breaks the author's DKIM signature, and sealed
it with ARC (RFC 8617). The author's domain asks for p=reject: refused while
the owner does not trust the list, delivered once it does, refused again when
the chain is broken. The DMARC aggregate records (RFC 7489 7.2) count it all."""

from __future__ import annotations

import base64
import datetime
import smtplib

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appliance.mailauth.dmarc import AggregateRecords
from tests.dns_server import DnsServer

OUR_ID = "mail.example.test"
SIGNED = [b"from", b"to", b"subject"]

pytest.importorskip("authres", reason="dkimpy seals ARC sets only with authres installed")


def txt(value: str) -> list[str]:
    """One TXT record, in strings of at most 255 characters (RFC 1035 3.3.14)."""
    return [" ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))]


def new_key() -> tuple[bytes, str]:
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


@pytest.fixture(scope="module")
def keys():
    return {"strict.test": new_key(), "relaxed.test": new_key(), "lists.test": new_key()}


@pytest.fixture(scope="module")
def dns(keys):
    zone = {
        # The authors: one refuses what fails DMARC, one only watches.
        "_dmarc.strict.test": {"TXT": txt("v=DMARC1; p=reject")},
        "_dmarc.relaxed.test": {"TXT": txt("v=DMARC1; p=none")},
        # The list sends from this box's loopback, as its MAIL FROM domain says.
        "lists.test": {"TXT": txt("v=spf1 ip4:127.0.0.1 -all")},
    }
    for domain, key in keys.items():
        zone[f"k._domainkey.{domain}"] = {"TXT": txt(f"v=DKIM1; k=rsa; p={key[1]}")}
    with DnsServer(zone) as server:
        yield server


@pytest.fixture
def start(make_appliance, dns):
    def start(**smtp):
        app = make_appliance(
            smtp={"checks": True, **smtp}, resolver={"nameservers": [dns.nameserver]}
        )
        app.start()
        return app

    return start


def through_list(keys, author: str, broken: bool = False) -> bytes:
    """The author's signed message as the list delivers it: tagged, with a
    footer, its Authentication-Results (what the list saw) and its ARC set."""
    message = f"From: a@{author}\r\nTo: list@lists.test\r\nSubject: hi\r\n\r\nhello\r\n".encode()
    signature = dkim.sign(message, b"k", author.encode(), keys[author][0], include_headers=SIGNED)
    changed = (signature + message).replace(b"Subject: hi", b"Subject: [list] hi")
    changed += b"-- \r\nthe list's footer\r\n"
    seen = f"Authentication-Results: lists.test; dkim=pass header.d={author}\r\n".encode()
    arc_set = dkim.arc_sign(
        seen + changed, b"k", b"lists.test", keys["lists.test"][0], b"lists.test", SIGNED
    )
    sealed = b"".join(arc_set) + seen + changed
    return sealed.replace(b"footer", b"footer, changed after sealing") if broken else sealed


def send(app, message: bytes) -> None:
    with smtplib.SMTP(app.host, app.port) as client:
        client.ehlo("mx.lists.test")
        client.sendmail("list-bounces@lists.test", ["ann@example.test"], message)


def results_field(stored: bytes) -> bytes:
    field = stored.split(b"Authentication-Results: " + OUR_ID.encode(), 1)[1]
    end = 0
    while True:  # the field and its continuation lines
        end = field.index(b"\r\n", end) + 2
        if field[end : end + 1] not in (b" ", b"\t"):
            return b" ".join(line.strip() for line in field[:end].splitlines())


def assert_refused(app, message: bytes) -> None:
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(app, message)
    assert (refused.value.smtp_code, refused.value.smtp_error[:5]) == (550, b"5.7.1")
    assert b"strict.test" in refused.value.smtp_error
    assert app.inbox("ann@example.test") == [] and app.inbox("ann@example.test", "Junk") == []


def test_a_list_the_owner_does_not_trust_cannot_lift_a_reject_policy(start, keys):
    assert_refused(start(), through_list(keys, "strict.test"))


def test_a_trusted_list_with_an_intact_chain_is_delivered(start, keys):
    app = start(arc_trusted_sealers=["lists.test"])
    send(app, through_list(keys, "strict.test"))
    [stored] = app.inbox("ann@example.test")
    field = results_field(stored)
    assert b"dkim=fail" in field
    assert b"arc=pass (i=1 d=lists.test) header.oldest-pass=0 smtp.remote-ip=127.0.0.1" in field
    assert b"dmarc=fail (p=reject dis=none; arc override: trusted sealer lists.test)" in field
    assert "dmarc override from=strict.test policy=reject reason=arc sealer=lists.test" in app.log()


def test_a_broken_chain_from_a_trusted_list_is_refused(start, keys):
    assert_refused(
        start(arc_trusted_sealers=["lists.test"]), through_list(keys, "strict.test", broken=True)
    )


def test_a_broken_chain_is_recorded_as_arc_fail(start, keys):
    app = start()
    send(app, through_list(keys, "relaxed.test", broken=True))
    [stored] = app.inbox("ann@example.test")
    field = results_field(stored)
    assert b"arc=fail" in field and b"ARC-Message-Signature did not validate" in field
    assert b"dmarc=fail (p=none dis=none)" in field


def test_aggregate_records_count_each_evaluation_per_day(start, keys):
    app = start(arc_trusted_sealers=["lists.test"])
    send(app, through_list(keys, "strict.test"))
    send(app, through_list(keys, "strict.test"))
    with pytest.raises(smtplib.SMTPDataError):
        send(app, through_list(keys, "strict.test", broken=True))
    today = datetime.datetime.now(datetime.UTC).date()
    rows = AggregateRecords(app.data / "dmarc").rows(today)
    assert [(r.source_ip, r.header_from, r.disposition, r.override, r.count) for r in rows] == [
        ("127.0.0.1", "strict.test", "none", "trusted_forwarder", 2),
        ("127.0.0.1", "strict.test", "reject", "", 1),
    ]
    assert rows[0].spf_result == ("lists.test", "mfrom", "pass")
    assert (rows[0].envelope_from, rows[0].dkim, rows[0].spf) == ("lists.test", "fail", "fail")
    assert rows[0].dkim_results == (("strict.test", "k", "fail"),)
