"""The sans-IO POP3 server core and its byte-stuffer, driven with byte strings."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.pop3.protocol import (
    DotStuffer,
    Limits,
    Login,
    MaildropMessage,
    Retrieve,
    ServerConnection,
    StartTLS,
    State,
    Update,
)

HOST = "mail.example.test"
PASSWORD = "correct horse"
BODIES = [
    b"From: ann@example.test\r\nSubject: one\r\n\r\nHello\r\n.hidden\r\n",
    b"Subject: two\r\n\r\nline 1\r\nline 2\r\nline 3\r\n",
    b"Subject: three\r\n\r\n.\r\nno final line end",
]
MAILDROP = [MaildropMessage(len(body), f"uid-{n}") for n, body in enumerate(BODIES, 1)]
SIZES = [len(body) for body in BODIES]
TOTAL = sum(SIZES)
LOGGED_IN = f"+OK Logged in, 3 messages ({TOTAL} octets)\r\n".encode()
LOGIN = f"USER ann\r\nPASS {PASSWORD}\r\n".encode()

CAPA_HEAD = b"+OK Capability list follows\r\nTOP\r\n"
CAPA_LOGIN = b"USER\r\nSASL PLAIN\r\n"
CAPA_ALWAYS = (
    b"RESP-CODES\r\nAUTH-RESP-CODE\r\nPIPELINING\r\nEXPIRE NEVER\r\nUIDL\r\n"
    b"IMPLEMENTATION appliance\r\n"
)


def plain(authzid: str, user: str, password: str) -> bytes:
    return base64.b64encode(f"{authzid}\0{user}\0{password}".encode())


def stuff(pieces, lines=None) -> bytes:
    """Feed pieces through a DotStuffer as the session does; the bytes it would write."""
    stuffer = DotStuffer(lines)
    out = bytearray()
    for piece in pieces:
        out += b"".join(stuffer.feed(piece))
        if stuffer.done:
            break
    out += b"".join(stuffer.finish())
    return bytes(out)


def unstuff(response: bytes) -> bytes:
    """What a client reads from a multi-line response body and its terminating line."""
    lines = response.split(b"\r\n")
    assert lines[-2:] == [b".", b""]
    body = lines[:-2]
    assert b"." not in body  # no terminator before the end
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\r\n" for line in body)


class Client:
    """Feeds a ServerConnection like the session does and records what comes out."""

    def __init__(
        self,
        *,
        login_allowed: bool = True,
        tls_available: bool = True,
        tls_active: bool = False,
        limits: Limits | None = None,
        failure: str = "auth",
        update_ok: bool = True,
        handshake: bool = True,
    ):
        self.conn = ServerConnection(
            HOST,
            limits=limits or Limits(),
            tls_available=tls_available,
            tls_active=tls_active,
            login_allowed=login_allowed,
        )
        self.failure = failure
        self.update_ok = update_ok
        self.handshake = handshake
        self.events: list = []
        self.conn.greet()
        self.greeting = self.conn.data_to_send()

    def send(self, data: bytes, step: int | None = None) -> bytes:
        """Feed data (in pieces of step bytes if given); everything written back."""
        pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
        out = bytearray()
        for piece in pieces:
            self.conn.receive_data(piece)
            self.drain(out)
        out += self.conn.data_to_send()
        return bytes(out)

    def drain(self, out: bytearray) -> None:
        conn = self.conn
        while (event := conn.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, Login):
                if event.password == PASSWORD:
                    conn.login_succeeded(MAILDROP)
                else:
                    conn.login_failed(self.failure)
            elif isinstance(event, Retrieve):
                conn.retrieve_start()
                out += conn.data_to_send()  # the +OK line goes before the message
                body = memoryview(BODIES[event.index])
                out += stuff([body[i : i + 7] for i in range(0, len(body), 7)], event.lines)
                conn.retrieve_done()
            elif isinstance(event, Update):
                conn.respond_update(self.update_ok)
            else:
                conn.respond_starttls()
                out += conn.data_to_send()
                if self.handshake:
                    conn.tls_started()

    def of(self, kind) -> list:
        return [event for event in self.events if isinstance(event, kind)]


def logged_in(**kwargs) -> Client:
    client = Client(**kwargs)
    assert client.send(LOGIN) == b"+OK Send PASS\r\n" + LOGGED_IN
    return client


# -- a whole session --------------------------------------------------------------------


def test_greeting_names_the_host_and_carries_no_apop_timestamp():
    assert Client().greeting == b"+OK mail.example.test POP3 ready\r\n"


def test_whole_session_lists_retrieves_deletes_and_updates_at_quit():
    client = Client(login_allowed=False)
    assert client.send(b"CAPA\r\n") == CAPA_HEAD + CAPA_ALWAYS + b"STLS\r\n.\r\n"
    assert client.send(b"STLS\r\n") == b"+OK Begin TLS negotiation\r\n"
    assert client.conn.tls_active and client.conn.login_allowed
    assert client.send(b"CAPA\r\n") == CAPA_HEAD + CAPA_LOGIN + CAPA_ALWAYS + b".\r\n"
    assert client.send(b"USER ann\r\n") == b"+OK Send PASS\r\n"
    assert client.send(f"PASS {PASSWORD}\r\n".encode()) == LOGGED_IN
    assert client.of(Login) == [Login("ann", PASSWORD)]
    assert client.conn.state is State.TRANSACTION
    assert client.send(b"STAT\r\n") == f"+OK 3 {TOTAL}\r\n".encode()
    assert client.send(b"LIST\r\n") == (
        f"+OK 3 messages ({TOTAL} octets)\r\n"
        f"1 {SIZES[0]}\r\n2 {SIZES[1]}\r\n3 {SIZES[2]}\r\n.\r\n".encode()
    )
    assert client.send(b"LIST 2\r\n") == f"+OK 2 {SIZES[1]}\r\n".encode()
    assert client.send(b"UIDL\r\n") == b"+OK\r\n1 uid-1\r\n2 uid-2\r\n3 uid-3\r\n.\r\n"
    assert client.send(b"UIDL 3\r\n") == b"+OK 3 uid-3\r\n"
    assert client.send(b"RETR 1\r\n") == (
        f"+OK {SIZES[0]} octets\r\n".encode()
        + b"From: ann@example.test\r\nSubject: one\r\n\r\nHello\r\n..hidden\r\n.\r\n"
    )
    assert client.of(Retrieve) == [Retrieve(1, 0, None)]
    assert client.send(b"DELE 1\r\n") == b"+OK message 1 deleted\r\n"
    assert client.send(b"DELE 3\r\n") == b"+OK message 3 deleted\r\n"
    assert client.send(b"STAT\r\n") == f"+OK 1 {SIZES[1]}\r\n".encode()
    assert (
        client.send(b"LIST\r\n")
        == f"+OK 1 messages ({SIZES[1]} octets)\r\n2 {SIZES[1]}\r\n.\r\n".encode()
    )
    assert client.send(b"UIDL\r\n") == b"+OK\r\n2 uid-2\r\n.\r\n"
    assert client.send(b"NOOP\r\n") == b"+OK\r\n"
    assert client.send(b"QUIT\r\n") == b"+OK Bye, 2 messages deleted\r\n"
    assert client.of(Update) == [Update((0, 2))]
    assert client.conn.closed
    assert client.conn.state is State.UPDATE


def test_rset_unmarks_every_deleted_message():
    client = logged_in()
    client.send(b"DELE 2\r\nDELE 1\r\n")
    assert client.send(b"RSET\r\n") == f"+OK maildrop has 3 messages ({TOTAL} octets)\r\n".encode()
    assert client.send(b"RETR 2\r\n").startswith(f"+OK {SIZES[1]} octets\r\n".encode())
    assert client.send(b"QUIT\r\n") == b"+OK Bye, 0 messages deleted\r\n"
    assert client.of(Update) == [Update(())]


def test_top_gives_headers_and_the_asked_number_of_body_lines():
    client = logged_in()
    assert client.send(b"TOP 2 0\r\n") == b"+OK\r\nSubject: two\r\n\r\n.\r\n"
    assert client.send(b"TOP 2 2\r\n") == b"+OK\r\nSubject: two\r\n\r\nline 1\r\nline 2\r\n.\r\n"
    assert client.of(Retrieve) == [Retrieve(2, 1, 0), Retrieve(2, 1, 2)]


def test_retr_of_a_message_without_final_line_end_adds_one_before_the_terminator():
    client = logged_in()
    assert client.send(b"RETR 3\r\n") == (
        f"+OK {SIZES[2]} octets\r\n".encode()
        + b"Subject: three\r\n\r\n..\r\nno final line end\r\n.\r\n"
    )


def test_commands_are_case_insensitive():
    client = Client()
    assert client.send(f"user ann\r\npAsS {PASSWORD}\r\n".encode()) == (
        b"+OK Send PASS\r\n" + LOGGED_IN
    )
    assert client.send(b"stat\r\n") == f"+OK 3 {TOTAL}\r\n".encode()


def test_pass_keeps_spaces_in_the_password():
    client = Client()
    client.send(b"USER ann\r\nPASS  two  spaces \r\n")
    assert client.of(Login) == [Login("ann", " two  spaces ")]


def test_quit_before_login_says_bye_without_an_update():
    client = Client()
    assert client.send(b"QUIT\r\n") == b"+OK Bye\r\n"
    assert client.conn.closed
    assert client.events == []


def test_failed_update_answers_sys_temp_and_closes():
    client = logged_in(update_ok=False)
    client.send(b"DELE 1\r\n")
    assert client.send(b"QUIT\r\n") == b"-ERR [SYS/TEMP] Some deleted messages not removed\r\n"
    assert client.conn.closed


def test_dropped_connection_emits_no_update_and_deletes_nothing():
    client = logged_in()
    client.send(b"DELE 1\r\nDELE 2\r\n")
    assert client.send(b"") == b""
    assert client.conn.closed
    assert client.of(Update) == []


# -- CAPA -------------------------------------------------------------------------------


def test_capa_before_tls_offers_stls_and_no_login():
    client = Client(login_allowed=False)
    assert client.send(b"CAPA\r\n") == CAPA_HEAD + CAPA_ALWAYS + b"STLS\r\n.\r\n"


def test_capa_on_a_loopback_connection_offers_login_and_stls():
    client = Client(login_allowed=True)
    assert client.send(b"CAPA\r\n") == CAPA_HEAD + CAPA_LOGIN + CAPA_ALWAYS + b"STLS\r\n.\r\n"


def test_capa_over_tls_offers_login_and_not_stls():
    client = Client(tls_active=True)
    assert client.send(b"CAPA\r\n") == CAPA_HEAD + CAPA_LOGIN + CAPA_ALWAYS + b".\r\n"


def test_capa_without_tls_configured_offers_no_stls():
    client = Client(login_allowed=False, tls_available=False)
    assert client.send(b"CAPA\r\n") == CAPA_HEAD + CAPA_ALWAYS + b".\r\n"


def test_capa_after_login_announces_what_it_did_before():
    client = Client(tls_active=True)
    before = client.send(b"CAPA\r\n")
    client.send(LOGIN)
    assert client.send(b"CAPA\r\n") == before


# -- logins -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [b"USER ann", f"PASS {PASSWORD}".encode(), b"AUTH PLAIN", b"AUTH PLAIN AGFuAHg="]
)
def test_login_commands_are_refused_without_tls(command):
    client = Client(login_allowed=False)
    assert client.send(command + b"\r\n") == (
        b"-ERR Command not permitted without TLS (use STLS)\r\n"
    )
    assert client.events == []


def test_auth_plain_with_initial_response_logs_in():
    client = Client()
    assert client.send(b"AUTH PLAIN " + plain("", "ann", PASSWORD) + b"\r\n") == LOGGED_IN
    assert client.of(Login) == [Login("ann", PASSWORD)]


def test_auth_plain_with_continuation_logs_in():
    client = Client()
    assert client.send(b"AUTH plain\r\n") == b"+ \r\n"
    assert client.send(plain("", "ann", PASSWORD) + b"\r\n") == LOGGED_IN


def test_auth_plain_continuation_may_be_pipelined():
    client = Client()
    assert client.send(b"AUTH PLAIN\r\n" + plain("", "ann", PASSWORD) + b"\r\nSTAT\r\n") == (
        b"+ \r\n" + LOGGED_IN + f"+OK 3 {TOTAL}\r\n".encode()
    )


def test_auth_plain_authzid_equal_to_user_is_accepted():
    client = Client()
    assert client.send(b"AUTH PLAIN " + plain("ann", "ann", PASSWORD) + b"\r\n") == LOGGED_IN


def test_auth_plain_authzid_of_someone_else_fails_as_authentication():
    client = Client()
    assert client.send(b"AUTH PLAIN " + plain("bob", "ann", PASSWORD) + b"\r\n") == (
        b"-ERR [AUTH] Authentication failed\r\n"
    )
    assert client.events == []


def test_auth_cancelled_with_star():
    client = Client()
    client.send(b"AUTH PLAIN\r\n")
    assert client.send(b"*\r\n") == b"-ERR Authentication cancelled\r\n"
    assert client.send(b"NOOP\r\n") == b"-ERR Command not valid in this state\r\n"


@pytest.mark.parametrize("response", [b"not base64!", b"YW5", b"YW5uAHg", b"="])
def test_auth_continuation_with_bad_base64_is_refused(response):
    client = Client()
    client.send(b"AUTH PLAIN\r\n")
    assert client.send(response + b"\r\n") == b"-ERR Invalid base64\r\n"
    assert client.events == []


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        (b"", b"-ERR Malformed PLAIN response"),
        (b"ann", b"-ERR Malformed PLAIN response"),
        (b"\0ann", b"-ERR Malformed PLAIN response"),
        (b"\0ann\0", b"-ERR Malformed PLAIN response"),
        (b"\0\0pw", b"-ERR Malformed PLAIN response"),
        (b"a\0b\0c\0d", b"-ERR Malformed PLAIN response"),
        (b"\0\xff\0pw", b"-ERR Invalid UTF-8 in PLAIN response"),
    ],
)
def test_auth_plain_malformed_message_is_refused(message, reply):
    client = Client()
    encoded = base64.b64encode(message) if message else b"="  # RFC 5034: "=" is empty
    assert client.send(b"AUTH PLAIN " + encoded + b"\r\n") == reply + b"\r\n"
    assert client.events == []


def test_auth_with_an_unknown_mechanism_is_refused():
    client = Client()
    assert client.send(b"AUTH CRAM-MD5\r\n") == b"-ERR Unsupported authentication mechanism\r\n"


def test_over_long_sasl_response_ends_the_exchange():
    client = Client(limits=Limits(max_line=64))
    client.send(b"AUTH PLAIN\r\n")
    assert client.send(b"A" * 100 + b"\r\nQUIT\r\n") == b"-ERR Line too long\r\n+OK Bye\r\n"


@pytest.mark.parametrize(
    ("failure", "reply"),
    [
        ("auth", b"-ERR [AUTH] Authentication failed\r\n"),
        ("in-use", b"-ERR [IN-USE] Maildrop already locked\r\n"),
        ("temp", b"-ERR [SYS/TEMP] Temporary failure, try again later\r\n"),
    ],
)
def test_login_failure_carries_its_response_code(failure, reply):
    client = Client(failure=failure)
    assert client.send(b"USER ann\r\nPASS wrong\r\n") == b"+OK Send PASS\r\n" + reply
    assert client.conn.state is State.AUTHORIZATION
    assert not client.conn.closed


def test_login_failed_rejects_an_unknown_reason():
    client = Client()
    client.conn.receive_data(b"USER ann\r\nPASS x\r\n")
    client.conn.next_event()
    with pytest.raises(ValueError):
        client.conn.login_failed("nope")


def test_third_failed_login_closes_the_connection():
    client = Client()
    failed = b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed\r\n"
    assert client.send(b"USER ann\r\nPASS a\r\n") == failed
    assert client.send(b"AUTH PLAIN " + plain("", "ann", "b") + b"\r\n") == failed[15:]
    assert client.send(b"USER ann\r\nPASS c\r\nUSER ann\r\n") == (
        b"+OK Send PASS\r\n-ERR [AUTH] Authentication failed, closing\r\n"
    )
    assert client.conn.closed


def test_locked_maildrop_does_not_count_as_a_failed_login():
    client = Client(failure="in-use", limits=Limits(max_failed_logins=1))
    client.send(b"USER ann\r\nPASS x\r\n")
    assert not client.conn.closed


def test_pass_without_user_is_refused():
    client = Client()
    assert client.send(f"PASS {PASSWORD}\r\n".encode()) == b"-ERR Send USER first\r\n"
    assert client.events == []


def test_pass_must_come_right_after_user():
    client = Client()
    client.send(b"USER ann\r\nCAPA\r\n")
    assert client.send(f"PASS {PASSWORD}\r\n".encode()) == b"-ERR Send USER first\r\n"


def test_non_utf8_user_name_is_refused():
    assert Client().send(b"USER \xff\r\n") == b"-ERR Invalid UTF-8 in user name\r\n"


def test_login_event_does_not_show_the_password():
    assert PASSWORD not in repr(Login("ann", PASSWORD))


def test_maildrop_entries_must_have_valid_unique_ids():
    for uidl in ("", "has space", "x" * 71, "é"):
        with pytest.raises(ValueError):
            MaildropMessage(1, uidl)
    with pytest.raises(ValueError):
        MaildropMessage(-1, "ok")


# -- states and arguments ---------------------------------------------------------------


@pytest.mark.parametrize(
    "command", [b"STAT", b"LIST", b"UIDL", b"RETR 1", b"TOP 1 0", b"DELE 1", b"RSET", b"NOOP"]
)
def test_transaction_commands_before_login_are_refused(command):
    client = Client()
    assert client.send(command + b"\r\n") == b"-ERR Command not valid in this state\r\n"


@pytest.mark.parametrize("command", [b"USER bob", b"PASS x", b"AUTH PLAIN", b"STLS"])
def test_authorization_commands_after_login_are_refused(command):
    client = logged_in()
    assert client.send(command + b"\r\n") == b"-ERR Command not valid in this state\r\n"
    assert len(client.of(Login)) == 1


def test_apop_is_not_offered():
    client = Client()
    assert client.send(b"APOP ann c4c9334bac560ecc979e58001b3e22fb\r\n") == (
        b"-ERR Unknown command\r\n"
    )


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"RETR 0", b"-ERR no such message"),
        (b"RETR 4", b"-ERR no such message"),
        (b"RETR -1", b"-ERR Invalid message number"),
        (b"RETR +1", b"-ERR Invalid message number"),
        (b"RETR one", b"-ERR Invalid message number"),
        (b"RETR 1x", b"-ERR Invalid message number"),
        (b"RETR 99999999999999999999999999999", b"-ERR Invalid message number"),
        (b"LIST 4", b"-ERR no such message"),
        (b"UIDL 0", b"-ERR no such message"),
        (b"DELE 4", b"-ERR no such message"),
        (b"TOP 4 1", b"-ERR no such message"),
        (b"TOP 1 -1", b"-ERR Invalid line count"),
        (b"TOP 1 x", b"-ERR Invalid line count"),
        (b"RETR", b"-ERR Missing argument"),
        (b"TOP 1", b"-ERR Missing argument"),
        (b"RETR 1 2", b"-ERR Too many arguments"),
        (b"STAT 1", b"-ERR Too many arguments"),
        (b"LIST 1 2", b"-ERR Too many arguments"),
        (b"RETR  1", b"-ERR Arguments must be separated by single spaces"),
        (b"STAT ", b"-ERR Arguments must be separated by single spaces"),
    ],
)
def test_bad_message_numbers_and_arguments_are_refused(command, reply):
    client = logged_in()
    assert client.send(command + b"\r\n") == reply + b"\r\n"
    assert client.of(Retrieve) == []


@pytest.mark.parametrize("command", [b"RETR 2", b"TOP 2 1", b"LIST 2", b"UIDL 2"])
def test_a_message_marked_deleted_cannot_be_referred_to(command):
    client = logged_in()
    client.send(b"DELE 2\r\n")
    assert client.send(command + b"\r\n") == b"-ERR no such message, message 2 is deleted\r\n"


def test_deleting_twice_says_already_deleted():
    client = logged_in()
    client.send(b"DELE 2\r\n")
    assert client.send(b"DELE 2\r\n") == b"-ERR message 2 already deleted\r\n"


# -- pipelining and pieces --------------------------------------------------------------

SESSION = (
    b"CAPA\r\nUSER ann\r\n"
    + f"PASS {PASSWORD}\r\n".encode()
    + b"STAT\r\nLIST\r\nUIDL 2\r\nRETR 1\r\nTOP 3 0\r\nRETR 3\r\nDELE 2\r\nbogus\r\nQUIT\r\n"
)


def test_pipelined_commands_in_one_chunk_are_answered_in_order():
    one_by_one = Client()
    expected = b"".join(one_by_one.send(line + b"\n") for line in SESSION.split(b"\n")[:-1])
    pipelined = Client()
    assert pipelined.send(SESSION) == expected
    assert pipelined.events == one_by_one.events
    assert pipelined.of(Update) == [Update((1,))]


def test_session_fed_one_byte_at_a_time_gives_identical_output():
    whole = Client()
    trickled = Client()
    assert trickled.send(SESSION, step=1) == whole.send(SESSION)
    assert trickled.events == whole.events


def test_bare_lf_ends_a_command_line():
    client = Client()
    assert client.send(b"CAPA\nQUIT\n").endswith(b".\r\n+OK Bye\r\n")


# -- STLS -------------------------------------------------------------------------------


def test_stls_discards_input_pipelined_before_the_handshake():
    client = Client(login_allowed=False, handshake=False)
    smuggled = b"STLS\r\nUSER ann\r\n" + f"PASS {PASSWORD}\r\n".encode()
    assert client.send(smuggled) == b"+OK Begin TLS negotiation\r\n"
    assert client.conn.buffered == 0
    assert client.send(b"CAPA\r\n") == b""  # nothing is read until the handshake is done
    client.conn.tls_started()
    assert client.send(b"STAT\r\n") == b"-ERR Command not valid in this state\r\n"
    assert client.of(StartTLS) == [StartTLS()]
    assert client.of(Login) == []


def test_stls_forgets_a_user_name_given_before_tls():
    client = Client()
    client.send(b"USER mallory\r\nSTLS\r\n")
    assert client.send(f"PASS {PASSWORD}\r\n".encode()) == b"-ERR Send USER first\r\n"


def test_tls_started_without_stls_is_a_programming_error():
    with pytest.raises(RuntimeError):
        Client().conn.tls_started()


def test_stls_when_tls_is_active_or_unavailable_is_refused():
    assert Client(tls_active=True).send(b"STLS\r\n") == b"-ERR TLS already active\r\n"
    assert Client(tls_available=False).send(b"STLS\r\n") == b"-ERR STLS not available\r\n"
    assert Client().send(b"STLS now\r\n") == b"-ERR Too many arguments\r\n"


def test_failed_handshake_closes_through_receive_data_eof():
    client = Client(handshake=False)
    client.send(b"STLS\r\n")
    client.conn.receive_data(b"")
    assert client.conn.closed


# -- limits and hostile input -----------------------------------------------------------


def test_over_long_line_is_refused_and_the_next_line_works():
    client = Client(limits=Limits(max_line=32))
    line = b"NOOP " + b"x" * 40 + b"\r\n"
    assert client.send(line + b"CAPA\r\n").startswith(b"-ERR Line too long\r\n+OK Capability")


def test_line_of_exactly_max_line_octets_with_crlf_is_accepted():
    client = Client(limits=Limits(max_line=10))
    assert client.send(b"USER " + b"a" * 3 + b"\r\n") == b"+OK Send PASS\r\n"
    assert client.send(b"USER " + b"a" * 4 + b"\r\n") == b"-ERR Line too long\r\n"


def test_ten_megabyte_line_without_lf_keeps_the_buffer_bounded():
    client = Client()
    chunk = b"A" * 65536
    for _ in range(160):
        client.conn.receive_data(chunk)
        assert client.conn.buffered <= Limits().max_line
    assert (
        client.send(b"\r\nNOOP\r\n")
        == b"-ERR Line too long\r\n-ERR Command not valid in this state\r\n"
    )


def test_nul_in_a_command_is_refused():
    client = Client()
    assert client.send(b"USER a\0b\r\n") == b"-ERR Invalid character in command\r\n"
    assert client.send(b"CA\x01PA\r\n") == b"-ERR Invalid character in command\r\n"


def test_too_many_commands_before_login_closes():
    client = Client(limits=Limits(max_commands_before_login=3))
    assert client.send(b"CAPA\r\n" * 3).count(b"+OK Capability") == 3
    assert client.send(b"CAPA\r\n") == b"-ERR Too many commands before login, closing\r\n"
    assert client.conn.closed


def test_too_many_errors_close():
    client = logged_in(limits=Limits(max_errors=2))
    assert client.send(b"RETR 9\r\nRETR 9\r\nRETR 9\r\nNOOP\r\n") == (
        b"-ERR no such message\r\n-ERR no such message\r\n-ERR Too many errors, closing\r\n"
    )
    assert client.conn.closed


def test_timeout_and_shutdown_say_why_and_close():
    client = Client()
    client.conn.timeout()
    assert client.conn.data_to_send() == b"-ERR Timeout, closing\r\n"
    assert client.conn.closed
    client = logged_in()
    client.conn.shutdown()
    assert client.conn.data_to_send() == b"-ERR [SYS/TEMP] Server shutting down\r\n"


def test_shutdown_during_a_retrieval_closes_without_a_status_line():
    client = logged_in()
    client.conn.receive_data(b"RETR 1\r\n")
    assert isinstance(client.conn.next_event(), Retrieve)
    client.conn.retrieve_start()
    client.conn.data_to_send()
    client.conn.shutdown()
    assert client.conn.data_to_send() == b""
    client.conn.retrieve_done()  # the session finishing its step is harmless
    assert client.conn.data_to_send() == b""


def test_input_waits_while_an_event_is_pending():
    client = Client()
    conn = client.conn
    conn.receive_data(f"USER ann\r\nPASS {PASSWORD}\r\nSTAT\r\n".encode())
    assert conn.data_to_send() == b"+OK Send PASS\r\n"
    assert conn.buffered == len(b"STAT\r\n")
    assert isinstance(conn.next_event(), Login)
    assert conn.next_event() is None  # handed out once
    conn.login_succeeded(MAILDROP)
    assert conn.data_to_send() == LOGGED_IN + f"+OK 3 {TOTAL}\r\n".encode()


def test_answering_an_event_that_is_not_pending_is_a_programming_error():
    conn = Client().conn
    with pytest.raises(RuntimeError):
        conn.retrieve_done()
    conn.receive_data(b"USER ann\r\nPASS x\r\n")
    with pytest.raises(RuntimeError):
        conn.login_succeeded(MAILDROP)  # not handed out yet
    conn.next_event()
    with pytest.raises(RuntimeError):
        conn.respond_update(True)


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_arbitrary_input_never_raises_and_stays_bounded(chunks):
    client = Client(limits=Limits(max_line=128))
    for chunk in chunks:
        client.send(chunk)
        assert client.conn.buffered <= 128


# -- DotStuffer -------------------------------------------------------------------------

# Lines without CR or LF, rich in dots, the stuffer's business.
_LINE = st.one_of(
    st.binary(max_size=12).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    st.sampled_from([b"", b".", b"..", b".x", b"x.", b"\x00", b"\xff."]),
)


def _pieces(data, message: bytes) -> list:
    """message split at arbitrary points, each piece bytes or a memoryview."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=8)))
    bounds = [0, *cuts, len(message)]
    view = memoryview(message)
    return [
        view[a:b] if data.draw(st.booleans()) else message[a:b]
        for a, b in zip(bounds, bounds[1:], strict=False)
    ]


