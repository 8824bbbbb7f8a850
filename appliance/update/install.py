"""Installing a bundle into the inactive slot, and what the box knows of updates.

One install, in order:
1. the bundle's header and signature are checked (bundle.BundleReader);
2. the signed manifest is checked against this box: product, board, a
   version newer than both the running one and the highest ever installed
   (anti-rollback, remembered on the data partition), the running version
   at least the manifest's min_version, the root image no larger than the slot;
3. the inactive slot's loader entry is removed, so a slot that is about to
   hold half an image can never be booted, and the state file says
   "writing" (a power cut from here on leaves a slot that does not boot);
4. each part is written as it arrives, hashed on the way: the root image
   into the slot's device, boot files beside their final names on the ESP;
5. only when every part's hash matched and nothing followed the payload:
   the boot files take their names, the loader entry slot-X+3.conf is
   written (systemd-boot tries it 3 times, then falls back to the other
   slot), the version becomes the highest installed, and the bundle's key
   rotation is remembered.
Any refusal leaves the entry absent and says why in one line.

The running slot is the one the kernel's command line names as root=; the
other is written. Nothing here ever opens the running slot. The new entry is
the running slot's entry (made by image/build.py, with the board's console
and options) pointed at the other slot, with a `version` above every other
entry's: systemd-boot boots the highest version that has tries left.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import stat
import time
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance import __version__
from appliance.update import keys
from appliance.update.bundle import (
    ROOTFS,
    BundleReader,
    Manifest,
    PartBytes,
    PartDone,
    Verified,
    version_key,
)
from appliance.update.settings import STATE_DIR, STATE_FILE, UpdateSettings

log = logging.getLogger("appliance.update")

# Where the service hands a checked bundle to the root installer (handoff.py).
INCOMING_DIR = "update-incoming"
INCOMING_BUNDLE = "bundle"
LOCK_FILE = "install.lock"
PARTIAL_SUFFIX = ".partial"  # a boot file whose hash is not yet known to match
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
# systemd-boot's boot counting names (Boot Loader Specification, "Boot counting").
ENTRY_NAME = re.compile(r"slot-(?P<slot>[a-z])(?:\+(?P<left>\d+)(?:-(?P<done>\d+))?)?\.conf")


class InstallError(ValueError):
    """Why this box refuses a bundle (the bundle itself may be fine)."""


def state_dir(data_dir: Path) -> Path:
    return data_dir / STATE_DIR


def keyring(settings: UpdateSettings, data_dir: Path) -> keys.Keyring:
    return keys.Keyring(settings.keyring or keys.PACKAGED_KEYRING, state_dir(data_dir))


def running_slot(settings: UpdateSettings) -> str | None:
    try:
        words = settings.cmdline.read_text().split()
    except OSError:
        return None
    roots = [w.removeprefix("root=") for w in words if w.startswith("root=")]
    return settings.slot_of_root(roots[-1]) if roots else None  # the kernel takes the last


def inactive_slot(settings: UpdateSettings) -> str:
    running = running_slot(settings)
    if running is None:
        raise InstallError(
            f"cannot tell which slot is running: no root= of a slot in {settings.cmdline}"
        )
    return next(name for name in settings.slots if name != running)


# -- the state on the data partition ----------------------------------------------------


def read_state(data_dir: Path) -> dict:
    path = state_dir(data_dir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _record(data_dir: Path, **changes) -> None:
    state = read_state(data_dir) | changes
    keys.write_atomically(state_dir(data_dir) / STATE_FILE, json.dumps(state, sort_keys=True))


def _attempt(result: str, version: str, slot: str, message: str = "") -> dict:
    """The state's "last": what happened to the latest bundle, for status and the admin page."""
    when = int(time.time())
    return {"result": result, "version": version, "slot": slot, "message": message, "time": when}


def highest_version(data_dir: Path, running_version: str) -> str:
    """The newest version this box ever ran or installed."""
    remembered = read_state(data_dir).get("highest_version")
    if remembered and version_key(remembered) > version_key(running_version):
        return remembered
    return running_version


