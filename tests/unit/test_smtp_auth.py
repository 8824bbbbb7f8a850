"""Submission mode and AUTH (RFC 4954) in the sans-IO SMTP core, bytes in and bytes out."""

from __future__ import annotations

import base64

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.smtp.protocol import (
    Authenticate,
    Hello,
    Limits,
    MailFrom,
    MessageReceived,
    RcptTo,
    Reply,
    ServerConnection,
    StartTLS,
)

HOST = "smtp.example.test"
USER = "ann@example.test"
PASSWORD = "correct horse"
QUEUED = Reply(250, "2.0.0", "Ok: queued as TEST")

OK = "235 2.7.0 Authentication successful"
INVALID = "535 5.7.8 Authentication credentials invalid"
NEED_STARTTLS = "530 5.7.0 Must issue a STARTTLS command first"
NEED_AUTH = "530 5.7.0 Authentication required"
BAD_BASE64 = "501 5.5.2 Cannot Base64-decode client response"
CANCELLED = "501 5.0.0 Authentication cancelled"
AUTH_LINE_TOO_LONG = "500 5.5.6 Authentication Exchange line is too long"
TOO_MANY_FAILURES = f"421 4.7.0 {HOST} Error: too many failed logins"
USERNAME_PROMPT = "334 VXNlcm5hbWU6"  # base64 "Username:"
PASSWORD_PROMPT = "334 UGFzc3dvcmQ6"  # base64 "Password:"
KEYWORDS = [
    f"250-{HOST}",
    "250-PIPELINING",
    "250-SIZE 52428800",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250-SMTPUTF8",
]


def b64(data: bytes | str) -> bytes:
    return base64.b64encode(data.encode() if isinstance(data, str) else data)


def plain(authcid: str = USER, password: str = PASSWORD, authzid: str = "") -> bytes:
    return b64(f"{authzid}\0{authcid}\0{password}")


AUTH_PLAIN = b"AUTH PLAIN " + plain() + b"\r\n"
WRONG_PLAIN = b"AUTH PLAIN " + plain(password="guess") + b"\r\n"
AUTH_LOGIN = b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n"


def check_password(event: Authenticate) -> bool:
    return event.username == USER and event.password == PASSWORD


def accept_all(event):
    return QUEUED if isinstance(event, MessageReceived) else None


class Submission:
    """Feeds a submission-mode ServerConnection as the session would, checking passwords."""

    def __init__(self, answer=accept_all, limits=None, tls_active=True, submission=True):
        self.conn = ServerConnection(
            HOST,
            limits=limits or Limits(),
            tls_available=True,
            tls_active=tls_active,
            submission=submission,
        )
        self.answer = answer
        self.events = []
        self.conn.greet()
        self.greeting = self.conn.data_to_send()

    def send(self, data: bytes, step: int | None = None) -> list[str]:
        """Feed data (in pieces of step bytes if given), answer events, return reply lines."""
        pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
        for piece in pieces:
            self.conn.receive_data(piece)
            self.drain()
        return self.replies()

    def drain(self) -> None:
        while (event := self.conn.next_event()) is not None:
            self.events.append(event)
            if isinstance(event, Authenticate):
                if check_password(event):
                    self.conn.auth_succeeded(event.username)
                else:
                    self.conn.auth_failed()
            else:
                self.conn.respond(self.answer(event))

    def replies(self) -> list[str]:
        output = self.conn.data_to_send()
        assert output == b"" or output.endswith(b"\r\n")
        return output.decode().split("\r\n")[:-1]

    def of(self, kind) -> list:
        return [event for event in self.events if isinstance(event, kind)]


def greeted(**kwargs) -> Submission:
    client = Submission(**kwargs)
    client.send(b"EHLO client.test\r\n")
    return client


def authenticated(**kwargs) -> Submission:
    client = greeted(**kwargs)
    assert client.send(AUTH_PLAIN) == [OK]
    return client


# -- what EHLO offers -------------------------------------------------------------------


def test_submission_over_tls_offers_auth_beside_the_inbound_keywords():
    assert Submission().send(b"EHLO client.test\r\n") == [
        *KEYWORDS,
        "250-CHUNKING",
        "250 AUTH PLAIN LOGIN",
    ]


