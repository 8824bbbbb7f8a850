"""A signed update in qemu, the way an owner takes one: boot v1, set the box
up on its web page, receive a message, upload v2 on the admin's update page
with "restart as soon as it is installed". The service (user mail) checks the
bundle and hands it over; the root installer writes slot B and reboots; v2
boots from B, passes its health check, and says so; the message from v1 is
still there. Then bundles that are tampered, for another board, or older are
refused by the page, and the boot entries stay as they were.

Then, in the same VM, an update that goes wrong twice. v3's health check
fails while its service runs. Its first install loses power while the root
installer writes slot A: the box boots v2 from B as before, slot A has no
loader entry, and the page says the install did not finish. The same bundle
uploaded again installs, and the box boots v3 from A on trial; a message
arrives during that boot. v3 fails its check on each of its three tries, the
box comes back to v2 by itself, says it rolled back and why, and both
messages are in the INBOX. (Power cut first, then rollback: seven boots in
all, the fewest that show both.)

v1, v2 and v3 are the built image's root with two changes: the suite's own
Ed25519 key in the packaged keyring (no key of the repository is used), and
for v2 and v3 a higher version; v3 also has a health check that fails.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.update import bundle, keys
from tests import web_client
from tests.conftest import REPO
from tests.image.conftest import require
from tests.image.owner import (
    SETUP_CODE,
    SMTP,
    body_of,
    client_timeout,
    inbox_bodies,
    log_in,
    send_message,
    set_up_on_the_web_page,
    start_vm,
)
from tests.image.roots import squash, unsquash
from tests.image.test_boot import copy_disk

sys.path.insert(0, str(REPO / "image"))
import build  # noqa: E402
import qemu  # noqa: E402

# Power-on to the end of the health check and the boot loader's blessing,
# under TCG on two shared cores (about 150 s seen; the slack is for a busy machine).
BOOT_TIMEOUT = 600.0
# The v2 bundle (about 150 MB) through TLS into the emulated box, checked and
# hashed as it arrives.
UPLOAD_TIMEOUT = 900.0
# The root installer verifies and writes it again, the box restarts, v2 boots
# and records that it booted good.
INSTALL_AND_REBOOT_TIMEOUT = 1200.0
MESSAGE = (
    b"From: Someone <someone@elsewhere.test>\r\n"
    b"To: admin@example.test\r\n"
    b"Subject: stored under v1\r\n"
    b"Message-ID: <before-the-update@elsewhere.test>\r\n"
    b"\r\n"
    b"This message arrived before the update.\r\n"
)
TRIAL_MESSAGE = (
    b"From: Someone <someone@elsewhere.test>\r\n"
    b"To: admin@example.test\r\n"
    b"Subject: received while v3 was on trial\r\n"
    b"Message-ID: <during-the-trial@elsewhere.test>\r\n"
    b"\r\n"
    b"This message arrived while the new version was on trial.\r\n"
)
# v3's health check: the real one passes (the service is up and answers), then
# it fails, as a failed delivery round trip would, TRIAL_WINDOW seconds later:
# long enough for the test to send TRIAL_MESSAGE on the first trial boot.
# (A check that fails at once restarts the box before its service answers.)
TRIAL_WINDOW = 40
FAILING_HEALTH = (
    "[Service]\n"
    f"ExecStartPost=/bin/sh -c 'sleep {TRIAL_WINDOW}; echo v3 health: fails on purpose; exit 1'\n"
)
# Three trial boots of v3 (each: boot, service up, the check fails after
# TRIAL_WINDOW, restart), then v2's boot to its blessing.
ROLLBACK_TIMEOUT = 2400.0
# How often the owner's page is looked at while the root installer writes.
WRITING_POLL_INTERVAL = 0.2
BOOT_SLOT = r"appliance: boot slot=(\w)"
BOOT_COMPLETE = r"appliance: boot complete"
TRIAL_RESTART = r"appliance: boot on trial failed, restarting"  # appliance-fallback.service
BOOTED_LINE = r"update \S+ in slot \w: [a-z ]+"


@dataclass
class Roots:
    v1_version: str
    v2_version: str
    v3_version: str
    v1: Path  # root.squashfs that trusts the suite's key
    v2_bundle: Path
    v3_bundle: Path  # its health check fails
    key: Ed25519PrivateKey


@dataclass
class Updated:
    board: build.Board
    disk: Path
    versions: tuple[str, str, str]  # v1, v2, v3
    slots_booted: list[str]
    handed_notice: str
    booted_line: str
    page_after: str
    status_summary: str
    stored: list[bytes]
    refusals: dict[str, str]
    entries_after_refusals: list[str]
    entries_after: list[str]
    blessed_entry: str
    cut: PowerCut | None = None
    rollback: RolledBack | None = None


@dataclass
class PowerCut:
    """v3's first install, the plug pulled while slot A is written."""

    summary_while_writing: str
    entries_after_cut: list[str]
    slot_after_cut: str
    greeting_after_cut: bytes
    summary_after_cut: str


