"""The sans-IO SMTP client core, driven with the bytes a server would send."""

from __future__ import annotations

import base64
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.smtp.client import (
    ClientConnection,
    ClientLimits,
    Closed,
    Credentials,
    DotStuffer,
    Envelope,
    Extensions,
    Kind,
    MessageResult,
    Ready,
    SendBody,
    StartTLS,
    Timeouts,
    has_eight_bit,
)
from appliance.smtp.protocol import (
    Authenticate,
    MessageReceived,
    Reply,
    ServerConnection,
)

REMOTE = "mx.example.test[192.0.2.7]:25"
GREETING = b"220 mx.example.test ESMTP\r\n"
EHLO_PIPELINING = (
    b"250-mx.example.test\r\n"
    b"250-PIPELINING\r\n"
    b"250-SIZE 10000\r\n"
    b"250-8BITMIME\r\n"
    b"250-SMTPUTF8\r\n"
    b"250 ENHANCEDSTATUSCODES\r\n"
)
EHLO_PLAIN = b"250-mx.example.test\r\n250 ENHANCEDSTATUSCODES\r\n"
EHLO_STARTTLS = b"250-mx.example.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"
MAIL_OK = b"250 2.1.0 Ok\r\n"
RCPT_OK = b"250 2.1.5 Ok\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"
QUEUED = b"250 2.0.0 Ok: queued as 4F2A\r\n"
NO_RECIPIENTS = b"554 5.5.1 Error: no valid recipients\r\n"
ONE = Envelope("ann@client.test", ("bob@example.test",), size=20)
TWO = Envelope("ann@client.test", ("bob@example.test", "eve@example.test"), size=20)


class Script:
    """A ClientConnection and the server's side of its conversation, as bytes."""

    def __init__(self, **kwargs):
        self.conn = ClientConnection("client.test", REMOTE, **kwargs)
        self.events = []
        self.history = []  # every event, also those taken

    def server(self, data: bytes, step: int | None = None) -> bytes:
        """The server sends data (in pieces of step bytes if given); the client's answer."""
        pieces = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
        for piece in pieces:
            self.conn.receive_data(piece)
        self.collect()
        return self.conn.data_to_send()

    def collect(self) -> None:
        while (event := self.conn.next_event()) is not None:
            self.events.append(event)
            self.history.append(event)

    def take(self) -> list:
        events, self.events = self.events, []
        return events

    def results(self) -> dict:
        """recipient -> outcome of every MessageResult so far."""
        found = {}
        for event in self.history:
            if isinstance(event, MessageResult):
                found.update({r.recipient: r.outcome for r in event.results})
        return found

    def closed(self) -> Closed:
        closes = [event for event in self.events if isinstance(event, Closed)]
        assert len(closes) == 1, self.events
        return closes[0]

    def send_body(self, body: bytes) -> bytes:
        pieces = self.conn.send_body(body)
        return b"".join(bytes(piece) for piece in pieces) + self.conn.end_body()


def ready(ehlo: bytes = EHLO_PIPELINING, **kwargs) -> Script:
    script = Script(**kwargs)
    assert script.server(GREETING) == b"EHLO client.test\r\n"
    assert script.server(ehlo) == b""
    assert isinstance(script.take()[-1], Ready)
    return script


def sent_in_transaction(script: Script, envelope: Envelope = ONE) -> bytes:
    script.conn.send_message(envelope)
    script.collect()
    return script.conn.data_to_send()


# -- reading replies --------------------------------------------------------------------


def test_greeting_is_answered_with_ehlo_naming_us():
    script = Script()
    assert script.conn.data_to_send() == b""
    assert script.server(GREETING) == b"EHLO client.test\r\n"


def test_ehlo_reply_is_read_into_extensions():
    script = ready(
        b"250-mx.example.test Hello\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-8BITMIME\r\n"
        b"250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250-CHUNKING\r\n"
        b"250-AUTH PLAIN LOGIN\r\n250-auth=CRAM-MD5\r\n250 STARTTLS\r\n"
    )
    ext = script.conn.extensions
    assert ext.size == 35882577
    assert ext.pipelining and ext.eight_bit_mime and ext.smtputf8 and ext.starttls
    assert ext.enhanced_status_codes and ext.dsn and ext.chunking
    assert ext.auth == {"PLAIN", "LOGIN", "CRAM-MD5"}
    assert ext.keywords["SIZE"] == "35882577"


def test_bare_size_means_no_fixed_limit_and_absent_means_unknown():
    assert Extensions.parse(["SIZE"]).size == 0
    assert Extensions.parse(["PIPELINING"]).size is None


def test_multiline_reply_with_enhanced_codes_on_each_line():
    script = ready()
    script.conn.send_message(ONE)
    script.conn.data_to_send()
    script.server(
        MAIL_OK
        + b"550-5.1.1 no such user\r\n550-5.1.1 here\r\n550 5.1.1 at all\r\n"
        + NO_RECIPIENTS
    )
    outcome = script.results()["bob@example.test"]
    assert outcome.reply == Reply(550, "5.1.1", ("no such user", "here", "at all"))
    assert outcome.text == "no such user here at all"


@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_replies_split_across_reads_are_read_whole(step):
    whole, pieces = ready(), ready()
    for script in (whole, pieces):
        script.conn.send_message(TWO)
        script.conn.data_to_send()
    replies = MAIL_OK + RCPT_OK + b"550-5.1.1 no\r\n550 5.1.1 such user\r\n" + GO_AHEAD
    assert whole.server(replies) == pieces.server(replies, step=step) == b""
    assert whole.take() == pieces.take() == [SendBody()]