def _joined(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines)


@given(st.lists(_LINE, max_size=30), st.data())
def test_unstuffing_the_output_gives_back_the_message(lines, data):
    message = _joined(lines)
    assert unstuff(stuff(_pieces(data, message)) + b".\r\n") == message


@given(
    st.lists(_LINE.filter(bool), max_size=6),
    st.lists(_LINE, max_size=10),
    st.integers(0, 12),
    st.booleans(),
    st.data(),
)
def test_top_gives_the_header_section_and_exactly_m_body_lines(headers, body, m, separated, data):
    if separated:
        message = _joined(headers) + b"\r\n" + _joined(body)
        expected = _joined(headers) + b"\r\n" + _joined(body[:m])
    else:  # no empty line: all of it is header
        message = expected = _joined(headers)
    stuffer = DotStuffer(m)
    out = bytearray()
    for piece in _pieces(data, message):
        out += b"".join(stuffer.feed(piece))
    out += b"".join(stuffer.finish())
    assert unstuff(bytes(out) + b".\r\n") == expected
    assert stuffer.done == (separated and m <= len(body))


def test_pieces_without_dot_lines_come_back_as_views_of_the_stored_bytes():
    stored = b"Subject: x\r\n\r\nno dots here\r\n"
    view = memoryview(stored)
    stuffer = DotStuffer()
    out = stuffer.feed(view[:9]) + stuffer.feed(view[9:])
    assert all(isinstance(piece, memoryview) and piece.obj is stored for piece in out)
    assert b"".join(out) == stored
    assert stuffer.finish() == []


