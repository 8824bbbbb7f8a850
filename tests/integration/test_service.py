"""The running service: graceful stop on SIGTERM, reload on SIGHUP, dev mode."""

import signal
import smtplib
import ssl
import subprocess
import sys
import time

import pytest
from cryptography import x509

from tests.conftest import free_port
from tests.integration.test_smtp_hostile import Client, start_transaction


def test_sigterm_lets_a_transaction_finish_then_says_421(appliance):
    busy = Client(appliance)
    start_transaction(busy)
    assert busy.command(b"DATA").startswith(b"354")
    idle = Client(appliance)
    appliance.process.send_signal(signal.SIGTERM)
    assert idle.reply().startswith(b"421 4.3.2")  # an idle session is told at once
    time.sleep(0.5)
    with pytest.raises(OSError):  # no longer accepting
        smtplib.SMTP(appliance.host, appliance.port, timeout=2)
    assert busy.command(b"Subject: late\r\n\r\nfinished after SIGTERM\r\n.").startswith(b"250")
    assert busy.reply().startswith(b"421 4.3.2")
    assert appliance.process.wait(timeout=10) == 0
    appliance.process = None
    assert b"finished after SIGTERM" in appliance.inbox("ann@example.test")[0]


def test_sigterm_cuts_off_a_stalled_transaction_after_the_grace(appliance):
    stalled = Client(appliance)
    start_transaction(stalled)
    assert stalled.command(b"DATA").startswith(b"354")
    started = time.monotonic()
    appliance.process.send_signal(signal.SIGTERM)
    assert appliance.process.wait(timeout=20) == 0
    appliance.process = None
    assert 4 < time.monotonic() - started < 15  # shutdown_grace = 5 in the test config
    assert appliance.inbox("ann@example.test") == []


def test_sighup_reloads_limits_and_certificate(appliance):
    def ehlo_size():
        with smtplib.SMTP(appliance.host, appliance.port) as client:
            client.ehlo("client.test")
            return int(client.esmtp_features["size"])

    def certificate_serial():
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP(appliance.host, appliance.port) as client:
            client.starttls(context=context)
            der = client.sock.getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der).serial_number

    assert ehlo_size() == 50 * 1024 * 1024
    old_serial = certificate_serial()
    appliance.settings = {"smtp": {"max_message_size": 1234}}
    appliance.write_config()
    for name in ("cert.pem", "key.pem"):
        (appliance.data / "tls" / name).unlink()
    appliance.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while ehlo_size() != 1234 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ehlo_size() == 1234
    assert certificate_serial() != old_serial


def test_bad_settings_on_sighup_keep_the_running_ones(appliance):
    (appliance.data / "appliance.toml").write_text("this is = = not toml\n")
    appliance.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    with smtplib.SMTP(appliance.host, appliance.port) as client:
        assert client.noop()[0] == 250
    assert "reload failed" in appliance.log()


def test_unknown_setting_stops_start_with_one_line(tmp_path):
    (tmp_path / "appliance.toml").write_text("[smtp]\nmax_mesage_size = 10\n")
    result = subprocess.run(
        [sys.executable, "-m", "appliance", "--data", str(tmp_path), "serve"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr == "appliance: error: unknown setting smtp.max_mesage_size\n"


def test_dev_mode_listens_on_loopback_dev_port(tmp_path):
    port = free_port()
    (tmp_path / "appliance.toml").write_text(f'[listen]\nsmtp = "127.0.0.1:{port}"\n')
    process = subprocess.Popen(
        [sys.executable, "-m", "appliance", "--data", str(tmp_path), "serve", "--dev"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == f"listening smtp on 127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
