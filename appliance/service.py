"""The running appliance: one process, one uvloop event loop, every listener.

Builds the store and the TLS context, starts the listeners named in the
settings, reloads on SIGHUP and stops gracefully on SIGTERM: stop accepting,
let sessions in a transaction finish within the grace period, commit, exit 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import sys

import uvloop

from appliance import config, tls
from appliance.config import Settings
from appliance.smtp.server import ConnectionCounter, SmtpContext, SmtpSession
from appliance.store import Store, Transaction, open_store

log = logging.getLogger(__name__)

# Listener names this version serves; others in appliance.toml are reported.
SERVED = ("smtp",)


class Service:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.store: Store | None = None
        self._smtp_context: SmtpContext | None = None
        self._connections = ConnectionCounter()
        self._sessions: set[SmtpSession] = set()
        self._servers: list[asyncio.Server] = []
        self._stop = asyncio.Event()

    def _tls_context(self, settings: Settings) -> ssl.SSLContext:
        if settings.tls_certificate and settings.tls_key:
            return tls.server_context(settings.tls_certificate, settings.tls_key)
        return tls.server_context(*tls.ensure_self_signed(settings.data_dir, settings.hostname))

    def _apply(self, settings: Settings) -> None:
        self.settings = settings
        self._smtp_context = SmtpContext(
            hostname=settings.hostname,
            settings=settings.smtp,
            store=self.store,
            tls=self._tls_context(settings),
        )

    def smtp_context(self) -> SmtpContext:
        return self._smtp_context

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.store = open_store(self.settings.data_dir, self.settings.store)
        self.store.start()
        try:
            self._apply(self.settings)
            loop.add_signal_handler(signal.SIGTERM, self._stop.set)
            loop.add_signal_handler(signal.SIGINT, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload)
            await self._listen()
            data = self.settings.data_dir
            print(f"ready hostname={self.settings.hostname} data={data}", flush=True)
            if not self.store.read(Transaction.domains):
                print(f"no mail domains yet: appliance --data {data} domain add NAME", flush=True)
            await self._stop.wait()
            log.info("stopping sessions=%d", len(self._sessions))
            await self._shutdown()
        finally:
            commits, writes = self.store.group_commits, self.store.group_operations
            self.store.close()
        log.info("stopped commits=%d writes=%d", commits, writes)
        return 0

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        for name, (host, port) in self.settings.listen.items():
            if name not in SERVED:
                if not self.settings.dev:
                    log.warning("listener not available in this version name=%s", name)
                continue
            server = await loop.create_server(
                lambda: SmtpSession(self.smtp_context, self._connections, self._sessions),
                host,
                port,
                reuse_address=True,
                backlog=512,
            )
            self._servers.append(server)
            print(f"listening {name} on {host}:{port}", flush=True)
            log.info("listening name=%s address=%s:%d", name, host, port)

    def _reload(self) -> None:
        try:
            settings = config.load(self.settings.data_dir, self.settings.dev)
            self._apply(settings)
        except (config.ConfigError, OSError, ssl.SSLError) as error:
            log.error("reload failed, keeping the running settings error=%s", error)
            return
        log.info("reloaded settings and certificates")

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for session in list(self._sessions):
            session.stop()
        waiting = [asyncio.ensure_future(s.wait_closed()) for s in list(self._sessions)]
        if waiting:
            _, late = await asyncio.wait(waiting, timeout=self.settings.shutdown_grace)
            for session in list(self._sessions):
                session.abort()
            if late:
                log.warning("sessions cut off at shutdown count=%d", len(late))
                await asyncio.wait(late, timeout=5)


def setup_logging() -> None:
    # Under systemd, journald stamps each line itself.
    stamp = "" if "JOURNAL_STREAM" in os.environ else "%(asctime)s "
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format=f"{stamp}%(levelname)s %(name)s: %(message)s"
    )


def serve(settings: Settings) -> int:
    setup_logging()
    return uvloop.run(Service(settings).run())