def test_stuffing_slices_the_input_and_inserts_only_dots():
    stored = b".a\r\nb\r\n.c\r\n"
    out = DotStuffer().feed(memoryview(stored))
    assert [bytes(piece) for piece in out] == [b".", b".a\r\nb\r\n", b".", b".c\r\n"]
    assert [piece for piece in out if not isinstance(piece, memoryview)] == [b".", b"."]


def test_dot_after_a_line_end_in_the_previous_piece_is_stuffed():
    assert stuff([b"a\r\n", b".b\r\n"]) == b"a\r\n..b\r\n"
    assert stuff([b"a\r", b"\n.\r\n"]) == b"a\r\n..\r\n"


def test_finish_ends_the_output_with_crlf_only_when_missing():
    assert stuff([b"a\r\nb"]) == b"a\r\nb\r\n"
    assert stuff([b"a\r\n"]) == b"a\r\n"
    assert stuff([b"a\n"]) == b"a\n\r\n"  # a strict client needs CRLF before the "."
    assert stuff([]) == b""


def test_top_stops_taking_pieces_once_done():
    stuffer = DotStuffer(1)
    assert b"".join(stuffer.feed(b"H: 1\r\n\r\nfirst\r\nsec")) == b"H: 1\r\n\r\nfirst\r\n"
    assert stuffer.done
    assert stuffer.feed(b"ond\r\n") == []
    assert stuffer.finish() == []


def test_top_finds_the_empty_line_across_pieces():
    assert stuff([b"H: 1\r\n\r", b"\nbody\r\n"], 0) == b"H: 1\r\n\r\n"
    assert stuff([b"H: 1\r\n", b"\r\nbody\r\n"], 0) == b"H: 1\r\n\r\n"
    assert stuff([b"H: 1\r", b"\n", b"\r", b"\n", b"body\r\n"], 1) == b"H: 1\r\n\r\nbody\r\n"
    assert stuff([b"\r\nbody\r\nmore\r\n"], 1) == b"\r\nbody\r\n"  # no header at all


def test_negative_top_line_count_is_refused():
    with pytest.raises(ValueError):
        DotStuffer(-1)


def test_a_message_removed_by_another_client_is_reported_not_sent():
    client = logged_in()
    client.conn.receive_data(b"RETR 1\r\nSTAT\r\n")
    assert isinstance(client.conn.next_event(), Retrieve)
    client.conn.retrieve_gone()
    replies = client.conn.data_to_send().decode().split("\r\n")
    assert replies[0] == "-ERR message 1 was deleted by another client"
    assert replies[1].startswith("+OK ")  # the session goes on
