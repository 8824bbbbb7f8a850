"""The x86_64 image boots in qemu (TCG, OVMF) the way a box boots on a desk.

The first boot grows the data partition, makes the setup code and shows it on
the console, answers SMTP on port 25 (forwarded to loopback), and passes the
health check, after which systemd-boot's boot counting marks slot A good.
Then slot B gets a root whose service cannot start, with three tries: the box
tries B three times and comes back on A by itself, with its data.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

sys.path.insert(0, str(REPO / "image"))
import build  # noqa: E402
import qemu  # noqa: E402

SMTP = 25
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
SETUP_CODE = r"Setup code: ([2-9A-Z]{4}-[2-9A-Z]{4}-[2-9A-Z]{4})"
BROKEN_SERVICE = "[Service]\nExecStart=\nExecStart=/bin/false\n"


@dataclass
class FirstBoot:
    board: build.Board
    image: Path
    disk: Path
    greeting: bytes
    setup_code: str
    slot: str
    clean_shutdown: bool
    seconds_to_banner: float


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
    vm = qemu.Vm(board, disk, workdir / "vm", {SMTP: free_port()})
    started = time.monotonic()
    vm.start()
    try:
        greeting = vm.wait_for_banner(SMTP, FIRST_BOOT_TIMEOUT)
        seconds = time.monotonic() - started
        code = vm.wait_for(SETUP_CODE, 60)[0][1]
        slot = vm.wait_for(r"appliance: boot slot=(\w)", 10)[0][1]
        vm.wait_for(r"appliance: boot complete", BLESS_TIMEOUT)
    except qemu.VmError as error:
        vm.kill()
        raise AssertionError(f"{error}\n--- console ---\n{vm.console_text()[-6000:]}") from None
    clean = vm.powerdown()
    print(f"first boot: SMTP banner after {seconds:.0f} s")
    yield FirstBoot(board, image, disk, greeting, code, slot, clean, seconds)
    shutil.rmtree(workdir, ignore_errors=True)


def test_first_boot_answers_smtp_and_shows_the_setup_code(first_boot):
    assert first_boot.greeting.startswith(b"220 "), first_boot.greeting
    assert re.fullmatch(SETUP_CODE, f"Setup code: {first_boot.setup_code}")
    assert first_boot.slot == "a"
    # Not asserted yet: the guest does not always honour the ACPI power
    # button under TCG (seen failing in a clean run); the VM is then killed,
    # which the tests after this one survive, as a box survives a power cut.
    print(f"clean shutdown by the power button: {first_boot.clean_shutdown}")


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

    vm = qemu.Vm(board, disk, tmp_path / "vm", {SMTP: free_port()})
    vm.start()
    try:
        slots = vm.wait_for(r"appliance: boot slot=(\w)", FALLBACK_TIMEOUT, count=4)
        greeting = vm.wait_for_banner(SMTP, FIRST_BOOT_TIMEOUT)
        vm.wait_for(r"appliance: boot complete", BLESS_TIMEOUT)
    except qemu.VmError as error:
        vm.kill()
        raise AssertionError(f"{error}\n--- console ---\n{vm.console_text()[-6000:]}") from None
    vm.powerdown()
    assert [m[1] for m in slots] == ["b", "b", "b", "a"]
    assert greeting.startswith(b"220 ")
    # The data partition is the one from before: every boot shows its code.
    codes = re.findall(SETUP_CODE, vm.console_text())
    assert len(codes) >= 4 and set(codes) == {first_boot.setup_code}
    assert build.esp_list(board, disk) == ["slot-a.conf", "slot-b+0-3.conf"]


def _root_with_broken_service(root: Path, tmp_path: Path) -> Path:
    """The image's root file system with a unit drop-in that makes the service fail."""
    tree = tmp_path / "tree"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(root)], check=True)
    drop_in = tree / "etc/systemd/system/appliance.service.d/broken.conf"
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text(BROKEN_SERVICE)
    broken = tmp_path / "broken.squashfs"
    subprocess.run(
        [
            "mksquashfs",
            str(tree),
            str(broken),
            "-quiet",
            "-no-progress",
            "-comp",
            "zstd",
            "-Xcompression-level",
            "1",
        ],  # fmt: skip
        check=True,
    )
    shutil.rmtree(tree)
    return broken
