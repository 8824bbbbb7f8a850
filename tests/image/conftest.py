"""Builds for the image tests: each made once per session, cached by its inputs.

Building needs root and Debian's tools (`make test` installs IMAGE_PACKAGES);
without them the tests are skipped and say what is missing.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "image"))
import build  # noqa: E402
import dist  # noqa: E402

OUT = REPO / "dist"


def require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (make test installs them as root)")


def require_file(path: str) -> None:
    if not Path(path).exists():
        pytest.skip(f"missing {path} (make test installs its Debian package as root)")


@pytest.fixture(scope="session")
def pyz_files() -> dict[str, Path]:
    """dist/appliance-VERSION-ARCH.pyz for every architecture, built if stale."""
    if importlib.util.find_spec("shiv") is None:
        pytest.skip("shiv is not installed in the venv (make dist installs it)")
    stamp = OUT / "build" / "dist-inputs"
    stamp.parent.mkdir(parents=True, exist_ok=True)
    digest = dist.inputs_digest()
    files = {arch: dist.pyz_path(OUT, arch) for arch in dist.ARCHES}
    # One test session at a time rebuilds them: two would write one file at once.
    with open(stamp.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (
            stamp.exists() and stamp.read_text() == digest and all(map(Path.exists, files.values()))
        ):
            for arch in dist.ARCHES:
                dist.build(arch, OUT, OUT / "build" / "dist")
            stamp.write_text(digest)
    return files


def board_image(name: str, pyz_files) -> tuple[build.Board, Path]:
    if os.geteuid() != 0:
        pytest.skip("building an image needs root (mmdebstrap --mode=root)")
    require("mmdebstrap", "mksquashfs", "mkfs.fat", "mcopy", "sfdisk")
    board = build.load_board(name)
    require(board.qemu["binary"])
    require_file(board.qemu["firmware_code"])
    return board, build.build(board, OUT, log=lambda line: print(line, flush=True))


@pytest.fixture(scope="session")
def x86_64_image(pyz_files) -> tuple[build.Board, Path]:
    return board_image("x86_64", pyz_files)


@pytest.fixture(scope="session")
def arm64_image(pyz_files) -> tuple[build.Board, Path]:
    # The arm64 packages' maintainer scripts run under qemu-user through binfmt_misc.
    require("qemu-aarch64-static", "update-binfmts")
    return board_image("arm64", pyz_files)
