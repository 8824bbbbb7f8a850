"""Port 25's per-address bookkeeping on a fake clock, HELO checks, and the
core's refused session (554 in place of the greeting)."""

import pytest

from appliance.config import SmtpSettings
from appliance.smtp.abuse import ClientLedger, client_key, dnsbl_zones, helo_check, is_exempt
from appliance.smtp.protocol import Limits, Reply, ServerConnection


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


SETTINGS = SmtpSettings(
    max_messages_per_minute=3,
    unknown_recipient_window=600.0,
    unknown_recipient_delay_after=5,
    unknown_recipient_delay=1.0,
    max_unknown_recipient_delay=4.0,
    max_unknown_recipients=20,
    unknown_recipient_cooldown=300.0,
    max_tracked_clients=3,
)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def ledger(clock):
    return ClientLedger(SETTINGS, clock=clock)


def test_an_ipv6_client_counts_per_64_and_a_mapped_ipv4_one_as_ipv4():
    assert (
        client_key("2001:db8:1:2::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    )
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.7") == client_key("192.0.2.7") == "192.0.2.7"


def test_loopback_is_exempt_unless_the_setting_says_otherwise():
    assert is_exempt("127.0.0.1", SmtpSettings())
    assert is_exempt("::1", SmtpSettings())
    assert is_exempt("::ffff:127.0.0.2", SmtpSettings())
    assert not is_exempt("127.0.0.1", SmtpSettings(abuse_exempt_loopback=False))
    assert not is_exempt("192.0.2.1", SmtpSettings())


def test_messages_past_the_minute_limit_are_refused_until_the_next_minute(ledger, clock):
    assert [ledger.count_message("192.0.2.1") for _ in range(4)] == [True, True, True, False]
    assert ledger.count_message("192.0.2.2")  # another address has its own count
    clock.now += 59
    assert not ledger.count_message("192.0.2.1")
    clock.now += 1
    assert ledger.count_message("192.0.2.1")


def test_no_message_limit_when_it_is_zero(clock):
    ledger = ClientLedger(SmtpSettings(max_messages_per_minute=0), clock=clock)
    assert all(ledger.count_message("192.0.2.1") for _ in range(10_000))
    assert ledger.tracked_clients == 0


def test_unknown_recipients_are_slowed_more_and_more_then_refused(ledger):
    counted = [ledger.count_unknown_recipient("192.0.2.1") for _ in range(21)]
    assert [c.delay for c in counted[:5]] == [0.0] * 5
    assert [c.delay for c in counted[5:10]] == [1.0, 2.0, 3.0, 4.0, 4.0]  # capped at 4
    assert not any(c.refused for c in counted[:20])
    assert counted[20].refused and counted[20].count == 21
    assert ledger.cooldown_left("192.0.2.1") == 300.0
    assert ledger.cooldown_left("192.0.2.2") == 0.0


def test_the_cooldown_ends_and_the_count_starts_over(ledger, clock):
    for _ in range(21):
        ledger.count_unknown_recipient("192.0.2.1")
    clock.now += 299
    assert ledger.cooldown_left("192.0.2.1") == pytest.approx(1.0)
    clock.now += 1
    assert ledger.cooldown_left("192.0.2.1") == 0.0
    again = ledger.count_unknown_recipient("192.0.2.1")
    assert again.count == 1 and again.delay == 0.0 and not again.refused


def test_unknown_recipients_older_than_the_window_are_forgotten(ledger, clock):
    for _ in range(19):
        ledger.count_unknown_recipient("192.0.2.1")
    clock.now += 600
    assert ledger.count_unknown_recipient("192.0.2.1").count == 1


def test_addresses_in_one_ipv6_64_share_their_count(ledger):
    for index in range(20):
        ledger.count_unknown_recipient(f"2001:db8::{index + 1:x}")
    assert ledger.count_unknown_recipient("2001:db8::ffff").refused
    assert ledger.cooldown_left("2001:db8::1234") > 0
    assert ledger.cooldown_left("2001:db8:0:1::1") == 0.0


def test_memory_is_bounded_and_the_longest_untouched_address_goes_first(ledger):
    ledger.count_message("192.0.2.1")
    for _ in range(21):
        ledger.count_unknown_recipient("192.0.2.2")  # cooling down
    ledger.count_message("192.0.2.3")
    ledger.count_message("192.0.2.1")  # touched again: now the most recent
    for index in range(10, 12):
        ledger.count_message(f"192.0.2.{index}")
    assert ledger.tracked_clients == 3
    assert ledger.cooldown_left("192.0.2.2") == 0.0  # forgotten with its cooldown
    # 192.0.2.1 kept its two messages of this minute: one more, and the limit
    assert [ledger.count_message("192.0.2.1") for _ in range(2)] == [True, False]


def test_a_reload_keeps_what_addresses_did_with_the_new_settings(ledger, clock):
    for _ in range(21):
        ledger.count_unknown_recipient("192.0.2.1")
    reloaded = ClientLedger(SmtpSettings(max_messages_per_minute=1), ledger, clock=clock)
    assert reloaded.cooldown_left("192.0.2.1") == 300.0
    assert reloaded.count_message("192.0.2.9") and not reloaded.count_message("192.0.2.9")


@pytest.mark.parametrize(
    ("helo", "client", "expected"),
    [
        ("mail.sender.example", "192.0.2.1", "ok"),
        ("mail.sender.example.", "192.0.2.1", "ok"),
        ("[192.0.2.1]", "192.0.2.1", "ok"),
        ("[IPv6:2001:db8::1]", "2001:db8::1", "ok"),
        ("[192.0.2.99]", "192.0.2.1", "literal-mismatch"),
        ("[IPv6:2001:db8::2]", "2001:db8::1", "literal-mismatch"),
        ("[not an address]", "192.0.2.1", "not-fqdn"),
        ("localhost", "192.0.2.1", "not-fqdn"),
        ("192.0.2.1", "192.0.2.1", "not-fqdn"),
        ("under_score.example", "192.0.2.1", "not-fqdn"),
        ("MAIL.Example.TEST", "192.0.2.1", "our-name"),
    ],
)
def test_helo_names_are_judged_for_the_log(helo, client, expected):
    assert helo_check(helo, client, "mail.example.test") == expected


def test_a_lone_dnsbl_string_is_one_zone():
    assert dnsbl_zones("zen.spamhaus.org") == ("zen.spamhaus.org",)
    assert dnsbl_zones(["a.example.", " ", "b.example"]) == ("a.example", "b.example")


REFUSAL = Reply(554, "5.7.1", "Service unavailable; client [192.0.2.1] blocked using bl.example")


def test_a_rejected_session_answers_503_until_quit():
    conn = ServerConnection("mail.example.test")
    conn.reject(REFUSAL)
    assert conn.data_to_send() == REFUSAL.to_bytes()
    conn.receive_data(b"EHLO client.example\r\nMAIL FROM:<a@b.example>\r\nXYZZY\r\n")
    assert conn.next_event() is None  # nothing reaches the session
    assert (
        conn.data_to_send().split(b"\r\n")[:3]
        == [b"503 5.5.1 Error: service refused, send QUIT"] * 3
    )
    conn.receive_data(b"QUIT\r\n")
    assert conn.data_to_send().startswith(b"221 ") and conn.closed


def test_a_rejected_session_that_never_quits_is_closed_after_max_errors():
    conn = ServerConnection("mail.example.test", Limits(max_errors=3))
    conn.reject(REFUSAL)
    conn.data_to_send()
    conn.receive_data(b"NOOP\r\n" * 10)
    replies = conn.data_to_send().decode().splitlines()
    assert [r[:3] for r in replies] == ["503", "503", "503", "421"]
    assert conn.closed