def test_submission_before_starttls_offers_starttls_and_no_auth():
    replies = Submission(tls_active=False).send(b"EHLO client.test\r\n")
    assert replies == [*KEYWORDS, "250-CHUNKING", "250 STARTTLS"]


@pytest.mark.parametrize("tls_active", [False, True])
def test_inbound_mode_never_offers_auth(tls_active):
    replies = Submission(submission=False, tls_active=tls_active).send(b"EHLO client.test\r\n")
    assert not any("AUTH" in line for line in replies)


@pytest.mark.parametrize("tls_active", [False, True])
def test_inbound_mode_refuses_auth_with_503(tls_active):
    client = greeted(submission=False, tls_active=tls_active)
    assert (
        client.send(AUTH_PLAIN + b"AUTH LOGIN\r\n")
        == ["503 5.5.1 Error: authentication not enabled"] * 2
    )
    assert client.events == [Hello("EHLO", "client.test")]
    assert client.conn.identity is None


def test_inbound_mode_over_long_auth_line_is_an_ordinary_long_line():
    client = greeted(submission=False, limits=Limits(max_auth_line=100_000))
    assert client.send(b"AUTH PLAIN " + b"A" * 5000 + b"\r\n") == ["500 5.5.2 Line too long"]


def test_help_names_auth_in_submission_mode():
    assert Submission().send(b"HELP\r\n") == [
        "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS AUTH"
    ]


# -- what submission requires -----------------------------------------------------------


def test_before_starttls_auth_and_mail_need_starttls():
    client = greeted(tls_active=False)
    replies = client.send(AUTH_PLAIN + b"AUTH LOGIN\r\nMAIL FROM:<ann@example.test>\r\n")
    assert replies == [NEED_STARTTLS] * 3
    assert client.of(Authenticate) == []
    assert client.of(MailFrom) == []


def test_after_starttls_auth_is_offered_and_works():
    client = greeted(tls_active=False)
    assert client.send(b"STARTTLS\r\n") == ["220 2.0.0 Ready to start TLS"]
    assert client.events[-1] == StartTLS()
    client.conn.tls_started()
    assert client.send(b"EHLO client.test\r\n")[-1] == "250 AUTH PLAIN LOGIN"
    assert client.send(AUTH_PLAIN + b"MAIL FROM:<ann@example.test>\r\n") == [OK, "250 2.1.0 Ok"]


def test_over_tls_without_auth_mail_needs_authentication():
    client = greeted()
    replies = client.send(b"MAIL FROM:<ann@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert replies == [
        NEED_AUTH,
        "503 5.5.1 Error: need MAIL command",
        "503 5.5.1 Error: need MAIL command",
    ]
    assert client.of(MailFrom) == []


def test_mail_before_ehlo_is_told_to_say_hello_first():
    client = Submission()
    assert client.send(b"MAIL FROM:<ann@example.test>\r\n") == [
        "503 5.5.1 Error: send HELO/EHLO first"
    ]


# -- AUTH PLAIN (RFC 4616) --------------------------------------------------------------


def test_auth_plain_with_initial_response():
    client = greeted()
    assert client.send(AUTH_PLAIN) == [OK]
    assert client.of(Authenticate) == [Authenticate(USER, PASSWORD, "PLAIN")]
    assert client.conn.identity == USER


def test_auth_plain_without_initial_response_sends_an_empty_challenge():
    client = greeted()
    assert client.send(b"AUTH PLAIN\r\n") == ["334 "]
    assert client.send(plain() + b"\r\n") == [OK]
    assert client.of(Authenticate) == [Authenticate(USER, PASSWORD, "PLAIN")]


def test_mechanism_name_is_case_insensitive():
    client = greeted()
    assert client.send(b"auth plain " + plain() + b"\r\n") == [OK]


def test_authzid_equal_to_authcid_is_accepted():
    client = greeted()
    assert client.send(b"AUTH PLAIN " + plain(authzid=USER) + b"\r\n") == [OK]


def test_authzid_of_another_user_is_refused_without_asking_the_session():
    client = greeted()
    assert client.send(b"AUTH PLAIN " + plain(authzid="bob@example.test") + b"\r\n") == [INVALID]
    assert client.of(Authenticate) == []
    assert client.conn.identity is None


