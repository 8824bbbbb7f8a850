"""Sans-IO POP3 server core (RFC 1939): bytes in, events out, responses as bytes out.

ServerConnection never touches a socket. The session feeds it what the client
sent (receive_data), takes the events that need the store or TLS (next_event),
answers each with the method named in the event's docstring, and writes
data_to_send(). Everything else (states, syntax, limits, the maildrop listing,
DELE marks, CAPA) is decided here, next to the rule it follows.

One event at a time: while an event waits for its answer, later input stays
buffered, so pipelined commands (RFC 2449 6.6) are answered in order.

The core never holds a message body: for RETR and TOP the session streams the
stored message through a DotStuffer between the core's "+OK" and its ".".
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice
from typing import Literal, TypeVar


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may ask of a session; each is a named, tunable setting."""

    # RFC 2449 4 fits a command in 255 octets with its CRLF, but an AUTH PLAIN
    # response (RFC 5034 4) is base64, a third longer than what it carries: 1 KiB
    # holds a user name and a password of 255 octets each (RFC 4616 2's minimum)
    # with an empty authorization identity, as clients send it.
    max_line: int = 1024
    # Per connection: room for a mistyped password or two. Someone guessing
    # has to reconnect, where the session's per-client limits apply.
    max_failed_logins: int = 3
    # A client logs in within a handful of commands (CAPA, STLS, CAPA, AUTH);
    # a connection that talks this long without credentials is probing.
    max_commands_before_login: int = 20
    # -ERR responses before the session gives up on the client, as Postfix's
    # smtpd_hard_error_limit does: a client getting that many is broken or probing.
    max_errors: int = 20


@dataclass(frozen=True, slots=True)
class MaildropMessage:
    """One message of the maildrop as the session found it at login."""

    size: int  # octets as stored, CRLF line ends: what RFC 1939 5 LIST reports
    uidl: str

    def __post_init__(self):
        # RFC 1939 7: a unique-id is 1 to 70 characters from 0x21 to 0x7E. It
        # goes into UIDL lines as it is, so a bad one would break the listing.
        if self.size < 0 or not _UNIQUE_ID.fullmatch(self.uidl):
            raise ValueError(f"invalid maildrop entry size={self.size} uidl={self.uidl!r}")


_UNIQUE_ID = re.compile(r"[\x21-\x7e]{1,70}")


class State(Enum):
    """The session states of RFC 1939 3."""

    AUTHORIZATION = "authorization"
    TRANSACTION = "transaction"
    UPDATE = "update"


# -- events: what the session decides on ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    """USER and PASS, or AUTH PLAIN; answer login_succeeded() or login_failed()."""

    user: str
    password: str = field(repr=False)  # kept out of logs and tracebacks


@dataclass(frozen=True, slots=True)
class Retrieve:
    """RETR (lines is None) or TOP (lines is m) of a message not marked deleted.

    If the message is still stored, call retrieve_start() (it queues the +OK),
    write data_to_send(), then the message through DotStuffer(lines), then call
    retrieve_done(). If another client removed it since login, retrieve_gone().
    """

    number: int  # as the client gave it, 1-based
    index: int  # into the maildrop given to login_succeeded()
    lines: int | None


@dataclass(frozen=True, slots=True)
class Update:
    """QUIT in TRANSACTION: remove these maildrop indexes, then respond_update()."""

    deleted: tuple[int, ...]  # ascending


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STLS; respond_starttls(), do the handshake, then tls_started()."""


Event = Login | Retrieve | Update | StartTLS
_AnEvent = TypeVar("_AnEvent", Login, Retrieve, Update, StartTLS)


class _Refused(Exception):
    """A command refused where the rule is checked; carries the -ERR text."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


class _Input(Enum):
    """What the next line from the client is."""

    COMMAND = "command"
    SASL = "sasl"  # the client's answer to AUTH PLAIN's "+ " continuation
    TLS = "tls"  # after +OK to STLS: nothing, until the handshake is done


