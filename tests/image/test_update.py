"""A signed update in qemu, the way an owner takes one: boot v1, set the box
up on its web page, receive a message, upload v2 on the admin's update page
with "restart as soon as it is installed". The service (user mail) checks the
bundle and hands it over; the root installer writes slot B and reboots; v2
boots from B, passes its health check, and says so; the message from v1 is
still there. Then bundles that are tampered, for another board, or older are
refused by the page, and the boot entries stay as they were.

v1 and v2 are the built image's root with two changes: the suite's own
Ed25519 key in the packaged keyring (no key of the repository is used), and
for v2 a higher version.
"""

from __future__ import annotations

import imaplib
import re
import shutil
import smtplib
import subprocess
import sys
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
# The units image/build.py enables; the derived roots get them enabled too
# (a no-op once build.py lists them).
UPDATE_UNITS = ["appliance-update.path", "appliance-booted.service"]


@dataclass
class Roots:
    v1_version: str
    v2_version: str
    v1: Path  # root.squashfs that trusts the suite's key
    v2_bundle: Path
    key: Ed25519PrivateKey


@dataclass
class Updated:
    board: build.Board
    disk: Path
    versions: tuple[str, str]
    slots_booted: list[str]
    handed_notice: str
    booted_line: str
    page_after: str
    status_summary: str
    stored: list[bytes]
    refusals: dict[str, str]
    entries_after: list[str]
    blessed_entry: str


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
    subprocess.run(["systemctl", f"--root={tree}", "enable", "--quiet", *UPDATE_UNITS], check=True)
    v1 = work / "v1.squashfs"
    squash(tree, v1)
    v1_version = _version(tree)
    v2_version = f"{int(v1_version.split('.')[0]) + 1}.0.0"
    _set_version(tree, v2_version)
    v2 = work / "v2.squashfs"
    squash(tree, v2)
    shutil.rmtree(tree)
    files = [v2, image_dir / "vmlinuz", image_dir / "initrd.img"]
    names = [bundle.ROOTFS, "vmlinuz", "initrd.img"]
    manifest = bundle.Manifest(
        product="appliance",
        board=board.name,
        version=v2_version,
        min_version=v1_version,
        parts=tuple(bundle.describe_file(n, p) for n, p in zip(names, files, strict=True)),
    )
    v2_bundle = work / f"appliance-{v2_version}-{board.name}.bundle"
    bundle.write_bundle(v2_bundle, manifest, key, files)
    v2.unlink()
    return Roots(v1_version, v2_version, v1, v2_bundle, key)


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
    require("unsquashfs", "mksquashfs", "systemctl")
    board, image = x86_64_image
    work = tmp_path_factory.mktemp("update")
    roots = make_roots(image.parent, work, board)
    disk = work / "disk.img"
    copy_disk(image, disk)
    build.write_into(disk, build.partition_offset(board, "root-a"), roots.v1)
    vm = start_vm(board, disk, work / "vm")
    try:
        result = _owner_session(vm, board, disk, roots)
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
    booted = vm.wait_for(r"update \S+ in slot \w: [a-z ]+", INSTALL_AND_REBOOT_TIMEOUT)[0][0]
    vm.wait_for(r"appliance: boot complete", BOOT_TIMEOUT, count=2)
    slots = [m[1] for m in vm.wait_for(r"appliance: boot slot=(\w)", 1, count=2)]
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
    status = _status_summary(page)
    return Updated(
        board, disk, (roots.v1_version, roots.v2_version), slots, handed, booted, page,
        status, stored, refusals, [], "",
    )  # fmt: skip


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
    assert updated.entries_after == ["slot-a.conf", "slot-b.conf"]
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
    assert updated.entries_after == ["slot-a.conf", "slot-b.conf"]