def test_bare_lf_ends_a_reply_line_too():
    script = Script()
    assert script.server(b"220 mx ESMTP\n") == b"EHLO client.test\r\n"
    script.server(b"250-mx\n250 PIPELINING\n")
    assert script.conn.extensions.pipelining


def test_ten_megabytes_of_reply_line_are_not_held():
    script = Script()
    chunk = b"x" * 65536
    assert script.server(b"220 ") == b""
    for _ in range(160):
        script.server(chunk)
        assert script.conn.buffered <= ClientLimits().max_reply_line + len(chunk)
    assert script.server(b"\r\n") == b"EHLO client.test\r\n"
    script.server(EHLO_PIPELINING)
    assert isinstance(script.take()[-1], Ready)


def test_over_long_reply_text_is_cut_to_the_limit():
    script = ready(limits=ClientLimits(max_reply_line=40))
    sent_in_transaction(script)
    script.server(MAIL_OK + b"550 5.1.1 " + b"y" * 1000 + b"\r\n" + NO_RECIPIENTS)
    outcome = script.results()["bob@example.test"]
    assert outcome.reply.code == 550
    assert outcome.text == "y" * 30


def test_endless_multiline_reply_ends_the_connection():
    script = Script()
    script.server(GREETING)
    for _ in range(1000):
        if script.conn.closed:
            break
        script.server(b"250-more and more\r\n" * 10)
        assert script.conn.buffered < 200 * 100
    closed = script.closed()
    assert closed.outcome.kind is Kind.TEMPORARY
    assert "protocol error" in closed.outcome.text


@pytest.mark.parametrize(
    "garbage",
    [
        b"HTTP/1.1 400 Bad Request\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n",
        b"22 short\r\n",
        b"220x no separator\r\n",
        b"120 not a class SMTP has\r\n",
        b"650 nor this\r\n",
    ],
)
def test_garbage_instead_of_a_greeting_closes_with_a_temporary_failure(garbage):
    script = Script()
    assert script.server(garbage) == b"QUIT\r\n"
    outcome = script.closed().outcome
    assert outcome.kind is Kind.TEMPORARY
    assert outcome.text.startswith("protocol error: ")
    assert outcome.host == REMOTE


def test_multiline_reply_that_changes_its_code_is_a_protocol_error():
    script = Script()
    script.server(b"220-mx\r\n250 ok\r\n")
    assert "changed its code" in script.closed().outcome.text


def test_control_characters_in_reply_text_are_replaced():
    script = ready()
    sent_in_transaction(script)
    script.server(MAIL_OK + b"550 5.1.1 bad\x00user\x1b[31m\r\n" + NO_RECIPIENTS)
    assert script.results()["bob@example.test"].text == "bad?user?[31m"


def test_reply_to_no_command_is_a_protocol_error():
    script = ready()
    assert script.server(b"250 unasked\r\n") == b"QUIT\r\n"
    assert "reply to no command" in script.closed().outcome.text


def test_unsolicited_421_closes_with_its_reply():
    script = ready()
    assert script.server(b"421 4.3.2 shutting down\r\n") == b""
    outcome = script.closed().outcome
    assert (outcome.kind, outcome.status, outcome.reply.code) == (Kind.TEMPORARY, "4.3.2", 421)


# -- greeting, EHLO and HELO ------------------------------------------------------------


@pytest.mark.parametrize(
    ("greeting", "quit"),
    [(b"554 5.7.1 no mail here\r\n", b"QUIT\r\n"), (b"421 4.7.0 busy\r\n", b"")],
)
def test_refusing_greeting_is_a_temporary_failure(greeting, quit):
    script = Script()
    assert script.server(greeting) == quit
    outcome = script.closed().outcome
    assert outcome.kind is Kind.TEMPORARY
    assert outcome.status.startswith("4.7.")
    assert outcome.command == "greeting"


def test_ehlo_not_understood_falls_back_to_helo_without_extensions():
    script = Script()
    script.server(b"220 old.example.test SMTP\r\n")
    assert script.server(b"502 5.5.1 command not implemented\r\n") == b"HELO client.test\r\n"
    assert script.server(b"250 old.example.test\r\n") == b""
    assert script.take()[-1] == Ready(Extensions())


def test_ehlo_500_falls_back_to_helo():
    script = Script()
    script.server(GREETING)
    assert script.server(b"500 what?\r\n") == b"HELO client.test\r\n"


@pytest.mark.parametrize(
    ("reply", "kind"),
    [(b"550 5.7.1 go away\r\n", Kind.PERMANENT), (b"450 later\r\n", Kind.TEMPORARY)],
)
def test_ehlo_refused_otherwise_fails_by_its_code(reply, kind):
    script = Script()
    script.server(GREETING)
    assert script.server(reply) == b"QUIT\r\n"
    assert script.closed().outcome.kind is kind
    assert script.closed().outcome.command == "EHLO"


def test_refused_helo_fails_too():
    script = Script()
    script.server(GREETING)
    script.server(b"502 no\r\n")
    script.server(b"501 5.5.4 bad hostname\r\n")
    assert script.closed().outcome.reply.status == "5.5.4"


