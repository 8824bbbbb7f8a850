"""The [update] table of appliance.toml: where the slots, the ESP and the keys are.

The defaults are the image's layout (image/build.py, DESIGN.md "The image"):
two root partitions labelled root-a and root-b, systemd-boot on the EFI
system partition mounted at /efi, one loader entry per slot (slot-a.conf,
slot-b+3.conf) booting /slot-X/vmlinuz with root=PARTLABEL=root-X. A box
needs no [update] table; tests point these at files and a directory instead.

Kept free of the update code's own imports (cryptography), because
appliance.config reads every table when any command starts.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

# The boards the image is built for, by what the kernel calls the machine.
_BOARD_OF_MACHINE = {"x86_64": "x86_64", "aarch64": "arm64"}
# How the kernel's root= names a device that udev links under /dev/disk.
_ROOT_SPELLINGS = {"/dev/disk/by-partlabel/": "PARTLABEL=", "/dev/disk/by-partuuid/": "PARTUUID="}


HANDOFF_CHOICES = ("auto", "always")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

# What the installer (root) records of updates, readable by the service (install.py).
STATE_DIR = "update"  # under the data directory
STATE_FILE = "state.json"


def _default_board() -> str:
    return _BOARD_OF_MACHINE.get(platform.machine(), platform.machine())


@dataclass(frozen=True, slots=True)
class UpdateSettings:
    product: str = "appliance"
    board: str = field(default_factory=_default_board)
    # The root slots' block devices (in tests, files of a fixed size).
    slot_a: str = "/dev/disk/by-partlabel/root-a"
    slot_b: str = "/dev/disk/by-partlabel/root-b"
    esp: Path = Path("/efi")  # the EFI system partition, mounted read-write
    entries: str = "loader/entries"  # under esp
    # Where the running slot is read from: the kernel's command line, whose
    # root= the slot's loader entry sets.
    cmdline: Path = Path("/proc/cmdline")
    # Tries systemd-boot gives a new slot before it falls back (the +3 of
    # slot-b+3.conf): one failed boot can be bad luck, three are not.
    tries: int = 3
    # Directory of trusted public keys (*.pub, PEM); None: the keys shipped
    # in the package (appliance/update/keys/).
    keyring: Path | None = None
    # Bytes read, hashed and written at a time: large enough that a thread
    # hop per piece costs nothing, small enough to keep memory flat.
    chunk_size: int = 1 << 20
    # A download from a URL: seconds allowed between two pieces arriving.
    download_timeout: float = 60.0
    # Who writes the slot. "auto": this process when it can write the
    # inactive slot and the ESP (root on the console, tests with fake
    # slots); otherwise it checks the bundle and hands it to the root unit
    # appliance-update.service through DATA/update-incoming ("always").
    handoff: str = "auto"
    # How the box restarts into a new slot: at once, or at a time the owner
    # picked ({time} is HH:MM, which shutdown(8) takes).
    # The update check, off while url is empty: the signed
    # index of bundles (update/index.py). HTTPS, or HTTP to a loopback host
    # (tests, or a proxy on the box itself): the index's signature is what is
    # trusted, but HTTPS keeps who checks for what private.
    url: str = ""
    # Seconds between checks (daily), give or take up to check_jitter, so that
    # boxes started together do not all ask the server in the same second.
    check_interval: float = 86400.0
    check_jitter: float = 3600.0
    # Seconds one fetch of the index may take, connecting included.
    check_timeout: float = 30.0
    reboot_command: tuple[str, ...] = ("systemctl", "reboot")
    scheduled_reboot_command: tuple[str, ...] = ("shutdown", "-r", "{time}")

    def __post_init__(self) -> None:
        object.__setattr__(self, "esp", Path(self.esp))
        object.__setattr__(self, "cmdline", Path(self.cmdline))
        if self.keyring is not None:
            object.__setattr__(self, "keyring", Path(self.keyring))
        for name in ("reboot_command", "scheduled_reboot_command"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.handoff not in HANDOFF_CHOICES:
            raise ValueError(f"update.handoff: one of {', '.join(HANDOFF_CHOICES)}")
        if not 1 <= self.tries <= 9:
            raise ValueError("update.tries: 1 to 9 boot tries")
        if self.chunk_size < 4096 or self.download_timeout <= 0:
            raise ValueError("update: chunk_size of at least 4096, a positive download_timeout")
        if self.url and not index_url_allowed(self.url):
            raise ValueError("update.url: an https:// URL (http:// only to a loopback host)")
        if self.check_interval < 60 or self.check_jitter < 0 or self.check_timeout <= 0:
            raise ValueError("update: check_interval of at least 60 s, check_jitter >= 0")

    @property
    def slots(self) -> dict[str, str]:
        """Slot name -> device; the name is what loader entries (slot-a.conf) say."""
        return {"a": self.slot_a, "b": self.slot_b}

    def root_argument(self, slot: str) -> str:
        """The kernel's root= for a slot: PARTLABEL=root-b for /dev/disk/by-partlabel/root-b."""
        device = self.slots[slot]
        for directory, spelling in _ROOT_SPELLINGS.items():
            if device.startswith(directory):
                return spelling + device.removeprefix(directory)
        return device

    def slot_of_root(self, argument: str) -> str | None:
        """Which slot a kernel root= value names, if any."""
        return next((s for s in self.slots if self.root_argument(s) == argument), None)

    def entries_dir(self) -> Path:
        return self.esp / self.entries


def index_url_allowed(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return True
    return parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS


def on_trial(data_dir: Path, running_version: str) -> bool:
    """Whether running_version came by an update that has not yet booted good.

    Here rather than in install.py so that the service can ask at start without
    loading the update code: the store holds back its incompatible migrations
    while this is true (appliance/store/schema.py). A state it cannot read
    counts as a trial: holding a migration back is the side that loses nothing."""
    path = Path(data_dir) / STATE_DIR / STATE_FILE
    try:
        last = json.loads(path.read_text()).get("last") or {}
    except FileNotFoundError:
        return False
    except (OSError, ValueError, AttributeError):
        return True
    return last.get("result") == "installed" and last.get("version") == running_version
