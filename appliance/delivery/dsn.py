"""Delivery status notifications: the bounce and the delay notice, as bytes.

make_bounce() is pure: it gets the original message and what became of each
recipient, and returns the whole notification (CRLF line ends) that the queue
then sends with a null reverse-path (RFC 5321 4.5.5, 6.1). It is a
multipart/report (RFC 6522) of three parts:

1. text/plain: what happened, in plain words, recipient by recipient;
2. message/delivery-status (RFC 3464): the same, for programs;
3. the original's header (text/rfc822-headers), or the whole original
   (message/rfc822) when the sender asked for it (RET=FULL, RFC 3461 4.3),
   this is a failure and the message is small (MAX_RETURN_SIZE).

should_bounce() says whether a reverse-path gets a notification at all.

Seven bits wherever the inputs allow it, and no line beyond RFC 5322's 998:

- Fields we write are folded at 78 columns. Text from outside (the remote
  server's reply) loses its control characters, so it cannot start a field
  or a part of its own, and over-long words are cut.
- An original whose header holds raw UTF-8 (RFC 6532) is never downgraded:
  its header returns as message/global-headers, or whole as message/global
  (RFC 6533 3, 6), each in quoted-printable so the bounce stays 7-bit and
  lossless even to a return path without SMTPUTF8 (RFC 6533 6 asks for a
  7-bit transfer encoding then, and we cannot know the return path here).
  Sequences that are not UTF-8 become U+FFFD, since those types must be UTF-8.
- An ASCII header with lines too long for 7bit returns as quoted-printable
  text/rfc822-headers, again lossless.
- A non-ASCII recipient is reported with the utf-8 address type in its 7-bit
  form, utf-8-addr-xtext (RFC 6533 3), so message/delivery-status stays 7-bit.
- What still needs more than 7 bits: a whole original returned with an 8-bit
  body (message/rfc822 allows no encoding but 7bit, 8bit and binary, RFC 2046
  5.2.1) makes the bounce 8bit, to be sent with BODY=8BITMIME; a non-ASCII
  sender address puts UTF-8 in To:, to be sent with SMTPUTF8. The caller
  sees both in the bytes (any octet >= 0x80; the To: field).

The result is deterministic: the boundary and Message-ID are digests of the
inputs, so the same failure reported twice is the same message.
"""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import re
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Literal, NamedTuple

# Postfix's bounce_size_limit: an original up to this size returns whole when
# RET=FULL asks for it; beyond, only its header.
MAX_RETURN_SIZE = 50_000
# Postfix's header_size_limit: how much of the original's header returns at
# most, so that a message that is all header still makes a bounded bounce.
MAX_RETURNED_HEADER = 102_400
MAX_LINE = 998  # RFC 5322 2.1.1, octets before CRLF
FOLD_AT = 78  # RFC 5322 2.1.1: SHOULD be no more than 78
# A word no fold can break (a remote reply with a 2,000-character token) is
# cut into pieces of this size: with a field name before it, a line stays
# within MAX_LINE.
MAX_WORD = 900
# A remote reply longer than this is cut: the report is for a person to read.
MAX_DIAGNOSTIC = 4096

Action = Literal["failed", "delayed"]
ReturnContent = Literal["headers", "full"]

# RFC 3463 2: class.subject.detail, each at most three digits.
_STATUS = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})$")
# C0 controls, DEL, C1 controls; tabs and line ends are turned into spaces first.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# RFC 3464 2.3.6: diagnostic-type is an atom ("smtp", "x-unix") before ";".
_DIAGNOSTIC_TYPE = re.compile(r"^([A-Za-z0-9-]+)\s*;")
# Host names and address literals as Remote-MTA and Reporting-MTA carry them.
_HOST = re.compile(r"^[A-Za-z0-9.\-_:\[\]]{1,255}$")