def test_wrong_password_is_535_and_mail_still_needs_auth():
    client = greeted()
    assert client.send(WRONG_PLAIN) == [INVALID]
    assert client.of(Authenticate) == [Authenticate(USER, "guess", "PLAIN")]
    assert client.send(b"MAIL FROM:<ann@example.test>\r\n") == [NEED_AUTH]


@pytest.mark.parametrize(
    "message",
    [
        b"",  # AUTH PLAIN = (an empty initial response)
        b"ann@example.test correct horse",  # no NUL at all
        b"ann@example.test\0correct horse",  # one NUL
        b"\0ann@example.test\0correct\0horse",  # three
        b"\0\0correct horse",  # empty authcid
        b"\0ann@example.test\0",  # empty password
        b"\0ann\xff@example.test\0correct horse",  # not UTF-8
        b"\0ann@example.test\0\xc3",
    ],
)
def test_malformed_plain_message_fails_like_wrong_credentials(message):
    client = greeted()
    response = b64(message) if message else b"="
    assert client.send(b"AUTH PLAIN " + response + b"\r\n") == [INVALID]
    assert client.of(Authenticate) == []


def test_utf8_credentials_reach_the_session_decoded():
    client = greeted()
    client.send(b"AUTH PLAIN " + plain("jörg@bücher.example", "pässwörd") + b"\r\n")
    assert client.of(Authenticate) == [Authenticate("jörg@bücher.example", "pässwörd", "PLAIN")]


@pytest.mark.parametrize(
    "response",
    [b"not base64!", b"QUJD=", b"=AAA", b"AAA=BBBB", b"QQ", b"QQ=", b"QUJD\xff", b"QU JD"],
)
def test_bad_base64_is_501_in_the_initial_response_and_in_a_reply(response):
    client = greeted()
    if b" " not in response:
        assert client.send(b"AUTH PLAIN " + response + b"\r\n") == [BAD_BASE64]
    assert client.send(b"AUTH PLAIN\r\n" + response + b"\r\nNOOP\r\n") == [
        "334 ",
        BAD_BASE64,
        "250 2.0.0 Ok",
    ]
    assert client.of(Authenticate) == []


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        (b"AUTH", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"AUTH PLAIN a b", "501 5.5.4 Syntax: AUTH mechanism [initial-response]"),
        (b"AUTH CRAM-MD5", "504 5.5.4 Unsupported authentication mechanism"),
        (b"AUTH XOAUTH2 " + b64("user=x"), "504 5.5.4 Unsupported authentication mechanism"),
        (b"AUTH PLAIN\x00", "500 5.5.2 Syntax error"),
    ],
)
def test_auth_syntax_and_unknown_mechanisms(line, reply):
    client = greeted()
    assert client.send(line + b"\r\n") == [reply]
    assert client.of(Authenticate) == []


# -- AUTH LOGIN -------------------------------------------------------------------------


def test_auth_login_prompts_for_username_then_password():
    client = greeted()
    assert client.send(b"AUTH LOGIN\r\n") == [USERNAME_PROMPT]
    assert client.send(b64(USER) + b"\r\n") == [PASSWORD_PROMPT]
    assert client.send(b64(PASSWORD) + b"\r\n") == [OK]
    assert client.of(Authenticate) == [Authenticate(USER, PASSWORD, "LOGIN")]
    assert client.conn.identity == USER


def test_auth_login_with_the_username_as_initial_response():
    client = greeted()
    assert client.send(b"AUTH LOGIN " + b64(USER) + b"\r\n") == [PASSWORD_PROMPT]
    assert client.send(b64(PASSWORD) + b"\r\n") == [OK]


def test_auth_login_wrong_password():
    client = greeted()
    replies = client.send(b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64("nope") + b"\r\n")
    assert replies == [USERNAME_PROMPT, PASSWORD_PROMPT, INVALID]
    assert client.of(Authenticate) == [Authenticate(USER, "nope", "LOGIN")]


@pytest.mark.parametrize("username", [b"", b"\xff\xfe"])
def test_auth_login_empty_or_undecodable_username_fails_in_the_core(username):
    client = greeted()
    replies = client.send(b"AUTH LOGIN\r\n" + b64(username) + b"\r\n" + b64(PASSWORD) + b"\r\n")
    assert replies == [USERNAME_PROMPT, PASSWORD_PROMPT, INVALID]
    assert client.of(Authenticate) == []


