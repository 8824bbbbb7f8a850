"""`make dist`: dist/appliance-VERSION-ARCH.pyz, the service as one file.

The file is a shiv zipapp: the appliance package and every dependency in one
zip with a small bootstrap that unpacks the dependencies once into SHIV_ROOT
(the box sets it to a directory on /data) and runs from there. A plain zipapp
cannot carry lmdb, uvloop or cryptography: CPython loads extension modules
only from files on disk, never from inside a zip.

Compiled dependencies for each architecture are manylinux binary wheels from
PyPI for that platform, never built here or under emulation; the few
dependencies published only as source are pure Python and are built into
architecture-independent wheels first. Versions are those of the checkout's
virtual environment (pip freeze), so the file carries what the tests ran with.
The appliance package and its dependency list are taken from the last commit
(HEAD), not the working tree: a pyz is always the build of one commit.

Usage: python image/dist.py [--arch x86_64|aarch64 ...] [--out dist]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ARCHES = ("x86_64", "aarch64")
PYTHON_VERSION = "3.11"  # Debian 12's /usr/bin/python3
# Debian 12 has glibc 2.36: every manylinux wheel up to 2_36 runs there. pip
# does not widen a --platform to older tags itself, so each one is named.
GLIBC_MINORS = range(17, 37)
# The bootstrap's interpreter: Debian's, without user site-packages (-s)
# and without PYTHON* variables changing what is imported (-E).
INTERPRETER = "/usr/bin/python3 -sE"
ENTRY_POINT = "appliance.cli:main"


def version() -> str:
    text = (REPO / "appliance" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def pyz_path(out: Path, arch: str) -> Path:
    return out / f"appliance-{version()}-{arch}.pyz"


def source_date_epoch() -> str:
    """The last commit's time: two builds of one commit stamp the same times."""
    if "SOURCE_DATE_EPOCH" in os.environ:
        return os.environ["SOURCE_DATE_EPOCH"]
    return _run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"]).strip()


def inputs_digest() -> str:
    """What the pyz files are made of: the committed package and dependency list,
    the pinned versions and this script."""
    commit = _run(["git", "-C", str(REPO), "rev-parse", "HEAD:appliance", "HEAD:pyproject.toml"])
    digest = hashlib.sha256(commit.encode())
    digest.update(Path(__file__).read_bytes())
    digest.update(_run([sys.executable, "-m", "pip", "freeze", "--exclude-editable"]).encode())
    return digest.hexdigest()


def build(arch: str, out: Path, work: Path) -> Path:
    """Build the pyz for arch under out, with scratch files under work."""
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    work.mkdir(parents=True, exist_ok=True)
    constraints = work / "constraints.txt"
    constraints.write_text(_run([*pip, "freeze", "--exclude-editable"]))
    pyproject = _run(["git", "-C", str(REPO), "show", "HEAD:pyproject.toml"])
    dependencies = tomllib.loads(pyproject)["project"]["dependencies"]
    source_only = work / "wheels-any"
    _build_source_only_wheels(pip, dependencies, constraints, source_only)
    wheels = work / f"wheels-{arch}"
    target = _target_options(arch)
    _run([*pip, "download", "--only-binary=:all:", *target, "-c", str(constraints),
          "--find-links", str(source_only), "-d", str(wheels), *dependencies])  # fmt: skip
    site = work / f"site-{arch}"
    shutil.rmtree(site, ignore_errors=True)
    _run([*pip, "install", "--no-index", "--find-links", str(wheels), "--only-binary=:all:",
          *target, "--no-compile", "--target", str(site), *dependencies])  # fmt: skip
    _copy_committed_package(site)
    out.mkdir(parents=True, exist_ok=True)
    pyz = pyz_path(out, arch)
    shiv = Path(sys.executable).parent / "shiv"
    env = dict(os.environ, SOURCE_DATE_EPOCH=source_date_epoch())
    # --extend-pythonpath: the service runs parts of itself as `python3 -m`
    # subprocesses (appliance.tls makes its key that way), which must import
    # from the unpacked zipapp too.
    # Written beside its final name and renamed: an image build reading the
    # pyz never sees half of one.
    partial = pyz.with_name(pyz.name + ".partial")
    _run([str(shiv), "--site-packages", str(site), "-e", ENTRY_POINT, "-p", INTERPRETER,
          "--extend-pythonpath", "--reproducible", "-o", str(partial)], env=env)  # fmt: skip
    os.replace(partial, pyz)
    return pyz


def _target_options(arch: str) -> list[str]:
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in GLIBC_MINORS]
    options = [f"--platform={p}" for p in ["manylinux2014_" + arch, *platforms]]
    options += [f"--python-version={PYTHON_VERSION}", "--implementation=cp"]
    abi = "cp" + PYTHON_VERSION.replace(".", "")
    return options + [f"--abi={abi}", "--abi=abi3", "--abi=none"]


def _build_source_only_wheels(pip, dependencies, constraints: Path, into: Path) -> None:
    """Wheels for the dependencies PyPI has only as sdists (pure Python ones)."""
    into.mkdir(parents=True, exist_ok=True)
    for requirement in dependencies:
        probe = subprocess.run(
            [
                *pip,
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "-c",
                str(constraints),
                "-d",
                str(into / ".probe"),
                requirement,
            ],
            capture_output=True,
        )
        if probe.returncode != 0:
            _run([*pip, "wheel", "--no-deps", "-c", str(constraints), "-w", str(into), requirement])
    shutil.rmtree(into / ".probe", ignore_errors=True)
    for wheel in into.glob("*.whl"):
        if not wheel.name.endswith("-none-any.whl"):
            raise SystemExit(f"{wheel.name}: a source-only dependency is not pure Python")


def _copy_committed_package(site: Path) -> None:
    """The appliance package as the last commit has it: what two builds of one
    commit share, whatever else lies in the working tree."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", "HEAD", "appliance"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(site, filter="data")


def _run(command: list[str], env: dict | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if result.returncode != 0:
        sys.stderr.write(result.stdout + result.stderr)
        raise SystemExit(f"failed: {' '.join(command)}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", choices=ARCHES)
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    args = parser.parse_args()
    for arch in args.arch or ARCHES:
        print(build(arch, args.out, args.out / "build" / "dist"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
