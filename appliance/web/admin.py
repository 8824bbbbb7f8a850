"""The administrator's pages: status, domains and their DNS, users, aliases,
the outbound queue, the certificate and the delivery self-test.

Each change is one form POST (with its CSRF token, checked in app.py), one
store transaction, one audit line naming who made it, and a redirect back
to the list with a notice saying what happened.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
import tempfile
import time
from pathlib import Path

from aiohttp import web

from appliance import tls
from appliance.addresses import (
    AddressError,
    normalize_address,
    normalize_alias_source,
    normalize_domain,
)
from appliance.passwords import WeakPassword, check_strength, hash_password
from appliance.store import StoreError
from appliance.web.pages import audit, context, notice, redirect, render, require_admin

# What a failed admin change shows: the reason, never a traceback.
_REFUSALS = (AddressError, WeakPassword, StoreError, ValueError)


def add_routes(app: web.Application) -> None:
    get, post = app.router.add_get, app.router.add_post
    get("/admin", status)
    get("/admin/domains", domains)
    post("/admin/domains", add_domain)
    get("/admin/domains/{domain}", domain_page)
    post("/admin/domains/{domain}/remove", remove_domain)
    post("/admin/domains/{domain}/dkim-rotate", rotate_dkim)
    get("/admin/users", users)
    post("/admin/users", add_user)
    post("/admin/users/{address}/password", reset_password)
    post("/admin/users/{address}/remove", remove_user)
    get("/admin/aliases", aliases)
    post("/admin/aliases", add_alias)
    post("/admin/aliases/{source}/remove", remove_alias)
    get("/admin/queue", queue)
    post("/admin/queue/{id}/{action}", queue_action)
    get("/admin/tls", certificate)
    post("/admin/tls", upload_certificate)
    get("/admin/selftest", selftest_page)
    post("/admin/selftest", run_selftest)


async def _form(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in (await request.post()).items() if isinstance(v, str)}


def _named(request: web.Request, key: str, normalize) -> str:
    """A domain, address or alias named in the URL, in the store's own spelling."""
    try:
        return normalize(request.match_info[key])
    except AddressError:
        raise web.HTTPNotFound(text="No such name.") from None


async def _change(
    request: web.Request, back: str, operation, done: str, then=None, **audited
) -> None:
    """Run operation in a write transaction, then `then()` if given; say what
    happened on the page at back."""
    try:
        await context(request).store.submit(operation)
    except _REFUSALS as problem:
        notice(request, f"Not done: {problem}")
    else:
        if then is not None:
            then()
        audit(request, **audited)
        notice(request, done)
    raise redirect(back)


# -- status ----------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = context(request)

    def counts(txn):
        return len(txn.domains()), len(txn.accounts()), len(txn.queued())

    domain_count, account_count, queue_length = ctx.store.read(counts)
    disk = shutil.disk_usage(ctx.data_dir)
    store_file = ctx.store.path / "data.mdb"
    return render(
        request,
        "admin/status.html",
        hostname=ctx.settings.hostname,
        listening=ctx.listening(),
        web_listeners={n: a for n, a in ctx.settings.listen.items() if n in ("http", "https")},
        certificate=_certificate_info(ctx.certificate()),
        disk_free=disk.free,
        disk_total=disk.total,
        store_size=store_file.stat().st_size if store_file.exists() else 0,
        domain_count=domain_count,
        account_count=account_count,
        queue_length=queue_length,
        uptime=int(time.time() - ctx.started),
        recent=[
            (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)), line)
            for t, line in reversed(ctx.recent.lines)
        ],
    )