@pytest.mark.parametrize(
    ("script", "prompts"),
    [
        (b"AUTH LOGIN\r\n*\r\n", [USERNAME_PROMPT]),
        (b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n*\r\n", [USERNAME_PROMPT, PASSWORD_PROMPT]),
        (b"AUTH LOGIN " + b64(USER) + b"\r\n*\r\n", [PASSWORD_PROMPT]),
        (b"AUTH PLAIN\r\n*\r\n", ["334 "]),
    ],
)
def test_star_cancels_the_exchange_midway(script, prompts):
    client = greeted()
    assert client.send(script) == [*prompts, CANCELLED]
    assert client.of(Authenticate) == []
    # The next line is a command again, and a new exchange starts afresh.
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]
    assert client.send(AUTH_LOGIN) == [USERNAME_PROMPT, PASSWORD_PROMPT, OK]
    assert client.of(Authenticate) == [Authenticate(USER, PASSWORD, "LOGIN")]


def test_cancelling_is_not_a_failed_login():
    client = greeted(limits=Limits(max_auth_failures=1))
    assert client.send(b"AUTH LOGIN\r\n*\r\n" * 3) == [USERNAME_PROMPT, CANCELLED] * 3
    assert not client.conn.closed


# -- order of commands ------------------------------------------------------------------


def test_auth_before_ehlo_is_refused():
    client = Submission()
    assert client.send(AUTH_PLAIN) == ["503 5.5.1 Error: send HELO/EHLO first"]
    assert client.of(Authenticate) == []


def test_auth_after_successful_auth_is_503():
    client = authenticated()
    assert (
        client.send(AUTH_PLAIN + b"AUTH LOGIN\r\n")
        == ["503 5.5.1 Error: already authenticated"] * 2
    )
    assert len(client.of(Authenticate)) == 1


def test_auth_during_a_transaction_is_503():
    client = authenticated()
    client.send(b"MAIL FROM:<ann@example.test>\r\n")
    assert client.send(b"AUTH LOGIN\r\n") == ["503 5.5.1 Error: MAIL transaction in progress"]
    assert client.conn.mail_from == USER


def test_ehlo_again_keeps_the_authentication():
    client = authenticated()
    client.send(b"EHLO client.test\r\n")
    assert client.send(b"MAIL FROM:<ann@example.test>\r\n") == ["250 2.1.0 Ok"]
    assert client.of(MailFrom)[-1].identity == USER


def test_respond_cannot_answer_authenticate():
    client = greeted()
    client.conn.receive_data(AUTH_PLAIN)
    assert isinstance(client.conn.next_event(), Authenticate)
    with pytest.raises(RuntimeError):
        client.conn.respond(None)
    with pytest.raises(RuntimeError):
        client.conn.respond(Reply(535, "5.7.8", "no"))
    client.conn.auth_failed()
    assert client.replies() == [INVALID]


def test_auth_answers_need_a_pending_authenticate():
    client = greeted()
    with pytest.raises(RuntimeError):
        client.conn.auth_succeeded(USER)
    client.conn.receive_data(AUTH_PLAIN)
    with pytest.raises(RuntimeError):
        client.conn.auth_failed()  # before next_event() handed it out
    client.drain()
    client.conn.receive_data(b"MAIL FROM:<ann@example.test>\r\n")
    assert isinstance(client.conn.next_event(), MailFrom)
    with pytest.raises(RuntimeError):
        client.conn.auth_succeeded(USER)


def test_temporary_failure_is_454_and_not_counted():
    client = greeted(limits=Limits(max_auth_failures=2))
    for _ in range(5):
        client.conn.receive_data(AUTH_PLAIN)
        assert isinstance(client.conn.next_event(), Authenticate)
        client.conn.auth_failed(temporary=True)
        assert client.replies() == ["454 4.7.0 Temporary authentication failure"]
    assert client.conn.identity is None
    assert client.send(AUTH_PLAIN) == [OK]


def test_password_stays_out_of_the_event_repr():
    event = Authenticate(USER, "s3cret-pass", "PLAIN")
    assert "s3cret-pass" not in repr(event)
    assert USER in repr(event)


# -- pipelining (RFC 4954 4, RFC 2920) --------------------------------------------------