@dataclass(frozen=True, slots=True)
class RecipientFailure:
    """What became of one recipient: one per-recipient block of RFC 3464 2.3."""

    final_recipient: str  # the address last tried (RCPT TO)
    action: Action
    status: str  # RFC 3463 enhanced code: 5.x.x or, when retries ran out, 4.x.x
    remote_mta: str = ""  # the host that answered, if one did
    # RFC 3464 2.3.6: diagnostic-type "; " text, e.g. "smtp; 550 5.1.1 No such user";
    # the lines of a multi-line reply may be separated by line ends.
    diagnostic_code: str = ""
    last_attempt_date: datetime | None = None
    # RFC 3461 4.2: the ORCPT parameter, xtext already decoded ("rfc822;ann@x.example").
    original_recipient: str = ""
    will_retry_until: datetime | None = None  # for delayed: when the queue gives up

    def __post_init__(self) -> None:
        match = _STATUS.match(self.status)
        if self.action not in ("failed", "delayed"):
            raise ValueError(f"action must be failed or delayed, not {self.action!r}")
        if match is None:
            raise ValueError(f"not an enhanced status code: {self.status!r}")
        # A delay is transient by definition; a failure is permanent (5) or a
        # transient one that outlived the retry period (4, as Postfix reports it).
        if self.action == "delayed" and match[1] != "4":
            raise ValueError(f"a delayed recipient needs a 4.x.x status, not {self.status}")
        if match[1] == "2":
            raise ValueError(f"{self.status} reports success, which is no bounce")
        _check_address(self.final_recipient)


def return_address(sender: str) -> str:
    """Where a notification about a message from sender goes ("" for none).

    RFC 5321 6.1: to the reverse-path, a source route cut to its final hop
    (<@a,@b:user@d> notifies user@d).
    """
    address = sender.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if address.startswith("@") and ":" in address:
        address = address.partition(":")[2]
    return address


def should_bounce(sender: str) -> bool:
    """Whether a message from this reverse-path may be answered by a DSN.

    Only the null reverse-path is refused. RFC 5321 6.1: a notification MUST
    be sent after a delivery failure, with a null reverse-path, and MUST NOT
    be sent when the reverse-path is null; RFC 3464 and RFC 3461 add no other
    exception. So a sender such as MAILER-DAEMON@host is bounced: the address
    is not null, the notice to it leaves with "<>", and if that notice fails
    nothing comes back to us, so there is no loop to fear. (RFC 3834 2 asks
    auto-responders to skip such senders; a DSN is not an auto-response.)
    """
    return return_address(sender) != ""


def make_bounce(
    original: bytes | bytearray | memoryview,
    reporting_mta: str,
    sender: str,
    failures: Sequence[RecipientFailure],
    arrival_date: datetime,
    now: datetime,
    delayed: bool = False,
    return_content: ReturnContent = "headers",
    max_return_size: int = MAX_RETURN_SIZE,
    *,
    envelope_id: str = "",
) -> bytes:
    """The notification to sender about failures (or delays) of original, as bytes.

    reporting_mta is this host's name. envelope_id is the ENVID parameter
    (RFC 3461 4.4), xtext decoded, or "". Datetimes without a zone are UTC.
    Only headers return with a delay notice, whatever return_content says:
    RET applies to failures (RFC 3461 4.3), and the message is still queued.
    """
    host = _host_name(reporting_mta)
    to = return_address(sender)
    if not to:
        raise ValueError("no notification to the null reverse-path (RFC 5321 6.1)")
    _check_address(to)
    if not failures:
        raise ValueError("a notification needs at least one recipient")
    if return_content not in ("headers", "full"):
        raise ValueError(f"return_content is headers or full, not {return_content!r}")
    actions = {failure.action for failure in failures}
    if delayed and actions != {"delayed"}:
        raise ValueError("a delay notice reports delayed recipients only")
    if not delayed and "failed" not in actions:
        raise ValueError("a bounce reports at least one failed recipient")

    view = memoryview(original).cast("B")
    whole = return_content == "full" and not delayed
    returned = _returned_part(view, whole, max_return_size)
    text = _human_part(host, failures, delayed, returned.note, _aware(arrival_date))
    status = _status_part(host, failures, _aware(arrival_date), envelope_id)
    parts = [text, status, returned.part]

    digest = _digest(host, to, failures, arrival_date, now, delayed, view, parts)
    boundary = _boundary(digest, parts)
    if delayed:
        subject = "Delayed Mail (still being retried)"
    else:
        subject = "Undelivered Mail Returned to Sender"
    eight_bit = any(part.encoding == "8bit" for part in parts)
    header = [
        _field("From", f"Mail Delivery System <MAILER-DAEMON@{host}>"),
        _field("To", to),
        _field("Subject", subject),
        _field("Date", format_datetime(_aware(now))),
        _field("Message-ID", f"<{digest[:32]}.dsn@{host}>"),
        _field("Auto-Submitted", "auto-replied"),  # RFC 3834 5
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary="{boundary}"',
        f"Content-Transfer-Encoding: {'8bit' if eight_bit else '7bit'}",
    ]
    out = [("\r\n".join(header) + "\r\n\r\n").encode("utf-8")]
    out.append(b"This is a delivery status notification in MIME format.\r\n")
    for part in parts:
        out.append(f"\r\n--{boundary}\r\n".encode("ascii"))
        out.append(f"Content-Type: {part.content_type}\r\n".encode("ascii"))
        out.append(f"Content-Transfer-Encoding: {part.encoding}\r\n\r\n".encode("ascii"))
        out.append(part.body)
    out.append(f"\r\n--{boundary}--\r\n".encode("ascii"))
    return b"".join(out)


