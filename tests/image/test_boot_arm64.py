"""The arm64 image boots in qemu-system-aarch64 (`virt`, TCG, Debian's AAVMF
UEFI firmware) to the SMTP banner and shows its setup code on the serial
console, as the x86_64 image does on a PC.

The image is built under qemu-user (its packages' maintainer scripts and
the initramfs run emulated), then booted under full-system emulation: both
are several times slower than for x86_64 on this machine.
"""

from __future__ import annotations

import re
import time

from tests.image.owner import SETUP_CODE, SMTP, start_vm
from tests.image.test_boot import copy_disk

import qemu  # image/, on the path once tests.image.owner is imported

# Power-on to the SMTP banner on the first boot under TCG (an arm64 guest on
# an x86 host): 196 s seen on a quiet machine, 443 s on one busy with other
# emulators; twice that is the bound.
FIRST_BOOT_TIMEOUT = 900.0
# The setup code is printed by first boot before the banner; this is only
# how long the console file may lag behind the network.
SETUP_CODE_TIMEOUT = 120.0


def test_first_boot_answers_smtp_and_shows_the_setup_code(arm64_image, tmp_path):
    board, image = arm64_image
    disk = tmp_path / "disk.img"
    copy_disk(image, disk)
    started = time.monotonic()
    vm = start_vm(board, disk, tmp_path / "vm")
    try:
        greeting = vm.wait_for_banner(SMTP, FIRST_BOOT_TIMEOUT)
        seconds = time.monotonic() - started
        code = vm.wait_for(SETUP_CODE, SETUP_CODE_TIMEOUT)[0][1]
    except qemu.VmError as error:
        raise AssertionError(f"{error}\n--- console ---\n{vm.console_text()[-6000:]}") from None
    finally:
        vm.kill()  # the disk is thrown away: no need to wait for a clean shutdown
        disk.unlink(missing_ok=True)
    print(f"arm64 first boot: SMTP banner after {seconds:.0f} s")
    assert greeting.startswith(b"220 "), greeting
    assert re.fullmatch(SETUP_CODE, f"Setup code: {code}")