def test_commands_pipelined_after_auth_plain_wait_for_the_answer():
    client = greeted()
    client.conn.receive_data(
        AUTH_PLAIN + b"MAIL FROM:<ann@example.test>\r\nRCPT TO:<bob@elsewhere.test>\r\n"
    )
    assert client.conn.next_event() == Authenticate(USER, PASSWORD, "PLAIN")
    assert client.conn.next_event() is None
    assert client.replies() == []
    client.conn.auth_succeeded(USER)
    assert client.conn.next_event() == MailFrom(USER, False, "7BIT", None, USER)
    client.conn.respond(None)
    assert client.conn.next_event() == RcptTo("bob@elsewhere.test", USER)
    client.conn.respond(None)
    assert client.replies() == [OK, "250 2.1.0 Ok", "250 2.1.5 Ok"]


def test_commands_pipelined_after_a_failed_auth_run_unauthenticated():
    client = greeted()
    replies = client.send(
        WRONG_PLAIN + b"MAIL FROM:<ann@example.test>\r\nRCPT TO:<bob@elsewhere.test>\r\n"
    )
    assert replies == [INVALID, NEED_AUTH, "503 5.5.1 Error: need MAIL command"]
    assert client.of(MailFrom) == []


def test_a_command_pipelined_after_auth_login_is_taken_as_the_response():
    # RFC 4954 4: AUTH without a one-round-trip initial response ends a
    # pipelined group, so what follows it is the client's answer to 334.
    client = greeted()
    replies = client.send(b"AUTH LOGIN\r\nMAIL FROM:<ann@example.test>\r\nNOOP\r\n")
    assert replies == [USERNAME_PROMPT, BAD_BASE64, "250 2.0.0 Ok"]
    assert client.of(MailFrom) == []


# -- after AUTH: the identity travels with the envelope ---------------------------------


def test_mail_and_rcpt_carry_the_authenticated_identity():
    client = authenticated()
    client.send(b"MAIL FROM:<ann@example.test>\r\nRCPT TO:<someone@far.example>\r\n")
    assert client.of(MailFrom) == [MailFrom(USER, False, "7BIT", None, USER)]
    assert client.of(RcptTo) == [RcptTo("someone@far.example", USER)]


def test_session_refuses_a_sender_that_is_not_the_users():
    def answer(event):
        if isinstance(event, MailFrom) and event.address != event.identity:
            return Reply(553, "5.7.1", f"<{event.address}>: Sender address rejected")
        return accept_all(event)

    client = authenticated(answer=answer)
    replies = client.send(
        b"MAIL FROM:<boss@example.test>\r\nRCPT TO:<bob@far.example>\r\n"
        b"MAIL FROM:<ann@example.test>\r\nRCPT TO:<bob@far.example>\r\n"
    )
    assert replies == [
        "553 5.7.1 <boss@example.test>: Sender address rejected",
        "503 5.5.1 Error: need MAIL command",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
    ]
    assert client.conn.mail_from == USER


def test_whole_submission_delivers_with_the_identity():
    client = authenticated()
    replies = client.send(
        b"MAIL FROM:<ann@example.test>\r\nRCPT TO:<x@far.example>\r\nDATA\r\n"
        b"Subject: hi\r\n\r\n..dot\r\n.\r\nQUIT\r\n"
    )
    assert replies == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as TEST",
        "221 2.0.0 Bye",
    ]
    assert client.of(MessageReceived) == [MessageReceived(b"Subject: hi\r\n\r\n.dot\r\n", "DATA")]


@pytest.mark.parametrize("value", [b"<>", b"ann@example.test", b"a+2Bb@example.test"])
def test_mail_auth_parameter_is_accepted_and_dropped(value):
    client = authenticated()
    assert client.send(b"MAIL FROM:<ann@example.test> AUTH=" + value + b"\r\n") == ["250 2.1.0 Ok"]
    assert client.of(MailFrom) == [MailFrom(USER, False, "7BIT", None, USER)]


@pytest.mark.parametrize("parameter", [b"AUTH", b"AUTH=a+zz", b"AUTH=a+2b", b"AUTH=a+"])
def test_mail_auth_parameter_must_be_xtext(parameter):
    client = authenticated()
    assert client.send(b"MAIL FROM:<ann@example.test> " + parameter + b"\r\n") == [
        "501 5.5.4 Syntax error in parameters"
    ]


