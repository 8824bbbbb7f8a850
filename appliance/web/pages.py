"""What every page handler shares: the service's context, templates, and who asks."""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
from aiohttp import web

from appliance.config import Settings
from appliance.login import LoginGuard
from appliance.sessions import MailboxWatch
from appliance.store import Store
from appliance.web import setup_code
from appliance.web.auth import COOKIE, WebSession, WebSessions

log = logging.getLogger("appliance.web")

# Lines kept for the status page's "last deliveries and refusals".
RECENT_LINES = 50


class RecentLog(logging.Handler):
    """The last transaction lines of SMTP and the queue, for the status page."""

    def __init__(self, size: int = RECENT_LINES):
        super().__init__(logging.INFO)
        self.lines: deque[tuple[float, str]] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created, record.getMessage()))


@dataclass
class WebContext:
    settings: Settings  # replaced by the service on reload
    store: Store
    logins: LoginGuard
    reload: Callable[[], None]  # re-read appliance.toml and the certificate
    queue_wake: Callable[[], None]  # the queue runner looks at the queue now
    listening: Callable[[], list[tuple[str, str, int, int]]]  # name, host, port, sessions
    certificate: Callable[[], Path]  # the PEM file the TLS listeners serve
    sessions: WebSessions = None
    watch: MailboxWatch | None = None  # changed mailboxes, for webmail's live list
    recent: RecentLog = field(default_factory=RecentLog)
    started: float = field(default_factory=time.time)
    setup_failures: int = 0
    _setup_done: bool = False

    def __post_init__(self) -> None:
        if self.sessions is None:
            self.sessions = WebSessions(self.settings.web)

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def setup_done(self) -> bool:
        if not self._setup_done:
            self._setup_done = bool(self.store.read(lambda t: t.meta(setup_code.SETUP_DONE)))
        return self._setup_done

    def port_of(self, listener: str) -> int | None:
        address = self.settings.listen.get(listener)
        return None if address is None else address[1]


CONTEXT = web.AppKey("context", WebContext)
SESSION = "session"  # request key of the WebSession, if any

STATIC = Path(__file__).parent / "static"


@functools.cache
def static(name: str) -> str:
    """The URL of a static file, with its content's hash so a browser never
    keeps an old copy after an update."""
    digest = hashlib.sha256((STATIC / name).read_bytes()).hexdigest()[:12]
    return f"/static/{name}?v={digest}"


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,  # every value is escaped unless a template says otherwise
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.globals["static"] = static


def context(request: web.Request) -> WebContext:
    return request.app[CONTEXT]


def session(request: web.Request) -> WebSession | None:
    return request.get(SESSION)


def ensure_session(request: web.Request) -> WebSession:
    """The visitor's session, made now if it has none (for a form's CSRF token)."""
    current = session(request)
    if current is None:
        current = context(request).sessions.new()
        request[SESSION] = current
        request["new_session"] = current
    return current


def load_templates(*names: str) -> None:
    """Compiles templates now (at start), so that no person's first page waits for it."""
    for name in names:
        _templates.get_template(name)


def render(request: web.Request, template: str, status: int = 200, **values) -> web.Response:
    current = ensure_session(request)
    notices, current.notices = current.notices, []
    page = _templates.get_template(template).render(
        session=current, csrf=current.csrf, notices=notices, path=request.path, **values
    )
    return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")


def notice(request: web.Request, text: str) -> None:
    """A line shown at the top of the next page (after a redirect)."""
    ensure_session(request).notices.append(text)


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location)


def set_session_cookie(request: web.Request, response: web.StreamResponse, value: str) -> None:
    # RFC 6265bis: Secure where the page came over TLS (the setup page may come
    # over plain HTTP on first boot), HttpOnly so scripts never see it, and
    # SameSite=Strict so no other site's page can send it along.
    response.set_cookie(
        COOKIE, value, path="/", httponly=True, samesite="Strict", secure=request.secure
    )


def client_address(request: web.Request) -> str:
    return request.remote or "unknown"


def require_login(request: web.Request) -> WebSession:
    current = session(request)
    if current is None or current.address is None:
        raise redirect("/login")
    return current


def require_admin(request: web.Request) -> WebSession:
    current = require_login(request)
    if not current.admin:
        raise web.HTTPForbidden(text="This page is for administrators.")
    return current


def audit(request: web.Request, action: str, **details: str) -> None:
    """One log line per administrative change, saying who made it."""
    who = (session(request).address if session(request) else None) or "-"
    fields = " ".join(f"{k}={v}" for k, v in details.items())
    log.info("web action=%s by=%s client=%s %s", action, who, client_address(request), fields)


def https_url(request: web.Request, path: str) -> str:
    """The same page at the box's HTTPS listener.

    On the host the browser used when that is one of the box's own names
    (its host name, an address, localhost, its .local name): a Host header
    naming some other site never makes the box send anyone there.
    """
    ctx = context(request)
    port = ctx.port_of("https") or 443
    host = (urlsplit("//" + request.host).hostname or "").lower()
    if not _is_own_name(host, ctx.settings.hostname):
        host = ctx.settings.hostname
    host = f"[{host}]" if ":" in host else host
    return f"https://{host}{'' if port == 443 else f':{port}'}{path}"


def _is_own_name(host: str, hostname: str) -> bool:
    if host in (hostname.lower(), "localhost") or host.endswith(".local"):
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
