"""The hand-off from the unprivileged service to the root installer, and what
a boot after an install records: on the fake box of test_update_install."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from appliance.update import handoff, install
from appliance.update.bundle import BundleError
from appliance.update.install import InstallError
from tests.unit.test_update_bundle import flip_bit, make_bundle, payload_offset
from tests.unit.test_update_install import RUNNING, Box, make_box


@pytest.fixture
def box(tmp_path) -> Box:
    return make_box(tmp_path)


@pytest.fixture
def handing_box(box: Box) -> Box:
    """The box as the service sees it on the device: it always hands off, and
    its reboots are lines in a file rather than the test machine's."""
    reboots = box.root / "reboots"
    record = ["sh", "-c", f'echo "$0" >>{reboots}']
    settings = dataclasses.replace(
        box.settings,
        handoff="always",
        reboot_command=(*record, "now"),
        scheduled_reboot_command=(*record, "at {time}"),
    )
    return dataclasses.replace(box, settings=settings)


def hand_off(box: Box, bundle: bytes, reboot: str | None = "now", chunk: int = 4096):
    pieces = [bundle[i : i + chunk] for i in range(0, len(bundle), chunk)]
    with handoff.receiver(box.settings, box.data, reboot, RUNNING) as receiver:
        for piece in pieces:
            receiver.feed(piece)
        return receiver.finish()


def incoming(box: Box) -> list[str]:
    directory = handoff.incoming_dir(box.data)
    return sorted(p.name for p in directory.iterdir() if p.name != handoff.RECEIVE_LOCK)


def reboots(box: Box) -> list[str]:
    path = box.root / "reboots"
    return path.read_text().splitlines() if path.exists() else []


def test_writable_fake_slots_are_installed_by_the_process_itself(box):
    assert not handoff.must_hand_off(box.settings)
    receiver = handoff.receiver(box.settings, box.data, None, RUNNING)
    with receiver:
        assert isinstance(receiver, install.Installation)


def test_a_handed_off_bundle_is_installed_by_root_and_the_box_restarts(handing_box):
    box = handing_box
    handed = hand_off(box, make_bundle(box.key, version="1.1.0"), reboot="now")
    assert handed == handoff.Handed("1.1.0", "now")
    assert incoming(box) == ["bundle", "request.json"]
    assert box.entries() == ["slot-a.conf", "slot-b.conf"]  # nothing written by the service
    assert box.status().summary.startswith("An update passed its checks and waits")

    installed = handoff.install_incoming(box.settings, box.data, RUNNING)
    assert (installed.version, installed.slot) == ("1.1.0", "b")
    assert incoming(box) == []
    assert box.entries() == ["slot-a.conf", "slot-b+3.conf"]
    assert reboots(box) == ["now"]
    assert box.status().summary == "1.1.0 is installed in slot b: the box restarts now to start it."
    assert handoff.install_incoming(box.settings, box.data, RUNNING) is None  # nothing left


def test_a_reboot_at_a_chosen_time_is_scheduled(handing_box):
    box = handing_box
    hand_off(box, make_bundle(box.key), reboot="03:30")
    handoff.install_incoming(box.settings, box.data, RUNNING)
    assert reboots(box) == ["at 03:30"]
    assert "the box restarts at 03:30 (UTC) to start it." in box.status().summary


@pytest.mark.parametrize(
    ("fields", "refusal"),
    [
        ({"board": "arm64"}, "a bundle for board arm64; this box is x86_64"),
        ({"version": "0.9.0"}, "version 0.9.0 is not newer than 1.0.0"),
        ({"version": RUNNING}, "version 1.0.0 is not newer than 1.0.0"),
    ],
)
def test_the_service_refuses_a_bundle_this_box_cannot_take(handing_box, fields, refusal):
    box = handing_box
    with pytest.raises(InstallError, match=refusal):
        hand_off(box, make_bundle(box.key, **fields))
    assert incoming(box) == []


def test_the_service_refuses_a_tampered_bundle_before_handing_it_off(handing_box):
    box = handing_box
    bundle = make_bundle(box.key)
    with pytest.raises(BundleError, match="bad signature"):
        hand_off(box, flip_bit(bundle, 20 * 8))
    with pytest.raises(BundleError, match="SHA-256 differs"):
        hand_off(box, flip_bit(bundle, (payload_offset(bundle) + 5) * 8))
    assert incoming(box) == []


def test_the_root_installer_checks_again_what_changed_after_the_hand_off(handing_box):
    box = handing_box
    bundle = make_bundle(box.key)
    hand_off(box, bundle)
    # User mail owns the incoming file: it can change it after the checks.
    path = handoff.incoming_dir(box.data) / "bundle"
    path.write_bytes(flip_bit(bundle, (payload_offset(bundle) + 5) * 8))
    with pytest.raises(BundleError, match="SHA-256 differs"):
        handoff.install_incoming(box.settings, box.data, RUNNING)
    assert incoming(box) == []
    assert not [name for name in box.entries() if name.startswith("slot-b+")]
    assert reboots(box) == []
    assert box.status().summary.startswith("The last update (1.1.0) was refused: payload part")


