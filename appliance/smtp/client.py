"""Sans-IO SMTP client core (RFC 5321): replies in, commands out, a result per recipient.

ClientConnection never touches a socket. The session feeds it what the
server sent (receive_data), writes what it has to say (data_to_send), and
acts on its events:

- StartTLS: the server said 220 to STARTTLS; do the handshake, then call
  tls_started() (or close the connection if the handshake failed);
- Ready: nothing in flight; call send_message(envelope) or quit();
- SendBody: the server said 354; write the pieces that send_body(chunk)
  returns for each chunk of the message, then those of end_body();
- MessageResult: one message is done, with an Outcome for each recipient;
- Closed: the connection is over. Its outcome (None after a QUIT that was
  asked for) is what befell every message not yet tried on it.

The core decides everything that needs no knowledge of the network: EHLO
and the fall back to HELO, which extensions to use, STARTTLS and AUTH,
pipelining, dot-stuffing, and what each reply means for each recipient.
It also names the timeout that applies now (waiting_for); the session
enforces it and calls timed_out() or connection_lost() when the network
fails, which the core turns into temporary failures.
"""

from __future__ import annotations

import base64
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

from appliance.smtp.protocol import Reply

# -- settings ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds to wait for each reply (and for each block of the message sent)."""

    # RFC 5321 4.5.3.2.1-6, the minimums a client should wait: servers may
    # do slow checks (DNS, content filters) before they answer, and a client
    # that gives up early makes the server deliver a message twice.
    greeting: float = 300.0
    mail: float = 300.0
    rcpt: float = 300.0
    data_init: float = 120.0
    data_block: float = 180.0  # for each block written, not the whole message
    data_termination: float = 600.0  # the server may be delivering before it answers
    # Not in RFC 5321 4.5.3.2: EHLO, HELO and AUTH get MAIL's 5 minutes
    # (Postfix's smtp_helo_timeout), STARTTLS the same for its reply and the
    # handshake together (smtp_starttls_timeout).
    command: float = 300.0
    starttls: float = 300.0
    # RSET checks that a connection is still good before the next message
    # (as Postfix's smtp_rset_timeout does): a server slow to answer it is
    # better replaced by a new connection.
    rset: float = 20.0
    # All results are in when QUIT is sent; nothing depends on its answer.
    quit: float = 30.0


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """How much of a server's reply the core holds; each is a named setting."""

    # RFC 5321 4.5.3.1.5: 512 octets with the code and CRLF. Longer lines
    # are cut to this and read on to their end without being held, as
    # Postfix does: the text is for people, the code decides.
    max_reply_line: int = 4096
    # An EHLO reply has a line per extension, about 20; a reply that goes
    # on for longer is hostile and ends the connection.
    max_reply_lines: int = 200


@dataclass(frozen=True, slots=True)
class Credentials:
    """A relay account for AUTH PLAIN or LOGIN (RFC 4954)."""

    username: str
    password: str = field(repr=False)  # kept out of logs that print the value
    # RFC 8314 3 and RFC 4954 4: passwords go over TLS only. A relay the
    # owner set up without TLS ("none") has to allow this explicitly.
    allow_cleartext: bool = False


# -- values the session gets ------------------------------------------------------------


class Kind(Enum):
    """What became of a message for one recipient."""

    DELIVERED = "delivered"  # the host took responsibility (2xx)
    TEMPORARY = "temporary"  # try again later (4xx, or the connection failed)
    PERMANENT = "permanent"  # bounce (5xx, or refused here before sending)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A recipient's result, with what a bounce (RFC 3464) needs to quote."""

    kind: Kind
    status: str  # RFC 3463 enhanced status code, for the DSN's Status: field
    reply: Reply | None  # what the host said; None if it said nothing to this
    text: str  # the reply's text, or what went wrong in words
    host: str  # who said it, as the session named the host
    command: str = ""  # what the reply answered: "RCPT TO", "end of data" ...

    @property
    def diagnostic(self) -> str:
        """One line for a DSN's Diagnostic-Code and for logs."""
        if self.reply is None:
            return f"{self.host}: {self.text}" if self.host else self.text
        status = f" {self.reply.status}" if self.reply.status else ""
        return (
            f"host {self.host} said: {self.reply.code}{status} {self.text}"
            f" (in reply to {self.command})"
        )


