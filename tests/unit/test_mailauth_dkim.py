"""DKIM keys, the records to publish and the signatures made with them.

Signatures are checked by dkimpy and, independently, by OpenDKIM: its library
(libopendkim, what opendkim-testmsg wraps) reading keys from a file, and
opendkim-testkey asking a resolver (libunbound) that forwards to a loopback
DNS server answering from our zone-file lines.
"""

from __future__ import annotations

import base64
import ctypes
import ctypes.util
import datetime
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dkim
import dkim.util
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import dns.zone
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.mailauth.dkim import (
    ED25519,
    RSA,
    NoKeyError,
    Selector,
    Signer,
    SigningError,
    active_selectors,
    dns_records,
    key_directory,
    make_keys,
    remove_retired,
    rotate,
    selectors,
)

DOMAIN = "example.org"
DAY = datetime.date(2030, 1, 15)

MESSAGE = (
    b"Received: from client (client [192.0.2.1]) by mail.example.org\r\n"
    b"From: Ann Example <ann@example.org>\r\n"
    b"To: bob@example.com,\r\n"
    b"  carol@example.net\r\n"
    b"Cc: dave@example.com\r\n"
    b"Subject:   A  subject\t with   spaces \r\n"
    b"Date: Tue, 15 Jan 2030 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"X-Mailer: test\r\n"
    b"\r\n"
    b"Hello Bob,  \r\n"
    b"\r\n"
    b"a line\twith tabs\r\n"
    b"\r\n"
    b"\r\n"
)

# Messages a sender may hand us that are still worth signing.
SIGNABLE = {
    "plain": MESSAGE,
    "eight_bit_headers": (
        "From: Ånn Exämple <ann@example.org>\r\n"
        "To: =?utf-8?q?B=C3=B6b?= <bob@example.com>\r\n"
        "Subject: café ☕ naïve\r\n"
        "\r\n"
        "Grüße\r\n"
    ).encode()
    + b"raw \xff\xfe bytes\r\n",
    "lf_only": MESSAGE.replace(b"\r\n", b"\n"),
    "empty_body": b"From: ann@example.org\r\nSubject: nothing\r\n\r\n",
    "no_body_at_all": b"From: ann@example.org\r\nSubject: nothing\r\n",
}


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory) -> Path:
    """A data directory with one key pair for DOMAIN, for tests that only read it."""
    data_dir = tmp_path_factory.mktemp("data")
    make_keys(data_dir, DOMAIN)
    return data_dir


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


def txt_lookup(data_dir: Path, domain: str = DOMAIN):
    """A dkimpy dnsfunc answering from dns_records, as if they were published."""
    published = {
        f"{name}.".encode(): value.encode() for name, value in dns_records(data_dir, domain)
    }
    return lambda name, timeout=5: published.get(name)


def signature_fields(signature: bytes) -> list[bytes]:
    return [field for field in re.split(rb"(?=^DKIM-Signature:)", signature, flags=re.M) if field]


def tags(field: bytes) -> dict[bytes, bytes]:
    return dkim.util.parse_tag_value(field.split(b":", 1)[1])


def dkimpy_verifies(message: bytes, dnsfunc, index: int) -> bool:
    try:
        return dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc)
    except dkim.DKIMException:
        return False


def both_verify(message: bytes, data_dir: Path) -> list[bool]:
    lookup = txt_lookup(data_dir)
    return [dkimpy_verifies(message, lookup, index) for index in (0, 1)]


# Keys


def test_keys_are_private_files_in_a_private_directory(data_dir):
    made = make_keys(data_dir, DOMAIN)
    directory = key_directory(data_dir, DOMAIN)
    assert stat.S_IMODE((data_dir / "dkim").stat().st_mode) == 0o700
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = sorted(path.name for path in directory.iterdir())
    assert files == sorted(selector.file_name for selector in made)
    assert [selector.algorithm for selector in made] == [RSA, ED25519]
    for name in files:
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600


def test_key_files_hold_the_forms_dkimpy_signs_with(data_dir):
    rsa_selector, ed_selector = make_keys(data_dir, DOMAIN)
    directory = key_directory(data_dir, DOMAIN)
    pem = (directory / rsa_selector.file_name).read_bytes()
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048
    seed = base64.b64decode((directory / ed_selector.file_name).read_bytes(), validate=False)
    assert len(seed) == 32


