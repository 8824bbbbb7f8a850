"""The delivery self-test: "is my mail working?", one step at a time.

run_selftest(inputs) follows the path a message from outside takes to the
owner's mailbox, then checks the two things that outgoing mail needs:

1. MX: the domain's MX records name this box's host name, which has addresses;
2. inbound port: the host name's addresses answer on port 25 with a 220 greeting;
3. delivery: a test message goes in over STARTTLS and is accepted;
4. mailbox: the message is in INBOX, fetched over the box's own IMAP
   listener, then deleted so that the test leaves nothing behind;
5. DKIM: a message signed with the domain's active keys verifies against
   the keys published in DNS;
6. outbound port: an outside domain's MX host greets on port 25, which many
   residential providers block.

Every step gives a StepResult with its timing, what it saw, and, when it
failed, what the owner should change, in plain words. A step that needs an
earlier one that failed is skipped; steps 5 and 6 need nothing before them.
Nothing raises: an exception becomes a failed step that quotes it.

Delivery (step 3) uses appliance.smtp.outbound.deliver, the outbound queue's
own client, so that the test exercises what sends real mail: it opens its
own connection to the address that greeted in step 2 (the client core
expects to read the greeting itself). IMAP (step 4) is the standard
library's imaplib in a thread: a real client, as a mail program would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import imaplib
import logging
import os
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from appliance import tls
from appliance.delivery.dns import (
    DnsError,
    DnsTemporaryError,
    MxTarget,
    NoSuchDomain,
    NullMx,
    Resolver,
)
from appliance.mailauth import dkim
from appliance.mailauth.verify import DkimResult, DnsTempError, verify_dkim
from appliance.smtp.client import Kind, Outcome, Timeouts
from appliance.smtp.outbound import Host, OutboundMessage, OutboundSettings, deliver

log = logging.getLogger(__name__)

# Each step's bound. A healthy box answers every step in well under a second;
# 15 s leaves room for a DNS retry (3 s per query) and for three lost TCP SYNs
# (Linux resends after 1, 3 and 7 s), and is still a wait a person sits out.
STEP_TIMEOUT = 15.0
# How often the mailbox is searched for the test message while it is awaited.
MAILBOX_POLL_INTERVAL = 0.25
# A greeting of more lines than this is not an SMTP server's.
MAX_GREETING_LINES = 20
# Outside MX addresses tried in step 6, each with an equal share of the step's
# time: enough to pass a host that is down, few enough that each gets seconds.
PROBE_ADDRESSES = 3

MX_STEP = "MX record points to this box"
INBOUND_PORT_STEP = "Port 25 of this box answers"
DELIVERY_STEP = "Test message delivered with STARTTLS"
MAILBOX_STEP = "Test message in the mailbox, fetched over IMAP"
DKIM_STEP = "DKIM signs and verifies"
OUTBOUND_PORT_STEP = "Outgoing port 25 reaches other mail servers"

SELFTEST_HEADER = "X-Selftest-Id"
_BODY_TEXT = "This message was sent by the delivery self-test of your mail server ({id}).\r\n"
_DKIM_PROBE_BODY = b"A message signed to check this domain's DKIM records.\r\n"


@dataclasses.dataclass(frozen=True, slots=True)
class SelfTestInputs:
    """What the self-test needs to know about the box; the web page builds it from Settings."""

    hostname: str  # the box's public mail host name (mail.example.com)
    domain: str  # the mail domain tested
    recipient: str  # an account on the box that receives the test message
    login: tuple[str, str] = dataclasses.field(repr=False)  # IMAP (address, password)
    imap_address: tuple[str, int]  # the box's own IMAP listener (loopback), TLS or STARTTLS
    resolver: Resolver
    data_dir: Path  # where the DKIM keys are
    probe_domain: str  # an outside domain whose MX hosts prove outgoing port 25 works
    mx_port: int = 25  # Settings.queue.mx_port: tests point it at their own listeners
    step_timeout: float = STEP_TIMEOUT


@dataclasses.dataclass(frozen=True, slots=True)
class StepResult:
    name: str
    ok: bool
    seconds: float
    detail: str  # what the step saw: records, greetings, certificate, errors
    fix: str = ""  # for a failed step: what the owner should change, in plain words


class _StepFailed(Exception):
    """A step's failure with the words the owner reads."""

    def __init__(self, detail: str, fix: str):
        super().__init__(detail)
        self.detail = detail
        self.fix = fix


