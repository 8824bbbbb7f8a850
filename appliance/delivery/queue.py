"""The outbound queue runner: what waits in the store's queue leaves by MX.

One task in the server's loop. It takes the entries that are due (one per
destination domain), at most `concurrency` at a time, finds where each
domain's mail goes (its MX hosts, or the relay host), and hands the message
to the first host that answers. Each recipient then ends one of three ways,
recorded in one commit: delivered (off the queue), refused for good (off
the queue, with a bounce to the sender in the same commit), or deferred
(tried again after a growing delay, and bounced once it has waited
`max_age`, RFC 5321 4.5.4.1's "at least 4-5 days").

The queue lives in the store, so a restart or a crash loses nothing: an
entry whose attempt was cut short is simply tried again (RFC 5321 6.1 takes
a duplicate over a loss).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime

from appliance.config import QueueSettings, RelaySettings, Settings
from appliance.delivery.bounce import notify_sender
from appliance.delivery.dane import (
    dane_applies,
    dane_requires_tls,
    peer_chain,
    tlsa_matches,
    unverified_context,
)
from appliance.delivery.dns import DnsError, DnsPermanentError, MxTarget, Resolver
from appliance.delivery.dsn import RecipientFailure
from appliance.delivery.mta_sts import (
    MxPlan,
    PolicyCache,
    apply_policy,
    resolving_fetcher,
    verifying_context,
)
from appliance.smtp.client import Credentials, Kind, Outcome, has_eight_bit
from appliance.smtp.outbound import Host, OutboundMessage, OutboundSettings, deliver
from appliance.store import QueuedMessage, Store

log = logging.getLogger(__name__)

# MTA-STS policies fetched, kept across restarts (RFC 8461 10: a reboot must
# not hand an attacker back a domain's mail in clear).
MTA_STS_CACHE = "mta-sts.json"


# Sends messages to the first of the targets that answers, over one
# connection (with a verified certificate when the flag says so): the
# outcome for each recipient of each message.
Sender = Callable[
    [Sequence[MxTarget], Sequence[OutboundMessage], bool], Awaitable[list[dict[str, Outcome]]]
]


class QueueRunner:
    def __init__(
        self,
        store: Store,
        hostname: str,
        settings: QueueSettings,
        resolver: Resolver,
        send: Sender,
        by_mx: bool = True,  # False: a relay host takes everything, no MX is looked up
        policies: PolicyCache | None = None,  # MTA-STS; None: not looked for
    ):
        self._store = store
        self._hostname = hostname
        self._settings = settings
        self._resolver = resolver
        self._send = send
        self._by_mx = by_mx
        self._policies = policies
        self._wake = asyncio.Event()
        self._running: set[int] = set()  # entries being tried now
        self._tasks: set[asyncio.Task] = set()

    def wake(self) -> None:
        """Something was queued (or retried): look at the queue now."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wake.clear()
            wait = self._start_due(time.time())
            waiter = asyncio.ensure_future(self._wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, stopper}, timeout=wait, return_when="FIRST_COMPLETED")
            waiter.cancel()
            stopper.cancel()
        # Attempts under way are cut short; their entries stay queued as they
        # were, and are tried again after the restart.
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _start_due(self, now: float) -> float:
        """Start the due entries there is room for, those of one domain
        together (one connection carries them all); seconds until the next."""
        wait = self._settings.idle_recheck
        batches: dict[str, list[QueuedMessage]] = {}
        for item in self._store.read(lambda txn: txn.queued()):
            if item.id in self._running:
                continue
            if item.next_attempt > now:
                wait = min(wait, item.next_attempt - now)
                continue
            # With a relay every entry goes to the one host: one batch for all.
            domain = _domain(item) if self._by_mx else ""
            batch = batches.get(domain)
            if batch is not None and len(batch) < self._settings.messages_per_connection:
                batch.append(item)  # its task has not run yet: the item goes along
                self._running.add(item.id)
                continue
            if len(self._tasks) >= self._settings.concurrency:
                wait = min(wait, 1.0)
                continue
            batches[domain] = [item]
            self._running.add(item.id)
            self._start(domain, batches[domain])
        return max(wait, 0.0)

    def _start(self, domain: str, batch: list[QueuedMessage]) -> None:
        """Begin a delivery of the batch; entries added to it until the task
        first runs (this same scan) go along."""
        task = asyncio.get_running_loop().create_task(self._attempt(domain, batch))
        self._tasks.add(task)
        task.add_done_callback(self._finished(batch))

    def _finished(self, batch: list[QueuedMessage]):
        def done(task: asyncio.Task) -> None:
            self._tasks.discard(task)
            self._running.difference_update(item.id for item in batch)
            if not task.cancelled() and task.exception() is not None:
                log.error("queue attempt failed ids=%s error=%r", _ids(batch), task.exception())
            self._wake.set()  # room for another

        return done

    async def _attempt(self, domain: str, batch: list[QueuedMessage]) -> None:
        messages = self._store.read(lambda txn: [self._outbound(txn, item) for item in batch])
        try:
            targets = await self._resolver.mx_hosts(domain, [self._hostname]) if self._by_mx else []
        except DnsError as error:
            kind = Kind.PERMANENT if isinstance(error, DnsPermanentError) else Kind.TEMPORARY
            status = error.status or ("5.4.4" if kind is Kind.PERMANENT else "4.4.3")
            outcome = Outcome(kind, status, None, str(error), "")
            results = [dict.fromkeys(item.recipients, outcome) for item in batch]
        else:
            plan = await self._plan(domain, targets)
            if plan.verify_tls and not plan.targets:
                # RFC 8461 5.1: no MX host the policy names; deferred, never bounced at once.
                text = f"no MX host of {domain} is named by its MTA-STS policy"
                outcome = Outcome(Kind.TEMPORARY, "4.7.5", None, text, "")
                results = [dict.fromkeys(item.recipients, outcome) for item in batch]
            else:
                results = await self._send(plan.targets, messages, plan.verify_tls)
        now = time.time()
        for item, outcomes in zip(batch, results, strict=True):
            await self._record(item, outcomes, now)

    async def _plan(self, domain: str, targets: Sequence[MxTarget]) -> MxPlan:
        """The MX hosts to try under the domain's MTA-STS policy (RFC 8461 5)."""
        if self._policies is None or not self._by_mx:
            return MxPlan(tuple(targets), False, ())
        try:
            policy_id = await self._resolver.mta_sts_txt(domain)
        except DnsError:
            policy_id = None  # what is cached and unexpired still applies (3.3)
        policy = await self._policies.policy_for(domain, policy_id, time.time())
        return apply_policy(policy, targets, domain)

    def _outbound(self, txn, item: QueuedMessage) -> OutboundMessage:
        """The entry as the SMTP client sends it: its size and 8-bit-ness are
        read now, its octets later, a chunk per short transaction, so that a
        connection's batch never sits in memory whole."""
        body = txn.blob(item.blob_id) or b""
        return OutboundMessage(
            item.sender,
            item.recipients,
            lambda: self._chunks(item),
            size=len(item.head) + len(body),
            eight_bit=has_eight_bit(item.head) or has_eight_bit(body),
        )

    def _chunks(self, item: QueuedMessage) -> Iterator[bytes]:
        yield bytes(item.head)
        offset, chunk = 0, self._settings.read_chunk
        while True:
            with self._store.reader(buffers=True) as txn:
                body = txn.blob(item.blob_id)
                # Copied while the pages are held: the transport may keep it.
                piece = b"" if body is None else bytes(body[offset : offset + chunk])
            if not piece:
                return
            yield piece
            offset += len(piece)

    async def _record(self, item: QueuedMessage, outcomes: dict[str, Outcome], now: float):
        expired = now - item.created >= self._settings.max_age
        failures: list[RecipientFailure] = []
        delivered: list[str] = []
        deferred: list[tuple[str, Outcome]] = []
        moment = datetime.fromtimestamp(now, UTC)
        for recipient in item.recipients:
            outcome = outcomes.get(recipient) or Outcome(
                Kind.TEMPORARY, "4.4.0", None, "no result", ""
            )
            if outcome.kind is Kind.DELIVERED:
                delivered.append(recipient)
            elif outcome.kind is Kind.PERMANENT or expired:
                failures.append(_failure(recipient, outcome, moment))
            else:
                deferred.append((recipient, outcome))
        next_attempt = now + self._settings.delay_after(item.attempts + 1)
        last_error = deferred[-1][1].diagnostic if deferred else ""

        finished = delivered + [failure.final_recipient for failure in failures]

        def record(txn):
            notify_sender(txn, item, failures, self._hostname, now)
            txn.queue_attempted(item.id, finished, last_error, next_attempt)

        await self._store.submit(record)
        for recipient in delivered:
            log.info(
                "queue delivered id=%d to=<%s> %s", item.id, recipient, _said(outcomes, recipient)
            )
        for failure in failures:
            log.info(
                "queue bounced id=%d to=<%s> status=%s %s",
                item.id,
                failure.final_recipient,
                failure.status,
                failure.diagnostic_code,
            )
        for recipient, outcome in deferred:
            log.info(
                "queue deferred id=%d to=<%s> attempts=%d %s",
                item.id,
                recipient,
                item.attempts + 1,
                outcome.diagnostic,
            )