def test_the_root_installer_does_not_follow_a_link_left_as_the_bundle(handing_box):
    box = handing_box
    directory = handoff.incoming_dir(box.data)
    directory.mkdir(parents=True)
    (directory / "bundle").symlink_to(box.settings.slots["a"])
    with pytest.raises(OSError):
        handoff.install_incoming(box.settings, box.data, RUNNING)
    assert box.entries() == ["slot-a.conf", "slot-b.conf"]


def test_the_root_installer_does_not_follow_a_link_left_as_the_folder(handing_box):
    box = handing_box
    elsewhere = box.root / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "bundle").write_bytes(make_bundle(box.key))
    handoff.incoming_dir(box.data).parent.mkdir(parents=True)
    handoff.incoming_dir(box.data).symlink_to(elsewhere)
    with pytest.raises(OSError):
        handoff.install_incoming(box.settings, box.data, RUNNING)
    assert (elsewhere / "bundle").exists()
    assert box.entries() == ["slot-a.conf", "slot-b.conf"]


def test_an_unreadable_request_means_no_reboot(handing_box):
    box = handing_box
    hand_off(box, make_bundle(box.key), reboot="now")
    request = handoff.incoming_dir(box.data) / "request.json"
    request.write_text(json.dumps({"reboot": "now; rm -rf /"}))
    handoff.install_incoming(box.settings, box.data, RUNNING)
    assert reboots(box) == []
    assert box.status().summary == "1.1.0 is installed in slot b: it starts at the next reboot."


def test_a_second_upload_waits_for_the_first_to_be_installed(handing_box):
    box = handing_box
    hand_off(box, make_bundle(box.key))
    with pytest.raises(InstallError, match="another update waits for the installer"):
        hand_off(box, make_bundle(box.key, version="1.2.0"))


@pytest.mark.parametrize("text", ["now", "00:00", "23:59", None, "", "later"])
def test_reboot_choices(text):
    expected = text if text in ("now", "00:00", "23:59") else None
    assert handoff.reboot_choice(text) == expected


@pytest.mark.parametrize("text", ["24:00", "3:30", "tomorrow", "now "])
def test_reboot_choices_refused(text):
    with pytest.raises(InstallError):
        handoff.reboot_choice(text)


# -- after the boot ------------------------------------------------------------------------


def bless(box: Box, slot: str) -> None:
    """What systemd-bless-boot does once boot-complete.target is reached."""
    entries = box.settings.entries_dir()
    (entry,) = entries.glob(f"slot-{slot}+*.conf")
    entry.rename(entries / f"slot-{slot}.conf")


def use_up_tries(box: Box, slot: str) -> None:
    """What systemd-boot does to an entry that never got blessed in three boots."""
    entries = box.settings.entries_dir()
    (entry,) = entries.glob(f"slot-{slot}+*.conf")
    entry.rename(entries / f"slot-{slot}+0-3.conf")


def test_a_new_slot_that_booted_good_is_recorded(box):
    box.install(make_bundle(box.key, version="1.1.0"))
    assert install.record_boot(box.settings, box.data, "1.1.0") is None  # not rebooted yet
    box.boot_from("b")
    bless(box, "b")
    recorded = install.record_boot(box.settings, box.data, "1.1.0")
    assert recorded["result"] == "good"
    status = box.status(running="1.1.0")
    assert status.summary == "Running 1.1.0 from slot b: it passed its health check (booted good)."
    assert install.record_boot(box.settings, box.data, "1.1.0") is None  # said once


def test_a_slot_that_used_up_its_tries_is_recorded_as_rolled_back(box):
    box.install(make_bundle(box.key, version="1.1.0"))
    use_up_tries(box, "b")  # three failed boots of b, then a again
    recorded = install.record_boot(box.settings, box.data, RUNNING)
    assert recorded["result"] == "rolled back"
    assert box.status().summary == (
        "Rolled back: 1.1.0 in slot b did not pass its health check in 3 boots "
        "(slot-b+0-3.conf); the box runs slot a"
    )


def test_the_state_directory_is_not_made_writable_for_others(handing_box):
    box = handing_box
    hand_off(box, make_bundle(box.key))
    handoff.install_incoming(box.settings, box.data, RUNNING)
    state = install.state_dir(box.data)
    assert not os.stat(state).st_mode & 0o022
    assert not os.stat(state / install.STATE_FILE).st_mode & 0o022


def test_a_state_directory_others_may_write_voids_the_install(box):
    """Were user mail able to write it, it could add a trusted key."""
    box.install(make_bundle(box.key, version="1.1.0"))
    state = install.state_dir(box.data)
    (state / install.STATE_FILE).chmod(0o666)
    with pytest.raises(InstallError, match="is not the installer's alone"):
        box.install(make_bundle(box.key, version="1.2.0"))
    (state / install.STATE_FILE).chmod(0o644)
    os.chown(state, 65534, 65534)
    with pytest.raises(InstallError, match="is not the installer's alone"):
        box.install(make_bundle(box.key, version="1.2.0"))
