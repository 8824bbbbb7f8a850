"""Web sessions: who is logged in, and the CSRF token of each browser.

Sessions live in memory: a restart logs everyone out, which a box that
restarts only for updates can afford, and nothing secret reaches the disk.
Every visitor gets a session before logging in, so the login and setup forms
carry a CSRF token too; logging in replaces it with a new one (no fixation).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from appliance.config import WebSettings

COOKIE = "session"
# Sessions kept at most; past this the least recently used go first, so a
# flood of new visitors cannot grow memory without bound.
MAX_SESSIONS = 10_000


@dataclass(slots=True)
class WebSession:
    id: str
    csrf: str
    created: float
    last_seen: float
    address: str | None = None  # None until logged in
    admin: bool = False
    notices: list[str] = field(default_factory=list)  # shown once on the next page

    def csrf_matches(self, token: str) -> bool:
        return hmac.compare_digest(self.csrf.encode(), token.encode())


class WebSessions:
    def __init__(self, settings: WebSettings):
        self.settings = settings
        self._sessions: dict[str, WebSession] = {}  # least recently used first

    def new(self, address: str | None = None, admin: bool = False) -> WebSession:
        now = time.monotonic()
        session = WebSession(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now)
        session.address, session.admin = address, admin
        self._sessions[session.id] = session
        while len(self._sessions) > MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        return session

    def get(self, session_id: str | None) -> WebSession | None:
        """The live session of that id, or None if there is none or it expired."""
        session = self._sessions.pop(session_id, None) if session_id else None
        if session is None:
            return None
        now = time.monotonic()
        idle = now - session.last_seen > self.settings.session_idle_timeout
        if idle or now - session.created > self.settings.session_max_age:
            return None
        session.last_seen = now
        self._sessions[session.id] = session  # now the most recently used
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def end_for(self, address: str) -> None:
        """End every session of an account (its password changed, or it is gone)."""
        for session in [s for s in self._sessions.values() if s.address == address]:
            del self._sessions[session.id]
