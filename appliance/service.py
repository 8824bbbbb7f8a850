"""The running appliance: one process, one uvloop event loop, every listener.

Builds the store and the TLS context, starts the listeners named in the
settings, reloads on SIGHUP and stops gracefully on SIGTERM: stop accepting,
let sessions in a transaction finish within the grace period, commit, exit 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import ipaddress
import logging
import os
import signal
import ssl
import sys
from collections.abc import Callable

import uvloop

from appliance import __version__, config, tls
from appliance.config import Settings
from appliance.imap.server import ImapContext, ImapSession
from appliance.login import LoginGuard
from appliance.pop3.server import Pop3Context, Pop3Session
from appliance.sessions import ConnectionCounter, Listener, MailboxWatch, Session
from appliance.smtp.abuse import ClientLedger, ClientLookups
from appliance.smtp.server import SmtpContext, SmtpSession
from appliance.smtp.submission import SubmissionSession
from appliance.store import Store, open_store
from appliance.update.settings import on_trial

log = logging.getLogger(__name__)

# Listeners served by the web pages rather than a mail protocol session.
WEB_LISTENERS = ("http", "https")


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store: Store | None = None
        self.tls: ssl.SSLContext | None = None
        self.logins: LoginGuard | None = None
        self.mailbox_watch = MailboxWatch()
        self._pop3_locked: set[int] = set()
        self._smtp_context: SmtpContext | None = None
        self._pop3_context: Pop3Context | None = None
        self._imap_context: ImapContext | None = None
        self._listeners: list[Listener] = []
        self._servers: list[asyncio.Server] = []
        self.web = None  # the pages' WebContext once the http listeners are up
        self._web_runner = None
        self._stop = asyncio.Event()
        self._migrating: asyncio.Task | None = None

    # Listener name -> (session factory, implicit TLS). Names absent here are
    # reported and skipped: this version does not serve them yet.
    def _protocols(self) -> dict[str, tuple[Callable[[Listener], Session], bool]]:
        return {
            "smtp": (lambda listener: SmtpSession(listener, self.smtp_context), False),
            "submission": (lambda listener: SubmissionSession(listener, self.smtp_context), False),
            "submissions": (lambda listener: SubmissionSession(listener, self.smtp_context), True),
            "pop3": (lambda listener: Pop3Session(listener, self.pop3_context), False),
            "pop3s": (lambda listener: Pop3Session(listener, self.pop3_context), True),
            "imap": (lambda listener: ImapSession(listener, self.imap_context), False),
            "imaps": (lambda listener: ImapSession(listener, self.imap_context), True),
        }

    def _certificate(self, settings: Settings):
        if settings.tls_certificate and settings.tls_key:
            return settings.tls_certificate, settings.tls_key
        uploaded = tls.uploaded_paths(settings.data_dir)
        if all(path.exists() for path in uploaded):
            return uploaded
        return tls.ensure_self_signed(settings.data_dir, settings.hostname)

    def _apply(self, settings: Settings) -> None:
        certificate, key = self._certificate(settings)
        if self.tls is None:
            self.tls = tls.server_context(certificate, key)
        else:
            # Checked on a fresh context first, so a bad pair leaves the live
            # one as it was; then loaded into the live one, which the implicit
            # TLS listeners hold, for every new handshake.
            tls.server_context(certificate, key)
            self.tls.load_cert_chain(certificate, key)
        self.settings = settings
        self.certificate_path = certificate
        if self.web is not None:
            self.web.settings = settings
        self._smtp_context = SmtpContext(
            hostname=settings.hostname,
            settings=settings.smtp,
            store=self.store,
            tls=self.tls,
            logins=self.logins,
            data_dir=settings.data_dir,
            queued=self.queue_runner.wake,
            checker=_checker(settings),
            # What port 25's clients did is kept across reloads; the settings are new.
            ledger=ClientLedger(settings.smtp, getattr(self._smtp_context, "ledger", None)),
            lookups=ClientLookups(settings.resolver, settings.smtp.client_lookup_timeout),
        )
        self._pop3_context = Pop3Context(
            hostname=settings.hostname,
            settings=settings.pop3,
            store=self.store,
            tls=self.tls,
            logins=self.logins,
            locked=self._pop3_locked,
        )
        self._imap_context = ImapContext(
            hostname=settings.hostname,
            settings=settings.imap,
            store=self.store,
            tls=self.tls,
            logins=self.logins,
            watch=self.mailbox_watch,
        )

    def smtp_context(self) -> SmtpContext:
        return self._smtp_context

    def pop3_context(self) -> Pop3Context:
        return self._pop3_context

    def imap_context(self) -> ImapContext:
        return self._imap_context

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        data = self.settings.data_dir
        migrate = not on_trial(data, __version__)
        self.store = open_store(data, self.settings.store, incompatible_migrations=migrate)
        self.store.on_change = self.mailbox_watch.changed
        self.store.start()
        self.logins = LoginGuard(self.store, self.settings.login)
        self.queue_runner = LazyQueueRunner(self.settings, self.store)
        try:
            self._apply(self.settings)
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload)
            await self._listen()
            await self._listen_web()
            if self._smtp_context.checker is not None:
                loop.run_in_executor(None, self._smtp_context.checker.warm_up)
            queue = loop.create_task(self.queue_runner.run(self._stop))
            data = self.settings.data_dir
            self._announce_setup()
            print(f"ready hostname={self.settings.hostname} data={data}", flush=True)
            await self._stop.wait()
            log.info("stopping sessions=%d", sum(len(x.sessions) for x in self._listeners))
            await self._shutdown()
            await queue
        finally:
            commits, writes = self.store.group_commits, self.store.group_operations
            self.logins.close()
            self.store.close()
        log.info("stopped commits=%d writes=%d", commits, writes)
        return 0

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        protocols = self._protocols()
        for name, (host, port) in self.settings.listen.items():
            if name in WEB_LISTENERS:
                continue
            if name not in protocols:
                if not self.settings.dev:
                    log.warning("listener not available in this version name=%s", name)
                continue
            factory, implicit_tls = protocols[name]
            listener = Listener(name, implicit_tls, _is_loopback(host), ConnectionCounter())
            server = await loop.create_server(
                lambda factory=factory, listener=listener: factory(listener),
                host,
                port,
                ssl=self.tls if implicit_tls else None,
                reuse_address=True,
                backlog=512,
            )
            self._listeners.append(listener)
            self._servers.append(server)
            print(f"listening {name} on {host}:{port}", flush=True)
            log.info("listening name=%s address=%s:%d", name, host, port)

    async def _listen_web(self) -> None:
        """The setup and admin pages, on the same loop as the mail listeners."""
        wanted = {n: a for n, a in self.settings.listen.items() if n in WEB_LISTENERS}
        if not wanted:
            return
        from aiohttp import web

        from appliance.web.app import make_app
        from appliance.web.pages import WebContext

        self.web = WebContext(
            settings=self.settings,
            store=self.store,
            logins=self.logins,
            reload=self._reload,
            queue_wake=self.queue_runner.wake,
            listening=self._listening,
            certificate=lambda: self.certificate_path,
            watch=self.mailbox_watch,
        )
        for name in ("appliance.smtp.server", "appliance.delivery.queue"):
            logging.getLogger(name).addHandler(self.web.recent)
        self._web_runner = web.AppRunner(make_app(self.web), access_log=None)
        await self._web_runner.setup()
        for name, (host, port) in wanted.items():
            ssl_context = self.tls if name == "https" else None
            site = web.TCPSite(self._web_runner, host, port, ssl_context=ssl_context, backlog=128)
            await site.start()
            print(f"listening {name} on {host}:{port}", flush=True)
            log.info("listening name=%s address=%s:%d", name, host, port)

    def _listening(self) -> list[tuple[str, str, int, int]]:
        """Each mail listener: name, host, port and sessions now open."""
        return [
            (listener.name, *self.settings.listen[listener.name], len(listener.sessions))
            for listener in self._listeners
        ]

    def _announce_setup(self) -> None:
        """Until setup is done, the console shows where to go and the code to type."""
        from appliance.web import setup_code

        if self.store.read(lambda txn: txn.meta(setup_code.SETUP_DONE)):
            return
        code = setup_code.ensure(self.settings.data_dir)
        if "http" in self.settings.listen:
            host, port = self.settings.listen["http"]
            shown = self.settings.hostname if host in ("0.0.0.0", "::") else host
            print(f"setup page: http://{shown}:{port}/setup", flush=True)
        print(f"setup code: {code}", flush=True)

    def _reload(self) -> None:
        try:
            self._apply(config.load(self.settings.data_dir, self.settings.dev))
        except (config.ConfigError, OSError, ssl.SSLError) as error:
            log.error("reload failed, keeping the running settings error=%s", error)
            return
        log.info("reloaded settings and certificates")
        self._finish_migrations()

    def _finish_migrations(self) -> None:
        """The store's migrations held back while this version was on trial, once it
        booted good: appliance-booted.service sends SIGHUP after recording that.
        A reload rather than a restart, so no session is cut (store/schema.py)."""
        if not self.store.pending_migrations() or on_trial(self.settings.data_dir, __version__):
            return
        task = asyncio.get_running_loop().create_task(self.store.finish_migrations())
        self._migrating = task  # held: the loop keeps only a weak reference
        task.add_done_callback(_log_migrations)

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        if self._web_runner is not None:
            await self._web_runner.cleanup()
        sessions = [s for listener in self._listeners for s in listener.sessions]
        for session in sessions:
            session.stop()
        waiting = [asyncio.ensure_future(s.wait_closed()) for s in sessions]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=self.settings.shutdown_grace)
            for session in sessions:
                session.abort()
            if late:
                log.warning("sessions cut off at shutdown count=%d", len(late))
                await asyncio.wait(late, timeout=5)


def _log_migrations(task: asyncio.Task) -> None:
    if task.cancelled():
        return
    if task.exception() is not None:
        log.error("schema migration failed, the store is unchanged error=%s", task.exception())
    else:
        log.info("schema migrated found=%d", task.result())


def _checker(settings: Settings):
    """The inbound checks and the spam filter, or None when both are off;
    their code (dkimpy, pyspf, the Public Suffix List: some 15 MB) is loaded
    only when one is on."""
    if not settings.smtp.checks and not settings.filter.rspamd:
        return None
    from appliance.mailauth.dmarc import AggregateRecords
    from appliance.mailauth.inbound import Checker
    from appliance.mailauth.rspamd import RspamdClient

    spam_filter = None
    if settings.filter.rspamd:
        filter_ = settings.filter
        spam_filter = RspamdClient(filter_.rspamd, filter_.timeout, settings.hostname)
    return Checker(
        settings.hostname,
        settings.resolver,
        trusted_sealers=settings.smtp.arc_trusted_sealers,
        records=AggregateRecords(settings.data_dir / "dmarc"),
        spam_filter=spam_filter,
        authenticate=settings.smtp.checks,
    )


class LazyQueueRunner:
    """The outbound queue runner, loaded when there is first mail to send.

    Its DNS resolver and SMTP client weigh about 9 MB; a box that only
    receives never loads them. Until then this waits for the sessions' wake()
    (mail was queued), or finds entries on its own (left from before a
    restart, or queued by the CLI) every idle_recheck seconds.
    """

    def __init__(self, settings: Settings, store: Store):
        self._settings = settings
        self._store = store
        self._rung = asyncio.Event()
        self._runner = None

    def wake(self) -> None:
        self._rung.set()
        if self._runner is not None:
            self._runner.wake()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set() and not self._store.read(lambda txn: txn.queued()):
            self._rung.clear()
            waiting = {asyncio.ensure_future(self._rung.wait()), asyncio.ensure_future(stop.wait())}
            await asyncio.wait(
                waiting, timeout=self._settings.queue.idle_recheck, return_when="FIRST_COMPLETED"
            )
            for future in waiting:
                future.cancel()
        if stop.is_set():
            return
        from appliance.delivery.queue import make_queue_runner

        self._runner = make_queue_runner(self._settings, self._store)
        await self._runner.run(stop)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def setup_logging() -> None:
    # Under systemd, journald stamps each line itself.
    stamp = "" if "JOURNAL_STREAM" in os.environ else "%(asctime)s "
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"{stamp}%(levelname)s %(name)s: %(message)s"
    )


def _return_large_allocations_to_the_system() -> None:
    """Keep glibc from holding freed large blocks (an Argon2 hash takes 19 MiB).

    glibc raises its mmap threshold each time a large block is freed, so the
    next ones come from the heap and stay resident for the life of the
    process. A fixed threshold (mallopt M_MMAP_THRESHOLD) keeps them mmapped
    and returned on free: a small box does not carry the peak of its busiest
    login forever.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 128 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def serve(settings: Settings) -> int:
    setup_logging()
    _return_large_allocations_to_the_system()
    return uvloop.run(Service(settings).run())