@dataclass(frozen=True, slots=True)
class RecipientResult:
    recipient: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message to send: who from, to whom, and what the core must know of it."""

    sender: str  # "" for the null reverse-path (bounces)
    recipients: tuple[str, ...]
    size: int | None = None  # octets, for the SIZE parameter (RFC 1870)
    eight_bit: bool = False  # has octets over 127: BODY=8BITMIME (RFC 6152)
    # The message needs SMTPUTF8 (RFC 6531) for its header fields; non-ASCII
    # addresses need it in any case, and the core sees those itself.
    smtputf8: bool = False


@dataclass(frozen=True, slots=True)
class Extensions:
    """What a server's EHLO reply offered (RFC 5321 4.1.1.1)."""

    keywords: dict[str, str] = field(default_factory=dict)  # upper-cased keyword -> params
    size: int | None = None  # RFC 1870: None if not offered, 0 for no fixed limit
    pipelining: bool = False  # RFC 2920
    starttls: bool = False  # RFC 3207
    eight_bit_mime: bool = False  # RFC 6152
    smtputf8: bool = False  # RFC 6531
    enhanced_status_codes: bool = False  # RFC 2034
    dsn: bool = False  # RFC 3461
    chunking: bool = False  # RFC 3030
    auth: frozenset[str] = frozenset()  # RFC 4954 SASL mechanisms, upper case

    @classmethod
    def parse(cls, lines: Sequence[str]) -> Extensions:
        """The keyword lines of an EHLO reply (the first line is the greeting)."""
        keywords: dict[str, str] = {}
        auth: set[str] = set()
        for line in lines:
            keyword, _, params = line.strip().partition(" ")
            keyword = keyword.upper()
            if keyword.startswith("AUTH="):  # an old form some servers still send
                keyword, params = "AUTH", f"{keyword[5:]} {params}"
            if not keyword:
                continue
            keywords[keyword] = params.strip()
            if keyword == "AUTH":
                auth.update(params.upper().split())
        size = None
        if "SIZE" in keywords:
            value = keywords["SIZE"]
            size = int(value) if value.isdigit() else 0  # a bare SIZE states no limit
        return cls(
            keywords=keywords,
            size=size,
            pipelining="PIPELINING" in keywords,
            starttls="STARTTLS" in keywords,
            eight_bit_mime="8BITMIME" in keywords,
            smtputf8="SMTPUTF8" in keywords,
            enhanced_status_codes="ENHANCEDSTATUSCODES" in keywords,
            dsn="DSN" in keywords,
            chunking="CHUNKING" in keywords,
            auth=frozenset(auth),
        )


@dataclass(frozen=True, slots=True)
class Timeout:
    """The timeout that applies now: its name in Timeouts, and its seconds."""

    name: str
    seconds: float


# -- events -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartTLS:
    """220 to STARTTLS: hand the connection to TLS, then call tls_started()."""


@dataclass(frozen=True, slots=True)
class Ready:
    """Nothing in flight: call send_message() or quit()."""

    extensions: Extensions


@dataclass(frozen=True, slots=True)
class SendBody:
    """354 to DATA: send the content through send_body() and end_body()."""


@dataclass(frozen=True, slots=True)
class MessageResult:
    """One message is done; a result for each of its recipients, in order."""

    envelope: Envelope
    results: tuple[RecipientResult, ...]


@dataclass(frozen=True, slots=True)
class Closed:
    """The connection is over. outcome is None after a QUIT that was asked for."""

    outcome: Outcome | None


Event = StartTLS | Ready | SendBody | MessageResult | Closed


# -- reading replies --------------------------------------------------------------------


class _ProtocolError(Exception):
    """The server sent something that is not an SMTP reply."""


# RFC 5321 4.2: a three-digit code, then "-" on every line but the last.
# Codes of classes 1 and 6 to 9 mean nothing in SMTP.
_REPLY_LINE = re.compile(rb"([2-5][0-9][0-9])(?:([ -])(.*)|)", re.DOTALL)
# RFC 2034 4 / RFC 3463 2: class.subject.detail at the start of each line.
_ENHANCED = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})(?: |$)")
# Replies are text for people and end up in logs and bounces.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class _ReplyReader:
    """Finds whole replies in the bytes received, holding a bounded amount of them."""

    __slots__ = ("limits", "_buffer", "_scanned", "_cut_line", "_lines", "_code")

    def __init__(self, limits: ClientLimits):
        self.limits = limits
        self._buffer = bytearray()
        self._scanned = 0
        self._cut_line: bytes | None = None  # the kept start of an over-long line
        self._lines: list[str] = []  # the lines of the reply so far
        self._code = b""

    @property
    def buffered(self) -> int:
        return len(self._buffer) + sum(len(line) for line in self._lines)

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def clear(self) -> None:
        self._buffer.clear()
        self._scanned = 0
        self._cut_line = None
        self._lines.clear()
        self._code = b""

    def next_reply(self) -> Reply | None:
        """The next whole reply, or None until more bytes arrive."""
        while (line := self._next_line()) is not None:
            match = _REPLY_LINE.fullmatch(line)
            if match is None:
                raise _ProtocolError(f"not an SMTP reply: {_printable(line[:80])!r}")
            code, separator, text = match.groups()
            if self._lines and code != self._code:
                # RFC 5321 4.2.1: every line of a reply has the same code.
                raise _ProtocolError("a multi-line reply changed its code")
            self._code = code
            self._lines.append(_printable(text or b""))
            if separator == b"-":
                if len(self._lines) >= self.limits.max_reply_lines:
                    raise _ProtocolError(f"a reply of over {len(self._lines)} lines")
                continue
            lines, self._lines = self._lines, []
            return _make_reply(int(code), lines)
        return None

    def _next_line(self) -> bytes | None:
        buffer = self._buffer
        end = buffer.find(b"\n", self._scanned)
        limit = self.limits.max_reply_line
        if end < 0:
            if self._cut_line is None and len(buffer) > limit:
                self._cut_line = bytes(buffer[:limit])
            if self._cut_line is not None:
                buffer.clear()  # the rest of an over-long line is not kept
            self._scanned = len(buffer)
            return None
        self._scanned = 0
        if self._cut_line is not None or end > limit:
            line = self._cut_line if self._cut_line is not None else bytes(buffer[:limit])
            self._cut_line = None
        else:
            line = bytes(buffer[:end])
        del buffer[: end + 1]
        # Bare LF is taken as a line end too; the code is what matters.
        return line[:-1] if line.endswith(b"\r") else line


