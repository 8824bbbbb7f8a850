"""Installing bundles into a fake box: two slot files of fixed size, an ESP
directory with systemd-boot entries, a kernel command line naming the
running slot, and a data directory for what the box remembers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.update import install, keys
from appliance.update.bundle import BundleError
from appliance.update.install import Installation, InstallError
from appliance.update.settings import UpdateSettings
from tests.unit.test_update_bundle import (
    BOARD,
    PAYLOAD,
    flip_bit,
    make_bundle,
    payload_offset,
    trust,
)

SLOT_SIZE = 64 * 1024
RUNNING = "1.0.0"
SLOT_A_IMAGE = b"the running root image" * 100


def image_entry(slot: str, root: str, version: int) -> str:
    """A loader entry as image/build.py writes it, root= naming the slot's device."""
    return (
        f"title Mail appliance, slot {slot.upper()}\n"
        "sort-key appliance\n"
        f"version {version}\n"
        f"linux /slot-{slot}/vmlinuz\n"
        f"initrd /slot-{slot}/initrd.img\n"
        f"options root={root} rootfstype=squashfs ro console=ttyS0,115200 panic=10 quiet\n"
    )


def lay_out_esp(esp: Path, slot_a: Path, slot_b: Path) -> Path:
    """A freshly imaged box's ESP: slot a first (version 2), b behind it; the entries' folder."""
    entries = esp / "loader" / "entries"
    entries.mkdir(parents=True)
    (entries / "slot-a.conf").write_text(image_entry("a", str(slot_a), 2))
    (entries / "slot-b.conf").write_text(image_entry("b", str(slot_b), 1))
    return entries


def boot_command_line(slot_device: Path) -> str:
    return f"root={slot_device} rootfstype=squashfs ro console=ttyS0,115200 panic=10 quiet\n"


@dataclass
class Box:
    root: Path
    settings: UpdateSettings
    data: Path
    key: Ed25519PrivateKey

    def slot(self, name: str) -> bytes:
        return Path(self.settings.slots[name]).read_bytes()

    def entries(self) -> list[str]:
        return sorted(p.name for p in self.settings.entries_dir().iterdir())

    def boot_from(self, slot: str) -> None:
        self.settings.cmdline.write_text(boot_command_line(Path(self.settings.slots[slot])))

    def install(self, bundle: bytes, chunk: int = 4096, running: str = RUNNING):
        pieces = (bundle[i : i + chunk] for i in range(0, len(bundle), chunk))
        return install.install(self.settings, self.data, pieces, running_version=running)

    def status(self, running: str = RUNNING) -> install.UpdateStatus:
        return install.status(self.settings, self.data, running_version=running)


@pytest.fixture
def box(tmp_path) -> Box:
    return make_box(tmp_path)


def make_box(tmp_path: Path) -> Box:
    """Running slot a; slot b holds the previous version with a good entry."""
    (tmp_path / "slot-a").write_bytes(SLOT_A_IMAGE.ljust(SLOT_SIZE, b"\0"))
    (tmp_path / "slot-b").write_bytes(b"\xee" * SLOT_SIZE)
    lay_out_esp(tmp_path / "esp", tmp_path / "slot-a", tmp_path / "slot-b")
    key = Ed25519PrivateKey.generate()
    trust(tmp_path / "trusted", key)
    settings = UpdateSettings(
        board=BOARD,
        slot_a=str(tmp_path / "slot-a"),
        slot_b=str(tmp_path / "slot-b"),
        esp=tmp_path / "esp",
        cmdline=tmp_path / "cmdline",
        keyring=tmp_path / "trusted",
    )
    found = Box(tmp_path, settings, tmp_path / "data", key)
    found.boot_from("a")
    return found


def test_a_valid_bundle_fills_the_inactive_slot_and_selects_it_with_three_tries(box):
    installed = box.install(make_bundle(box.key, version="1.1.0"))
    assert (installed.version, installed.slot) == ("1.1.0", "b")
    assert box.slot("b")[: len(PAYLOAD)] == PAYLOAD
    assert box.slot("b")[len(PAYLOAD) :] == b"\xee" * (SLOT_SIZE - len(PAYLOAD))
    assert box.slot("a") == SLOT_A_IMAGE.ljust(SLOT_SIZE, b"\0")
    assert box.entries() == ["slot-a.conf", "slot-b+3.conf"]
    entry = (box.settings.entries_dir() / "slot-b+3.conf").read_text()
    expected = image_entry("b", box.settings.slot_b, 3)  # version 3: above a's 2, tried first
    expected = expected.replace("Mail appliance, slot B", "Mail appliance 1.1.0, slot B")
    assert sorted(entry.splitlines()) == sorted(expected.splitlines())
    assert install.read_state(box.data)["highest_version"] == "1.1.0"


