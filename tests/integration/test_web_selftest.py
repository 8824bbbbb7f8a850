"""The delivery self-test against a running appliance, a loopback DNS server and an outside MX.

The appliance's smtp listener plays port 25 ([queue] mx_port points at it);
the outside domain probe.test has its MX on 127.0.0.2 at the same port, a
greeting-only SMTP server started by the test, since step 6 tries mx_port too.
"""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from appliance import config
from appliance.delivery.dns import Resolver
from appliance.mailauth import dkim
from appliance.web.selftest import (
    DELIVERY_STEP,
    DKIM_STEP,
    INBOUND_PORT_STEP,
    MAILBOX_STEP,
    MX_STEP,
    OUTBOUND_PORT_STEP,
    SELFTEST_HEADER,
    SelfTestInputs,
    StepResult,
    run_selftest,
)
from tests.conftest import PASSWORD, free_port
from tests.dns_server import dns_server_fixture  # noqa: F401 - fixture dns_server

DOMAIN = "example.test"
HOSTNAME = "mail.example.test"  # what tests.conftest writes as the appliance's hostname
ACCOUNT = "ann@example.test"
PROBE_DOMAIN = "probe.test"
PROBE_ADDRESS = "127.0.0.2"  # beside the appliance's 127.0.0.1, on the same port
STEPS = [MX_STEP, INBOUND_PORT_STEP, DELIVERY_STEP, MAILBOX_STEP, DKIM_STEP, OUTBOUND_PORT_STEP]
# Well above what each run takes on loopback (under a second), to bound a hung one.
RUN_TIMEOUT = 120


@pytest.fixture
def box(make_appliance, dns_server):
    """A running appliance whose domain, DKIM keys and probe domain are all in DNS."""
    app = make_appliance(resolver={"nameservers": [dns_server.nameserver]})
    app.settings["queue"] = {"mx_port": app.port}
    app.start()
    dns_server.load(
        {
            DOMAIN: {"MX": f"10 {HOSTNAME}."},
            HOSTNAME: {"A": "127.0.0.1"},
            PROBE_DOMAIN: {"MX": f"10 mx.{PROBE_DOMAIN}."},
            f"mx.{PROBE_DOMAIN}": {"A": PROBE_ADDRESS},
        }
    )
    for record in dkim.dns_records(app.data, DOMAIN):
        dns_server.add(record.name, "TXT", " ".join(f'"{s}"' for s in record.strings))
    return app


def run(app, **changes) -> list[StepResult]:
    """The self-test as the web page runs it, from the appliance's own settings."""
    settings = config.load(app.data)
    inputs = SelfTestInputs(
        hostname=settings.hostname,
        domain=DOMAIN,
        recipient=ACCOUNT,
        login=(ACCOUNT, PASSWORD),
        imap_address=settings.listen["imap"],
        resolver=Resolver(settings.resolver),
        data_dir=app.data,
        probe_domain=PROBE_DOMAIN,
        mx_port=settings.queue.mx_port,
    )
    inputs = dataclasses.replace(inputs, **changes)

    async def with_outside_mx() -> list[StepResult]:
        server = await asyncio.start_server(_greet, PROBE_ADDRESS, settings.queue.mx_port)
        async with server, asyncio.timeout(RUN_TIMEOUT):
            return await run_selftest(inputs)

    results = asyncio.run(with_outside_mx())
    for result in results:  # shown by pytest when a test fails
        print(result)
    assert [result.name for result in results] == STEPS
    return results


