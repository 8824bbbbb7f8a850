"""DANE TLSA matching (RFC 7672, RFC 6698) against certificate chains made here.

Each chain is what an MX host would present (leaf first, DER); each record
is what its DNSSEC-signed zone would publish. The verdict is the one a
sending MTA acts on: deliver to this host, or not.
"""

from __future__ import annotations

import hashlib
import ssl
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from appliance.delivery.dane import (
    dane_applies,
    dane_requires_tls,
    peer_chain,
    tlsa_matches,
    unverified_context,
    usable_records,
)
from appliance.delivery.dns import TlsaAnswer, TlsaRecord

NOW = datetime.now(UTC)
MX = "mx.example.test"


@dataclass
class Issued:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def spki(self) -> bytes:
        return self.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def issue(
    common_name: str,
    issuer: Issued | None = None,
    *,
    ca: bool = False,
    names: tuple[str, ...] = (),
    key=None,
    valid: tuple[int, int] = (-1, 30),
    key_cert_sign: bool | None = True,
) -> Issued:
    """A certificate signed by issuer (self-signed without one), valid for days valid.

    A CA gets a keyUsage extension allowing certificate signing or not, or
    none at all when key_cert_sign is None.
    """
    key = key or ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer, issuer_name = (issuer.key, issuer.certificate.subject) if issuer else (key, subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW + timedelta(days=valid[0]))
        .not_valid_after(NOW + timedelta(days=valid[1]))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca and key_cert_sign is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def record(usage: int, selector: int, matching: int, issued: Issued) -> TlsaRecord:
    data = issued.der if selector == 0 else issued.spki
    if matching == 1:
        data = hashlib.sha256(data).digest()
    elif matching == 2:
        data = hashlib.sha512(data).digest()
    return TlsaRecord(usage, selector, matching, data)


@pytest.fixture(scope="module")
def pki():
    """A root, an intermediate under it, and a leaf for the MX host under that."""
    root = issue("Example Root", ca=True)
    intermediate = issue("Example Intermediate", root, ca=True)
    leaf = issue(MX, intermediate, names=(MX,))
    return root, intermediate, leaf


def chain(*issued: Issued) -> list[bytes]:
    return [i.der for i in issued]


# -- DANE-EE(3) ---------------------------------------------------------------


@pytest.mark.parametrize(("selector", "matching"), [(1, 1), (1, 2), (1, 0), (0, 1), (0, 2)])
def test_dane_ee_record_of_the_leaf_matches(pki, selector, matching):
    _, intermediate, leaf = pki
    records = [record(3, selector, matching, leaf)]
    assert tlsa_matches(records, chain(leaf, intermediate), names=[MX])


def test_dane_ee_record_of_another_key_does_not_match(pki):
    _, intermediate, leaf = pki
    other = issue(MX, intermediate, names=(MX,))
    for selector, matching in [(1, 1), (0, 1), (1, 2), (1, 0)]:
        records = [record(3, selector, matching, other)]
        assert not tlsa_matches(records, chain(leaf, intermediate), names=[MX])


def test_3_1_1_survives_a_renewed_certificate_with_the_same_key_but_3_0_1_does_not(pki):
    _, intermediate, leaf = pki
    renewed = issue(MX, intermediate, names=(MX,), key=leaf.key)
    assert tlsa_matches([record(3, 1, 1, leaf)], [renewed.der], names=[MX])
    assert not tlsa_matches([record(3, 0, 1, leaf)], [renewed.der], names=[MX])


def test_dane_ee_checks_neither_name_nor_dates_nor_issuer():
    # RFC 7672 3.1.1: a self-signed, expired certificate for another name is
    # fine when its key is the one published.
    stale = issue("whatever.invalid", valid=(-400, -300))
    assert tlsa_matches([record(3, 1, 1, stale)], [stale.der], names=[MX])
    assert tlsa_matches([record(3, 1, 1, stale)], [stale.der], names=[])


def test_dane_ee_record_of_the_intermediate_does_not_match(pki):
    _, intermediate, leaf = pki
    assert not tlsa_matches([record(3, 1, 1, intermediate)], chain(leaf, intermediate), names=[MX])


