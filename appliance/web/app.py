"""The aiohttp application: routes, and the rules every request passes.

Order of the rules: find the visitor's session; send every page to /setup
until setup is done (and never serve /setup after); move plain HTTP to
HTTPS once the box is set up; refuse a state change without the form's CSRF
token. Every response gets the security headers.
"""

from __future__ import annotations

from aiohttp import web

from appliance.web import account, admin, mail, mail_compose, setup, update_page, wellknown
from appliance.web.auth import COOKIE
from appliance.web.pages import (
    CONTEXT,
    SESSION,
    STATIC,
    WebContext,
    context,
    https_url,
    set_session_cookie,
)

# Served over plain HTTP and before setup: clients and servers fetch these
# without a browser session (Thunderbird tries autoconfig over HTTP first).
_PUBLIC_PREFIXES = ("/static/", "/.well-known/", "/mail/config-v1.1.xml", "/autodiscover/")
_UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}

# No inline script or style, nothing from elsewhere, no framing, forms only
# back to this box.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


_MODULES = (setup, account, admin, update_page, wellknown, mail_compose, mail)
# Paths whose forms carry files, up to [web] max_upload_size rather than
# max_request_size (a module's UPLOADS), and paths whose handlers read the
# upload as a stream and check the CSRF token themselves, the form's first
# field, before any file byte (a module's STREAMED_UPLOADS).
_UPLOADS = web.AppKey("uploads", frozenset)
_STREAMED = web.AppKey("streamed", frozenset)


def make_app(web_context: WebContext) -> web.Application:
    app = web.Application(
        middlewares=[_sessions, _setup_gate, _https_only, _upload_limit, _csrf],
        client_max_size=web_context.settings.web.max_request_size,
    )
    app[CONTEXT] = web_context
    app[_UPLOADS] = frozenset(p for m in _MODULES for p in getattr(m, "UPLOADS", ()))
    app[_STREAMED] = frozenset(p for m in _MODULES for p in getattr(m, "STREAMED_UPLOADS", ()))
    for module in _MODULES:
        module.add_routes(app)
    app.router.add_static("/static/", STATIC)
    app.on_response_prepare.append(_security_headers)
    return app


def _is_public(path: str) -> bool:
    return path.lower().startswith(_PUBLIC_PREFIXES)


@web.middleware
async def _sessions(request: web.Request, handler):
    request[SESSION] = context(request).sessions.get(request.cookies.get(COOKIE))
    response = await handler(request)
    made = request.get("new_session")
    if made is not None and made is request[SESSION]:
        set_session_cookie(request, response, made.id)
    return response


@web.middleware
async def _setup_gate(request: web.Request, handler):
    done = context(request).setup_done()
    if request.path == "/setup" and done:
        raise web.HTTPNotFound(text="This box is set up; the setup page is gone for good.")
    if not done and request.path != "/setup" and not _is_public(request.path):
        raise web.HTTPSeeOther("/setup")
    return await handler(request)


@web.middleware
async def _https_only(request: web.Request, handler):
    """Once set up, pages move to HTTPS: passwords never cross the LAN in clear."""
    https_port = context(request).port_of("https")
    if request.secure or https_port is None or _is_public(request.path):
        return await handler(request)
    if request.path == "/setup":  # only until setup is done: see _setup_gate
        return await handler(request)
    raise web.HTTPMovedPermanently(https_url(request, request.path_qs))


@web.middleware
async def _upload_limit(request: web.Request, handler):
    """A form with files may be larger than other requests (RFC 7578 bodies)."""
    if request.method == "POST" and request.path in request.app[_UPLOADS]:
        limit = context(request).settings.web.max_upload_size
        return await handler(request.clone(client_max_size=limit))
    return await handler(request)


@web.middleware
async def _csrf(request: web.Request, handler):
    if request.method not in _UNSAFE_METHODS or _is_public(request.path):
        return await handler(request)
    # A browser says where a request comes from: another site's page is
    # refused before its form is read (Fetch Metadata).
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise web.HTTPForbidden(text="Cross-site request refused.")
    current = request.get(SESSION)
    if request.path in request.app[_STREAMED]:
        return await handler(request)  # the handler checks the token, its form's first field
    form = await request.post()
    token = form.get("csrf")
    if current is None or not isinstance(token, str) or not current.csrf_matches(token):
        raise web.HTTPForbidden(text="This form has expired; reload the page and try again.")
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if response.content_type == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