class Courier:
    """Hands a message to the first target that answers for it: the MX hosts
    in order (RFC 5321 5.1: the next one when a host cannot be reached, not
    when it said something), each over STARTTLS when offered."""

    def __init__(
        self,
        settings: OutboundSettings,
        port: int,
        resolver: Resolver,
        relay: RelaySettings | None = None,
    ):
        self._settings = settings
        self._port = port
        self._resolver = resolver
        self._relay = relay
        # Opportunistic TLS (RFC 7435): MX certificates are not checked, as
        # most of them would not pass; TLS still keeps passive eyes out.
        self._tls = ssl.create_default_context()
        self._tls.check_hostname = False
        self._tls.verify_mode = ssl.CERT_NONE
        self._verifying = verifying_context()

    async def send(
        self, targets: Sequence[MxTarget], outbound: Sequence[OutboundMessage], verify: bool
    ) -> list[dict[str, Outcome]]:
        if self._relay is not None:
            hosts = [await self._relay_host(self._relay)]
        else:
            hosts = [h for t in targets if t.addresses and (h := await self._host(t, verify))]
        outcomes: list[dict[str, Outcome]] = []
        for host in hosts:
            results = await deliver(host, outbound, self._settings)
            outcomes = [{r.recipient: r.outcome for r in message} for message in results]
            if any(o.reply is not None for message in outcomes for o in message.values()):
                break  # the host answered: what it said stands
        if not outcomes:
            unreachable = Outcome(Kind.TEMPORARY, "4.4.1", None, "no MX host has an address", "")
            outcomes = [dict.fromkeys(m.recipients, unreachable) for m in outbound]
        return outcomes

    async def _host(self, target: MxTarget, verify: bool) -> Host | None:
        """How to reach one MX host; None when it must be skipped."""
        if target.secure:
            # DANE first (RFC 8461 2, RFC 7672): TLSA records of a host whose
            # MX and addresses DNSSEC vouched for.
            try:
                answer = await self._resolver.tlsa(target.canonical or target.host, self._port)
            except DnsError:
                return None  # RFC 7672 2.1.1: unknown whether TLS is required
            if dane_applies(answer):
                names = {target.host, target.canonical}

                def matches(ssl_object, records=answer.records) -> bool:
                    return tlsa_matches(records, peer_chain(ssl_object), names=names)

                return Host(
                    target.host,
                    target.addresses,
                    self._port,
                    unverified_context(),  # the TLSA records decide, not the CAs
                    require_tls=True,
                    check_peer=matches,
                )
            if dane_requires_tls(answer):
                return Host(target.host, target.addresses, self._port, self._tls, True)
        if verify:
            # MTA-STS enforce (RFC 8461 4.2): STARTTLS, and a certificate
            # valid for the MX name as published; else the next host.
            return Host(target.host, target.addresses, self._port, self._verifying, True)
        return Host(target.host, target.addresses, self._port, self._tls)

    async def _relay_host(self, relay: RelaySettings) -> Host:
        try:
            addresses: tuple[str, ...] = (str(ipaddress.ip_address(relay.host)),)
        except ValueError:
            try:
                addresses = await self._resolver.addresses(relay.host)
            except DnsError:
                addresses = ()  # deliver() then answers: no connection, try later
        credentials = None
        if relay.username:
            credentials = Credentials(relay.username, relay.password, relay.tls == "none")
        # The relay is one known host: its certificate is checked, unlike an MX's.
        tls = None if relay.tls == "none" else ssl.create_default_context()
        return Host(
            relay.host,
            addresses,
            relay.port,
            tls,
            require_tls=tls is not None,
            implicit_tls=relay.tls == "tls",
            credentials=credentials,
        )