@dataclasses.dataclass(frozen=True, slots=True)
class _Passed:
    """A passed step: what it saw, and what the steps after it need."""

    detail: str
    value: object = None


async def run_selftest(inputs: SelfTestInputs) -> list[StepResult]:
    """Run the six steps in order; a result for each, never an exception."""
    results: list[StepResult] = []

    async def step(name: str, run: Callable[[], Awaitable[_Passed]], fix: str) -> object:
        result, value = await _run_step(name, run, inputs.step_timeout, fix)
        results.append(result)
        return value if result.ok else None

    hostname, port = _name(inputs.hostname), inputs.mx_port
    target = await step(MX_STEP, lambda: _check_mx(inputs), _dns_fix(inputs))
    address = None
    if target is None:
        results.append(_skipped(INBOUND_PORT_STEP, "the MX record does not lead to this box"))
    else:
        address = await step(
            INBOUND_PORT_STEP,
            lambda: _check_inbound_port(hostname, target.addresses, port, inputs.step_timeout),
            _open_port_fix(hostname, port),
        )
    message_id = None
    if address is None:
        results.append(_skipped(DELIVERY_STEP, "port 25 of this box was not reached"))
    else:
        message_id = await step(
            DELIVERY_STEP,
            lambda: _deliver_test_message(inputs, address),
            f"The box did not take the test message on port {port}: see the reply above.",
        )
    if message_id is None:
        results.append(_skipped(MAILBOX_STEP, "no test message was delivered"))
    else:
        await step(
            MAILBOX_STEP,
            lambda: asyncio.to_thread(_fetch_and_delete, inputs, message_id),
            _not_in_inbox_fix(inputs.recipient),
        )
    await step(DKIM_STEP, lambda: _check_dkim(inputs), _dkim_record_fix(inputs.domain))
    await step(
        OUTBOUND_PORT_STEP,
        lambda: _check_outbound_port(inputs),
        _blocked_port_fix(inputs.probe_domain, port),
    )
    return results


async def _run_step(
    name: str, run: Callable[[], Awaitable[_Passed]], timeout: float, fix: str
) -> tuple[StepResult, object]:
    """Run one step within its time; a failure of any kind becomes a failed result."""
    started = time.monotonic()
    value = None
    try:
        async with asyncio.timeout(timeout):
            passed = await run()
        result = StepResult(name, True, 0.0, passed.detail)
        value = passed.value
    except _StepFailed as failure:
        result = StepResult(name, False, 0.0, failure.detail, failure.fix)
    except TimeoutError:
        result = StepResult(name, False, 0.0, f"no result within {timeout:g} s", fix)
    except Exception as error:  # noqa: BLE001 - a self-test reports, it never raises
        log.exception("selftest step=%r error", name)
        result = StepResult(name, False, 0.0, f"{type(error).__name__}: {error}", fix)
    result = dataclasses.replace(result, seconds=round(time.monotonic() - started, 3))
    log.info("selftest step=%r ok=%s seconds=%.3f", name, result.ok, result.seconds)
    return result, value


def _skipped(name: str, because: str) -> StepResult:
    return StepResult(name, False, 0.0, f"skipped: {because}", "Fix the failed step above first.")


# -- 1. MX ------------------------------------------------------------------------------


