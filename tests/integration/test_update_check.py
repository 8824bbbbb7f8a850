"""The daily update check against a loopback web server serving a signed
index: the admin page offers the newer version, and its Install
button downloads the bundle and installs it into the (fake) other slot.

The index is served over plain HTTP: [update] url takes http:// for a
loopback host only (UpdateSettings), https:// for anything else.
"""

from __future__ import annotations

import asyncio
import http.server
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from appliance.update import index
from tests.integration.test_update_page import make_box
from tests.unit.test_update_bundle import BOARD, PAYLOAD, PRODUCT, make_bundle
from tests.web_client import ADMIN, ADMIN_PASSWORD, log_in

NEWER = "9999.1"
# Seconds a test waits for the service to check, or to install a download.
WAIT = 20


class IndexServer:
    """Files from a dictionary on a loopback port; remembers what was asked."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: list[str] = []
        served = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                served.requests.append(self.path)
                body = served.files.get(self.path)
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @contextmanager
    def running(self) -> Iterator[IndexServer]:
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
            thread.join(timeout=5)


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {WAIT} s: {what}")


def signed_index(key, bundle: bytes) -> bytes:
    offers = [
        index.Offer(PRODUCT, BOARD, NEWER, f"appliance-{NEWER}.bundle", len(bundle), "ab" * 32),
        index.Offer(PRODUCT, "other-board", "99999.0", "other.bundle", 10, "ab" * 32),
    ]
    return index.sign_index(offers, key)


@pytest.fixture
def served(tmp_path) -> Iterator[IndexServer]:
    with IndexServer({}).running() as server:
        yield server


def test_the_admin_page_offers_the_newer_version_and_installs_it(tmp_path: Path, served):
    box = make_box(tmp_path, url=f"{served.url}/index.json", check_jitter=0.0)
    try:
        bundle = make_bundle(box.key, version=NEWER)
        served.files["/index.json"] = signed_index(box.key, bundle)
        served.files[f"/appliance-{NEWER}.bundle"] = bundle
        # The first check runs at once (no jitter) but may precede the files: ask again.
        with log_in(box.app, ADMIN, ADMIN_PASSWORD) as admin:
            wait_for(lambda: "update check" in box.app.log(), "the first check")
            if f"offer={NEWER}" not in box.app.log():
                box.app.stop()
                box.app.start()
            wait_for(lambda: f"offer={NEWER}" in box.app.log(), "a check that finds the offer")

        with log_in(box.app, ADMIN, ADMIN_PASSWORD) as admin:
            page = admin.get("/admin/update")
            assert f"Version {NEWER} is available" in page.text
            assert f"{served.url}/appliance-{NEWER}.bundle" in page.text
            assert "99999.0" not in page.text  # another board's bundle
            sent = admin.post("/admin/update/offer", {"csrf": page.csrf(), "reboot": "later"})
            assert sent.status == 303 and sent.location == "/admin/update", sent.text[:500]
            wait_for(
                lambda: f"{NEWER} is installed in slot b" in admin.get("/admin/update").text,
                "the downloaded bundle installed",
            )
        assert box.slot_b()[: len(PAYLOAD)] == PAYLOAD
        assert box.entry_names() == ["slot-a.conf", "slot-b+3.conf"]
        assert f"/appliance-{NEWER}.bundle" in served.requests
        assert f"web action=update.download by={ADMIN}" in box.app.log()
    finally:
        box.app.stop()


def test_an_index_signed_by_another_key_offers_nothing(tmp_path: Path, served):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    stranger = Ed25519PrivateKey.generate()
    served.files["/index.json"] = signed_index(stranger, make_bundle(stranger, version=NEWER))
    box = make_box(tmp_path, url=f"{served.url}/index.json", check_jitter=0.0)
    try:
        wait_for(lambda: "update check failed" in box.app.log(), "the refused check")
        with log_in(box.app, ADMIN, ADMIN_PASSWORD) as admin:
            page = admin.get("/admin/update")
        assert "is available" not in page.text
        assert "The last check failed: index signed by unknown key" in page.text
    finally:
        box.app.stop()


def test_without_a_url_no_request_is_made(tmp_path: Path, served):
    box = make_box(tmp_path, check_jitter=0.0)
    try:
        with log_in(box.app, ADMIN, ADMIN_PASSWORD) as admin:
            page = admin.get("/admin/update")
        time.sleep(1)  # the first check would have run at once
        assert "Update check" not in page.text
        assert "update check" not in box.app.log()
        assert served.requests == []
    finally:
        box.app.stop()


def test_the_cli_prints_what_the_index_offers(tmp_path: Path, served):
    box = make_box(tmp_path, url=f"{served.url}/index.json", check_jitter=3600.0)
    try:
        bundle = make_bundle(box.key, version=NEWER)
        served.files["/index.json"] = signed_index(box.key, bundle)
        done = box.app.cli("update", "check")
        assert done.returncode == 0, done.stderr
        assert f"offered: {NEWER} for {PRODUCT} {BOARD}" in done.stdout
        assert "offered: 99999.0 for appliance other-board" in done.stdout
        assert f"available: {NEWER} ({len(bundle)} bytes): {served.url}/appliance-" in done.stdout
        served.files["/index.json"] = signed_index(box.key, bundle).replace(b"9999", b"9998")
        refused = box.app.cli("update", "check")
        assert refused.returncode != 0
        assert "update check failed: bad signature" in refused.stderr
    finally:
        box.app.stop()


def test_an_index_is_read_to_its_end_and_no_further_than_the_limit(served):
    """A large index arrives in many packets: all of it is read; one byte over
    the limit is refused before more is taken."""
    large = b'{"padding": "' + b"x" * (index.INDEX_LIMIT - 100) + b'"}'
    served.files["/large.json"] = large
    served.files["/huge.json"] = b" " * (index.INDEX_LIMIT + 1)
    assert asyncio.run(index.fetch(f"{served.url}/large.json", 30)) == large
    with pytest.raises(index.UpdateIndexError, match=f"more than {index.INDEX_LIMIT} bytes"):
        asyncio.run(index.fetch(f"{served.url}/huge.json", 30))
