"""The sans-IO IMAP server core, driven with byte strings."""

from __future__ import annotations

import base64
import time
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.imap.parser import (
    AppendArgs,
    Command,
    FetchArgs,
    SearchArgs,
    literal_header,
)
from appliance.imap.protocol import (
    Idle,
    IdleDone,
    Limits,
    Login,
    ServerConnection,
    StartTLS,
    State,
)

HOST = "mail.example.test"
PASSWORD = "correct horse"
BODY = b"Subject: hello\r\n\r\nHi there\r\n"
MESSAGES = 3

EXTENSIONS = (
    "ENABLE IDLE NAMESPACE ID UNSELECT UIDPLUS MOVE CONDSTORE QRESYNC "
    "ESEARCH SEARCHRES LIST-EXTENDED LIST-STATUS SPECIAL-USE CREATE-SPECIAL-USE MULTIAPPEND "
    "APPENDLIMIT=52428800 STATUS=SIZE BINARY UTF8=ACCEPT"
)
# RFC 7888: LITERAL- before login, LITERAL+ after.
CAPS = f"SASL-IR LITERAL- {EXTENSIONS}"
CAPS_PLAIN_TEXT = f"IMAP4rev1 IMAP4rev2 STARTTLS LOGINDISABLED {CAPS}"
CAPS_TLS = f"IMAP4rev1 IMAP4rev2 AUTH=PLAIN {CAPS}"
CAPS_LOGGED_IN = f"IMAP4rev1 IMAP4rev2 SASL-IR LITERAL+ {EXTENSIONS}"
LOGGED_IN = f"[CAPABILITY {CAPS_LOGGED_IN}] Logged in".encode()
FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n"


def plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


class Client:
    """Feeds a ServerConnection like the session does, answers its events, records output."""

    def __init__(
        self,
        *,
        login_allowed: bool = True,
        tls_available: bool = True,
        tls_active: bool = False,
        limits: Limits | None = None,
        handshake: bool = True,
        failure: str = "auth",
    ):
        self.conn = ServerConnection(
            HOST,
            limits=limits or Limits(),
            tls_available=tls_available,
            tls_active=tls_active,
            login_allowed=login_allowed,
        )
        self.handshake = handshake
        self.failure = failure
        self.events: list = []
        self.pieces: list = []  # everything written, as data_to_send() gave it
        self.conn.greet()
        self.greeting = self.take()

    def take(self) -> bytes:
        pieces = self.conn.data_to_send()
        self.pieces += pieces
        return b"".join(pieces)

    def send(self, data: bytes, step: int | None = None) -> bytes:
        """Feed data (in pieces of step bytes if given); everything written back."""
        pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
        out = bytearray()
        for piece in pieces:
            self.conn.receive_data(piece)
            self.drain(out)
        out += self.take()
        return bytes(out)

    def drain(self, out: bytearray) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, Login):
                if event.password == PASSWORD:
                    conn.login_succeeded()
                else:
                    conn.login_failed(self.failure)
            elif isinstance(event, StartTLS):
                conn.respond_starttls()
                out += self.take()
                if self.handshake:
                    conn.tls_started()
            elif isinstance(event, Idle):
                conn.untagged("4 EXISTS")  # news while idling
            elif isinstance(event, IdleDone):
                conn.idle_done()
            else:
                self.answer(event)

    def answer(self, command: Command) -> None:
        conn = self.conn
        if command.name in ("SELECT", "EXAMINE"):
            if command.args.mailbox == "Missing":
                conn.respond("NO", "No such mailbox", "NONEXISTENT")
                return
            conn.untagged(f"{MESSAGES} EXISTS")
            conn.untagged("OK [UIDVALIDITY 1] UIDs valid")
            conn.selected()
        elif command.name == "FETCH":
            for number in command.args.sequence.members(MESSAGES):
                conn.untagged(
                    f"{number} FETCH (UID {number} BODY[] ",
                    literal_header(len(BODY)),
                    memoryview(BODY),
                    ")",
                )
            conn.respond("OK", "FETCH completed")
        else:
            conn.respond("OK", f"{command.name} completed")

    def of(self, kind) -> list:
        return [event for event in self.events if isinstance(event, kind)]

    def commands(self) -> list[str]:
        return [event.name for event in self.of(Command)]


def logged_in(**kwargs) -> Client:
    client = Client(**kwargs)
    reply = client.send(f'a LOGIN ann "{PASSWORD}"\r\n'.encode())
    assert reply.startswith(b"a OK [CAPABILITY IMAP4rev1 ") and reply.endswith(b"] Logged in\r\n")
    return client


SELECTED = b"* 3 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"


def selected(**kwargs) -> Client:
    client = logged_in(**kwargs)
    assert (
        client.send(b"s SELECT INBOX\r\n") == SELECTED + b"s OK [READ-WRITE] SELECT completed\r\n"
    )
    return client


def fetched(number: int) -> bytes:
    return b"* %d FETCH (UID %d BODY[] {%d}\r\n%s)\r\n" % (number, number, len(BODY), BODY)


# -- a whole session --------------------------------------------------------------------


def test_greeting_carries_capabilities_and_names_the_host():
    client = Client(login_allowed=False)
    assert client.greeting == (
        f"* OK [CAPABILITY {CAPS_PLAIN_TEXT}] mail.example.test IMAP4rev2 ready\r\n".encode()
    )