def test_selector_names_say_date_and_algorithm(data_dir):
    made = make_keys(data_dir, DOMAIN, today=DAY)
    assert [selector.name for selector in made] == ["a20300115r", "a20300115e"]
    assert made[0].file_name == "a20300115r.rsa-sha256.key"


def test_make_keys_again_changes_nothing(data_dir):
    first = make_keys(data_dir, DOMAIN)
    files = {p.name: p.read_bytes() for p in key_directory(data_dir, DOMAIN).iterdir()}
    assert make_keys(data_dir, DOMAIN.upper()) == first
    assert {p.name: p.read_bytes() for p in key_directory(data_dir, DOMAIN).iterdir()} == files


def test_make_keys_adds_only_a_missing_algorithm(data_dir):
    rsa_selector, ed_selector = make_keys(data_dir, DOMAIN, today=DAY)
    (key_directory(data_dir, DOMAIN) / ed_selector.file_name).unlink()
    remade = make_keys(data_dir, DOMAIN, today=DAY)
    assert remade[0] == rsa_selector
    assert remade[1].algorithm == ED25519 and remade[1] > ed_selector


def test_domain_that_is_not_a_name_makes_no_directory(data_dir):
    with pytest.raises(ValueError):
        make_keys(data_dir, "../escape")
    assert not (data_dir / "escape").exists() and not (data_dir / "dkim").exists()


def test_rotate_activates_a_new_pair_and_keeps_the_old(data_dir):
    old = make_keys(data_dir, DOMAIN, today=DAY)
    signed_before = Signer(data_dir).sign(MESSAGE, DOMAIN) + MESSAGE
    new = rotate(data_dir, DOMAIN, today=DAY + datetime.timedelta(days=1))
    assert [s.name for s in new] == ["a20300116r", "a20300116e"]
    assert active_selectors(data_dir, DOMAIN) == new
    assert selectors(data_dir, DOMAIN) == sorted(old + new)
    names = [name for name, _value in dns_records(data_dir, DOMAIN)]
    assert names == [f"{s.name}._domainkey.{DOMAIN}" for s in sorted(old + new)]
    # Mail signed before the rotation still verifies against what is published.
    assert both_verify(signed_before, data_dir) == [True, True]
    signed_after = Signer(data_dir).sign(MESSAGE, DOMAIN)
    assert [tags(f)[b"s"].decode() for f in signature_fields(signed_after)] == [s.name for s in new]


def test_selectors_sort_by_creation_even_on_one_day_and_a_clock_set_back(data_dir):
    make_keys(data_dir, DOMAIN, today=DAY)
    second = rotate(data_dir, DOMAIN, today=DAY)
    earlier = DAY - datetime.timedelta(days=400)  # the clock went back
    third = rotate(data_dir, DOMAIN, today=earlier)
    assert [s.name for s in second] == ["a20300115r02", "a20300115e02"]
    assert [s.name for s in third] == ["a20300115r03", "a20300115e03"]
    rsa_names = [s.name for s in selectors(data_dir, DOMAIN) if s.algorithm == RSA]
    assert rsa_names == sorted(rsa_names) == ["a20300115r", "a20300115r02", "a20300115r03"]
    assert active_selectors(data_dir, DOMAIN) == third


def test_file_names_that_are_not_keys_are_ignored(data_dir):
    made = make_keys(data_dir, DOMAIN, today=DAY)
    directory = key_directory(data_dir, DOMAIN)
    for stray in (
        ".a20990101r.tmp",
        "a20990101r.ed25519-sha256.key",
        "a20300115r01.rsa-sha256.key",
    ):
        (directory / stray).write_bytes(b"junk")
    assert selectors(data_dir, DOMAIN) == sorted(made)