# -- STARTTLS (RFC 3207) ----------------------------------------------------------------


def test_starttls_when_offered_then_ehlo_again_forgetting_what_was_offered():
    script = Script(tls_possible=True)
    script.server(GREETING)
    assert script.server(EHLO_STARTTLS) == b"STARTTLS\r\n"
    assert script.server(b"220 2.0.0 Ready to start TLS\r\n") == b""
    assert script.take() == [StartTLS()]
    script.conn.tls_started()
    assert script.conn.extensions is None
    assert script.conn.data_to_send() == b"EHLO client.test\r\n"
    # Offered again after TLS (wrongly): not taken twice.
    assert script.server(EHLO_STARTTLS) == b""
    assert script.take() == [Ready(Extensions.parse(["PIPELINING", "STARTTLS"]))]
    assert script.conn.tls_active


def test_replies_sent_in_clear_after_220_to_starttls_are_dropped():
    script = Script(tls_possible=True)
    script.server(GREETING)
    script.server(EHLO_STARTTLS)
    # An attacker in the path adds a reply meant to be read after the handshake.
    script.server(b"220 2.0.0 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
    script.conn.receive_data(b"250 more injected\r\n")  # before the handshake: ignored too
    script.conn.tls_started()
    assert script.conn.data_to_send() == b"EHLO client.test\r\n"
    script.server(EHLO_PLAIN)
    assert script.conn.extensions.auth == frozenset()
    assert isinstance(script.take()[-1], Ready)


def test_starttls_is_not_tried_without_a_tls_context():
    script = Script()
    script.server(GREETING)
    assert script.server(EHLO_STARTTLS) == b""
    assert isinstance(script.take()[-1], Ready)


def test_starttls_is_not_tried_over_implicit_tls():
    script = Script(tls_possible=True, tls_active=True)
    script.server(GREETING)
    assert script.server(EHLO_STARTTLS) == b""
    assert isinstance(script.take()[-1], Ready)


def test_required_tls_not_offered_is_a_temporary_failure():
    script = Script(tls_possible=True, tls_required=True)
    script.server(GREETING)
    assert script.server(EHLO_PIPELINING) == b"QUIT\r\n"
    outcome = script.closed().outcome
    assert (outcome.kind, outcome.status) == (Kind.TEMPORARY, "4.7.4")
    assert outcome.text == "TLS is required, but does not offer STARTTLS"


def test_refused_starttls_goes_on_in_clear_unless_tls_is_required():
    script = Script(tls_possible=True)
    script.server(GREETING)
    script.server(EHLO_STARTTLS)
    assert script.server(b"454 4.7.0 TLS not available\r\n") == b""
    assert isinstance(script.take()[-1], Ready)
    assert not script.conn.tls_active

    required = Script(tls_possible=True, tls_required=True)
    required.server(GREETING)
    required.server(EHLO_STARTTLS)
    assert required.server(b"554 5.7.0 no TLS for you\r\n") == b"QUIT\r\n"
    assert required.closed().outcome.kind is Kind.TEMPORARY
    assert required.closed().outcome.status == "4.7.0"


def test_tls_started_without_220_raises():
    script = Script(tls_possible=True)
    with pytest.raises(RuntimeError):
        script.conn.tls_started()


def test_failed_handshake_closes_with_a_temporary_failure():
    script = Script(tls_possible=True)
    script.server(GREETING)
    script.server(EHLO_STARTTLS)
    script.server(b"220 go ahead\r\n")
    script.conn.connection_lost("TLS handshake failed: certificate verify failed")
    script.server(b"")
    outcome = script.closed().outcome
    assert (outcome.kind, outcome.status) == (Kind.TEMPORARY, "4.4.2")
    assert outcome.diagnostic == f"{REMOTE}: TLS handshake failed: certificate verify failed"


# -- AUTH (RFC 4954) --------------------------------------------------------------------

RELAY = Credentials("box@relay.test", "s3cret pass")
EHLO_AUTH = b"250-relay.test\r\n250-PIPELINING\r\n250 AUTH LOGIN PLAIN\r\n"


def test_auth_plain_with_initial_response_then_ready():
    script = Script(tls_active=True, credentials=RELAY)
    script.server(GREETING)
    line = script.server(EHLO_AUTH)
    assert line == b"AUTH PLAIN " + base64.b64encode(b"\0box@relay.test\0s3cret pass") + b"\r\n"
    assert script.server(b"235 2.7.0 Authentication successful\r\n") == b""
    assert isinstance(script.take()[-1], Ready)
    assert script.conn.authenticated


def test_auth_login_when_plain_is_not_offered():
    script = Script(tls_active=True, credentials=RELAY)
    script.server(GREETING)
    assert script.server(b"250-relay.test\r\n250 AUTH LOGIN\r\n") == b"AUTH LOGIN\r\n"
    assert script.server(b"334 VXNlcm5hbWU6\r\n") == base64.b64encode(b"box@relay.test") + b"\r\n"
    assert script.server(b"334 UGFzc3dvcmQ6\r\n") == base64.b64encode(b"s3cret pass") + b"\r\n"
    script.server(b"235 2.7.0 ok\r\n")
    assert isinstance(script.take()[-1], Ready)


def test_refused_credentials_are_a_temporary_failure_quoting_the_relay():
    script = Script(tls_active=True, credentials=RELAY)
    script.server(GREETING)
    script.server(EHLO_AUTH)
    script.server(b"535 5.7.8 Authentication credentials invalid\r\n")
    outcome = script.closed().outcome
    assert (outcome.kind, outcome.status, outcome.reply.code) == (Kind.TEMPORARY, "4.7.8", 535)
    assert outcome.diagnostic == (
        f"host {REMOTE} said: 535 5.7.8 Authentication credentials invalid (in reply to AUTH)"
    )


def test_no_password_in_clear_text_unless_allowed():
    script = Script(credentials=RELAY)
    script.server(GREETING)
    assert script.server(EHLO_AUTH) == b"QUIT\r\n"
    assert (script.closed().outcome.kind, script.closed().outcome.status) == (
        Kind.TEMPORARY,
        "4.7.10",
    )

    allowed = Script(credentials=Credentials("box", "pw", allow_cleartext=True))
    allowed.server(GREETING)
    assert allowed.server(EHLO_AUTH).startswith(b"AUTH PLAIN ")


def test_no_usable_mechanism_is_a_temporary_failure():
    script = Script(tls_active=True, credentials=RELAY)
    script.server(GREETING)
    script.server(b"250-relay.test\r\n250 AUTH CRAM-MD5 GSSAPI\r\n")
    assert "CRAM-MD5 GSSAPI" in script.closed().outcome.text


def test_credentials_are_not_printed():
    assert "s3cret" not in repr(RELAY)


# -- one message ------------------------------------------------------------------------


def test_pipelined_transaction_and_delivered_results():
    script = ready()
    assert sent_in_transaction(script, TWO) == (
        b"MAIL FROM:<ann@client.test> SIZE=20\r\n"
        b"RCPT TO:<bob@example.test>\r\nRCPT TO:<eve@example.test>\r\nDATA\r\n"
    )
    assert script.conn.waiting_for.name == "mail"
    assert script.server(MAIL_OK + RCPT_OK + RCPT_OK + GO_AHEAD) == b""
    assert script.take() == [SendBody()]
    assert script.send_body(b"Subject: hi\r\n\r\n.hidden\r\n") == (
        b"Subject: hi\r\n\r\n..hidden\r\n.\r\n"
    )
    assert script.conn.waiting_for.name == "data_termination"
    script.server(QUEUED)
    results = script.take()
    assert isinstance(results[0], MessageResult) and isinstance(results[1], Ready)
    for result in results[0].results:
        outcome = result.outcome
        assert (outcome.kind, outcome.status, outcome.host) == (Kind.DELIVERED, "2.0.0", REMOTE)
        assert outcome.text == "Ok: queued as 4F2A"
        assert outcome.command == "end of data"
    assert [r.recipient for r in results[0].results] == list(TWO.recipients)


def test_one_recipient_refused_one_accepted():
    script = ready()
    sent_in_transaction(script, TWO)
    script.server(MAIL_OK + b"550 5.1.1 <bob@example.test>: User unknown\r\n" + RCPT_OK + GO_AHEAD)
    assert script.send_body(b"x\r\n") == b"x\r\n.\r\n"
    script.server(QUEUED)
    bob, eve = script.results()["bob@example.test"], script.results()["eve@example.test"]
    assert (bob.kind, bob.status, bob.command) == (Kind.PERMANENT, "5.1.1", "RCPT TO")
    assert bob.diagnostic == (
        f"host {REMOTE} said: 550 5.1.1 <bob@example.test>: User unknown (in reply to RCPT TO)"
    )
    assert eve.kind is Kind.DELIVERED


def test_temporary_and_too_many_recipients_replies_are_temporary():
    script = ready()
    sent_in_transaction(script, TWO)
    script.server(
        MAIL_OK + b"451 4.3.0 try later\r\n" + b"452 4.5.3 too many recipients\r\n"
        b"554 5.5.1 no valid recipients\r\n"
    )
    results = script.results()
    assert results["bob@example.test"].kind is Kind.TEMPORARY
    assert results["eve@example.test"].status == "4.5.3"
    assert isinstance(script.take()[-1], Ready)


def test_all_recipients_refused_and_data_refused_sends_no_content():
    script = ready()
    sent_in_transaction(script, TWO)
    replies = b"550 5.1.1 no\r\n550 5.1.1 no\r\n554 5.5.1 Error: no valid recipients\r\n"
    assert script.server(MAIL_OK + replies) == b""
    events = script.take()
    assert SendBody() not in events and isinstance(events[-1], Ready)
    assert {o.kind for o in script.results().values()} == {Kind.PERMANENT}


def test_all_recipients_refused_but_data_accepted_sends_a_lone_dot():
    script = ready()
    sent_in_transaction(script)
    assert script.server(MAIL_OK + b"550 5.1.1 no\r\n" + GO_AHEAD) == b".\r\n"
    assert script.take() == []
    script.server(b"554 5.5.1 no valid recipients\r\n")
    events = script.take()
    assert isinstance(events[-1], Ready)
    assert events[0].results[0].outcome.command == "RCPT TO"


def test_refused_sender_answers_for_every_recipient_and_later_replies_are_skipped():
    script = ready()
    sent_in_transaction(script, TWO)
    script.server(b"553 5.7.1 sender rejected\r\n503 5.5.1 need MAIL\r\n503 5.5.1 need MAIL\r\n")
    assert script.take() == []  # DATA's reply is still to come
    script.server(b"503 5.5.1 need MAIL\r\n")
    results = script.results()
    assert {o.reply.code for o in results.values()} == {553}
    assert {o.command for o in results.values()} == {"MAIL FROM"}


@pytest.mark.parametrize(
    ("reply", "kind"),
    [(b"451 4.3.0 local error\r\n", Kind.TEMPORARY), (b"554 5.6.0 refused\r\n", Kind.PERMANENT)],
)
def test_data_refused_fails_the_accepted_recipients(reply, kind):
    script = ready()
    sent_in_transaction(script)
    script.server(MAIL_OK + RCPT_OK + reply)
    outcome = script.results()["bob@example.test"]
    assert (outcome.kind, outcome.command) == (kind, "DATA")


@pytest.mark.parametrize(
    ("reply", "kind"),
    [
        (b"451 4.3.0 queue file write error\r\n", Kind.TEMPORARY),
        (b"552 5.3.4 message too big\r\n", Kind.PERMANENT),
        (b"354 again?\r\n", Kind.TEMPORARY),
    ],
)
def test_end_of_data_reply_decides_for_every_accepted_recipient(reply, kind):
    script = ready()
    sent_in_transaction(script, TWO)
    script.server(MAIL_OK + RCPT_OK + RCPT_OK + GO_AHEAD)
    script.send_body(b"x\r\n")
    script.server(reply)
    assert {o.kind for o in script.results().values()} == {kind}


def test_without_pipelining_commands_go_one_at_a_time():
    script = ready(EHLO_PLAIN)
    assert sent_in_transaction(script, TWO) == b"MAIL FROM:<ann@client.test>\r\n"
    assert script.server(MAIL_OK) == b"RCPT TO:<bob@example.test>\r\n"
    assert script.conn.waiting_for.name == "rcpt"
    assert script.server(RCPT_OK) == b"RCPT TO:<eve@example.test>\r\n"
    assert script.server(b"550 5.1.1 no\r\n") == b"DATA\r\n"
    assert script.conn.waiting_for.name == "data_init"
    script.server(GO_AHEAD)
    assert script.take() == [SendBody()]


def test_without_pipelining_no_data_when_no_recipient_was_accepted():
    script = ready(EHLO_PLAIN)
    sent_in_transaction(script)
    script.server(MAIL_OK)
    assert script.server(b"550 5.1.1 no\r\n") == b""
    assert isinstance(script.take()[-1], Ready)


def test_without_pipelining_no_recipients_after_a_refused_sender():
    script = ready(EHLO_PLAIN)
    sent_in_transaction(script, TWO)
    assert script.server(b"550 5.7.1 no\r\n") == b""
    assert {o.reply.code for o in script.results().values()} == {550}


def test_mail_parameters_follow_the_message_and_what_is_offered():
    script = ready()
    envelope = Envelope("ann@client.test", ("bob@example.test",), size=999, eight_bit=True)
    assert sent_in_transaction(script, envelope).split(b"\r\n")[0] == (
        b"MAIL FROM:<ann@client.test> SIZE=999 BODY=8BITMIME"
    )
    plain = ready(EHLO_PLAIN)
    assert sent_in_transaction(plain, envelope).split(b"\r\n")[0] == b"MAIL FROM:<ann@client.test>"


def test_null_sender_for_bounces():
    script = ready()
    envelope = Envelope("", ("ann@client.test",))
    assert sent_in_transaction(script, envelope).startswith(b"MAIL FROM:<>\r\n")


def test_message_over_the_announced_size_is_refused_without_sending():
    script = ready()  # SIZE 10000
    assert sent_in_transaction(script, Envelope("a@b.test", ("c@d.test",), size=10001)) == b""
    events = script.take()
    outcome = events[0].results[0].outcome
    assert (outcome.kind, outcome.status, outcome.reply) == (Kind.PERMANENT, "5.3.4", None)
    assert isinstance(events[1], Ready)


def test_utf8_addresses_use_smtputf8_when_offered():
    script = ready()
    envelope = Envelope("ann@client.test", ("bjørn@exämple.test",), size=20)
    mail = "MAIL FROM:<ann@client.test> SIZE=20 SMTPUTF8\r\n"
    rcpt = "RCPT TO:<bjørn@exämple.test>\r\n"
    assert sent_in_transaction(script, envelope) == f"{mail}{rcpt}DATA\r\n".encode()


@pytest.mark.parametrize(
    "envelope",
    [
        Envelope("ann@client.test", ("bjørn@example.test",)),
        Envelope("zoë@client.test", ("bob@example.test",)),
        Envelope("ann@client.test", ("bob@example.test",), smtputf8=True),
    ],
)
def test_message_needing_smtputf8_bounces_when_it_is_not_offered(envelope):
    script = ready(EHLO_PLAIN)
    assert sent_in_transaction(script, envelope) == b""
    outcome = script.results()[envelope.recipients[0]]
    assert (outcome.kind, outcome.status) == (Kind.PERMANENT, "5.6.7")


@pytest.mark.parametrize(
    "recipient",
    [
        "bob@example.test>\r\nRCPT TO:<evil@x.test",
        "a\nb@x.test",
        "<b@x.test>",
        "",
        "b\udc80@x.test",
    ],
)
def test_recipient_that_would_break_the_command_is_refused_here(recipient):
    script = ready()
    envelope = Envelope("ann@client.test", (recipient, "eve@example.test"))
    assert sent_in_transaction(script, envelope) == (
        b"MAIL FROM:<ann@client.test>\r\nRCPT TO:<eve@example.test>\r\nDATA\r\n"
    )
    script.server(MAIL_OK + RCPT_OK + GO_AHEAD)
    script.send_body(b"x\r\n")
    script.server(QUEUED)
    assert script.results()["eve@example.test"].kind is Kind.DELIVERED
    outcome = script.results()[recipient]
    assert (outcome.kind, outcome.status, outcome.reply) == (Kind.PERMANENT, "5.1.3", None)


def test_sender_that_would_break_the_command_is_refused_here():
    script = ready()
    envelope = Envelope("ann@client.test>\r\nDATA", ("bob@example.test",))
    assert sent_in_transaction(script, envelope) == b""
    assert script.results()["bob@example.test"].status == "5.1.7"


def test_message_whose_every_recipient_is_bad_sends_nothing():
    script = ready()
    assert sent_in_transaction(script, Envelope("a@b.test", ("x\r\n@y.test",))) == b""
    assert isinstance(script.take()[-1], Ready)
    assert script.results()["x\r\n@y.test"].status == "5.1.3"


def test_message_without_recipients_is_a_programming_error():
    script = ready()
    with pytest.raises(ValueError):
        script.conn.send_message(Envelope("a@b.test", ()))


def test_send_message_before_ready_raises():
    script = Script()
    with pytest.raises(RuntimeError):
        script.conn.send_message(ONE)


# -- several messages over one connection -----------------------------------------------


def test_second_message_starts_with_rset_in_the_same_group():
    script = ready()
    sent_in_transaction(script)
    script.server(MAIL_OK + RCPT_OK + GO_AHEAD)
    script.send_body(b"one\r\n")
    script.server(QUEUED)
    assert sent_in_transaction(script) == (
        b"RSET\r\nMAIL FROM:<ann@client.test> SIZE=20\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    )
    assert script.conn.waiting_for.name == "rset"
    script.server(b"250 2.0.0 Ok\r\n" + MAIL_OK + RCPT_OK + GO_AHEAD)
    assert script.send_body(b"two\r\n") == b"two\r\n.\r\n"
    script.server(QUEUED)
    assert [type(e) for e in script.take()] == [SendBody, MessageResult, Ready] * 2


def test_refused_rset_closes_the_connection():
    script = ready(EHLO_PLAIN)
    sent_in_transaction(script)
    script.server(b"550 no\r\n")
    assert sent_in_transaction(script) == b"RSET\r\n"
    assert script.server(b"500 5.5.2 what\r\n") == b"QUIT\r\n"
    outcome = script.results()["bob@example.test"]
    assert (outcome.kind, outcome.command) == (Kind.TEMPORARY, "RSET")
    assert script.closed().outcome == outcome


def test_quit_then_closed_without_an_outcome():
    script = ready()
    script.conn.quit()
    assert script.conn.data_to_send() == b"QUIT\r\n"
    assert script.conn.waiting_for.name == "quit"
    script.server(b"221 2.0.0 Bye\r\n")
    assert script.take() == [Closed(None)]
    assert script.conn.closed


def test_connection_lost_while_quitting_is_no_failure():
    script = ready()
    script.conn.quit()
    script.server(b"")
    assert script.take() == [Closed(None)]


# -- the connection failing -------------------------------------------------------------


def test_421_in_the_middle_fails_what_is_open_and_closes():
    script = ready()
    sent_in_transaction(script, TWO)
    assert script.server(MAIL_OK + RCPT_OK + b"421 4.3.2 shutting down\r\n") == b""
    results = script.results()
    assert {o.reply.code for o in results.values()} == {421}
    assert {o.kind for o in results.values()} == {Kind.TEMPORARY}
    assert script.closed().outcome.command == "RCPT TO"


def test_connection_closed_during_the_content_fails_the_accepted_recipients():
    script = ready()
    sent_in_transaction(script, TWO)
    script.server(MAIL_OK + RCPT_OK + b"550 5.1.1 no\r\n" + GO_AHEAD)
    script.conn.send_body(b"partial")
    script.server(b"")
    results = script.results()
    assert results["bob@example.test"].kind is Kind.TEMPORARY
    assert results["bob@example.test"].status == "4.4.2"
    assert results["bob@example.test"].text == "connection closed by the host"
    assert results["eve@example.test"].kind is Kind.PERMANENT
    assert script.conn.send_body(b"more") == []
    assert script.conn.end_body() == b""


def test_connection_lost_after_the_end_of_data_is_temporary():
    script = ready()
    sent_in_transaction(script)
    script.server(MAIL_OK + RCPT_OK + GO_AHEAD)
    script.send_body(b"x\r\n")
    script.conn.connection_lost("Connection reset by peer")
    script.server(b"")
    outcome = script.results()["bob@example.test"]
    assert (outcome.kind, outcome.text) == (Kind.TEMPORARY, "Connection reset by peer")
    assert len([e for e in script.events if isinstance(e, Closed)]) == 1


def test_reply_before_the_end_of_the_content_decides_and_closes():
    script = ready()
    sent_in_transaction(script)
    script.server(MAIL_OK + RCPT_OK + GO_AHEAD)
    script.conn.send_body(b"Subject: big\r\n")
    assert script.server(b"552 5.3.4 message too big\r\n") == b""
    assert not script.conn.wants_body
    assert script.conn.send_body(b"more") == []
    outcome = script.results()["bob@example.test"]
    assert (outcome.kind, outcome.status) == (Kind.PERMANENT, "5.3.4")
    assert script.closed().outcome.kind is Kind.TEMPORARY


@pytest.mark.parametrize(
    ("setup", "name", "seconds"),
    [
        ("greeting", "greeting", 300),
        ("ehlo", "command", 300),
        ("mail", "mail", 300),
        ("data", "data_init", 120),
        ("body", "data_block", 180),
        ("end", "data_termination", 600),
    ],
)
def test_each_wait_names_its_rfc_5321_timeout(setup, name, seconds):
    script = Script()
    steps = ["greeting", "ehlo", "mail", "data", "body", "end"]
    if steps.index(setup) >= 1:
        script.server(GREETING)
    if steps.index(setup) >= 2:
        script.server(EHLO_PIPELINING)
        script.conn.send_message(ONE)
    if steps.index(setup) >= 3:
        script.server(MAIL_OK + RCPT_OK)
    if steps.index(setup) >= 4:
        script.server(GO_AHEAD)
    if steps.index(setup) >= 5:
        script.send_body(b"x\r\n")
    assert (script.conn.waiting_for.name, script.conn.waiting_for.seconds) == (name, seconds)


def test_no_timeout_while_ready_and_timeouts_are_settings():
    script = ready(timeouts=Timeouts(mail=7.5))
    assert script.conn.waiting_for is None
    script.conn.send_message(ONE)
    assert script.conn.waiting_for.seconds == 7.5


def test_timeout_fails_what_is_open_naming_the_timeout():
    script = ready()
    sent_in_transaction(script)
    script.server(MAIL_OK)
    script.conn.timed_out()
    script.server(b"")
    outcome = script.results()["bob@example.test"]
    assert (outcome.kind, outcome.status) == (Kind.TEMPORARY, "4.4.2")
    assert outcome.text == "timed out waiting (rcpt timeout)"
    assert script.closed().outcome == outcome


def test_nothing_counts_after_closing():
    script = ready()
    script.server(b"421 bye\r\n")
    script.take()
    assert script.server(b"250 late\r\n") == b""
    script.conn.timed_out()
    script.conn.connection_lost("again")
    assert script.take() == []


# -- dot-stuffing -----------------------------------------------------------------------


def stuffed(*chunks: bytes) -> bytes:
    stuffer = DotStuffer()
    out = b"".join(bytes(piece) for chunk in chunks for piece in stuffer.feed(chunk))
    return out + stuffer.end()


@pytest.mark.parametrize(
    ("content", "data"),
    [
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b"a", b"a\r\n.\r\n"),  # the last line end is added
        (b".\r\n", b"..\r\n.\r\n"),
        (b".a\r\n.\r\n..\r\n", b"..a\r\n..\r\n...\r\n.\r\n"),
        (b"a\r\n.b\r\nc.\r\n", b"a\r\n..b\r\nc.\r\n.\r\n"),
        # Bare line ends become CRLF (RFC 5321 2.3.8), so no smuggled end can pass.
        (b"a\n.\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r.\rb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n.\n", b"a\r\n..\r\n.\r\n"),
        (b"a\n.\r\nrest\r\n", b"a\r\n..\r\nrest\r\n.\r\n"),
        (b"a\r", b"a\r\n.\r\n"),
        (b"\r\r\n\n", b"\r\n\r\n\r\n.\r\n"),
        (b"\xff\xfe 8-bit\r\n", b"\xff\xfe 8-bit\r\n.\r\n"),
    ],
)
def test_content_is_dot_stuffed_and_line_ends_made_crlf(content, data):
    assert stuffed(content) == data


@pytest.mark.parametrize("content", [b"a\r\n.b\r\n", b"\r\r\n\n.x", b"x\r", b".\r.\n.\r\n.", b"ab"])
def test_split_anywhere_the_content_gives_the_same_data(content):
    whole = stuffed(content)
    for cut in range(len(content) + 1):
        assert stuffed(content[:cut], content[cut:]) == whole, cut
    assert stuffed(*[content[i : i + 1] for i in range(len(content))]) == whole


@given(
    content=st.binary(max_size=300).map(lambda b: b.replace(b"x", b"\r\n.")),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=10),
)
def test_any_split_of_any_content_gives_the_same_data(content, cuts):
    bounds = sorted({0, len(content), *(c for c in cuts if c <= len(content))})
    chunks = [content[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
    data = stuffed(*chunks)
    assert data == stuffed(content)
    body = data[: -len(b".\r\n")]
    # Only CRLF line ends, and no line that is a lone dot before the end.
    assert body.count(b"\r") == body.count(b"\n") == body.count(b"\r\n")
    assert b"\r\n.\r\n" not in b"\r\n" + body


def test_content_is_sent_as_slices_of_itself():
    content = bytearray(b"line\r\n" * 1000 + b".dot\r\n" + b"tail\r\n" * 1000)
    pieces = DotStuffer().feed(content)
    views = [piece for piece in pieces if isinstance(piece, memoryview)]
    assert all(view.obj is content for view in views)
    assert [bytes(p) for p in pieces if not isinstance(p, memoryview)] == [b"."]


def test_ten_megabytes_of_content_are_not_copied():
    content = (b"x" * 78 + b"\r\n") * (10 * 1024 * 1024 // 80)
    stuffer = DotStuffer()
    tracemalloc.start()
    try:
        pieces = [
            stuffer.feed(memoryview(content)[i : i + 65536]) for i in range(0, len(content), 65536)
        ]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024
    assert sum(len(p) for chunk in pieces for p in chunk) == len(content)
    assert stuffer.octets == len(content)


def test_eight_bit_content_is_recognised():
    assert has_eight_bit(b"caf\xc3\xa9")
    assert not has_eight_bit(memoryview(b"plain ascii\r\n"))


# -- against the appliance's own server core --------------------------------------------

ACCOUNT = ("ann@example.test", "correct horse")


def converse(client: ClientConnection, server: ServerConnection, outbox, bodies) -> list:
    """Move bytes between the two cores as two sessions would; the client's events."""
    received = []
    events = []
    for _ in range(1000):
        moved = False
        if data := client.data_to_send():
            server.receive_data(data)
            moved = True
        while (event := server.next_event()) is not None:
            moved = True
            if isinstance(event, Authenticate):
                if (event.username, event.password) == ACCOUNT:
                    server.auth_succeeded(event.username)
                else:
                    server.auth_failed()
            elif isinstance(event, MessageReceived):
                received.append(bytes(event.content))
                server.respond(Reply(250, "2.0.0", f"Ok: queued as {len(received)}"))
            else:
                server.respond(None)
        if data := server.data_to_send():
            client.receive_data(
                data.replace(b"AUTH PLAIN LOGIN", outbox.get("auth", b"AUTH PLAIN LOGIN"))
            )
            moved = True
        while (event := client.next_event()) is not None:
            moved = True
            events.append(event)
            if isinstance(event, Ready):
                if outbox["messages"]:
                    client.send_message(outbox["messages"].pop(0))
                else:
                    client.quit()
            elif isinstance(event, SendBody):
                body = bodies.pop(0)
                for i in range(0, len(body), 7):  # odd chunks: lines split everywhere
                    for piece in client.send_body(body[i : i + 7]):
                        server.receive_data(bytes(piece))
                server.receive_data(client.end_body())
        if not moved:
            break
    return events, received


BODIES = [
    b"Subject: one\r\n\r\n.\r\n..\r\n.leading dot\r\n",
    b"Subject: two\r\n\r\ncaf\xc3\xa9 8-bit\r\n",
    b"Subject: three\r\n\r\nno final line end",
]


def test_messages_pass_through_our_server_core_byte_exact():
    server = ServerConnection("mx.example.test")
    server.greet()
    client = ClientConnection("client.test", "mx")
    envelopes = [
        Envelope("ann@client.test", ("bob@example.test",), size=len(BODIES[0])),
        Envelope("ann@client.test", ("bob@example.test", "eve@example.test"), eight_bit=True),
        Envelope("ann@client.test", ("bjørn@example.test",)),
    ]
    events, received = converse(client, server, {"messages": envelopes}, list(BODIES))
    assert received == [*BODIES[:2], BODIES[2] + b"\r\n"]
    results = [e for e in events if isinstance(e, MessageResult)]
    assert [[r.outcome.kind for r in m.results] for m in results] == [
        [Kind.DELIVERED],
        [Kind.DELIVERED, Kind.DELIVERED],
        [Kind.DELIVERED],
    ]
    assert results[1].results[0].outcome.text == "Ok: queued as 2"
    assert events[-1] == Closed(None)


@pytest.mark.parametrize("offered", [b"AUTH PLAIN LOGIN", b"AUTH LOGIN", b"AUTH PLAIN"])
def test_auth_against_our_submission_core(offered):
    server = ServerConnection("mx.example.test", tls_active=True, submission=True)
    server.greet()
    client = ClientConnection(
        "client.test", "mx", tls_active=True, credentials=Credentials(*ACCOUNT)
    )
    outbox = {"messages": [Envelope("ann@example.test", ("bob@else.test",))], "auth": offered}
    events, received = converse(client, server, outbox, [b"Subject: hi\r\n\r\nhello\r\n"])
    assert received == [b"Subject: hi\r\n\r\nhello\r\n"]
    assert server.identity == "ann@example.test"


def test_wrong_password_against_our_submission_core():
    server = ServerConnection("mx.example.test", tls_active=True, submission=True)
    server.greet()
    client = ClientConnection(
        "client.test", "mx", tls_active=True, credentials=Credentials(ACCOUNT[0], "wrong")
    )
    outbox = {"messages": [Envelope("ann@example.test", ("bob@else.test",))]}
    events, received = converse(client, server, outbox, [b"x\r\n"])
    assert received == []
    assert events[-1].outcome.reply.code == 535
    assert events[-1].outcome.kind is Kind.TEMPORARY


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(
        st.one_of(
            st.sampled_from([b"", b".", b"..", b". x", b"x.", b"\xc3\xa9"]),
            st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        ),
        max_size=30,
    )
)
def test_any_crlf_content_arrives_unchanged_at_our_server_core(lines):
    body = b"".join(line + b"\r\n" for line in lines)
    server = ServerConnection("mx.example.test")
    server.greet()
    client = ClientConnection("client.test", "mx")
    envelope = Envelope("a@client.test", ("b@example.test",), eight_bit=has_eight_bit(body))
    _, received = converse(client, server, {"messages": [envelope]}, [body])
    assert received == [body]