@dataclass
class RolledBack:
    """v3 installed again, tried three times, and v2 back."""

    handed_notice: str
    slots_booted: list[str]
    trial_greeting: bytes
    restarts: int  # "boot on trial failed, restarting" lines
    booted_line: str
    page_after: str
    status_summary: str
    stored: list[bytes]


def _site_packages(tree: Path) -> Path:
    (found,) = (tree / build.UNPACKED_SERVICE.lstrip("/")).glob("*/site-packages")
    return found


def _version(tree: Path) -> str:
    init = _site_packages(tree) / "appliance" / "__init__.py"
    return re.search(r'__version__ = "([^"]+)"', init.read_text()).group(1)


def _set_version(tree: Path, version: str) -> None:
    """The unpacked service's version changed, its bytecode made again as the image makes it."""
    init = _site_packages(tree) / "appliance" / "__init__.py"
    before = _version(tree)
    init.write_text(init.read_text().replace(f'"{before}"', f'"{version}"'))
    subprocess.run(
        ["/usr/bin/python3", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
         "-s", str(tree), "-p", "/", str(init)],
        check=True,
    )  # fmt: skip


def make_roots(image_dir: Path, work: Path, board: build.Board) -> Roots:
    tree = work / "tree"
    unsquash(image_dir / "root.squashfs", tree)
    key = Ed25519PrivateKey.generate()
    keyring = _site_packages(tree) / "appliance" / "update" / "keys"
    (keyring / "test-suite.pub").write_bytes(keys.public_pem(key.public_key()))
    v1 = work / "v1.squashfs"
    squash(tree, v1)
    v1_version = _version(tree)
    major = int(v1_version.split(".")[0])
    v2_version, v3_version = f"{major + 1}.0.0", f"{major + 2}.0.0"
    _set_version(tree, v2_version)
    v2_bundle = _bundle_of(tree, image_dir, work, board, key, v2_version, v1_version)
    _set_version(tree, v3_version)
    drop_in = tree / "etc/systemd/system/appliance-health.service.d/fails.conf"
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text(FAILING_HEALTH)
    v3_bundle = _bundle_of(tree, image_dir, work, board, key, v3_version, v1_version)
    shutil.rmtree(tree)
    return Roots(v1_version, v2_version, v3_version, v1, v2_bundle, v3_bundle, key)


def _bundle_of(
    tree: Path,
    image_dir: Path,
    work: Path,
    board: build.Board,
    key: Ed25519PrivateKey,
    version: str,
    min_version: str,
) -> Path:
    """The tree as a root image, signed into a bundle with the image's boot files."""
    root = work / f"{version}.squashfs"
    squash(tree, root)
    files = [root, image_dir / "vmlinuz", image_dir / "initrd.img"]
    names = [bundle.ROOTFS, "vmlinuz", "initrd.img"]
    manifest = bundle.Manifest(
        product="appliance",
        board=board.name,
        version=version,
        min_version=min_version,
        parts=tuple(bundle.describe_file(n, p) for n, p in zip(names, files, strict=True)),
    )
    path = work / f"appliance-{version}-{board.name}.bundle"
    bundle.write_bundle(path, manifest, key, files)
    root.unlink()
    return path


