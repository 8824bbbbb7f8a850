"""Sans-IO IMAP server core (RFC 9051, RFC 3501): bytes in, events out, responses out.

ServerConnection never touches a socket. The session feeds it what the client
sent (receive_data), takes the events that need the store or TLS (next_event),
answers each with the method named in the event's docstring, and writes
data_to_send(). Everything else is decided here, next to the rule it follows:
framing and literals, states, syntax (through parser.py), limits, CAPABILITY,
LOGOUT, ENABLE, the SASL PLAIN exchange and IDLE's continuation.

Events are the parsed Command of every valid command the core does not answer
itself, and Login, StartTLS, Idle and IdleDone. One event at a time: while an
event waits for its answer, later input stays buffered, so pipelined commands
are answered in order (RFC 9051 5.5 allows more, and requires none).

Literals (RFC 9051 4.3, RFC 7888, RFC 3516): a command is gathered with its
literals' octets inline, then parsed whole. A synchronizing literal is decided
on when announced: "+ Ready for literal data", or a tagged refusal and the
command is dropped; the client sends nothing more of it. A non-synchronizing
literal is on its way before it can be refused, so a refusal (BAD [TOOBIG])
ends the connection: its octets are never read as commands. Before login the
core announces LITERAL-, so only 4096 octets may come unasked (RFC 7888 4);
once logged in it announces LITERAL+ and only the limits bound them.

A command line over max_line is answered BAD and the rest of the command is
read and dropped, through any non-synchronizing literals it announces, up to
max_discard octets; past that, or where the end of a line cannot be told from
a literal announcement, the connection ends instead.

The output is a list of pieces (data_to_send): message bodies handed to
untagged() as memoryviews pass through uncopied, for the transport's writelines.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal, TypeVar

from appliance.imap.parser import (
    Command,
    FetchArgs,
    FetchAttr,
    ListArgs,
    ParseError,
    SearchAnd,
    SearchArgs,
    SearchKey,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SelectArgs,
    StatusArgs,
    StoreArgs,
    command_head,
    decode_base64,
    parse_command,
)


class State(Enum):
    """The connection states of RFC 9051 3."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


@dataclass(frozen=True, slots=True)
class Limits:
    """What one client may ask of a session; each is a named, tunable setting."""

    # Command text without literal octets, line ends included, summed over a
    # command's lines. RFC 7162 4 asks servers to take at least 8192 octets;
    # 64 KiB (Dovecot's imap_max_line_length) leaves room for long UID sets.
    max_line: int = 64 * 1024
    # All literal octets of one command other than APPEND: user names,
    # passwords, mailbox names and search strings are small; this bounds
    # what a client, even one not logged in, makes the core hold.
    max_literal_size: int = 64 * 1024
    # One APPENDed message, announced as APPENDLIMIT (RFC 7889); the same
    # default as SMTP's SIZE so that what may arrive may be filed too.
    max_message_size: int = 50 * 1024 * 1024
    # All messages of one MULTIAPPEND (RFC 3502), which the core holds whole
    # until the command ends: two full-size messages.
    max_append_size: int = 100 * 1024 * 1024
    # Nested search keys ("(", NOT, OR): real clients nest a few levels;
    # each level is Python stack in the parser.
    max_search_depth: int = 32
    # Per connection: room for a mistyped password or two. Someone guessing
    # has to reconnect, where the session's per-client delays apply.
    max_failed_logins: int = 3
    # A client logs in within a handful of commands (CAPABILITY, ID,
    # STARTTLS, CAPABILITY, AUTHENTICATE); one that talks this long without
    # credentials is probing.
    max_commands_before_login: int = 20
    # BAD responses before the session gives up on the client, as Postfix's
    # smtpd_hard_error_limit does. NO is an ordinary answer and does not count.
    max_errors: int = 20
    # Octets of one over-long command (its lines and non-synchronizing
    # literals) read and dropped to stay in step with the client after BAD.
    # A client still sending past this is not one to wait for: the
    # connection ends, so an endless line costs a bounded amount of work.
    max_discard: int = 1024 * 1024