def test_the_slot_gets_the_payload_when_it_arrives_in_tiny_pieces(box):
    box.install(make_bundle(box.key), chunk=7)
    assert box.slot("b")[: len(PAYLOAD)] == PAYLOAD
    assert "slot-b+3.conf" in box.entries()


def test_the_entry_appears_only_once_the_last_byte_matched_its_hash(box):
    bundle = make_bundle(box.key)
    with Installation(box.settings, box.data, RUNNING) as installation:
        installation.feed(bundle[:-1])
        assert box.entries() == ["slot-a.conf"]  # the old b is gone, the new not yet there
        assert install.read_state(box.data)["last"]["result"] == "writing"
        installation.feed(bundle[-1:])
        assert box.entries() == ["slot-a.conf"]
        installation.finish()
    assert box.entries() == ["slot-a.conf", "slot-b+3.conf"]


def _tampered_in_signature(key):
    bundle = make_bundle(key)
    return flip_bit(bundle, (payload_offset(bundle) - 3) * 8)


def _tampered_in_manifest(key):
    return flip_bit(make_bundle(key), 30 * 8)


# Refused before a byte is written: slot b and its entry stay as they were.
REFUSED_UNTOUCHED = {
    "bad signature": (_tampered_in_signature, "bad signature"),
    "flipped bit in manifest": (_tampered_in_manifest, "bad signature"),
    "unknown key": (lambda key: make_bundle(Ed25519PrivateKey.generate()), "unknown key"),
    "wrong product": (
        lambda key: make_bundle(key, product="toaster"),
        "a bundle for toaster; this box is appliance",
    ),
    "wrong board": (
        lambda key: make_bundle(key, board="arm64"),
        "a bundle for board arm64; this box is x86_64",
    ),
    "lower version": (
        lambda key: make_bundle(key, version="0.9.9"),
        "version 0.9.9 is not newer than 1.0.0",
    ),
    "equal version": (
        lambda key: make_bundle(key, version="1.0"),
        "version 1.0 is not newer than 1.0.0",
    ),
    "larger than the slot": (
        lambda key: make_bundle(key, payload=bytes(SLOT_SIZE + 1)),
        f"the root image of {SLOT_SIZE + 1} bytes does not fit slot b of {SLOT_SIZE} bytes",
    ),
    "needs a newer installed version": (
        lambda key: make_bundle(key, version="3.0", min_version="2.0"),
        "version 3.0 installs over 2.0 or later; this box runs 1.0.0",
    ),
}


@pytest.mark.parametrize("case", REFUSED_UNTOUCHED)
def test_refused_before_writing_leaves_both_slots_and_entries_as_they_were(box, case):
    make, message = REFUSED_UNTOUCHED[case]
    with pytest.raises((BundleError, InstallError), match=message):
        box.install(make(box.key))
    assert box.slot("b") == b"\xee" * SLOT_SIZE
    assert box.slot("a") == SLOT_A_IMAGE.ljust(SLOT_SIZE, b"\0")
    assert box.entries() == ["slot-a.conf", "slot-b.conf"]
    assert (box.settings.entries_dir() / "slot-b.conf").read_text() == image_entry(
        "b", box.settings.slot_b, 1
    )
    last = install.read_state(box.data)["last"]
    assert last["result"] == "refused" and message.split(":")[0] in last["message"]
    assert "highest_version" not in install.read_state(box.data)


def _flipped_payload(key):
    bundle = make_bundle(key)
    return flip_bit(bundle, (payload_offset(bundle) + 100) * 8)


# Found only while the payload streams: slot b is written but never marked.
REFUSED_WHILE_WRITING = {
    "flipped bit in payload": (_flipped_payload, "rootfs: its SHA-256 differs"),
    "truncated": (lambda key: make_bundle(key)[:-10], "truncated"),
    "padded": (lambda key: make_bundle(key) + b"\0" * 10, "padded"),
}


