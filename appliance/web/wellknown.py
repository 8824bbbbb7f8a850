"""What mail clients and other servers fetch without logging in: client
autoconfiguration (Thunderbird, Outlook) and the MTA-STS policy."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from appliance.addresses import AddressError, normalize_address, normalize_domain
from appliance.web import autoconfig
from appliance.web.pages import context

_AUTODISCOVER_PATHS = ("/autodiscover/autodiscover.xml", "/Autodiscover/Autodiscover.xml")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/.well-known/autoconfig/mail/config-v1.1.xml", thunderbird)
    app.router.add_get("/mail/config-v1.1.xml", thunderbird)  # at autoconfig.DOMAIN
    for path in _AUTODISCOVER_PATHS:
        app.router.add_post(path, outlook)
    app.router.add_get("/.well-known/mta-sts.txt", mta_sts_policy)


def _served_domain(request: web.Request, name: str) -> str:
    """name if the box serves that mail domain; otherwise 404, so the box
    never describes settings for a domain that is not its own."""
    try:
        domain = normalize_domain(name)
    except AddressError:
        raise web.HTTPNotFound() from None
    if context(request).store.read(lambda txn: txn.domain(domain)) is None:
        raise web.HTTPNotFound()
    return domain


def _host_name(request: web.Request) -> str:
    return (urlsplit("//" + request.host).hostname or "").lower()


async def thunderbird(request: web.Request) -> web.Response:
    # Thunderbird asks with ?emailaddress=; at autoconfig.DOMAIN the host says the domain.
    address = request.query.get("emailaddress", "")
    if address:
        try:
            name = normalize_address(address).rpartition("@")[2]
        except AddressError:
            raise web.HTTPBadRequest(text="not an address") from None
    else:
        name = _host_name(request).removeprefix("autoconfig.")
    domain = _served_domain(request, name)
    settings = context(request).settings
    try:
        body = autoconfig.thunderbird_config(
            settings.hostname, domain, autoconfig.client_ports(settings.listen)
        )
    except autoconfig.NoClientListener:
        raise web.HTTPNotFound() from None
    return web.Response(body=body, headers={"Content-Type": autoconfig.XML_CONTENT_TYPE})


async def outlook(request: web.Request) -> web.Response:
    # read(n) gives what has arrived: a request sent in several packets is
    # read to its end, or to one byte past the bound (then refused).
    body = bytearray()
    limit = autoconfig.MAX_AUTODISCOVER_REQUEST + 1
    while len(body) < limit and (chunk := await request.content.read(limit - len(body))):
        body += chunk
    body = bytes(body)
    settings = context(request).settings
    try:
        address = autoconfig.autodiscover_address(body)
    except autoconfig.BadAutodiscoverRequest as problem:
        raise web.HTTPBadRequest(text=str(problem)) from None
    _served_domain(request, address.rpartition("@")[2])  # as for Thunderbird: ours only
    try:
        answer = autoconfig.autodiscover_response(
            body, settings.hostname, autoconfig.client_ports(settings.listen)
        )
    except autoconfig.BadAutodiscoverRequest as problem:
        raise web.HTTPBadRequest(text=str(problem)) from None
    except autoconfig.NoClientListener:
        raise web.HTTPNotFound() from None
    return web.Response(body=answer, headers={"Content-Type": autoconfig.XML_CONTENT_TYPE})


async def mta_sts_policy(request: web.Request) -> web.Response:
    """RFC 8461 3.3: the policy at https://mta-sts.DOMAIN/.well-known/mta-sts.txt."""
    from appliance.web.dns_records import mta_sts_policy as policy_text

    if not request.secure:
        raise web.HTTPNotFound()  # RFC 8461 3.3: fetched only over HTTPS
    _served_domain(request, _host_name(request).removeprefix("mta-sts."))
    settings = context(request).settings
    # Mode "none" is served too: RFC 8461 8.3 retires a policy by publishing
    # one in mode none, so senders drop what they cached.
    text = policy_text(settings.hostname, settings.web.mta_sts_mode)
    return web.Response(text=text, content_type="text/plain", charset="utf-8")
