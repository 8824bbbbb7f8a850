"""DKIM verification of inbound mail: messages signed here with dkimpy, keys
served from a dict in place of DNS."""

from __future__ import annotations

import base64
import hashlib
import time

import dkim
import dkim.crypto
import nacl.encoding
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import ResolverSettings
from appliance.mailauth.verify import (
    FAIL,
    NEUTRAL,
    PASS,
    PERMERROR,
    POLICY,
    TEMPERROR,
    DnsTempError,
    resolver_txt_lookup,
    verify_dkim,
)
from tests.dns_server import dns_server_fixture  # noqa: F401 - fixture dns_server

DOMAIN = b"example.org"
MESSAGE = (
    b"Received: from relay.example.net by mx.example.com\r\n"
    b"From: Alice <alice@example.org>\r\n"
    b"To: bob@example.com\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Date: Mon, 15 Jan 2030 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"The numbers are attached.\r\n"
)
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]

# 512 bits: too short to count (RFC 8301 3.2), and too short for cryptography
# to generate, so it is written out.
RSA_512_PEM = b"""-----BEGIN RSA PRIVATE KEY-----
MIIBOgIBAAJBAMIktlXEtJaTutbNGqleboZ/M2/0pBb2JhUymvgdhSHh/gUVfDgo
0ARRKADOBiITw6+01GxuZoYiudEWKMfvLosCAwEAAQJBAKkYxN+rdwd4INKaztAa
efYXsLugv5NoTf9ElonpXF4HLH4L4UPUA9BJfy6cLFJhwJyC7h9KU42nQPN2rhDT
EcECIQD3XfNL25d6Qkpg+mazMIEGUyJYA/H9DYUNss5+yYIG8QIhAMjrPyVNrnXy
wtp4dFETU0aRUv8jbWk/O+tgl+9G4uU7AiBd4OH84BHU7GOd+moPh1DwPYzDKnwk
NYVRdZK4u3EFgQIgO/sm7c8ED0g67ZfaOb4INV/7JBoCdtIe5EUA9rj10bMCIBwL
hFO7q4PsolIjfsQ7ewf5JPSWSPvj7LKozjUlIdHv
-----END RSA PRIVATE KEY-----
"""


def _rsa_record(private_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(private_pem, password=None)
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, bytes]:
    """(private PEM, key record) of a 2048-bit key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return pem, _rsa_record(pem)


@pytest.fixture(scope="module")
def ed25519_key() -> tuple[bytes, bytes]:
    """(private seed in base64, key record)."""
    signing = nacl.signing.SigningKey.generate()
    seed = signing.encode(encoder=nacl.encoding.Base64Encoder)
    public = signing.verify_key.encode(encoder=nacl.encoding.Base64Encoder)
    return seed, b"v=DKIM1; k=ed25519; p=" + public


@pytest.fixture
def sha1_signing(monkeypatch):
    """dkimpy's own RSA signing: the signing module replaces it with a SHA-256-only one."""
    monkeypatch.setattr(dkim, "RSASSA_PKCS1_v1_5_sign", dkim.crypto.RSASSA_PKCS1_v1_5_sign)


def sign(
    message: bytes,
    private: bytes,
    *,
    selector: bytes = b"sel",
    algorithm: bytes = b"rsa-sha256",
    length: bool = False,
) -> bytes:
    signature = dkim.sign(
        message,
        selector,
        DOMAIN,
        private,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=SIGNED,
        length=length,
        signature_algorithm=algorithm,
    )
    return signature + message


def sign_with_expiry(message: bytes, private_pem: bytes, expires: int) -> bytes:
    """An rsa-sha256 signature with x= (dkimpy's sign() has no parameter for it)."""
    signer = dkim.DKIM(message)
    policy = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(signer.body)).digest())
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/relaxed"),
        (b"d", DOMAIN),
        (b"s", b"sel"),
        (b"t", str(expires - 3600).encode()),
        (b"x", str(expires).encode()),
        (b"h", b":".join(SIGNED)),
        (b"bh", body_hash),
        (b"b", b""),
    ]
    key = dkim.crypto.parse_pem_private_key(private_pem)
    signer.hasher = hashlib.sha256
    value = signer.gen_header(fields, SIGNED, policy, b"DKIM-Signature", key)
    return b"DKIM-Signature: " + value + message


def lookup(records: dict[str, object]):
    def answer(name: str):
        value = records.get(name)
        if isinstance(value, Exception):
            raise value
        return value

    return answer


def test_rsa_sha256_signature_passes_with_its_domain_selector_and_algorithm(rsa_key):
    private, record = rsa_key
    results = verify_dkim(sign(MESSAGE, private), lookup({"sel._domainkey.example.org": record}))
    assert [(r.result, r.domain, r.selector, r.algorithm) for r in results] == [
        (PASS, "example.org", "sel", "rsa-sha256")
    ]
    assert results[0].passed and results[0].body_length is None