# -- loader entries ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BootEntry:
    slot: str
    path: Path
    tries_left: int | None  # None: blessed (booted good) or never counted
    tries_done: int

    @property
    def exhausted(self) -> bool:
        return self.tries_left == 0


def boot_entries(settings: UpdateSettings) -> dict[str, BootEntry]:
    found = {}
    directory = settings.entries_dir()
    for path in sorted(directory.glob("slot-*.conf")) if directory.is_dir() else []:
        match = ENTRY_NAME.fullmatch(path.name)
        if match and match["slot"] in settings.slots:
            left = None if match["left"] is None else int(match["left"])
            found[match["slot"]] = BootEntry(match["slot"], path, left, int(match["done"] or 0))
    return found


def _remove_entries(settings: UpdateSettings, slot: str) -> None:
    directory = settings.entries_dir()
    for path in directory.glob(f"slot-{slot}*.conf"):
        if ENTRY_NAME.fullmatch(path.name):
            path.unlink()
    sync_directory(directory)


def _new_entry(settings: UpdateSettings, running: BootEntry, slot: str, version: str) -> str:
    """The running slot's entry, pointed at slot, titled with the version, sorted first."""
    others = [e for e in boot_entries(settings).values() if e.slot != slot]
    generation = 1 + max((_generation(e.path) for e in others), default=0)
    old_root, new_root = settings.root_argument(running.slot), settings.root_argument(slot)
    lines = [f"title Mail appliance {version}, slot {slot.upper()}", f"version {generation}"]
    for line in running.path.read_text().splitlines():
        key, _, value = line.strip().partition(" ")
        if key in ("title", "version"):
            continue
        if key in ("linux", "initrd", "devicetree"):
            value = value.replace(f"/slot-{running.slot}/", f"/slot-{slot}/")
        elif key == "options":
            value = " ".join(
                f"root={new_root}" if word == f"root={old_root}" else word for word in value.split()
            )
        lines.append(f"{key} {value}".rstrip())
    return "\n".join(lines) + "\n"


def _generation(entry: Path) -> int:
    """The leading number of an entry's `version` line (image/build.py writes 1, 2 ...)."""
    for line in entry.read_text().splitlines():
        key, _, value = line.strip().partition(" ")
        number = re.match(r"\d+", value.strip())
        if key == "version" and number:
            return int(number.group())
    return 0


def _write_entry(settings: UpdateSettings, text: str, slot: str) -> Path:
    path = settings.entries_dir() / f"slot-{slot}+{settings.tries}.conf"
    keys.write_atomically(path, text)
    return path


def sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


# -- one install ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Installed:
    version: str
    slot: str
    entry: Path
    key_id: str


class BundleReceiver:
    """What an upload is fed to (an Installation, or the service's Handoff):
    a bundle reader, and the lock its subclass holds while it runs."""

    reader: BundleReader

    def __enter__(self):
        return self

    @property
    def total(self) -> int | None:
        """The bundle's size, once its manifest is verified."""
        return self.reader.expected_size

    @property
    def received(self) -> int:
        return self.reader.received


