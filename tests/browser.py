"""A real browser for tests: Playwright driving Debian's chromium, axe-core, screenshots.

No browser can be downloaded here, so Playwright's own browser builds are
never used: it launches /usr/bin/chromium (Debian's package `chromium`).
`make test` installs chromium, playwright (the test extra) and axe-core (from
the npm registry, into .cache/npm); a test whose browser is missing is skipped
with a reason naming what is missing.

Use the fixture, named browser, by importing it into a test module or a
conftest.py (the import's name differs from the fixture's so that ruff's F811
does not mistake arguments for redefinitions):

    from tests.browser import assert_accessible, new_page, screenshot
    from tests.browser import browser_fixture  # noqa: F401 - fixture browser

    def test_setup_page(browser, web_url):
        with new_page(browser, web_url, viewport="phone") as page:
            page.goto("/setup")
            screenshot(page, "setup-phone")
            assert_accessible(page)

The fixture is module-scoped, not session-scoped: while Playwright's sync API
is started, its event loop counts as running in the main thread, so
asyncio.run() fails there ("cannot be called from a running event loop").
Stopping it after each module keeps the rest of the suite unaffected; a
browser test module must not call asyncio.run() itself (use a thread).
Starting chromium takes about half a second.

Screenshots go to test-artifacts/screenshots/NAME.png (git-ignored), for
people to look at after a run.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
AXE_CORE = REPO / ".cache" / "npm" / "node_modules" / "axe-core" / "axe.min.js"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"

# The machine has no network beyond package registries: without these flags
# chromium keeps trying to reach Google's services (updates, sync, field
# trials, QUIC probes), each attempt refused or waiting on DNS. --no-sandbox
# because tests run as root, where chromium's sandbox refuses to start.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LAUNCH_TIMEOUT_MS = 30_000  # a cold start on a busy 2-core machine
PAGE_TIMEOUT_MS = 15_000  # any one navigation, click or wait in a test
AXE_TIMEOUT_MS = 60_000  # axe checks every node of the page; large admin tables take a while

# What a person holds: a phone (390 x 844 CSS pixels, touch) and a laptop screen.
VIEWPORTS = {
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True},
    "desktop": {"viewport": {"width": 1280, "height": 800}},
}
# axe-core's impact levels are minor, moderate, serious and critical; no page
# may have a serious or critical violation.
BLOCKING_IMPACTS = ("serious", "critical")
SCREENSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

INSTALL_HINT = "`make test` installs it"


def missing_parts() -> list[str]:
    """What the browser tests need and this machine lacks, each with how to install it."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (Debian package chromium; {INSTALL_HINT})")
    try:
        import playwright.sync_api  # noqa: F401 - only asking whether it is installed
    except ImportError:
        missing.append(f"the Python package playwright (test extra; {INSTALL_HINT})")
    if not AXE_CORE.exists():
        npm = "npm" if shutil.which("npm") else "npm (Debian package npm) and then npm"
        missing.append(f"{AXE_CORE.relative_to(REPO)} ({npm} installs axe-core; {INSTALL_HINT})")
    return missing


@pytest.fixture(name="browser", scope="module")
def browser_fixture() -> Iterator[Browser]:
    """Headless Debian chromium under Playwright, for every test of one module."""
    missing = missing_parts()
    if missing:
        pytest.skip("browser tests need " + "; ".join(missing))
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        # launch() gives every browser a fresh temporary profile (user data
        # dir) and removes it on close, so no state leaks between modules.
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=list(CHROMIUM_ARGS),
            timeout=LAUNCH_TIMEOUT_MS,
        )
        try:
            yield browser
        finally:
            browser.close()
    finally:
        playwright.stop()


@contextmanager
def new_page(browser: Browser, base_url: str | None = None, viewport: str = "desktop"):
    """A page in a fresh context (own cookies and storage), closed on exit.

    HTTPS errors are ignored because the box serves a self-signed certificate
    until its owner installs another; base_url lets tests goto("/setup").
    """
    context = browser.new_context(
        base_url=base_url, ignore_https_errors=True, **VIEWPORTS[viewport]
    )
    try:
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        yield context.new_page()
    finally:
        context.close()


def browser_log_in(page: Page, address: str, password: str) -> None:
    """Log in through the login page as a person does; the page's base_url is the box's."""
    page.goto("/login")
    page.get_by_label("Address", exact=True).fill(address)
    page.get_by_label("Password", exact=True).fill(password)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in", exact=True).click()


def axe_violations(page: Page, impacts: tuple[str, ...] = BLOCKING_IMPACTS) -> list[dict]:
    """axe-core's violations of the given impacts on the page as it is now.

    Each is {"id", "impact", "help", "targets"}: targets are the CSS
    selectors of the offending elements. The script is evaluated through the
    DevTools protocol rather than added as a <script> tag: the box's pages send
    a strict Content-Security-Policy, which rightly blocks an inline script.
    """
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(AXE_CORE.read_text())
    # page.evaluate() itself never times out: the race bounds axe's run.
    return page.evaluate(
        """async ([impacts, timeoutMs]) => {
            let timer;
            const late = new Promise((_, reject) => {
                const tooLong = () => reject(new Error(`axe.run over ${timeoutMs} ms`));
                timer = setTimeout(tooLong, timeoutMs);
            });
            const run = axe.run(document, {resultTypes: ["violations"]});
            const results = await Promise.race([run, late]).finally(() => clearTimeout(timer));
            return results.violations
                .filter((v) => impacts.includes(v.impact))
                .map((v) => ({
                    id: v.id,
                    impact: v.impact,
                    help: v.help,
                    targets: v.nodes.map((n) => n.target.join(" ")),
                }));
        }""",
        [list(impacts), AXE_TIMEOUT_MS],
    )


def assert_accessible(page: Page, impacts: tuple[str, ...] = BLOCKING_IMPACTS) -> None:
    """Fails with one line per violation (rule, impact, what to fix, where) if axe finds any."""
    violations = axe_violations(page, impacts)
    lines = [
        f"{v['id']} ({v['impact']}): {v['help']} at {', '.join(v['targets'])}" for v in violations
    ]
    assert not violations, f"accessibility violations on {page.url}:\n" + "\n".join(lines)


def screenshot(page: Page, name: str) -> Path:
    """Saves the whole page (not just the viewport) as test-artifacts/screenshots/NAME.png."""
    if not SCREENSHOT_NAME.fullmatch(name):
        raise ValueError(f"screenshot name {name!r}: letters, digits, '_', '.', '-' only")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
