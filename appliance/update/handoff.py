"""Handing a bundle from the unprivileged service to the root installer.

On the box the service runs as user mail with nothing writable but /data:
it cannot write a root slot or the EFI system partition. So it checks what
it can as the bundle arrives (the signature first, then the manifest against
this box, then each part's hash) and streams it to
DATA/update-incoming/bundle: written as bundle.partial, renamed once whole,
beside request.json (the owner's reboot choice). appliance-update.path sees
the file and starts appliance-update.service as root, which runs
`appliance update install-incoming`. That side trusts nothing the service
wrote: user mail can change the file at any moment, so it is installed as
any other bundle, verified from scratch and hashed on its way into the slot
(install.Installation; RAUC's CVE-2020-25860: never a file checked earlier).

The state directory DATA/update (highest version, key rotations, results)
belongs to root: were it writable by user mail, the service could add a
trusted key (appliance-firstboot.service makes it root's, mode 0755).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from appliance import __version__
from appliance.update import install, keys
from appliance.update.bundle import BundleReader, Verified
from appliance.update.install import INCOMING_BUNDLE, INCOMING_DIR, InstallError
from appliance.update.settings import UpdateSettings

log = logging.getLogger("appliance.update")

REQUEST = "request.json"
RECEIVE_LOCK = "receive.lock"
# The request is one small JSON object; anything longer is not ours.
REQUEST_LIMIT = 4096
# A reboot at a time of day, as <input type="time"> sends it and shutdown(8) takes it.
REBOOT_AT = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d")
# How root opens what user mail left: never through a link, never blocked by a FIFO.
_UNTRUSTED = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Seconds systemctl or shutdown may take to accept the reboot request.
RESTART_TIMEOUT = 60


def reboot_choice(text: str | None) -> str | None:
    """ "now", "HH:MM" (the next time the clock shows it), or None: the owner restarts it."""
    if text in (None, "", "later"):
        return None
    if text == "now" or REBOOT_AT.fullmatch(text):
        return text
    raise InstallError(f"reboot: 'now' or a time like 03:30, not {text!r}")


def incoming_dir(data_dir: Path) -> Path:
    return data_dir / INCOMING_DIR


def must_hand_off(settings: UpdateSettings) -> bool:
    """Whether this process lacks the rights to write the inactive slot and the ESP."""
    if settings.handoff == "always":
        return True
    try:
        slot = install.inactive_slot(settings)
    except InstallError:
        return False  # the installer says why, in its own words
    device, entries = settings.slots[slot], settings.entries_dir()
    return not (os.access(device, os.W_OK) and os.access(entries, os.W_OK))


@dataclass(frozen=True, slots=True)
class Handed:
    """A bundle that passed every check the service can make, left for the installer."""

    version: str
    reboot: str | None


class Handoff(install.BundleReceiver):
    """Install's interface (feed, finish, received, total) for the hand-off:
    the bundle checked on its way to the incoming file, never whole in memory."""

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
        self.reboot = reboot
        self.directory = incoming_dir(data_dir)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.keyring = install.keyring(settings, data_dir)
        self.reader = BundleReader(self.keyring)
        self.partial = self.directory / (INCOMING_BUNDLE + install.PARTIAL_SUFFIX)
        self._lock = install.take_lock(
            self.directory / RECEIVE_LOCK, "another update is being uploaded right now"
        )
        try:
            if (self.directory / INCOMING_BUNDLE).exists():
                raise InstallError("another update waits for the installer; try again in a minute")
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
            self._file = os.fdopen(os.open(self.partial, flags, 0o600), "wb")
        except BaseException:
            os.close(self._lock)
            raise

    def __exit__(self, kind, error, trace) -> None:
        try:
            self._file.close()
            if error is not None:
                self.partial.unlink(missing_ok=True)
                log.info("update result=refused reason=%s", str(error) or kind.__name__)
        finally:
            os.close(self._lock)

    def feed(self, data: bytes | memoryview) -> None:
        """The piece is checked (and counted into its part's hash) before it is kept."""
        for event in self.reader.feed(data):
            if isinstance(event, Verified):
                install.check_manifest(
                    self.settings, self.data_dir, self.running_version, self.keyring, event.manifest
                )
        self._file.write(data)

    def finish(self) -> Handed:
        manifest = self.reader.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        request = json.dumps({"reboot": self.reboot, "version": manifest.version})
        keys.write_atomically(self.directory / REQUEST, request)
        # The rename is what appliance-update.path waits for: the file is whole.
        os.replace(self.partial, self.directory / INCOMING_BUNDLE)
        install.sync_directory(self.directory)
        log.info("update handed-off version=%s reboot=%s", manifest.version, self.reboot)
        return Handed(manifest.version, self.reboot)


def receiver(
    settings: UpdateSettings,
    data_dir: Path,
    reboot: str | None = None,
    running_version: str = __version__,
) -> install.Installation | Handoff:
    """Who takes the bundle's bytes: the installer itself, or the hand-off to root's."""
    if must_hand_off(settings):
        return Handoff(settings, data_dir, running_version, reboot)
    return install.Installation(settings, data_dir, running_version, reboot)


# -- the root side ------------------------------------------------------------------------


def install_incoming(
    settings: UpdateSettings, data_dir: Path, running_version: str = __version__
) -> install.Installed | None:
    """Install the bundle the service handed over (None: there is none), then reboot
    as the owner chose. The file is opened, then removed before a byte is read:
    whatever comes of the install, the path unit does not start it again. User
    mail owns the folder and /data: no link it leaves there is followed."""
    try:
        directory = os.open(incoming_dir(data_dir), _UNTRUSTED | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    try:
        try:
            descriptor = os.open(INCOMING_BUNDLE, _UNTRUSTED, dir_fd=directory)
        except FileNotFoundError:
            return None
        bundle = os.fdopen(descriptor, "rb")
        reboot = _take_request(directory)
        os.unlink(INCOMING_BUNDLE, dir_fd=directory)
    finally:
        os.close(directory)
    with bundle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise InstallError("the incoming bundle is not a plain file")
        chunks = _read_chunks(bundle, settings.chunk_size)
        installed = install.install(settings, data_dir, chunks, running_version, reboot)
    restart(settings, reboot)
    return installed


def _take_request(directory: int) -> str | None:
    """The owner's reboot choice, read as untrusted text and removed."""
    try:
        descriptor = os.open(REQUEST, _UNTRUSTED, dir_fd=directory)
    except FileNotFoundError:
        return None
    with os.fdopen(descriptor, "rb") as file:
        text = file.read(REQUEST_LIMIT + 1)
    os.unlink(REQUEST, dir_fd=directory)
    try:
        request = json.loads(text) if len(text) <= REQUEST_LIMIT else None
        return reboot_choice(request.get("reboot") if isinstance(request, dict) else None)
    except (ValueError, InstallError):
        log.warning("update request unreadable: the box is not restarted by itself")
        return None


def _read_chunks(file, chunk_size: int) -> Iterator[bytes]:
    while chunk := file.read(chunk_size):
        yield chunk


def restart(settings: UpdateSettings, reboot: str | None) -> None:
    """Reboot into the new slot at once, at the time chosen, or not (None)."""
    if reboot is None:
        return
    if reboot == "now":
        command = list(settings.reboot_command)
    else:
        command = [word.format(time=reboot) for word in settings.scheduled_reboot_command]
    log.info("update reboot=%s", reboot)
    subprocess.run(command, check=True, timeout=RESTART_TIMEOUT)