def test_whole_session_from_capability_to_logout():
    client = Client(login_allowed=False)
    assert client.send(b"a1 CAPABILITY\r\n") == (
        f"* CAPABILITY {CAPS_PLAIN_TEXT}\r\na1 OK CAPABILITY completed\r\n".encode()
    )
    assert client.send(b"a2 STARTTLS\r\n") == b"a2 OK Begin TLS negotiation now\r\n"
    assert client.conn.tls_active and client.conn.login_allowed
    assert client.send(b"a3 CAPABILITY\r\n") == (
        f"* CAPABILITY {CAPS_TLS}\r\na3 OK CAPABILITY completed\r\n".encode()
    )
    assert client.send(f'a4 LOGIN ann "{PASSWORD}"\r\n'.encode()) == b"a4 OK " + LOGGED_IN + b"\r\n"
    assert client.of(Login) == [Login("a4", "ann", PASSWORD)]
    assert client.conn.state is State.AUTHENTICATED
    assert client.send(b"a5 CAPABILITY\r\n") == (
        f"* CAPABILITY {CAPS_LOGGED_IN}\r\na5 OK CAPABILITY completed\r\n".encode()
    )
    assert (
        client.send(b"a6 SELECT inbox\r\n") == SELECTED + b"a6 OK [READ-WRITE] SELECT completed\r\n"
    )
    assert client.conn.state is State.SELECTED
    assert client.send(b"a7 FETCH 2:* BODY[]\r\n") == (
        fetched(2) + fetched(3) + b"a7 OK FETCH completed\r\n"
    )
    fetch = client.of(Command)[-1]
    assert fetch.tag == "a7" and isinstance(fetch.args, FetchArgs)
    assert client.send(b"a8 LOGOUT\r\n") == b"* BYE Logging out\r\na8 OK LOGOUT completed\r\n"
    assert client.conn.closed and client.conn.state is State.LOGOUT
    assert client.commands() == ["SELECT", "FETCH"]


def test_pipelined_commands_are_answered_in_order():
    client = logged_in()
    out = client.send(b"b1 SELECT INBOX\r\nb2 FETCH 1 BODY[]\r\nb3 NOOP\r\nb4 CLOSE\r\nb5 NOOP\r\n")
    assert out == (
        SELECTED
        + b"b1 OK [READ-WRITE] SELECT completed\r\n"
        + fetched(1)
        + b"b2 OK FETCH completed\r\nb3 OK NOOP completed\r\nb4 OK CLOSE completed\r\n"
        + b"b5 OK NOOP completed\r\n"
    )
    assert [event.tag for event in client.of(Command)] == ["b1", "b2", "b3", "b4", "b5"]
    assert client.conn.state is State.AUTHENTICATED


SESSION = (
    b"a1 CAPABILITY\r\na2 ID NIL\r\na3 AUTHENTICATE PLAIN\r\n"
    + plain("", "ann", PASSWORD)
    + b"\r\na4 ENABLE QRESYNC\r\na5 APPEND INBOX (\\Seen) {%d}\r\n" % len(BODY)
    + BODY
    + b" ~{3+}\r\na\0b\r\na6 SELECT INBOX (CONDSTORE)\r\na7 UID FETCH 1:* (FLAGS BODY.PEEK[])"
    + b" (CHANGEDSINCE 5 VANISHED)\r\na8 SEARCH CHARSET UTF-8 SUBJECT {6}\r\n"
    + "naïve".encode()
    + b"\r\na9 IDLE\r\ndone\r\na10 FOO\r\na11 LOGOUT\r\n"
)


def test_session_fed_one_byte_at_a_time_gives_identical_output():
    whole = Client()
    trickled = Client()
    expected = whole.send(SESSION)
    assert trickled.send(SESSION, step=1) == expected
    assert trickled.events == whole.events
    assert whole.commands() == ["ID", "APPEND", "SELECT", "FETCH", "SEARCH"]
    assert expected.count(b"+ Ready for literal data\r\n") == 2
    assert expected.endswith(
        b"a10 BAD Unknown command\r\n* BYE Logging out\r\na11 OK LOGOUT completed\r\n"
    )


# -- CAPABILITY -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"login_allowed": False}, CAPS_PLAIN_TEXT),
        ({"login_allowed": True}, f"IMAP4rev1 IMAP4rev2 STARTTLS AUTH=PLAIN {CAPS}"),
        ({"tls_active": True}, CAPS_TLS),
        (
            {"login_allowed": False, "tls_available": False},
            f"IMAP4rev1 IMAP4rev2 LOGINDISABLED {CAPS}",
        ),
    ],
)
def test_capabilities_depend_on_tls_and_login(options, expected):
    client = Client(**options)
    assert client.send(b"c CAPABILITY\r\n") == (
        f"* CAPABILITY {expected}\r\nc OK CAPABILITY completed\r\n".encode()
    )


def test_noop_before_login_is_answered_by_the_core():
    client = Client()
    assert client.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"
    assert client.events == []


# -- logins -----------------------------------------------------------------------------


def test_login_event_hides_the_password():
    assert PASSWORD not in repr(Login("a", "ann", PASSWORD))


@pytest.mark.parametrize(
    "command", [b"a LOGIN ann secret", b"a AUTHENTICATE PLAIN", b"a AUTHENTICATE PLAIN AGEAYg=="]
)
def test_logins_without_tls_are_refused_with_privacyrequired(command):
    client = Client(login_allowed=False)
    assert client.send(command + b"\r\n") == (
        b"a NO [PRIVACYREQUIRED] Login not permitted without TLS\r\n"
    )
    assert client.events == []


def test_authenticate_plain_with_initial_response():
    client = Client()
    assert client.send(b"a AUTHENTICATE PLAIN " + plain("", "ann", PASSWORD) + b"\r\n") == (
        b"a OK " + LOGGED_IN + b"\r\n"
    )
    assert client.of(Login) == [Login("a", "ann", PASSWORD)]


def test_authenticate_plain_with_continuation():
    client = Client()
    assert client.send(b"a authenticate plain\r\n") == b"+ \r\n"
    assert client.send(plain("ann", "ann", PASSWORD) + b"\r\n") == b"a OK " + LOGGED_IN + b"\r\n"
    assert client.conn.state is State.AUTHENTICATED