class Installation(BundleReceiver):
    """Feed it a bundle's bytes in pieces of any size; finish() marks the slot.

    Use it as a context manager: leaving it with an exception records the
    refusal and leaves the slot without a loader entry."""

    def __init__(
        self,
        settings: UpdateSettings,
        data_dir: Path,
        running_version: str = __version__,
        reboot: str | None = None,
    ):
        self.settings = settings
        self.data_dir = data_dir
        self.running_version = running_version
        self.reboot = reboot  # what finish() records the owner chose: see reboot_choice
        state_dir(data_dir).mkdir(parents=True, exist_ok=True)
        check_private(state_dir(data_dir))
        self._lock = take_lock(
            state_dir(data_dir) / LOCK_FILE, "another update is being installed right now"
        )
        self.keyring = keyring(settings, data_dir)
        self.reader = BundleReader(self.keyring)
        self.slot = ""
        self.key_id = ""
        self._entry_text = ""
        self._device: int | None = None
        self._boot_files: dict[str, Path] = {}  # part name -> partial file
        self._open_file = None

    def __exit__(self, kind, error, trace) -> None:
        try:
            if error is not None:
                self._abandon(str(error) or kind.__name__)
        finally:
            os.close(self._lock)

    def feed(self, data: bytes | memoryview) -> None:
        for event in self.reader.feed(data):
            if isinstance(event, PartBytes):
                self._write(event)
            elif isinstance(event, PartDone):
                self._close_part(event.part.name)
            elif isinstance(event, Verified):
                self._accept(event.manifest)
                self.key_id = event.key_id

    def finish(self) -> Installed:
        manifest = self.reader.finish()
        slot_dir = self._slot_dir()
        for name, partial in self._boot_files.items():
            os.replace(partial, slot_dir / name)
        if self._boot_files:
            sync_directory(slot_dir)
        self._boot_files = {}
        entry = _write_entry(self.settings, self._entry_text, self.slot)
        installed = _attempt("installed", manifest.version, self.slot) | {"reboot": self.reboot}
        _record(self.data_dir, highest_version=manifest.version, last=installed)
        self.keyring.apply(manifest.rotation)
        log.info(
            "update result=installed version=%s slot=%s key=%s entry=%s",
            manifest.version,
            self.slot,
            self.key_id,
            entry.name,
        )
        return Installed(manifest.version, self.slot, entry, self.key_id)

    def _accept(self, manifest: Manifest) -> None:
        """The manifest's claims against this box, before a byte is written."""
        settings = self.settings
        check_manifest(settings, self.data_dir, self.running_version, self.keyring, manifest)
        self.slot = inactive_slot(settings)
        running = boot_entries(settings).get(running_slot(settings))
        if running is None:
            raise InstallError(
                f"no boot entry of the running slot in {settings.entries_dir()} to model "
                "the new one on"
            )
        self._entry_text = _new_entry(settings, running, self.slot, manifest.version)
        device = os.open(settings.slots[self.slot], os.O_WRONLY | os.O_CLOEXEC)
        self._device = device
        capacity = os.lseek(device, 0, os.SEEK_END)
        os.lseek(device, 0, os.SEEK_SET)
        if manifest.rootfs.size > capacity:
            raise InstallError(
                f"the root image of {manifest.rootfs.size} bytes does not fit "
                f"slot {self.slot} of {capacity} bytes"
            )
        _remove_entries(settings, self.slot)
        writing = _attempt("writing", manifest.version, self.slot) | {"boot": _boot_id()}
        _record(self.data_dir, last=writing)
        log.info("update writing version=%s slot=%s", manifest.version, self.slot)

    def _write(self, event: PartBytes) -> None:
        if event.part.name == ROOTFS:
            _write_all(self._device, event.data)
            return
        if event.part.name not in self._boot_files:
            partial = self._slot_dir() / (event.part.name + PARTIAL_SUFFIX)
            self._boot_files[event.part.name] = partial
            self._open_file = open(partial, "wb")  # noqa: SIM115 - closed by _close_part
        self._open_file.write(event.data)

    def _close_part(self, name: str) -> None:
        if name == ROOTFS:
            os.fsync(self._device)
            os.close(self._device)
            self._device = None
            return
        if name not in self._boot_files:  # an empty part: nothing was written
            self._boot_files[name] = self._slot_dir() / (name + PARTIAL_SUFFIX)
            self._boot_files[name].write_bytes(b"")
            return
        self._open_file.flush()
        os.fsync(self._open_file.fileno())
        self._open_file.close()
        self._open_file = None

    def _slot_dir(self) -> Path:
        directory = self.settings.esp / f"slot-{self.slot}"
        directory.mkdir(exist_ok=True)
        return directory

    def _abandon(self, reason: str) -> None:
        if self._device is not None:
            os.close(self._device)
        if self._open_file is not None:
            self._open_file.close()
        for partial in self._boot_files.values():
            partial.unlink(missing_ok=True)
        manifest = self.reader.manifest
        version = manifest.version if manifest else "?"
        _record(self.data_dir, last=_attempt("refused", version, self.slot, reason))
        slot = self.slot or "-"
        log.info("update result=refused version=%s slot=%s reason=%s", version, slot, reason)