async def _check_mx(inputs: SelfTestInputs) -> _Passed:
    """The MX target that is this box's host name; a failure names what the MX says instead."""
    domain, hostname = _name(inputs.domain), _name(inputs.hostname)
    try:
        targets = await inputs.resolver.mx_hosts(domain)
    except NoSuchDomain as error:
        fix = f"The domain {domain} does not exist in DNS: check its spelling and registration."
        raise _StepFailed(str(error), fix) from None
    except NullMx as error:
        fix = _mx_fix(domain, hostname, "says it accepts no mail")
        raise _StepFailed(str(error), fix) from None
    except DnsTemporaryError as error:
        raise _StepFailed(str(error), _dns_fix(inputs)) from None
    except DnsError as error:  # no MX host has an address
        fix = await _address_fix(inputs.resolver, domain, hostname)
        raise _StepFailed(str(error), fix) from None
    found = "; ".join(_describe_target(t) for t in targets)
    for target in targets:
        if target.host == hostname:
            return _Passed(f"{domain} MX: {found}", target)
    if targets[0].implicit:
        fix = _mx_fix(domain, hostname, "has no MX record")
    elif await _has_address(inputs.resolver, hostname):
        names = ", ".join(t.host for t in targets)
        fix = _mx_fix(domain, hostname, f"points to {names}, not to {hostname}")
    else:
        fix = await _address_fix(inputs.resolver, domain, hostname)
    raise _StepFailed(f"{domain} MX: {found}", fix)


def _describe_target(target: MxTarget) -> str:
    preference = "no MX record, the domain itself" if target.implicit else target.preference
    return f"{target.host} ({preference}) -> {', '.join(target.addresses)}"


async def _has_address(resolver: Resolver, host: str) -> bool:
    try:
        return bool(await resolver.addresses(host))
    except DnsError:
        return False


async def _address_fix(resolver: Resolver, domain: str, hostname: str) -> str:
    if await _has_address(resolver, hostname):
        return _mx_fix(domain, hostname, "names no host that has an address")
    return (
        f"{hostname} has no address in DNS: publish an A record (and AAAA for IPv6) "
        f"for {hostname} with this box's public address, as the DNS page shows."
    )


def _mx_fix(domain: str, hostname: str, problem: str) -> str:
    return (
        f"Your domain's MX record {problem}: change it to "
        f'"{domain}. MX 10 {hostname}." as the DNS page shows.'
    )


def _dns_fix(inputs: SelfTestInputs) -> str:
    return (
        f"The box could not look up {_name(inputs.domain)} in DNS: check its internet "
        "connection and the nameservers in [resolver] of appliance.toml, then try again."
    )


# -- 2. inbound port 25 ------------------------------------------------------------------


async def _check_inbound_port(
    hostname: str, addresses: Sequence[str], port: int, timeout: float
) -> _Passed:
    """The first address of the host name that greets with 220."""
    failures = []
    for address in addresses:
        try:
            async with asyncio.timeout(timeout / len(addresses)):
                code, greeting = await _greeting(address, port)
        except (OSError, TimeoutError) as error:
            failures.append(f"{address}: {_describe(error)}")
            continue
        if code == 220:
            return _Passed(f"{_remote(hostname, address, port)} said: {greeting}", address)
        fix = (
            f"The server answering at {address} port {port} refuses mail. If it is not this "
            f"box, forward port {port} on your router to this box instead."
        )
        raise _StepFailed(f"{_remote(hostname, address, port)} said: {greeting}", fix)
    raise _StepFailed(
        f"nothing answered on port {port} of {hostname}: {'; '.join(failures)}",
        _open_port_fix(hostname, port),
    )


async def _greeting(address: str, port: int) -> tuple[int, str]:
    """The reply code and text an SMTP server greets with (RFC 5321 4.2, 4.3.1); QUIT after."""
    reader, writer = await asyncio.open_connection(address, port)
    try:
        lines: list[str] = []
        while len(lines) < MAX_GREETING_LINES:
            line = (await reader.readline()).decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                raise ConnectionError("closed without a greeting")
            lines.append(line)
            if line[3:4] != "-":  # the last line of a reply: "220 text" or "220"
                break
        code = int(lines[0][:3]) if lines[0][:3].isdigit() else 0
        writer.write(b"QUIT\r\n")
        await writer.drain()
        return code, " ".join(lines)
    finally:
        writer.close()


def _open_port_fix(hostname: str, port: int) -> str:
    return (
        f"Mail servers cannot reach {hostname} on port {port}: open port {port} (TCP) in "
        f"any firewall, and forward port {port} on your router to this box."
    )


# -- 3. delivery -------------------------------------------------------------------------


