"""Sans-IO SMTP server core (RFC 5321): bytes in, events out, replies as bytes out.

ServerConnection never touches a socket. The session feeds it what the client
sent (receive_data), takes the events that need a decision (next_event),
answers each with respond(), and writes data_to_send(). Everything that does
not need the session's knowledge (sequence, syntax, limits, dot-stuffing,
BDAT framing, EHLO keywords) is decided here, next to the rule it follows.

One event at a time: while an event waits for respond(), later input stays
buffered, so pipelined commands (RFC 2920) are answered in order.

With submission=True the connection serves message submission (RFC 6409 on
587 after STARTTLS, RFC 8314 on 465 with TLS from the start): AUTH PLAIN and
LOGIN are offered once TLS is on, and MAIL needs a successful AUTH. The core
runs the SASL exchange and hands the credentials over as an Authenticate
event; the session checks them and calls auth_succeeded() or auth_failed().
Later MailFrom and RcptTo events carry the authenticated identity, and what
a user may send as is the session's decision. Without it (port 25) AUTH is
neither offered nor accepted, as Postfix does by default.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from enum import Enum


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status code (RFC 3463, "" for none), text."""

    code: int
    status: str
    text: str | tuple[str, ...]

    @property
    def is_error(self) -> bool:
        return self.code >= 400

    def to_bytes(self) -> bytes:
        # RFC 2034: the enhanced code starts the text of every line.
        status = f"{self.status} " if self.status else ""
        if isinstance(self.text, str):
            return f"{self.code} {status}{self.text}\r\n".encode()
        # RFC 5321 4.2.1: "250-" on every line but the last.
        *lines, last = self.text or ("",)
        head = "".join(f"{self.code}-{status}{line}\r\n" for line in lines)
        return f"{head}{self.code} {status}{last}\r\n".encode()


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may ask of a session; each is a named, tunable setting."""

    # RFC 5321 4.5.3.1.4: 512 octets with the CRLF, which extensions may
    # raise. MAIL parameters and 256-octet paths (UTF-8 ones under SMTPUTF8)
    # can pass 512; 4096 still keeps a session's line buffer small.
    max_command_line: int = 4096
    # Announced in the EHLO SIZE keyword (RFC 1870) and enforced on the
    # content after dot-unstuffing, which is what RFC 1870 section 5 counts.
    max_message_size: int = 50 * 1024 * 1024
    # RFC 5321 4.5.3.1.8 requires accepting at least 100; more than a
    # thousand in one transaction is a mailing-list server's job.
    max_recipients: int = 1000
    # NOOP, RSET, VRFY, EXPN and HELP make no progress; a client sending
    # this many without delivering a message is wasting a connection slot
    # (Postfix's smtpd_junk_command_limit).
    max_junk_commands: int = 100
    # Error replies given without a message delivered before the session
    # gives up (Postfix's smtpd_hard_error_limit); 452 too many recipients
    # is normal flow control (RFC 5321 4.5.3.1.10) and does not count.
    max_errors: int = 20
    # Failed AUTHs (wrong credentials) before the session gives up with 421:
    # a client may mistype once or twice, a guesser is made to reconnect
    # (and the session's per-address delay grows with every failure).
    max_auth_failures: int = 3
    # An AUTH command line or SASL response line, with its CRLF. RFC 4954 4
    # wants room for the largest response of each mechanism offered: PLAIN's,
    # with RFC 4616's 255-octet authzid, authcid and password, is 1024
    # base64 characters. Longer lines get 500 5.5.6.
    max_auth_line: int = 4096


# -- events: what the session decides on ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """EHLO or HELO; respond(None) gives the greeting and, for EHLO, the keywords."""

    verb: str
    domain: str


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM; address is "" for the null reverse-path <>. Default reply 250 2.1.0.

    In submission mode identity is who authenticated (auth_succeeded()); the
    session refuses a sender that is not theirs with respond(Reply(553, ...)).
    """

    address: str
    smtputf8: bool
    body: str  # "7BIT" or "8BITMIME"
    size: int | None  # the SIZE parameter (RFC 1870), if given
    identity: str | None = None  # None outside submission mode


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO; default reply 250 2.1.5. identity as for MailFrom."""

    address: str
    identity: str | None = None


@dataclass(frozen=True, slots=True)
class Authenticate:
    """AUTH PLAIN or LOGIN completed (submission mode only).

    The session checks the credentials and answers with auth_succeeded(identity)
    (235) or auth_failed() (535, or 454 with temporary=True), never respond().
    """

    username: str
    password: str = field(repr=False)  # kept out of logs that print the event
    mechanism: str  # "PLAIN" or "LOGIN"


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """The whole message (dot-unstuffed for DATA); the session must pass a Reply."""

    content: bytes | bytearray  # the core keeps no reference to it
    via: str  # "DATA" or "BDAT"


@dataclass(frozen=True, slots=True)
class MessageRefused:
    """The core refused the message it just read (bare line ends, too big).

    Nothing is to be stored; the session learns of it to log the transaction.
    respond(None) sends `reply`.
    """

    reply: Reply
    size: int  # octets received


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STARTTLS; respond(None) queues 220, then the session upgrades and calls tls_started()."""


Event = Hello | MailFrom | RcptTo | MessageReceived | MessageRefused | StartTLS | Authenticate


# -- replies the core gives on its own --------------------------------------------------