_LOGIN_REFUSALS = {
    # RFC 3206 5: the credentials are wrong; the client may ask the user again.
    "auth": "[AUTH] Authentication failed",
    # RFC 2449 8.1.2: the credentials are fine but another session has the maildrop.
    "in-use": "[IN-USE] Maildrop already locked",
    # RFC 3206 4: nothing wrong with the credentials; trying later may work.
    "temp": "[SYS/TEMP] Temporary failure, try again later",
}

# Not the RFC 3206 [AUTH] code: the credentials may be fine, the channel is not.
_NEEDS_TLS = "Command not permitted without TLS (use STLS)"

# Control characters appear nowhere in RFC 1939's commands (3: printable
# keywords and arguments); a CR here is one that is not part of the line end.
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# Digits only: no sign, no spaces. 18 digits are far past any maildrop or
# line count, and keep int() away from huge digit strings.
_DECIMAL = re.compile(rb"[0-9]{1,18}")


def _decimal(argument: bytes, what: str) -> int:
    if not _DECIMAL.fullmatch(argument):
        raise _Refused(f"Invalid {what}")
    return int(argument)


def _utf8(argument: bytes, what: str) -> str:
    try:
        return argument.decode("utf-8")
    except UnicodeDecodeError:
        raise _Refused(f"Invalid UTF-8 in {what}") from None


