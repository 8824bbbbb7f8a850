"""A browser for tests of the web pages: aiohttp's client over real sockets.

Each Browser has its own cookie jar, so two of them are two people. It never
follows a redirect unless asked: tests check where a page sends them. Its
event loop is its own, so tests read as plain calls and mix freely with
imaplib, smtplib and the CLI.
"""

from __future__ import annotations

import asyncio
import email.policy
import html
import imaplib
import re
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from http.cookies import Morsel, SimpleCookie
from pathlib import Path

import aiohttp
from multidict import CIMultiDictProxy

from tests.conftest import PASSWORD, Appliance

# An Argon2 hash, or a DKIM key made at setup, on a busy shared machine: far
# below this, which bounds a hung server.
REQUEST_TIMEOUT = 60

# What the setup page is given in these tests. The host name differs from the
# one tests.conftest writes, so a test sees setup put it in appliance.toml.
HOSTNAME = "box.example.test"
DOMAIN = "example.test"
ADMIN = "admin@example.test"
ADMIN_PASSWORD = "velvet tractor plum 42"
# Passphrases check_strength accepts, for the accounts tests add.
USER_PASSWORD = "lantern orchard 77 bicycle"
NEW_PASSWORD = "granite meadow 19 harbour"

# Where mail from outside comes from in these tests: a stranger's domain.
STRANGER_ADDRESS = "zoe@elsewhere.test"

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Page:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    url: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    @property
    def location(self) -> str | None:
        return self.headers.get("Location")

    def cookie(self, name: str = "session") -> Morsel | None:
        """The cookie the response sets, with its attributes, as a browser reads them."""
        for line in self.headers.getall("Set-Cookie", []):
            parsed = SimpleCookie()
            parsed.load(line)
            if name in parsed:
                return parsed[name]
        return None

    def csrf(self) -> str:
        found = _CSRF.search(self.text)
        assert found, f"no CSRF token on the page at {self.url}: {self.text[:500]}"
        return html.unescape(found.group(1))

    def field_value(self, name: str) -> str | None:
        """What a form field shows, as a browser reads the attribute."""
        found = re.search(rf'name="{re.escape(name)}"[^>]*? value="([^"]*)"', self.text)
        return None if found is None else html.unescape(found.group(1))

    def form_actions(self) -> list[str]:
        """Where the page's forms post to, as a browser reads the attributes."""
        return [html.unescape(action) for action in re.findall(r'action="([^"]*)"', self.text)]

    def notices(self) -> list[str]:
        """The lines shown at the top of the page, as a person reads them."""
        found = re.findall(r'<p class="(?:notice|error)"[^>]*>(.*?)</p>', self.text, re.S)
        return [html.unescape(text) for text in found]


class Browser:
    def __init__(self, base_url: str):
        self.base_url = base_url
        self._loop = asyncio.new_event_loop()
        self._http = self._loop.run_until_complete(self._open())

    @staticmethod
    async def _open() -> aiohttp.ClientSession:
        # unsafe=True: the jar keeps cookies of an IP address host (127.0.0.1)
        return aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        )

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._loop.run_until_complete(self._http.close())
        self._loop.close()

    def url(self, path: str) -> str:
        return path if "://" in path else self.base_url + path

    def request(self, method: str, path: str, follow: bool = False, **options) -> Page:
        return self._loop.run_until_complete(self._request(method, path, follow, **options))

    async def _request(self, method: str, path: str, follow: bool, **options) -> Page:
        async with self._http.request(
            method, self.url(path), allow_redirects=follow, ssl=False, **options
        ) as response:
            body = await response.read()
            return Page(response.status, response.headers, body, str(response.url))

    def get(self, path: str, follow: bool = False, **options) -> Page:
        return self.request("GET", path, follow, **options)

    def post(self, path: str, form: dict[str, str] | None = None, **options) -> Page:
        """A form POST, or, given data=, a POST of that body as it is."""
        options.setdefault("data", form or {})
        return self.request("POST", path, **options)

    def submit(self, page: str, action: str, fields: dict[str, str], **options) -> Page:
        """Fill in a form as a person would: open the page, send the form with its token."""
        shown = self.get(page)
        assert shown.status == 200, (page, shown.status, shown.text[:500])
        return self.post(action, {"csrf": shown.csrf(), **fields}, **options)

    def session_id(self) -> str | None:
        """The session cookie the jar holds (for a test playing a thief)."""
        for cookie in self._http.cookie_jar:
            if cookie.key == "session":
                return cookie.value
        return None


def setup_fields(app: Appliance, **changes: str) -> dict[str, str]:
    fields = {
        "code": app.setup_code(),
        "hostname": HOSTNAME,
        "domain": DOMAIN,
        "address": ADMIN,
        "password": ADMIN_PASSWORD,
        "password2": ADMIN_PASSWORD,
    }
    return {**fields, **changes}


def complete_setup(app: Appliance, **changes: str) -> Page:
    """The setup page filled in over plain HTTP, as on first boot."""
    with Browser(app.http_url) as browser:
        return browser.submit("/setup", "/setup", setup_fields(app, **changes))


def log_in(app: Appliance, address: str, password: str) -> Browser:
    """A browser logged in over HTTPS; the caller closes it."""
    browser = Browser(app.https_url)
    page = browser.submit("/login", "/login", {"address": address, "password": password})
    if page.status != 303:
        browser.close()
        raise AssertionError(f"login as {address}: {page.status} {page.text[:500]}")
    return browser


def listing(app: Appliance) -> dict[str, str]:
    """Domains, accounts and aliases as `appliance ... list` prints them."""
    found = {}
    for kind in ("domain", "user", "alias"):
        result = app.cli(kind, "list")
        assert result.returncode == 0, result.stderr
        found[kind] = result.stdout
    return found


def imap_login_works(app: Appliance, address: str, password: str) -> bool:
    """Whether a mail client logs in with that password (plain IMAP on loopback)."""
    with imaplib.IMAP4(app.host, app.imap_port, timeout=REQUEST_TIMEOUT) as client:
        try:
            client.login(address, password)
        except imaplib.IMAP4.error:
            return False
        client.logout()
        return True


def deliver(
    app: Appliance, recipient: str, message: bytes | EmailMessage, sender: str = STRANGER_ADDRESS
) -> None:
    """A message from elsewhere, over SMTP to the box's port 25 listener."""
    raw = (
        message.as_bytes(policy=email.policy.SMTP) if isinstance(message, EmailMessage) else message
    )
    with smtplib.SMTP(app.host, app.port, timeout=REQUEST_TIMEOUT) as smtp:
        smtp.sendmail(sender, [recipient], raw)


def imap_client(app: Appliance, address: str) -> imaplib.IMAP4:
    """A mail client logged in over IMAP (plain, on loopback); the caller logs out."""
    client = imaplib.IMAP4(app.host, app.imap_port, timeout=REQUEST_TIMEOUT)
    client.login(address, PASSWORD)
    return client


def set_up_appliance(data: Path, **settings: dict) -> Appliance:
    """A started appliance whose setup was completed through the setup page."""
    data.mkdir(parents=True, exist_ok=True)
    app = Appliance(data=data, settings=settings)
    app.start()
    try:
        page = complete_setup(app)
        assert page.status == 200, page.text
    except BaseException:
        app.stop()
        raise
    return app