def _printable(text: bytes) -> str:
    return _CONTROL.sub("?", text.decode("utf-8", "replace"))


def _make_reply(code: int, lines: list[str]) -> Reply:
    status = ""
    match = _ENHANCED.match(lines[0])
    if match is not None and match[1] == str(code)[0]:
        status = f"{match[1]}.{match[2]}.{match[3]}"
        lines = [line[len(status) + 1 :] if line.startswith(status) else line for line in lines]
    return Reply(code, status, lines[0] if len(lines) == 1 else tuple(lines))


def _reply_text(reply: Reply) -> str:
    return reply.text if isinstance(reply.text, str) else " ".join(reply.text)


# -- dot-stuffing -----------------------------------------------------------------------

# What needs changing in content (RFC 5321 4.5.2 and 2.3.8): a dot that
# starts a line gets another, and a bare CR or LF becomes CRLF, so that the
# content cannot hold anything a server might take for its end ("\n.\n",
# "\r\n.\n": SMTP smuggling). Everything between matches goes out untouched.
_STUFF = re.compile(rb"(?P<bare>\r(?!\n)|(?<!\r)\n)(?P<dot>\.)?|\r\n\.")


class DotStuffer:
    """Turns message content, given in chunks, into DATA's octets.

    feed() returns pieces to write in order: slices of the chunk itself
    (memoryviews, no copy) and a few short bytes between them: a dot before
    each line that starts with one, CRLF for a bare CR or LF. A line end or
    a CRLF split across chunks is handled, which is why the last CR of a
    chunk is held until the next one shows whether an LF follows.
    """

    __slots__ = ("_line_start", "_held_cr", "octets")

    def __init__(self) -> None:
        self._line_start = True  # the first line can start with a dot as well
        self._held_cr = False
        self.octets = 0  # content octets taken so far (before stuffing)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        view = memoryview(chunk).cast("B")
        size = len(view)
        if not size:
            return []
        self.octets += size
        if not self._held_cr and view[size - 1] != 0x0D:
            # Scanned as bytes (C's counts and finds beat the regex tenfold),
            # sent as slices of the chunk.
            data = bytes(view)
            if data.count(b"\r") == data.count(b"\n") == data.count(b"\r\n"):
                return self._feed_crlf(view, data)
        pieces: list[bytes | memoryview] = []
        start = 0
        if self._held_cr:
            self._held_cr = False
            pieces.append(b"\r\n")  # with an LF it is CRLF; without, a bare CR made CRLF
            self._line_start = True
            if view[0] == 0x0A:
                start = 1
        if self._line_start and start < size and view[start] == 0x2E:
            pieces.append(b".")
        end = size - 1 if view[size - 1] == 0x0D else size
        for match in _STUFF.finditer(view, start, end):
            if match["bare"] is not None:
                pieces.append(view[start : match.start()])
                pieces.append(b"\r\n." if match["dot"] is not None else b"\r\n")
                start = match.end() - (1 if match["dot"] is not None else 0)
            else:
                pieces.append(view[start : match.start() + 2])
                pieces.append(b".")
                start = match.start() + 2
        if start < end:
            pieces.append(view[start:end])
        if end > 0:
            self._line_start = view[end - 1] == 0x0A
        self._held_cr = end < size
        return pieces

    def _feed_crlf(self, view: memoryview, data: bytes) -> list[bytes | memoryview]:
        """A chunk whose line ends are all CRLF (all that the store holds):
        only the dots that start lines need doing."""
        pieces: list[bytes | memoryview] = []
        if self._line_start and data[0] == 0x2E:
            pieces.append(b".")
        start = 0
        while (at := data.find(b"\r\n.", start)) >= 0:
            pieces += (view[start : at + 2], b".")
            start = at + 2
        pieces.append(view[start:])
        self._line_start = data[-1] == 0x0A
        return pieces

    def end(self) -> bytes:
        """The end of the content: its last line end if missing, and CRLF.CRLF."""
        if self._held_cr or not self._line_start:
            return b"\r\n.\r\n"
        return b".\r\n"  # RFC 5321 4.1.1.4: the content's own CRLF starts the end