# -- limits -----------------------------------------------------------------------------


def test_third_failed_auth_closes_with_421():
    client = greeted()
    replies = client.send(
        WRONG_PLAIN
        + b"AUTH PLAIN " + plain(authzid="bob@example.test") + b"\r\n"
        + b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64("nope") + b"\r\n"
        + AUTH_PLAIN
    )  # fmt: skip
    assert replies == [
        INVALID,
        INVALID,
        USERNAME_PROMPT,
        PASSWORD_PROMPT,
        INVALID,
        TOO_MANY_FAILURES,
    ]
    assert client.conn.closed
    assert client.conn.identity is None
    assert len(client.of(Authenticate)) == 2


def test_failures_under_the_limit_leave_room_to_succeed():
    client = greeted(limits=Limits(max_auth_failures=3))
    assert client.send(WRONG_PLAIN * 2 + AUTH_PLAIN) == [INVALID, INVALID, OK]
    assert not client.conn.closed


def test_auth_line_at_the_limit_is_read_one_past_is_500_5_5_6():
    limits = Limits(max_auth_line=65)
    fits = b"AUTH PLAIN " + plain(password="p" * 21) + b"\r\n"
    assert len(fits) == 65  # the limit counts the CRLF
    client = greeted(limits=limits)
    assert client.send(fits) == [INVALID]
    assert client.of(Authenticate) == [Authenticate(USER, "p" * 21, "PLAIN")]
    assert greeted(limits=limits).send(b"AUTH PLAIN " + b"A" * 52 + b"\r\n") == [INVALID]
    assert greeted(limits=limits).send(b"AUTH PLAIN " + b"A" * 53 + b"\r\n") == [AUTH_LINE_TOO_LONG]


def test_auth_line_limit_is_separate_from_the_command_line_limit():
    client = greeted(limits=Limits(max_command_line=32, max_auth_line=4096))
    assert client.send(AUTH_PLAIN) == [OK]
    assert client.send(b"MAIL FROM:<ann@example.test> BODY=8BITMIME\r\n") == [
        "500 5.5.2 Line too long"
    ]


def test_over_long_response_line_ends_the_exchange():
    client = greeted(limits=Limits(max_auth_line=64))
    replies = client.send(b"AUTH LOGIN\r\n" + b"A" * 100 + b"\r\nNOOP\r\n")
    assert replies == [USERNAME_PROMPT, AUTH_LINE_TOO_LONG, "250 2.0.0 Ok"]


# -- hostile input ----------------------------------------------------------------------


@pytest.mark.parametrize("prefix", [b"AUTH PLAIN ", b"AUTH PLAIN\r\n", b"AUTH LOGIN\r\n"])
def test_100_kb_response_is_refused_with_buffer_bounded(prefix):
    limits = Limits()
    client = greeted(limits=limits)
    response = b64(b"\0" + b"x" * 75_000 + b"\0" + b"y" * 1_000)
    assert len(response) > 100_000
    data = prefix + response + b"\r\n"
    replies = []
    for start in range(0, len(data), 1000):
        replies += client.send(data[start : start + 1000])
        assert client.conn.buffered <= limits.max_auth_line + 1000
    assert replies[-1] == AUTH_LINE_TOO_LONG
    assert client.of(Authenticate) == []
    assert client.send(AUTH_PLAIN) == [OK]  # a line too long is no failed login


def test_flood_of_wrong_auths_is_cut_off_at_the_limit():
    client = greeted()
    replies = client.send(WRONG_PLAIN * 10_000)
    assert replies == [INVALID] * 3 + [TOO_MANY_FAILURES]
    assert len(client.of(Authenticate)) == 3
    assert client.conn.closed
    assert client.conn.buffered == 0
    assert client.send(AUTH_PLAIN) == []


def test_flood_of_nul_less_plain_payloads_is_cut_off_without_events():
    client = greeted()
    garbage = b"AUTH PLAIN " + b64(b"x" * 700) + b"\r\n"
    assert client.send(garbage * 1000) == [INVALID] * 3 + [TOO_MANY_FAILURES]
    assert client.events == [Hello("EHLO", "client.test")]


