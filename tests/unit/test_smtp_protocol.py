"""The sans-IO SMTP server core, driven with byte strings as the session would."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.smtp.protocol import (
    Hello,
    Limits,
    MailFrom,
    MessageReceived,
    MessageRefused,
    RcptTo,
    Reply,
    ServerConnection,
    StartTLS,
)

HOST = "mx.example.test"
QUEUED = Reply(250, "2.0.0", "Ok: queued as TEST")
OPEN = b"EHLO client.test\r\nMAIL FROM:<ann@example.test>\r\nRCPT TO:<bob@example.test>\r\n"
OPEN_REPLIES = ["250 2.1.0 Ok", "250 2.1.5 Ok"]
EHLO_REPLY = [
    f"250-{HOST}",
    "250-PIPELINING",
    "250-SIZE 52428800",
    "250-8BITMIME",
    "250-ENHANCEDSTATUSCODES",
    "250-SMTPUTF8",
    "250-CHUNKING",
]
BARE_LINE_END = (
    "550 5.6.0 Message contains bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)"
)


def accept_all(event):
    return QUEUED if isinstance(event, MessageReceived) else None


class Client:
    """Feeds a ServerConnection like the session does and records what comes out."""

    def __init__(self, answer=accept_all, limits=None, tls_available=True, tls_active=False):
        self.conn = ServerConnection(
            HOST, limits=limits or Limits(), tls_available=tls_available, tls_active=tls_active
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
            self.conn.respond(self.answer(event))

    def replies(self) -> list[str]:
        output = self.conn.data_to_send()
        assert output == b"" or output.endswith(b"\r\n")
        return output.decode().split("\r\n")[:-1]

    def of(self, kind) -> list:
        return [event for event in self.events if isinstance(event, kind)]

    @property
    def messages(self) -> list[bytes]:
        return [event.content for event in self.of(MessageReceived)]


def ehlo_replies(client: Client) -> list[str]:
    return client.send(b"EHLO client.test\r\n")


def opened(**kwargs) -> Client:
    client = Client(**kwargs)
    client.send(OPEN)
    return client


# -- replies ----------------------------------------------------------------------------


def test_reply_single_line_carries_enhanced_status():
    assert Reply(250, "2.1.0", "Ok").to_bytes() == b"250 2.1.0 Ok\r\n"


def test_reply_multiline_uses_continuation_and_status_on_each_line():
    reply = Reply(550, "5.7.1", ("first", "second", "third"))
    assert reply.to_bytes() == b"550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n"


def test_reply_without_status_prints_none():
    assert Reply(250, "", ("a", "b")).to_bytes() == b"250-a\r\n250 b\r\n"


def test_reply_is_error_from_4xx():
    assert Reply(452, "4.5.3", "x").is_error
    assert Reply(554, "5.5.1", "x").is_error
    assert not Reply(354, "", "x").is_error


# -- greeting and the whole conversation ------------------------------------------------


def test_greeting_names_the_host():
    assert Client().greeting == b"220 mx.example.test ESMTP ready\r\n"


def test_refuse_queues_reply_and_closes():
    conn = ServerConnection(HOST)
    conn.refuse(Reply(421, "4.7.0", "Too many connections"))
    assert conn.data_to_send() == b"421 4.7.0 Too many connections\r\n"
    assert conn.closed


def test_full_transaction_delivers_message():
    client = Client()
    replies = client.send(b"EHLO client.test\r\n")
    assert replies[-1] == "250 STARTTLS"
    assert client.send(b"MAIL FROM:<ann@example.test>\r\n") == ["250 2.1.0 Ok"]
    assert client.conn.mail_from == "ann@example.test"
    assert client.send(b"RCPT TO:<bob@example.test>\r\n") == ["250 2.1.5 Ok"]
    assert client.conn.recipients == ("bob@example.test",)
    assert client.send(b"DATA\r\n") == ["354 End data with <CR><LF>.<CR><LF>"]
    assert client.conn.in_message
    assert client.send(b"Subject: hi\r\n\r\nHello\r\n.\r\n") == ["250 2.0.0 Ok: queued as TEST"]
    assert client.send(b"QUIT\r\n") == ["221 2.0.0 Bye"]
    assert client.conn.closed
    assert client.events == [
        Hello("EHLO", "client.test"),
        MailFrom("ann@example.test", False, "7BIT", None),
        RcptTo("bob@example.test"),
        MessageReceived(b"Subject: hi\r\n\r\nHello\r\n", "DATA"),
    ]


def test_pipelined_commands_in_one_chunk_are_answered_in_order():
    client = Client()
    replies = client.send(
        OPEN + b"RCPT TO:<cat@example.test>\r\nDATA\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n"
    )
    assert replies[len(EHLO_REPLY) + 1 :] == [
        *OPEN_REPLIES,
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
        "250 2.0.0 Ok: queued as TEST",
        "250 2.0.0 Ok",
        "221 2.0.0 Bye",
    ]
    assert client.messages == [b"body\r\n"]


def test_pipelined_commands_wait_for_the_pending_event():
    conn = ServerConnection(HOST)
    conn.receive_data(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    assert conn.next_event() == Hello("EHLO", "c")
    assert conn.next_event() is None
    conn.respond(None)
    assert conn.next_event() == MailFrom("a@b.test", False, "7BIT", None)
    conn.respond(Reply(451, "4.3.0", "try later"))
    # The MAIL was refused, so this RCPT comes before any MAIL.
    assert conn.next_event() is None
    assert conn.data_to_send().decode().split("\r\n")[-3:] == [
        "451 4.3.0 try later",
        "503 5.5.1 Error: need MAIL command",
        "",
    ]


def test_respond_without_pending_event_raises():
    conn = ServerConnection(HOST)
    with pytest.raises(RuntimeError):
        conn.respond(None)


def test_respond_before_next_event_raises():
    conn = ServerConnection(HOST)
    conn.receive_data(b"EHLO c\r\n")
    with pytest.raises(RuntimeError):
        conn.respond(None)


def test_message_received_has_no_default_reply():
    client = opened(answer=lambda event: None)
    client.conn.receive_data(b"DATA\r\nx\r\n.\r\n")
    assert isinstance(client.conn.next_event(), MessageReceived)
    with pytest.raises(RuntimeError):
        client.conn.respond(None)


def test_transaction_resets_after_message_whatever_the_reply():
    client = opened(
        answer=lambda e: Reply(451, "4.3.0", "later") if isinstance(e, MessageReceived) else None
    )
    assert client.send(b"DATA\r\nx\r\n.\r\n")[-1] == "451 4.3.0 later"
    assert client.conn.mail_from is None
    assert client.conn.recipients == ()
    assert client.send(b"MAIL FROM:<>\r\n") == ["250 2.1.0 Ok"]


SCRIPTS = {
    "data": OPEN + b"DATA\r\n..dot\r\n\r\nline\r\n.\r\nRSET\r\nQUIT\r\n",
    "first line dot": OPEN + b"DATA\r\n.\r\nNOOP\r\n",
    "bdat": OPEN + b"BDAT 5\r\nhelloBDAT 8 LAST\r\n\r\n.\r\nxyzNOOP\r\n",
    "bdat without mail": b"EHLO c\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n",
    "smuggling": OPEN + b"DATA\r\nx\n.\nMAIL FROM:<e@v.test>\r\n.\r\nNOOP\r\n",
    "errors": b"FOO\r\nMAIL FROM:<a@b>\r\nEHLO\r\nNO\x00OP\r\nHELO h\r\nRCPT TO:<x>\r\n",
    "bare lf lines": b"EHLO c\nMAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\nDATA\nx\r\n.\r\n",
    "crlf split": OPEN + b"DATA\r\na\r\r\n.\r\n\r\n.\r\nQUIT\r\n",
    "long line": b"NOOP " + b"x" * 5000 + b"\r\nNOOP\r\n",
}


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("step", [1, 2, 3, 7])
def test_splitting_input_at_any_boundary_changes_nothing(name, step):
    whole, split = Client(), Client()
    expected = whole.send(SCRIPTS[name])
    assert split.send(SCRIPTS[name], step=step) == expected
    assert split.events == whole.events
    assert split.conn.closed == whole.conn.closed


def test_eof_closes_and_drops_unfinished_message():
    client = opened()
    client.send(b"DATA\r\npartial\r\n")
    client.conn.receive_data(b"")
    assert client.conn.closed
    assert client.conn.next_event() is None
    assert client.messages == []


def test_input_after_quit_is_ignored():
    client = Client()
    assert client.send(b"QUIT\r\nEHLO c\r\n") == ["221 2.0.0 Bye"]
    assert client.send(b"EHLO c\r\n") == []
    assert client.events == []


def test_timeout_says_421_and_closes():
    conn = ServerConnection(HOST)
    conn.timeout()
    assert conn.data_to_send() == b"421 4.4.2 mx.example.test Error: timeout exceeded\r\n"
    assert conn.closed


def test_shutdown_says_421_and_closes():
    conn = ServerConnection(HOST)
    conn.shutdown()
    assert conn.data_to_send() == b"421 4.3.2 mx.example.test Service shutting down\r\n"
    assert conn.closed


def test_session_reply_421_closes():
    client = Client(answer=lambda event: Reply(421, "4.3.2", "going down"))
    assert client.send(b"EHLO c\r\nNOOP\r\n") == ["421 4.3.2 going down"]
    assert client.conn.closed


# -- EHLO / HELO ------------------------------------------------------------------------


def test_ehlo_lists_extensions_and_starttls_when_available():
    assert ehlo_replies(Client(tls_available=True)) == [*EHLO_REPLY, "250 STARTTLS"]


def test_ehlo_omits_starttls_without_tls():
    expected = [*EHLO_REPLY[:-1], "250 CHUNKING"]
    assert ehlo_replies(Client(tls_available=False)) == expected


def test_ehlo_omits_starttls_once_tls_is_active():
    expected = [*EHLO_REPLY[:-1], "250 CHUNKING"]
    assert ehlo_replies(Client(tls_available=True, tls_active=True)) == expected


def test_ehlo_size_follows_the_limit():
    replies = ehlo_replies(Client(limits=Limits(max_message_size=1000)))
    assert "250-SIZE 1000" in replies


def test_helo_replies_with_hostname_only():
    client = Client()
    assert client.send(b"HELO client.test\r\n") == [f"250 {HOST}"]
    assert client.events == [Hello("HELO", "client.test")]
    assert client.conn.helo == "client.test"


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO"])
def test_hello_without_domain_is_syntax_error(verb):
    name = verb.decode()
    assert Client().send(verb + b"\r\n") == [f"501 5.5.4 Syntax: {name} hostname"]


def test_rejected_ehlo_leaves_session_without_hello():
    client = Client(answer=lambda event: Reply(550, "5.7.1", "go away"))
    assert client.send(b"EHLO bad\r\nMAIL FROM:<a@b.test>\r\n") == [
        "550 5.7.1 go away",
        "503 5.5.1 Error: send HELO/EHLO first",
    ]
    assert client.conn.helo is None


def test_ehlo_again_resets_the_transaction():
    client = opened()
    client.send(b"EHLO again.test\r\n")
    assert client.conn.mail_from is None
    assert client.send(b"RCPT TO:<bob@example.test>\r\n") == ["503 5.5.1 Error: need MAIL command"]


def test_verbs_are_case_insensitive():
    client = Client()
    client.send(b"ehlo c\r\n")
    assert client.send(b"mAiL fRoM:<a@b.test>\r\nrcpt to:<c@d.test>\r\nNoOp\r\n") == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "250 2.0.0 Ok",
    ]


# -- command lines ----------------------------------------------------------------------


def test_command_lines_may_end_in_bare_lf():
    client = Client()
    assert client.send(b"EHLO c\nNOOP\n")[-1] == "250 2.0.0 Ok"
    assert client.events == [Hello("EHLO", "c")]


def test_line_at_the_limit_is_read_one_past_is_refused():
    client = Client(limits=Limits(max_command_line=16))
    assert client.send(b"NOOP 123456789\r\n") == ["250 2.0.0 Ok"]  # 16 octets with CRLF
    assert client.send(b"NOOP 1234567890\r\n") == ["500 5.5.2 Line too long"]


def test_megabyte_command_line_is_refused_and_session_continues():
    client = Client()
    line = b"MAIL FROM:<" + b"a" * 1_000_000 + b"@example.test>\r\n"
    for start in range(0, len(line), 65536):
        assert client.send(line[start : start + 65536]) in ([], ["500 5.5.2 Line too long"])
        assert client.conn.buffered <= Limits().max_command_line
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]
    assert client.events == []


def test_endless_line_without_lf_keeps_buffer_bounded():
    client = Client()
    chunk = b"x" * 1_048_576
    for _ in range(100):
        client.conn.receive_data(chunk)
        assert client.conn.buffered <= Limits().max_command_line
    assert client.send(b"\r\nNOOP\r\n") == ["500 5.5.2 Line too long", "250 2.0.0 Ok"]


@pytest.mark.parametrize(
    "line",
    [b"\x00" * 200, b"NOOP\x00", b"EHLO c\x00\x00", b"NO\rOP", b"NOOP \x1b[31m", b"\x7f"],
)
def test_control_characters_in_command_are_syntax_error(line):
    client = Client()
    assert client.send(line + b"\r\nNOOP\r\n") == ["500 5.5.2 Syntax error", "250 2.0.0 Ok"]
    assert client.events == []


@pytest.mark.parametrize("line", [b"FOO", b"", b"MAILFROM:<a@b>", b" NOOP", b"\xff\xfe"])
def test_unknown_command_is_refused(line):
    assert Client().send(line + b"\r\n") == ["500 5.5.2 Error: command not recognized"]


def test_simple_commands():
    client = Client()
    assert client.send(
        b"NOOP anything\r\nRSET\r\nRSET x\r\nHELP\r\nVRFY ann\r\nVRFY\r\nEXPN list\r\n"
    ) == [
        "250 2.0.0 Ok",
        "250 2.0.0 Ok",
        "501 5.5.4 Syntax: RSET",
        "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS",
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery",
        "501 5.5.4 Syntax: VRFY address",
        "502 5.5.1 Error: command not implemented",
    ]


# -- command order ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        (b"MAIL FROM:<a@b.test>\r\n", "503 5.5.1 Error: send HELO/EHLO first"),
        (b"EHLO c\r\nRCPT TO:<a@b.test>\r\n", "503 5.5.1 Error: need MAIL command"),
        (b"EHLO c\r\nDATA\r\n", "503 5.5.1 Error: need MAIL command"),
        (b"EHLO c\r\nMAIL FROM:<>\r\nMAIL FROM:<>\r\n", "503 5.5.1 Error: nested MAIL command"),
        (b"EHLO c\r\nMAIL FROM:<>\r\nDATA\r\n", "554 5.5.1 Error: no valid recipients"),
        (
            b"EHLO c\r\nMAIL FROM:<>\r\nRSET\r\nRCPT TO:<a@b.test>\r\n",
            "503 5.5.1 Error: need MAIL command",
        ),
        (OPEN + b"DATA extra\r\n", "501 5.5.4 Syntax error"),
    ],
)
def test_commands_out_of_order_are_refused(script, reply):
    assert Client().send(script)[-1] == reply


def test_rejected_mail_starts_no_transaction():
    client = Client(answer=lambda e: Reply(550, "5.7.1", "no") if isinstance(e, MailFrom) else None)
    replies = client.send(b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n")
    assert replies[-2:] == ["550 5.7.1 no", "503 5.5.1 Error: need MAIL command"]
    assert client.conn.mail_from is None


def test_rejected_recipient_is_not_counted():
    def answer(event):
        if isinstance(event, RcptTo) and event.address.startswith("nobody"):
            return Reply(550, "5.1.1", f"<{event.address}>: Recipient address rejected")
        return accept_all(event)

    client = Client(answer=answer)
    replies = client.send(
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<nobody@d.test>\r\nDATA\r\n"
        b"RCPT TO:<bob@d.test>\r\n"
    )
    assert replies[-3:] == [
        "550 5.1.1 <nobody@d.test>: Recipient address rejected",
        "554 5.5.1 Error: no valid recipients",
        "250 2.1.5 Ok",
    ]
    assert client.conn.recipients == ("bob@d.test",)


def test_recipients_past_the_limit_get_452_without_event():
    client = Client(limits=Limits(max_recipients=2))
    replies = client.send(
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\n"
        + b"".join(b"RCPT TO:<r%d@d.test>\r\n" % i for i in range(3))
    )
    assert replies[-3:] == ["250 2.1.5 Ok", "250 2.1.5 Ok", "452 4.5.3 Error: too many recipients"]
    assert client.conn.recipients == ("r0@d.test", "r1@d.test")
    assert len(client.of(RcptTo)) == 2


# -- MAIL and RCPT syntax ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "address"),
    [
        (b"<ann@example.test>", "ann@example.test"),
        (b"<>", ""),
        (b" <ann@example.test>", "ann@example.test"),
        (b"<first.last+tag@sub.example.test>", "first.last+tag@sub.example.test"),
        (b'<"john doe"@example.test>', '"john doe"@example.test'),
        (b'<"a\\"b>c"@example.test>', '"a\\"b>c"@example.test'),
        (b"<@relay.test,@hop.test:ann@example.test>", "ann@example.test"),
        (b"<ann@[192.0.2.1]>", "ann@[192.0.2.1]"),
        (b"<ann@[IPv6:2001:db8::1]>", "ann@[IPv6:2001:db8::1]"),
        (b"<ann@[ipv6:::ffff:192.0.2.1]>", "ann@[ipv6:::ffff:192.0.2.1]"),
        (b"<" + b"a" * 64 + b"@example.test>", "a" * 64 + "@example.test"),
    ],
)
def test_mail_from_accepts_valid_paths(path, address):
    client = Client()
    assert client.send(b"EHLO c\r\nMAIL FROM:" + path + b"\r\n")[-1] == "250 2.1.0 Ok"
    assert client.of(MailFrom) == [MailFrom(address, False, "7BIT", None)]


DOMAIN_189 = "a" * 63 + "." + "b" * 63 + "." + "c" * 61


@pytest.mark.parametrize(
    "path",
    [
        b"<ann>",
        b"ann@example.test",
        b"<ann@example.test",
        b"<ann@@example.test>",
        b"<.ann@example.test>",
        b"<ann.@example.test>",
        b"<a..b@example.test>",
        b"<ann@-example.test>",
        b"<ann@example-.test>",
        b"<ann@example..test>",
        b"<ann@[300.1.1.1]>",
        b"<ann@[IPv6:zz::1]>",
        b"<ann@[IPv6:fe80::1%eth0]>",
        b"<ann@[example.test]>",
        b"<ann@example.test>junk",
        b'<"unterminated@example.test>',
        b"<@relay.test:>",
        b"<postmaster>",
        b"<" + b"a" * 65 + b"@example.test>",
    ],
)
def test_mail_from_refuses_bad_paths(path):
    client = Client()
    assert client.send(b"EHLO c\r\nMAIL FROM:" + path + b"\r\n")[-1] == (
        "501 5.1.7 Bad sender address syntax"
    )
    assert client.of(MailFrom) == []


def test_path_of_256_octets_is_accepted_257_refused():
    client = Client()
    client.send(b"EHLO c\r\n")
    fits = f"<{'a' * 64}@{DOMAIN_189}>".encode()
    assert len(fits) == 256
    assert client.send(b"MAIL FROM:" + fits + b"\r\n") == ["250 2.1.0 Ok"]
    assert client.send(b"RCPT TO:<a" + fits[1:] + b"\r\n") == [
        "501 5.1.3 Bad recipient address syntax"
    ]


def test_mail_without_from_keyword_is_syntax_error():
    client = Client()
    assert (
        client.send(b"EHLO c\r\nMAIL TO:<a@b.test>\r\n")[-1]
        == "501 5.5.4 Syntax: MAIL FROM:<address>"
    )


@pytest.mark.parametrize(
    ("path", "address"),
    [
        (b"<bob@example.test>", "bob@example.test"),
        (b"<postmaster>", "postmaster"),
        (b"<PostMaster>", "PostMaster"),
        (b"<postmaster@example.test>", "postmaster@example.test"),
        (b"<@hop.test:bob@example.test>", "bob@example.test"),
    ],
)
def test_rcpt_to_accepts_valid_paths(path, address):
    client = Client()
    assert client.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:" + path + b"\r\n")[-1] == "250 2.1.5 Ok"
    assert client.of(RcptTo) == [RcptTo(address)]


@pytest.mark.parametrize("path", [b"<bob>", b"bob@example.test", b"<>", b"<postmaster>x"])
def test_rcpt_to_refuses_bad_paths(path):
    client = Client()
    replies = client.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:" + path + b"\r\n")
    assert replies[-1] == "501 5.1.3 Bad recipient address syntax"


def test_non_ascii_sender_needs_smtputf8():
    client = Client()
    replies = client.send("EHLO c\r\nMAIL FROM:<jörg@example.test>\r\n".encode())
    assert replies[-1] == "553 5.6.7 Non-ASCII address requires SMTPUTF8"


def test_non_ascii_addresses_accepted_with_smtputf8():
    client = Client()
    replies = client.send(
        "EHLO c\r\nMAIL FROM:<jörg@bücher.example> SMTPUTF8\r\n".encode()
        + "RCPT TO:<アン@例え.テスト>\r\n".encode()
    )
    assert replies[-2:] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    assert client.of(MailFrom) == [MailFrom("jörg@bücher.example", True, "7BIT", None)]
    assert client.of(RcptTo) == [RcptTo("アン@例え.テスト")]


def test_non_ascii_recipient_needs_smtputf8_on_mail():
    client = Client()
    replies = client.send(
        "EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<jörg@example.test>\r\n".encode()
    )
    assert replies[-1] == "553 5.6.7 Non-ASCII address requires SMTPUTF8"


def test_invalid_utf8_address_is_bad_syntax_even_with_smtputf8():
    client = Client()
    replies = client.send(b"EHLO c\r\nMAIL FROM:<j\xf6rg@example.test> SMTPUTF8\r\n")
    assert replies[-1] == "501 5.1.7 Bad sender address syntax"


@pytest.mark.parametrize(
    ("parameters", "event"),
    [
        (b" SIZE=1000", MailFrom("a@b.test", False, "7BIT", 1000)),
        (b" size=0 body=8bitmime", MailFrom("a@b.test", False, "8BITMIME", 0)),
        (b" BODY=7BIT SMTPUTF8", MailFrom("a@b.test", True, "7BIT", None)),
        (b"  SIZE=5  ", MailFrom("a@b.test", False, "7BIT", 5)),
    ],
)
def test_mail_parameters_are_read(parameters, event):
    client = Client()
    assert (
        client.send(b"EHLO c\r\nMAIL FROM:<a@b.test>" + parameters + b"\r\n")[-1] == "250 2.1.0 Ok"
    )
    assert client.of(MailFrom) == [event]


@pytest.mark.parametrize(
    ("parameters", "reply"),
    [
        (b" SIZE=1001", "552 5.3.4 Message size exceeds fixed limit"),
        (b" SIZE=big", "501 5.5.4 Syntax error in parameters"),
        (b" SIZE", "501 5.5.4 Syntax error in parameters"),
        (b" SIZE=1 SIZE=2", "501 5.5.4 Syntax error in parameters"),
        (b" =x", "501 5.5.4 Syntax error in parameters"),
        (b" SMTPUTF8=yes", "555 5.5.4 Unsupported parameter"),
        (b" BODY=BINARYMIME", "555 5.5.4 Unsupported parameter"),
        (b" RET=HDRS", "555 5.5.4 Unsupported parameter"),
        (b" ENVID=abc", "555 5.5.4 Unsupported parameter"),
        (b" AUTH=<>", "555 5.5.4 Unsupported parameter"),
    ],
)
def test_bad_mail_parameters_are_refused(parameters, reply):
    client = Client(limits=Limits(max_message_size=1000))
    assert client.send(b"EHLO c\r\nMAIL FROM:<a@b.test>" + parameters + b"\r\n")[-1] == reply
    assert client.of(MailFrom) == []


@pytest.mark.parametrize("parameters", [b" NOTIFY=NEVER", b" ORCPT=rfc822;bob@d.test"])
def test_rcpt_parameters_are_unsupported(parameters):
    client = Client()
    replies = client.send(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<bob@d.test>" + parameters + b"\r\n")
    assert replies[-1] == "555 5.5.4 Unsupported parameter"


# -- DATA -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stuffed", "content"),
    [
        (b".\r\n", b""),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"..first\r\n.\r\n", b".first\r\n"),
        (b"a\r\n..b\r\n...\r\nc.\r\n.\r\n", b"a\r\n.b\r\n..\r\nc.\r\n"),
        (b"\r\n\r\n.\r\n", b"\r\n\r\n"),
        (b"no dot. here\r\n.\r\n", b"no dot. here\r\n"),
    ],
)
def test_data_is_dot_unstuffed(stuffed, content):
    client = opened()
    client.send(b"DATA\r\n" + stuffed)
    assert client.messages == [content]


def test_eight_bit_content_without_8bitmime_is_kept_as_is():
    client = opened()
    client.send(b"DATA\r\n\xe9t\xe9 \x00\xff\r\n.\r\n")
    assert client.messages == [b"\xe9t\xe9 \x00\xff\r\n"]


def test_commands_after_data_wait_for_the_message_answer():
    conn = ServerConnection(HOST)
    conn.receive_data(OPEN)
    for _ in range(3):
        conn.next_event()
        conn.respond(None)
    conn.receive_data(b"DATA\r\nx\r\n.\r\nQUIT\r\n")
    assert conn.next_event() == MessageReceived(b"x\r\n", "DATA")
    assert not conn.closed
    conn.respond(QUEUED)
    assert conn.closed


@pytest.mark.parametrize("fake_end", [b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\n"])
def test_smuggled_end_of_data_is_body_and_message_is_refused(fake_end):
    client = opened()
    replies = client.send(
        b"DATA\r\nSubject: real\r\n\r\nhello"
        + fake_end
        + b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nevil\r\n.\r\nNOOP\r\n"
    )
    assert replies == ["354 End data with <CR><LF>.<CR><LF>", BARE_LINE_END, "250 2.0.0 Ok"]
    assert client.messages == []
    assert len(client.of(MailFrom)) == 1
    [refused] = client.of(MessageRefused)  # told to the session, for its log
    assert refused.reply.status == "5.6.0" and refused.size > 100
    assert client.conn.mail_from is None


@pytest.mark.parametrize("content", [b"a\nb\r\n", b"a\rb\r\n", b"a\r\r\n", b"\n\r\n", b"\r\r\n"])
def test_bare_cr_or_lf_in_message_is_refused(content):
    client = opened()
    replies = client.send(b"DATA\r\n" + content + b".\r\n")
    assert replies[-1] == BARE_LINE_END
    assert client.messages == []


@pytest.mark.parametrize("step", [None, 1])
def test_message_at_the_size_limit_is_accepted_even_with_stuffing(step):
    client = opened(limits=Limits(max_message_size=10))
    client.send(b"DATA\r\n..abc\r\n..e\r\n.\r\n", step=step)  # 12 octets sent, 10 unstuffed
    assert client.messages == [b".abc\r\n.e\r\n"]


@pytest.mark.parametrize("step", [None, 1])
def test_message_one_past_the_size_limit_is_refused_even_with_stuffing(step):
    client = opened(limits=Limits(max_message_size=10))
    replies = client.send(b"DATA\r\n..abcd\r\n..e\r\n.\r\n", step=step)
    assert replies[-1] == "552 5.3.4 Message size exceeds fixed limit"
    assert client.messages == []


def test_message_over_the_size_limit_is_refused_with_552():
    client = opened(limits=Limits(max_message_size=10))
    replies = client.send(b"DATA\r\n0123456789\r\n.\r\nMAIL FROM:<>\r\n")
    assert replies[-2:] == ["552 5.3.4 Message size exceeds fixed limit", "250 2.1.0 Ok"]
    assert client.messages == []


def test_data_without_end_keeps_buffer_bounded():
    limits = Limits(max_message_size=1_048_576)
    client = opened(limits=limits)
    client.send(b"DATA\r\n")
    chunk = b"0123456789abcd\r\n" * 4096  # 64 KiB
    tracemalloc.start()
    try:
        for _ in range(160):  # 10 MiB
            client.conn.receive_data(chunk)
            assert client.conn.buffered <= limits.max_message_size + len(chunk) + 8
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * limits.max_message_size
    assert client.conn.message_bytes_received == 160 * len(chunk)
    assert client.send(b".\r\n") == ["552 5.3.4 Message size exceeds fixed limit"]
    assert client.messages == []


def test_message_bytes_received_counts_the_content():
    client = opened()
    client.send(b"DATA\r\n")
    assert client.conn.in_message
    client.send(b"x" * 100)
    assert client.conn.message_bytes_received == 100
    client.send(b"\r\n.\r\n")
    assert not client.conn.in_message
    assert client.conn.message_bytes_received == 0  # the transaction is over


# -- BDAT -------------------------------------------------------------------------------


def test_bdat_last_in_one_read():
    client = opened()
    assert client.send(b"BDAT 11 LAST\r\nhello world") == ["250 2.0.0 Ok: queued as TEST"]
    assert client.events[-1] == MessageReceived(b"hello world", "BDAT")


def test_bdat_chunks_across_reads_are_joined():
    client = opened()
    assert client.send(b"BDAT 5\r\nhel") == []
    assert client.conn.in_message
    assert client.send(b"lo") == ["250 2.0.0 5 octets received"]
    assert client.send(b"bdat 6 last\r\n wor") == []
    assert client.send(b"ld") == ["250 2.0.0 Ok: queued as TEST"]
    assert client.messages == [b"hello world"]


def test_bdat_content_is_taken_verbatim():
    client = opened()
    content = b"QUIT\r\n.\r\n\n.\n\r\x00..x"
    client.send(b"BDAT %d LAST\r\n" % len(content) + content)
    assert client.messages == [content]
    assert not client.conn.closed


def test_bdat_with_next_command_in_the_same_read():
    client = opened()
    assert client.send(b"BDAT 3 LAST\r\nabcQUIT\r\n") == [
        "250 2.0.0 Ok: queued as TEST",
        "221 2.0.0 Bye",
    ]
    assert client.messages == [b"abc"]


def test_bdat_zero_last_ends_the_message():
    client = opened()
    client.send(b"BDAT 3\r\nabcBDAT 0 LAST\r\n")
    assert client.messages == [b"abc"]


def test_bdat_without_mail_still_consumes_the_chunk():
    client = Client()
    client.send(b"EHLO c\r\n")
    replies = client.send(b"BDAT 12\r\nQUIT\r\nRSET\r\nNOOP\r\n")
    assert replies == ["503 5.5.1 Error: need MAIL command", "250 2.0.0 Ok"]
    assert not client.conn.closed


def test_refused_bdat_refuses_the_rest_of_the_message():
    client = Client()
    client.send(b"EHLO c\r\nMAIL FROM:<>\r\n")
    replies = client.send(b"BDAT 3\r\nabcRCPT TO:<bob@d.test>\r\nBDAT 3 LAST\r\ndef")
    assert replies == [
        "554 5.5.1 Error: no valid recipients",
        "250 2.1.5 Ok",
        "554 5.5.1 Error: no valid recipients",
    ]
    assert client.messages == []
    assert client.send(b"MAIL FROM:<>\r\n") == ["250 2.1.0 Ok"]


def test_bdat_over_the_size_limit_is_refused_after_reading_it():
    client = opened(limits=Limits(max_message_size=10))
    replies = client.send(b"BDAT 6\r\nabcdefBDAT 6 LAST\r\nghijklNOOP\r\n")
    assert replies == [
        "250 2.0.0 6 octets received",
        "552 5.3.4 Message size exceeds fixed limit",
        "250 2.0.0 Ok",
    ]
    assert client.messages == []


@pytest.mark.parametrize("arguments", [b"", b"x", b"-1", b"5 FIRST", b"5 LAST x", b"1" * 21])
def test_bdat_with_bad_size_is_syntax_error(arguments):
    client = opened()
    assert client.send(b"BDAT " + arguments + b"\r\n") == ["501 5.5.4 Syntax error"]


def test_data_after_bdat_is_refused():
    client = opened()
    replies = client.send(b"BDAT 2\r\nabDATA\r\n")
    assert replies == [
        "250 2.0.0 2 octets received",
        "503 5.5.1 Error: DATA after BDAT in the same transaction",
    ]


# -- STARTTLS ---------------------------------------------------------------------------


def test_starttls_discards_pipelined_input():
    client = Client()
    client.send(b"EHLO c\r\n")
    replies = client.send(b"STARTTLS\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<v@y.test>\r\n")
    assert replies == ["220 2.0.0 Ready to start TLS"]
    assert client.events[-1] == StartTLS()
    # The handshake bytes never reach the core, and nothing else counts before it ends.
    assert client.send(b"MAIL FROM:<evil@x.test>\r\n") == []
    client.conn.tls_started()
    assert client.send(b"NOOP\r\n") == ["250 2.0.0 Ok"]
    assert client.of(MailFrom) == []


def test_tls_started_forgets_the_session_and_wants_ehlo_again():
    client = opened()
    client.send(b"STARTTLS\r\n")
    client.conn.tls_started()
    assert client.conn.helo is None
    assert client.conn.mail_from is None
    assert client.conn.tls_active
    assert client.send(b"MAIL FROM:<a@b.test>\r\n") == ["503 5.5.1 Error: send HELO/EHLO first"]
    assert "250 STARTTLS" not in client.send(b"EHLO c\r\n")


def test_eof_during_handshake_closes():
    client = Client()
    client.send(b"STARTTLS\r\n")
    client.conn.receive_data(b"")
    assert client.conn.closed


def test_tls_started_without_starttls_raises():
    with pytest.raises(RuntimeError):
        ServerConnection(HOST).tls_started()


def test_session_may_decline_starttls():
    client = Client(answer=lambda e: Reply(454, "4.7.0", "TLS not available"))
    assert client.send(b"STARTTLS\r\nNOOP\r\n") == ["454 4.7.0 TLS not available", "250 2.0.0 Ok"]


@pytest.mark.parametrize(
    ("available", "active", "line", "reply"),
    [
        (False, False, b"STARTTLS", "454 4.7.0 TLS not available"),
        (True, True, b"STARTTLS", "503 5.5.1 Error: TLS already active"),
        (True, False, b"STARTTLS now", "501 5.5.4 Syntax error"),
    ],
)
def test_starttls_refusals(available, active, line, reply):
    client = Client(tls_available=available, tls_active=active)
    assert client.send(line + b"\r\n") == [reply]
    assert client.events == []


# -- giving up on bad clients -----------------------------------------------------------


def test_too_many_errors_closes_with_421():
    client = Client(limits=Limits(max_errors=3))
    replies = client.send(b"FOO\r\nBAR\r\nBAZ\r\nQUX\r\nNOOP\r\n")
    assert replies == [
        "500 5.5.2 Error: command not recognized",
        "500 5.5.2 Error: command not recognized",
        "500 5.5.2 Error: command not recognized",
        "421 4.7.0 mx.example.test Error: too many errors",
    ]
    assert client.conn.closed


def test_session_rejections_count_as_errors_but_452_does_not():
    def answer(event):
        if isinstance(event, RcptTo):
            return Reply(550, "5.1.1", "unknown")
        return accept_all(event)

    client = Client(answer=answer, limits=Limits(max_errors=2, max_recipients=0))
    client.send(b"EHLO c\r\nMAIL FROM:<>\r\n")
    assert (
        client.send(b"RCPT TO:<a@b.test>\r\n" * 5) == ["452 4.5.3 Error: too many recipients"] * 5
    )
    client = Client(answer=answer, limits=Limits(max_errors=2))
    client.send(b"EHLO c\r\nMAIL FROM:<>\r\n")
    assert client.send(b"RCPT TO:<a@b.test>\r\n" * 3) == [
        "550 5.1.1 unknown",
        "550 5.1.1 unknown",
        "421 4.7.0 mx.example.test Error: too many errors",
    ]


def test_too_many_junk_commands_closes_with_421():
    client = Client(limits=Limits(max_junk_commands=3))
    replies = client.send(b"NOOP\r\nRSET\r\nHELP\r\nVRFY x\r\nNOOP\r\n")
    assert replies == [
        "250 2.0.0 Ok",
        "250 2.0.0 Ok",
        "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS",
        "421 4.7.0 mx.example.test Error: too many commands",
    ]
    assert client.conn.closed


def test_delivering_a_message_clears_the_counters():
    client = Client(limits=Limits(max_junk_commands=2, max_errors=2))
    script = (
        b"NOOP\r\nFOO\r\nNOOP\r\nFOO\r\nMAIL FROM:<>\r\nRCPT TO:<a@b.test>\r\nDATA\r\nx\r\n.\r\n"
    )
    client.send(b"EHLO c\r\n" + script + script)
    assert len(client.messages) == 2
    assert not client.conn.closed


# -- properties -------------------------------------------------------------------------

FRAGMENTS = [
    b"EHLO c\r\n",
    b"MAIL FROM:<a@b.test>\r\n",
    b"MAIL FROM:<a@b.test> SIZE=100\r\n",
    b"RCPT TO:<c@d.test>\r\n",
    b"DATA\r\n",
    b"BDAT 5\r\n",
    b"BDAT 3 LAST\r\n",
    b"STARTTLS\r\n",
    b"RSET\r\n",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"..",
    b"\r",
    b"\n",
    b"\x00",
    b"x" * 70,
]
SMALL = Limits(max_command_line=64, max_message_size=256, max_errors=1000, max_junk_commands=1000)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.binary(max_size=300)), max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=20_000), max_size=20),
)
def test_any_input_in_any_split_never_raises_and_stays_bounded(parts, cuts):
    def answer(event):
        if isinstance(event, StartTLS):
            return Reply(454, "4.7.0", "not now")
        return accept_all(event)

    client = Client(answer=answer, limits=SMALL)
    data = b"".join(parts)
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for start, end in zip(bounds, bounds[1:], strict=False):
        client.send(data[start:end])
        # Stuffing dots do not count toward the size (RFC 1870 4), so a message
        # of nothing but "." lines holds up to 1.5 times the limit.
        assert client.conn.buffered <= (
            SMALL.max_command_line + SMALL.max_message_size * 3 // 2 + (end - start) + 8
        )
    for content in client.messages:
        assert len(content) <= SMALL.max_message_size


def stuff(lines: list[bytes]) -> bytes:
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


@settings(deadline=None)
@given(
    lines=st.lists(
        st.one_of(
            st.sampled_from([b"", b".", b"..", b". x", b"x."]),
            st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
        ),
        max_size=30,
    ),
    step=st.integers(min_value=1, max_value=50),
)
def test_stuffed_lines_come_back_exactly(lines, step):
    client = opened()
    client.send(b"DATA\r\n" + stuff(lines) + b".\r\n", step=step)
    assert client.messages == [b"".join(line + b"\r\n" for line in lines)]