def test_remove_retired_waits_keep_days_after_retirement(data_dir):
    old = make_keys(data_dir, DOMAIN, today=DAY)
    retired_on = DAY + datetime.timedelta(days=100)
    new = rotate(data_dir, DOMAIN, today=retired_on)
    too_soon = retired_on + datetime.timedelta(days=6)
    assert remove_retired(data_dir, DOMAIN, keep_days=7, today=too_soon) == []
    assert selectors(data_dir, DOMAIN) == sorted(old + new)
    in_time = retired_on + datetime.timedelta(days=7)
    assert remove_retired(data_dir, DOMAIN, keep_days=7, today=in_time) == sorted(old)
    assert selectors(data_dir, DOMAIN) == sorted(new)
    assert len(dns_records(data_dir, DOMAIN)) == 2


def test_remove_retired_never_removes_the_active_pair(data_dir):
    made = make_keys(data_dir, DOMAIN, today=DAY)
    much_later = DAY + datetime.timedelta(days=10_000)
    assert remove_retired(data_dir, DOMAIN, keep_days=0, today=much_later) == []
    assert active_selectors(data_dir, DOMAIN) == made


# Records to publish


def test_dns_records_publish_each_public_key(shared_data):
    directory = key_directory(shared_data, DOMAIN)
    records = dict(dns_records(shared_data, DOMAIN))
    assert len(records) == 2
    for selector in selectors(shared_data, DOMAIN):
        value = records[f"{selector.name}._domainkey.{DOMAIN}"]
        parsed = dkim.util.parse_tag_value(value.encode())
        private = (directory / selector.file_name).read_bytes()
        if selector.algorithm == RSA:
            assert parsed[b"k"] == b"rsa"
            public = serialization.load_der_public_key(base64.b64decode(parsed[b"p"]))
            expected = serialization.load_pem_private_key(private, None).public_key()
            assert public.public_numbers() == expected.public_numbers()
        else:
            assert parsed[b"k"] == b"ed25519"
            seed = base64.b64decode(private)
            expected = bytes(nacl.signing.SigningKey(seed).verify_key)
            assert base64.b64decode(parsed[b"p"]) == expected
        assert parsed[b"v"] == b"DKIM1" and value.startswith("v=DKIM1;")


def test_long_record_is_cut_into_strings_of_at_most_255_octets(shared_data):
    rsa_record = next(r for r in dns_records(shared_data, DOMAIN) if "k=rsa" in r.value)
    assert len(rsa_record.value) > 255 and len(rsa_record.strings) == 2
    assert all(len(s.encode()) <= 255 for s in rsa_record.strings)
    assert "".join(rsa_record.strings) == rsa_record.value
    zone = dns.zone.from_text(
        f"$TTL 300\n{rsa_record.zone_line}\n", origin=f"{DOMAIN}.", check_origin=False
    )
    rdataset = zone.get_rdataset(f"{rsa_record.name}.", dns.rdatatype.TXT)
    (rdata,) = rdataset
    assert b"".join(rdata.strings).decode() == rsa_record.value


# Signatures


def test_signature_of_each_algorithm_verifies(shared_data):
    signature = Signer(shared_data).sign(MESSAGE, DOMAIN)
    fields = signature_fields(signature)
    assert [tags(f)[b"a"] for f in fields] == [b"rsa-sha256", b"ed25519-sha256"]
    assert both_verify(signature + MESSAGE, shared_data) == [True, True]


def test_signature_tags_are_relaxed_timestamped_unlimited_and_oversign_from(shared_data):
    before = int(time.time())
    signature = Signer(shared_data).sign(MESSAGE, DOMAIN)
    for field in signature_fields(signature):
        assert field.endswith(b"\r\n") and b"\r\n" not in field.replace(b"\r\n ", b"")[:-2]
        found = tags(field)
        assert found[b"d"] == DOMAIN.encode()
        assert found[b"c"] == b"relaxed/relaxed"
        assert before <= int(found[b"t"]) <= time.time() + 1
        assert b"l" not in found
        signed = [name.strip() for name in found[b"h"].split(b":")]
        assert signed == [
            b"from",
            b"to",
            b"cc",
            b"subject",
            b"date",
            b"message-id",
            b"mime-version",
            b"content-type",
            b"from",
        ]


def test_a_changed_body_byte_fails_both_signatures(shared_data):
    signed = Signer(shared_data).sign(MESSAGE, DOMAIN) + MESSAGE
    assert both_verify(signed, shared_data) == [True, True]
    tampered = signed.replace(b"Hello Bob", b"Hello Bib")
    assert both_verify(tampered, shared_data) == [False, False]