async def _greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An outside MX host as step 6 sees it: a greeting, then 221 to QUIT."""
    writer.write(b"220 mx.probe.test ESMTP\r\n")
    try:
        async with asyncio.timeout(5):
            if (await reader.readline()).upper().startswith(b"QUIT"):
                writer.write(b"221 2.0.0 Bye\r\n")
                await writer.drain()
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()


def by_name(results: list[StepResult]) -> dict[str, StepResult]:
    return {result.name: result for result in results}


def test_every_step_passes_and_the_test_message_is_gone(box):
    results = by_name(run(box))
    assert all(result.ok for result in results.values())
    assert all(result.fix == "" for result in results.values())
    assert HOSTNAME in results[MX_STEP].detail
    assert results[INBOUND_PORT_STEP].detail.startswith(
        f"{HOSTNAME}[127.0.0.1]:{box.port} said: 220"
    )
    delivery = results[DELIVERY_STEP].detail
    assert "said: 250" in delivery and "TLSv1." in delivery and "self-signed" in delivery
    mailbox = results[MAILBOX_STEP].detail
    assert "fetched" in mailbox and "deleted" in mailbox and "STARTTLS" in mailbox
    assert results[DKIM_STEP].detail.count(": pass") == 2  # rsa-sha256 and ed25519-sha256
    assert f"mx.{PROBE_DOMAIN}[{PROBE_ADDRESS}]" in results[OUTBOUND_PORT_STEP].detail
    assert all(SELFTEST_HEADER.encode() not in message for message in box.inbox(ACCOUNT))


def test_an_imap_listener_with_implicit_tls_serves_as_well(box):
    imaps = config.load(box.data).listen["imaps"]
    results = by_name(run(box, imap_address=imaps))
    assert results[MAILBOX_STEP].ok
    assert "implicit TLS" in results[MAILBOX_STEP].detail
    assert all(SELFTEST_HEADER.encode() not in message for message in box.inbox(ACCOUNT))


def test_an_mx_pointing_elsewhere_is_named_and_the_delivery_steps_skipped(box, dns_server):
    dns_server.remove(DOMAIN, "MX")
    dns_server.add(DOMAIN, "MX", "10 mx.other.test.")
    dns_server.add("mx.other.test", "A", "192.0.2.25")
    results = by_name(run(box))
    mx = results[MX_STEP]
    assert not mx.ok
    assert "mx.other.test" in mx.detail
    assert "points to mx.other.test, not to mail.example.test" in mx.fix
    assert f'"{DOMAIN}. MX 10 {HOSTNAME}."' in mx.fix
    for name in (INBOUND_PORT_STEP, DELIVERY_STEP, MAILBOX_STEP):
        assert not results[name].ok and results[name].detail.startswith("skipped: ")
    assert results[DKIM_STEP].ok and results[OUTBOUND_PORT_STEP].ok


def test_a_closed_port_25_says_to_open_it(box):
    closed = free_port()
    results = by_name(run(box, mx_port=closed))
    assert results[MX_STEP].ok
    port = results[INBOUND_PORT_STEP]
    assert not port.ok
    assert f"nothing answered on port {closed} of {HOSTNAME}" in port.detail
    assert "refused" in port.detail.lower()
    assert f"open port {closed}" in port.fix and "forward" in port.fix
    for name in (DELIVERY_STEP, MAILBOX_STEP):
        assert not results[name].ok and results[name].detail.startswith("skipped: ")
    assert results[DKIM_STEP].ok


def test_a_missing_dkim_record_says_to_publish_it(box, dns_server):
    for record in dkim.dns_records(box.data, DOMAIN):
        dns_server.remove(record.name)
    results = by_name(run(box))
    step = results[DKIM_STEP]
    assert not step.ok
    assert step.detail.count("no key record at") == 2
    assert "Publish the DKIM records of example.test" in step.fix and "DNS page" in step.fix
    others = [result for name, result in results.items() if name != DKIM_STEP]
    assert all(result.ok for result in others)


def test_an_unreachable_outside_mx_says_port_25_is_blocked(box, dns_server):
    dns_server.remove(f"mx.{PROBE_DOMAIN}")
    dns_server.add(f"mx.{PROBE_DOMAIN}", "A", "127.0.0.3")  # nothing listens there
    results = by_name(run(box))
    step = results[OUTBOUND_PORT_STEP]
    assert not step.ok
    assert f"mx.{PROBE_DOMAIN}[127.0.0.3]" in step.detail
    assert "blocks outgoing port" in step.fix and "[relay]" in step.fix
    others = [result for name, result in results.items() if name != OUTBOUND_PORT_STEP]
    assert all(result.ok for result in others)