class ServerConnection:
    """One POP3 server session's protocol state; see the module docstring."""

    __slots__ = (
        "hostname",
        "limits",
        "tls_available",
        "tls_active",
        "login_allowed",
        "closed",
        "state",
        "_input",
        "_buffer",
        "_scanned",
        "_skipping",
        "_pending",
        "_handed_out",
        "_streaming",
        "_output",
        "_errors",
        "_failed_logins",
        "_commands_before_login",
        "_user",
        "_maildrop",
        "_octets",
        "_deleted",
    )

    def __init__(
        self,
        hostname: str,
        limits: Limits | None = None,
        tls_available: bool = False,
        tls_active: bool = False,
        login_allowed: bool = False,
    ):
        self.hostname = hostname
        self.limits = limits or Limits()
        self.tls_available = tls_available
        self.tls_active = tls_active
        # Whether USER/PASS and AUTH PLAIN may be used now: the session says so
        # for TLS or loopback, and tls_started() turns it on (RFC 2595 2.2).
        self.login_allowed = login_allowed
        self.closed = False
        self.state = State.AUTHORIZATION
        self._input = _Input.COMMAND
        self._buffer = bytearray()  # unprocessed input
        self._scanned = 0  # how much of the buffer was searched for a LF already
        self._skipping = False  # inside an over-long line, hunting for its LF
        self._pending: Event | None = None
        self._handed_out = False
        self._streaming = False  # a RETR/TOP response is being written
        self._output = bytearray()
        self._errors = 0
        self._failed_logins = 0
        self._commands_before_login = 0
        self._user: str | None = None  # from USER, for the PASS right after it
        self._maildrop: tuple[MaildropMessage, ...] = ()
        self._octets = 0  # of the whole maildrop
        self._deleted: set[int] = set()  # indexes marked by DELE

    # -- the session's side ------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Input bytes held, not yet processed."""
        return len(self._buffer)

    def greet(self) -> None:
        # RFC 1939 4. No <timestamp>: APOP is not offered (it needs the
        # password stored in the clear).
        self._ok(f"{self.hostname} POP3 ready")

    def timeout(self) -> None:
        """The client was idle too long; RFC 1939 3 wants at least 10 minutes."""
        if not self.closed:
            self._close_with("Timeout, closing")

    def shutdown(self) -> None:
        if not self.closed:
            self._close_with("[SYS/TEMP] Server shutting down")  # RFC 3206 4: try later

    def refuse_busy(self) -> None:
        """Instead of the greeting: the server has no room for this client now."""
        self._close_with("[SYS/TEMP] Too many connections, try again later")

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the client; b"" means the connection is gone.

        RFC 1939 6: only QUIT enters the UPDATE state, so a connection that
        drops deletes nothing and no Update is emitted.
        """
        if self.closed:
            return
        if not data:
            self._close()
            return
        if self._input is _Input.TLS:
            return  # see respond_starttls: nothing counts until the handshake is done
        self._buffer += data
        self._process()

    def next_event(self) -> Event | None:
        if self.closed or self._pending is None or self._handed_out:
            return None
        self._handed_out = True
        return self._pending

    def data_to_send(self) -> bytes:
        output = bytes(self._output)
        self._output.clear()
        return output

    def login_succeeded(self, maildrop: Sequence[MaildropMessage]) -> None:
        """Answer Login: the maildrop is locked and these are its messages, in order."""
        if self._answered(Login) is None:
            return
        # RFC 1939 3: the session enters TRANSACTION with the maildrop as it is now.
        self.state = State.TRANSACTION
        self._maildrop = tuple(maildrop)
        self._octets = sum(message.size for message in self._maildrop)
        self._ok(f"Logged in, {len(self._maildrop)} messages ({self._octets} octets)")
        self._process()

    def login_failed(self, reason: Literal["auth", "in-use", "temp"]) -> None:
        """Answer Login: refused, for wrong credentials, a locked maildrop or a fault."""
        if reason not in _LOGIN_REFUSALS:
            raise ValueError(f"unknown login failure reason {reason!r}")
        if self._answered(Login) is None:
            return
        if reason == "auth":
            self._credentials_refused()
        else:
            self._err(_LOGIN_REFUSALS[reason])
        self._process()

    def retrieve_start(self) -> None:
        """Answer Retrieve, first step: the message is there; queue the +OK line."""
        event = self._pending
        if not isinstance(event, Retrieve) or not self._handed_out:
            raise RuntimeError("retrieve_start() with no Retrieve waiting")
        if event.lines is None:
            self._ok(f"{self._maildrop[event.index].size} octets")
        else:
            self._ok()
        self._streaming = True

    def retrieve_gone(self) -> None:
        """Answer Retrieve: the message was removed by another client (IMAP) since login."""
        event = self._answered(Retrieve)
        if event is None:
            return
        self._err(f"message {event.number} was deleted by another client")
        self._process()

    def retrieve_done(self) -> None:
        """Answer Retrieve: the message is written; end the multi-line response."""
        self._streaming = False
        if self._answered(Retrieve) is None:
            return
        self._output += b".\r\n"
        self._process()

    def respond_update(self, ok: bool) -> None:
        """Answer Update: whether every marked message was removed. Closes either way."""
        event = self._answered(Update)
        if event is None:
            return
        if ok:
            self._ok(f"Bye, {len(event.deleted)} messages deleted")
            self._close()
        else:
            # RFC 1939 6: -ERR to QUIT when some marked messages were not removed.
            self._close_with("[SYS/TEMP] Some deleted messages not removed")

    def respond_starttls(self) -> None:
        """Answer StartTLS: queue the +OK; the session starts the handshake after writing it."""
        if self._answered(StartTLS) is None:
            return
        self._ok("Begin TLS negotiation")
        # CVE-2011-0411: what the client pipelined after STLS was sent in clear
        # text and must not run as if it came over TLS. RFC 2595 4 forbids
        # sending it at all.
        self._buffer.clear()
        self._scanned = 0
        self._skipping = False
        self._input = _Input.TLS

    def tls_started(self) -> None:
        """The handshake is done: logins are safe now, and nothing said before counts."""
        if self._input is not _Input.TLS:
            raise RuntimeError("tls_started() without an accepted STLS")
        self.tls_active = True
        self.login_allowed = True
        self._input = _Input.COMMAND

    # -- responses and closing ---------------------------------------------------------

    def _ok(self, text: str = "") -> None:
        self._output += f"+OK {text}\r\n".encode() if text else b"+OK\r\n"

    def _ok_lines(self, text: str, lines: list[str]) -> None:
        # RFC 1939 3 byte-stuffs multi-line responses; no line here starts
        # with ".": they are numbers and capability names.
        self._ok(text)
        self._output += "".join(f"{line}\r\n" for line in lines).encode()
        self._output += b".\r\n"

    def _err(self, text: str) -> None:
        self._errors += 1
        if self._errors > self.limits.max_errors:
            self._close_with("Too many errors, closing")
        else:
            self._output += f"-ERR {text}\r\n".encode()

    def _close_with(self, text: str) -> None:
        """A last -ERR, then close; not counted as an error."""
        # Inside a RETR or TOP response a status line would read as message
        # text; closing without one tells the client the response is cut short.
        if not self._streaming:
            self._output += f"-ERR {text}\r\n".encode()
        self._close()

    def _close(self) -> None:
        self.closed = True
        self._buffer = bytearray()

    def _emit(self, event: Event) -> None:
        self._pending = event
        self._handed_out = False

    def _answered(self, kind: type[_AnEvent]) -> _AnEvent | None:
        """The pending event, now answered; None when the connection closed meanwhile."""
        event = self._pending
        if not isinstance(event, kind) or not self._handed_out:
            raise RuntimeError(f"no {kind.__name__} event waiting for an answer")
        self._pending = None
        return None if self.closed else event

    def _credentials_refused(self) -> None:
        self._failed_logins += 1
        if self._failed_logins >= self.limits.max_failed_logins:
            self._close_with(f"{_LOGIN_REFUSALS['auth']}, closing")
        else:
            self._err(_LOGIN_REFUSALS["auth"])

    # -- input -------------------------------------------------------------------------

    def _process(self) -> None:
        """Work through buffered input until it runs out or an event needs an answer."""
        while self._pending is None and not self.closed and self._input is not _Input.TLS:
            try:
                line = self._next_line()
                if line is None:
                    return
                if self._input is _Input.SASL:
                    self._input = _Input.COMMAND
                    self._sasl_response(line)
                else:
                    self._command(line)
            except _Refused as refusal:
                self._err(refusal.text)

    def _next_line(self) -> bytes | None:
        """The next whole line without its line end, or None until one has arrived."""
        buffer = self._buffer
        end = buffer.find(b"\n", self._scanned)
        limit = self.limits.max_line
        if end < 0:
            # Past the limit the line is refused anyway: drop it as it comes,
            # so that a line that never ends costs no memory.
            if self._skipping or len(buffer) >= limit:
                buffer.clear()
                self._skipping = True
            self._scanned = len(buffer)
            return None
        self._scanned = 0
        if self._skipping or end >= limit:  # the limit counts the CRLF, as RFC 2449 4 does
            del buffer[: end + 1]
            self._skipping = False
            self._input = _Input.COMMAND  # an over-long SASL response ends the exchange too
            raise _Refused("Line too long")
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        # A bare LF ends a line too: clients that send one mean a line end, and
        # command lines carry no data that a lone LF could smuggle.
        return line[:-1] if line.endswith(b"\r") else line

    def _command(self, line: bytes) -> None:
        if self.state is State.AUTHORIZATION:
            self._commands_before_login += 1
            if self._commands_before_login > self.limits.max_commands_before_login:
                self._close_with("Too many commands before login, closing")
                return
        verb, space, rest = line.partition(b" ")
        verb = verb.upper()  # RFC 1939 3: keywords are case-insensitive
        if verb != b"PASS":
            # RFC 1939 7: PASS only right after USER. So a USER before STLS is
            # forgotten too, as RFC 2595 4 wants of all that was said before TLS.
            self._user = None
        if _CONTROL.search(line):
            raise _Refused("Invalid character in command")
        command = _COMMANDS.get(verb)
        if command is None:
            raise _Refused("Unknown command")
        if self.state not in command.states:
            raise _Refused("Command not valid in this state")
        if command.whole_line:
            arguments = [rest] if rest else []
        else:
            # RFC 1939 3: keywords and arguments are separated by a single space.
            arguments = rest.split(b" ") if space else []
            if b"" in arguments:
                raise _Refused("Arguments must be separated by single spaces")
        if len(arguments) < command.min_arguments:
            raise _Refused("Missing argument")
        if len(arguments) > command.max_arguments:
            raise _Refused("Too many arguments")
        command.handler(self, arguments)

    # -- AUTHORIZATION -----------------------------------------------------------------

    def _check_login_allowed(self) -> None:
        # RFC 2595 2.2: no clear-text passwords on a channel anyone can read.
        if not self.login_allowed:
            raise _Refused(_NEEDS_TLS)

    def _user_command(self, arguments: list[bytes]) -> None:
        self._check_login_allowed()
        self._user = _utf8(arguments[0], "user name")
        self._ok("Send PASS")

    def _pass(self, arguments: list[bytes]) -> None:
        self._check_login_allowed()
        user, self._user = self._user, None
        if user is None:
            raise _Refused("Send USER first")
        self._emit(Login(user, _utf8(arguments[0], "password")))

    def _auth(self, arguments: list[bytes]) -> None:
        self._check_login_allowed()
        # RFC 4422 3.1 names are upper case; clients that send "plain" mean the same.
        if arguments[0].upper() != b"PLAIN":
            raise _Refused("Unsupported authentication mechanism")
        if len(arguments) == 2:
            # RFC 5034 4: an initial response on the AUTH line; "=" is an empty one.
            self._plain(b"" if arguments[1] == b"=" else arguments[1])
        else:
            self._output += b"+ \r\n"  # RFC 5034 4: PLAIN's challenge is empty
            self._input = _Input.SASL

    def _sasl_response(self, line: bytes) -> None:
        if line == b"*":
            raise _Refused("Authentication cancelled")  # RFC 5034 4: "*" cancels
        self._plain(line)

    def _plain(self, encoded: bytes) -> None:
        """Check an RFC 4616 PLAIN message, base64-encoded (RFC 5034 4)."""
        try:
            message = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise _Refused("Invalid base64") from None
        parts = message.split(b"\0")  # [authzid] NUL authcid NUL passwd
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise _Refused("Malformed PLAIN response")
        authzid, user, password = (_utf8(part, "PLAIN response") for part in parts)
        # RFC 4616 2: the server decides whom authcid may act as; here only itself.
        if authzid and authzid != user:
            self._credentials_refused()
            return
        self._emit(Login(user, password))

    def _stls(self, arguments: list[bytes]) -> None:
        if self.tls_active:
            raise _Refused("TLS already active")
        if not self.tls_available:
            raise _Refused("STLS not available")
        self._emit(StartTLS())

    def _capa(self, arguments: list[bytes]) -> None:
        # RFC 2449 5: the same list in both states (capabilities of the
        # AUTHORIZATION state MUST be announced in both).
        capabilities = ["TOP"]
        if self.login_allowed:
            # RFC 2595 4 lets the list change once TLS is on, and the client
            # asks again: until then there is no login to offer.
            capabilities += ["USER", "SASL PLAIN"]
        capabilities += [
            "RESP-CODES",  # RFC 2449 6.4
            "AUTH-RESP-CODE",  # RFC 3206 6
            "PIPELINING",  # RFC 2449 6.6
            "EXPIRE NEVER",  # RFC 2449 6.7: only the owner deletes mail
            "UIDL",
            "IMPLEMENTATION appliance",
        ]
        if self.tls_available and not self.tls_active:
            capabilities.append("STLS")  # RFC 2595 4
        self._ok_lines("Capability list follows", capabilities)

    def _quit(self, arguments: list[bytes]) -> None:
        if self.state is State.AUTHORIZATION:
            self._ok("Bye")
            self._close()
            return
        # RFC 1939 6: messages marked by DELE are removed now, and only now.
        self.state = State.UPDATE
        self._emit(Update(tuple(sorted(self._deleted))))

    # -- TRANSACTION (RFC 1939 5) ------------------------------------------------------

    def _index(self, argument: bytes) -> int:
        """The maildrop index for a message-number, whether or not marked deleted."""
        number = _decimal(argument, "message number")
        if not 1 <= number <= len(self._maildrop):
            raise _Refused("no such message")
        return number - 1

    def _undeleted(self, argument: bytes) -> int:
        # RFC 1939 5: a message marked as deleted may not be referred to.
        index = self._index(argument)
        if index in self._deleted:
            raise _Refused(f"no such message, message {index + 1} is deleted")
        return index

    def _totals(self) -> tuple[int, int]:
        """Messages and octets, without those marked deleted (RFC 1939 5 STAT)."""
        deleted_octets = sum(self._maildrop[index].size for index in self._deleted)
        return len(self._maildrop) - len(self._deleted), self._octets - deleted_octets

    def _stat(self, arguments: list[bytes]) -> None:
        count, octets = self._totals()
        self._ok(f"{count} {octets}")

    def _list(self, arguments: list[bytes]) -> None:
        if arguments:
            index = self._undeleted(arguments[0])
            self._ok(f"{index + 1} {self._maildrop[index].size}")
            return
        count, octets = self._totals()
        self._ok_lines(
            f"{count} messages ({octets} octets)",
            [
                f"{index + 1} {message.size}"
                for index, message in enumerate(self._maildrop)
                if index not in self._deleted
            ],
        )

    def _uidl(self, arguments: list[bytes]) -> None:
        if arguments:
            index = self._undeleted(arguments[0])
            self._ok(f"{index + 1} {self._maildrop[index].uidl}")
            return
        self._ok_lines(
            "",
            [
                f"{index + 1} {message.uidl}"
                for index, message in enumerate(self._maildrop)
                if index not in self._deleted
            ],
        )

    def _retr(self, arguments: list[bytes]) -> None:
        index = self._undeleted(arguments[0])
        self._emit(Retrieve(index + 1, index, None))

    def _top(self, arguments: list[bytes]) -> None:
        index = self._undeleted(arguments[0])
        lines = _decimal(arguments[1], "line count")  # RFC 1939 7: 0 gives the headers only
        self._emit(Retrieve(index + 1, index, lines))

    def _dele(self, arguments: list[bytes]) -> None:
        index = self._index(arguments[0])
        if index in self._deleted:
            raise _Refused(f"message {index + 1} already deleted")
        self._deleted.add(index)
        self._ok(f"message {index + 1} deleted")

    def _rset(self, arguments: list[bytes]) -> None:
        self._deleted.clear()
        count, octets = self._totals()
        self._ok(f"maildrop has {count} messages ({octets} octets)")

    def _noop(self, arguments: list[bytes]) -> None:
        self._ok()


@dataclass(frozen=True, slots=True)
class _Command:
    handler: Callable[[ServerConnection, list[bytes]], None]
    states: frozenset[State]
    min_arguments: int
    max_arguments: int
    # The rest of the line is the one argument, spaces and all: RFC 1939 7
    # lets PASS treat spaces as part of the password.
    whole_line: bool = False


_AUTHORIZATION = frozenset({State.AUTHORIZATION})
_TRANSACTION = frozenset({State.TRANSACTION})
_BOTH = _AUTHORIZATION | _TRANSACTION

# Who may send what in which state (RFC 1939 4-7, RFC 2449 5, RFC 2595 4,
# RFC 5034 4). APOP is not here: it is not offered, so it is an unknown command.
_COMMANDS = {
    b"CAPA": _Command(ServerConnection._capa, _BOTH, 0, 0),
    b"QUIT": _Command(ServerConnection._quit, _BOTH, 0, 0),
    b"STLS": _Command(ServerConnection._stls, _AUTHORIZATION, 0, 0),
    b"USER": _Command(ServerConnection._user_command, _AUTHORIZATION, 1, 1),
    b"PASS": _Command(ServerConnection._pass, _AUTHORIZATION, 1, 1, whole_line=True),
    b"AUTH": _Command(ServerConnection._auth, _AUTHORIZATION, 1, 2),
    b"STAT": _Command(ServerConnection._stat, _TRANSACTION, 0, 0),
    b"LIST": _Command(ServerConnection._list, _TRANSACTION, 0, 1),
    b"UIDL": _Command(ServerConnection._uidl, _TRANSACTION, 0, 1),
    b"RETR": _Command(ServerConnection._retr, _TRANSACTION, 1, 1),
    b"TOP": _Command(ServerConnection._top, _TRANSACTION, 2, 2),
    b"DELE": _Command(ServerConnection._dele, _TRANSACTION, 1, 1),
    b"RSET": _Command(ServerConnection._rset, _TRANSACTION, 0, 0),
    b"NOOP": _Command(ServerConnection._noop, _TRANSACTION, 0, 0),
}


# -- byte-stuffing (RFC 1939 3) ---------------------------------------------------------

# memoryview has no find() or count(); the re module searches any buffer in
# place, so compiled patterns stand in for bytes.find and bytes.count here.
# Stored messages end lines with CRLF, so every LF ends a line: stuffing after
# a lone LF as well costs nothing and keeps a client that ends lines at LF from
# ever seeing a premature terminator.
_DOT_AT_LINE_START = re.compile(rb"\n\.")
_EMPTY_LINE_AFTER = re.compile(rb"\n\r\n")  # the end of a line, then an empty one
_LF = re.compile(rb"\n")


class DotStuffer:
    """A stored message made into a RETR or TOP response body, piece by piece.

    feed() returns what to write: slices of the piece (memoryviews, never a
    copy of the body) with b"." inserted before every line that starts with
    "." (RFC 1939 3). Lines may straddle pieces. With lines=m (TOP, RFC 1939 7)
    it passes the header section, its empty line, and m body lines; a message
    without an empty line is all header. finish() gives what makes the output
    end with CRLF, so that the terminating "." starts a line of its own.
    """

    __slots__ = ("_lines_left", "_in_body", "_tail", "_done")

    def __init__(self, lines: int | None = None):
        if lines is not None and lines < 0:
            raise ValueError("lines must not be negative")
        self._lines_left = lines  # None: the whole message (RETR)
        self._in_body = False  # TOP only: the empty line after the header was passed
        # The last two bytes passed, to see across the seam between pieces.
        # It starts as if a CRLF came before the message, so that the first
        # line starts a line and an empty first line means no header at all.
        self._tail = b"\r\n"
        self._done = False

    @property
    def done(self) -> bool:
        """TOP has passed everything asked for: further pieces are not needed."""
        return self._done

    def feed(self, piece: bytes | memoryview) -> list[bytes | memoryview]:
        if self._done:
            return []
        view = memoryview(piece)
        end = len(view) if self._lines_left is None else self._top_end(view)
        output: list[bytes | memoryview] = []
        start = 0
        if end and view[0] == ord(".") and self._tail.endswith(b"\n"):
            output.append(b".")
        for match in _DOT_AT_LINE_START.finditer(view, 0, end):
            dot = match.start() + 1
            output += (view[start:dot], b".")
            start = dot
        if start < end:
            output.append(view[start:end])
        if end:
            self._tail = (self._tail + bytes(view[max(0, end - 2) : end]))[-2:]
        return output

    def finish(self) -> list[bytes]:
        return [] if self._tail == b"\r\n" else [b"\r\n"]

    def _top_end(self, view: memoryview) -> int:
        """How much of the piece TOP passes; sets done when that is the last of it."""
        start = 0
        if not self._in_body:
            start = self._header_end(view)
            if start < 0:
                return len(view)
            self._in_body = True
        if self._lines_left == 0:
            self._done = True
            return start
        # Counted in C, not line by line in Python: most pieces hold fewer
        # lines than are left, and pass whole.
        lines = len(_LF.findall(view, start))
        if lines < self._lines_left:
            self._lines_left -= lines
            return len(view)
        last = next(islice(_LF.finditer(view, start), self._lines_left - 1, None))
        self._lines_left = 0
        self._done = True
        return last.end()

    def _header_end(self, view: memoryview) -> int:
        """Where the empty line ending the header section ends in the piece, or -1."""
        seam = self._tail + bytes(view[:2])
        found = seam.find(b"\n\r\n")
        if 0 <= found < len(self._tail):  # starts in the previous piece
            return found + 3 - len(self._tail)
        match = _EMPTY_LINE_AFTER.search(view)
        return -1 if match is None else match.end()