def has_eight_bit(data: bytes | bytearray | memoryview) -> bool:
    """Whether content has octets over 127 (and so wants BODY=8BITMIME)."""
    return _EIGHT_BIT.search(memoryview(data).cast("B")) is not None


_EIGHT_BIT = re.compile(rb"[\x80-\xff]")


# -- the state machine ------------------------------------------------------------------


class _State(Enum):
    OPENING = "opening"  # greeting, EHLO, STARTTLS, AUTH
    TLS = "tls"  # the session is doing the TLS handshake
    READY = "ready"  # between messages
    TRANSACTION = "transaction"  # MAIL, RCPT, DATA or end of data in flight
    BODY = "body"  # the session is sending the content
    QUITTING = "quitting"
    CLOSED = "closed"


class _Step(Enum):
    """What an awaited reply answers: its name in outcomes and its timeout."""

    GREETING = ("greeting", "greeting")
    EHLO = ("EHLO", "command")
    HELO = ("HELO", "command")
    STARTTLS = ("STARTTLS", "starttls")
    AUTH = ("AUTH", "command")
    AUTH_USERNAME = ("AUTH LOGIN", "command")  # 334 wanted: the username next
    AUTH_PASSWORD = ("AUTH LOGIN username", "command")  # 334 wanted: the password next
    RSET = ("RSET", "rset")
    MAIL = ("MAIL FROM", "mail")
    RCPT = ("RCPT TO", "rcpt")
    DATA = ("DATA", "data_init")
    END_OF_DATA = ("end of data", "data_termination")
    LONE_DOT = ("end of empty data", "data_termination")  # see _on_data
    QUIT = ("QUIT", "quit")

    def __init__(self, command: str, timeout: str):
        self.command = command
        self.timeout = timeout


class _Transaction:
    """One message in flight: which recipients were sent, and what became of each."""

    __slots__ = ("envelope", "outcomes", "sent", "accepted", "mail_failed", "plan", "next_rcpt")

    def __init__(self, envelope: Envelope):
        self.envelope = envelope
        self.outcomes: list[Outcome | None] = [None] * len(envelope.recipients)
        self.sent: list[int] = []  # indexes of the recipients to send RCPT for
        self.accepted: list[int] = []  # those the server accepted
        self.mail_failed = False
        # Commands not sent yet (without PIPELINING: one at a time).
        self.plan: deque[tuple[_Step, bytes]] = deque()
        self.next_rcpt = 0  # which of sent the next RCPT reply is for

    def unanswered(self) -> list[int]:
        return [i for i, outcome in enumerate(self.outcomes) if outcome is None]