def make_queue_runner(settings: Settings, store: Store) -> QueueRunner:
    """The runner the service starts, built from appliance.toml."""
    resolver = Resolver(settings.resolver)
    outbound = OutboundSettings(
        helo_name=settings.hostname,
        timeouts=settings.queue.timeouts,
        connect_timeout=settings.queue.connect_timeout,
    )
    courier = Courier(outbound, settings.queue.mx_port, resolver, settings.relay)
    policies = PolicyCache(resolving_fetcher(resolver), settings.data_dir / MTA_STS_CACHE)
    return QueueRunner(
        store,
        settings.hostname,
        settings.queue,
        resolver,
        courier.send,
        by_mx=settings.relay is None,
        policies=policies,
    )


def _domain(item: QueuedMessage) -> str:
    return item.recipients[0].rpartition("@")[2].lower()


def _ids(batch: list[QueuedMessage]) -> str:
    return ",".join(str(item.id) for item in batch)


def _failure(recipient: str, outcome: Outcome, moment: datetime) -> RecipientFailure:
    status = outcome.status
    if outcome.kind is not Kind.PERMANENT:
        # Retries ran out: RFC 3463 4.4.7, delivery time expired, unless the
        # last deferral said something more precise.
        status = status if status.startswith("4.") and status != "4.0.0" else "4.4.7"
    if not status.startswith(("4.", "5.")):
        status = "5.0.0"
    diagnostic = f"smtp; {outcome.reply.code} {outcome.text}" if outcome.reply else outcome.text
    return RecipientFailure(
        recipient,
        "failed",
        status,
        remote_mta=outcome.host,
        diagnostic_code=diagnostic if outcome.reply else f"x-local; {diagnostic}",
        last_attempt_date=moment,
    )


def _said(outcomes: dict[str, Outcome], recipient: str) -> str:
    outcome = outcomes[recipient]
    return f"host={outcome.host} reply={outcome.reply.code if outcome.reply else '-'}"