def _certificate_info(path: Path) -> dict[str, object]:
    """Names and expiry of the certificate the listeners serve."""
    try:
        summary = tls.summarize_file(path)
    except (OSError, ValueError) as error:
        return {
            "names": "?",
            "expires": f"unreadable: {error}",
            "days_left": "?",
            "self_signed": False,
        }
    left = summary.not_after.timestamp() - time.time()
    return {
        "names": summary.subject,
        "expires": f"{summary.not_after:%Y-%m-%d}",
        "days_left": int(left // 86400),
        "self_signed": summary.self_signed,
    }


# -- domains and their DNS records -------------------------------------------------


async def domains(request: web.Request) -> web.Response:
    require_admin(request)
    found = context(request).store.read(lambda txn: txn.domains())
    return render(request, "admin/domains.html", domains=found)


async def add_domain(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = context(request)
    try:
        name = normalize_domain((await _form(request)).get("name", ""))
    except AddressError as problem:
        notice(request, f"Not done: {problem}")
        raise redirect("/admin/domains") from None
    await asyncio.get_running_loop().run_in_executor(None, _make_dkim_keys, ctx.data_dir, name)
    await _change(
        request,
        "/admin/domains",
        lambda txn: txn.add_domain(name),
        f"Added {name}. Publish its DNS records below.",
        action="domain.add",
        domain=name,
    )


async def remove_domain(request: web.Request) -> web.Response:
    require_admin(request)
    name = _named(request, "domain", normalize_domain)
    await _change(
        request,
        "/admin/domains",
        lambda txn: txn.remove_domain(name),
        f"Removed {name}.",
        action="domain.remove",
        domain=name,
    )


def _known_domain(request: web.Request) -> str:
    name = _named(request, "domain", normalize_domain)
    if context(request).store.read(lambda txn: txn.domain(name)) is None:
        raise web.HTTPNotFound(text="No such domain.")
    return name


async def domain_page(request: web.Request) -> web.Response:
    """The records to publish for one domain, each with its live state."""
    from appliance.delivery.dns import Resolver
    from appliance.mailauth import dkim
    from appliance.web import dns_records

    require_admin(request)
    ctx = context(request)
    name = _known_domain(request)
    settings = ctx.settings
    await asyncio.get_running_loop().run_in_executor(None, _make_dkim_keys, ctx.data_dir, name)
    expected = dns_records.expected_records(
        settings.hostname,
        name,
        ctx.data_dir,
        settings.web.public_addresses,
        mta_sts_mode=settings.web.mta_sts_mode,
    )
    checked = await dns_records.check(expected, Resolver(settings.resolver))
    active = {s.name for s in dkim.active_selectors(ctx.data_dir, name)}
    selectors = [(s.name, s.name in active) for s in dkim.selectors(ctx.data_dir, name)]
    return render(request, "admin/domain.html", domain=name, checked=checked, selectors=selectors)


async def rotate_dkim(request: web.Request) -> web.Response:
    from appliance.mailauth import dkim

    require_admin(request)
    ctx = context(request)
    name = _known_domain(request)

    def rotate():
        made = dkim.rotate(ctx.data_dir, name)
        dkim.remove_retired(ctx.data_dir, name, dkim.RETIRED_KEEP_DAYS)
        return made

    made = await asyncio.get_running_loop().run_in_executor(None, rotate)
    selectors = ", ".join(s.name for s in made)
    audit(request, action="dkim.rotate", domain=name, selectors=selectors)
    notice(request, f"New DKIM keys {selectors} sign from now on: publish their records.")
    raise redirect(f"/admin/domains/{name}")


def _make_dkim_keys(data_dir: Path, domain: str) -> None:
    from appliance.mailauth import dkim

    dkim.make_keys(data_dir, domain)


# -- users -------------------------------------------------------------------------


async def users(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = context(request)
    accounts, domain_names = ctx.store.read(
        lambda txn: (txn.accounts(), [d.name for d in txn.domains()])
    )
    return render(request, "admin/users.html", accounts=accounts, domains=domain_names)


async def _new_password_hash(form: dict[str, str], address: str) -> str:
    password = form.get("password", "")
    check_strength(password, address)
    return await asyncio.get_running_loop().run_in_executor(None, hash_password, password)


async def add_user(request: web.Request) -> web.Response:
    require_admin(request)
    form = await _form(request)
    try:
        address = normalize_address(form.get("address", ""))
        password_hash = await _new_password_hash(form, address)
    except _REFUSALS as problem:
        notice(request, f"Not done: {problem}")
        raise redirect("/admin/users") from None
    admin = form.get("admin") == "on"
    await _change(
        request,
        "/admin/users",
        lambda txn: txn.add_account(address, password_hash, admin),
        f"Added {address}.",
        action="user.add",
        address=address,
        admin=str(admin).lower(),
    )


async def reset_password(request: web.Request) -> web.Response:
    require_admin(request)
    address = _named(request, "address", normalize_address)
    try:
        password_hash = await _new_password_hash(await _form(request), address)
    except _REFUSALS as problem:
        notice(request, f"Not done: {problem}")
        raise redirect("/admin/users") from None
    context(request).sessions.end_for(address)
    await _change(
        request,
        "/admin/users",
        lambda txn: txn.set_password(address, password_hash),
        f"New password set for {address}.",
        action="user.password",
        address=address,
    )


async def remove_user(request: web.Request) -> web.Response:
    current = require_admin(request)
    address = _named(request, "address", normalize_address)
    if address == current.address:
        notice(request, "Not done: you cannot remove the account you are logged in with.")
        raise redirect("/admin/users")
    context(request).sessions.end_for(address)
    await _change(
        request,
        "/admin/users",
        lambda txn: txn.remove_account(address),
        f"Removed {address} and its mail.",
        action="user.remove",
        address=address,
    )


# -- aliases -----------------------------------------------------------------------


async def aliases(request: web.Request) -> web.Response:
    require_admin(request)
    found = context(request).store.read(lambda txn: txn.aliases())
    return render(request, "admin/aliases.html", aliases=found)


async def add_alias(request: web.Request) -> web.Response:
    require_admin(request)
    form = await _form(request)
    try:
        source = normalize_alias_source(form.get("source", ""))
        targets = [normalize_address(t) for t in form.get("targets", "").replace(",", " ").split()]
        if not targets:
            raise ValueError("an alias needs at least one target address")
    except _REFUSALS as problem:
        notice(request, f"Not done: {problem}")
        raise redirect("/admin/aliases") from None
    await _change(
        request,
        "/admin/aliases",
        lambda txn: txn.add_alias(source, targets),
        f"{source} now goes to {', '.join(targets)}.",
        action="alias.add",
        source=source,
        targets=",".join(targets),
    )


async def remove_alias(request: web.Request) -> web.Response:
    require_admin(request)
    source = _named(request, "source", normalize_alias_source)
    await _change(
        request,
        "/admin/aliases",
        lambda txn: txn.remove_alias(source),
        f"Removed the alias {source}.",
        action="alias.remove",
        source=source,
    )


# -- the outbound queue ------------------------------------------------------------


async def queue(request: web.Request) -> web.Response:
    require_admin(request)
    entries = context(request).store.read(lambda txn: txn.queued())
    return render(request, "admin/queue.html", entries=entries, now=time.time())


async def queue_action(request: web.Request) -> web.Response:
    from appliance.delivery.bounce import bounce_now

    require_admin(request)
    ctx = context(request)
    action = request.match_info["action"]
    try:
        queue_id = int(request.match_info["id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    now = time.time()
    operations = {
        "retry": lambda txn: txn.queue_retry(queue_id, now),
        "delete": lambda txn: txn.queue_remove(queue_id),
        "bounce": lambda txn: bounce_now(txn, queue_id, ctx.settings.hostname, now),
    }
    if action not in operations:
        raise web.HTTPNotFound()
    await _change(
        request,
        "/admin/queue",
        operations[action],
        f"Queued message {queue_id}: {action} done.",
        then=ctx.queue_wake if action == "retry" else None,
        action=f"queue.{action}",
        id=str(queue_id),
    )


# -- the certificate ---------------------------------------------------------------


async def certificate(request: web.Request) -> web.Response:
    require_admin(request)
    ctx = context(request)
    return render(request, "admin/tls.html", certificate=_certificate_info(ctx.certificate()))


async def upload_certificate(request: web.Request) -> web.Response:
    """The owner's own certificate chain and key, checked as a pair before use."""
    require_admin(request)
    ctx = context(request)
    form = await request.post()
    chain, key = _uploaded_text(form.get("certificate")), _uploaded_text(form.get("key"))
    cert_path, key_path = tls.uploaded_paths(ctx.data_dir)
    try:
        _check_pair(chain, key)
    except (ssl.SSLError, ValueError) as problem:
        notice(request, f"Not used: the certificate and key do not work together ({problem}).")
        raise redirect("/admin/tls") from None
    tls.write_private(key_path, key.encode())
    tls.write_private(cert_path, chain.encode())
    ctx.reload()
    audit(request, action="tls.upload")
    notice(request, "The new certificate is in use for every new connection.")
    raise redirect("/admin/tls")


def _uploaded_text(field) -> str:
    if field is None:
        return ""
    if isinstance(field, str):
        return field
    return field.file.read().decode("ascii", "replace")


def _check_pair(chain: str, key: str) -> None:
    if "BEGIN CERTIFICATE" not in chain or "PRIVATE KEY" not in key:
        raise ValueError("expected PEM text: a certificate chain and its private key")
    with tempfile.TemporaryDirectory() as directory:
        chain_path, key_path = Path(directory) / "chain.pem", Path(directory) / "key.pem"
        chain_path.write_text(chain)
        key_path.write_text(key)
        tls.server_context(chain_path, key_path)


# -- delivery self-test --------------------------------------------------------------


async def selftest_page(request: web.Request) -> web.Response:
    require_admin(request)
    return render(request, "admin/selftest.html", results=None, domains=_domain_names(request))


def _domain_names(request: web.Request) -> list[str]:
    return context(request).store.read(lambda txn: [d.name for d in txn.domains()])


async def run_selftest(request: web.Request) -> web.Response:
    from appliance.delivery.dns import Resolver
    from appliance.web import selftest

    current = require_admin(request)
    ctx = context(request)
    settings = ctx.settings
    domain = (await _form(request)).get("domain", "")
    if domain not in _domain_names(request):
        raise web.HTTPNotFound(text="No such domain.")
    imap = settings.listen.get("imap") or settings.listen.get("imaps")
    password = ctx.logins.one_time_password(current.address)
    inputs = selftest.SelfTestInputs(
        hostname=settings.hostname,
        domain=domain,
        recipient=current.address,
        login=(current.address, password),
        imap_address=("127.0.0.1" if imap[0] in ("0.0.0.0", "::") else imap[0], imap[1]),
        resolver=Resolver(settings.resolver),
        mx_port=settings.queue.mx_port,
        data_dir=ctx.data_dir,
        probe_domain=settings.web.selftest_probe_domain,
        step_timeout=settings.web.selftest_step_timeout,
    )
    results = await selftest.run_selftest(inputs)
    audit(request, action="selftest", domain=domain, passed=str(all(r.ok for r in results)))
    return render(request, "admin/selftest.html", results=results, domains=_domain_names(request))