_OK = Reply(250, "2.0.0", "Ok")
_MAIL_OK = Reply(250, "2.1.0", "Ok")
_RCPT_OK = Reply(250, "2.1.5", "Ok")
_TLS_READY = Reply(220, "2.0.0", "Ready to start TLS")
_START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
_BYE = Reply(221, "2.0.0", "Bye")
# RFC 5321 3.5.3: 252 when the server cannot verify but will try to deliver.
_CANNOT_VRFY = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
_HELP = Reply(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS")
_SUBMISSION_HELP = Reply(214, "2.0.0", f"{_HELP.text} AUTH")

_LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
_SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error")
_UNRECOGNIZED = Reply(500, "5.5.2", "Error: command not recognized")
_BAD_ARGUMENTS = Reply(501, "5.5.4", "Syntax error")
_BAD_PARAMETER = Reply(501, "5.5.4", "Syntax error in parameters")
_BAD_SENDER = Reply(501, "5.1.7", "Bad sender address syntax")
_BAD_RECIPIENT = Reply(501, "5.1.3", "Bad recipient address syntax")
_NOT_IMPLEMENTED = Reply(502, "5.5.1", "Error: command not implemented")
_SEND_HELO_FIRST = Reply(503, "5.5.1", "Error: send HELO/EHLO first")
_NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
_NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
_DATA_AFTER_BDAT = Reply(503, "5.5.1", "Error: DATA after BDAT in the same transaction")
_TLS_ACTIVE = Reply(503, "5.5.1", "Error: TLS already active")
_TLS_UNAVAILABLE = Reply(454, "4.7.0", "TLS not available")
_NO_RECIPIENTS = Reply(554, "5.5.1", "Error: no valid recipients")
_SESSION_REJECTED = Reply(503, "5.5.1", "Error: service refused, send QUIT")
# RFC 5321 4.5.3.1.10: 452, and the client sends the rest in another transaction.
_TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Error: too many recipients")
_TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed limit")
_BARE_LINE_END = Reply(
    550, "5.6.0", "Message contains bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)"
)
_NEEDS_SMTPUTF8 = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
# RFC 5321 4.1.1.11: 555 for MAIL/RCPT parameters not recognized or not implemented.
_UNSUPPORTED_PARAMETER = Reply(555, "5.5.4", "Unsupported parameter")

# Submission and AUTH: RFC 3207 4 for the first, RFC 4954 4 and 6 for the rest.
_NEED_STARTTLS = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
_NEED_AUTH = Reply(530, "5.7.0", "Authentication required")
_AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
_AUTH_INVALID = Reply(535, "5.7.8", "Authentication credentials invalid")
_AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")
_AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
_AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot Base64-decode client response")
_AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication Exchange line is too long")
_AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
_AUTH_UNSUPPORTED = Reply(504, "5.5.4", "Unsupported authentication mechanism")
_AUTH_NOT_ENABLED = Reply(503, "5.5.1", "Error: authentication not enabled")
_AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "Error: MAIL transaction in progress")
_ALREADY_AUTHENTICATED = Reply(503, "5.5.1", "Error: already authenticated")
# The empty challenge of PLAIN ("334 ", RFC 4954 4) and LOGIN's two prompts,
# base64 for "Username:" and "Password:" (draft-murchison-sasl-login 2).
_PLAIN_CHALLENGE = Reply(334, "", "")
_LOGIN_USERNAME = Reply(334, "", "VXNlcm5hbWU6")
_LOGIN_PASSWORD = Reply(334, "", "UGFzc3dvcmQ6")


class _Refused(Exception):
    """A command refused where the rule is checked; carries the reply to send."""

    def __init__(self, reply: Reply):
        super().__init__(reply)
        self.reply = reply


# -- the state machine ------------------------------------------------------------------


class _Phase(Enum):
    """Where the session is in RFC 5321 4.1.4's command order."""

    GREETED = "greeted"  # no HELO/EHLO yet (or again after STARTTLS)
    HELLO = "hello"  # no transaction
    MAIL = "mail"  # MAIL accepted, no recipient yet
    RCPT = "rcpt"  # at least one recipient accepted


# Commands given out of order, and the reply they get. Whatever is absent is
# allowed; commands absent from every phase (RSET, NOOP, EHLO...) are always allowed.
_OUT_OF_SEQUENCE: dict[tuple[bytes, _Phase], Reply] = {
    (b"MAIL", _Phase.GREETED): _SEND_HELO_FIRST,
    (b"MAIL", _Phase.MAIL): _NESTED_MAIL,
    (b"MAIL", _Phase.RCPT): _NESTED_MAIL,
    (b"RCPT", _Phase.GREETED): _NEED_MAIL,
    (b"RCPT", _Phase.HELLO): _NEED_MAIL,
    (b"DATA", _Phase.GREETED): _NEED_MAIL,
    (b"DATA", _Phase.HELLO): _NEED_MAIL,
    (b"DATA", _Phase.MAIL): _NO_RECIPIENTS,
    (b"BDAT", _Phase.GREETED): _NEED_MAIL,
    (b"BDAT", _Phase.HELLO): _NEED_MAIL,
    (b"BDAT", _Phase.MAIL): _NO_RECIPIENTS,
    (b"AUTH", _Phase.GREETED): _SEND_HELO_FIRST,
    # RFC 4954 4: "An AUTH command issued during a mail transaction MUST be rejected".
    (b"AUTH", _Phase.MAIL): _AUTH_IN_TRANSACTION,
    (b"AUTH", _Phase.RCPT): _AUTH_IN_TRANSACTION,
}


class _Input(Enum):
    """What the next bytes from the client are."""

    COMMAND = "command"
    DATA = "data"  # message content up to CRLF.CRLF
    CHUNK = "chunk"  # the octets announced by BDAT
    TLS = "tls"  # after 220 to STARTTLS: nothing, until the handshake is done
    AUTH = "auth"  # after 334 to AUTH: the client's base64 response line