def test_an_added_from_field_fails_both_signatures(shared_data):
    signed = Signer(shared_data).sign(MESSAGE, DOMAIN) + MESSAGE
    forged = signed.replace(b"To: bob", b"From: ceo@example.org\r\nTo: bob", 1)
    assert both_verify(forged, shared_data) == [False, False]


def test_fields_a_relay_adds_do_not_break_the_signatures(shared_data):
    signed = Signer(shared_data).sign(MESSAGE, DOMAIN) + MESSAGE
    relayed = b"Received: from mail.example.org by mx.example.com\r\n" + signed
    relayed = relayed.replace(b"\r\n\r\n", b"\r\nList-Id: <l.example.com>\r\n\r\n", 1)
    assert both_verify(relayed, shared_data) == [True, True]


@pytest.mark.parametrize("kind", sorted(SIGNABLE))
def test_hostile_but_signable_messages_verify(shared_data, kind):
    message = SIGNABLE[kind]
    signature = Signer(shared_data).sign(message, DOMAIN)
    assert both_verify(signature + message, shared_data) == [True, True]


def test_signature_of_an_lf_only_message_uses_lf(shared_data):
    signature = Signer(shared_data).sign(SIGNABLE["lf_only"], DOMAIN)
    assert b"\r" not in signature and signature.endswith(b"\n")


def test_a_memoryview_is_signed_like_bytes(shared_data):
    signature = Signer(shared_data).sign(memoryview(MESSAGE), DOMAIN)
    assert both_verify(signature + MESSAGE, shared_data) == [True, True]


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"To: bob@example.com\r\nSubject: who?\r\n\r\nbody\r\n", "0 From fields"),
        (b"From: a@example.org\r\nFrom: b@example.org\r\n\r\n", "2 From fields"),
        (b"", "0 From fields"),
        (b"From: a@example.org\r\nnot a field\r\n\r\n", "Unexpected characters"),
        (b"From: a@example.org\r\nSubj\xc3\xa9ct: x\r\n\r\n", "Unexpected characters"),
        (b" folded\r\nFrom: a@example.org\r\n\r\n", "folded line"),
    ],
)
def test_unsignable_messages_raise_signing_error(shared_data, message, reason):
    with pytest.raises(SigningError, match=reason):
        Signer(shared_data).sign(message, DOMAIN)


@pytest.mark.parametrize("domain", ["example.net", "../etc", "", "a..b"])
def test_a_domain_without_keys_raises_no_key_error(shared_data, domain):
    with pytest.raises(NoKeyError):
        Signer(shared_data).sign(MESSAGE, domain)


_PIECES = [b"From: a@example.org", b"\r\n", b"\n", b"\r", b" ", b"\t", b":", b"To:", b"x", b"\xff"]


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=200),
        st.lists(st.sampled_from(_PIECES), max_size=16).map(b"".join),
    )
)
def test_any_bytes_are_signed_or_refused_with_signing_error(shared_data, message):
    try:
        signature = Signer(shared_data).sign(message, DOMAIN)
    except SigningError:
        return
    assert len(signature_fields(signature)) == 2


def test_signer_follows_a_rotation_made_elsewhere_and_reloads(data_dir):
    make_keys(data_dir, DOMAIN, today=DAY)
    signer = Signer(data_dir)
    signer.sign(MESSAGE, DOMAIN)
    new = rotate(data_dir, DOMAIN, today=DAY + datetime.timedelta(days=1))
    used = [tags(f)[b"s"].decode() for f in signature_fields(signer.sign(MESSAGE, DOMAIN))]
    assert used == [s.name for s in new]
    signer.reload()
    assert both_verify(signer.sign(MESSAGE, DOMAIN) + MESSAGE, data_dir) == [True, True]


def test_signer_raises_no_key_error_after_the_keys_are_gone(data_dir):
    make_keys(data_dir, DOMAIN)
    signer = Signer(data_dir)
    signer.sign(MESSAGE, DOMAIN)
    shutil.rmtree(key_directory(data_dir, DOMAIN))
    with pytest.raises(NoKeyError):
        signer.sign(MESSAGE, DOMAIN)


