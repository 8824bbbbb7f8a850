"""The admin's update page over HTTPS: a bundle uploaded as a browser sends a
file form, streamed into a fake slot, and the page telling what happened."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.payload import AsyncIterablePayload
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import __version__, config
from tests.conftest import Appliance
from tests.unit.test_update_bundle import BOARD, PAYLOAD, flip_bit, make_bundle, trust
from tests.unit.test_update_install import boot_command_line, lay_out_esp
from tests.web_client import ADMIN, ADMIN_PASSWORD, Browser, Page, log_in, set_up_appliance

if "update" not in {f.name for f in dataclasses.fields(config.Settings)}:
    pytest.skip(
        "appliance/config.py has no [update] table yet (Settings.update: UpdateSettings)",
        allow_module_level=True,
    )

SLOT_SIZE = 1 << 20
NEWER = "9999.1"
LARGE_PAYLOAD = 50 * 1024 * 1024
# What the server may grow by while a 50 MB bundle passes through it: pieces
# in flight and allocator slack, far below the bundle itself.
MEMORY_GROWTH_LIMIT = 20 * 1024 * 1024


@dataclass
class Box:
    app: Appliance
    root: Path
    key: Ed25519PrivateKey

    def slot_b(self) -> bytes:
        return (self.root / "slot-b").read_bytes()

    def entry_names(self) -> list[str]:
        return sorted(p.name for p in (self.root / "esp" / "loader" / "entries").iterdir())


def make_box(
    root: Path, slot_size: int = SLOT_SIZE, chunk_size: int | None = 4096, **more: object
) -> Box:
    lay_out_esp(root / "esp", root / "slot-a", root / "slot-b")
    for slot in ("a", "b"):
        with open(root / f"slot-{slot}", "wb") as file:
            file.truncate(slot_size)  # sparse: a 64 MiB slot costs no disk
    (root / "cmdline").write_text(boot_command_line(root / "slot-a"))
    key = Ed25519PrivateKey.generate()
    trust(root / "trusted", key)
    update = {
        "board": BOARD,
        "slot_a": str(root / "slot-a"),
        "slot_b": str(root / "slot-b"),
        "esp": str(root / "esp"),
        "cmdline": str(root / "cmdline"),
        "keyring": str(root / "trusted"),
    }
    if chunk_size is not None:  # smaller than a test bundle: it arrives in pieces, as large ones do
        update["chunk_size"] = chunk_size
    update |= more
    return Box(set_up_appliance(root / "data", update=update), root, key)


@pytest.fixture
def box(tmp_path):
    found = make_box(tmp_path)
    try:
        yield found
    finally:
        found.app.stop()


@pytest.fixture
def admin(box):
    with log_in(box.app, ADMIN, ADMIN_PASSWORD) as browser:
        yield browser


def upload(browser: Browser, path: Path, token: str | None, **choices: str) -> Page:
    """The update form as a browser sends it: the token first, the choices, then the file."""
    form = aiohttp.FormData()
    if token is not None:
        form.add_field("csrf", token)
    for name, value in choices.items():
        form.add_field(name, value)
    with open(path, "rb") as file:
        form.add_field("bundle", file, filename=path.name, content_type="application/octet-stream")
        return browser.post("/admin/update", data=form)


def install_through_page(browser: Browser, bundle: Path) -> Page:
    token = browser.get("/admin/update").csrf()
    sent = upload(browser, bundle, token)
    assert sent.status == 303 and sent.location == "/admin/update", sent.text[:500]
    return browser.get("/admin/update")


def test_the_page_shows_what_runs_and_offers_the_upload(admin):
    page = admin.get("/admin/update")
    assert page.status == 200
    assert f"<dt>Version</dt><dd>{__version__}</dd>" in page.text
    assert "No update has been installed on this box." in page.text
    form = re.search(r'<form method="post" action="/admin/update".*?</form>', page.text, re.S)
    assert form and 'enctype="multipart/form-data"' in form.group(0)
    assert form.group(0).index('name="csrf"') < form.group(0).index('name="bundle"')
    assert '<a href="/admin/update" aria-current="page">Update</a>' in page.text


def test_an_uploaded_bundle_is_installed_and_the_page_says_so(box, admin, tmp_path):
    bundle = tmp_path / "appliance.bundle"
    bundle.write_bytes(make_bundle(box.key, version=NEWER))
    page = install_through_page(admin, bundle)
    assert f"Installed {NEWER} into slot b. It starts at the next reboot" in page.notices()[0]
    assert f"{NEWER} is installed in slot b: it starts at the next reboot." in page.text
    assert "slot-b+3.conf (3 tries left)" in page.text
    assert box.slot_b()[: len(PAYLOAD)] == PAYLOAD
    assert box.entry_names() == ["slot-a.conf", "slot-b+3.conf"]
    assert f"web action=update.install by={ADMIN}" in box.app.log()


def test_a_tampered_bundle_is_refused_and_nothing_is_marked_bootable(box, admin, tmp_path):
    bundle = tmp_path / "tampered.bundle"
    original = make_bundle(box.key, version=NEWER)
    bundle.write_bytes(flip_bit(original, (len(original) - 100) * 8))
    page = install_through_page(admin, bundle)
    assert page.notices()[0].startswith("Not installed: payload part rootfs: its SHA-256 differs")
    assert f"The last update ({NEWER}) was refused: payload part rootfs" in page.text
    assert box.entry_names() == ["slot-a.conf"]  # b was being written: it cannot boot now
    assert "web action=update.refused" in box.app.log()


def test_a_bundle_signed_by_a_stranger_leaves_both_slots_as_they_were(box, admin, tmp_path):
    bundle = tmp_path / "stranger.bundle"
    bundle.write_bytes(make_bundle(Ed25519PrivateKey.generate(), version=NEWER))
    page = install_through_page(admin, bundle)
    assert page.notices()[0].startswith("Not installed: signed by unknown key")
    assert box.entry_names() == ["slot-a.conf", "slot-b.conf"]
    assert box.slot_b() == bytes(SLOT_SIZE)


def test_an_upload_without_the_forms_token_first_is_refused_unread(box, admin, tmp_path):
    bundle = tmp_path / "appliance.bundle"
    bundle.write_bytes(make_bundle(box.key, version=NEWER))
    assert upload(admin, bundle, token=None).status == 403
    assert upload(admin, bundle, token="not the token").status == 403
    assert box.entry_names() == ["slot-a.conf", "slot-b.conf"]
    assert box.slot_b() == bytes(SLOT_SIZE)


def _memory(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) * 1024
    return found


def test_a_50_mb_upload_streams_through_without_growing_the_server(tmp_path):
    box = make_box(tmp_path, slot_size=64 * 1024 * 1024, chunk_size=None)  # the box's own size
    try:
        with log_in(box.app, ADMIN, ADMIN_PASSWORD) as browser:
            # Refused at its first bytes, the rest of a large upload is read and
            # dropped: the browser gets the page saying why. It also loads the
            # update code before the measurement.
            payload = os.urandom(LARGE_PAYLOAD)
            stranger = tmp_path / "stranger.bundle"
            stranger.write_bytes(make_bundle(Ed25519PrivateKey.generate(), payload, version=NEWER))
            refused = install_through_page(browser, stranger)
            assert refused.notices()[0].startswith("Not installed: signed by unknown key")

            bundle = tmp_path / "large.bundle"
            bundle.write_bytes(make_bundle(box.key, payload=payload, version=NEWER))
            before = _memory(box.app.process.pid)
            # The peak so far was the login's Argon2 hash: start counting it afresh
            # (proc(5), clear_refs: "5" resets the peak resident set size).
            Path(f"/proc/{box.app.process.pid}/clear_refs").write_text("5")
            page = install_through_page(browser, bundle)
            after = _memory(box.app.process.pid)
        assert page.notices()[0].startswith(f"Installed {NEWER} into slot b"), page.notices()
        with open(tmp_path / "slot-b", "rb") as slot:
            assert slot.read(LARGE_PAYLOAD) == payload
        print(f"server memory before {before}, after {after}")
        assert after["VmRSS"] - before["VmRSS"] < MEMORY_GROWTH_LIMIT
        assert after["VmHWM"] - before["VmRSS"] < MEMORY_GROWTH_LIMIT  # at no time during it
    finally:
        box.app.stop()


# Bounds each wait on the server in the progress test (loopback, small bundle).
PROGRESS_WAIT = 20


def test_while_a_bundle_arrives_the_page_shows_how_far_it_got(box, admin):
    """Half a bundle sent, the rest held back: the page, opened meanwhile,
    shows the install under way and reloads itself; then the rest arrives."""
    bundle = make_bundle(box.key, version=NEWER)
    token = admin.get("/admin/update").csrf()
    cookie = {"Cookie": f"session={admin.session_id()}"}
    url = box.app.https_url + "/admin/update"

    async def scenario() -> tuple[str, str | None, int]:
        rest = asyncio.Event()

        async def body():
            yield bundle[:6000]
            await rest.wait()
            yield bundle[6000:]

        form = aiohttp.FormData()
        form.add_field("csrf", token)
        form.add_field("bundle", AsyncIterablePayload(body()), filename="appliance.bundle")
        timeout = aiohttp.ClientTimeout(total=PROGRESS_WAIT)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            sending = asyncio.ensure_future(
                http.post(url, data=form, headers=cookie, ssl=False, allow_redirects=False)
            )
            deadline = asyncio.get_running_loop().time() + PROGRESS_WAIT
            while asyncio.get_running_loop().time() < deadline:
                async with http.get(url, headers=cookie, ssl=False) as page:
                    text, refresh = await page.text(), page.headers.get("Refresh")
                if "Installing" in text:
                    break
                await asyncio.sleep(0.05)
            rest.set()
            async with await sending as sent:
                return text, refresh, sent.status

    text, refresh, status = asyncio.run(scenario())
    assert '<progress id="written"' in text and f'max="{len(bundle)}"' in text
    assert refresh == "3"
    assert status == 303
    assert "slot-b+3.conf" in box.entry_names()
    assert "Refresh" not in admin.get("/admin/update").headers  # done: no more reloading


@pytest.fixture
def handing_box(tmp_path):
    """The box as on the device: the service hands bundles to the root
    installer, here the CLI run by the test; its reboots are lines in a file."""
    record = ["sh", "-c", f'echo "$0" >>{tmp_path / "reboots"}']
    found = make_box(
        tmp_path,
        handoff="always",
        reboot_command=[*record, "now"],
        scheduled_reboot_command=[*record, "at {time}"],
    )
    try:
        yield found
    finally:
        found.app.stop()


def test_a_handed_off_bundle_is_installed_by_the_root_side_at_the_time_chosen(
    handing_box, tmp_path
):
    box = handing_box
    bundle = tmp_path / "appliance.bundle"
    bundle.write_bytes(make_bundle(box.key, version=NEWER))
    with log_in(box.app, ADMIN, ADMIN_PASSWORD) as admin:
        token = admin.get("/admin/update").csrf()
        sent = upload(admin, bundle, token, reboot="at", reboot_at="04:15")
        assert sent.status == 303, sent.text[:500]
        page = admin.get("/admin/update")
        assert page.notices()[0].startswith(f"Checked {NEWER}: its signature and contents")
        assert "waits for the installer" in page.text
        assert page.headers.get("Refresh") == "3"
        assert box.entry_names() == ["slot-a.conf", "slot-b.conf"]  # the service wrote nothing

        done = box.app.cli("update", "install-incoming")  # what appliance-update.service runs
        assert done.returncode == 0, done.stderr
        assert done.stdout == f"installed {NEWER} into slot b\n"
        page = admin.get("/admin/update")
    assert f"{NEWER} is installed in slot b: the box restarts at 04:15 (UTC)" in page.text
    assert box.entry_names() == ["slot-a.conf", "slot-b+3.conf"]
    assert (tmp_path / "reboots").read_text() == "at 04:15\n"
    assert not (box.app.data / "update-incoming" / "bundle").exists()


def test_the_service_refuses_a_wrong_board_before_handing_it_off(handing_box, tmp_path):
    box = handing_box
    bundle = tmp_path / "arm64.bundle"
    bundle.write_bytes(make_bundle(box.key, version=NEWER, board="arm64"))
    with log_in(box.app, ADMIN, ADMIN_PASSWORD) as admin:
        token = admin.get("/admin/update").csrf()
        assert upload(admin, bundle, token, reboot="now").status == 303
        page = admin.get("/admin/update")
    assert page.notices()[0] == "Not installed: a bundle for board arm64; this box is x86_64"
    assert not (box.app.data / "update-incoming" / "bundle").exists()
    assert not (tmp_path / "reboots").exists()
