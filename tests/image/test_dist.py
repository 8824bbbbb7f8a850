"""The single-file service build (make dist) runs on Debian 12's own Python."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import READY, free_ports

# Debian 12's interpreter, which the image carries: the pyz must run on it.
DEBIAN_PYTHON = "/usr/bin/python3"
LISTENERS = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "http", "https")
START_TIMEOUT = 60.0


def run_pyz(pyz: Path, tmp_path: Path, *args: str) -> tuple[list[str], dict]:
    environment = dict(os.environ, SHIV_ROOT=str(tmp_path / "shiv"))
    return [DEBIAN_PYTHON, str(pyz), *args], environment


@pytest.fixture
def debian_python():
    if not Path(DEBIAN_PYTHON).exists():
        pytest.skip(f"no {DEBIAN_PYTHON}")
    version = subprocess.run([DEBIAN_PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=30).stdout  # fmt: skip
    if version.strip() != "(3, 11)":
        pytest.skip(f"{DEBIAN_PYTHON} is not Python 3.11 (Debian 12's)")


def test_x86_64_pyz_says_its_version(pyz_files, debian_python, tmp_path):
    command, environment = run_pyz(pyz_files["x86_64"], tmp_path, "--version")
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("appliance ")


def test_x86_64_pyz_serves_smtp(pyz_files, debian_python, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ports = dict(zip(LISTENERS, free_ports(len(LISTENERS)), strict=True))
    listen = "\n".join(f'{name} = "127.0.0.1:{port}"' for name, port in ports.items())
    (data / "appliance.toml").write_text(
        f'hostname = "mail.example.test"\nshutdown_grace = 2\n[smtp]\nchecks = false\n'
        f"[listen]\n{listen}\n"
    )
    command, environment = run_pyz(pyz_files["x86_64"], tmp_path, "--data", str(data), "serve",
                                   "--dev")  # fmt: skip
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        greeting = _greeting_once_ready(server, log_path, ports["smtp"])
        assert greeting.startswith(b"220 "), greeting
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _greeting_once_ready(server: subprocess.Popen, log_path: Path, port: int) -> bytes:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert server.poll() is None, log_path.read_text(errors="replace")
        if READY in log_path.read_text(errors="replace"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                return connection.recv(512)
        time.sleep(0.2)
    raise AssertionError(f"not ready in {START_TIMEOUT} s: {log_path.read_text()}")


def test_aarch64_pyz_carries_only_aarch64_extensions(pyz_files):
    with zipfile.ZipFile(pyz_files["aarch64"]) as archive:
        extensions = [name for name in archive.namelist() if name.endswith(".so")]
        machines = {name: _elf_machine(archive.read(name)) for name in extensions}
    assert len(extensions) >= 8, extensions  # lmdb, msgpack, uvloop, cryptography ...
    assert all("aarch64" in name or "abi3" in name for name in extensions), extensions
    assert set(machines.values()) == {"aarch64"}, machines


# ELF e_machine (System V ABI, 4.1): the architecture a shared object runs on.
_ELF_MACHINES = {62: "x86_64", 183: "aarch64"}


def _elf_machine(content: bytes) -> str:
    assert content[:4] == b"\x7fELF"
    return _ELF_MACHINES.get(int.from_bytes(content[18:20], "little"), "other")