class _Part(NamedTuple):
    content_type: str
    encoding: str  # Content-Transfer-Encoding
    body: bytes  # CRLF line ends; the CRLF before the next boundary is not in it


class _Returned(NamedTuple):
    part: _Part
    note: str  # what the human-readable part says about it


# --- the returned original (third part) ------------------------------------------


def _returned_part(view: memoryview, whole: bool, max_size: int) -> _Returned:
    if whole and len(view) <= max_size:
        part = _whole_message(bytes(view))
        if part is not None:
            return _Returned(part, "Your message is attached below, as it was sent.")
        why = "Your message cannot be returned whole, so its header is attached below."
    elif whole:
        why = (
            f"Your message is too large to return whole ({len(view)} bytes), so its header"
            " is attached below."
        )
    else:
        why = "The header of your message is attached below."
    return _Returned(_header_part(_header_lines(view)), why)


def _header_lines(view: memoryview) -> list[bytes]:
    """The original's header lines without line ends, at most MAX_RETURNED_HEADER octets."""
    prefix = bytes(view[: MAX_RETURNED_HEADER + 2])
    lines = []
    kept = 0
    for line in prefix.split(b"\n"):
        line = line.removesuffix(b"\r")
        if not line:
            break  # the blank line ending the header (or the prefix's end)
        if kept + len(line) + 2 > MAX_RETURNED_HEADER:
            # Cut after the last whole line; a first line longer than the
            # limit is all there is, so it is cut itself.
            if not lines:
                lines.append(line[:MAX_RETURNED_HEADER])
            break
        lines.append(line)
        kept += len(line) + 2
    return lines


def _header_part(lines: list[bytes]) -> _Part:
    body = b"".join(line + b"\r\n" for line in lines)
    if not body.isascii():
        # RFC 6533 3: a header with UTF-8 in it is message/global-headers.
        text = body.decode("utf-8", "replace").encode("utf-8")
        return _Part("message/global-headers", "quoted-printable", _quoted_printable(text))
    if _is_seven_bit_text(body):
        return _Part("text/rfc822-headers", "7bit", body)
    return _Part("text/rfc822-headers", "quoted-printable", _quoted_printable(body))


def _whole_message(raw: bytes) -> _Part | None:
    """The original as message/rfc822 or message/global, or None if it cannot be either."""
    message = _crlf(raw)
    header, _, _ = message.partition(b"\r\n\r\n")
    if not header.isascii():
        try:
            header.decode("utf-8")
        except UnicodeDecodeError:
            return None  # not the UTF-8 that message/global requires
        # RFC 6532 3.5 lets message/global have a transfer encoding.
        return _Part("message/global", "quoted-printable", _quoted_printable(message))
    if not _is_eight_bit_text(message):
        return None  # NULs, bare CRs or long lines: message/rfc822 would need binary
    return _Part("message/rfc822", "7bit" if message.isascii() else "8bit", message)