async def _deliver_test_message(inputs: SelfTestInputs, address: str) -> _Passed:
    """Send the test message to the address that greeted, over STARTTLS; its Message-ID."""
    test_id = uuid.uuid4().hex
    message_id = f"<selftest.{test_id}@{_name(inputs.hostname)}>"
    message = _test_message(inputs, test_id, message_id)
    try:
        signature = await asyncio.to_thread(
            dkim.signer_for(inputs.data_dir).sign, message, inputs.domain
        )
    except dkim.SigningError:
        signature = b""  # step 5 says why; the message goes unsigned, as mail would
    seen: dict[str, str] = {}

    def note_certificate(peer: ssl.SSLObject) -> bool:
        seen["tls"] = f"{peer.version()}, {_certificate_text(peer.getpeercert(binary_form=True))}"
        return True  # the box's own certificate, self-signed until ACME: shown, not judged

    timeout = inputs.step_timeout
    host = Host(
        _name(inputs.hostname),
        (address,),
        inputs.mx_port,
        tls=_unverified_tls(),
        require_tls=True,  # the step proves that senders can encrypt
        check_peer=note_certificate,
    )
    timeouts = Timeouts(**{f.name: timeout for f in dataclasses.fields(Timeouts)})
    settings = OutboundSettings(_name(inputs.hostname), timeouts, connect_timeout=timeout)
    sent = OutboundMessage(inputs.recipient, (inputs.recipient,), signature + message)
    [[result]] = await deliver(host, [sent], settings)
    outcome = result.outcome
    tls = seen.get("tls", "no TLS")
    if outcome.kind is not Kind.DELIVERED:
        raise _StepFailed(f"{outcome.diagnostic}; {tls}", _delivery_fix(inputs, outcome))
    return _Passed(f"{outcome.diagnostic}; {tls}", message_id)


def _test_message(inputs: SelfTestInputs, test_id: str, message_id: str) -> bytes:
    fields = [
        f"From: Mail self-test <{inputs.recipient}>",
        f"To: <{inputs.recipient}>",
        f"Subject: Delivery self-test {test_id}",
        f"Date: {email.utils.formatdate(usegmt=True)}",
        f"Message-ID: {message_id}",
        f"{SELFTEST_HEADER}: {test_id}",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
    ]
    return ("\r\n".join(fields) + "\r\n\r\n" + _BODY_TEXT.format(id=test_id)).encode("ascii")


def _delivery_fix(inputs: SelfTestInputs, outcome: Outcome) -> str:
    if outcome.status.endswith(".7.4") or "TLS" in outcome.text:
        return (
            f"The box at {_name(inputs.hostname)} did not encrypt the connection: check "
            "its TLS certificate on the certificate page."
        )
    if outcome.command == "RCPT TO":
        return (
            f"The box refused mail for {inputs.recipient}: check that the account exists "
            f"and that {_name(inputs.domain)} is one of the box's domains."
        )
    return f"The box did not take the test message on port {inputs.mx_port}: see its reply above."


# -- 4. the mailbox over IMAP -------------------------------------------------------------


def _fetch_and_delete(inputs: SelfTestInputs, message_id: str) -> _Passed:
    """In a thread: find the test message in INBOX, fetch it, check it, delete it."""
    deadline = time.monotonic() + inputs.step_timeout
    imap, tls = _imap_connect(inputs.imap_address, inputs.step_timeout)
    try:
        address, password = inputs.login
        try:
            imap.login(address, password)
        except imaplib.IMAP4.error as error:
            text = f"IMAP login as {address} refused: {_imap_text(error)}"
            fix = f"Check the password of {address}, or that the account exists."
            raise _StepFailed(text, fix) from None
        imap.select("INBOX")
        uid = _await_message(imap, message_id, deadline)
        if uid is None:
            text = f"not in INBOX of {address} after {inputs.step_timeout:g} s"
            raise _StepFailed(text, _not_in_inbox_fix(inputs.recipient))
        body = _fetch(imap, uid)
        test_id = message_id[len("<selftest.") :].partition("@")[0]
        if _BODY_TEXT.format(id=test_id).encode("ascii") not in body:
            fix = "Something between the sender and the mailbox changed the message: see the log."
            raise _StepFailed(f"UID {uid}: the fetched message lacks the test text", fix)
        removed = _delete(imap, uid)
        return _Passed(f"UID {uid} fetched ({len(body)} octets) and {removed}; {tls}")
    finally:
        # The step's result is known by now; a lost goodbye changes nothing.
        with contextlib.suppress(OSError, imaplib.IMAP4.error):
            imap.logout()