def test_flood_of_cancelled_exchanges_hits_the_error_limit():
    client = greeted(limits=Limits(max_errors=5))
    replies = client.send(b"AUTH LOGIN\r\n*\r\n" * 100)
    assert replies == [USERNAME_PROMPT, CANCELLED] * 5 + [
        USERNAME_PROMPT,
        f"421 4.7.0 {HOST} Error: too many errors",
    ]
    assert client.conn.closed


SESSION = (
    b"EHLO client.test\r\n"
    b"AUTH PLAIN\r\n" + plain(password="wrong") + b"\r\n"
    b"AUTH LOGIN\r\n*\r\n"
    b"MAIL FROM:<ann@example.test>\r\n"
    b"AUTH LOGIN\r\n" + b64(USER) + b"\r\n" + b64(PASSWORD) + b"\r\n"
    b"MAIL FROM:<ann@example.test> AUTH=<> SIZE=40\r\n"
    b"RCPT TO:<bob@far.example>\r\n"
    b"DATA\r\nSubject: hi\r\n\r\n..x\r\n.\r\n"
    b"MAIL FROM:<ann@example.test>\r\nRCPT TO:<cat@far.example>\r\n"
    b"BDAT 5 LAST\r\nhello"
    b"QUIT\r\n"
)  # fmt: skip


def test_whole_session_split_at_every_byte_changes_nothing():
    whole = Submission()
    expected = whole.send(SESSION)
    assert expected == [
        *KEYWORDS,
        "250-CHUNKING",
        "250 AUTH PLAIN LOGIN",
        "334 ",
        INVALID,
        USERNAME_PROMPT,
        CANCELLED,
        NEED_AUTH,
        USERNAME_PROMPT,
        PASSWORD_PROMPT,
        OK,
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as TEST",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "250 2.0.0 Ok: queued as TEST",
        "221 2.0.0 Bye",
    ]
    assert whole.of(MessageReceived) == [
        MessageReceived(b"Subject: hi\r\n\r\n.x\r\n", "DATA"),
        MessageReceived(b"hello", "BDAT"),
    ]
    assert [e.mechanism for e in whole.of(Authenticate)] == ["PLAIN", "LOGIN"]
    assert whole.conn.closed
    for cut in range(1, len(SESSION)):
        split = Submission()
        replies = split.send(SESSION[:cut]) + split.send(SESSION[cut:])
        assert (replies, split.events) == (expected, whole.events), f"cut at {cut}"
    bytewise = Submission()
    assert bytewise.send(SESSION, step=1) == expected
    assert bytewise.events == whole.events


# -- properties -------------------------------------------------------------------------

FRAGMENTS = [
    b"EHLO c\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH PLAIN ",
    b"AUTH LOGIN\r\n",
    b"AUTH LOGIN ",
    plain() + b"\r\n",
    plain(password="x") + b"\r\n",
    b64(USER) + b"\r\n",
    b64(PASSWORD) + b"\r\n",
    b"*\r\n",
    b"=\r\n",
    b"MAIL FROM:<ann@example.test>\r\n",
    b"RCPT TO:<b@far.example>\r\n",
    b"DATA\r\n",
    b".\r\n",
    b"\0",
    b"\r",
    b"\n",
    b"A" * 70,
]
SMALL = Limits(
    max_command_line=64,
    max_auth_line=96,
    max_message_size=256,
    max_errors=1000,
    max_junk_commands=1000,
    max_auth_failures=1000,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=200)), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=20),
)
def test_any_input_in_any_split_never_raises_and_stays_bounded(parts, cuts):
    client = Submission(limits=SMALL)
    data = b"".join(parts)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in zip(bounds, bounds[1:], strict=False):
        client.send(data[start:end])
        assert client.conn.buffered <= (
            SMALL.max_auth_line + SMALL.max_message_size * 3 // 2 + (end - start) + 8
        )
    for event in client.of(Authenticate):
        assert event.username and event.password
    if client.of(MailFrom):
        assert client.conn.identity == USER


@settings(deadline=None)
@given(message=st.binary(max_size=300).filter(lambda m: m.count(b"\0") != 2))
def test_plain_message_without_exactly_two_nuls_never_reaches_the_session(message):
    client = greeted()
    response = b64(message) if message else b"="
    assert client.send(b"AUTH PLAIN " + response + b"\r\n") == [INVALID]
    assert client.of(Authenticate) == []