# -- events: what the session decides on ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Login:
    """LOGIN or AUTHENTICATE PLAIN; answer login_succeeded() or login_failed()."""

    tag: str
    user: str
    password: str = field(repr=False)  # kept out of logs and tracebacks


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STARTTLS; respond_starttls(), do the handshake, then tls_started()."""

    tag: str


@dataclass(frozen=True, slots=True)
class Idle:
    """IDLE (RFC 2177); needs no answer.

    "+ idling" is queued already. Push updates with untagged() until IdleDone.
    """

    tag: str


@dataclass(frozen=True, slots=True)
class IdleDone:
    """The line that ends IDLE arrived; push any last updates, then idle_done().

    done is False when the line was something other than DONE: idle_done()
    then completes the IDLE with BAD.
    """

    tag: str
    done: bool


Event = Command | Login | StartTLS | Idle | IdleDone
_AnEvent = TypeVar("_AnEvent", Command, Login, StartTLS, IdleDone)


class _Input(Enum):
    """What the next line from the client is."""

    COMMAND = "command"
    SASL = "sasl"  # the answer to AUTHENTICATE's "+ " continuation
    IDLE = "idle"  # DONE, or anything else that ends IDLE with BAD
    TLS = "tls"  # after OK to STARTTLS: nothing, until the handshake is done


_NOT_AUTHENTICATED = frozenset({State.NOT_AUTHENTICATED})
_AUTHENTICATED = frozenset({State.AUTHENTICATED, State.SELECTED})
_SELECTED = frozenset({State.SELECTED})
_ANY = _NOT_AUTHENTICATED | _AUTHENTICATED

# Who may send what in which state. Anything else, or an unknown command, is
# answered BAD and never emitted (RFC 9051 6). UID forms count as their command.
_VALID_IN = {
    # RFC 9051 6.1, and RFC 2971 3.1 for ID.
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,
    # RFC 9051 6.2
    "STARTTLS": _NOT_AUTHENTICATED,
    "AUTHENTICATE": _NOT_AUTHENTICATED,
    "LOGIN": _NOT_AUTHENTICATED,
    # RFC 9051 6.3; RFC 5161 3.1: ENABLE only before a mailbox is selected.
    "ENABLE": frozenset({State.AUTHENTICATED}),
    "SELECT": _AUTHENTICATED,
    "EXAMINE": _AUTHENTICATED,
    "CREATE": _AUTHENTICATED,
    "DELETE": _AUTHENTICATED,
    "RENAME": _AUTHENTICATED,
    "SUBSCRIBE": _AUTHENTICATED,
    "UNSUBSCRIBE": _AUTHENTICATED,
    "LIST": _AUTHENTICATED,
    "LSUB": _AUTHENTICATED,
    "NAMESPACE": _AUTHENTICATED,
    "STATUS": _AUTHENTICATED,
    "APPEND": _AUTHENTICATED,
    "IDLE": _AUTHENTICATED,
    # RFC 9051 6.4 (CHECK from RFC 3501 6.4.1)
    "CHECK": _SELECTED,
    "CLOSE": _SELECTED,
    "UNSELECT": _SELECTED,
    "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED,
    "FETCH": _SELECTED,
    "STORE": _SELECTED,
    "COPY": _SELECTED,
    "MOVE": _SELECTED,
}

# RFC 5161 4 names; the value is how ENABLED and the enabled set spell them.
_ENABLEABLE = {
    "CONDSTORE": "CONDSTORE",  # RFC 7162 3.1
    "QRESYNC": "QRESYNC",  # RFC 7162 3.2.3
    "UTF8=ACCEPT": "UTF8=ACCEPT",  # RFC 6855 3
    "IMAP4REV2": "IMAP4rev2",  # RFC 9051 6.3.1
}

# RFC 7888 (LITERAL-): the largest non-synchronizing literal a client may send.
_MAX_NONSYNC_LITERAL = 4096
# "{n}", "{n+}" or "~{n}" ending a line: octets of a literal follow the line end.
_LITERAL_AT_END = re.compile(rb"(~?)\{([0-9]+)(\+?)\}\Z")
# Of a line being dropped, the last octets are kept: enough for "~{" 20 digits "+}" CR.
_TAIL = 32
# Of an over-long first line, the octets searched for its tag and command name.
_HEAD_OCTETS = 1024
# Response text is one line: no control characters from whatever the session passes.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Views smaller than this are copied into the output: one write beats several.
_PASS_THROUGH_MIN = 16 * 1024


class ServerConnection:
    """One IMAP server connection's protocol state; see the module docstring."""

    __slots__ = (
        "hostname",
        "limits",
        "tls_available",
        "tls_active",
        "login_allowed",
        "closed",
        "state",
        "read_only",
        "_enabled",
        "_input",
        "_buffer",
        "_scanned",
        "_command",
        "_head",
        "_line_octets",
        "_literal_octets",
        "_literal_left",
        "_discarding",
        "_discarded",
        "_tail",
        "_exchange_tag",
        "_pending",
        "_handed_out",
        "_output",
        "_errors",
        "_failed_logins",
        "_commands_before_login",
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
        # Whether LOGIN and AUTHENTICATE PLAIN may be used now: the session says
        # so for TLS or loopback, and tls_started() turns it on (RFC 9051 6.2.3).
        self.login_allowed = login_allowed
        self.closed = False
        self.state = State.NOT_AUTHENTICATED
        self.read_only = False  # the selected mailbox was opened by EXAMINE or read-only
        self._enabled: set[str] = set()
        self._input = _Input.COMMAND
        self._buffer = bytearray()  # unprocessed input
        self._scanned = 0  # how much of the buffer was searched for a LF already
        # The command being gathered: its lines and literal octets as sent
        # (canonical CRLF after each literal announcement), parsed when whole.
        self._command = bytearray()
        self._head: tuple[str | None, str] | None = None  # tag and name, at the first literal
        self._line_octets = 0  # command text so far, against max_line
        self._literal_octets = 0  # literal octets so far, against the literal limits
        self._literal_left = 0  # octets of the current literal still to come
        # Dropping the rest of an over-long command (or SASL or IDLE line):
        # how much so far, and the last octets of the line being dropped.
        self._discarding = False
        self._discarded = 0
        self._tail = b""
        self._exchange_tag = ""  # the AUTHENTICATE or IDLE whose lines are being read
        self._pending: Event | None = None
        self._handed_out = False
        self._output: list[bytearray | memoryview] = []
        self._errors = 0
        self._failed_logins = 0
        self._commands_before_login = 0

    # -- the session's side ------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Input bytes held: unprocessed, and the command being gathered."""
        return len(self._buffer) + len(self._command)

    @property
    def enabled(self) -> frozenset[str]:
        """What ENABLE turned on (RFC 5161), and CONDSTORE once a command used it (RFC 7162 3.1)."""
        return frozenset(self._enabled)

    @property
    def utf8(self) -> bool:
        """Mailbox names and quoted strings are UTF-8 (RFC 6855 3, RFC 9051 5.1)."""
        return "UTF8=ACCEPT" in self._enabled or "IMAP4rev2" in self._enabled

    def greet(self) -> None:
        self._line(f"* OK [CAPABILITY {self._capabilities()}] {self.hostname} IMAP4rev2 ready")

    def refuse_busy(self) -> None:
        """Instead of the greeting: the server has no room for this client now."""
        self._close_with("[UNAVAILABLE] Too many connections, try again later")

    def timeout(self) -> None:
        """The client was idle too long; RFC 9051 5.4 wants at least 30 minutes."""
        self._close_with("Autologout; idle for too long")

    def shutdown(self) -> None:
        self._close_with("[UNAVAILABLE] Server shutting down")  # RFC 5530 3: try later

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the client; b"" means the connection is gone."""
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
        event = self._pending
        if isinstance(event, Idle):
            # A notice: the core reads on at once, for the DONE.
            self._pending = None
            self._process()
        else:
            self._handed_out = True
        return event

    @property
    def amid_literals(self) -> bool:
        """A command with literals has begun and is not complete: the client
        is still sending it, and may be holding its last bytes back until
        they are acknowledged (Nagle's algorithm, e.g. the CRLF after an
        APPEND literal)."""
        return self._head is not None

    def data_to_send(self) -> list[bytearray | bytes | memoryview | object]:
        """Everything queued, in order: octets (bytearray), and what untagged()
        passed on whole (big memoryviews, the session's own pieces)."""
        # The bytearrays go out as they are, uncopied: the core never writes to
        # one again once it has been handed out (_write starts a new one).
        pieces, self._output = self._output, []
        return pieces

    def untagged(self, *parts: str | bytes | memoryview) -> None:
        """Queue one untagged response: "* ", the parts, CRLF.

        Parts are joined as they are (str as UTF-8). A literal is its
        literal_header() followed by its octets; big octets given as a
        memoryview are not copied, and must stay valid until written. Any
        other object is handed out by data_to_send() as it is, in its place,
        for the session to write (octets it reads from the store later). Valid at
        any time: between commands and during IDLE too, within what RFC 9051
        5.3 allows.
        """
        if self.closed:
            return
        # Joined once: FETCH makes one of these per message, thousands a command.
        line: list[bytes | bytearray | memoryview] = [b"* "]
        for part in parts:
            if isinstance(part, str):
                line.append(part.encode())
            elif isinstance(part, bytes | bytearray) or (
                isinstance(part, memoryview) and part.nbytes < _PASS_THROUGH_MIN
            ):
                line.append(part)
            else:
                # Passed on whole: a big memoryview, or the session's own kind of piece.
                self._write(b"".join(line))
                self._output.append(part)
                line = []
        line.append(b"\r\n")
        self._write(b"".join(line))

    def respond(
        self, status: Literal["OK", "NO", "BAD"], text: str, code: str | None = None
    ) -> None:
        """Answer a Command with its tagged completion, e.g. respond("NO", "...", "TRYCREATE").

        A successful SELECT or EXAMINE is answered with selected() instead; any
        other answer to it leaves the connection AUTHENTICATED (RFC 9051 6.3.2).
        OK to CLOSE or UNSELECT returns to AUTHENTICATED.
        """
        if status not in ("OK", "NO", "BAD"):
            raise ValueError(f"unknown status {status!r}")
        waiting = self._pending
        if (
            isinstance(waiting, Command)
            and waiting.name in ("SELECT", "EXAMINE")
            and status == "OK"
        ):
            raise RuntimeError("answer a successful SELECT or EXAMINE with selected()")
        event = self._answered(Command)
        if event is None:
            return
        if event.name in ("CLOSE", "UNSELECT") and status == "OK":
            self.state = State.AUTHENTICATED
            self.read_only = False
        self._tagged(event.tag, status, text, code)
        self._process()

    def selected(self, read_only: bool = False) -> None:
        """Answer SELECT or EXAMINE: the mailbox is open and its untagged data sent."""
        waiting = self._pending
        if not isinstance(waiting, Command) or waiting.name not in ("SELECT", "EXAMINE"):
            raise RuntimeError("selected() answers SELECT or EXAMINE only")
        event = self._answered(Command)
        if event is None:
            return
        self.state = State.SELECTED
        self.read_only = read_only or event.name == "EXAMINE"  # RFC 9051 6.3.3
        code = "READ-ONLY" if self.read_only else "READ-WRITE"  # RFC 9051 7.1
        self._tagged(event.tag, "OK", f"{event.name} completed", code)
        self._process()

    def login_succeeded(self) -> None:
        """Answer Login: the user is authenticated."""
        event = self._answered(Login)
        if event is None:
            return
        self.state = State.AUTHENTICATED
        # RFC 9051 6.2.3: the capabilities change with the state; say them now.
        self._tagged(event.tag, "OK", "Logged in", f"CAPABILITY {self._capabilities()}")
        self._process()

    def login_failed(self, reason: Literal["auth", "temp"] = "auth") -> None:
        """Answer Login: wrong credentials ("auth"), or a fault on our side ("temp")."""
        if reason not in ("auth", "temp"):
            raise ValueError(f"unknown login failure reason {reason!r}")
        event = self._answered(Login)
        if event is None:
            return
        if reason == "auth":
            self._credentials_refused(event.tag)
        else:
            # RFC 5530 3: nothing wrong with the credentials; trying later may work.
            self._tagged(event.tag, "NO", "Temporary failure, try again later", "UNAVAILABLE")
        self._process()

    def respond_starttls(self) -> None:
        """Answer StartTLS: queue the OK; the session starts the handshake after writing it."""
        event = self._answered(StartTLS)
        if event is None:
            return
        self._tagged(event.tag, "OK", "Begin TLS negotiation now")
        # CVE-2011-0411: what the client pipelined after STARTTLS was sent in
        # clear text and must not run as if it came over TLS (RFC 9051 6.2.1).
        self._buffer.clear()
        self._scanned = 0
        self._input = _Input.TLS

    def tls_started(self) -> None:
        """The handshake is done: logins are safe now, and nothing said before counts."""
        if self._input is not _Input.TLS:
            raise RuntimeError("tls_started() without an accepted STARTTLS")
        self.tls_active = True
        self.login_allowed = True
        self._input = _Input.COMMAND

    def idle_done(self) -> None:
        """Answer IdleDone: complete the IDLE, OK after DONE and BAD after anything else."""
        event = self._answered(IdleDone)
        if event is None:
            return
        if event.done:
            self._tagged(event.tag, "OK", "IDLE terminated")
        else:
            self._tagged(event.tag, "BAD", "Expected DONE")  # RFC 2177 3
        self._process()

    # -- responses and closing ---------------------------------------------------------

    def _capabilities(self) -> str:
        words = ["IMAP4rev1", "IMAP4rev2"]
        if self.state is State.NOT_AUTHENTICATED:
            if self.tls_available and not self.tls_active:
                words.append("STARTTLS")
            # RFC 9051 6.2.3 and 7.2.2: no login offered where it is not allowed.
            words.append("AUTH=PLAIN" if self.login_allowed else "LOGINDISABLED")
        words += [
            "SASL-IR",  # RFC 4959
            # RFC 7888: before login only small literals may come unasked.
            "LITERAL-" if self.state is State.NOT_AUTHENTICATED else "LITERAL+",
            "ENABLE",  # RFC 5161
            "IDLE",  # RFC 2177
            "NAMESPACE",  # RFC 2342
            "ID",  # RFC 2971
            "UNSELECT",  # RFC 3691
            "UIDPLUS",  # RFC 4315
            "MOVE",  # RFC 6851
            "CONDSTORE",  # RFC 7162
            "QRESYNC",
            "ESEARCH",  # RFC 4731
            "SEARCHRES",  # RFC 5182
            "LIST-EXTENDED",  # RFC 5258
            "LIST-STATUS",  # RFC 5819
            "SPECIAL-USE",  # RFC 6154
            "CREATE-SPECIAL-USE",
            "MULTIAPPEND",  # RFC 3502
            f"APPENDLIMIT={self.limits.max_message_size}",  # RFC 7889
            "STATUS=SIZE",  # RFC 8438
            "BINARY",  # RFC 3516
            "UTF8=ACCEPT",  # RFC 6855
        ]
        return " ".join(words)

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        output = self._output
        if output and isinstance(output[-1], bytearray):
            output[-1] += data
        else:
            output.append(bytearray(data))

    def _line(self, text: str) -> None:
        self._write(text.encode() + b"\r\n")

    def _tagged(self, tag: str, status: str, text: str, code: str | None = None) -> None:
        # RFC 9051 7.1: resp-text = ["[" resp-text-code "]" SP] text
        text = _CONTROL.sub(" ", text)
        if code is not None:
            text = f"[{_CONTROL.sub(' ', code)}] {text}"
        self._line(f"{tag} {status} {text}")
        if status == "BAD":
            self._count_error()

    def _untagged_bad(self, text: str) -> None:
        self._line(f"* BAD {text}")  # RFC 9051 7.1.3: the command cannot be told
        self._count_error()

    def _count_error(self) -> None:
        self._errors += 1
        if self._errors > self.limits.max_errors:
            self._close_with("Too many errors")

    def _close_with(self, text: str) -> None:
        """A last untagged BYE (RFC 9051 7.1.5), then close."""
        if not self.closed:
            self._line(f"* BYE {text}")
            self._close()

    def _close(self) -> None:
        self.closed = True
        self.state = State.LOGOUT
        self._buffer = bytearray()
        self._command = bytearray()

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

    def _credentials_refused(self, tag: str) -> None:
        self._failed_logins += 1
        self._tagged(tag, "NO", "Authentication failed", "AUTHENTICATIONFAILED")  # RFC 5530 3
        if self._failed_logins >= self.limits.max_failed_logins:
            self._close_with("Too many failed logins")

    # -- input -------------------------------------------------------------------------

    def _process(self) -> None:
        """Work through buffered input until it runs out or an event needs an answer."""
        while self._pending is None and not self.closed and self._input is not _Input.TLS:
            if self._literal_left:
                if not self._buffer:
                    return
                self._read_literal()
                continue
            if self._discarding:
                tail = self._discard_line()
                if tail is None:
                    return
                self._line_discarded(tail)
                continue
            line = self._next_line()
            if line is None:
                if self._discarding:
                    continue
                return
            if self._input is _Input.SASL:
                self._input = _Input.COMMAND
                self._line_octets = 0
                self._sasl_response(line)
            elif self._input is _Input.IDLE:
                self._input = _Input.COMMAND
                self._line_octets = 0
                self._emit(IdleDone(self._exchange_tag, line.upper() == b"DONE"))
            else:
                self._command_line(line)

    def _next_line(self) -> bytes | None:
        """The next whole line without its line end, or None until one has arrived.

        None also when the line is past max_line: the core is then discarding.
        """
        buffer = self._buffer
        end = buffer.find(b"\n", self._scanned)
        room = self.limits.max_line - self._line_octets
        if (end < 0 and len(buffer) >= room) or end >= room:
            self._start_discarding(room)
            return None
        if end < 0:
            self._scanned = len(buffer)
            return None
        self._scanned = 0
        self._line_octets += end + 1
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        # A bare LF ends a line too: clients that send one mean a line end.
        return line[:-1] if line.endswith(b"\r") else line

    def _read_literal(self) -> None:
        buffer = self._buffer
        taken = min(self._literal_left, len(buffer))
        if self._discarding:
            self._discarded += taken
            del buffer[:taken]
        elif taken == len(buffer):
            self._command += buffer
            buffer.clear()
        else:
            with memoryview(buffer) as view:
                self._command += view[:taken]
            del buffer[:taken]
        self._literal_left -= taken

    def _command_line(self, line: bytes) -> None:
        marker = _LITERAL_AT_END.search(line)
        self._command += line
        if marker is None:
            command = self._take_command()
            if command is not None:
                self._run(command)
            return
        self._command += b"\r\n"  # canonical, whatever line end the client used
        if self._head is None:
            self._head = command_head(line)
        tag, name = self._head
        size = _literal_size(marker[2])
        self._literal_octets += size
        if marker[3]:  # non-synchronizing: the octets come whatever the answer
            refusal = self._non_synchronizing_refusal(name, size)
            if refusal is not None:
                self._refuse_literal(tag, refusal)
                self._close_with("Closing connection")
                return
            # Anything else wrong shows when the command is whole: these octets are few.
        else:
            refusal = self._command_refusal(tag, name, marker[1] == b"~")
            refusal = refusal or self._size_refusal(name, size)
            if refusal is not None:
                # The client waits for "+" and, refused, sends no more of this
                # command: the next line is a new one (RFC 9051 7.6).
                self._refuse_literal(tag, refusal)
                if not self.closed:
                    self._take_command()
                return
            self._write(b"+ Ready for literal data\r\n")
        self._literal_left = size

    def _command_refusal(
        self, tag: str | None, name: str, binary: bool
    ) -> tuple[str, str | None, str] | None:
        """Why a command announcing a literal cannot be run, if it cannot, seen from its start."""
        if tag is None:
            return ("BAD", None, "Invalid tag")
        if name not in _VALID_IN:
            return ("BAD", None, "Unknown command")
        if self.state not in _VALID_IN[name]:
            return ("BAD", None, "Command not valid in this state")
        if binary and name != "APPEND":
            return ("BAD", None, "literal8 is only for APPEND data")  # RFC 3516
        return None

    def _non_synchronizing_refusal(
        self, name: str, size: int
    ) -> tuple[str, str | None, str] | None:
        """Why a non-synchronizing literal of size is refused, if it is: always BAD [TOOBIG]."""
        if self.state is State.NOT_AUTHENTICATED and size > _MAX_NONSYNC_LITERAL:
            # LITERAL- (RFC 7888 4), which is what the core announces before login.
            return ("BAD", "TOOBIG", "Non-synchronizing literal over 4096 octets")
        refusal = self._size_refusal(name, size)
        if refusal is None:
            return None
        # RFC 7888 4 answers a literal sent unasked and too big with BAD [TOOBIG].
        return ("BAD", "TOOBIG", refusal[2])

    def _size_refusal(self, name: str, size: int) -> tuple[str, str | None, str] | None:
        """Why the limits refuse a literal of size for command name, if they do."""
        if name == "APPEND":
            if size > self.limits.max_message_size:
                # RFC 7889 4: NO with TOOBIG, before the client sends the message.
                return ("NO", "TOOBIG", f"Message over APPENDLIMIT={self.limits.max_message_size}")
            if self._literal_octets > self.limits.max_append_size:
                return ("NO", "TOOBIG", "Messages of this APPEND too big together")
        elif self._literal_octets > self.limits.max_literal_size:
            return ("NO", "TOOBIG", "Literal too big")
        return None

    def _refuse_literal(self, tag: str | None, refusal: tuple[str, str | None, str]) -> None:
        status, code, text = refusal
        if tag is None:
            self._untagged_bad(text)
        else:
            self._tagged(tag, status, text, code)

    def _start_discarding(self, room: int) -> None:
        """The line in the buffer is past max_line: drop the rest of what it belongs to."""
        if self._input is _Input.COMMAND and self._head is None:
            # The first line of a command: its tag, if it has one, is at the start.
            self._head = command_head(bytes(self._buffer[: min(room, _HEAD_OCTETS)]))
        self._command = bytearray()  # what was gathered goes now, not when the client stops
        self._scanned = 0
        self._discarding = True
        self._discarded = 0
        self._tail = b""

    def _discard_line(self) -> bytes | None:
        """Drop input up to the next LF; the line's last octets once it ended, else None."""
        buffer = self._buffer
        end = buffer.find(b"\n")
        taken = len(buffer) if end < 0 else end
        tail = (self._tail + bytes(buffer[max(0, taken - _TAIL) : taken]))[-_TAIL:]
        if end < 0:
            self._discarded += taken
            self._tail = tail
            buffer.clear()
        else:
            self._discarded += end + 1
            self._tail = b""
            del buffer[: end + 1]
        if self._discarded > self.limits.max_discard:
            self._refuse_over_long()
            self._close_with("Closing connection")
            return None
        return None if end < 0 else tail.removesuffix(b"\r")

    def _line_discarded(self, tail: bytes) -> None:
        """A dropped line ended; tail is its end, which may announce a literal."""
        if self._input is not _Input.COMMAND:
            # A SASL response or the line ending IDLE: one line, never a literal.
            exchange, self._input = self._input, _Input.COMMAND
            self._discarding = False
            self._line_octets = 0
            if exchange is _Input.SASL:
                self._tagged(self._exchange_tag, "BAD", "Line too long")  # RFC 9051 6.2.2
            else:
                self._emit(IdleDone(self._exchange_tag, False))  # answered BAD, as for not DONE
            return
        marker = _LITERAL_AT_END.search(tail)
        if marker is None and tail.endswith(b"}"):
            # Perhaps an announcement longer than the tail kept: its octets, if
            # any follow, cannot be told from commands.
            self._refuse_over_long()
            self._close_with("Closing connection")
            return
        if marker is None or not marker[3]:
            # The command ends here; after a synchronizing announcement the
            # client waits for "+", and the tagged BAD tells it to send no more
            # of the command (RFC 9051 7.5).
            self._discarding = False
            self._refuse_over_long()
            self._take_command()
            return
        size = _literal_size(marker[2])
        self._literal_octets += size
        _, name = self._head or (None, "")
        refusal = self._non_synchronizing_refusal(name, size)
        if refusal is not None or self._discarded + size > self.limits.max_discard:
            self._refuse_over_long()
            self._close_with("Closing connection")
            return
        self._literal_left = size  # dropped as it comes, then the command's next line

    def _refuse_over_long(self) -> None:
        if self._input is not _Input.COMMAND:
            self._tagged(self._exchange_tag, "BAD", "Line too long")
        elif self._head is None or self._head[0] is None:
            self._untagged_bad("Command line too long")  # RFC 9051 7.1.3: no tag to answer
        else:
            self._tagged(self._head[0], "BAD", "Command line too long")

    def _take_command(self) -> bytearray | None:
        """The command gathered, and a fresh start; None if it was one too many before login."""
        command, self._command = self._command, bytearray()  # APPEND data keep views of it
        self._head = None
        self._line_octets = self._literal_octets = 0
        if self.state is State.NOT_AUTHENTICATED:
            self._commands_before_login += 1
            if self._commands_before_login > self.limits.max_commands_before_login:
                self._close_with("Too many commands before login")
                return None
        return command

    def _run(self, data: bytearray) -> None:
        try:
            command = parse_command(data, utf8=self.utf8, max_depth=self.limits.max_search_depth)
        except ParseError as error:
            if error.tag is None:
                self._untagged_bad(error.text)
            else:
                self._tagged(error.tag, error.status, error.text, error.code)
            return
        if self.state not in _VALID_IN[command.name]:
            self._tagged(command.tag, "BAD", "Command not valid in this state")
            return
        _HANDLERS.get(command.name, ServerConnection._emit_command)(self, command)

    # -- commands the core answers itself, or checks before emitting -------------------

    def _emit_command(self, command: Command) -> None:
        if _uses_condstore(command):
            self._enabled.add("CONDSTORE")  # RFC 7162 3.1: a CONDSTORE-enabling command
        self._emit(command)

    def _capability(self, command: Command) -> None:
        self._line(f"* CAPABILITY {self._capabilities()}")
        self._tagged(command.tag, "OK", "CAPABILITY completed")

    def _noop(self, command: Command) -> None:
        if self.state is State.NOT_AUTHENTICATED:
            self._tagged(command.tag, "OK", "NOOP completed")
        else:
            self._emit_command(command)  # the session may have updates to send

    def _logout(self, command: Command) -> None:
        self._line("* BYE Logging out")  # RFC 9051 6.1.3: BYE, then the tagged OK
        self._tagged(command.tag, "OK", "LOGOUT completed")
        self._close()

    def _starttls(self, command: Command) -> None:
        # RFC 9051 6.2.1: BAD after a TLS negotiation, NO when TLS cannot be done.
        if self.tls_active:
            self._tagged(command.tag, "BAD", "TLS already active")
        elif not self.tls_available:
            self._tagged(command.tag, "NO", "TLS not available")
        else:
            self._emit(StartTLS(command.tag))

    def _check_login_allowed(self, tag: str) -> bool:
        # RFC 9051 6.2.3 (LOGINDISABLED) and RFC 5530 3: no clear-text passwords
        # on a channel anyone can read.
        if not self.login_allowed:
            self._tagged(tag, "NO", "Login not permitted without TLS", "PRIVACYREQUIRED")
        return self.login_allowed

    def _login(self, command: Command) -> None:
        if self._check_login_allowed(command.tag):
            self._emit(Login(command.tag, command.args.user, command.args.password))

    def _authenticate(self, command: Command) -> None:
        if not self._check_login_allowed(command.tag):
            return
        args = command.args
        if args.mechanism != "PLAIN":
            self._tagged(command.tag, "NO", "Unsupported authentication mechanism")
        elif args.initial_response is None:
            self._write(b"+ \r\n")  # RFC 4616: PLAIN's challenge is empty
            self._exchange_tag = command.tag
            self._input = _Input.SASL
        else:
            self._plain(command.tag, args.initial_response)  # RFC 4959 3

    def _sasl_response(self, line: bytes) -> None:
        tag = self._exchange_tag
        if line == b"*":
            self._tagged(tag, "BAD", "Authentication cancelled")  # RFC 9051 6.2.2
            return
        try:
            message = decode_base64(line)
        except ParseError as error:
            self._tagged(tag, "BAD", error.text)  # RFC 9051 6.2.2
            return
        self._plain(tag, message)

    def _plain(self, tag: str, message: bytes) -> None:
        """Check an RFC 4616 PLAIN message: [authzid] NUL authcid NUL passwd."""
        parts = message.split(b"\0")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            self._tagged(tag, "BAD", "Malformed PLAIN response")
            return
        try:
            authzid, user, password = (part.decode("utf-8") for part in parts)
        except UnicodeDecodeError:
            self._tagged(tag, "BAD", "Invalid UTF-8 in PLAIN response")
            return
        # RFC 4616 2: the server decides whom authcid may act as; here only itself.
        if authzid and authzid != user:
            self._credentials_refused(tag)
            return
        self._emit(Login(tag, user, password))

    def _enable(self, command: Command) -> None:
        newly = []
        for capability in command.args.capabilities:
            name = _ENABLEABLE.get(capability)  # RFC 5161 3.1: others are ignored
            if name is not None and name not in self._enabled:
                self._enabled.add(name)
                newly.append(name)
        if "QRESYNC" in self._enabled:
            self._enabled.add("CONDSTORE")  # RFC 7162 3.2.3: QRESYNC implies CONDSTORE
        self._line(" ".join(["* ENABLED", *newly]))  # RFC 5161 3.2: only what this enabled
        self._tagged(command.tag, "OK", "ENABLE completed")

    def _select(self, command: Command) -> None:
        if command.args.qresync is not None and "QRESYNC" not in self._enabled:
            # RFC 7162 3.2.5: BAD for the QRESYNC parameter without ENABLE QRESYNC.
            self._tagged(command.tag, "BAD", "QRESYNC parameter needs ENABLE QRESYNC")
            return
        if self.state is State.SELECTED:
            # RFC 9051 6.3.2 and 7.1: the open mailbox is closed first, and CLOSED
            # separates its responses from the new mailbox's.
            self._line("* OK [CLOSED] Previous mailbox is now closed")
            self.state = State.AUTHENTICATED
            self.read_only = False
        self._emit_command(command)

    def _fetch(self, command: Command) -> None:
        if command.args.vanished and "QRESYNC" not in self._enabled:
            # RFC 7162 3.2.6: BAD for VANISHED without ENABLE QRESYNC.
            self._tagged(command.tag, "BAD", "VANISHED needs ENABLE QRESYNC")
            return
        self._emit_command(command)

    def _idle(self, command: Command) -> None:
        self._write(b"+ idling\r\n")  # RFC 2177 3
        self._exchange_tag = command.tag
        self._input = _Input.IDLE
        self._emit(Idle(command.tag))


_HANDLERS: dict[str, Callable[[ServerConnection, Command], None]] = {
    "CAPABILITY": ServerConnection._capability,
    "NOOP": ServerConnection._noop,
    "LOGOUT": ServerConnection._logout,
    "STARTTLS": ServerConnection._starttls,
    "LOGIN": ServerConnection._login,
    "AUTHENTICATE": ServerConnection._authenticate,
    "ENABLE": ServerConnection._enable,
    "SELECT": ServerConnection._select,
    "EXAMINE": ServerConnection._select,
    "FETCH": ServerConnection._fetch,
    "IDLE": ServerConnection._idle,
}


def _literal_size(digits: bytes) -> int:
    """A literal announcement's octet count; past number64 either way when very long."""
    return int(digits) if len(digits) <= 20 else 2**64


def _uses_condstore(command: Command) -> bool:
    """Whether the command is CONDSTORE-enabling (RFC 7162 3.1)."""
    args = command.args
    if isinstance(args, SelectArgs):
        return args.condstore
    if isinstance(args, StatusArgs):
        return "HIGHESTMODSEQ" in args.items
    if isinstance(args, ListArgs):
        return "HIGHESTMODSEQ" in args.status_items
    if isinstance(args, FetchArgs):
        return args.changed_since is not None or FetchAttr("MODSEQ") in args.items
    if isinstance(args, StoreArgs):
        return args.unchanged_since is not None
    if isinstance(args, SearchArgs):
        return _has_modseq(args.key)
    return False


def _has_modseq(key: SearchKey) -> bool:
    keys = [key]
    while keys:
        key = keys.pop()
        if isinstance(key, SearchModSeq):
            return True
        if isinstance(key, SearchAnd):
            keys.extend(key.keys)
        elif isinstance(key, SearchOr):
            keys += (key.left, key.right)
        elif isinstance(key, SearchNot):
            keys.append(key.key)
    return False