def check_manifest(
    settings: UpdateSettings,
    data_dir: Path,
    running_version: str,
    trusted: keys.Keyring,
    manifest: Manifest,
) -> None:
    """A verified manifest against this box: product, board, anti-rollback, min_version."""
    if manifest.product != settings.product:
        raise InstallError(f"a bundle for {manifest.product}; this box is {settings.product}")
    if manifest.board != settings.board:
        raise InstallError(f"a bundle for board {manifest.board}; this box is {settings.board}")
    highest = highest_version(data_dir, running_version)
    if version_key(manifest.version) <= version_key(highest):
        raise InstallError(
            f"version {manifest.version} is not newer than {highest}, "
            "the newest this box has run or installed"
        )
    if version_key(running_version) < version_key(manifest.min_version):
        raise InstallError(
            f"version {manifest.version} installs over {manifest.min_version} or later; "
            f"this box runs {running_version}: install {manifest.min_version} first"
        )
    trusted.check_rotation(manifest.rotation)


def check_private(directory: Path) -> None:
    """The state says which keys are trusted: only the installer's user may
    have written it (on the box, root; the service runs as user mail)."""
    for path in [directory, *directory.iterdir()]:
        info = path.lstat()
        if info.st_uid != os.geteuid() or info.st_mode & 0o022 or stat.S_ISLNK(info.st_mode):
            raise InstallError(
                f"{path} is not the installer's alone (owner {info.st_uid}, "
                f"mode {stat.filemode(info.st_mode)}): its trust is void; remove it"
            )


def _boot_id() -> str:
    """This boot's random id: a "writing" state from another boot was interrupted."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def take_lock(path: Path, busy: str) -> int:
    """The lock at path, held until its descriptor is closed; InstallError(busy)
    when another process holds it. A link is not followed: the incoming folder
    belongs to user mail."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise InstallError(busy) from None
    return descriptor


def _write_all(descriptor: int, data: memoryview) -> None:
    while data:
        data = data[os.write(descriptor, data) :]


def install(
    settings: UpdateSettings,
    data_dir: Path,
    chunks: Iterable[bytes],
    running_version: str = __version__,
    reboot: str | None = None,
) -> Installed:
    """Install the bundle whose bytes chunks yields."""
    with Installation(settings, data_dir, running_version, reboot) as installation:
        for chunk in chunks:
            installation.feed(chunk)
        return installation.finish()


def file_chunks(path: Path, chunk_size: int) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(chunk_size):
            yield chunk


