"""The browser harness (tests/browser.py) proven on small pages before it judges the box's.

The pages are served the way the box serves its own: over HTTPS with a
self-signed certificate and a strict Content-Security-Policy, so these tests
also show that the harness works under both.
"""

from __future__ import annotations

import http.server
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.tls import ensure_self_signed, server_context
from tests.browser import (
    CHROMIUM,
    assert_accessible,
    axe_violations,
    browser_fixture,  # noqa: F401 - fixture browser
    new_page,
    screenshot,
)
from tests.conftest import free_port

# What the box's pages send: no inline script, no outside source.
STRICT_CSP = "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'"
SERVER_STOP_TIMEOUT = 5.0
TALL_PAGE_HEIGHT = 2000  # CSS pixels, well below the fold of any viewport
# Without the viewport line a phone lays a page out 980 pixels wide and shrinks it.
HEAD = '<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'

CLEAN_PAGE = f"""<!doctype html>
<html lang="en"><head>{HEAD}<title>Set up your mail box</title></head>
<body><main>
<h1>Set up your mail box</h1>
<img src="/logo.svg" alt="Mail box logo">
<form method="post" action="/setup">
  <label for="code">Setup code</label> <input id="code" name="code" type="text">
  <button type="submit">Continue</button>
</form>
</main></body></html>
"""
# An image without a text alternative and a field without a label: both are
# critical for someone using a screen reader (WCAG 1.1.1, 4.1.2).
BROKEN_PAGE = f"""<!doctype html>
<html lang="en"><head>{HEAD}<title>Broken</title></head>
<body><main>
<h1>Broken</h1>
<img src="/logo.svg">
<form method="post" action="/setup"><input name="code" type="text"></form>
</main></body></html>
"""
CLICK_PAGE = f"""<!doctype html>
<html lang="en"><head>{HEAD}<title>Self-test</title>
<script src="/click.js" defer></script></head>
<body><main>
<h1>Self-test</h1>
<button type="button" id="run">Run the self-test</button>
<p id="result" role="status">Not run yet</p>
</main></body></html>
"""
CLICK_SCRIPT = """document.getElementById("run").addEventListener("click", () => {
  document.getElementById("result").textContent = "All steps passed";
});
"""
TALL_PAGE = f"""<!doctype html>
<html lang="en"><head>{HEAD}<title>Tall</title>
<link rel="stylesheet" href="/tall.css"></head>
<body><main><h1>Tall</h1><div id="tall">Scroll down</div><p>The end</p></main></body></html>
"""
TALL_STYLE = f"#tall {{ height: {TALL_PAGE_HEIGHT}px; }}\n"
LOGO = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40">'
    '<circle cx="20" cy="20" r="18" fill="#246"/></svg>'
)

FILES = {
    "/clean": ("text/html; charset=utf-8", CLEAN_PAGE),
    "/broken": ("text/html; charset=utf-8", BROKEN_PAGE),
    "/click": ("text/html; charset=utf-8", CLICK_PAGE),
    "/click.js": ("text/javascript", CLICK_SCRIPT),
    "/tall": ("text/html; charset=utf-8", TALL_PAGE),
    "/tall.css": ("text/css", TALL_STYLE),
    "/logo.svg": ("image/svg+xml", LOGO),
}


class PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path not in FILES:
            self.send_error(404)
            return
        content_type, text = FILES[self.path]
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Security-Policy", STRICT_CSP)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base's name
        """Quiet: pytest shows what matters."""


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[str]:
    """The pages above on https://127.0.0.1:PORT, with a self-signed certificate as the box's."""
    data = tmp_path_factory.mktemp("site")
    certificate, key = ensure_self_signed(data, "mail.example.test")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), PageHandler)
    server.daemon_threads = True
    server.socket = server_context(certificate, key).wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(SERVER_STOP_TIMEOUT)


def test_the_browser_is_debians_chromium(browser):
    # Playwright's own builds cannot be downloaded here; this is the one installed.
    installed = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30)
    assert f"Chromium {browser.version} " in installed.stdout


def test_image_without_alt_and_field_without_label_are_reported(browser, site):
    with new_page(browser, site) as page:
        page.goto("/broken")
        violations = axe_violations(page)
    by_rule = {v["id"]: v for v in violations}
    assert set(by_rule) == {"image-alt", "label"}
    assert by_rule["image-alt"]["targets"] == ["img"]
    assert by_rule["label"]["targets"] == ["input"]
    assert all(v["impact"] == "critical" for v in violations)


def test_accessibility_failure_names_rule_and_element(browser, site):
    with new_page(browser, site) as page:
        page.goto("/broken")
        with pytest.raises(AssertionError) as failure:
            assert_accessible(page)
    message = str(failure.value)
    assert f"{site}/broken" in message
    assert "image-alt (critical): Images must have alternative text at img" in message
    assert "label (critical)" in message


@pytest.mark.parametrize("viewport", ["phone", "desktop"])
def test_clean_page_has_no_violation(browser, site, viewport):
    with new_page(browser, site, viewport=viewport) as page:
        page.goto("/clean")
        assert axe_violations(page) == []
        assert_accessible(page)


def test_impacts_choose_which_violations_count(browser, site):
    with new_page(browser, site) as page:
        page.goto("/broken")
        every = axe_violations(page, impacts=("minor", "moderate", "serious", "critical"))
        moderate = axe_violations(page, impacts=("moderate",))
    assert {"image-alt", "label"} <= {v["id"] for v in every}
    assert not {"image-alt", "label"} & {v["id"] for v in moderate}
    assert all(v["impact"] == "moderate" for v in moderate)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG header (RFC 2083 4.1.1: IHDR comes first)."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


def test_screenshot_is_a_png_of_the_whole_page(browser, site):
    with new_page(browser, site, viewport="phone") as page:
        page.goto("/tall")
        path = screenshot(page, "harness-tall-phone")
    assert path.name == "harness-tall-phone.png"
    assert path.parent.parts[-2:] == ("test-artifacts", "screenshots")
    width, height = png_size(path)
    assert width == 390  # the phone viewport, since the page says width=device-width
    assert height > TALL_PAGE_HEIGHT  # below the fold too, not only what fits the screen


def test_screenshot_name_cannot_leave_the_folder(browser, site):
    with new_page(browser, site) as page, pytest.raises(ValueError):
        screenshot(page, "../outside")


def test_click_runs_the_pages_script(browser, site):
    with new_page(browser, site) as page:
        page.goto("/click")
        result = page.get_by_role("status")
        assert result.text_content() == "Not run yet"
        page.get_by_role("button", name="Run the self-test").click()
        result.filter(has_text="All steps passed").wait_for()
        assert result.text_content() == "All steps passed"
