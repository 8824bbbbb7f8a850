"""Bounces and delay notices (RFC 3464, 3461, 6522, 6533), read back with Python's email package."""

import binascii
import email
import email.policy
import re
from datetime import UTC, datetime, timedelta

import pytest

from appliance.delivery.dsn import (
    MAX_RETURNED_HEADER,
    RecipientFailure,
    make_bounce,
    return_address,
    should_bounce,
)

HOST = "mail.example.org"
SENDER = "ann@example.org"
ARRIVAL = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
NOW = datetime(2024, 5, 6, 9, 31, 5, tzinfo=UTC)
BODY_MARKER = b"secret-body-text-4711"
HEADER = (
    b"Return-Path: <ann@example.org>\r\n"
    b"From: Ann <ann@example.org>\r\n"
    b"To: Bob <bob@remote.example>, Cat <cat@other.example>\r\n"
    b"Subject: Lunch on Friday\r\n"
    b"Message-ID: <20240501093000.1@example.org>\r\n"
    b"Date: Wed, 01 May 2024 09:30:00 +0000\r\n"
)
ORIGINAL = HEADER + b"\r\n" + BODY_MARKER + b"\r\nSee you there.\r\n"

UNKNOWN_USER = RecipientFailure(
    final_recipient="bob@remote.example",
    action="failed",
    status="5.1.1",
    remote_mta="mx.remote.example",
    diagnostic_code="smtp; 550 5.1.1 <bob@remote.example>: Recipient address rejected: "
    "User unknown in virtual mailbox table",
    last_attempt_date=NOW,
)
EXPIRED = RecipientFailure(
    final_recipient="cat@other.example",
    action="failed",
    status="4.4.7",
    remote_mta="mx1.other.example",
    diagnostic_code="smtp; 451 4.3.0 Temporary lookup failure",
    last_attempt_date=NOW - timedelta(minutes=20),
)
DELAYED = RecipientFailure(
    final_recipient="cat@other.example",
    action="delayed",
    status="4.4.1",
    remote_mta="mx1.other.example",
    diagnostic_code="smtp; 421 4.4.1 Too many connections, try again later",
    last_attempt_date=NOW,
    will_retry_until=ARRIVAL + timedelta(days=5),
)


def bounce(original=ORIGINAL, failures=(UNKNOWN_USER, EXPIRED), **options) -> bytes:
    options.setdefault("arrival_date", ARRIVAL)
    options.setdefault("now", NOW)
    return make_bounce(original, HOST, options.pop("sender", SENDER), list(failures), **options)


def parse(raw: bytes):
    """The DSN as the email package reads it, after checking it found nothing amiss."""
    message = email.message_from_bytes(raw, policy=email.policy.default)
    for part in message.walk():
        assert part.defects == [], (part.get_content_type(), part.defects)
    return message