@pytest.mark.parametrize("case", REFUSED_WHILE_WRITING)
def test_refused_while_writing_leaves_the_slot_unbootable(box, case):
    make, message = REFUSED_WHILE_WRITING[case]
    with pytest.raises(BundleError, match=message):
        box.install(make(box.key))
    assert box.entries() == ["slot-a.conf"]
    assert box.slot("a") == SLOT_A_IMAGE.ljust(SLOT_SIZE, b"\0")
    assert install.read_state(box.data)["last"]["result"] == "refused"
    assert "highest_version" not in install.read_state(box.data)
    assert "refused" in box.status().summary


def test_the_running_slot_is_never_the_one_written(box):
    box.boot_from("b")
    box.install(make_bundle(box.key))
    assert box.slot("a")[: len(PAYLOAD)] == PAYLOAD
    assert box.slot("b") == b"\xee" * SLOT_SIZE
    assert "slot-a+3.conf" in box.entries() and "slot-b.conf" in box.entries()


def test_without_the_running_slot_on_the_command_line_nothing_is_written(box):
    box.settings.cmdline.write_text("root=/dev/sda2 ro\n")
    with pytest.raises(InstallError, match="cannot tell which slot is running"):
        box.install(make_bundle(box.key))
    assert box.slot("b") == b"\xee" * SLOT_SIZE


def test_the_highest_version_installed_is_remembered_across_a_rollback(box):
    box.install(make_bundle(box.key, version="1.1.0"))
    # 1.1.0 failed its health check: the box runs 1.0.0 from slot a again.
    (box.settings.entries_dir() / "slot-b+3.conf").rename(
        box.settings.entries_dir() / "slot-b+0-3.conf"
    )
    assert box.status().summary.startswith("Rolled back: 1.1.0 in slot b")
    for version in ("1.1.0", "1.0.5"):
        with pytest.raises(InstallError, match=f"version {version} is not newer than 1.1.0"):
            box.install(make_bundle(box.key, version=version))
    box.install(make_bundle(box.key, version="1.1.1"))
    assert "slot-b+3.conf" in box.entries()


def test_boot_files_land_on_the_esp_under_their_names_only_when_they_match(box):
    boot = {"vmlinuz": b"kernel " * 100, "initrd.img": b"initrd " * 100}
    box.install(make_bundle(box.key, boot_files=boot))
    slot_dir = box.settings.esp / "slot-b"
    assert sorted(p.name for p in slot_dir.iterdir()) == ["initrd.img", "vmlinuz"]
    assert (slot_dir / "vmlinuz").read_bytes() == boot["vmlinuz"]

    bundle = make_bundle(box.key, version="1.2.0", boot_files={"vmlinuz": b"new kernel"})
    with pytest.raises(BundleError, match="vmlinuz: its SHA-256 differs"):
        box.install(flip_bit(bundle, (len(bundle) - 2) * 8))
    assert (slot_dir / "vmlinuz").read_bytes() == boot["vmlinuz"]  # never replaced
    assert sorted(p.name for p in slot_dir.iterdir()) == ["initrd.img", "vmlinuz"]
    assert box.entries() == ["slot-a.conf"]


def test_a_second_install_at_the_same_time_is_refused(box):
    with Installation(box.settings, box.data, RUNNING) as first:
        first.feed(make_bundle(box.key)[:100])
        with pytest.raises(InstallError, match="another update is being installed"):
            Installation(box.settings, box.data, RUNNING)


def test_an_interrupted_install_says_so_and_the_next_attempt_installs(box, monkeypatch):
    boot_id = box.root / "boot_id"
    boot_id.write_text("first boot\n")
    monkeypatch.setattr(install, "BOOT_ID", boot_id)
    installation = Installation(box.settings, box.data, RUNNING)
    installation.feed(make_bundle(box.key)[:2000])
    assert box.status().summary == "Installing 1.1.0 into slot b: writing it now."
    installation.__exit__(None, None, None)  # the process died: nothing recorded but "writing"
    boot_id.write_text("the next boot\n")  # the power cut: the box started again
    assert "did not finish (interrupted)" in box.status().summary
    assert box.entries() == ["slot-a.conf"]
    box.install(make_bundle(box.key))
    assert "slot-b+3.conf" in box.entries()


