"""What an owner does with a booted image, through the ports qemu forwards
to loopback: the setup page with the code from the console, the admin's
login, a message in over SMTP and read back over IMAPS."""

from __future__ import annotations

import imaplib
import smtplib
import ssl
import sys

import aiohttp

from tests import web_client
from tests.conftest import REPO, free_port

sys.path.insert(0, str(REPO / "image"))
import build  # noqa: E402
import qemu  # noqa: E402

SMTP, HTTP, HTTPS, IMAPS = 25, 80, 443, 993
GUEST_PORTS = (SMTP, HTTP, HTTPS, IMAPS)
# Each step of the owner's session under TCG on a busy machine: the setup
# page makes DKIM keys and hashes a password, the service then reloads.
OWNER_STEP_TIMEOUT = 180.0
SETUP_CODE = r"Setup code: ([2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4})"


def client_timeout(seconds: float = OWNER_STEP_TIMEOUT) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=seconds)


def start_vm(board: build.Board, disk, workdir) -> qemu.Vm:
    """The VM with every port an owner uses forwarded to a free loopback port."""
    vm = qemu.Vm(board, disk, workdir, {port: free_port() for port in GUEST_PORTS})
    vm.start()
    return vm


def set_up_on_the_web_page(vm: qemu.Vm, code: str) -> None:
    """The setup page over plain HTTP, as on first boot, with the code."""
    fields = {
        "code": code,
        "hostname": web_client.HOSTNAME,
        "domain": web_client.DOMAIN,
        "address": web_client.ADMIN,
        "password": web_client.ADMIN_PASSWORD,
        "password2": web_client.ADMIN_PASSWORD,
    }
    with web_client.Browser(f"http://127.0.0.1:{vm.forwards[HTTP]}") as browser:
        page = browser.submit("/setup", "/setup", fields, timeout=client_timeout())
    assert page.status == 200, page.text[:2000]


def log_in(vm: qemu.Vm) -> web_client.Browser:
    """The admin's browser over HTTPS; the caller closes it."""
    browser = web_client.Browser(f"https://127.0.0.1:{vm.forwards[HTTPS]}")
    fields = {"address": web_client.ADMIN, "password": web_client.ADMIN_PASSWORD}
    page = browser.submit("/login", "/login", fields, timeout=client_timeout())
    if page.status != 303:
        browser.close()
        raise AssertionError(f"login: {page.status} {page.text[:500]}")
    return browser


def send_message(vm: qemu.Vm, message: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", vm.forwards[SMTP], timeout=OWNER_STEP_TIMEOUT) as smtp:
        assert smtp.sendmail("someone@elsewhere.test", [web_client.ADMIN], message) == {}


def inbox_bodies(vm: qemu.Vm) -> list[bytes]:
    """The bodies of the admin's INBOX over IMAPS, oldest first. The box's
    certificate is self-signed until the owner uploads one."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with imaplib.IMAP4_SSL(
        "127.0.0.1", vm.forwards[IMAPS], ssl_context=context, timeout=OWNER_STEP_TIMEOUT
    ) as imap:
        imap.login(web_client.ADMIN, web_client.ADMIN_PASSWORD)
        status, (count,) = imap.select("INBOX", readonly=True)
        assert status == "OK"
        if int(count) == 0:
            return []
        status, data = imap.fetch(f"1:{int(count)}", "(BODY.PEEK[TEXT])")
        assert status == "OK"
        return [item[1] for item in data if isinstance(item, tuple)]


def body_of(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[1]