def small_bundle(key: Ed25519PrivateKey, version: str, board: str) -> bytes:
    """A bundle whose root image is a few bytes: refused before any slot is touched."""
    payload = b"not a root file system\n" * 64
    manifest = bundle.Manifest(
        product="appliance",
        board=board,
        version=version,
        min_version="0",
        parts=(bundle.describe_bytes(bundle.ROOTFS, payload),),
    )
    return bundle.signed_header(manifest, key) + payload


def upload(browser: web_client.Browser, name: str, content, reboot: str = "now") -> str:
    """The update form as the page sends it; the first notice of the page it leads to."""
    token = browser.get("/admin/update", timeout=client_timeout()).csrf()
    form = aiohttp.FormData()
    form.add_field("csrf", token)
    form.add_field("reboot", reboot)
    form.add_field("bundle", content, filename=name, content_type="application/octet-stream")
    sent = browser.post("/admin/update", data=form, timeout=client_timeout(UPLOAD_TIMEOUT))
    assert sent.status == 303, sent.text[:1000]
    page = browser.get("/admin/update", timeout=client_timeout())
    return page.notices()[0]


@pytest.fixture(scope="module")
def updated(x86_64_image, tmp_path_factory) -> Updated:
    require("unsquashfs", "mksquashfs")
    board, image = x86_64_image
    work = tmp_path_factory.mktemp("update")
    roots = make_roots(image.parent, work, board)
    disk = work / "disk.img"
    copy_disk(image, disk)
    build.write_into(disk, build.partition_offset(board, "root-a"), roots.v1)
    vm = start_vm(board, disk, work / "vm")
    started = time.monotonic()
    try:
        result = _owner_session(vm, board, disk, roots)
        print(f"update to v2 and refusals: {time.monotonic() - started:.0f} s")
        result.cut = _power_cut_while_writing(vm, board, disk, roots)
        print(f"power cut and the boot after it: {time.monotonic() - started:.0f} s")
        result.rollback = _install_again_and_roll_back(vm, roots)
        print(f"v3 on trial and the rollback: {time.monotonic() - started:.0f} s")
    except (qemu.VmError, OSError, AssertionError, smtplib.SMTPException, imaplib.IMAP4.error) as e:
        vm.kill()
        raise AssertionError(f"{e}\n--- console ---\n{vm.console_text()[-8000:]}") from None
    vm.powerdown()
    result.entries_after = build.esp_list(board, disk)
    result.blessed_entry = build.esp_read(board, disk, "loader/entries/slot-b.conf")
    yield result
    shutil.rmtree(work, ignore_errors=True)


def _owner_session(vm: qemu.Vm, board: build.Board, disk: Path, roots: Roots) -> Updated:
    code = vm.wait_for(SETUP_CODE, BOOT_TIMEOUT)[0][1]
    vm.wait_for(r"appliance: boot complete", BOOT_TIMEOUT)
    set_up_on_the_web_page(vm, code)
    send_message(vm, MESSAGE)
    with log_in(vm) as admin, open(roots.v2_bundle, "rb") as file:
        handed = upload(admin, roots.v2_bundle.name, file)
    booted = vm.wait_for(BOOTED_LINE, INSTALL_AND_REBOOT_TIMEOUT)[0][0]
    vm.wait_for(BOOT_COMPLETE, BOOT_TIMEOUT, count=2)
    slots = [m[1] for m in vm.wait_for(BOOT_SLOT, 1, count=2)]
    stored = inbox_bodies(vm)
    with log_in(vm) as admin:
        page = admin.get("/admin/update", timeout=client_timeout()).text
        refusals = {}
        for name, version, target in (
            ("older", "0.0.1", board.name),
            ("other-board", f"{roots.v2_version}.1", "arm64"),
            ("tampered", f"{roots.v2_version}.1", board.name),
        ):
            content = small_bundle(roots.key, version, target)
            if name == "tampered":
                content = content[:-1] + bytes([content[-1] ^ 1])
            refusals[name] = upload(admin, f"{name}.bundle", content)
    # Read from the running box's disk: its ESP was last written when slot B
    # was blessed, minutes ago, and refusals write nothing there.
    entries = build.esp_list(board, disk)
    versions = (roots.v1_version, roots.v2_version, roots.v3_version)
    status = _status_summary(page)
    return Updated(
        board, disk, versions, slots, handed, booted, page, status, stored, refusals, entries,
        [], "",
    )  # fmt: skip