def _crlf(raw: bytes) -> bytes:
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _is_eight_bit_text(data: bytes) -> bool:
    """Whether data is 8bit data as RFC 2045 2.8 defines it: short lines, no NUL, no lone CR."""
    if b"\x00" in data or data.count(b"\r") != data.count(b"\r\n"):
        return False
    return all(len(line) <= MAX_LINE for line in data.split(b"\r\n"))


def _is_seven_bit_text(data: bytes) -> bool:
    return data.isascii() and _is_eight_bit_text(data)


def _quoted_printable(data: bytes) -> bytes:
    """RFC 2045 6.7, line by line: a CR or LF inside a line is encoded, not a line end.

    Data without a last line end ends in a soft line break, so that decoding
    adds none.
    """
    lines = data.split(b"\r\n")
    last = lines.pop()
    # Without line ends in its input, b2a_qp writes its soft breaks as "=\n".
    encoded = [binascii.b2a_qp(line, istext=False).replace(b"\n", b"\r\n") for line in lines]
    if last:
        encoded.append(binascii.b2a_qp(last, istext=False).replace(b"\n", b"\r\n") + b"=")
    return b"".join(line + b"\r\n" for line in encoded)


# --- the delivery-status part (RFC 3464 2.2, 2.3) ------------------------------------


def _status_part(
    host: str, failures: Sequence[RecipientFailure], arrival: datetime, envelope_id: str
) -> _Part:
    blocks = []
    per_message = []
    if envelope_id:
        per_message.append(_field("Original-Envelope-Id", _seven_bit(_clean(envelope_id))))
    per_message.append(_field("Reporting-MTA", f"dns; {host}"))
    per_message.append(_field("Arrival-Date", format_datetime(arrival)))
    blocks.append(per_message)
    for failure in failures:
        blocks.append(_recipient_fields(failure))
    body = "\r\n".join("".join(field + "\r\n" for field in block) for block in blocks)
    return _Part("message/delivery-status", "7bit", body.encode("ascii"))


def _recipient_fields(failure: RecipientFailure) -> list[str]:
    fields = []
    if failure.original_recipient:
        fields.append(_field("Original-Recipient", _original_recipient(failure.original_recipient)))
    fields.append(_field("Final-Recipient", _typed_address(failure.final_recipient)))
    fields.append(_field("Action", failure.action))
    fields.append(_field("Status", failure.status))
    if failure.remote_mta:
        fields.append(_field("Remote-MTA", f"dns; {_host_name(failure.remote_mta)}"))
    if failure.diagnostic_code:
        fields.append(_field("Diagnostic-Code", _seven_bit(_diagnostic(failure))))
    if failure.last_attempt_date is not None:
        fields.append(
            _field("Last-Attempt-Date", format_datetime(_aware(failure.last_attempt_date)))
        )
    if failure.will_retry_until is not None and failure.action == "delayed":
        fields.append(_field("Will-Retry-Until", format_datetime(_aware(failure.will_retry_until))))
    return fields


def _typed_address(address: str) -> str:
    """An address as Final-Recipient carries it (RFC 3464 2.3.2), in seven bits.

    A non-ASCII domain after an ASCII local part is written as A-labels, which
    every reader of the rfc822 type understands. A non-ASCII local part needs
    the utf-8 type, in its utf-8-addr-xtext form (RFC 6533 3): every character
    outside QCHAR (non-ASCII, controls, space, "\\", "+", "=") as \\x{HEX}.
    """
    local, at, domain = address.rpartition("@")
    if at and local.isascii() and not domain.isascii():
        # A name IDNA cannot write stays as it is, for the utf-8 type below.
        with contextlib.suppress(UnicodeError):
            address = f"{local}@{domain.encode('idna').decode('ascii')}"
    if address.isascii():
        return f"rfc822; {address}"
    escaped = "".join(c if _is_qchar(c) else _embedded(c) for c in address)
    return f"utf-8; {escaped}"