def test_an_unusable_key_leaves_the_other_algorithm_signing(data_dir, caplog):
    make_keys(data_dir, DOMAIN, today=DAY)
    broken = Selector(DAY, 2, ED25519)
    (key_directory(data_dir, DOMAIN) / broken.file_name).write_bytes(b"not a key\n")
    signature = Signer(data_dir).sign(MESSAGE, DOMAIN)
    assert [tags(f)[b"a"] for f in signature_fields(signature)] == [b"rsa-sha256"]
    assert f"selector={broken.name}" in caplog.text


# OpenDKIM, an independent verifier


class OpenDkimLibrary:
    """libopendkim, the verifier inside opendkim-testmsg, called directly.

    opendkim-testmsg has no option for a key source other than the system
    resolver; the library can read key records from a file instead
    (DKIM_QUERY_FILE, lines of "<selector>._domainkey.<domain> <record>").
    Constants are from OpenDKIM's dkim.h.
    """

    SETOPT = 1
    OPTS_FLAGS = 0
    OPTS_QUERYMETHOD = 6
    OPTS_QUERYINFO = 7
    QUERY_FILE = 1
    LIBFLAGS_FIXCRLF = 0x100  # accept bare LF line ends, as a real MTA would have fixed them
    STAT_OK = 0
    STAT_BADSIG = 1

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        lib.dkim_init.restype = ctypes.c_void_p
        lib.dkim_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.dkim_options.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_size_t,
        ]
        lib.dkim_verify.restype = ctypes.c_void_p
        lib.dkim_verify.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_int),
        ]
        lib.dkim_chunk.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
        lib.dkim_eom.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.dkim_geterror.restype = ctypes.c_char_p
        lib.dkim_geterror.argtypes = [ctypes.c_void_p]
        lib.dkim_free.argtypes = [ctypes.c_void_p]
        lib.dkim_close.argtypes = [ctypes.c_void_p]
        self.lib = lib

    def verify(self, message: bytes, key_file: Path) -> tuple[int, str]:
        """The status of the first signature on message, and the library's error text."""
        lib = self.lib
        handle = lib.dkim_init(None, None)
        assert handle
        try:
            self._set(handle, self.OPTS_FLAGS, ctypes.c_uint(self.LIBFLAGS_FIXCRLF))
            self._set(handle, self.OPTS_QUERYMETHOD, ctypes.c_int(self.QUERY_FILE))
            path = str(key_file).encode()
            assert lib.dkim_options(handle, self.SETOPT, self.OPTS_QUERYINFO, path, len(path)) == 0
            status = ctypes.c_int()
            verifier = lib.dkim_verify(handle, b"test", None, ctypes.byref(status))
            assert verifier, status.value
            try:
                lib.dkim_chunk(verifier, message, len(message))
                lib.dkim_chunk(verifier, None, 0)
                result = lib.dkim_eom(verifier, None)
                error = lib.dkim_geterror(verifier)
                return result, (error or b"").decode(errors="replace")
            finally:
                lib.dkim_free(verifier)
        finally:
            lib.dkim_close(handle)

    def _set(self, handle, option: int, value) -> None:
        size = ctypes.sizeof(value)
        assert self.lib.dkim_options(handle, self.SETOPT, option, ctypes.byref(value), size) == 0


@pytest.fixture(scope="module")
def opendkim() -> OpenDkimLibrary:
    path = ctypes.util.find_library("opendkim")
    if path is None:
        pytest.skip("libopendkim is not installed (Debian package opendkim-tools)")
    return OpenDkimLibrary(path)


def key_records_file(data_dir: Path, path: Path) -> Path:
    path.write_text("".join(f"{name} {value}\n" for name, value in dns_records(data_dir, DOMAIN)))
    return path


@pytest.mark.parametrize("kind", sorted(SIGNABLE))
def test_opendkim_verifies_each_signature_and_refuses_a_changed_body(
    opendkim, shared_data, tmp_path, kind
):
    keys = key_records_file(shared_data, tmp_path / "keys")
    message = SIGNABLE[kind]
    for field in signature_fields(Signer(shared_data).sign(message, DOMAIN)):
        assert opendkim.verify(field + message, keys) == (OpenDkimLibrary.STAT_OK, "")
        changed_header = field + message.replace(b"ann@", b"anne@", 1)
        assert opendkim.verify(changed_header, keys)[0] == OpenDkimLibrary.STAT_BADSIG
        if kind != "no_body_at_all":
            changed_body = field + message + b"one more line\r\n"
            assert opendkim.verify(changed_body, keys)[0] == OpenDkimLibrary.STAT_BADSIG