def _power_cut_while_writing(vm: qemu.Vm, board: build.Board, disk: Path, roots: Roots) -> PowerCut:
    """v3 uploaded; the plug pulled once the page says the installer writes slot A."""
    with log_in(vm) as admin:
        with open(roots.v3_bundle, "rb") as file:
            upload(admin, roots.v3_bundle.name, file)
        writing = _summary_once_writing(admin, roots.v3_version)
        vm.kill()
    entries = build.esp_list(board, disk)
    # The power comes back: a new console log, the one before kept beside it.
    vm.console.rename(vm.workdir / "console-before-the-cut.log")
    vm.start()
    slot = vm.wait_for(BOOT_SLOT, BOOT_TIMEOUT)[0][1]
    greeting = vm.wait_for_banner(SMTP, BOOT_TIMEOUT)
    vm.wait_for(BOOT_COMPLETE, BOOT_TIMEOUT)
    with log_in(vm) as admin:
        after = _status_summary(admin.get("/admin/update", timeout=client_timeout()).text)
    return PowerCut(writing, entries, slot, greeting, after)


def _summary_once_writing(admin: web_client.Browser, version: str) -> str:
    """The page's status, looked at until the root installer writes version's slot."""
    deadline = time.monotonic() + INSTALL_AND_REBOOT_TIMEOUT
    summary = ""
    while time.monotonic() < deadline:
        summary = _status_summary(admin.get("/admin/update", timeout=client_timeout()).text)
        if summary.startswith(f"Installing {version} into slot"):
            return summary
        if summary.startswith(f"{version} is installed") or "refused" in summary:
            raise AssertionError(f"the install ended before the power cut: {summary}")
        time.sleep(WRITING_POLL_INTERVAL)
    raise AssertionError(f"the installer did not start writing {version}: {summary}")


def _install_again_and_roll_back(vm: qemu.Vm, roots: Roots) -> RolledBack:
    seen_slots = _count(vm, BOOT_SLOT)
    seen_booted = _count(vm, BOOTED_LINE)
    seen_complete = _count(vm, BOOT_COMPLETE)
    seen_restarts = _count(vm, TRIAL_RESTART)
    with log_in(vm) as admin, open(roots.v3_bundle, "rb") as file:
        handed = upload(admin, roots.v3_bundle.name, file)
    _next(vm, BOOT_SLOT, INSTALL_AND_REBOOT_TIMEOUT, seen_slots)
    # The first trial boot: its service runs until the failing check restarts the box.
    trial_greeting = vm.wait_for_banner(SMTP, BOOT_TIMEOUT)
    send_message(vm, TRIAL_MESSAGE)
    booted = _next(vm, BOOTED_LINE, ROLLBACK_TIMEOUT, seen_booted)[0]
    _next(vm, BOOT_COMPLETE, BOOT_TIMEOUT, seen_complete)
    slots = [m[1] for m in vm.wait_for(BOOT_SLOT, 1, count=_count(vm, BOOT_SLOT))[seen_slots:]]
    restarts = _count(vm, TRIAL_RESTART) - seen_restarts
    stored = inbox_bodies(vm)
    with log_in(vm) as admin:
        page = admin.get("/admin/update", timeout=client_timeout()).text
    return RolledBack(
        handed, slots, trial_greeting, restarts, booted, page, _status_summary(page), stored
    )


def _count(vm: qemu.Vm, pattern: str) -> int:
    return len(re.findall(pattern, vm.console_text()))


def _next(vm: qemu.Vm, pattern: str, timeout: float, seen: int) -> re.Match:
    """The first match of pattern on the console after the seen ones."""
    return vm.wait_for(pattern, timeout, count=seen + 1)[seen]


