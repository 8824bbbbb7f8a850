"""The administrator's update page: upload a signed bundle, see what became of it.

The bundle goes from the request piece by piece (aiohttp's multipart
reader), verified and hashed on the way by appliance.update, never whole in
memory: into the inactive slot when this process may write it, otherwise
(on the box, where the service runs as user mail) to the incoming file that
the root installer takes over (appliance/update/handoff.py), with the
owner's choice of when to restart. The form sends its CSRF token as the
first field, then the reboot choice, then the file; this handler checks the
token before it reads a byte of the bundle: app.py's CSRF rule cannot read
the form first without taking the whole upload in (STREAMED_UPLOADS).

The daily update check (off while [update] url is empty)
runs here, beside the page that shows its offer: an Install button has the
box download the offered bundle from its URL and feed it through the same
checked path as an upload.

While an upload or an install runs, the page shows how far it got and
reloads itself (the Refresh header: no script needed); afterwards it shows
the result, which the installer keeps on /data for `appliance update status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import BodyPartReader, web

from appliance.web.pages import (
    CONTEXT,
    audit,
    context,
    notice,
    redirect,
    render,
    require_admin,
    session,
)

if TYPE_CHECKING:
    from appliance.update import handoff, index, install

log = logging.getLogger("appliance.update")

UPLOAD_PATH = "/admin/update"
OFFER_PATH = "/admin/update/offer"
# POSTs whose handler checks the form's CSRF token itself, from the first
# form field, because the rest of the body is too large to read up front.
STREAMED_UPLOADS = frozenset({UPLOAD_PATH})
# A CSRF token is 43 characters, a reboot choice 5: fields longer than this are not ours.
TOKEN_FIELD_LIMIT = 256
# Pieces in which the rest of a refused upload is read and dropped.
DISCARD_CHUNK = 1 << 20
# Seconds between reloads of the page while an install runs.
PROGRESS_REFRESH = 3


@dataclass(slots=True)
class Progress:
    """The upload under way (one at a time: install.py and handoff.py hold locks)."""

    installation: install.Installation | handoff.Handoff | None = None

    @property
    def running(self) -> bool:
        return self.installation is not None


PROGRESS = web.AppKey("update_progress", Progress)


@dataclass(slots=True)
class UpdateCheck:
    """What the last check of the update index found, and a download it started."""

    offer: index.Offer | None = None
    checked: float = 0.0  # when, seconds since the epoch; 0: not yet
    error: str = ""
    download: asyncio.Task | None = None

    @property
    def downloading(self) -> bool:
        return self.download is not None and not self.download.done()


CHECK = web.AppKey("update_check", UpdateCheck)


def add_routes(app: web.Application) -> None:
    app[PROGRESS] = Progress()
    app[CHECK] = UpdateCheck()
    app.router.add_get(UPLOAD_PATH, update_page)
    app.router.add_post(UPLOAD_PATH, upload_bundle)
    app.router.add_post(OFFER_PATH, install_offer)
    app.cleanup_ctx.append(_daily_checks)


async def _daily_checks(app: web.Application):
    task = asyncio.get_running_loop().create_task(_check_daily(app, random.Random()))
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _check_daily(app: web.Application, rng: random.Random) -> None:
    """A first check at a random moment within check_jitter of the start, then
    about daily, so that boxes started together do not ask all at once; each
    with the settings of that moment (a reload may set or clear the url).
    An empty url makes no request."""
    delay = rng.uniform(0, app[CONTEXT].settings.update.check_jitter)
    while True:
        await asyncio.sleep(delay)
        settings = app[CONTEXT].settings.update
        if settings.url:
            await check_now(app)
        jitter = settings.check_jitter
        delay = max(0.0, settings.check_interval + rng.uniform(-jitter, jitter))


async def check_now(app: web.Application) -> None:
    """Fetch and verify the index; keep its offer for the page."""
    import aiohttp

    from appliance.update import index  # cryptography: only once a url is set

    ctx, state = app[CONTEXT], app[CHECK]
    settings = ctx.settings.update
    try:
        _, state.offer = await index.check(settings, ctx.data_dir)
        state.error = ""
    except (ValueError, OSError, aiohttp.ClientError) as error:  # OSError: timeouts too
        state.error = str(error) or type(error).__name__
        log.warning("update check failed url=%s error=%s", settings.url, state.error)
    else:
        found = state.offer.version if state.offer else "-"
        log.info("update check url=%s offer=%s", settings.url, found)
    state.checked = time.time()


async def update_page(request: web.Request) -> web.Response:
    from appliance.update import install  # cryptography loads when an admin asks, not at start

    require_admin(request)
    ctx = context(request)
    found = install.status(ctx.settings.update, ctx.data_dir)
    progress = request.app[PROGRESS]
    last = found.last
    response = render(
        request,
        "admin/update.html",
        update=found,
        last=last,
        last_time=_shown_time(last["time"]) if last else "",
        progress=progress.installation,
        tries=ctx.settings.update.tries,
        check=request.app[CHECK],
        check_url=ctx.settings.update.url,
        checked_time=_shown_time(request.app[CHECK].checked),
    )
    if progress.running or found.busy or request.app[CHECK].downloading:
        response.headers["Refresh"] = str(PROGRESS_REFRESH)
    return response


async def upload_bundle(request: web.Request) -> web.Response:
    from appliance.update.bundle import BundleError
    from appliance.update.handoff import Handed, reboot_choice
    from appliance.update.install import InstallError
    from appliance.update.keys import KeyringError

    require_admin(request)
    ctx = context(request)
    if request.content_type != "multipart/form-data":
        raise web.HTTPBadRequest(text="Send the bundle with the update page's form.")
    form = await request.multipart()
    await _check_token(request, await form.next())
    fields, bundle = await _fields_before_file(form)
    if not isinstance(bundle, BodyPartReader) or bundle.name != "bundle" or not bundle.filename:
        notice(request, "Not installed: choose a bundle file.")
        raise redirect(UPLOAD_PATH)
    try:
        when = fields.get("reboot_at") if fields.get("reboot") == "at" else fields.get("reboot")
        reboot = reboot_choice(when)
        done = await _receive(request, bundle, reboot)
    except (BundleError, InstallError, KeyringError, OSError) as refusal:
        await _discard_rest(bundle)
        audit(request, action="update.refused", file=bundle.filename, reason=str(refusal))
        notice(request, f"Not installed: {refusal}")
        raise redirect(UPLOAD_PATH) from None
    if isinstance(done, Handed):
        audit(request, action="update.handoff", version=done.version, reboot=done.reboot or "-")
        notice(
            request,
            f"Checked {done.version}: its signature and contents are good. The installer "
            "writes it into the other slot now; this page shows how it goes.",
        )
        raise redirect(UPLOAD_PATH)
    audit(request, action="update.install", version=done.version, slot=done.slot)
    notice(
        request,
        f"Installed {done.version} into slot {done.slot}. It starts at the next "
        f"reboot; if it fails its health check {ctx.settings.update.tries} times, the box "
        "goes back to the version running now.",
    )
    await asyncio.get_running_loop().run_in_executor(None, _restart, ctx, reboot)
    raise redirect(UPLOAD_PATH)


def _shown_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch)) if epoch else ""


async def install_offer(request: web.Request) -> web.Response:
    """Download the offered bundle and install it as if it were uploaded.

    The URL is the one the signed index named, never one from the form."""
    from appliance.update.handoff import reboot_choice
    from appliance.update.install import InstallError

    require_admin(request)
    state, progress = request.app[CHECK], request.app[PROGRESS]
    form = await request.post()  # app.py has checked its CSRF token
    offer = state.offer
    if offer is None:
        notice(request, "No update is on offer; the box checks its update index daily.")
        raise redirect(UPLOAD_PATH)
    if progress.running or state.downloading:
        notice(request, "An update is being installed already; this page shows how it goes.")
        raise redirect(UPLOAD_PATH)
    try:
        reboot = reboot_choice(str(form.get("reboot", "")))
    except InstallError as refusal:
        notice(request, f"Not installed: {refusal}")
        raise redirect(UPLOAD_PATH) from None
    state.download = asyncio.get_running_loop().create_task(
        _install_download(request.app, offer, reboot)
    )
    audit(request, action="update.download", version=offer.version, url=offer.url)
    notice(request, f"Downloading {offer.version}; this page shows how it goes.")
    raise redirect(UPLOAD_PATH)


async def _install_download(app: web.Application, offer: index.Offer, reboot: str | None) -> None:
    """The offered bundle into the installer or the hand-off, as it arrives."""
    from appliance.update import handoff

    ctx, progress, state = app[CONTEXT], app[PROGRESS], app[CHECK]
    settings = ctx.settings.update
    loop = asyncio.get_running_loop()
    try:
        with handoff.receiver(settings, ctx.data_dir, reboot) as receiver:
            progress.installation = receiver
            try:
                done = await loop.run_in_executor(
                    None, _feed_download, receiver, offer.url, settings
                )
            finally:
                progress.installation = None
    except (ValueError, OSError) as refusal:  # refusals of the bundle, the box, the download
        state.error = f"installing {offer.version} from {offer.url} failed: {refusal}"
        log.warning("update download failed url=%s error=%s", offer.url, refusal)
        return
    log.info("update downloaded version=%s url=%s", done.version, offer.url)
    if not isinstance(done, handoff.Handed):
        await loop.run_in_executor(None, handoff.restart, settings, reboot)


def _feed_download(receiver, url: str, settings):
    from appliance.update import install

    for chunk in install.url_chunks(url, settings.chunk_size, settings.download_timeout):
        receiver.feed(chunk)
    return receiver.finish()


def _restart(ctx, reboot: str | None) -> None:
    from appliance.update.handoff import restart

    restart(ctx.settings.update, reboot)


async def _fields_before_file(form) -> tuple[dict[str, str], object]:
    """The small fields the form sends between its token and its file."""
    fields: dict[str, str] = {}
    part = await form.next()
    while isinstance(part, BodyPartReader) and part.name != "bundle":
        value = await part.read_chunk(TOKEN_FIELD_LIMIT)
        fields[part.name or ""] = value.decode("ascii", "replace")
        await _discard_rest(part)
        part = await form.next()
    return fields, part


async def _check_token(request: web.Request, field) -> None:
    """The form's first field must be its CSRF token, as app.py checks other forms."""
    token = b""
    if isinstance(field, BodyPartReader) and field.name == "csrf":
        while chunk := await field.read_chunk(TOKEN_FIELD_LIMIT):
            token += chunk
            if len(token) > TOKEN_FIELD_LIMIT:
                break
    current = session(request)
    text = token.decode("ascii", "replace")
    if current is None or len(token) > TOKEN_FIELD_LIMIT or not current.csrf_matches(text):
        raise web.HTTPForbidden(text="This form has expired; reload the page and try again.")


async def _discard_rest(bundle: BodyPartReader) -> None:
    """Read what the browser still sends of a refused bundle, so that it gets
    the page saying why rather than a connection closed in its face."""
    while await bundle.read_chunk(DISCARD_CHUNK):
        pass


async def _receive(request: web.Request, bundle: BodyPartReader, reboot: str | None):
    """Each piece of the upload into the installer or the hand-off, whose
    writes run off the loop."""
    from appliance.update import handoff

    ctx = context(request)
    settings = ctx.settings.update
    loop = asyncio.get_running_loop()
    progress = request.app[PROGRESS]
    with handoff.receiver(settings, ctx.data_dir, reboot) as receiver:
        progress.installation = receiver
        try:
            while chunk := await bundle.read_chunk(settings.chunk_size):
                await loop.run_in_executor(None, receiver.feed, chunk)
            return await loop.run_in_executor(None, receiver.finish)
        finally:
            progress.installation = None