def test_opendkim_refuses_a_signature_checked_against_another_key(opendkim, data_dir, tmp_path):
    make_keys(data_dir, DOMAIN, today=DAY)
    fields = signature_fields(Signer(data_dir).sign(MESSAGE, DOMAIN))
    # The same selectors, published with other keys: nothing may verify.
    other = tmp_path / "other"
    make_keys(other, DOMAIN, today=DAY)
    keys = key_records_file(other, tmp_path / "keys")
    for field in fields:
        assert opendkim.verify(field + MESSAGE, keys)[0] != OpenDkimLibrary.STAT_OK


@contextmanager
def loopback_dns(zone: dns.zone.Zone) -> Iterator[int]:
    """A UDP DNS server on 127.0.0.1 answering TXT queries from zone; yields its port."""
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        deadline = time.monotonic() + 60
        for _ in range(2000):  # with the deadline, bounds the loop even if stop is missed
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                wire, peer = server.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            response = dns.message.make_response(query)
            question = query.question[0]
            found = zone.get_rdataset(question.name, dns.rdatatype.TXT)
            if found is not None and question.rdtype == dns.rdatatype.TXT:
                response.answer.append(
                    dns.rrset.from_rdata_list(question.name, found.ttl, list(found))
                )
            else:
                response.set_rcode(dns.rcode.NXDOMAIN)
            server.sendto(response.to_wire(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def opendkim_testkey(
    testkey: str, config: Path, selector: str, key: Path | None
) -> subprocess.CompletedProcess:
    command = [testkey, "-x", str(config), "-d", DOMAIN, "-s", selector, "-vvv"]
    if key is not None:
        command += ["-k", str(key)]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


def test_opendkim_testkey_reads_the_published_records_through_a_resolver(data_dir, tmp_path):
    # Debian installs it in sbin, which a user's PATH may lack.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])
    testkey = shutil.which("opendkim-testkey", path=search)
    if testkey is None:
        pytest.skip("opendkim-testkey is not installed (Debian package opendkim-tools)")
    rsa_selector, ed_selector = make_keys(data_dir, DOMAIN, today=DAY)
    zone_lines = "\n".join(record.zone_line for record in dns_records(data_dir, DOMAIN))
    # A key that is not ours, published under a selector of its own: the negative control.
    other = tmp_path / "other"
    make_keys(other, DOMAIN, today=DAY)
    foreign = next(r for r in dns_records(other, DOMAIN) if "k=rsa" in r.value)
    zone_lines += "\n" + foreign.zone_line.replace(rsa_selector.name, "foreign", 1)
    zone = dns.zone.from_text(f"$TTL 60\n{zone_lines}\n", origin=f"{DOMAIN}.", check_origin=False)
    directory = key_directory(data_dir, DOMAIN)
    with loopback_dns(zone) as port:
        # opendkim-testkey resolves through libunbound; this forwards every
        # query to the loopback server instead of the Internet.
        unbound = tmp_path / "unbound.conf"
        unbound.write_text(
            "server:\n  do-not-query-localhost: no\n"
            f'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{port}\n'
        )
        config = tmp_path / "opendkim.conf"
        config.write_text(f"ResolverConfiguration {unbound}\n")
        matched = opendkim_testkey(
            testkey, config, rsa_selector.name, directory / rsa_selector.file_name
        )
        # opendkim-testkey reads only PEM private keys, so the ed25519 record
        # is checked for syntax alone; its key is checked by the tests above.
        ed_record = opendkim_testkey(testkey, config, ed_selector.name, None)
        mismatch = opendkim_testkey(testkey, config, "foreign", directory / rsa_selector.file_name)
    assert matched.returncode == 0, matched.stderr
    assert "key OK" in matched.stdout
    assert ed_record.returncode == 0, ed_record.stderr
    assert "key OK" in ed_record.stdout
    assert mismatch.returncode != 0 and "key OK" not in mismatch.stdout