class _AuthStep(Enum):
    """Which response an AUTH exchange waits for (input is _Input.AUTH)."""

    PLAIN = "plain"  # the whole PLAIN message, after the empty challenge
    LOGIN_USERNAME = "login-username"
    LOGIN_PASSWORD = "login-password"


# Commands that make no progress (Limits.max_junk_commands).
_JUNK = frozenset((b"NOOP", b"RSET", b"VRFY", b"EXPN", b"HELP"))

# Control characters other than TAB appear nowhere in RFC 5321's command
# grammar (4.1.2); a CR here is one that is not part of the line's CRLF.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

_END_OF_DATA = b"\r\n.\r\n"

# -- address syntax (RFC 5321 4.1.2, with RFC 6531 3.3's UTF-8 additions) ---------------

# Any non-ASCII character. Lone surrogates are in the range on purpose: they
# are what undecodable bytes become, so that the syntax still matches and the
# address is refused for its encoding (553 or 501), not as a syntax error.
_NON_ASCII = "\u0080-\U0010ffff"
_ATOM = rf"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~\-{_NON_ASCII}]+"
_DOT_STRING = rf"{_ATOM}(?:\.{_ATOM})*"
_QUOTED_STRING = rf'"(?:[\x20\x21\x23-\x5b\x5d-\x7e{_NON_ASCII}]|\\[\x20-\x7e])*"'
_LET_DIG = rf"[A-Za-z0-9{_NON_ASCII}]"
_SUB_DOMAIN = rf"{_LET_DIG}(?:[A-Za-z0-9\-{_NON_ASCII}]*{_LET_DIG})?"
_DOMAIN = rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"
_ADDRESS_LITERAL = r"\[[^\[\]\\]*\]"  # the inside is checked by _valid_address_literal
# A source route (A-d-l) is matched and dropped: RFC 5321 4.1.2 and appendix C
# say a server must accept it and should ignore it.
_PATH = re.compile(
    rf"<(?:@{_DOMAIN}(?:,@{_DOMAIN})*:)?"
    rf"(?P<local>{_DOT_STRING}|{_QUOTED_STRING})@(?P<domain>{_DOMAIN}|{_ADDRESS_LITERAL})>"
)
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-]*")  # RFC 5321 4.1.2 esmtp-keyword
_VALUE = re.compile(r"[\x21-\x3c\x3e-\x7e]+")  # esmtp-value: no "=", SP or controls
_SIZE = re.compile(r"[0-9]{1,20}")
# RFC 3461 4's xtext, the AUTH parameter's value (RFC 4954 5): printable
# ASCII but "+" and "=", or "+" and two upper-case hex digits.
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")
_BDAT = re.compile(rb"([0-9]{1,20})(?: +(LAST))?", re.IGNORECASE)  # RFC 3030 2

# RFC 5321 4.5.3.1.1-3, in octets.
_MAX_LOCAL_PART = 64
_MAX_DOMAIN = 255
_MAX_PATH = 256


def _octets(text: str) -> int:
    return len(text.encode("utf-8", "surrogateescape"))


def _valid_address_literal(literal: str) -> bool:
    inner = literal[1:-1]
    if not inner.isascii() or "%" in inner:  # no IPv6 zone: it means nothing off this host
        return False
    try:
        if inner[:5].upper() == "IPV6:":
            ipaddress.IPv6Address(inner[5:])
        else:
            ipaddress.IPv4Address(inner)
    except ValueError:
        return False
    return True


def _parse_path(text: str, bad_syntax: Reply) -> tuple[str, str]:
    """The mailbox of the path at the start of text, and the text after the path."""
    match = _PATH.match(text)
    if match is None:
        raise _Refused(bad_syntax)
    local, domain = match["local"], match["domain"]
    if domain.startswith("[") and not _valid_address_literal(domain):
        raise _Refused(bad_syntax)
    if (
        _octets(local) > _MAX_LOCAL_PART
        or _octets(domain) > _MAX_DOMAIN
        or _octets(match[0]) > _MAX_PATH
    ):
        raise _Refused(bad_syntax)
    return f"{local}@{domain}", text[match.end() :]


def _parse_parameters(text: str, bad_syntax: Reply) -> dict[str, str | None]:
    """MAIL/RCPT parameters (RFC 5321 4.1.2): upper-cased keyword to value or None."""
    if text and not text.startswith(" "):
        raise _Refused(bad_syntax)  # the path runs into something: "<a@b>x"
    parameters: dict[str, str | None] = {}
    for item in text.split(" "):
        if not item:
            continue
        keyword, equals, value = item.partition("=")
        keyword = keyword.upper()
        if (
            not _KEYWORD.fullmatch(keyword)
            or (equals and not _VALUE.fullmatch(value))
            or keyword in parameters
        ):
            raise _Refused(_BAD_PARAMETER)
        parameters[keyword] = value if equals else None
    return parameters


def _decode_base64(text: bytes) -> bytes:
    """Strict base64 (RFC 4954 4): only the alphabet, padded, "=" only at the end."""
    try:
        if len(text) % 4:  # validate=True alone lets "QUJD=" through
            raise binascii.Error("not padded to a multiple of 4")
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise _Refused(_AUTH_BAD_BASE64) from None  # RFC 4954 4: 501 5.5.2


def _check_encoding(address: str, smtputf8: bool, bad_syntax: Reply) -> None:
    if address.isascii():
        return
    if not smtputf8:
        raise _Refused(_NEEDS_SMTPUTF8)  # RFC 6531 3.5
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:  # surrogates: the client's bytes were not UTF-8
        raise _Refused(bad_syntax) from None


