"""Logging in and out, and what every account sees: its password and client settings."""

from __future__ import annotations

import asyncio

from aiohttp import web

from appliance.passwords import WeakPassword, check_strength, hash_password, verify_password
from appliance.store import NotFound
from appliance.web import autoconfig
from appliance.web.auth import COOKIE
from appliance.web.pages import (
    SESSION,
    audit,
    client_address,
    context,
    ensure_session,
    notice,
    redirect,
    render,
    require_login,
    session,
    set_session_cookie,
)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", home)
    app.router.add_get("/login", login_page)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/account", account_page)
    app.router.add_post("/account/password", change_password)
    app.router.add_get("/account/thunderbird.xml", thunderbird_file)
    app.router.add_get("/account/mail.mobileconfig", apple_profile)


def _landing(admin: bool) -> str:
    return "/admin" if admin else "/account"


async def home(request: web.Request) -> web.Response:
    current = session(request)
    if current is None or current.address is None:
        raise redirect("/login")
    raise redirect(_landing(current.admin))


async def login_page(request: web.Request) -> web.Response:
    return render(request, "login.html", address="", error=None)


async def login(request: web.Request) -> web.Response:
    ctx = context(request)
    form = await request.post()
    address = str(form.get("address", ""))[:320]
    password = str(form.get("password", ""))
    account = await ctx.logins.authenticate(client_address(request), address, password)
    if account is None:
        audit(request, "login-failed", address=repr(address))
        error = "Wrong address or password."
        return render(request, "login.html", status=401, address=address, error=error)
    old = session(request)
    if old is not None:
        ctx.sessions.end(old.id)  # a new id on login: a planted cookie gains nothing
    fresh = ctx.sessions.new(account.address, account.admin)
    request[SESSION] = fresh
    audit(request, "login")
    response = redirect(_landing(account.admin))
    set_session_cookie(request, response, fresh.id)
    raise response


async def logout(request: web.Request) -> web.Response:
    current = session(request)
    if current is not None:
        audit(request, "logout")
        context(request).sessions.end(current.id)
    response = redirect("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def account_page(request: web.Request) -> web.Response:
    current = require_login(request)
    ctx = context(request)
    settings = autoconfig.client_settings(
        current.address, ctx.settings.hostname, autoconfig.client_ports(ctx.settings.listen)
    )
    return render(request, "account.html", settings=settings, error=None)


async def change_password(request: web.Request) -> web.Response:
    current = require_login(request)
    ctx = context(request)
    form = await request.post()
    old, new = str(form.get("current", "")), str(form.get("password", ""))
    account = ctx.store.read(lambda txn: txn.account(current.address))
    loop = asyncio.get_running_loop()
    try:
        if account is None or not await loop.run_in_executor(
            None, verify_password, account.password_hash, old
        ):
            raise WeakPassword("The current password is wrong.")
        if new != form.get("password2", ""):
            raise WeakPassword("The two new passwords differ.")
        check_strength(new, current.address)
        password_hash = await loop.run_in_executor(None, hash_password, new)
        await ctx.store.submit(lambda txn: txn.set_password(current.address, password_hash))
    except (WeakPassword, NotFound) as problem:
        notice(request, str(problem))
        raise redirect("/account") from None
    audit(request, "password-changed", address=current.address)
    ctx.sessions.end_for(current.address)  # every other browser must log in again
    fresh = ctx.sessions.new(current.address, current.admin)
    request[SESSION] = fresh
    fresh.notices.append("Password changed. Other devices must log in again.")
    response = redirect("/account")
    set_session_cookie(request, response, fresh.id)
    raise response


def _download(body: bytes, content_type: str, name: str) -> web.Response:
    response = web.Response(body=body, content_type=content_type)
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


async def thunderbird_file(request: web.Request) -> web.Response:
    current = require_login(request)
    ctx = context(request)
    domain = current.address.rpartition("@")[2]
    ports = autoconfig.client_ports(ctx.settings.listen)
    body = autoconfig.thunderbird_config(ctx.settings.hostname, domain, ports)
    return _download(body, "application/xml", "config-v1.1.xml")


async def apple_profile(request: web.Request) -> web.Response:
    current = require_login(request)
    ctx = context(request)
    ports = autoconfig.client_ports(ctx.settings.listen)
    body = autoconfig.apple_mobileconfig(current.address, ctx.settings.hostname, ports)
    return _download(body, "application/x-apple-aspen-config", "mail.mobileconfig")


__all__ = ["add_routes", "ensure_session"]