def _imap_connect(address: tuple[str, int], timeout: float) -> tuple[imaplib.IMAP4, str]:
    """A TLS connection to the listener: implicit TLS if it speaks it, else STARTTLS.

    TLS is tried first: a listener without it greets in clear text at once,
    which fails the handshake at once, where waiting for a clear greeting
    from a TLS listener would last the whole timeout.
    """
    host, port = address
    try:
        imap = imaplib.IMAP4_SSL(host, port, ssl_context=_unverified_tls(), timeout=timeout)
        return imap, f"implicit TLS, {_imap_certificate(imap)}"
    except ssl.SSLError:
        pass  # a clear-text greeting
    except OSError as error:
        fix = "Turn on the box's IMAP listener (imap or imaps in [listen] of appliance.toml)."
        raise _StepFailed(f"IMAP at {host}:{port}: {_describe(error)}", fix) from None
    imap = imaplib.IMAP4(host, port, timeout=timeout)
    if "STARTTLS" not in imap.capabilities:
        imap.shutdown()
        fix = "Turn on TLS for the IMAP listener: mail programs need it to log in safely."
        raise _StepFailed(f"the IMAP listener at {host}:{port} offers no TLS", fix)
    imap.starttls(_unverified_tls())
    return imap, f"STARTTLS, {_imap_certificate(imap)}"


def _imap_certificate(imap: imaplib.IMAP4) -> str:
    connection = imap.sock
    return f"{connection.version()}, {_certificate_text(connection.getpeercert(binary_form=True))}"


def _await_message(imap: imaplib.IMAP4, message_id: str, deadline: float) -> str | None:
    """The UID of the message with this Message-ID, searched until deadline."""
    while True:
        imap.noop()  # lets the server announce what arrived since SELECT
        _status, data = imap.uid("SEARCH", "HEADER", "Message-ID", f'"{message_id}"')
        found = (data[0] or b"").split()
        if found:
            return found[0].decode("ascii")
        if time.monotonic() + MAILBOX_POLL_INTERVAL > deadline:
            return None
        time.sleep(MAILBOX_POLL_INTERVAL)


def _fetch(imap: imaplib.IMAP4, uid: str) -> bytes:
    _status, data = imap.uid("FETCH", uid, "(BODY.PEEK[])")
    # imaplib gives a literal as (b'1 (UID 7 BODY[] {123}', b'<the octets>').
    return b"".join(part[1] for part in data if isinstance(part, tuple))


def _delete(imap: imaplib.IMAP4, uid: str) -> str:
    """Remove the test message, and only it: UID EXPUNGE (RFC 4315 2.1, RFC 9051 6.4.9)."""
    imap.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)")
    if not {"UIDPLUS", "IMAP4REV2"} & set(imap.capabilities):
        # A plain EXPUNGE would also remove what the owner marked deleted.
        return r"marked \Deleted (the server has no UID EXPUNGE)"
    imap.xatom("UID", "EXPUNGE", uid)
    return "deleted"


def _imap_text(error: Exception) -> str:
    return error.args[0].decode("utf-8", "replace") if error.args else str(error)


def _not_in_inbox_fix(recipient: str) -> str:
    return (
        f"The box accepted the test message but it is not in the INBOX of {recipient}: "
        "look in its Junk folder and in the log of the box."
    )


# -- 5. DKIM ------------------------------------------------------------------------------