def test_authenticate_cancelled_with_star():
    client = Client()
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.send(b"*\r\n") == b"a BAD Authentication cancelled\r\n"
    assert client.send(b"b NOOP\r\n") == b"b OK NOOP completed\r\n"


@pytest.mark.parametrize(
    ("response", "reply"),
    [
        (b"not base64!", b"a BAD Invalid base64"),
        (b"=", b"a BAD Invalid base64"),
        (base64.b64encode(b"ann\0pw"), b"a BAD Malformed PLAIN response"),
        (base64.b64encode(b"\0\0pw"), b"a BAD Malformed PLAIN response"),
        (base64.b64encode(b"\0\xff\0pw"), b"a BAD Invalid UTF-8 in PLAIN response"),
        (plain("bob", "ann", PASSWORD), b"a NO [AUTHENTICATIONFAILED] Authentication failed"),
    ],
)
def test_bad_plain_responses_are_refused(response, reply):
    client = Client()
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.send(response + b"\r\n") == reply + b"\r\n"
    assert client.events == []


def test_unknown_mechanism_is_refused():
    client = Client()
    assert client.send(b"a AUTHENTICATE CRAM-MD5\r\n") == (
        b"a NO Unsupported authentication mechanism\r\n"
    )


def test_failed_login_says_authenticationfailed_and_a_fault_says_unavailable():
    assert Client().send(b"a LOGIN ann wrong\r\n") == (
        b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    )
    assert Client(failure="temp").send(b"a LOGIN ann wrong\r\n") == (
        b"a NO [UNAVAILABLE] Temporary failure, try again later\r\n"
    )


def test_too_many_failed_logins_close_the_connection():
    client = Client()
    failed = b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    assert client.send(b"a LOGIN ann x\r\n") == b"a " + failed
    assert client.send(b"b AUTHENTICATE PLAIN " + plain("", "ann", "y") + b"\r\n") == b"b " + failed
    assert client.send(b"c LOGIN ann z\r\nd LOGIN ann " + PASSWORD.encode() + b"\r\n") == (
        b"c " + failed + b"* BYE Too many failed logins\r\n"
    )
    assert client.conn.closed
    assert len(client.of(Login)) == 3


def test_temporary_failures_do_not_count_as_failed_logins():
    client = Client(failure="temp", limits=Limits(max_failed_logins=1))
    client.send(b"a LOGIN ann x\r\n")
    assert not client.conn.closed


def test_login_failed_rejects_an_unknown_reason():
    client = Client()
    client.conn.receive_data(b"a LOGIN ann x\r\n")
    client.conn.next_event()
    with pytest.raises(ValueError):
        client.conn.login_failed("nope")


# -- literals ---------------------------------------------------------------------------