def test_key_rotation_adds_a_key_then_revokes_the_old_one(box):
    old, new = box.key, Ed25519PrivateKey.generate()
    old_id = keys.key_id(old.public_key())
    rotation = keys.Rotation(add=(new.public_key(),))
    box.install(make_bundle(old, version="1.1.0", rotation=rotation))
    box.install(make_bundle(new, version="1.2.0"))
    box.install(make_bundle(old, version="1.3.0"))  # not revoked: still trusted

    revoke = keys.Rotation(revoke=(old_id,))
    box.install(make_bundle(new, version="1.4.0", rotation=revoke))
    with pytest.raises(BundleError, match=f"unknown key {old_id}"):
        box.install(make_bundle(old, version="1.5.0"))
    box.install(make_bundle(new, version="1.5.0"))
    ring = install.keyring(box.settings, box.data)
    assert ring.ids() == [keys.key_id(new.public_key())]


def test_a_rotation_that_would_leave_no_trusted_key_is_refused_before_writing(box):
    revoke_all = keys.Rotation(revoke=(keys.key_id(box.key.public_key()),))
    with pytest.raises(keys.KeyringError, match="would leave no trusted key"):
        box.install(make_bundle(box.key, rotation=revoke_all))
    assert box.entries() == ["slot-a.conf", "slot-b.conf"]


def test_a_rotation_takes_effect_only_once_its_bundle_installed(box):
    new = Ed25519PrivateKey.generate()
    bundle = make_bundle(box.key, rotation=keys.Rotation(add=(new.public_key(),)))
    with pytest.raises(BundleError, match="truncated"):
        box.install(bundle[:-1])
    with pytest.raises(BundleError, match="unknown key"):
        box.install(make_bundle(new, version="1.2.0"))


def test_status_follows_the_new_slot_from_install_to_good(box):
    assert box.status().summary == "No update has been installed on this box."
    box.install(make_bundle(box.key, version="1.1.0"))
    assert box.status().summary == "1.1.0 is installed in slot b: it starts at the next reboot."
    # systemd-boot counts the first try, then systemd-bless-boot marks it good.
    entries = box.settings.entries_dir()
    (entries / "slot-b+3.conf").rename(entries / "slot-b+2-1.conf")
    box.boot_from("b")
    on_trial = box.status(running="1.1.0")
    assert on_trial.summary == "Running 1.1.0 from slot b on trial, until its health check passes."
    assert on_trial.entries["b"].tries_left == 2 and on_trial.entries["b"].tries_done == 1
    (entries / "slot-b+2-1.conf").rename(entries / "slot-b.conf")
    good = box.status(running="1.1.0")
    assert good.summary == "Running 1.1.0 from slot b: it passed its health check."
    assert (good.running_slot, good.highest_version) == ("b", "1.1.0")


def test_each_new_entry_sorts_above_the_running_one(box):
    box.install(make_bundle(box.key, version="1.1.0"))
    entries = box.settings.entries_dir()
    (entries / "slot-b+3.conf").rename(entries / "slot-b.conf")  # b booted and was blessed
    box.boot_from("b")
    box.install(make_bundle(box.key, version="1.2.0"), running="1.1.0")
    assert box.entries() == ["slot-a+3.conf", "slot-b.conf"]
    entry = (entries / "slot-a+3.conf").read_text()
    assert "version 4\n" in entry and "title Mail appliance 1.2.0, slot A\n" in entry
    assert f"options root={box.settings.slot_a} rootfstype=squashfs" in entry
    assert "linux /slot-a/vmlinuz\n" in entry


def test_without_an_entry_for_the_running_slot_nothing_is_written(box):
    (box.settings.entries_dir() / "slot-a.conf").unlink()
    with pytest.raises(InstallError, match="no boot entry of the running slot"):
        box.install(make_bundle(box.key))
    assert box.slot("b") == b"\xee" * SLOT_SIZE
    assert box.entries() == ["slot-b.conf"]


def test_the_default_settings_name_slots_as_the_image_does(tmp_path):
    settings = UpdateSettings(cmdline=tmp_path / "cmdline")
    assert settings.root_argument("b") == "PARTLABEL=root-b"
    settings.cmdline.write_text("root=PARTLABEL=root-b rootfstype=squashfs ro quiet\n")
    assert install.running_slot(settings) == "b"
    assert install.inactive_slot(settings) == "a"
    assert settings.entries_dir() == Path("/efi/loader/entries")