def url_chunks(url: str, chunk_size: int, timeout: float) -> Iterator[bytes]:
    """A download read as it arrives; the bundle's signature, not the
    transport, is what makes it trusted, so plain HTTP on a LAN is fine."""
    if not url.startswith(("https://", "http://")):
        raise InstallError(f"not an http or https URL: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - scheme checked
        while chunk := response.read(chunk_size):
            yield chunk


# -- what the box knows -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpdateStatus:
    running_slot: str | None
    running_version: str
    highest_version: str
    last: dict | None  # the last attempt: result, version, slot, message, time
    entries: dict[str, BootEntry]
    summary: str  # one line for the owner
    # A bundle handed to the root installer (handoff.py) that it has not taken yet.
    waiting: bool = False

    @property
    def busy(self) -> bool:
        """Whether the page should look again in a moment."""
        return self.waiting or self.summary.startswith("Installing")


def status(
    settings: UpdateSettings, data_dir: Path, running_version: str = __version__
) -> UpdateStatus:
    running = running_slot(settings)
    try:
        entries: dict[str, BootEntry] | None = boot_entries(settings)
    except PermissionError:
        entries = None  # the service on the box: the ESP is root's alone
    last = read_state(data_dir).get("last")
    waiting = (data_dir / INCOMING_DIR / INCOMING_BUNDLE).exists()
    summary = _summary(settings, running, last, entries)
    if waiting:
        summary = (
            "An update passed its checks and waits for the installer, which writes it "
            "into the other slot in a moment."
        )
    return UpdateStatus(
        running_slot=running,
        running_version=running_version,
        highest_version=highest_version(data_dir, running_version),
        last=last,
        entries=entries or {},
        summary=summary,
        waiting=waiting,
    )


def _summary(settings, running: str | None, last: dict | None, entries: dict | None) -> str:
    if last is None:
        return "No update has been installed on this box."
    version, slot, result = last["version"], last["slot"], last["result"]
    if result == "refused":
        return f"The last update ({version}) was refused: {last['message']}"
    if result == "rolled back":
        return f"Rolled back: {last['message']}"
    if result == "good":
        return f"Running {version} from slot {slot}: it passed its health check (booted good)."
    if result == "writing":
        if last.get("boot") and last.get("boot") == _boot_id():
            return f"Installing {version} into slot {slot}: writing it now."
        return (
            f"Installing {version} into slot {slot} did not finish (interrupted); "
            "that slot does not boot. Install it again."
        )
    if entries is None:  # what systemd-boot made of it is unknown here: record_boot says
        if running == slot:
            return f"Running {version} from slot {slot} on trial, until its health check passes."
        return f"{version} is installed in slot {slot}: {_when_it_starts(last.get('reboot'))}"
    entry = entries.get(slot)
    if running == slot:
        if entry is not None and entry.tries_left is None:
            return f"Running {version} from slot {slot}: it passed its health check."
        if entry is not None and entry.exhausted:
            return (
                f"Running {version} from slot {slot}, but it failed its health check: "
                "the next boot goes back to the previous version."
            )
        return f"Running {version} from slot {slot} on trial, until its health check passes."
    if entry is None or entry.exhausted:
        reason = _rollback_reason(settings, last, entry)
        return f"Rolled back: {reason}; the box runs slot {running}."
    return f"{version} is installed in slot {slot}: {_when_it_starts(last.get('reboot'))}"


def _when_it_starts(reboot: str | None) -> str:
    if reboot == "now":
        return "the box restarts now to start it."
    if reboot:
        return f"the box restarts at {reboot} (UTC) to start it."
    return "it starts at the next reboot."


def _rollback_reason(settings, last: dict, entry: BootEntry | None) -> str:
    tries = settings.tries if entry is None else entry.tries_done
    shown = "its boot entry is gone" if entry is None else entry.path.name
    return (
        f"{last['version']} in slot {last['slot']} did not pass its health check in "
        f"{tries} boots ({shown})"
    )


# -- after a boot: good, or rolled back -------------------------------------------------------


def record_boot(
    settings: UpdateSettings, data_dir: Path, running_version: str = __version__
) -> dict | None:
    """After boot-complete.target: the installed update booted good, or the
    boot loader went back to the other slot. Returns what it recorded, if anything."""
    last = read_state(data_dir).get("last")
    if not last or last.get("result") != "installed":
        return None
    running = running_slot(settings)
    entry = boot_entries(settings).get(last["slot"])
    version, slot = last["version"], last["slot"]
    if running == slot and entry is not None and entry.tries_left is None:
        outcome = _attempt("good", version, slot, f"runs {running_version}")
        log.info("update result=good version=%s slot=%s", version, slot)
    elif running != slot and (entry is None or entry.exhausted):
        reason = _rollback_reason(settings, last, entry)
        outcome = _attempt("rolled back", version, slot, f"{reason}; the box runs slot {running}")
        log.warning("update result=rolled-back version=%s slot=%s reason=%s", version, slot, reason)
    else:
        return None  # not booted yet, or still on trial
    _record(data_dir, last=outcome)
    return outcome