def test_rsa_leaf_matches_3_1_1():
    leaf = issue(MX, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert tlsa_matches([record(3, 1, 1, leaf)], [leaf.der], names=[])


# -- DANE-TA(2) ---------------------------------------------------------------


@pytest.mark.parametrize(("selector", "matching"), [(0, 1), (1, 1), (0, 2), (0, 0)])
def test_dane_ta_root_in_the_chain_authenticates_the_leaf(pki, selector, matching):
    root, intermediate, leaf = pki
    records = [record(2, selector, matching, root)]
    assert tlsa_matches(records, chain(leaf, intermediate, root), names=[MX])


def test_dane_ta_intermediate_as_anchor(pki):
    _, intermediate, leaf = pki
    assert tlsa_matches([record(2, 0, 1, intermediate)], chain(leaf, intermediate), names=[MX])


def test_dane_ta_chain_in_any_order(pki):
    root, intermediate, leaf = pki
    assert tlsa_matches([record(2, 0, 1, root)], chain(leaf, root, intermediate), names=[MX])


def test_dane_ta_needs_the_leaf_to_carry_a_reference_name(pki):
    root, intermediate, leaf = pki
    records = [record(2, 0, 1, root)]
    presented = chain(leaf, intermediate, root)
    assert not tlsa_matches(records, presented, names=["mx.other.test"])
    assert not tlsa_matches(records, presented, names=[])
    # Any one of the names will do: the TLSA base domain or the MX name.
    assert tlsa_matches(records, presented, names=["mx.cname-target.test", "MX.Example.Test."])


def test_dane_ta_wildcard_stands_for_exactly_one_label(pki):
    root, intermediate, _ = pki
    leaf = issue("wild", intermediate, names=("*.example.test",))
    records, presented = [record(2, 0, 1, root)], chain(leaf, intermediate, root)
    assert tlsa_matches(records, presented, names=[MX])
    assert not tlsa_matches(records, presented, names=["example.test"])
    assert not tlsa_matches(records, presented, names=["a.mx.example.test"])


def test_dane_ta_common_name_counts_only_without_dns_names(pki):
    root, intermediate, _ = pki
    records = [record(2, 0, 1, root)]
    by_common_name = issue(MX, intermediate)
    assert tlsa_matches(records, chain(by_common_name, intermediate, root), names=[MX])
    san_elsewhere = issue(MX, intermediate, names=("other.example.test",))
    assert not tlsa_matches(records, chain(san_elsewhere, intermediate, root), names=[MX])


def test_dane_ta_refuses_an_expired_or_not_yet_valid_leaf(pki):
    root, intermediate, _ = pki
    records = [record(2, 0, 1, root)]
    expired = issue(MX, intermediate, names=(MX,), valid=(-30, -1))
    future = issue(MX, intermediate, names=(MX,), valid=(1, 30))
    assert not tlsa_matches(records, chain(expired, intermediate, root), names=[MX])
    assert not tlsa_matches(records, chain(future, intermediate, root), names=[MX])
    # The same leaf is fine at a moment within its dates.
    later = NOW + timedelta(days=2)
    assert tlsa_matches(records, chain(future, intermediate, root), names=[MX], now=later)


def test_dane_ta_anchor_dates_are_not_checked():
    # RFC 5280 6.1.1 (d): a trust anchor is a name and a key.
    old_root = issue("Old Root", ca=True, valid=(-400, -1))
    leaf = issue(MX, old_root, names=(MX,))
    assert tlsa_matches([record(2, 0, 1, old_root)], chain(leaf, old_root), names=[MX])


def test_dane_ta_refuses_a_leaf_signed_by_an_impostor_with_the_anchor_name(pki):
    root, intermediate, _ = pki
    impostor = issue("Example Intermediate", ca=True)  # same name, its own key
    leaf = issue(MX, impostor, names=(MX,))
    records = [record(2, 0, 1, root)]
    assert not tlsa_matches(records, chain(leaf, intermediate, root), names=[MX])
    assert not tlsa_matches(records, chain(leaf, impostor, intermediate, root), names=[MX])


def test_dane_ta_needs_every_link_of_the_chain(pki):
    root, _, leaf = pki
    assert not tlsa_matches([record(2, 0, 1, root)], chain(leaf, root), names=[MX])


def test_dane_ta_intermediate_must_be_a_ca(pki):
    root, _, _ = pki
    not_a_ca = issue("Example Intermediate", root, ca=False)
    leaf = issue(MX, not_a_ca, names=(MX,))
    assert not tlsa_matches([record(2, 0, 1, root)], chain(leaf, not_a_ca, root), names=[MX])
    # The same certificate published as the anchor itself is the domain's call.
    assert tlsa_matches([record(2, 0, 1, not_a_ca)], chain(leaf, not_a_ca), names=[MX])


def test_dane_ta_intermediate_key_must_be_allowed_to_sign_certificates(pki):
    root, _, _ = pki
    records = [record(2, 0, 1, root)]
    barred = issue("Barred Intermediate", root, ca=True, key_cert_sign=False)
    leaf = issue(MX, barred, names=(MX,))
    assert not tlsa_matches(records, chain(leaf, barred, root), names=[MX])
    # No keyUsage extension at all puts no limit on the key (RFC 5280 4.2.1.3).
    unlimited = issue("Unlimited Intermediate", root, ca=True, key_cert_sign=None)
    leaf = issue(MX, unlimited, names=(MX,))
    assert tlsa_matches(records, chain(leaf, unlimited, root), names=[MX])


def test_dane_ta_anchor_must_be_in_the_presented_chain(pki):
    root, intermediate, leaf = pki
    assert not tlsa_matches([record(2, 0, 1, root)], chain(leaf, intermediate), names=[MX])


# -- usable records and when DANE applies ---------------------------------------


@pytest.mark.parametrize("usage", [0, 1])
def test_pkix_usages_are_unusable_for_smtp_even_when_they_match(pki, usage):
    root, intermediate, leaf = pki
    records = [record(usage, 1, 1, leaf), record(usage, 0, 1, root)]
    assert not tlsa_matches(records, chain(leaf, intermediate, root), names=[MX])
    assert usable_records(records) == ()
    assert not dane_applies(TlsaAnswer(tuple(records), secure=True))
    # RFC 7672 2.2: records, none usable: TLS stays mandatory, unauthenticated.
    assert dane_requires_tls(TlsaAnswer(tuple(records), secure=True))


def test_dane_applies_only_to_validated_usable_records(pki):
    _, _, leaf = pki
    records = (record(3, 1, 1, leaf),)
    assert dane_applies(TlsaAnswer(records, secure=True))
    assert not dane_applies(TlsaAnswer(records, secure=False))
    assert not dane_requires_tls(TlsaAnswer(records, secure=False))
    assert not dane_applies(TlsaAnswer((), secure=True))
    assert not dane_requires_tls(TlsaAnswer((), secure=True))


def test_malformed_records_are_unusable(pki):
    _, _, leaf = pki
    good = record(3, 1, 1, leaf)
    bad = [
        TlsaRecord(3, 1, 1, good.data[:31]),  # a SHA-256 digest one byte short
        TlsaRecord(3, 1, 2, good.data),  # a SHA-256 digest under SHA-512
        TlsaRecord(3, 2, 1, good.data),  # no selector 2
        TlsaRecord(3, 1, 3, good.data),  # no matching type 3
        TlsaRecord(4, 1, 1, good.data),  # no usage 4
        TlsaRecord(3, 1, 0, b""),
    ]
    assert usable_records(bad) == ()
    assert usable_records([*bad, good]) == (good,)
    assert not tlsa_matches(bad, [leaf.der], names=[MX])


def test_garbage_chains_never_match_and_never_raise(pki):
    root, intermediate, leaf = pki
    records = [record(3, 1, 1, leaf), record(2, 0, 1, root)]
    assert not tlsa_matches(records, [], names=[MX])
    assert not tlsa_matches(records, [b"\x30\x80\x00\x00"], names=[MX])
    for cut in range(0, len(leaf.der), 7):
        assert not tlsa_matches(records, [leaf.der[:cut], intermediate.der], names=[MX])


@given(st.binary(max_size=300))
def test_arbitrary_bytes_as_a_leaf_are_a_mismatch(data):
    records = [TlsaRecord(3, 1, 1, hashlib.sha256(data).digest())]
    assert tlsa_matches(records, [data], names=[MX]) is False


def test_dane_ee_check_does_not_load_the_x509_code(pki):
    _, _, leaf = pki
    # DANE-EE is the common case: the long-running server should not pay
    # for cryptography's X.509 module to check it.
    script = (
        "import sys\n"
        "from appliance.delivery.dane import tlsa_matches\n"
        "from appliance.delivery.dns import TlsaRecord\n"
        f"assert tlsa_matches([TlsaRecord(3, 1, 1, {record(3, 1, 1, leaf).data!r})],"
        f" [{leaf.der!r}], names=[])\n"
        "print(sorted(m for m in sys.modules if m.startswith('cryptography')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- the chain a real TLS handshake hands over ----------------------------------


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake between two SSLObjects over memory BIOs; the client side."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context.wrap_bio(to_client, to_server, server_hostname=MX)
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):  # a TLS 1.3 handshake takes two round trips
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if all(done.values()):
            return client
    raise AssertionError("the handshake did not finish")


def test_peer_chain_returns_every_certificate_the_server_sent(pki, tmp_path):
    root, intermediate, leaf = pki
    pem = b"".join(
        i.certificate.public_bytes(serialization.Encoding.PEM) for i in (leaf, intermediate)
    )
    (tmp_path / "chain.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(
        leaf.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(tmp_path / "chain.pem", tmp_path / "key.pem")
    client = handshake(server_context, unverified_context())
    presented = peer_chain(client)
    if len(presented) == 1:
        pytest.skip("this Python's ssl module gives the leaf only (no get_unverified_chain)")
    assert presented == chain(leaf, intermediate)
    assert tlsa_matches([record(2, 0, 1, intermediate)], presented, names=[MX])
    assert tlsa_matches([record(3, 1, 1, leaf)], presented, names=[])
    assert not tlsa_matches([record(2, 0, 1, root)], presented, names=[MX])
