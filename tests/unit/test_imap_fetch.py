"""FETCH over a stored message in two pieces (trace head + shared body) gives
what the same FETCH gives over the message in one piece."""

import pytest

from appliance.imap.fetch import BodyStream, StoredMessage, load_structure, without_nul
from appliance.message.structure import analyze, binary_section, section_ranges

HEAD = b"Return-Path: <a@example.org>\r\nReceived: from x.example by mx; Mon, 1 Jan 2024\r\n"
BODIES = {
    "simple": b"From: A <a@example.org>\r\nSubject: hi\r\nReceived: earlier\r\n\r\nhello\r\n",
    "no header": b"\r\njust a body\r\n",
    "all header": b"Subject: only a header\r\n",
    "multipart": (
        b"From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"AAECAw==\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
        b"Subject: inner\r\nReceived: inner\r\n\r\ninner body\r\n--b--\r\n"
    ),
}
SECTIONS = [
    ((), "HEADER", ()),
    ((), "TEXT", ()),
    ((), "HEADER.FIELDS", ("Received", "Subject")),
    ((), "HEADER.FIELDS.NOT", ("Received",)),
    ((1,), None, ()),
    ((1,), "MIME", ()),
    ((3,), "HEADER", ()),
    ((3,), "HEADER.FIELDS", ("received",)),
    ((3, 1), None, ()),
    ((9,), None, ()),
]


def join(message: bytes, ranges) -> bytes:
    return b"".join(message[start:end] for start, end in ranges)


@pytest.mark.parametrize("name", BODIES)
@pytest.mark.parametrize("part, text, fields", SECTIONS)
def test_sections_match_the_message_in_one_piece(name, part, text, fields):
    body = BODIES[name]
    whole = HEAD + body
    stored = StoredMessage(HEAD, memoryview(body), analyze(body).to_record)
    expected = join(whole, section_ranges(analyze(whole), whole, part, text, fields))
    assert stored.octets(stored.section(part, text, fields)) == expected


@pytest.mark.parametrize("name", BODIES)
def test_whole_binary_envelope_and_bodystructure_match(name):
    body = BODIES[name]
    whole = HEAD + body
    stored = StoredMessage(HEAD, memoryview(body), analyze(body).to_record)
    one = StoredMessage(b"", whole)
    assert stored.octets(stored.section((), None)) == whole
    assert stored.envelope() == one.envelope()
    assert stored.bodystructure(True, True) == one.bodystructure(True, True)
    for part in ((), (1,), (2,), (3,)):
        content = binary_section(analyze(whole), whole, part)
        expected = content if isinstance(content, bytes) else join(whole, content)
        got = stored.binary(part)
        assert (got if isinstance(got, bytes) else stored.octets(got)) == expected
        assert stored.binary_size(part) == len(expected)


def test_a_stream_splits_at_the_head_and_in_chunks():
    stream = BodyStream(7, b"HEAD", [(2, 4), (4, 15)], 13)
    assert list(stream.pieces(5)) == [(True, 2, 4), (False, 0, 5), (False, 5, 10), (False, 10, 11)]


def test_a_missing_or_outdated_record_is_analyzed_again():
    body = BODIES["multipart"]
    assert load_structure(None, body) == analyze(body)
    assert load_structure([0, "old layout"], body) == analyze(body)
    assert load_structure(analyze(body).to_record(), b"ignored") == analyze(body)


def test_literals_never_carry_nul_but_literal8_may():
    assert without_nul(b"AB\0CD") == b"AB\x80CD"
    same = b"no nul here"
    assert without_nul(same) is same