def raw_parts(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(header, body) of each part of the top multipart, as octets."""
    boundary = parse(raw).get_boundary().encode("ascii")
    sections = raw.split(b"\r\n--" + boundary)
    assert sections[-1] == b"--\r\n", "the close delimiter ends the message"
    return [
        tuple(section.removeprefix(b"\r\n").split(b"\r\n\r\n", 1)) for section in sections[1:-1]
    ]


def status_blocks(raw: bytes) -> list[dict[str, str]]:
    """The delivery-status part's blocks: per-message fields first, then one per recipient."""
    part = parse(raw).get_payload()[1]
    assert part.get_content_type() == "message/delivery-status"
    return [{name: str(value) for name, value in block.items()} for block in part.get_payload()]


def unfolded_text(raw: bytes) -> str:
    """The human-readable part, decoded, with its lines joined by single spaces."""
    return " ".join(parse(raw).get_payload()[0].get_content().split())


def lines_of(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\r\n")
    return raw[:-2].split(b"\r\n")


# --- structure -----------------------------------------------------------------------


def test_bounce_is_a_multipart_report_of_three_parts():
    message = parse(bounce())
    assert message.get_content_type() == "multipart/report"
    assert message.get_param("report-type") == "delivery-status"
    parts = message.get_payload()
    assert [part.get_content_type() for part in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]


def test_bounce_header_names_the_mailer_daemon_and_the_sender():
    message = parse(bounce())
    (sender,) = message["From"].addresses
    assert (sender.display_name, sender.addr_spec) == (
        "Mail Delivery System",
        f"MAILER-DAEMON@{HOST}",
    )
    assert [a.addr_spec for a in message["To"].addresses] == [SENDER]
    assert message["Subject"] == "Undelivered Mail Returned to Sender"
    assert message["Date"].datetime == NOW
    assert message["Auto-Submitted"] == "auto-replied"
    assert message["MIME-Version"] == "1.0"
    assert re.fullmatch(rf"<[^<>@\s]+@{re.escape(HOST)}>", message["Message-ID"])


def test_bounce_goes_to_the_final_hop_of_a_source_routed_sender():
    message = parse(bounce(sender="<@relay.example,@other.example:ann@example.org>"))
    assert [a.addr_spec for a in message["To"].addresses] == [SENDER]


def test_per_message_fields_name_the_reporting_mta_and_arrival():
    per_message = status_blocks(bounce())[0]
    assert per_message == {
        "Reporting-MTA": f"dns; {HOST}",
        "Arrival-Date": "Wed, 01 May 2024 09:30:00 +0000",
    }


def test_each_recipient_has_its_own_block_in_order():
    blocks = status_blocks(bounce())[1:]
    assert blocks == [
        {
            "Final-Recipient": "rfc822; bob@remote.example",
            "Action": "failed",
            "Status": "5.1.1",
            "Remote-MTA": "dns; mx.remote.example",
            "Diagnostic-Code": "smtp; 550 5.1.1 <bob@remote.example>: Recipient address "
            "rejected: User unknown in virtual mailbox table",
            "Last-Attempt-Date": "Mon, 06 May 2024 09:31:05 +0000",
        },
        {
            "Final-Recipient": "rfc822; cat@other.example",
            "Action": "failed",
            "Status": "4.4.7",
            "Remote-MTA": "dns; mx1.other.example",
            "Diagnostic-Code": "smtp; 451 4.3.0 Temporary lookup failure",
            "Last-Attempt-Date": "Mon, 06 May 2024 09:11:05 +0000",
        },
    ]


def test_diagnostic_without_a_type_is_taken_as_an_smtp_reply():
    failure = RecipientFailure(
        "bob@remote.example", "failed", "5.2.2", "mx.remote.example", "552 5.2.2 full; sorry"
    )
    blocks = status_blocks(bounce(failures=[failure]))
    assert blocks[1]["Diagnostic-Code"] == "smtp; 552 5.2.2 full; sorry"


def test_envelope_id_and_original_recipient_come_back_from_the_dsn_parameters():
    orcpt = RecipientFailure(
        final_recipient="bob@remote.example",
        action="failed",
        status="5.1.1",
        original_recipient="rfc822;Bob.Smith@remote.example",
    )
    blocks = status_blocks(bounce(failures=[orcpt], envelope_id="QQ314159"))
    assert blocks[0]["Original-Envelope-Id"] == "QQ314159"
    assert blocks[1]["Original-Recipient"] == "rfc822; Bob.Smith@remote.example"
    assert "Remote-MTA" not in blocks[1] and "Diagnostic-Code" not in blocks[1]


def test_human_part_says_for_each_recipient_what_the_remote_server_replied():
    text = unfolded_text(bounce())
    assert f"This is the mail system at {HOST}." in text
    assert (
        "<bob@remote.example>: could not be delivered Reason: 5.1.1, the mailbox does not "
        "exist. The mail server mx.remote.example answered: 550 5.1.1 <bob@remote.example>: "
        "Recipient address rejected: User unknown in virtual mailbox table"
    ) in text
    assert "<cat@other.example>: still failing when the mail system stopped trying" in text
    assert "451 4.3.0 Temporary lookup failure" in text
    assert "The header of your message is attached below." in text


# --- what of the original comes back -------------------------------------------------


def test_headers_part_is_the_original_header_and_not_its_body():
    raw = bounce()
    header, body = raw_parts(raw)[2]
    assert b"Content-Type: text/rfc822-headers" in header
    assert body == HEADER
    assert BODY_MARKER not in raw
    returned = parse(raw).get_payload()[2]
    assert returned.get_content() == HEADER.decode()


def test_full_return_attaches_the_whole_small_original():
    raw = bounce(return_content="full")
    returned = parse(raw).get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    assert raw_parts(raw)[2][1] == ORIGINAL
    (inner,) = returned.get_payload()
    assert inner["Subject"] == "Lunch on Friday"
    assert "Your message is attached below, as it was sent." in unfolded_text(raw)


def test_full_return_of_an_original_above_the_size_limit_returns_its_header():
    raw = bounce(return_content="full", max_return_size=len(ORIGINAL) - 1)
    assert raw_parts(raw)[2][1] == HEADER
    assert BODY_MARKER not in raw
    assert f"is too large to return whole ({len(ORIGINAL)} bytes)" in unfolded_text(raw)


def test_huge_original_is_not_copied_into_the_bounce():
    body = (BODY_MARKER + b" " + b"x" * 60 + b"\r\n") * 100_000  # about 8 MB
    original = memoryview(HEADER + b"\r\n" + body)
    for return_content in ("headers", "full"):
        raw = bounce(original, return_content=return_content)
        assert len(raw) < 8_000, len(raw)
        assert BODY_MARKER not in raw
        assert raw_parts(raw)[2][1] == HEADER


def test_original_that_is_all_header_returns_a_bounded_part():
    filler = b"".join(b"X-Filler-%06d: %s\r\n" % (n, b"y" * 60) for n in range(20_000))
    raw = bounce(HEADER + filler)  # 1.6 MB and no blank line: all header
    header_part = raw_parts(raw)[2][1]
    assert header_part.startswith(HEADER)
    assert len(header_part) <= MAX_RETURNED_HEADER
    assert header_part.endswith(b"y" * 60 + b"\r\n"), "cut after a whole line"


def test_original_with_bare_lf_line_ends_comes_back_with_crlf():
    lf_original = ORIGINAL.replace(b"\r\n", b"\n")
    for return_content in ("headers", "full"):
        raw = bounce(lf_original, return_content=return_content)
        assert raw_parts(raw)[2][1] in (HEADER, ORIGINAL)
        assert b"\n" not in raw.replace(b"\r\n", b"")


def test_delay_notice_returns_only_headers_even_when_full_was_asked():
    raw = bounce(failures=[DELAYED], delayed=True, return_content="full")
    message = parse(raw)
    assert message["Subject"] == "Delayed Mail (still being retried)"
    assert message.get_payload()[2].get_content_type() == "text/rfc822-headers"
    assert BODY_MARKER not in raw
    (recipient,) = status_blocks(raw)[1:]
    assert recipient["Action"] == "delayed"
    assert recipient["Status"] == "4.4.1"
    assert recipient["Will-Retry-Until"] == "Mon, 06 May 2024 09:30:00 +0000"
    text = unfolded_text(raw)
    assert "has not been delivered yet" in text and "you do not need to send it again" in text
    assert "<cat@other.example>: not delivered yet, still trying" in text


# --- 8-bit originals and international addresses (RFC 6532, RFC 6533) ---------------

UTF8_HEADER = "From: Zoë <zoe@example.org>\r\nSubject: Café für alle\r\n".encode()
UTF8_ORIGINAL = UTF8_HEADER + b"\r\n" + BODY_MARKER + " déjà vu\r\n".encode()


def test_utf8_header_returns_as_global_headers_in_seven_bits():
    raw = bounce(UTF8_ORIGINAL)
    assert raw.isascii(), "quoted-printable keeps the bounce 7-bit (RFC 6533 6)"
    header, body = raw_parts(raw)[2]
    assert b"Content-Type: message/global-headers" in header
    assert b"Content-Transfer-Encoding: quoted-printable" in header
    assert binascii.a2b_qp(body) == UTF8_HEADER
    assert BODY_MARKER not in raw


@pytest.mark.parametrize("original", [UTF8_ORIGINAL, UTF8_ORIGINAL.removesuffix(b"\r\n")])
def test_utf8_original_returns_whole_as_message_global(original):
    raw = bounce(original, return_content="full")
    assert raw.isascii()
    header, body = raw_parts(raw)[2]
    assert b"Content-Type: message/global\r\n" in header
    assert binascii.a2b_qp(body) == original


def test_header_bytes_that_are_not_utf8_become_replacement_characters():
    latin1 = b"Subject: Caf\xe9\r\nFrom: a@example.org\r\n\r\nbody\r\n"
    header, body = raw_parts(bounce(latin1))[2]
    assert b"message/global-headers" in header
    assert binascii.a2b_qp(body) == "Subject: Caf\ufffd\r\nFrom: a@example.org\r\n".encode()


def test_full_return_of_an_eight_bit_body_is_marked_8bit():
    original = HEADER + b"\r\n" + "Grüße\r\n".encode()
    raw = bounce(original, return_content="full")
    message = parse(raw)
    assert message["Content-Transfer-Encoding"] == "8bit"
    returned = message.get_payload()[2]
    assert returned.get_content_type() == "message/rfc822"
    assert returned["Content-Transfer-Encoding"] == "8bit"
    assert raw_parts(raw)[2][1] == original


def test_seven_bit_original_makes_a_seven_bit_bounce():
    for return_content in ("headers", "full"):
        raw = bounce(return_content=return_content)
        assert raw.isascii()
        assert parse(raw)["Content-Transfer-Encoding"] == "7bit"


def test_non_ascii_recipient_is_reported_as_utf8_xtext():
    failure = RecipientFailure(
        final_recipient="zoë+news=1@bücher.example",
        action="failed",
        status="5.1.1",
        original_recipient="utf-8;zoë+news=1@bücher.example",
    )
    raw = bounce(failures=[failure])
    assert raw.isascii()
    (recipient,) = status_blocks(raw)[1:]
    # RFC 6533 3: QCHAR excludes "+" and "=", so they are escaped with the non-ASCII.
    assert recipient["Final-Recipient"] == (r"utf-8; zo\x{EB}\x{2B}news\x{3D}1@b\x{FC}cher.example")
    assert recipient["Original-Recipient"] == r"utf-8; zo\x{EB}+news=1@b\x{FC}cher.example"
    # The person reads the address as it is.
    assert "<zoë+news=1@bücher.example>: could not be delivered" in unfolded_text(raw)


def test_ascii_mailbox_at_an_idn_domain_stays_rfc822_with_a_labels():
    failure = RecipientFailure("info@bücher.example", "failed", "5.1.1")
    raw = bounce(failures=[failure])
    assert status_blocks(raw)[1]["Final-Recipient"] == "rfc822; info@xn--bcher-kva.example"
    assert "<info@bücher.example>: could not be delivered" in unfolded_text(raw)


def test_return_content_is_headers_or_full():
    with pytest.raises(ValueError):
        bounce(return_content="HDRS")


def test_non_ascii_sender_is_written_in_utf8():
    raw = bounce(sender="zoë@example.org")
    assert "\r\nTo: zoë@example.org\r\n".encode() in raw


def test_non_ascii_in_a_remote_reply_is_escaped_in_the_status_part():
    failure = RecipientFailure(
        "bob@remote.example", "failed", "5.7.1", "mx.remote.example", "smtp; 550 5.7.1 Refusé"
    )
    raw = bounce(failures=[failure])
    assert status_blocks(raw)[1]["Diagnostic-Code"] == r"smtp; 550 5.7.1 Refus\x{E9}"
    assert "550 5.7.1 Refusé" in unfolded_text(raw)


# --- line limits and hostile input ---------------------------------------------------


def test_every_line_fits_rfc_5322_even_with_long_input():
    long_word = "z" * 5000
    failure = RecipientFailure(
        "bob@remote.example",
        "failed",
        "5.0.0",
        "mx.remote.example",
        "smtp; 550 5.0.0 " + long_word + " " + "word " * 400,
    )
    long_header = b"X-Long: " + b"q" * 3000 + b"\r\n"
    for original, return_content in ((long_header + ORIGINAL, "headers"), (ORIGINAL, "full")):
        raw = bounce(original, failures=[failure], return_content=return_content)
        assert max(len(line) for line in lines_of(raw)) <= 998
        assert b"\r" not in raw.replace(b"\r\n", b"") and b"\n" not in raw.replace(b"\r\n", b"")
        parse(raw)


def test_over_long_header_line_returns_losslessly_in_quoted_printable():
    long_header = b"X-Long: " + b"q" * 3000 + b"\r\n" + HEADER
    header, body = raw_parts(bounce(long_header + b"\r\nbody\r\n"))[2]
    assert b"Content-Transfer-Encoding: quoted-printable" in header
    assert binascii.a2b_qp(body) == long_header


def test_full_return_with_an_over_long_body_line_falls_back_to_headers():
    original = HEADER + b"\r\n" + b"w" * 1200 + b"\r\n"
    raw = bounce(original, return_content="full")
    assert raw_parts(raw)[2][1] == HEADER
    assert "Your message cannot be returned whole" in unfolded_text(raw)


def test_remote_reply_cannot_inject_fields_or_parts():
    failure = RecipientFailure(
        "bob@remote.example",
        "failed",
        "5.1.1",
        "mx.remote.example",
        "smtp; 550 5.1.1 no\r\nBcc: victim@example.net\r\n\r\nAction: delivered\x00\x1b",
    )
    raw = bounce(failures=[failure])
    blocks = status_blocks(raw)
    assert len(blocks) == 2 and "Bcc" not in blocks[1]
    assert blocks[1]["Action"] == "failed"
    assert blocks[1]["Diagnostic-Code"] == (
        "smtp; 550 5.1.1 no Bcc: victim@example.net Action: delivered"
    )
    assert parse(raw)["Bcc"] is None
    assert b"\x00" not in raw and b"\x1b" not in raw


# --- determinism ---------------------------------------------------------------------


def test_same_inputs_give_the_same_bytes():
    assert bounce() == bounce()
    assert bounce(memoryview(ORIGINAL)) == bounce(ORIGINAL)


def test_another_time_or_recipient_gives_another_message_id_and_boundary():
    first = parse(bounce())
    for other in (parse(bounce(now=NOW + timedelta(seconds=1))), parse(bounce(failures=[EXPIRED]))):
        assert other["Message-ID"] != first["Message-ID"]
        assert other.get_boundary() != first.get_boundary()


def test_boundary_occurs_only_as_delimiters():
    raw = bounce(return_content="full")
    boundary = parse(raw).get_boundary().encode()
    assert raw.count(boundary) == 1 + 4  # the parameter, three delimiters, the close


# --- whom to bounce, and what is refused ---------------------------------------------


@pytest.mark.parametrize("sender", ["", "<>", " <> ", "< >"])
def test_null_sender_is_never_bounced(sender):
    assert not should_bounce(sender)
    with pytest.raises(ValueError):
        bounce(sender=sender)


@pytest.mark.parametrize(
    "sender", ["ann@example.org", "<ann@example.org>", "MAILER-DAEMON@example.net"]
)
def test_any_other_sender_is_bounced(sender):
    # RFC 5321 6.1 exempts only the null reverse-path; a MAILER-DAEMON address
    # that is not null gets its notice, sent with "<>", which cannot loop.
    assert should_bounce(sender)


def test_return_address_strips_brackets_and_source_route():
    assert return_address("<@a.example,@b.example:user@d.example>") == "user@d.example"
    assert return_address(" <ann@example.org> ") == "ann@example.org"


@pytest.mark.parametrize(
    "fields",
    [
        {"action": "delivered", "status": "2.0.0"},
        {"action": "failed", "status": "2.0.0"},
        {"action": "delayed", "status": "5.1.1"},
        {"action": "failed", "status": "5.1"},
        {"action": "failed", "status": "5.1.1\r\nBcc: x@example.net"},
    ],
)
def test_recipient_failure_refuses_what_a_dsn_cannot_say(fields):
    with pytest.raises(ValueError):
        RecipientFailure("bob@remote.example", **fields)


def test_recipient_address_with_a_line_end_is_refused():
    with pytest.raises(ValueError):
        RecipientFailure("bob@remote.example\r\nBcc: x@example.net", "failed", "5.1.1")


def test_notice_kind_must_match_the_recipients():
    with pytest.raises(ValueError):
        bounce(failures=[UNKNOWN_USER], delayed=True)
    with pytest.raises(ValueError):
        bounce(failures=[DELAYED])
    with pytest.raises(ValueError):
        bounce(failures=[])