async def _check_dkim(inputs: SelfTestInputs) -> _Passed:
    """Sign a small message with the domain's keys and verify it through the resolver."""
    domain = _name(inputs.domain)
    message = (
        f"From: <postmaster@{domain}>\r\nTo: <postmaster@{domain}>\r\n"
        f"Subject: DKIM self-test\r\nDate: {email.utils.formatdate(usegmt=True)}\r\n\r\n"
    ).encode("ascii") + _DKIM_PROBE_BODY
    try:
        signature = await asyncio.to_thread(dkim.signer_for(inputs.data_dir).sign, message, domain)
    except dkim.NoKeyError as error:
        fix = f"Make DKIM keys for {domain} on the DKIM page (or: appliance dkim show {domain})."
        raise _StepFailed(str(error), fix) from None
    lookup = _txt_through(inputs.resolver, asyncio.get_running_loop(), inputs.step_timeout)
    results = await asyncio.to_thread(verify_dkim, signature + message, lookup)
    detail = "; ".join(_describe_dkim(result) for result in results)
    if not results or not all(result.passed for result in results):
        raise _StepFailed(detail or "no signature made", _dkim_record_fix(domain))
    return _Passed(detail)


def _txt_through(resolver: Resolver, loop: asyncio.AbstractEventLoop, timeout: float):
    """A blocking TXT lookup for the verifier's thread, asked of the async resolver on loop."""

    def lookup(name: str) -> tuple[bytes, ...]:
        future = asyncio.run_coroutine_threadsafe(resolver.txt(name), loop)
        try:
            return future.result(timeout)
        except NoSuchDomain:
            return ()
        except DnsError as error:
            raise DnsTempError(str(error)) from None
        except TimeoutError:
            raise DnsTempError(f"{name}: no answer within {timeout:g} s") from None

    return lookup


def _describe_dkim(result: DkimResult) -> str:
    reason = f" ({result.reason})" if result.reason else ""
    return f"{result.selector} {result.algorithm}: {result.result}{reason}"


def _dkim_record_fix(domain: str) -> str:
    return (
        f"Publish the DKIM records of {_name(domain)} exactly as the DNS page shows them "
        "(a TXT record for each selector); after a change, DNS may take a while to follow."
    )


# -- 6. outgoing port 25 ------------------------------------------------------------------


async def _check_outbound_port(inputs: SelfTestInputs) -> _Passed:
    """The first of the probe domain's MX hosts that greets on mx_port."""
    probe, port = _name(inputs.probe_domain), inputs.mx_port
    try:
        targets = await inputs.resolver.mx_hosts(probe)
    except DnsError as error:
        fix = (
            f"The box could not look up the mail servers of {probe}: check its internet "
            "connection and the nameservers in [resolver] of appliance.toml."
        )
        raise _StepFailed(str(error), fix) from None
    tries = [(t.host, a) for t in targets for a in t.addresses][:PROBE_ADDRESSES]
    failures = []
    for host, address in tries:
        try:
            async with asyncio.timeout(inputs.step_timeout / len(tries)):
                code, greeting = await _greeting(address, port)
        except (OSError, TimeoutError) as error:
            failures.append(f"{_remote(host, address, port)}: {_describe(error)}")
            continue
        if code == 220:
            return _Passed(f"{_remote(host, address, port)} said: {greeting}")
        failures.append(f"{_remote(host, address, port)} said: {greeting}")
    raise _StepFailed("; ".join(failures), _blocked_port_fix(probe, port))


def _blocked_port_fix(probe_domain: str, port: int) -> str:
    return (
        f"The box cannot reach the mail servers of {_name(probe_domain)} on port {port}; "
        f"your provider probably blocks outgoing port {port}. Ask them to open it, or send "
        "through a relay: set [relay] in appliance.toml to your provider's submission server."
    )


# -- shared -------------------------------------------------------------------------------


def _unverified_tls() -> ssl.SSLContext:
    """TLS that takes any certificate: the box's own is self-signed until ACME gives it
    another, and these steps test delivery, not the certificate, which they report."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _certificate_text(der: bytes | None) -> str:
    return str(tls.summarize(der)) if der else "no certificate"


def _remote(host: str, address: str, port: int) -> str:
    return f"{host}[{address}]:{port}"  # as Postfix names a host


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "no answer (timed out)"
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno)  # asyncio's own text names no reason
    return str(error) or type(error).__name__


def _name(domain: str) -> str:
    """A host or domain name as DNS results carry it: lower case, no final dot."""
    return domain.strip().lower().removesuffix(".")
