"""The x86_64 image boots in qemu (TCG, OVMF) the way a box boots on a desk.

The first boot grows the data partition, makes the setup code and shows it on
the console, answers SMTP on port 25 (forwarded to loopback), and passes the
health check, after which systemd-boot's boot counting marks slot A good.
The owner then sets the box up on its web page with the code from the
console; a message sent over SMTP is read back over IMAPS, and the power is
cut. Then slot B gets a root whose service cannot start, with three tries:
the box tries B three times and comes back on A by itself, and the message
that arrived before the power cut is still there.
"""

from __future__ import annotations

import imaplib
import json
import re
import shutil
import smtplib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.image.owner import (
    SETUP_CODE,
    SMTP,
    body_of,
    inbox_bodies,
    send_message,
    set_up_on_the_web_page,
    start_vm,
)
from tests.image.roots import squash, unsquash

sys.path.insert(0, str(REPO / "image"))
import build  # noqa: E402
import qemu  # noqa: E402

# The disk the box is "written to": larger than the image, so that first
# boot has room to grow the data partition into.
DISK_SIZE = 2 << 30
# Power-on to the SMTP banner on the first boot, under TCG on two shared
# cores (about 90 s seen alone; the slack is for a machine that is busy).
FIRST_BOOT_TIMEOUT = 360.0
# After the banner: the health check, then systemd-bless-boot.
BLESS_TIMEOUT = 240.0
# One boot of a broken slot: it boots, its service fails five times and the
# boot restarts; three of those, then slot A.
FALLBACK_TIMEOUT = 900.0
BROKEN_SERVICE = "[Service]\nExecStart=\nExecStart=/bin/false\n"
MESSAGE = (
    b"From: Someone <someone@elsewhere.test>\r\n"
    b"To: admin@example.test\r\n"
    b"Subject: before the power cut\r\n"
    b"Message-ID: <power-cut@elsewhere.test>\r\n"
    b"\r\n"
    b"This message was stored before the plug was pulled.\r\n"
)


@dataclass
class FirstBoot:
    board: build.Board
    image: Path
    disk: Path
    greeting: bytes
    setup_code: str
    slot: str
    seconds_to_banner: float
    stored: list[bytes]  # the INBOX's bodies as IMAP gave them back before the power cut


def copy_disk(image: Path, disk: Path) -> None:
    subprocess.run(["cp", "--sparse=always", str(image), str(disk)], check=True)
    with open(disk, "r+b") as f:
        f.truncate(DISK_SIZE)


@pytest.fixture(scope="module")
def first_boot(x86_64_image, tmp_path_factory) -> FirstBoot:
    board, image = x86_64_image
    workdir = tmp_path_factory.mktemp("first-boot")
    disk = workdir / "disk.img"
    copy_disk(image, disk)
    vm = start_vm(board, disk, workdir / "vm")
    started = time.monotonic()
    try:
        greeting = vm.wait_for_banner(SMTP, FIRST_BOOT_TIMEOUT)
        seconds = time.monotonic() - started
        code = vm.wait_for(SETUP_CODE, 60)[0][1]
        slot = vm.wait_for(r"appliance: boot slot=(\w)", 10)[0][1]
        vm.wait_for(r"appliance: boot complete", BLESS_TIMEOUT)
        set_up_on_the_web_page(vm, code)
        send_message(vm, MESSAGE)
        stored = inbox_bodies(vm)
    except (qemu.VmError, OSError, smtplib.SMTPException, imaplib.IMAP4.error) as error:
        raise AssertionError(f"{error}\n--- console ---\n{vm.console_text()[-6000:]}") from None
    finally:
        # A hard power-off: whatever the box acknowledged must be on its disk.
        vm.kill()
    print(f"first boot: SMTP banner after {seconds:.0f} s")
    yield FirstBoot(board, image, disk, greeting, code, slot, seconds, stored)
    shutil.rmtree(workdir, ignore_errors=True)


def test_first_boot_answers_smtp_and_shows_the_setup_code(first_boot):
    assert first_boot.greeting.startswith(b"220 "), first_boot.greeting
    assert re.fullmatch(SETUP_CODE, f"Setup code: {first_boot.setup_code}")
    assert first_boot.slot == "a"


def test_a_message_sent_over_smtp_is_read_back_over_imap(first_boot):
    assert first_boot.stored == [body_of(MESSAGE)]


def test_first_boot_marks_slot_a_good(first_boot):
    entries = build.esp_list(first_boot.board, first_boot.disk)
    assert entries == ["slot-a.conf", "slot-b.conf"]


def test_first_boot_grows_the_data_partition_to_the_disk(first_boot):
    table = json.loads(
        subprocess.run(
            ["sfdisk", "--json", str(first_boot.disk)], capture_output=True, check=True
        ).stdout
    )["partitiontable"]
    data = next(p for p in table["partitions"] if p.get("name") == "data")
    unused_sectors = table["lastlba"] - (data["start"] + data["size"] - 1)
    assert 0 <= unused_sectors < build.MIB // build.SECTOR  # at most the alignment


def test_a_slot_that_never_gets_healthy_falls_back_to_the_other(first_boot, tmp_path):
    board = first_boot.board
    disk = tmp_path / "disk.img"
    subprocess.run(["cp", "--sparse=always", str(first_boot.disk), str(disk)], check=True)
    broken_root = _root_with_broken_service(first_boot.image.parent / "root.squashfs", tmp_path)
    build.write_into(disk, build.partition_offset(board, "root-b"), broken_root)
    build.esp_remove(board, disk, "loader/entries/slot-b.conf")
    # What an update writes: slot B, newer than A, on trial with three tries.
    build.esp_write(board, disk, "loader/entries/slot-b+3.conf", build.boot_entry(board, "b", 3))

    vm = start_vm(board, disk, tmp_path / "vm")
    try:
        slots = vm.wait_for(r"appliance: boot slot=(\w)", FALLBACK_TIMEOUT, count=4)
        greeting = vm.wait_for_banner(SMTP, FIRST_BOOT_TIMEOUT)
        vm.wait_for(r"appliance: boot complete", BLESS_TIMEOUT)
        stored = inbox_bodies(vm)
    except (qemu.VmError, OSError, imaplib.IMAP4.error) as error:
        raise AssertionError(f"{error}\n--- console ---\n{vm.console_text()[-6000:]}") from None
    finally:
        vm.kill()
    assert [m[1] for m in slots] == ["b", "b", "b", "a"]
    assert greeting.startswith(b"220 ")
    # The data partition is the one from before the power cut: the box is set
    # up (no boot shows a setup code) and holds the message.
    assert re.findall(SETUP_CODE, vm.console_text()) == []
    assert stored == first_boot.stored
    assert build.esp_list(board, disk) == ["slot-a.conf", "slot-b+0-3.conf"]


def _root_with_broken_service(root: Path, tmp_path: Path) -> Path:
    """The image's root file system with a unit drop-in that makes the service fail."""
    tree = tmp_path / "tree"
    unsquash(root, tree)
    drop_in = tree / "etc/systemd/system/appliance.service.d/broken.conf"
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text(BROKEN_SERVICE)
    broken = tmp_path / "broken.squashfs"
    squash(tree, broken)
    shutil.rmtree(tree)
    return broken
