"""kill -9 in the middle of a load: nothing acknowledged is lost or doubled."""

import collections
import re
import signal
import smtplib
import threading
import time

from appliance.store import open_store

CLIENTS = 20
MESSAGES = 500


def message(number: int) -> bytes:
    return (
        f"From: load@elsewhere.test\r\nTo: ann@example.test\r\n"
        f"Message-ID: <crash-{number}@elsewhere.test>\r\nSubject: {number}\r\n\r\n"
    ).encode() + b"body line\r\n" * 40


def send_share(app, numbers, acked, stop):
    """Send numbers one by one; record the ones that got 250; stop at the first failure."""
    client = None
    for number in numbers:
        if stop.is_set():
            return
        try:
            if client is None:
                client = smtplib.SMTP(app.host, app.port, timeout=30)
            client.sendmail("load@elsewhere.test", ["ann@example.test"], message(number))
            acked.append(number)
        except (OSError, smtplib.SMTPException):
            return


def delivered_counts(app) -> collections.Counter:
    counts = collections.Counter()
    for stored in app.inbox("ann@example.test"):
        counts[int(re.search(rb"Message-ID: <crash-(\d+)@", stored).group(1))] += 1
    return counts


def test_sigkill_under_load_loses_and_duplicates_nothing_acknowledged(appliance):
    acked: list[int] = []
    stop = threading.Event()
    shares = [range(i, MESSAGES, CLIENTS) for i in range(CLIENTS)]
    threads = [
        threading.Thread(target=send_share, args=(appliance, share, acked, stop))
        for share in shares
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while len(acked) < MESSAGES // 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    appliance.process.send_signal(signal.SIGKILL)
    appliance.process.wait(timeout=10)
    appliance.process = None
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    acknowledged = set(acked)
    assert 0 < len(acknowledged) < MESSAGES, "the kill should land in the middle of the load"

    store = open_store(appliance.data)  # opens clean after the crash
    counts_before = store.check()
    store.close()
    assert counts_before["blobs"] == counts_before["blob_refs"]

    appliance.start()
    counts = delivered_counts(appliance)
    assert all(counts[n] == 1 for n in acknowledged), "acknowledged mail lost or doubled"
    assert all(c == 1 for c in counts.values())

    # The senders retry what was never acknowledged, as an MTA would.
    with smtplib.SMTP(appliance.host, appliance.port, timeout=30) as client:
        for number in sorted(set(range(MESSAGES)) - acknowledged):
            client.sendmail("load@elsewhere.test", ["ann@example.test"], message(number))
    counts = delivered_counts(appliance)
    assert set(counts) == set(range(MESSAGES))
    assert all(counts[n] == 1 for n in acknowledged)