def test_ed25519_signature_passes(ed25519_key):
    private, record = ed25519_key
    message = sign(MESSAGE, private, selector=b"ed", algorithm=b"ed25519-sha256")
    results = verify_dkim(message, lookup({"ed._domainkey.example.org": record}))
    assert [(r.result, r.algorithm, r.selector) for r in results] == [
        (PASS, "ed25519-sha256", "ed")
    ]


def test_each_signature_has_its_result_in_field_order(rsa_key, ed25519_key):
    message = sign(MESSAGE, ed25519_key[0], selector=b"ed", algorithm=b"ed25519-sha256")
    message = sign(message, rsa_key[0])
    records = {"sel._domainkey.example.org": rsa_key[1]}  # the ed25519 key is not published
    results = verify_dkim(message, lookup(records))
    assert [(r.selector, r.result) for r in results] == [("sel", PASS), ("ed", PERMERROR)]


def test_memoryview_message_is_verified_like_bytes(rsa_key):
    message = sign(MESSAGE, rsa_key[0])
    results = verify_dkim(memoryview(message), lookup({"sel._domainkey.example.org": rsa_key[1]}))
    assert [r.result for r in results] == [PASS]


def test_unsigned_field_added_in_transit_still_passes(rsa_key):
    message = b"Received: from another.example by mx\r\n" + sign(MESSAGE, rsa_key[0])
    results = verify_dkim(message, lookup({"sel._domainkey.example.org": rsa_key[1]}))
    assert [r.result for r in results] == [PASS]


def test_changed_body_fails_on_the_body_hash(rsa_key):
    message = sign(MESSAGE, rsa_key[0]).replace(b"numbers are", b"numbers were")
    [result] = verify_dkim(message, lookup({"sel._domainkey.example.org": rsa_key[1]}))
    assert result.result == FAIL
    assert "body hash" in result.reason


def test_changed_signed_field_fails(rsa_key):
    message = sign(MESSAGE, rsa_key[0]).replace(b"quarterly numbers", b"pay this invoice")
    [result] = verify_dkim(message, lookup({"sel._domainkey.example.org": rsa_key[1]}))
    assert result.result == FAIL
    assert "body hash" not in result.reason


def test_second_from_added_after_signing_fails(rsa_key):
    head, body = sign(MESSAGE, rsa_key[0]).split(b"\r\n\r\n", 1)
    forged = head + b"\r\nFrom: ceo@example.org\r\n\r\n" + body
    [result] = verify_dkim(forged, lookup({"sel._domainkey.example.org": rsa_key[1]}))
    assert result.result == FAIL


def test_expired_signature_is_refused_by_policy(rsa_key):
    expires = int(time.time()) + 600
    message = sign_with_expiry(MESSAGE, rsa_key[0], expires)
    keys = lookup({"sel._domainkey.example.org": rsa_key[1]})
    assert [r.result for r in verify_dkim(message, keys)] == [PASS]  # before x=
    [late] = verify_dkim(message, keys, now=expires + 1)
    assert (late.result, late.domain) == (POLICY, "example.org")
    assert "expired" in late.reason


def test_body_length_limit_lets_appended_text_pass_and_says_so(rsa_key):
    keys = lookup({"sel._domainkey.example.org": rsa_key[1]})
    appended = b"Unsubscribe: http://list.example.net/\r\n"
    limited = sign(MESSAGE, rsa_key[0], length=True) + appended
    [result] = verify_dkim(limited, keys)
    assert result.result == PASS
    assert result.body_length == len(b"The numbers are attached.\r\n")
    unlimited = sign(MESSAGE, rsa_key[0]) + appended
    assert [r.result for r in verify_dkim(unlimited, keys)] == [FAIL]


def test_revoked_key_is_a_permanent_error(rsa_key):
    message = sign(MESSAGE, rsa_key[0])
    [result] = verify_dkim(message, lookup({"sel._domainkey.example.org": b"v=DKIM1; k=rsa; p="}))
    assert result.result == PERMERROR
    assert "revoked" in result.reason


def test_missing_key_is_a_permanent_error(rsa_key):
    [result] = verify_dkim(sign(MESSAGE, rsa_key[0]), lookup({}))
    assert (result.result, result.domain, result.selector) == (PERMERROR, "example.org", "sel")


def test_temporary_dns_failure_is_a_temporary_error(rsa_key):
    keys = lookup({"sel._domainkey.example.org": DnsTempError("SERVFAIL")})
    [result] = verify_dkim(sign(MESSAGE, rsa_key[0]), keys)
    assert result.result == TEMPERROR