def test_synchronizing_literals_get_a_continuation_each():
    client = Client()
    assert client.send(b"a LOGIN {3}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"ann {%d}\r\n" % len(PASSWORD)) == b"+ Ready for literal data\r\n"
    assert client.send(PASSWORD.encode() + b"\r\n") == b"a OK " + LOGGED_IN + b"\r\n"
    assert client.of(Login) == [Login("a", "ann", PASSWORD)]


def test_non_synchronizing_literals_need_no_continuation():
    client = Client()
    command = b"a LOGIN {3+}\r\nann {%d+}\r\n%s\r\n" % (len(PASSWORD), PASSWORD.encode())
    assert client.send(command) == b"a OK " + LOGGED_IN + b"\r\n"


def test_literal_octets_are_not_read_as_lines():
    client = Client()
    command = b'a LOGIN {9+}\r\nx\r\nb NOOP "%s"\r\n' % PASSWORD.encode()
    assert client.send(command).startswith(b"a OK [CAPABILITY ")
    assert client.of(Login) == [Login("a", "x\r\nb NOOP", PASSWORD)]


def test_empty_literal():
    client = logged_in()
    assert (
        client.send(b'a LIST {0}\r\n "*"\r\n')
        == b"+ Ready for literal data\r\na OK LIST completed\r\n"
    )


def test_too_big_literal_is_refused_and_the_connection_stays_in_step():
    client = Client(limits=Limits(max_literal_size=10))
    assert client.send(b"a LOGIN {11}\r\n") == b"a NO [TOOBIG] Literal too big\r\n"
    # The client sends nothing of the refused command: the next line is a new one.
    assert client.send(b"b NOOP\r\n") == b"b OK NOOP completed\r\n"
    assert client.send(b"c LOGIN {3}\r\nann {8}\r\n") == (
        b"+ Ready for literal data\r\nc NO [TOOBIG] Literal too big\r\n"
    )
    assert client.conn.buffered == 0
    assert client.send(b"d NOOP\r\n") == b"d OK NOOP completed\r\n"


def test_append_over_appendlimit_is_refused_before_the_upload():
    client = logged_in(limits=Limits(max_message_size=100))
    assert client.send(b"a APPEND INBOX {101}\r\n") == (
        b"a NO [TOOBIG] Message over APPENDLIMIT=100\r\n"
    )
    assert client.send(b"b APPEND INBOX {100}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"x" * 100 + b"\r\n") == b"b OK APPEND completed\r\n"


def test_multiappend_is_bounded_as_a_whole():
    client = logged_in(limits=Limits(max_message_size=100, max_append_size=150))
    assert client.send(b"a APPEND INBOX {100}\r\n" + b"x" * 100 + b" {60}\r\n") == (
        b"+ Ready for literal data\r\na NO [TOOBIG] Messages of this APPEND too big together\r\n"
    )
    assert client.conn.buffered == 0
    assert client.send(b"b NOOP\r\n") == b"b OK NOOP completed\r\n"


def test_literal_minus_before_login_and_literal_plus_after():
    client = Client()
    words = client.send(b"c CAPABILITY\r\n").split(b"\r\n")[0].split()
    assert b"LITERAL-" in words and b"LITERAL+" not in words
    client.send(f'a LOGIN ann "{PASSWORD}"\r\n'.encode())
    words = client.send(b"c CAPABILITY\r\n").split(b"\r\n")[0].split()
    assert b"LITERAL+" in words and b"LITERAL-" not in words


def test_non_synchronizing_literal_over_4096_octets_before_login_ends_the_connection():
    # RFC 7888 4 (LITERAL-): BAD [TOOBIG]; the octets, already on their way, are
    # never read, so the command hidden in them never runs.
    client = Client()
    octets = b'\r\nb LOGIN ann "%s"\r\n' % PASSWORD.encode()
    octets += b"x" * (4097 - len(octets))
    assert client.send(b"a LOGIN {4097+}\r\n" + octets + b" pw\r\nc NOOP\r\n") == (
        b"a BAD [TOOBIG] Non-synchronizing literal over 4096 octets\r\n* BYE Closing connection\r\n"
    )
    assert client.conn.closed and client.events == []
    assert client.send(b"d NOOP\r\n") == b""


def test_non_synchronizing_literal_of_4096_octets_before_login_is_taken():
    client = Client()
    user = b"u" * 4096
    assert client.send(b"a LOGIN {4096+}\r\n" + user + b" pw\r\n") == (
        b"a NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    )
    assert client.of(Login)[0].user == user.decode()


def test_literal_plus_after_login_takes_big_non_synchronizing_literals():
    client = logged_in()
    data = b"Subject: x\r\n\r\n" + b"b NOOP\r\n" * 2000
    reply = client.send(b"a APPEND INBOX {%d+}\r\n" % len(data) + data + b"\r\nc NOOP\r\n")
    assert reply == b"a OK APPEND completed\r\nc OK NOOP completed\r\n"  # no "+" asked for
    [append] = [event for event in client.of(Command) if event.name == "APPEND"]
    assert bytes(append.args.messages[0].data) == data
    assert client.commands() == ["APPEND", "NOOP"]


def test_non_synchronizing_literal_past_appendlimit_is_bad_toobig_and_never_read():
    client = logged_in(limits=Limits(max_message_size=100))
    reply = client.send(b"a APPEND INBOX {101+}\r\n" + b"b NOOP\r\n" * 20)
    assert reply == (b"a BAD [TOOBIG] Message over APPENDLIMIT=100\r\n* BYE Closing connection\r\n")
    assert client.conn.closed and client.commands() == []


def test_non_synchronizing_literal_past_a_limit_closes_the_connection():
    client = Client(limits=Limits(max_literal_size=10))
    assert client.send(b"a LOGIN {11+}\r\n") == (
        b"a BAD [TOOBIG] Literal too big\r\n* BYE Closing connection\r\n"
    )
    assert client.conn.closed


TEN_GB = 10 * 1024**3


def test_ten_gigabyte_literal_is_refused_at_once_and_the_connection_stays_usable():
    client = logged_in()
    assert client.send(b"a APPEND INBOX {%d}\r\n" % TEN_GB) == (
        b"a NO [TOOBIG] Message over APPENDLIMIT=52428800\r\n"
    )
    assert client.conn.buffered == 0
    assert client.send(b"b APPEND INBOX {5}\r\n") == b"+ Ready for literal data\r\n"
    assert client.send(b"hello\r\n") == b"b OK APPEND completed\r\n"
    assert bytes(client.of(Command)[-1].args.messages[0].data) == b"hello"
    assert client.send(b"c APPEND INBOX {%d+}\r\n" % TEN_GB + b"x" * 1000) == (
        b"c BAD [TOOBIG] Message over APPENDLIMIT=52428800\r\n* BYE Closing connection\r\n"
    )
    assert client.conn.buffered == 0


def test_ten_gigabyte_literal_before_login_is_refused_at_once():
    client = Client()
    assert client.send(b"a LOGIN {%d}\r\n" % TEN_GB) == b"a NO [TOOBIG] Literal too big\r\n"
    assert client.send(b"b NOOP\r\n") == b"b OK NOOP completed\r\n"
    assert client.send(b"c LOGIN {%d+}\r\n" % TEN_GB) == (
        b"c BAD [TOOBIG] Non-synchronizing literal over 4096 octets\r\n* BYE Closing connection\r\n"
    )


def test_literal_for_a_command_not_valid_now_is_refused_before_the_upload():
    client = Client()
    assert client.send(b"a APPEND INBOX {5000000}\r\n") == (
        b"a BAD Command not valid in this state\r\n"
    )
    assert client.send(b"b FROB {5}\r\n") == b"b BAD Unknown command\r\n"
    assert client.send(b"+bad LOGIN {5}\r\n") == b"* BAD Invalid tag\r\n"
    assert client.send(b"c LOGIN ~{5}\r\n") == b"c BAD literal8 is only for APPEND data\r\n"
    assert client.conn.buffered == 0


def test_append_with_literal8_hands_over_binary_data():
    client = logged_in()
    assert client.send(b'a APPEND Drafts (\\Draft) "01-Jan-2024 10:00:00 +0000" ~{4}\r\n') == (
        b"+ Ready for literal data\r\n"
    )
    assert client.send(b"\0\1\2\3\r\n") == b"a OK APPEND completed\r\n"
    (append,) = client.of(Command)
    assert isinstance(append.args, AppendArgs)
    (message,) = append.args.messages
    assert message.binary and message.data == b"\0\1\2\3" and message.flags == ("\\Draft",)


def test_append_data_is_one_view_of_the_gathered_command():
    client = logged_in()
    body = b"x" * 300_000
    client.send(b"a APPEND INBOX {%d}\r\n" % len(body))
    for start in range(0, len(body), 65536):
        client.send(body[start : start + 65536])
    client.send(b"\r\n")
    data = client.of(Command)[0].args.messages[0].data
    assert isinstance(data, memoryview) and data == body


def test_a_command_is_amid_literals_from_its_first_literal_to_its_end():
    client = logged_in()
    assert not client.conn.amid_literals
    client.send(b"a APPEND INBOX {5}\r\n")
    assert client.conn.amid_literals
    client.send(b"hello")  # the client may hold the CRLF back until this is acknowledged
    assert client.conn.amid_literals
    client.send(b"\r\n")
    assert not client.conn.amid_literals and client.of(Command)


def test_bare_lf_ends_lines_and_literal_announcements():
    client = Client()
    assert client.send(b'a LOGIN {3+}\nann "%s"\n' % PASSWORD.encode()) == (
        b"a OK " + LOGGED_IN + b"\r\n"
    )


# -- IDLE -------------------------------------------------------------------------------


def test_idle_pushes_updates_until_done():
    client = selected()
    assert client.send(b"i IDLE\r\n") == b"+ idling\r\n* 4 EXISTS\r\n"
    assert client.of(Idle) == [Idle("i")]
    assert client.send(b"DONE\r\n") == b"i OK IDLE terminated\r\n"
    assert client.of(IdleDone) == [IdleDone("i", True)]
    assert client.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_done_is_case_insensitive_and_may_be_pipelined():
    client = logged_in()
    assert client.send(b"i IDLE\r\ndone\r\nn NOOP\r\n") == (
        b"+ idling\r\n* 4 EXISTS\r\ni OK IDLE terminated\r\nn OK NOOP completed\r\n"
    )


def test_anything_but_done_ends_idle_with_bad():
    client = logged_in()
    client.send(b"i IDLE\r\n")
    assert client.send(b"n NOOP\r\n") == b"i BAD Expected DONE\r\n"
    assert client.of(IdleDone) == [IdleDone("i", False)]
    assert client.send(b"n NOOP\r\n") == b"n OK NOOP completed\r\n"


def test_session_may_push_untagged_data_while_idling():
    client = logged_in()
    client.send(b"i IDLE\r\n")
    client.conn.untagged("5 EXISTS")
    assert client.take() == b"* 5 EXISTS\r\n"


# -- states -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        b"SELECT INBOX",
        b'LIST "" *',
        b"APPEND INBOX {1+}\r\nx",
        b"IDLE",
        b"ENABLE QRESYNC",
        b"FETCH 1 FLAGS",
        b"UID SEARCH ALL",
        b"CLOSE",
        b"EXPUNGE",
    ],
)
def test_commands_need_a_login(command):
    client = Client()
    assert client.send(b"a " + command + b"\r\n") == b"a BAD Command not valid in this state\r\n"
    assert client.events == []


@pytest.mark.parametrize(
    "command",
    [b"LOGIN ann x", b"AUTHENTICATE PLAIN", b"STARTTLS", b"FETCH 1 FLAGS", b"UID STORE 1 FLAGS ()"],
)
def test_commands_not_valid_when_authenticated(command):
    client = logged_in()
    assert client.send(b"a " + command + b"\r\n") == b"a BAD Command not valid in this state\r\n"
    assert client.commands() == []


def test_enable_is_refused_once_a_mailbox_is_selected():
    client = selected()
    assert client.send(b"e ENABLE CONDSTORE\r\n") == b"e BAD Command not valid in this state\r\n"


def test_select_while_selected_closes_the_previous_mailbox_first():
    client = selected()
    assert client.send(b"t EXAMINE Sent\r\n") == (
        b"* OK [CLOSED] Previous mailbox is now closed\r\n"
        + SELECTED
        + b"t OK [READ-ONLY] EXAMINE completed\r\n"
    )
    assert client.conn.read_only


def test_failed_select_leaves_the_connection_authenticated():
    client = selected()
    assert client.send(b"t SELECT Missing\r\n") == (
        b"* OK [CLOSED] Previous mailbox is now closed\r\nt NO [NONEXISTENT] No such mailbox\r\n"
    )
    assert client.conn.state is State.AUTHENTICATED
    assert client.send(b"f FETCH 1 FLAGS\r\n") == b"f BAD Command not valid in this state\r\n"


def test_unselect_returns_to_authenticated():
    client = logged_in()
    client.send(b"x EXAMINE INBOX\r\n")
    assert client.conn.read_only
    assert client.send(b"u UNSELECT\r\n") == b"u OK UNSELECT completed\r\n"
    assert client.conn.state is State.AUTHENTICATED
    assert not client.conn.read_only


@pytest.mark.parametrize(
    "name",
    [
        b"CAPABILITY",
        b"NOOP",
        b"LOGOUT",
        b"ID",
        b"STARTTLS",
        b"AUTHENTICATE",
        b"LOGIN",
        b"ENABLE",
        b"SELECT",
        b"EXAMINE",
        b"CREATE",
        b"DELETE",
        b"RENAME",
        b"SUBSCRIBE",
        b"UNSUBSCRIBE",
        b"LIST",
        b"LSUB",
        b"NAMESPACE",
        b"STATUS",
        b"APPEND",
        b"IDLE",
        b"CHECK",
        b"CLOSE",
        b"UNSELECT",
        b"EXPUNGE",
        b"SEARCH",
        b"FETCH",
        b"STORE",
        b"COPY",
        b"MOVE",
    ],
)
def test_every_command_has_its_states(name):
    for client in (Client(), logged_in(), selected()):
        assert client.send(b"z " + name + b"\r\n").startswith((b"z ", b"* ", b"+ "))


def test_id_is_valid_in_every_state():
    client = Client()
    assert client.send(b'i ID ("name" "test")\r\n') == b"i OK ID completed\r\n"
    assert client.commands() == ["ID"]


# -- ENABLE and what it changes ---------------------------------------------------------


def test_enable_lists_only_what_it_turned_on():
    client = logged_in()
    assert client.send(b"e ENABLE QRESYNC X-UNKNOWN\r\n") == (
        b"* ENABLED QRESYNC\r\ne OK ENABLE completed\r\n"
    )
    assert client.conn.enabled == {"QRESYNC", "CONDSTORE"}  # RFC 7162 3.2.3
    assert client.send(b"e ENABLE QRESYNC imap4rev2\r\n") == (
        b"* ENABLED IMAP4rev2\r\ne OK ENABLE completed\r\n"
    )


def test_utf8_accept_switches_mailbox_names_from_modified_utf7():
    client = logged_in()
    client.send(b"a SUBSCRIBE &ZeVnLIqe-\r\n")
    assert not client.conn.utf8
    client.send(b"e ENABLE UTF8=ACCEPT\r\n")
    assert client.conn.utf8
    client.send('b SUBSCRIBE "日本語"\r\n'.encode())
    assert [command.args.mailbox for command in client.of(Command)] == ["日本語", "日本語"]


def test_qresync_parameters_need_enable_qresync():
    client = logged_in()
    assert client.send(b"s SELECT INBOX (QRESYNC (1 2))\r\n") == (
        b"s BAD QRESYNC parameter needs ENABLE QRESYNC\r\n"
    )
    client.send(b"e ENABLE QRESYNC\r\n")
    assert client.send(b"s SELECT INBOX (QRESYNC (1 2))\r\n").endswith(
        b"s OK [READ-WRITE] SELECT completed\r\n"
    )
    assert client.commands() == ["SELECT"]


def test_vanished_needs_enable_qresync():
    client = selected()
    assert client.send(b"f UID FETCH 1:* FLAGS (CHANGEDSINCE 1 VANISHED)\r\n") == (
        b"f BAD VANISHED needs ENABLE QRESYNC\r\n"
    )


@pytest.mark.parametrize(
    "command",
    [
        b"FETCH 1 (FLAGS MODSEQ)",
        b"FETCH 1 FLAGS (CHANGEDSINCE 4)",
        b"STORE 1 (UNCHANGEDSINCE 4) +FLAGS (\\Seen)",
        b"SEARCH OR SEEN NOT MODSEQ 5",
        b"STATUS Sent (HIGHESTMODSEQ)",
    ],
)
def test_condstore_enabling_commands_enable_condstore(command):
    client = selected()
    client.send(b"f FETCH 1 FLAGS\r\n")
    assert "CONDSTORE" not in client.conn.enabled
    client.send(b"c " + command + b"\r\n")
    assert "CONDSTORE" in client.conn.enabled


# -- STARTTLS ---------------------------------------------------------------------------


def test_starttls_discards_input_pipelined_before_the_handshake():
    client = Client(login_allowed=False, handshake=False)
    smuggled = b"a STARTTLS\r\nb LOGIN ann " + PASSWORD.encode() + b"\r\n"
    assert client.send(smuggled) == b"a OK Begin TLS negotiation now\r\n"
    assert client.conn.buffered == 0
    assert client.send(b"c CAPABILITY\r\n") == b""  # nothing is read until the handshake is done
    client.conn.tls_started()
    assert client.send(b"d NOOP\r\n") == b"d OK NOOP completed\r\n"
    assert client.of(StartTLS) == [StartTLS("a")]
    assert client.of(Login) == []


def test_starttls_when_active_or_unavailable_is_refused():
    assert Client(tls_active=True).send(b"a STARTTLS\r\n") == b"a BAD TLS already active\r\n"
    assert Client(tls_available=False).send(b"a STARTTLS\r\n") == b"a NO TLS not available\r\n"


def test_tls_started_without_starttls_is_a_programming_error():
    with pytest.raises(RuntimeError):
        Client().conn.tls_started()


# -- errors and limits ------------------------------------------------------------------


def test_syntax_errors_are_tagged_bad_and_a_bad_tag_untagged_bad():
    client = logged_in()
    assert client.send(b"a SELECT\r\n") == b"a BAD Expected SP\r\n"
    assert client.send(b"a+ NOOP\r\n") == b"* BAD Invalid tag\r\n"
    assert client.send(b"\r\n") == b"* BAD Invalid tag\r\n"
    assert client.commands() == []


def test_unsupported_charset_is_no_badcharset():
    client = selected()
    assert client.send(b"s SEARCH CHARSET KOI8-R ALL\r\n") == (
        b"s NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset KOI8-R\r\n"
    )


def test_hundred_thousand_nested_parentheses_are_bad_without_recursion():
    search = b"s SEARCH " + b"(" * 100_000 + b"ALL" + b")" * 100_000 + b"\r\n"
    client = selected(limits=Limits(max_line=512 * 1024))  # the parser sees all of it
    started = time.perf_counter()
    assert client.send(search + b"t NOOP\r\n") == (
        b"s BAD Search keys nested too deeply\r\nt OK NOOP completed\r\n"
    )
    assert time.perf_counter() - started < 2
    client = selected()  # with the default line limit it is refused unread
    assert client.send(search + b"t NOOP\r\n") == (
        b"s BAD Command line too long\r\nt OK NOOP completed\r\n"
    )


def million_ranges() -> bytes:
    return b",".join(b"%d" % number for number in range(1, 2_000_000, 2))


def test_million_range_sequence_set_is_bad_without_building_it():
    line = b"s UID FETCH " + million_ranges() + b" FLAGS\r\n"
    data = line + b"t NOOP\r\n"
    client = selected(limits=Limits(max_line=16 * 1024 * 1024, max_discard=16 * 1024 * 1024))
    started = time.perf_counter()
    tracemalloc.start()
    try:
        reply = client.send(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert reply == b"s BAD Too many ranges in a sequence set\r\nt OK NOOP completed\r\n"
    assert time.perf_counter() - started < 5
    # A few copies of the line (buffer, line, command); the million ranges
    # themselves would take some twenty times the line.
    assert peak < 5 * len(line)
    client = selected()  # default limits: refused unread, and too long to wait for
    assert client.send(line) == (b"s BAD Command line too long\r\n* BYE Closing connection\r\n")


def test_search_nesting_limit_comes_from_limits():
    client = selected(limits=Limits(max_search_depth=3))
    assert (
        client.send(b"s SEARCH NOT NOT NOT ALL\r\n") == b"s BAD Search keys nested too deeply\r\n"
    )
    client.send(b"s SEARCH NOT NOT ALL\r\n")
    assert isinstance(client.of(Command)[-1].args, SearchArgs)


def test_too_many_errors_close_the_connection():
    client = Client(limits=Limits(max_errors=2))
    assert client.send(b"a FOO\r\nb FOO\r\nc FOO\r\nd NOOP\r\n") == (
        b"a BAD Unknown command\r\nb BAD Unknown command\r\nc BAD Unknown command\r\n"
        b"* BYE Too many errors\r\n"
    )
    assert client.conn.closed


def test_noop_flood_before_login_is_cut_off_at_the_limit():
    client = Client()
    reply = client.send(b"".join(b"n%d NOOP\r\n" % i for i in range(10_000)))
    limit = Limits().max_commands_before_login
    assert reply == (
        b"".join(b"n%d OK NOOP completed\r\n" % i for i in range(limit))
        + b"* BYE Too many commands before login\r\n"
    )
    assert client.conn.closed and client.conn.buffered == 0


def test_logging_in_lifts_the_limit_on_commands():
    client = logged_in(limits=Limits(max_commands_before_login=2))
    reply = client.send(b"n NOOP\r\n" * 50)
    assert reply == b"n OK NOOP completed\r\n" * 50


def test_too_many_commands_before_login_close_the_connection():
    client = Client(limits=Limits(max_commands_before_login=2))
    assert client.send(b"a NOOP\r\nb NOOP\r\nc NOOP\r\n") == (
        b"a OK NOOP completed\r\nb OK NOOP completed\r\n* BYE Too many commands before login\r\n"
    )
    assert client.conn.closed


def test_over_long_line_is_bad_and_dropped_to_its_end():
    client = Client(limits=Limits(max_line=32))
    # What follows the 32nd octet looks like a command; it is dropped with the line.
    line = b"a NOOP " + b"x" * 25 + b"b LOGOUT\r\n"
    assert client.send(line + b"c NOOP\r\n") == (
        b"a BAD Command line too long\r\nc OK NOOP completed\r\n"
    )
    assert not client.conn.closed and client.conn.buffered == 0


def test_over_long_line_fed_one_octet_at_a_time_gives_the_same_answer():
    client = Client(limits=Limits(max_line=32))
    line = b"a NOOP " + b"x" * 25 + b"b LOGOUT\r\n"
    assert client.send(line + b"c NOOP\r\n", step=1) == (
        b"a BAD Command line too long\r\nc OK NOOP completed\r\n"
    )


def test_over_long_line_without_a_tag_is_untagged_bad():
    client = Client(limits=Limits(max_line=32))
    assert client.send(b"x" * 40 + b"\r\nc NOOP\r\n") == (
        b"* BAD Command line too long\r\nc OK NOOP completed\r\n"
    )


def test_over_long_line_announcing_a_synchronizing_literal_ends_the_command():
    client = Client(limits=Limits(max_line=32))
    # No "+": the tagged BAD tells the client to send nothing more of it (RFC 9051 7.5).
    assert client.send(b"a LOGIN " + b"x" * 40 + b" {5}\r\n") == (
        b"a BAD Command line too long\r\n"
    )
    assert client.send(b"b NOOP\r\n") == b"b OK NOOP completed\r\n"


def test_literals_of_a_dropped_command_are_dropped_and_never_run():
    client = logged_in(limits=Limits(max_line=40))
    octets = b"c NOOP\r\n"
    command = b"a LOGIN " + b"x" * 40 + b" {%d+}\r\n" % len(octets) + octets + b" more\r\n"
    assert client.send(command + b"d NOOP\r\n") == (
        b"a BAD Command line too long\r\nd OK NOOP completed\r\n"
    )
    assert client.commands() == ["NOOP"] and client.of(Command)[0].tag == "d"


def test_non_synchronizing_literal_past_the_limits_in_a_dropped_command_ends_the_connection():
    client = Client(limits=Limits(max_line=40))
    assert client.send(b"a LOGIN " + b"x" * 40 + b" {4097+}\r\n" + b"b NOOP\r\n") == (
        b"a BAD Command line too long\r\n* BYE Closing connection\r\n"
    )
    assert client.conn.closed


def test_dropped_line_ending_like_an_unreadable_announcement_ends_the_connection():
    client = logged_in(limits=Limits(max_line=40))
    announcement = b"{" + b"0" * 40 + b"5+}"  # longer than what the core keeps of the line
    assert client.send(b"a LOGIN " + b"x" * 40 + announcement + b"\r\nb NOOP\r\n") == (
        b"a BAD Command line too long\r\n* BYE Closing connection\r\n"
    )
    assert client.conn.closed


def test_dropping_is_bounded_by_max_discard():
    client = logged_in(limits=Limits(max_line=40, max_discard=1000))
    assert client.send(b"a NOOP " + b"x" * 990) == b""
    assert client.send(b"x" * 20) == (
        b"a BAD Command line too long\r\n* BYE Closing connection\r\n"
    )
    client = logged_in(limits=Limits(max_line=40, max_discard=1000))
    assert client.send(b"a LOGIN " + b"x" * 40 + b" {990+}\r\n") == (
        b"a BAD Command line too long\r\n* BYE Closing connection\r\n"
    )


def test_line_limit_counts_every_line_of_a_command_but_not_its_literals():
    limits = Limits(max_line=30)
    assert Client(limits=limits).send(
        b"a LOGIN {3+}\r\nann {13+}\r\n" + PASSWORD.encode() + b"\r\n"
    ) == (b"a OK " + LOGGED_IN + b"\r\n")
    client = Client(limits=limits)
    assert client.send(b"a LOGIN {3+}\r\nann {4+}\r\npass " + b"x" * 12 + b"\r\nb NOOP\r\n") == (
        b"a BAD Command line too long\r\nb OK NOOP completed\r\n"
    )
    assert client.events == []


def test_over_long_sasl_response_is_bad():
    client = Client(limits=Limits(max_line=64))
    assert client.send(b"a AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert client.send(b"A" * 100 + b"\r\nb NOOP\r\n") == (
        b"a BAD Line too long\r\nb OK NOOP completed\r\n"
    )
    assert client.events == []


def test_endless_sasl_response_ends_the_connection():
    client = Client(limits=Limits(max_line=64, max_discard=200))
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    assert client.send(b"A" * 300) == b"a BAD Line too long\r\n* BYE Closing connection\r\n"
    assert client.conn.closed


def test_a_sasl_response_does_not_shorten_the_next_command_line():
    client = Client(limits=Limits(max_line=90))
    client.send(b"a AUTHENTICATE PLAIN\r\n")
    response = plain("", "ann", "w" * 50)
    assert len(response) > 60
    assert client.send(response + b"\r\n") == b"a " + FAILED
    login = b'b LOGIN ann "%s"\r\n' % (b"v" * 60)
    assert client.send(login) == b"b " + FAILED


def test_over_long_line_during_idle_ends_it_with_bad():
    client = selected(limits=Limits(max_line=64))
    assert client.send(b"i IDLE\r\n") == b"+ idling\r\n* 4 EXISTS\r\n"
    assert client.send(b"x" * 100 + b"\r\n") == b"i BAD Expected DONE\r\n"
    assert client.of(IdleDone) == [IdleDone("i", False)]


def test_ten_megabyte_line_without_crlf_keeps_the_buffer_bounded():
    client = Client()
    chunk = b"A" * 65536
    for _ in range(160):
        client.conn.receive_data(chunk)
        assert client.conn.buffered <= Limits().max_line
    assert client.take() == b"* BAD Command line too long\r\n* BYE Closing connection\r\n"
    assert client.conn.closed


def test_response_text_cannot_break_the_line():
    client = selected()
    client.conn.receive_data(b"c COPY 1 x\r\n")
    client.conn.next_event()
    client.conn.respond("NO", "no\r\nc OK forged", "TRY\nCREATE")
    assert client.take() == b"c NO [TRY CREATE] no  c OK forged\r\n"


# -- the session's side -----------------------------------------------------------------


def test_big_bodies_pass_through_uncopied():
    client = selected()
    client.conn.receive_data(b"f FETCH 1 BODY[]\r\n")
    client.conn.next_event()
    big = memoryview(b"y" * 100_000)
    client.conn.untagged("1 FETCH (BODY[] ", literal_header(len(big)), big, ")")
    client.conn.respond("OK", "FETCH completed")
    pieces = client.conn.data_to_send()
    assert pieces[1] is big
    assert b"".join(pieces) == (
        b"* 1 FETCH (BODY[] {100000}\r\n" + bytes(big) + b")\r\nf OK FETCH completed\r\n"
    )


def test_answers_must_match_the_waiting_event():
    client = selected()
    with pytest.raises(RuntimeError):
        client.conn.respond("OK", "nothing asked")
    client.conn.receive_data(b"s SELECT Sent\r\n")
    client.conn.next_event()
    with pytest.raises(RuntimeError):
        client.conn.respond("OK", "use selected()")
    with pytest.raises(ValueError):
        client.conn.respond("MAYBE", "no such status")
    with pytest.raises(RuntimeError):
        client.conn.login_succeeded()
    client.conn.selected()
    client.conn.receive_data(b"n NOOP\r\n")
    client.conn.next_event()
    with pytest.raises(RuntimeError):
        client.conn.selected()


def test_input_waits_while_an_event_is_unanswered():
    client = selected()
    client.conn.receive_data(b"a NOOP\r\nb NOOP\r\n")
    first = client.conn.next_event()
    assert client.conn.next_event() is None
    assert first.tag == "a"
    client.conn.respond("OK", "done")
    assert client.conn.next_event().tag == "b"


@pytest.mark.parametrize(
    ("method", "text"),
    [
        ("timeout", b"* BYE Autologout; idle for too long\r\n"),
        ("shutdown", b"* BYE [UNAVAILABLE] Server shutting down\r\n"),
        ("refuse_busy", b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"),
    ],
)
def test_the_server_says_bye_when_it_closes(method, text):
    client = logged_in()
    getattr(client.conn, method)()
    assert client.take() == text
    assert client.conn.closed
    getattr(client.conn, method)()
    assert client.take() == b""


def test_answers_after_the_connection_closed_are_dropped():
    client = Client()
    client.conn.receive_data(b"a LOGIN ann x\r\n")
    client.conn.next_event()
    client.conn.shutdown()
    client.take()
    client.conn.login_succeeded()
    assert client.take() == b""


def test_end_of_input_closes():
    client = logged_in()
    client.conn.receive_data(b"")
    assert client.conn.closed


# -- hostile input ----------------------------------------------------------------------


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_arbitrary_input_never_raises_and_stays_bounded(chunks, login):
    client = logged_in() if login else Client()
    for chunk in chunks:
        client.send(chunk)
        assert client.conn.buffered <= Limits().max_line + Limits().max_message_size