def _status_summary(page: str) -> str:
    found = re.search(r'<p class="update-state" role="status">(.*?)</p>', page, re.S)
    return found.group(1).strip() if found else ""


def test_the_page_checks_the_bundle_and_hands_it_to_the_installer(updated):
    v2 = updated.versions[1]
    assert updated.handed_notice.startswith(f"Checked {v2}: its signature and contents are good")


def test_the_box_restarts_into_slot_b_and_records_it_booted_good(updated):
    v2 = updated.versions[1]
    assert updated.slots_booted == ["a", "b"]
    assert updated.booted_line == f"update {v2} in slot b: good"
    assert f"<dt>Version</dt><dd>{v2}</dd>" in updated.page_after
    assert updated.status_summary == (
        f"Running {v2} from slot b: it passed its health check (booted good)."
    )


def test_slot_b_is_the_blessed_entry(updated):
    assert updated.entries_after_refusals == ["slot-a.conf", "slot-b.conf"]
    assert f"title Mail appliance {updated.versions[1]}, slot B" in updated.blessed_entry
    assert "root=PARTLABEL=root-b" in updated.blessed_entry


def test_the_message_stored_under_v1_is_read_under_v2(updated):
    assert updated.stored == [body_of(MESSAGE)]


def test_tampered_other_board_and_older_bundles_are_refused(updated):
    v2 = updated.versions[1]
    assert updated.refusals == {
        "older": f"Not installed: version 0.0.1 is not newer than {v2}, the newest this box "
        "has run or installed",
        "other-board": "Not installed: a bundle for board arm64; this box is x86_64",
        "tampered": "Not installed: payload part rootfs: its SHA-256 differs from the signed "
        "manifest",
    }
    # The boot entries after the refusals are those of before.
    assert updated.entries_after_refusals == ["slot-a.conf", "slot-b.conf"]


def test_a_power_cut_while_slot_a_is_written_leaves_it_without_an_entry(updated):
    v3 = updated.versions[2]
    assert updated.cut.summary_while_writing == f"Installing {v3} into slot a: writing it now."
    # Slot A's entry went before its first byte was written.
    assert updated.cut.entries_after_cut == ["slot-b.conf"]


def test_after_the_power_cut_the_box_boots_the_old_slot_and_says_so(updated):
    cut = updated.cut
    assert cut.slot_after_cut == "b"
    assert cut.greeting_after_cut.startswith(b"220 ")
    v3 = updated.versions[2]
    assert cut.summary_after_cut == (
        f"Installing {v3} into slot a did not finish (interrupted); that slot does not boot. "
        "Install it again."
    )


def test_the_same_bundle_uploaded_again_installs_and_boots_on_trial(updated):
    rollback = updated.rollback
    v3 = updated.versions[2]
    assert rollback.handed_notice.startswith(f"Checked {v3}: its signature and contents are good")
    assert rollback.trial_greeting.startswith(b"220 ")


def test_v3_failing_its_health_check_is_tried_three_times_then_v2_is_back(updated):
    rollback = updated.rollback
    assert rollback.slots_booted == ["a", "a", "a", "b"]
    assert rollback.restarts == 3
    assert f"<dt>Version</dt><dd>{updated.versions[1]}</dd>" in rollback.page_after


def test_the_rollback_is_recorded_with_its_reason(updated):
    v3 = updated.versions[2]
    assert updated.rollback.booted_line == f"update {v3} in slot a: rolled back"
    assert updated.rollback.status_summary == (
        f"Rolled back: {v3} in slot a did not pass its health check in 3 boots "
        "(slot-a+0-3.conf); the box runs slot b"
    )


def test_mail_from_before_and_during_the_trial_is_there_after_the_rollback(updated):
    assert updated.rollback.stored == [body_of(MESSAGE), body_of(TRIAL_MESSAGE)]


def test_the_tried_entry_shows_its_tries_used_and_slot_b_stays_blessed(updated):
    assert updated.entries_after == ["slot-a+0-3.conf", "slot-b.conf"]