def test_rsa_sha1_is_refused_by_policy(rsa_key, sha1_signing):
    message = sign(MESSAGE, rsa_key[0], algorithm=b"rsa-sha1")
    assert dkim.verify(message, dnsfunc=lambda name, timeout=5: rsa_key[1])  # a valid one
    [result] = verify_dkim(message, lookup({"sel._domainkey.example.org": rsa_key[1]}))
    assert (result.result, result.algorithm) == (POLICY, "rsa-sha1")


def test_512_bit_rsa_key_is_refused_by_policy():
    message = sign(MESSAGE, RSA_512_PEM)
    record = _rsa_record(RSA_512_PEM)
    assert dkim.verify(message, dnsfunc=lambda name, timeout=5: record, minkey=512)  # valid
    [result] = verify_dkim(message, lookup({"sel._domainkey.example.org": record}))
    assert result.result == POLICY
    assert "512" in result.reason


def test_ed25519_signature_with_an_rsa_key_is_a_permanent_error(rsa_key, ed25519_key):
    message = sign(MESSAGE, ed25519_key[0], algorithm=b"ed25519-sha256")
    [result] = verify_dkim(message, lookup({"sel._domainkey.example.org": rsa_key[1]}))
    assert result.result == PERMERROR


def test_two_key_records_are_a_permanent_error(rsa_key):
    keys = lookup({"sel._domainkey.example.org": [rsa_key[1], rsa_key[1]]})
    [result] = verify_dkim(sign(MESSAGE, rsa_key[0]), keys)
    assert result.result == PERMERROR


def test_signature_missing_a_tag_is_neutral_with_what_it_names(rsa_key):
    field = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from; bh=AAAA\r\n"
    [result] = verify_dkim(field + MESSAGE, lookup({"sel._domainkey.example.org": rsa_key[1]}))
    assert (result.result, result.domain, result.selector) == (NEUTRAL, "example.org", "sel")


@pytest.mark.parametrize(
    "message",
    [
        b" folded: first line\r\nFrom: a@example.org\r\nDKIM-Signature: v=1\r\n\r\nbody\r\n",
        b"",
        b"no header section at all",
        b"DKIM-Signature: v=1; a=rsa-sha256; b=\xff\xfe; d=\xff\r\n\r\n",
        b"DKIM-Signature: ;;;===\r\nFrom: a@example.org\r\n\r\n",
    ],
)
def test_hostile_messages_give_results_not_exceptions(message):
    results = verify_dkim(message, lookup({}))
    assert all(r.result in (NEUTRAL, PERMERROR) for r in results)


def test_message_without_signature_has_no_results():
    assert verify_dkim(MESSAGE, lookup({})) == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"DKIM-Signature: ",
                b"v=1; ",
                b"a=rsa-sha256; ",
                b"a=ed25519-sha256; ",
                b"d=example.org; ",
                b"s=sel; ",
                b"h=from:to; ",
                b"bh=AAAA; ",
                b"b=AAAA; ",
                b"l=99999999999999999999; ",
                b"x=1; ",
                b"i=@other.example; ",
                b"c=relaxed/simple; ",
                b"=;",
                b"\r\n",
                b"\r\n ",
                b"\n\n",
                b"From: a@example.org",
                b"\xff\x00",
            ]
        )
        | st.binary(max_size=20),
        max_size=25,
    )
)
def test_no_message_makes_the_verifier_raise(pieces):
    records = {"sel._domainkey.example.org": [b"v=DKIM1; k=rsa; p=AAAA"]}
    for result in verify_dkim(b"".join(pieces), lookup(records)):
        assert result.result in (FAIL, NEUTRAL, PERMERROR, POLICY)


# The default lookup, through a resolver on loopback


def test_resolver_lookup_joins_strings_and_tells_absence_from_failure(dns_server, rsa_key):
    half = len(rsa_key[1]) // 2
    dns_server.load(
        {
            "sel._domainkey.example.org": {
                "TXT": f'"{rsa_key[1][:half].decode()}" "{rsa_key[1][half:].decode()}"'
            },
            "two.example.org": {"TXT": ['"one"', '"two"']},
            "broken.example.org": "SERVFAIL",
        }
    )
    settings = ResolverSettings(
        nameservers=(dns_server.nameserver,), query_timeout=1.0, lookup_timeout=2.0
    )
    txt = resolver_txt_lookup(settings)
    assert txt("sel._domainkey.example.org") == [rsa_key[1]]
    assert sorted(txt("two.example.org")) == [b"one", b"two"]
    assert txt("absent.example.org") == []
    with pytest.raises(DnsTempError):
        txt("broken.example.org")
    [result] = verify_dkim(sign(MESSAGE, rsa_key[0]), txt)
    assert result.result == PASS