class ClientConnection:
    """One SMTP client connection's protocol state; see the module docstring."""

    __slots__ = (
        "hostname",
        "remote",
        "timeouts",
        "limits",
        "tls_possible",
        "tls_required",
        "tls_active",
        "credentials",
        "authenticated",
        "extensions",
        "replies_received",
        "_state",
        "_reader",
        "_awaiting",
        "_events",
        "_output",
        "_transaction",
        "_stuffer",
        "_messages_started",
        "_tls_refused",
    )

    def __init__(
        self,
        hostname: str,
        remote: str = "",
        *,
        tls_possible: bool = False,
        tls_active: bool = False,
        tls_required: bool = False,
        credentials: Credentials | None = None,
        timeouts: Timeouts | None = None,
        limits: ClientLimits | None = None,
    ):
        """hostname: ours, for EHLO. remote: the server, as outcomes name it."""
        self.hostname = hostname
        self.remote = remote
        self.timeouts = timeouts or Timeouts()
        self.limits = limits or ClientLimits()
        self.tls_possible = tls_possible  # the session can do STARTTLS
        self.tls_required = tls_required
        self.tls_active = tls_active  # TLS from the first byte (port 465)
        self.credentials = credentials
        self.authenticated = False
        self.extensions: Extensions | None = None  # None until EHLO or HELO succeeds
        self.replies_received = 0
        self._state = _State.OPENING
        self._reader = _ReplyReader(self.limits)
        self._awaiting: deque[_Step] = deque([_Step.GREETING])
        self._events: deque[Event] = deque()
        self._output = bytearray()
        self._transaction: _Transaction | None = None
        self._stuffer = DotStuffer()
        self._messages_started = 0
        self._tls_refused = False  # the server said no to STARTTLS

    # -- the session's side ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state is _State.CLOSED

    @property
    def wants_body(self) -> bool:
        """Whether content is still wanted (the server may answer before the end)."""
        return self._state is _State.BODY

    @property
    def buffered(self) -> int:
        """Received bytes held: the reply being read."""
        return self._reader.buffered

    @property
    def waiting_for(self) -> Timeout | None:
        """The timeout that applies now; None when the core waits for the session."""
        if self._state is _State.BODY:
            return Timeout("data_block", self.timeouts.data_block)
        if self._state is _State.TLS:
            return Timeout("starttls", self.timeouts.starttls)
        if not self._awaiting or self._state is _State.CLOSED:
            return None
        name = self._awaiting[0].timeout
        return Timeout(name, getattr(self.timeouts, name))

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the server; b"" means it closed the connection."""
        if self._state is _State.CLOSED:
            return
        if not data:
            self.connection_lost("connection closed by the host")
            return
        if self._state is _State.TLS:
            return  # nothing counts until the handshake is done (see _on_starttls)
        self._reader.feed(data)
        while self._state not in (_State.CLOSED, _State.TLS):
            try:
                reply = self._reader.next_reply()
            except _ProtocolError as error:
                self._fail(self._local(Kind.TEMPORARY, "4.5.0", f"protocol error: {error}"))
                return
            if reply is None:
                return
            self.replies_received += 1
            self._on_reply(reply)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def data_to_send(self) -> bytes:
        output = bytes(self._output)
        self._output.clear()
        return output

    def tls_started(self) -> None:
        """The handshake is done: RFC 3207 4.2, forget what the server said before."""
        if self._state is not _State.TLS:
            raise RuntimeError("tls_started() without a 220 to STARTTLS")
        self.tls_active = True
        self.extensions = None
        self._state = _State.OPENING
        self._command(_Step.EHLO, f"EHLO {self.hostname}")

    def send_message(self, envelope: Envelope) -> None:
        """Start a transaction; allowed after a Ready event."""
        if self._state is not _State.READY or self.extensions is None:
            raise RuntimeError("send_message() is for a Ready connection")
        if not envelope.recipients:
            raise ValueError("a message needs at least one recipient")
        transaction = _Transaction(envelope)
        self._transaction = transaction
        self._state = _State.TRANSACTION
        for index, recipient in enumerate(envelope.recipients):
            if _bad_address(recipient):
                text = f"bad recipient address syntax: {recipient!r}"
                transaction.outcomes[index] = self._local(Kind.PERMANENT, "5.1.3", text)
            else:
                transaction.sent.append(index)
        recipients = [envelope.recipients[index] for index in transaction.sent]
        smtputf8 = envelope.smtputf8 or not all(a.isascii() for a in [envelope.sender, *recipients])
        refusal = self._refuse_envelope(envelope, smtputf8, self.extensions)
        if refusal is not None or not recipients:
            for index in transaction.sent:
                transaction.outcomes[index] = refusal
            self._finish_message()
            return
        if self._messages_started:
            # A connection used before is checked, and left in no transaction.
            transaction.plan.append((_Step.RSET, b"RSET"))
        self._messages_started += 1
        parameters = self._mail_parameters(envelope, smtputf8, self.extensions)
        transaction.plan.append((_Step.MAIL, f"MAIL FROM:<{envelope.sender}>{parameters}".encode()))
        for recipient in recipients:
            transaction.plan.append((_Step.RCPT, f"RCPT TO:<{recipient}>".encode()))
        transaction.plan.append((_Step.DATA, b"DATA"))
        self._send_plan()

    def send_body(self, chunk: bytes | bytearray | memoryview) -> list[bytes | memoryview]:
        """Pieces to write for a chunk of content; [] once the content is not wanted."""
        if self._state is not _State.BODY:
            return []
        return self._stuffer.feed(chunk)

    def end_body(self) -> bytes:
        """The end of the content, to write after the last chunk's pieces."""
        if self._state is not _State.BODY:
            return b""
        self._state = _State.TRANSACTION  # END_OF_DATA is awaited since the 354
        return self._stuffer.end()

    def quit(self) -> None:
        """Say QUIT (after Ready); Closed follows its reply."""
        if self._state is not _State.READY:
            raise RuntimeError("quit() is for a Ready connection")
        self._state = _State.QUITTING
        self._command(_Step.QUIT, "QUIT")

    def timed_out(self) -> None:
        """The timeout named by waiting_for ran out; the session closes the connection."""
        timeout = self.waiting_for
        name = timeout.name if timeout else "reply"
        self.connection_lost(f"timed out waiting ({name} timeout)")

    def connection_lost(self, detail: str) -> None:
        """The connection failed (reset, closed, TLS error): temporary for what is open."""
        if self._state is _State.CLOSED:
            return
        if self._state is _State.QUITTING:
            self._close(None)  # all was done already
            return
        # RFC 3463 X.4.2: bad connection.
        self._fail(self._local(Kind.TEMPORARY, "4.4.2", detail), quit=False)

    # -- replies -----------------------------------------------------------------------

    def _on_reply(self, reply: Reply) -> None:
        if not self._awaiting:
            if reply.code == 421:  # RFC 5321 3.8: may come at any time, before closing
                self._fail(self._from_reply(reply, "no command"), quit=False)
            else:
                error = f"a reply to no command: {reply.code} {_reply_text(reply)}"
                self._fail(self._local(Kind.TEMPORARY, "4.5.0", f"protocol error: {error}"))
            return
        step = self._awaiting.popleft()
        if self._state is _State.BODY:
            # An answer before the end of the content: the host gave up on
            # it. Whatever follows on this connection cannot be trusted.
            self._on_early_reply(step, reply)
            return
        if reply.code == 421 and step is not _Step.QUIT:
            # RFC 5321 3.8: the server is closing the channel.
            self._fail(self._from_reply(reply, step.command), quit=False)
            return
        _HANDLERS[step](self, step, reply)

    def _on_greeting(self, step: _Step, reply: Reply) -> None:
        if reply.code == 220:
            self._command(_Step.EHLO, f"EHLO {self.hostname}")
        else:
            # A 554 greeting says "not here" (RFC 5321 3.1), not "never": the
            # next host or a later try may well take the message, so it is
            # temporary, as Postfix's smtp_skip_5xx_greeting makes it.
            outcome = self._from_reply(reply, step.command)
            self._fail(_as_temporary(outcome))

    def _on_ehlo(self, step: _Step, reply: Reply) -> None:
        if reply.code == 250:
            lines = (reply.text,) if isinstance(reply.text, str) else reply.text
            self.extensions = Extensions.parse(lines[1:])
            self._after_hello()
        elif reply.code in (500, 502):
            # RFC 5321 3.2: a server that knows no EHLO; HELO offers no extensions.
            self._command(_Step.HELO, f"HELO {self.hostname}")
        else:
            self._fail(self._from_reply(reply, step.command))

    def _on_helo(self, step: _Step, reply: Reply) -> None:
        if reply.code == 250:
            self.extensions = Extensions()
            self._after_hello()
        else:
            self._fail(self._from_reply(reply, step.command))

    def _after_hello(self) -> None:
        extensions = self.extensions or Extensions()
        if not self.tls_active:
            offered = extensions.starttls and not self._tls_refused
            if offered and self.tls_possible:
                self._command(_Step.STARTTLS, "STARTTLS")
                return
            if self.tls_required:
                # RFC 3463 X.7.4: security features not supported.
                why = "refused STARTTLS" if self._tls_refused else "does not offer STARTTLS"
                self._fail(self._local(Kind.TEMPORARY, "4.7.4", f"TLS is required, but {why}"))
                return
        if self.credentials is not None and not self.authenticated:
            self._start_auth(extensions)
            return
        self._become_ready()

    def _on_starttls(self, step: _Step, reply: Reply) -> None:
        if reply.code == 220:
            # Whatever came after the 220 was sent in clear text and must not
            # be read as if it came over TLS (the client side of CVE-2011-0411).
            self._reader.clear()
            self._state = _State.TLS
            self._events.append(StartTLS())
            return
        # RFC 3207 4: after a refusal the client may go on without TLS.
        self._tls_refused = True
        if self.tls_required:
            self._fail(_as_temporary(self._from_reply(reply, step.command)))
        else:
            self._after_hello()

    # AUTH (RFC 4954): PLAIN with its initial response, or LOGIN's two
    # prompts. A refusal is temporary whatever its code, as Postfix's
    # smtp_sasl_auth_soft_bounce makes it: a wrong relay password is the
    # owner's to fix, and the mail should wait for that, not bounce.

    def _start_auth(self, extensions: Extensions) -> None:
        credentials = self.credentials
        assert credentials is not None
        if not self.tls_active and not credentials.allow_cleartext:
            # RFC 5248 X.7.10: encryption needed for a clear-text mechanism.
            self._fail(self._local(Kind.TEMPORARY, "4.7.10", "would send a password without TLS"))
        elif "PLAIN" in extensions.auth:
            # RFC 4616 2: authzid NUL authcid NUL passwd, with no authzid.
            message = f"\0{credentials.username}\0{credentials.password}".encode()
            self._command(_Step.AUTH, f"AUTH PLAIN {_base64(message)}")
        elif "LOGIN" in extensions.auth:
            self._command(_Step.AUTH_USERNAME, "AUTH LOGIN")
        else:
            offered = " ".join(sorted(extensions.auth)) or "none"
            text = f"offers no AUTH mechanism of PLAIN and LOGIN (offered: {offered})"
            self._fail(self._local(Kind.TEMPORARY, "4.7.4", text))

    def _on_auth(self, step: _Step, reply: Reply) -> None:
        if reply.code == 235:
            self.authenticated = True
            self._become_ready()
        elif reply.code == 334 and step is not _Step.AUTH:
            credentials = self.credentials
            assert credentials is not None
            if step is _Step.AUTH_USERNAME:
                self._command(_Step.AUTH_PASSWORD, _base64(credentials.username.encode()))
            else:
                self._command(_Step.AUTH, _base64(credentials.password.encode()))
        else:
            self._fail(_as_temporary(self._from_reply(reply, step.command)))

    def _become_ready(self) -> None:
        self._state = _State.READY
        self._events.append(Ready(self.extensions or Extensions()))

    def _on_rset(self, step: _Step, reply: Reply) -> None:
        if reply.code == 250:
            self._after_transaction_reply()
        else:
            # A server that cannot even reset is in no state for a message.
            self._fail(_as_temporary(self._from_reply(reply, step.command)))

    def _on_mail(self, step: _Step, reply: Reply) -> None:
        transaction = self._current()
        if reply.code // 100 != 2:
            transaction.mail_failed = True
            outcome = self._from_reply(reply, step.command)
            for index in transaction.unanswered():
                transaction.outcomes[index] = outcome
            transaction.plan.clear()
        self._after_transaction_reply()

    def _on_rcpt(self, step: _Step, reply: Reply) -> None:
        transaction = self._current()
        index = transaction.sent[transaction.next_rcpt]
        transaction.next_rcpt += 1
        if transaction.mail_failed:
            pass  # answered already, by the reply to MAIL
        elif reply.code // 100 == 2:
            transaction.accepted.append(index)
        else:
            transaction.outcomes[index] = self._from_reply(reply, step.command)
        if transaction.next_rcpt == len(transaction.sent) and not transaction.accepted:
            transaction.plan.clear()  # no DATA for nobody (unless pipelined already)
        self._after_transaction_reply()

    def _on_data(self, step: _Step, reply: Reply) -> None:
        transaction = self._current()
        if reply.code // 100 == 3:
            if transaction.accepted and not transaction.mail_failed:
                self._stuffer = DotStuffer()
                self._state = _State.BODY
                self._awaiting.append(_Step.END_OF_DATA)
                self._events.append(SendBody())
            else:
                # RFC 2920 3.1: DATA pipelined after refused recipients and
                # accepted all the same: the client sends a lone dot.
                self._output += b".\r\n"
                self._awaiting.append(_Step.LONE_DOT)
            return
        if transaction.accepted and not transaction.mail_failed:
            outcome = self._from_reply(reply, step.command)
            for index in transaction.accepted:
                transaction.outcomes[index] = outcome
        self._after_transaction_reply()

    def _on_end_of_data(self, step: _Step, reply: Reply) -> None:
        transaction = self._current()
        outcome = self._from_reply(reply, step.command)
        if reply.code // 100 == 3:  # only 2, 4 or 5 can end a message
            text = f"protocol error: {reply.code} after the data"
            outcome = self._local(Kind.TEMPORARY, "4.5.0", text)
        for index in transaction.accepted:
            transaction.outcomes[index] = outcome
        self._after_transaction_reply()

    def _on_lone_dot(self, step: _Step, reply: Reply) -> None:
        self._after_transaction_reply()  # nobody was to get it; the reply means nothing

    def _on_quit(self, step: _Step, reply: Reply) -> None:
        self._close(None)

    def _on_early_reply(self, step: _Step, reply: Reply) -> None:
        transaction = self._current()
        if reply.is_error:
            outcome = self._from_reply(reply, step.command)
        else:
            text = f"protocol error: {reply.code} before the end of the data"
            outcome = self._local(Kind.TEMPORARY, "4.5.0", text)
        for index in transaction.accepted:
            transaction.outcomes[index] = outcome
        self._finish_message()
        text = "the host answered before the end of the data"
        self._fail(self._local(Kind.TEMPORARY, "4.5.0", text), quit=False)

    # -- transactions ------------------------------------------------------------------

    def _current(self) -> _Transaction:
        assert self._transaction is not None
        return self._transaction

    def _refuse_envelope(
        self, envelope: Envelope, smtputf8: bool, extensions: Extensions
    ) -> Outcome | None:
        """Why the message cannot go to this host at all, or None."""
        if _bad_address(envelope.sender, empty_ok=True):
            text = f"bad sender address syntax: {envelope.sender!r}"
            return self._local(Kind.PERMANENT, "5.1.7", text)
        if (
            extensions.size  # 0 or None: no limit stated
            and envelope.size is not None
            and envelope.size > extensions.size
        ):
            text = f"message size {envelope.size} exceeds the host's limit of {extensions.size}"
            return self._local(Kind.PERMANENT, "5.3.4", text)  # RFC 1870 6.1
        if smtputf8 and not extensions.smtputf8:
            # RFC 6531 3.2: no downgrade here; RFC 6533 X.6.7, as Postfix says.
            text = "SMTPUTF8 is required, but was not offered by the host"
            return self._local(Kind.PERMANENT, "5.6.7", text)
        return None

    def _mail_parameters(self, envelope: Envelope, smtputf8: bool, extensions: Extensions) -> str:
        parameters = ""
        if extensions.size is not None and envelope.size is not None:
            parameters += f" SIZE={envelope.size}"  # RFC 1870 6
        if envelope.eight_bit and extensions.eight_bit_mime:
            # RFC 6152 3. Without 8BITMIME the content goes as it is, as
            # Postfix's does: converting it would break DKIM signatures,
            # and servers without 8BITMIME take 8-bit octets in practice.
            parameters += " BODY=8BITMIME"
        if smtputf8:
            parameters += " SMTPUTF8"  # RFC 6531 3.4
        return parameters

    def _send_plan(self) -> None:
        """Send the planned commands: all at once with PIPELINING, else the next one.

        RFC 2920 3.1: RSET, MAIL and RCPT may be followed in a group by
        others; DATA ends the group, and is in every group that has it.
        """
        transaction = self._current()
        pipelining = self.extensions is not None and self.extensions.pipelining
        while transaction.plan:
            step, line = transaction.plan.popleft()
            self._awaiting.append(step)
            self._output += line + b"\r\n"
            if not pipelining:
                return

    def _after_transaction_reply(self) -> None:
        if self._awaiting or self._state is not _State.TRANSACTION:
            return  # more replies to this group are coming
        if self._current().plan:
            self._send_plan()
        else:
            self._finish_message()

    def _finish_message(self) -> None:
        transaction = self._current()
        self._transaction = None
        results = []
        for recipient, outcome in zip(
            transaction.envelope.recipients, transaction.outcomes, strict=True
        ):
            if outcome is None:  # cannot happen, but never report a recipient as nothing
                outcome = self._local(Kind.TEMPORARY, "4.5.0", "no reply for this recipient")
            results.append(RecipientResult(recipient, outcome))
        self._events.append(MessageResult(transaction.envelope, tuple(results)))
        if self._state is _State.TRANSACTION:
            self._become_ready()

    # -- failing and closing -----------------------------------------------------------

    def _fail(self, outcome: Outcome, quit: bool = True) -> None:
        """The connection cannot go on: what is open gets outcome, then Closed.

        Recipients of the message in flight that have no outcome yet, the
        accepted ones included (their message was not finished), get this one.
        """
        if self._transaction is not None:
            transaction = self._transaction
            for index in transaction.unanswered():
                transaction.outcomes[index] = outcome
            self._finish_message()
        if quit and self._state is not _State.CLOSED:
            self._output += b"QUIT\r\n"  # polite; nothing waits for the answer
        self._close(outcome)

    def _close(self, outcome: Outcome | None) -> None:
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        self._awaiting.clear()
        self._reader.clear()
        self._events.append(Closed(outcome))

    def _command(self, step: _Step, line: str) -> None:
        self._awaiting.append(step)
        self._output += line.encode() + b"\r\n"

    def _from_reply(self, reply: Reply, command: str) -> Outcome:
        kind = {2: Kind.DELIVERED, 5: Kind.PERMANENT}.get(reply.code // 100, Kind.TEMPORARY)
        status = reply.status or f"{reply.code // 100}.0.0"
        if kind is Kind.TEMPORARY and not status.startswith("4"):
            status = "4.0.0"  # a 3xx where it means nothing
        return Outcome(kind, status, reply, _reply_text(reply), self.remote, command)

    def _local(self, kind: Kind, status: str, text: str) -> Outcome:
        return Outcome(kind, status, None, text, self.remote)


def _as_temporary(outcome: Outcome) -> Outcome:
    if outcome.kind is Kind.TEMPORARY:
        return outcome
    return replace(outcome, kind=Kind.TEMPORARY, status="4" + outcome.status[1:])


# A path inside <...> must not hold what would end it or the command line.
_UNSAFE_IN_PATH = re.compile(r"[\x00-\x1f\x7f<>]")


def _bad_address(address: str, empty_ok: bool = False) -> bool:
    if not address:
        return not empty_ok
    if _UNSAFE_IN_PATH.search(address):
        return True
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8
        return True
    return False


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


_HANDLERS = {
    _Step.GREETING: ClientConnection._on_greeting,
    _Step.EHLO: ClientConnection._on_ehlo,
    _Step.HELO: ClientConnection._on_helo,
    _Step.STARTTLS: ClientConnection._on_starttls,
    _Step.AUTH: ClientConnection._on_auth,
    _Step.AUTH_USERNAME: ClientConnection._on_auth,
    _Step.AUTH_PASSWORD: ClientConnection._on_auth,
    _Step.RSET: ClientConnection._on_rset,
    _Step.MAIL: ClientConnection._on_mail,
    _Step.RCPT: ClientConnection._on_rcpt,
    _Step.DATA: ClientConnection._on_data,
    _Step.END_OF_DATA: ClientConnection._on_end_of_data,
    _Step.LONE_DOT: ClientConnection._on_lone_dot,
    _Step.QUIT: ClientConnection._on_quit,
}
