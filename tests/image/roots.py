"""Root file systems derived from the built one, as the image tests need
them: unpacked, changed, and packed again as the build packs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "image"))
import build  # noqa: E402


def unsquash(root: Path, tree: Path) -> None:
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(tree), str(root)], check=True)


def squash(tree: Path, out: Path) -> None:
    subprocess.run(
        ["mksquashfs", str(tree), str(out), "-noappend", "-quiet", "-no-progress",
         "-comp", "zstd", "-Xcompression-level", str(build.SQUASHFS_ZSTD_LEVEL), "-b", "256K"],
        check=True,
    )  # fmt: skip