def _original_recipient(orcpt: str) -> str:
    """The ORCPT value (RFC 3461 4.2) as Original-Recipient carries it, in seven bits.

    A utf-8 address may come in any of RFC 6533's three forms; escaping its
    non-ASCII characters turns each into the 7-bit one, utf-8-addr-xtext.
    """
    kind, _, address = _clean(orcpt).partition(";")
    kind, address = kind.strip(), address.strip()
    if kind.lower() != "utf-8":
        return _typed_address(address) if kind.lower() == "rfc822" else f"{kind}; {address}"
    return f"utf-8; {_seven_bit(address)}"


def _is_qchar(c: str) -> bool:
    # RFC 6533 3: QCHAR = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e
    return "!" <= c <= "~" and c not in "+=\\"


def _embedded(c: str) -> str:
    # RFC 6533 3 EmbeddedUnicodeChar: upper-case hex, two digits at least.
    return f"\\x{{{ord(c):02X}}}"


def _diagnostic(failure: RecipientFailure) -> str:
    """diagnostic-type "; " text with the reply's lines joined (RFC 3464 2.3.6)."""
    code = _clean(failure.diagnostic_code)
    typed = _DIAGNOSTIC_TYPE.match(code)
    kind, text = (typed[1], code[typed.end() :]) if typed else ("smtp", code)
    return f"{kind}; {text.strip()}"[:MAX_DIAGNOSTIC]


def _seven_bit(text: str) -> str:
    """text with non-ASCII characters as \\x{HEX}, as RFC 6533 3 writes them in addresses."""
    return "".join(c if c.isascii() else _embedded(c) for c in text)


# --- the human-readable part ---------------------------------------------------------

# RFC 3463 3: what subject.detail means, in words for the sender.
_DETAIL_WORDS = {
    "1.1": "the mailbox does not exist",
    "1.2": "the recipient's domain does not exist or takes no mail",
    "1.3": "the recipient's address is not valid",
    "1.6": "the mailbox has moved",
    "1.10": "the recipient's domain says it accepts no mail",  # RFC 7505 null MX
    "2.1": "the mailbox is disabled",
    "2.2": "the mailbox is full",
    "2.3": "the message is larger than the recipient accepts",
    "3.4": "the message is larger than the receiving system accepts",
    "4.1": "the receiving mail server did not answer",
    "4.2": "the connection to the receiving mail server broke",
    "4.3": "the recipient's mail servers could not be looked up",
    "4.4": "no mail server could be found for the recipient's domain",
    "4.7": "the message was not delivered in time",
    "7.1": "the receiving server does not accept it from you",
}
_SUBJECT_WORDS = {
    "0": "the reason was not given",
    "1": "a problem with the address",
    "2": "a problem with the mailbox",
    "3": "a problem with the receiving mail system",
    "4": "a problem with the network or with routing",
    "5": "a problem in the mail protocol",
    "6": "a problem with the message's content or format",
    "7": "a security or policy reason",
}
_WIDTH = 76


def _human_part(
    host: str,
    failures: Sequence[RecipientFailure],
    delayed: bool,
    returned_note: str,
    arrival: datetime,
) -> _Part:
    lines = [f"This is the mail system at {host}.", ""]
    sent = format_datetime(arrival)
    if delayed:
        lines += _wrap(
            f"Your message of {sent} has not been delivered yet to the recipients"
            " listed below. The mail system is still trying, so you do not need to"
            " send it again. If it still cannot be delivered when the mail system"
            " stops trying, you will get another report, and your message back."
        )
    else:
        lines += _wrap(
            f"Your message of {sent} could not be delivered to the recipients listed"
            " below, and the mail system has stopped trying. Below each address is"
            " the reason."
        )
        lines += [""] + _wrap(
            "If the reason does not tell you what to do, send this whole report to"
            " the postmaster of your own mail domain, who can help."
        )
    lines += [""] + _wrap(returned_note)
    for failure in failures:
        lines += [""] + _describe(failure)
    text = "\r\n".join(lines) + "\r\n"
    if text.isascii():
        return _Part("text/plain; charset=us-ascii", "7bit", text.encode("ascii"))
    return _Part(
        "text/plain; charset=utf-8", "quoted-printable", _quoted_printable(text.encode("utf-8"))
    )


