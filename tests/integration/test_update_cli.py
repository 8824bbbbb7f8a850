"""`appliance update` as the owner (and the build) runs it: a bundle made by
`make bundle`, installed from a file and from a URL into a fake box whose
slots are files and whose EFI system partition is a directory."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import stat
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance import __version__, config
from appliance.update import keys
from tests.conftest import REPO, cli, free_port
from tests.unit.test_update_bundle import BOARD, PAYLOAD, flip_bit, make_bundle, trust
from tests.unit.test_update_install import boot_command_line, lay_out_esp

if "update" not in {f.name for f in dataclasses.fields(config.Settings)}:
    pytest.skip(
        "appliance/config.py has no [update] table yet (Settings.update: UpdateSettings)",
        allow_module_level=True,
    )

SLOT_SIZE = 1 << 20
NEWER = "9999.1"  # newer than any version the checkout runs
# `make bundle` signs here; well above what it takes (under a second).
MAKE_TIMEOUT = 120


@dataclass
class FakeBox:
    data: Path
    slot_b: Path
    entries: Path
    key: Ed25519PrivateKey

    def update(self, *args: str) -> subprocess.CompletedProcess:
        return cli(self.data, "update", *args)

    def entry_names(self) -> list[str]:
        return sorted(p.name for p in self.entries.iterdir())


@pytest.fixture
def box(tmp_path) -> FakeBox:
    """Slot a runs; slot b and its old entry wait to be replaced."""
    data, esp = tmp_path / "data", tmp_path / "esp"
    data.mkdir()
    entries = lay_out_esp(esp, tmp_path / "slot-a", tmp_path / "slot-b")
    for slot in ("a", "b"):
        (tmp_path / f"slot-{slot}").write_bytes(b"\xee" * SLOT_SIZE)
    (tmp_path / "cmdline").write_text(boot_command_line(tmp_path / "slot-a"))
    key = Ed25519PrivateKey.generate()
    trust(tmp_path / "trusted", key)
    (data / "appliance.toml").write_text(
        'hostname = "mail.example.test"\n'
        "[update]\n"
        f'board = "{BOARD}"\n'
        f'slot_a = "{tmp_path / "slot-a"}"\n'
        f'slot_b = "{tmp_path / "slot-b"}"\n'
        f'esp = "{esp}"\n'
        f'cmdline = "{tmp_path / "cmdline"}"\n'
        f'keyring = "{tmp_path / "trusted"}"\n'
    )
    return FakeBox(data, tmp_path / "slot-b", entries, key)


@pytest.fixture
def web_server(tmp_path) -> Iterator[tuple[Path, str]]:
    """A plain HTTP server on loopback serving a directory: (directory, its URL)."""
    directory = tmp_path / "served"
    directory.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield directory, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_install_from_a_file_selects_the_other_slot_for_the_next_boot(box, tmp_path):
    bundle = tmp_path / "appliance.bundle"
    bundle.write_bytes(make_bundle(box.key, version=NEWER))
    result = box.update("install", str(bundle))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"installed {NEWER} into slot b: it starts at the next reboot")
    assert box.slot_b.read_bytes()[: len(PAYLOAD)] == PAYLOAD
    assert box.entry_names() == ["slot-a.conf", "slot-b+3.conf"]
    status = box.update("status")
    assert status.returncode == 0, status.stderr
    assert f"running: {__version__} from slot a" in status.stdout
    assert "slot b: slot-b+3.conf (3 tries left)" in status.stdout
    assert f"{NEWER} is installed in slot b: it starts at the next reboot." in status.stdout


def test_install_from_an_http_url(box, web_server):
    directory, url = web_server
    (directory / "appliance.bundle").write_bytes(make_bundle(box.key, version=NEWER))
    result = box.update("install", f"{url}/appliance.bundle")
    assert result.returncode == 0, result.stderr
    assert box.slot_b.read_bytes()[: len(PAYLOAD)] == PAYLOAD
    assert "slot-b+3.conf" in box.entry_names()


def test_a_url_that_is_not_there_is_one_line_and_nothing_changes(box, web_server):
    _, url = web_server
    result = box.update("install", f"{url}/missing.bundle")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "404" in result.stderr
    assert box.entry_names() == ["slot-a.conf", "slot-b.conf"]


def test_a_tampered_bundle_is_refused_with_one_clear_line(box, tmp_path):
    bundle = tmp_path / "tampered.bundle"
    bundle.write_bytes(flip_bit(make_bundle(box.key, version=NEWER), 30 * 8))
    result = box.update("install", str(bundle))
    assert result.returncode == 1
    assert result.stderr.startswith("appliance: error: update refused: bad signature")
    assert result.stderr.count("\n") == 1
    assert box.slot_b.read_bytes() == b"\xee" * SLOT_SIZE
    assert box.entry_names() == ["slot-a.conf", "slot-b.conf"]
    assert "was refused: bad signature" in box.update("status").stdout


def test_make_bundle_signs_what_keygen_made_and_the_box_installs_it(box, tmp_path):
    key_path = tmp_path / "signing" / "key.pem"
    key_path.parent.mkdir()
    made = cli(box.data, "update", "keygen", str(key_path))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key_id = keys.key_id(keys.load_public(keys.public_path(key_path)))
    assert key_id in made.stdout
    trust_dir = Path(config.load(box.data).update.keyring)
    (trust_dir / "release.pub").write_bytes(keys.public_path(key_path).read_bytes())

    rootfs, kernel = tmp_path / "rootfs.img", tmp_path / "vmlinuz"
    rootfs.write_bytes(PAYLOAD)
    kernel.write_bytes(b"a kernel")
    out = tmp_path / "out"
    result = _make_bundle(
        BUNDLE_KEY=str(key_path),
        BUNDLE_VERSION=NEWER,
        BUNDLE_ROOTFS=str(rootfs),
        BUNDLE_BOOT_FILES=str(kernel),
        BUNDLE_DIR=str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bundle = out / f"appliance-{NEWER}-{BOARD}.bundle"
    assert f"signed by key {key_id}" in result.stdout

    installed = box.update("install", str(bundle))
    assert installed.returncode == 0, installed.stderr
    assert box.slot_b.read_bytes()[: len(PAYLOAD)] == PAYLOAD
    assert (box.entries.parent.parent / "slot-b" / "vmlinuz").read_bytes() == b"a kernel"


def test_make_bundle_without_a_key_says_what_it_needs(tmp_path):
    result = _make_bundle(BUNDLE_KEY="", BUNDLE_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "BUNDLE_KEY=path of the signing key" in result.stdout
    assert not list(tmp_path.iterdir())


def _make_bundle(**variables: str) -> subprocess.CompletedProcess:
    # -o: the checkout's virtual environment counts as installed, whatever
    # pyproject.toml's time: the test must not reinstall it under the others.
    assignments = [f"{name}={value}" for name, value in variables.items()]
    return subprocess.run(
        ["make", "--no-print-directory", "-o", ".venv/.installed", "bundle", *assignments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=MAKE_TIMEOUT,
    )


def test_the_cli_hands_off_installs_as_root_and_records_the_boot(box, tmp_path):
    """The box's path: the service hands over, the root unit installs and
    reboots, the next boot's oneshot records "good"."""
    reboots = tmp_path / "reboots"
    with open(box.data / "appliance.toml", "a") as settings:
        settings.write(
            f'handoff = "always"\nreboot_command = ["sh", "-c", \'echo now >>{reboots}\']\n'
        )
    bundle = tmp_path / "appliance.bundle"
    bundle.write_bytes(make_bundle(box.key, version=NEWER))
    handed = box.update("install", str(bundle), "--reboot", "now")
    assert handed.returncode == 0, handed.stderr
    assert handed.stdout.startswith(f"checked {NEWER}: handed to the installer")
    assert box.entry_names() == ["slot-a.conf", "slot-b.conf"]

    installed = box.update("install-incoming")  # appliance-update.service
    assert installed.returncode == 0, installed.stderr
    assert reboots.read_text() == "now\n"
    assert box.entry_names() == ["slot-a.conf", "slot-b+3.conf"]

    # The boot into slot b: systemd-boot counts a try, the health check passes,
    # systemd-bless-boot drops the counter, then appliance-booted.service.
    (tmp_path / "cmdline").write_text(boot_command_line(tmp_path / "slot-b"))
    (box.entries / "slot-b+3.conf").rename(box.entries / "slot-b.conf")
    booted = box.update("booted")
    assert booted.returncode == 0, booted.stderr
    assert booted.stdout == f"update {NEWER} in slot b: good\n"
    status = box.update("status").stdout
    assert f"Running {NEWER} from slot b: it passed its health check (booted good)." in status