class ServerConnection:
    """One SMTP server session's protocol state; see the module docstring."""

    __slots__ = (
        "hostname",
        "limits",
        "tls_available",
        "tls_active",
        "submission",
        "closed",
        "helo",
        "identity",
        "mail_from",
        "message_bytes_received",
        "_recipients",
        "_smtputf8",
        "_chunked",
        "_chunk_refusal",
        "_chunk_left",
        "_chunk_size",
        "_chunk_last",
        "_message",
        "_input",
        "_buffer",
        "_scanned",
        "_skipping",
        "_too_big",
        "_dots",
        "_dots_counted",
        "_pending",
        "_handed_out",
        "_output",
        "_errors",
        "_junk",
        "_auth_failures",
        "_auth_step",
        "_auth_username",
        "_rejected",
    )

    def __init__(
        self,
        hostname: str,
        limits: Limits | None = None,
        tls_available: bool = False,
        tls_active: bool = False,
        submission: bool = False,
    ):
        self.hostname = hostname
        self.limits = limits or Limits()
        self.tls_available = tls_available
        self.tls_active = tls_active
        self.submission = submission
        self.closed = False
        self.helo: str | None = None
        # Who authenticated (auth_succeeded()); None until then.
        self.identity: str | None = None
        # The current transaction: mail_from is None outside one.
        self.mail_from: str | None = None
        self.message_bytes_received = 0
        self._recipients: list[str] = []
        self._smtputf8 = False
        self._chunked = False  # BDAT seen: RFC 3030 2 forbids DATA in the same transaction
        self._chunk_refusal: Reply | None = None  # a refused BDAT refuses the rest (RFC 3030 2)
        self._chunk_left = 0
        self._chunk_size = 0
        self._chunk_last = False
        self._message = bytearray()  # BDAT chunks accepted so far
        self._input = _Input.COMMAND
        # Unprocessed input. In DATA it is the message itself, behind a
        # virtual CRLF, so that the end is found by one search.
        self._buffer = bytearray()
        self._scanned = 0  # how much of the buffer was searched already
        # Inside an over-long line, hunting for its LF: the reply to give at its end.
        self._skipping: Reply | None = None
        self._too_big = False  # DATA over max_message_size: discarding to the end
        self._dots = 0  # stuffing dots seen in DATA, counted once past the size limit
        self._dots_counted = 0
        self._pending: Event | None = None
        self._handed_out = False
        self._output = bytearray()
        self._errors = 0
        self._junk = 0
        self._auth_failures = 0
        self._auth_step = _AuthStep.PLAIN
        self._auth_username = b""  # LOGIN's first response, until the second comes
        self._rejected = False  # reject(): 554 instead of the greeting, nothing but QUIT

    # -- the session's side ------------------------------------------------------------

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(self._recipients)

    @property
    def in_message(self) -> bool:
        return self._input is _Input.DATA or self._input is _Input.CHUNK

    @property
    def buffered(self) -> int:
        """Input bytes held: unprocessed commands and message content so far."""
        return len(self._buffer) + len(self._message)

    def greet(self) -> None:
        self._send(Reply(220, "", f"{self.hostname} ESMTP ready"))

    def refuse(self, reply: Reply) -> None:
        self._output += reply.to_bytes()
        self._close()

    def reject(self, reply: Reply) -> None:
        """Refuse the session with `reply` (a 554) in place of the greeting.

        RFC 5321 3.1: the server then waits for QUIT and answers any other
        command with 503; max_errors of those end the session with 421.
        """
        self._rejected = True
        self._output += reply.to_bytes()

    def timeout(self) -> None:
        if not self.closed:
            self._send(Reply(421, "4.4.2", f"{self.hostname} Error: timeout exceeded"))

    def shutdown(self) -> None:
        if not self.closed:
            self._send(Reply(421, "4.3.2", f"{self.hostname} Service shutting down"))

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the client; b"" means the client closed its side."""
        if self.closed:
            return
        if not data:
            self._close()
            return
        if self._input is _Input.TLS:
            return  # see _accept: nothing counts until the handshake is done
        self._buffer += data
        self._process()

    def next_event(self) -> Event | None:
        if self.closed or self._pending is None or self._handed_out:
            return None
        self._handed_out = True
        return self._pending

    def respond(self, reply: Reply | None) -> None:
        """Answer the event from next_event(): None accepts it with the default reply."""
        event = self._pending
        if event is None or not self._handed_out:
            raise RuntimeError("respond() called with no event waiting for an answer")
        if isinstance(event, Authenticate):
            raise RuntimeError("Authenticate is answered by auth_succeeded() or auth_failed()")
        if reply is None and isinstance(event, MessageReceived):
            raise RuntimeError("MessageReceived has no default reply")
        self._pending = None
        if self.closed:
            return
        if isinstance(event, MessageRefused):
            self._reset_transaction()
            reply = reply or event.reply
        elif isinstance(event, MessageReceived):
            # RFC 5321 4.1.1.4: the end of the data ends the transaction, whatever the reply.
            self._reset_transaction()
            if not reply.is_error:
                self._errors = self._junk = 0
        elif reply is None or not reply.is_error:
            reply = self._accept(event, reply)
        self._send(reply)
        self._process()

    def auth_succeeded(self, identity: str) -> None:
        """Answer Authenticate: the credentials are good and belong to identity."""
        if self._answered(Authenticate):
            self.identity = identity
            self._send(_AUTH_OK)
            self._process()

    def auth_failed(self, temporary: bool = False) -> None:
        """Answer Authenticate: wrong credentials (535), or none could be checked (454)."""
        if self._answered(Authenticate):
            if temporary:
                self._send(_AUTH_TEMPORARY)  # RFC 4954 6: the client may retry later
            else:
                self._auth_refused()
            self._process()

    def data_to_send(self) -> bytes:
        output = bytes(self._output)
        self._output.clear()
        return output

    def tls_started(self) -> None:
        """The handshake is done: RFC 3207 4.2, forget all the client said before."""
        if self._input is not _Input.TLS:
            raise RuntimeError("tls_started() without an accepted STARTTLS")
        self.tls_active = True
        self.helo = None
        self._reset_transaction()
        self._input = _Input.COMMAND

    # -- replies and closing -----------------------------------------------------------

    def _send(self, reply: Reply) -> None:
        if reply.is_error and reply.code != 421 and reply.status != _TOO_MANY_RECIPIENTS.status:
            self._errors += 1
            if self._errors > self.limits.max_errors:
                reply = Reply(421, "4.7.0", f"{self.hostname} Error: too many errors")
        self._output += reply.to_bytes()
        if reply.code == 421:  # RFC 5321 3.8: 421 means the server closes the channel
            self._close()

    def _close(self) -> None:
        self.closed = True
        self._buffer = bytearray()
        self._message = bytearray()

    def _emit(self, event: Event) -> None:
        self._pending = event
        self._handed_out = False

    def _answered(self, kind: type) -> bool:
        """Take the pending event, which must be of kind; False if the connection closed."""
        event = self._pending
        if not isinstance(event, kind) or not self._handed_out:
            raise RuntimeError(f"no {kind.__name__} event waiting for an answer")
        self._pending = None
        return not self.closed

    def _accept(self, event: Event, reply: Reply | None) -> Reply:
        """Record an accepted event; the reply to send (the default if reply is None)."""
        if isinstance(event, Hello):
            self.helo = event.domain
            default = self._hello_reply(event.verb)
        elif isinstance(event, MailFrom):
            self._reset_transaction()  # drops what a BDAT before MAIL left behind
            self.mail_from = event.address
            self._smtputf8 = event.smtputf8
            default = _MAIL_OK
        elif isinstance(event, RcptTo):
            self._recipients.append(event.address)
            default = _RCPT_OK
        else:
            # CVE-2011-0411: what the client pipelined after STARTTLS was sent in
            # clear text and must not run as if it came over TLS.
            self._buffer.clear()
            self._input = _Input.TLS
            default = _TLS_READY
        return reply or default

    def _hello_reply(self, verb: str) -> Reply:
        if verb == "HELO":
            return Reply(250, "", self.hostname)
        keywords = [
            self.hostname,
            "PIPELINING",  # RFC 2920
            f"SIZE {self.limits.max_message_size}",  # RFC 1870
            "8BITMIME",  # RFC 6152
            "ENHANCEDSTATUSCODES",  # RFC 2034
            "SMTPUTF8",  # RFC 6531
            "CHUNKING",  # RFC 3030
        ]
        if self.submission and self.tls_active:
            # RFC 4954 4 and RFC 8314 3: no password mechanism in clear text.
            keywords.append("AUTH PLAIN LOGIN")
        if self.tls_available and not self.tls_active:
            keywords.append("STARTTLS")  # RFC 3207 4.2: not offered once TLS is on
        return Reply(250, "", tuple(keywords))

    def _reset_transaction(self) -> None:
        self.mail_from = None
        self._recipients.clear()
        self._smtputf8 = False
        self._chunked = False
        self._chunk_refusal = None
        self._message = bytearray()
        self.message_bytes_received = 0

    def _phase(self) -> _Phase:
        if self.mail_from is not None:
            return _Phase.RCPT if self._recipients else _Phase.MAIL
        return _Phase.GREETED if self.helo is None else _Phase.HELLO

    def _check_sequence(self, verb: bytes) -> None:
        refusal = _OUT_OF_SEQUENCE.get((verb, self._phase()))
        if refusal is not None:
            raise _Refused(refusal)

    # -- input -------------------------------------------------------------------------

    def _process(self) -> None:
        """Work through buffered input until it runs out or an event needs an answer."""
        while self._pending is None and not self.closed:
            if self._input is _Input.COMMAND or self._input is _Input.AUTH:
                progressed = self._read_line()
            elif self._input is _Input.DATA:
                progressed = self._read_data()
            elif self._input is _Input.CHUNK:
                progressed = self._read_chunk()
            else:  # _Input.TLS: nothing is read until tls_started()
                progressed = False
            if not progressed:
                return

    def _read_line(self) -> bool:
        """Take one command or SASL response line, if a whole one has arrived."""
        buffer = self._buffer
        end = buffer.find(b"\n", self._scanned)
        if end < 0:
            # Past the limit the line is refused anyway: drop it as it comes,
            # so that a line that never ends costs no memory.
            if self._skipping is None:
                limit, too_long = self._line_limit()
                if len(buffer) >= limit:
                    self._skipping = too_long
            if self._skipping is not None:
                buffer.clear()
            self._scanned = len(buffer)
            return False
        self._scanned = 0
        limit, too_long = self._line_limit()
        if self._skipping is not None or end >= limit:  # the LF counts: RFC's 512 includes CRLF
            del buffer[: end + 1]
            too_long, self._skipping = self._skipping or too_long, None
            self._input = _Input.COMMAND  # an over-long response ends the AUTH exchange too
            self._send(too_long)
            return True
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        # Bare LF ends a command line too (Postfix's smtpd_forbid_bare_newline
        # "normalize"): only message content is held to CRLF.
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            if self._input is _Input.AUTH:
                self._input = _Input.COMMAND
                self._auth_response(line)
            else:
                self._command(line)
        except _Refused as refusal:
            self._send(refusal.reply)
        return True

    def _line_limit(self) -> tuple[int, Reply]:
        """The longest line allowed where the buffer starts, and the reply for a longer one."""
        in_auth = self._input is _Input.AUTH
        if in_auth or (self.submission and self._buffer[:5].upper() == b"AUTH "):
            return self.limits.max_auth_line, _AUTH_LINE_TOO_LONG
        return self.limits.max_command_line, _LINE_TOO_LONG

    def _command(self, line: bytes) -> None:
        if _CONTROL.search(line):
            raise _Refused(_SYNTAX_ERROR)
        verb, _, argument = line.partition(b" ")
        verb = verb.upper()
        if self._rejected and verb != b"QUIT":
            raise _Refused(_SESSION_REJECTED)
        handler = _COMMANDS.get(verb)
        if handler is None:
            raise _Refused(_UNRECOGNIZED)
        if verb in _JUNK:
            self._junk += 1
            if self._junk > self.limits.max_junk_commands:
                self._send(Reply(421, "4.7.0", f"{self.hostname} Error: too many commands"))
                return
        handler(self, argument.strip(b" \t"))

    # -- commands ----------------------------------------------------------------------

    def _ehlo(self, argument: bytes) -> None:
        self._hello("EHLO", argument)

    def _helo(self, argument: bytes) -> None:
        self._hello("HELO", argument)

    def _hello(self, verb: str, argument: bytes) -> None:
        try:
            domain = argument.decode()
        except UnicodeDecodeError:
            domain = ""
        if not domain:
            raise _Refused(Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
        # RFC 5321 4.1.4: EHLO/HELO in a session resets it as RSET would.
        self._reset_transaction()
        self._emit(Hello(verb, domain))

    def _mail(self, argument: bytes) -> None:
        self._check_sequence(b"MAIL")
        if self.submission:
            # RFC 6409 4.3 and RFC 8314 3: no submission without TLS and AUTH.
            if not self.tls_active:
                raise _Refused(_NEED_STARTTLS)
            if self.identity is None:
                raise _Refused(_NEED_AUTH)
        text = argument.decode("utf-8", "surrogateescape")
        if text[:5].upper() != "FROM:":
            raise _Refused(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"))
        text = text[5:].lstrip(" ")  # "MAIL FROM: <a@b>", as Postfix accepts
        if text.startswith("<>"):
            address, text = "", text[2:]
        else:
            address, text = _parse_path(text, _BAD_SENDER)
        parameters = _parse_parameters(text, _BAD_SENDER)
        size = None
        body = "7BIT"
        smtputf8 = False
        for keyword, value in parameters.items():
            if keyword == "SIZE":  # RFC 1870 6
                if value is None or not _SIZE.fullmatch(value):
                    raise _Refused(_BAD_PARAMETER)
                size = int(value)
                if size > self.limits.max_message_size:
                    raise _Refused(_TOO_BIG)
            elif keyword == "BODY" and value is not None and value.upper() in ("7BIT", "8BITMIME"):
                body = value.upper()  # RFC 6152 2
            elif keyword == "SMTPUTF8" and value is None:  # RFC 6531 3.4
                smtputf8 = True
            elif keyword == "AUTH" and self.submission:
                # RFC 4954 5: a server offering AUTH must take the parameter. It
                # names who first submitted a message that is being relayed;
                # here the message is submitted, and the sender is checked
                # against the authenticated identity instead, so it is dropped.
                if value is None or not _XTEXT.fullmatch(value):
                    raise _Refused(_BAD_PARAMETER)
            else:
                raise _Refused(_UNSUPPORTED_PARAMETER)
        _check_encoding(address, smtputf8, _BAD_SENDER)
        self._emit(MailFrom(address, smtputf8, body, size, self.identity))

    def _rcpt(self, argument: bytes) -> None:
        self._check_sequence(b"RCPT")
        text = argument.decode("utf-8", "surrogateescape")
        if text[:3].upper() != "TO:":
            raise _Refused(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"))
        text = text[3:].lstrip(" ")
        if text[:12].lower() == "<postmaster>":  # RFC 5321 4.5.1: no domain needed
            address, text = text[1:11], text[12:]
        else:
            address, text = _parse_path(text, _BAD_RECIPIENT)
        if _parse_parameters(text, _BAD_RECIPIENT):
            raise _Refused(_UNSUPPORTED_PARAMETER)  # no DSN (RFC 3461): NOTIFY, ORCPT
        _check_encoding(address, self._smtputf8, _BAD_RECIPIENT)
        if len(self._recipients) >= self.limits.max_recipients:
            raise _Refused(_TOO_MANY_RECIPIENTS)
        self._emit(RcptTo(address, self.identity))

    def _data(self, argument: bytes) -> None:
        if argument:
            raise _Refused(_BAD_ARGUMENTS)  # RFC 5321 4.1.1.4: DATA takes none
        self._check_sequence(b"DATA")
        if self._chunked:
            raise _Refused(_DATA_AFTER_BDAT)
        self._send(_START_DATA)
        self._input = _Input.DATA
        # The virtual CRLF before the content: a first line of "." ends the
        # data and a first line starting with "." is stuffed, like any other.
        self._buffer[0:0] = b"\r\n"
        self._scanned = 2  # the virtual CRLF was not received
        self._too_big = False
        self._dots = self._dots_counted = 0

    def _bdat(self, argument: bytes) -> None:
        match = _BDAT.fullmatch(argument)
        if match is None:
            raise _Refused(_BAD_ARGUMENTS)
        size = int(match[1])
        refusal = _OUT_OF_SEQUENCE.get((b"BDAT", self._phase())) or self._chunk_refusal
        if refusal is None and len(self._message) + size > self.limits.max_message_size:
            refusal = _TOO_BIG
        # RFC 3030 2: a refused chunk is still read (its octets are not
        # commands), and once one is refused so is the rest of the message.
        self._chunk_refusal = refusal
        self._chunked = True
        self._chunk_left = self._chunk_size = size
        self._chunk_last = match[2] is not None
        self._input = _Input.CHUNK

    def _rset(self, argument: bytes) -> None:
        if argument:
            raise _Refused(Reply(501, "5.5.4", "Syntax: RSET"))
        self._reset_transaction()
        self._send(_OK)

    def _noop(self, argument: bytes) -> None:
        self._send(_OK)  # RFC 5321 4.1.1.9: an argument is ignored

    def _quit(self, argument: bytes) -> None:
        self._send(_BYE)
        self._close()

    def _vrfy(self, argument: bytes) -> None:
        if not argument:
            raise _Refused(Reply(501, "5.5.4", "Syntax: VRFY address"))
        self._send(_CANNOT_VRFY)

    def _expn(self, argument: bytes) -> None:
        raise _Refused(_NOT_IMPLEMENTED)  # RFC 5321 7.3: it would hand out list members

    def _help(self, argument: bytes) -> None:
        self._send(_SUBMISSION_HELP if self.submission else _HELP)

    def _starttls(self, argument: bytes) -> None:
        if argument:
            raise _Refused(_BAD_ARGUMENTS)  # RFC 3207 4: STARTTLS has no parameters
        if self.tls_active:
            raise _Refused(_TLS_ACTIVE)
        if not self.tls_available:
            raise _Refused(_TLS_UNAVAILABLE)
        self._emit(StartTLS())

    # -- AUTH (RFC 4954) ---------------------------------------------------------------

    # PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login), the two that
    # every mail client offers; both carry the password itself, hence TLS.
    # RFC 4954 4 lets an AUTH with a one-round-trip initial response (PLAIN's)
    # be followed by pipelined commands: they stay buffered while Authenticate
    # waits for the session, then run with its outcome. Anything else must end
    # a pipelined group, so a line sent after it is the client's response.

    def _auth(self, argument: bytes) -> None:
        if not self.submission:
            raise _Refused(_AUTH_NOT_ENABLED)
        self._check_sequence(b"AUTH")
        if not self.tls_active:
            raise _Refused(_NEED_STARTTLS)
        if self.identity is not None:
            raise _Refused(_ALREADY_AUTHENTICATED)  # RFC 4954 4
        mechanism, _, initial = argument.partition(b" ")
        mechanism = mechanism.upper()  # RFC 4422 3.1: names are upper case
        if not mechanism or b" " in initial:
            raise _Refused(_AUTH_SYNTAX)
        if mechanism == b"PLAIN":
            self._auth_step = _AuthStep.PLAIN
            if not initial:
                self._challenge(_PLAIN_CHALLENGE)
            else:
                self._plain(self._decode_response(initial))
        elif mechanism == b"LOGIN":
            if not initial:
                self._auth_step = _AuthStep.LOGIN_USERNAME
                self._challenge(_LOGIN_USERNAME)
            else:
                # LOGIN has no standard saying who speaks first, so RFC 4954 4's
                # 501 for a premature initial response does not bind it: some
                # clients send the username so, and Dovecot takes it too.
                self._auth_username = self._decode_response(initial)
                self._auth_step = _AuthStep.LOGIN_PASSWORD
                self._challenge(_LOGIN_PASSWORD)
        else:
            raise _Refused(_AUTH_UNSUPPORTED)  # RFC 4954 4: 504

    def _challenge(self, reply: Reply) -> None:
        self._send(reply)
        self._input = _Input.AUTH

    def _decode_response(self, initial: bytes) -> bytes:
        """An initial response on the AUTH line: "=" is an empty one (RFC 4954 4)."""
        return b"" if initial == b"=" else _decode_base64(initial)

    def _auth_response(self, line: bytes) -> None:
        """A response line in an AUTH exchange; the input is back to commands."""
        if line == b"*":
            raise _Refused(_AUTH_CANCELLED)  # RFC 4954 4: "*" cancels with 501
        response = _decode_base64(line)
        if self._auth_step is _AuthStep.PLAIN:
            self._plain(response)
        elif self._auth_step is _AuthStep.LOGIN_USERNAME:
            self._auth_username = response
            self._auth_step = _AuthStep.LOGIN_PASSWORD
            self._challenge(_LOGIN_PASSWORD)
        else:
            username, self._auth_username = self._auth_username, b""
            self._credentials(b"", username, response, "LOGIN")

    def _plain(self, message: bytes) -> None:
        """RFC 4616 2: [authzid] NUL authcid NUL passwd."""
        parts = message.split(b"\0")
        if len(parts) != 3:
            self._auth_refused()  # not a PLAIN message: it fails as wrong ones do
            return
        authzid, authcid, password = parts
        self._credentials(authzid, authcid, password, "PLAIN")

    def _credentials(self, authzid: bytes, username: bytes, password: bytes, how: str) -> None:
        try:
            username_text, password_text = username.decode(), password.decode()
        except UnicodeDecodeError:  # RFC 4616 2: UTF-8 only
            username_text = password_text = ""
        # RFC 4616 2: the server decides whom the authcid may act as; here
        # only itself. Empty names and passwords match no account.
        if not username_text or not password_text or authzid not in (b"", username):
            self._auth_refused()
            return
        self._emit(Authenticate(username_text, password_text, how))

    def _auth_refused(self) -> None:
        self._auth_failures += 1
        self._send(_AUTH_INVALID)
        if self._auth_failures >= self.limits.max_auth_failures and not self.closed:
            self._send(Reply(421, "4.7.0", f"{self.hostname} Error: too many failed logins"))

    # -- message content ---------------------------------------------------------------

    # How DATA content is read, and why (RFC 5321 4.1.1.4, 4.5.2; SMTP smuggling,
    # CVE-2023-51764 and its kin):
    # - Only CRLF.CRLF ends the data. "\n.\n", "\r.\r", "\n.\r\n" and "\r\n.\n" are
    #   content, so a message cannot end early on us and leave commands behind.
    # - A message holding any bare CR or LF (one not part of CRLF) is read to the
    #   real CRLF.CRLF and then refused as a whole with 550 5.6.0: whatever another
    #   server might have taken for an end of data in it, nothing of it is stored
    #   and no command smuggled inside it runs. Senders of bare line ends are
    #   broken (RFC 5321 2.3.8) and get a clear reply rather than a silent repair.
    # - 8-bit content without BODY=8BITMIME is accepted as it is, as Postfix
    #   does: refusing it would bounce mail from old senders and protect nothing.
    # - Over max_message_size, the rest is read and dropped (only the last four
    #   bytes are kept, to find the end across reads), then refused with 552.
    # The buffer is searched only from just before the bytes new since the
    # last search, and checked and unstuffed with bytes methods, never line by line.

    def _read_data(self) -> bool:
        buffer = self._buffer
        self.message_bytes_received += len(buffer) - self._scanned
        end = buffer.find(_END_OF_DATA, max(0, self._scanned - 4))
        if end < 0:
            if not self._too_big and self._over_size_limit():
                self._too_big = True
            if self._too_big:
                del buffer[:-4]
            self._scanned = len(buffer)
            return False
        self.message_bytes_received -= len(buffer) - end - len(_END_OF_DATA)
        self._buffer = buffer[end + len(_END_OF_DATA) :]  # what the client pipelined after
        del buffer[end + 2 :]  # the message keeps its last CRLF
        self._scanned = 0
        self._input = _Input.COMMAND
        self._end_of_data(buffer)
        return True

    def _over_size_limit(self) -> bool:
        """Whether the content so far, unstuffed, is past max_message_size.

        RFC 1870 5 counts the size without stuffing dots. They are counted
        only once the raw bytes pass the limit, and then only in new bytes.
        A whole message counted so comes to its size plus 2 (the final
        CRLF.CRLF's dot counts as stuffing, its CRLF as content), and no
        prefix counts more than the whole: past limit + 2 it cannot fit.
        """
        buffer = self._buffer
        limit = self.limits.max_message_size + 2
        raw = len(buffer) - 2  # without the virtual CRLF
        if raw - self._dots <= limit:
            return False
        self._dots += buffer.count(b"\r\n.", self._dots_counted)
        self._dots_counted = len(buffer) - 2  # a "\r\n." may straddle the next read
        return raw - self._dots > limit

    def _end_of_data(self, message: bytearray) -> None:
        refusal = None
        if self._too_big:
            refusal = _TOO_BIG
        else:
            crlf = message.count(b"\r\n")
            if message.count(b"\r") != crlf or message.count(b"\n") != crlf:
                refusal = _BARE_LINE_END
            else:
                # RFC 5321 4.5.2: drop the first "." of each line. The virtual
                # CRLF goes first, with the first line's dot if it has one.
                del message[: 3 if message.startswith(b"\r\n.") else 2]
                # The buffer becomes the message itself: copied only when
                # there are dots to remove.
                content = message.replace(b"\r\n.", b"\r\n") if b"\r\n." in message else message
                if len(content) > self.limits.max_message_size:
                    refusal = _TOO_BIG
                else:
                    self._emit(MessageReceived(content, "DATA"))
                    return
        self._refuse_message(refusal)

    def _refuse_message(self, refusal: Reply) -> None:
        if self.mail_from is None:  # no transaction to tell the session about
            self._send(refusal)
        else:
            self._emit(MessageRefused(refusal, self.message_bytes_received))

    def _read_chunk(self) -> bool:
        buffer = self._buffer
        taken = min(self._chunk_left, len(buffer))
        if taken:
            if self._chunk_refusal is None:
                with memoryview(buffer) as view:
                    self._message += view[:taken]
            del buffer[:taken]
            self._chunk_left -= taken
            self.message_bytes_received += taken
        if self._chunk_left:
            return False
        self._input = _Input.COMMAND
        refusal = self._chunk_refusal
        if refusal is not None:
            if self._chunk_last:
                self._refuse_message(refusal)
            else:
                self._send(refusal)
        elif self._chunk_last:
            message, self._message = self._message, bytearray()
            self._emit(MessageReceived(message, "BDAT"))
        else:
            self._send(Reply(250, "2.0.0", f"{self._chunk_size} octets received"))
        return True


# Verbs are matched upper-cased (RFC 5321 2.4: case-insensitive).
_COMMANDS = {
    b"EHLO": ServerConnection._ehlo,
    b"HELO": ServerConnection._helo,
    b"MAIL": ServerConnection._mail,
    b"RCPT": ServerConnection._rcpt,
    b"DATA": ServerConnection._data,
    b"BDAT": ServerConnection._bdat,
    b"RSET": ServerConnection._rset,
    b"NOOP": ServerConnection._noop,
    b"QUIT": ServerConnection._quit,
    b"VRFY": ServerConnection._vrfy,
    b"EXPN": ServerConnection._expn,
    b"HELP": ServerConnection._help,
    b"STARTTLS": ServerConnection._starttls,
    b"AUTH": ServerConnection._auth,
}