def _describe(failure: RecipientFailure) -> list[str]:
    address = _clean(failure.final_recipient)
    if failure.action == "delayed":
        lines = [f"<{address}>: not delivered yet, still trying"]
    elif failure.status.startswith("4."):
        lines = [f"<{address}>: still failing when the mail system stopped trying"]
    else:
        lines = [f"<{address}>: could not be delivered"]
    lines += _wrap(f"Reason: {failure.status}, {_status_words(failure.status)}.", "    ")
    reply = _diagnostic(failure).partition(";")[2].strip() if failure.diagnostic_code else ""
    if failure.remote_mta and reply:
        lines += _wrap(f"The mail server {_host_name(failure.remote_mta)} answered:", "    ")
        lines += _wrap(reply, "        ")
    elif reply:
        lines += _wrap(f"Details: {reply}", "    ")
    if failure.last_attempt_date is not None:
        lines.append(f"    Last tried: {format_datetime(_aware(failure.last_attempt_date))}")
    if failure.will_retry_until is not None and failure.action == "delayed":
        lines.append(f"    Trying until: {format_datetime(_aware(failure.will_retry_until))}")
    return lines


def _status_words(status: str) -> str:
    _, subject, detail = status.split(".")
    subject, detail = str(int(subject)), str(int(detail))
    return _DETAIL_WORDS.get(f"{subject}.{detail}") or _SUBJECT_WORDS.get(
        subject, "the reason was not given"
    )


def _wrap(text: str, indent: str = "") -> list[str]:
    # break_long_words keeps even a reply without spaces within the width.
    return textwrap.wrap(
        text, _WIDTH, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


# --- fields, names, digests ----------------------------------------------------------


def _field(name: str, value: str) -> str:
    """name: value, folded before a word that would pass FOLD_AT (RFC 5322 2.2.3).

    A fold is a CRLF put before an existing space, so unfolding gives the
    value back, runs of spaces included; only a word longer than MAX_WORD
    gains spaces, where it is cut.
    """
    first = f"{name}:"
    lines, line = [], first
    for word in value.split(" "):
        for piece in [word[i : i + MAX_WORD] for i in range(0, len(word), MAX_WORD)] or [""]:
            # Never fold right after the name, nor leave a line of blanks alone.
            if piece and len(line) + 1 + len(piece) > FOLD_AT and line.strip() and line != first:
                lines.append(line)
                line = ""
            line += " " + piece
    lines.append(line)
    return "\r\n".join(lines)


def _clean(text: str) -> str:
    """text on one line, without control characters or lone surrogates."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = re.sub(r"[\r\n\t]+", " ", text)
    return _CONTROLS.sub("", text).strip()


def _check_address(address: str) -> None:
    if not address or address != _clean(address):
        raise ValueError(f"not an address to put in a field: {address!r}")


def _host_name(host: str) -> str:
    name = host.strip().rstrip(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"not a host name: {host!r}") from None
    if not _HOST.match(name):
        raise ValueError(f"not a host name: {host!r}")
    return name


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _digest(
    host: str,
    to: str,
    failures: Sequence[RecipientFailure],
    arrival: datetime,
    now: datetime,
    delayed: bool,
    view: memoryview,
    parts: list[_Part],
) -> str:
    """A digest of everything the notification says; the original counts by its size
    and by what of it is returned, so a large one is not read whole."""
    digest = hashlib.blake2b(digest_size=20)
    for item in (host, to, repr(failures), repr(_aware(arrival)), repr(_aware(now)), delayed):
        digest.update(repr(item).encode("utf-8", "surrogatepass") + b"\0")
    digest.update(str(len(view)).encode("ascii") + b"\0")
    for part in parts:
        digest.update(part.content_type.encode("ascii") + b"\0" + part.body + b"\0")
    return digest.hexdigest()


def _boundary(digest: str, parts: list[_Part]) -> str:
    """A boundary that occurs in no part (RFC 2046 5.1.1).

    "=_" cannot occur in quoted-printable; the 7bit and 8bit parts are searched.
    """
    for attempt in range(100):
        boundary = f"=_dsn_{digest}" + (f"_{attempt}" if attempt else "")
        delimiter = f"--{boundary}".encode("ascii")
        if not any(delimiter in part.body for part in parts):
            return boundary
    raise AssertionError("no boundary found")  # a digest occurring 100 times: impossible
