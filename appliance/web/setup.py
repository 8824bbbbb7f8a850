"""First-boot setup: whoever has the console's setup code names the box and its first admin."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from hashlib import sha256

from aiohttp import web

from appliance import config
from appliance.addresses import AddressError, normalize_address, normalize_domain
from appliance.passwords import WeakPassword, check_strength, hash_password
from appliance.store import StoreError, Transaction
from appliance.web import setup_code
from appliance.web.pages import audit, client_address, context, https_url, render

log = logging.getLogger("appliance.web")


class SetupError(ValueError):
    pass


class SetupAlreadyDone(StoreError):
    pass


def add_routes(app: web.Application) -> None:
    app.router.add_get("/setup", show)
    app.router.add_post("/setup", complete)


async def show(request: web.Request) -> web.Response:
    return render(request, "setup.html", form=_kept({}), error=None)


async def complete(request: web.Request) -> web.Response:
    ctx = context(request)
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    if not await _code_accepted(request, form.get("code", "")):
        error = "That is not the setup code shown on the box's console."
        return render(request, "setup.html", status=403, form=_kept(form), error=error)
    loop = asyncio.get_running_loop()
    try:
        hostname, domain, address, password = _checked(form)
        password_hash = await loop.run_in_executor(None, hash_password, password)
    except (SetupError, AddressError, WeakPassword) as problem:
        return render(request, "setup.html", status=400, form=_kept(form), error=str(problem))
    await loop.run_in_executor(None, _make_dkim_keys, ctx.data_dir, domain)
    try:
        await ctx.store.submit(lambda txn: _set_up(txn, domain, address, password_hash))
    except SetupAlreadyDone:
        raise web.HTTPNotFound(text="This box is set up already.") from None
    config.set_hostname(ctx.data_dir, hostname)
    setup_code.remove(ctx.data_dir)
    ctx.reload()
    audit(request, "setup", hostname=hostname, domain=domain, admin=address)
    return render(
        request,
        "setup_done.html",
        hostname=hostname,
        address=address,
        next_url=https_url(request, "/login"),
        fingerprint=_fingerprint(ctx.certificate()),
    )


async def _code_accepted(request: web.Request, typed: str) -> bool:
    """Checked through the login guard: wrong codes slow their sender down as
    wrong passwords do; too many in all and the code is replaced."""
    ctx = context(request)

    def check() -> bool | None:
        return True if setup_code.matches(ctx.data_dir, typed) else None

    if await ctx.logins.guarded(client_address(request), check):
        return True
    ctx.setup_failures += 1
    client = client_address(request)
    log.warning("web setup code wrong client=%s failures=%d", client, ctx.setup_failures)
    if ctx.setup_failures >= ctx.settings.web.setup_code_attempts:
        ctx.setup_failures = 0
        code = setup_code.renew(ctx.data_dir)
        log.warning("web setup code replaced after too many wrong tries")
        print(f"setup code (new): {code}", flush=True)  # the console is where the owner looks
    return False


def _checked(form: dict[str, str]) -> tuple[str, str, str, str]:
    try:
        hostname = normalize_domain(form.get("hostname", ""))
    except AddressError:
        raise SetupError("The mail host name must be a full name like mail.example.com.") from None
    domain = normalize_domain(form.get("domain", ""))
    address = normalize_address(form.get("address", ""))
    if address.rpartition("@")[2] != domain:
        raise SetupError(f"The administrator's address must be at {domain}.")
    password = form.get("password", "")
    if password != form.get("password2", ""):
        raise SetupError("The two passwords differ.")
    check_strength(password, address)
    return hostname, domain, address, password


def _set_up(txn: Transaction, domain: str, address: str, password_hash: str) -> None:
    # In the same transaction as the check, so two browsers racing with the
    # right code cannot both set the box up.
    if txn.meta(setup_code.SETUP_DONE):
        raise SetupAlreadyDone("setup is done")
    if txn.domain(domain) is None:
        txn.add_domain(domain)
    if txn.account(address) is None:
        txn.add_account(address, password_hash, admin=True)
    else:
        txn.set_password(address, password_hash)
        txn.set_admin(address, True)
    txn.set_meta(setup_code.SETUP_DONE, int(time.time()))


def _make_dkim_keys(data_dir, domain: str) -> None:
    from appliance.mailauth import dkim

    dkim.make_keys(data_dir, domain)


def _kept(form: dict[str, str]) -> dict[str, str]:
    """What the form shows again after an error: never the code or passwords."""
    return {k: form.get(k, "") for k in ("hostname", "domain", "address")}


def _fingerprint(certificate_path) -> str:
    """SHA-256 of the box's certificate, for the owner to compare with the
    browser's warning about a certificate it cannot check."""
    der = ssl.PEM_cert_to_DER_cert(certificate_path.read_text())
    digest = sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))
