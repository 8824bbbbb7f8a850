"""`make image BOARD=...`: a bootable GPT disk image from Debian 12 packages.

Layout (DESIGN.md, "The image"):

    1 esp      vfat: systemd-boot, loader entries, a kernel and initrd per slot
    2 root-a   squashfs: the read-only root file system
    3 root-b   the same root file system (an update writes the slot not running)
    4 data     left empty: first boot grows it to the disk's end and formats it

No loop devices and no mounts: the root tree comes from mmdebstrap, the file
systems from mksquashfs and mkfs.fat + mtools working on plain files, the
partition table from sfdisk on the image file. hw/BOARD/board.toml says what
differs per board. The result is cached under dist/build/ by a digest of
everything that goes into it, so tests and `make image` build it once.

Usage: python image/build.py --board x86_64 [--out dist]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dist  # noqa: E402 - the sibling script, run as a script too

REPO = dist.REPO
ROOTFS = REPO / "rootfs"
HW = REPO / "hw"
SUITE = "bookworm"
# Debian's mirror; DEBIAN_SNAPSHOT=20250520T000000Z pins a snapshot.debian.org
# date so that two builds see the same packages (when that host is reachable).
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
SNAPSHOT_URL = "http://snapshot.debian.org/archive"
MIB = 1 << 20
SECTOR = 512
FIRST_LBA = 2048  # 1 MiB: partitions aligned for flash erase blocks
# zstd level of the root file system: 6 packs it in 10 s to 125 MB, 15 takes
# three minutes for 8% less. Higher levels cost nothing when reading it back.
SQUASHFS_ZSTD_LEVEL = 6
# Where the units' SHIV_ROOT points: the service's dependencies, unpacked.
UNPACKED_SERVICE = "/usr/lib/appliance/unpacked"
# Boot counting (systemd-boot): a new slot gets this many tries.
TRIES = 3
# GPT partition types (UEFI 2.10 5.3.3; Discoverable Partitions Specification).
PARTITION_TYPES = {
    "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    "root-x86-64": "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
    "root-arm64": "B921B045-1DF0-41C3-AF44-4C6F280D3FAE",
    "linux-generic": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
}
# Fixed identifiers make two builds of one commit byte-identical; a box
# gets its own data file system (made at first boot), so these never meet.
_UUID_NAMESPACE = uuid.UUID("5b0c3c4e-2f53-4a59-9d1e-6f6d61696c00")
ESP_VOLUME_ID = "4d41494c"

PACKAGES = [
    "systemd",
    "systemd-sysv",
    "udev",
    "dbus",  # logind: the power button shuts down cleanly
    "systemd-boot",  # the EFI boot loader and systemd-bless-boot
    "systemd-resolved",  # DNS, and mDNS so that <hostname>.local reaches the box
    "systemd-timesyncd",
    "initramfs-tools",
    "zstd",  # the initramfs is zstd-compressed
    "python3",
    "ca-certificates",  # outbound TLS, MTA-STS and ACME verify servers
    "e2fsprogs",  # mkfs and resize of the data partition
]
# What the appliance never reads; dpkg does not unpack it at all.
DPKG_EXCLUDES = [
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/bash-completion/*",
    "/usr/share/zsh/*",
    "/usr/share/i18n/*",
]
DPKG_INCLUDES = ["/usr/share/doc/*/copyright"]  # the licences stay
# Kernel modules for hardware a mail box does not have, and for what it does
# not serve (cluster file systems, NFS and SCSI targets, lab instruments).
# The rest (disks, wired network, USB, local file systems) stays.
UNUSED_MODULES = [
    "drivers/gpu",
    "drivers/media",
    "drivers/infiniband",
    "drivers/net/wireless",
    "drivers/staging",
    "drivers/isdn",
    "drivers/bluetooth",
    "drivers/iio",
    "drivers/input/joystick",
    "drivers/input/touchscreen",
    "drivers/net/can",
    "drivers/video/fbdev",
    "sound",
    "net/bluetooth",
    "net/mac80211",
    "net/wireless",
    "drivers/comedi",
    "drivers/target",
    "fs/ocfs2",
    "fs/gfs2",
    "fs/nfsd",
]
MERGED_USR_HOOKS = "/usr/share/mmdebstrap/hooks/merged-usr"
# Commands that package scripts and triggers run again and again: the
# kernel's package makes an initramfs, then initramfs-tools' trigger makes it
# anew for each later package with an initramfs hook (udev, zstd ...);
# ca-certificates rebuilds /etc/ssl/certs when configured and again from its
# trigger. Under qemu-user each run takes one to three minutes. So they are
# diverted to a no-op while packages install (as mmdebstrap does with
# start-stop-daemon) and run once, with these arguments, at the end.
RUN_ONCE = {
    "/usr/sbin/update-initramfs": "-c -k all",
    "/usr/sbin/update-ca-certificates": "",
}


def _divert(command: str, action: str) -> str:
    divert = f"dpkg-divert --quiet --local --rename {action} --divert {command}.real"
    return f'chroot "$1" {divert} {command}'


def _hook_deferring(commands: dict[str, str]) -> str:
    """An essential hook (before the packages that ship these): each command a no-op."""
    return " && ".join(
        f'{_divert(command, "--add")} && printf "#!/bin/sh\\n" > "$1{command}" && '
        f'chmod 755 "$1{command}"'
        for command in commands
    )


def _hook_running_once(commands: dict[str, str]) -> str:
    """A customize hook (after all packages): each command back, and run once."""
    return " && ".join(
        f'rm "$1{command}" && {_divert(command, "--remove")} && chroot "$1" {command} {arguments}'
        for command, arguments in commands.items()
    )


UNITS_ENABLED = [
    "appliance.service",
    "appliance-firstboot.service",
    "appliance-health.service",
    "appliance-fallback.timer",
    "appliance-banner.path",
    "appliance-bootlog.service",
    "appliance-slot.service",
    "appliance-blessed.service",
    "appliance-update.path",
    "appliance-booted.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-timesyncd.service",
]
# The ESP's boot loader is replaced only by an update bundle, never behind
# its back by the running system.
UNITS_MASKED = ["systemd-boot-update.service", "systemd-boot-system-token.service"]


@dataclass(frozen=True)
class Board:
    name: str
    debian_arch: str
    pyz_arch: str
    kernel_package: str
    efi_boot_file: str
    systemd_boot: str
    root_type: str
    console: str
    esp_size: int  # MiB
    root_size: int
    data_size: int
    qemu: dict

    @property
    def disk_size(self) -> int:
        """MiB: the partitions, the GPT in front, and its backup at the end."""
        return 1 + self.esp_size + 2 * self.root_size + self.data_size + 1


def load_board(name: str) -> Board:
    settings = tomllib.loads((HW / name / "board.toml").read_text())
    return Board(name=name, **settings)


def partitions(board: Board) -> list[tuple[str, str, int]]:
    """(name, GPT type, MiB) in disk order."""
    return [
        ("esp", PARTITION_TYPES["esp"], board.esp_size),
        ("root-a", PARTITION_TYPES[board.root_type], board.root_size),
        ("root-b", PARTITION_TYPES[board.root_type], board.root_size),
        ("data", PARTITION_TYPES["linux-generic"], board.data_size),
    ]


def partition_offset(board: Board, name: str) -> int:
    """Byte offset of a partition in the image."""
    offset = FIRST_LBA * SECTOR
    for partition, _, size in partitions(board):
        if partition == name:
            return offset
        offset += size * MIB
    raise KeyError(name)


def boot_entry(board: Board, slot: str, version: int) -> str:
    """A loader entry (Boot Loader Specification type 1) for root slot 'a' or 'b'.

    Both slots share a sort-key, so systemd-boot orders them by version,
    highest first: the newest slot boots, unless it has no tries left (then
    it sorts last). No `default` anywhere: a pinned default would win over
    that order and defeat the fallback.
    """
    options = [
        f"root=PARTLABEL=root-{slot}",
        "rootfstype=squashfs",
        "ro",
        board.console,
        "panic=10",  # a kernel (or initramfs) that cannot go on restarts: a counted try
        "systemd.gpt_auto=0",
        "quiet",
    ]
    return (
        f"title Mail appliance, slot {slot.upper()}\n"
        "sort-key appliance\n"
        f"version {version}\n"
        f"linux /slot-{slot}/vmlinuz\n"
        f"initrd /slot-{slot}/initrd.img\n"
        f"options {' '.join(options)}\n"
    )


LOADER_CONF = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n"


def inputs_digest(board: Board, pyz: Path) -> str:
    """What the image is made of: a change to any of it means a new build."""
    digest = hashlib.sha256()
    files = [Path(__file__), HW / board.name / "board.toml", pyz]
    files += sorted(p for p in ROOTFS.rglob("*") if p.is_file() or p.is_symlink())
    for path in files:
        label = path.relative_to(REPO) if path.is_relative_to(REPO) else Path(path.name)
        digest.update(str(label).encode() + b"\0")
        content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        digest.update(hashlib.sha256(content).digest())
        digest.update(oct(path.lstat().st_mode).encode())
    digest.update(f"{source_date_epoch()} {mirrors()}".encode())
    return digest.hexdigest()[:16]


def source_date_epoch() -> str:
    return dist.source_date_epoch()


def mirrors() -> list[str]:
    snapshot = os.environ.get("DEBIAN_SNAPSHOT")
    if snapshot:
        main = f"{SNAPSHOT_URL}/debian/{snapshot}"
        security = f"{SNAPSHOT_URL}/debian-security/{snapshot}"
    else:
        main, security = MIRROR, SECURITY_MIRROR
    return [
        f"deb {main} {SUITE} main",
        f"deb {main} {SUITE}-updates main",
        f"deb {security} {SUITE}-security main",
    ]


def cached_image(board: Board, out: Path, pyz: Path) -> Path:
    return out / "build" / f"image-{board.name}-{inputs_digest(board, pyz)}" / "disk.img"


def build(board: Board, out: Path, log=print) -> Path:
    """The disk image for board (built now, or taken from the cache)."""
    pyz = dist.pyz_path(out, board.pyz_arch)
    if not pyz.exists():
        raise SystemExit(f"{pyz} is missing: run `make dist` first")
    disk = cached_image(board, out, pyz)
    disk.parent.parent.mkdir(parents=True, exist_ok=True)
    # Two builds of one image (two test runs at once) would share the work
    # folder: the second waits for the first and takes its image.
    with open(disk.parent.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if disk.exists():
            log(f"image cached: {disk}")
        else:
            _build(board, pyz, disk, log)
    return disk


def _build(board: Board, pyz: Path, disk: Path, log) -> None:
    work = disk.parent.with_suffix(".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # A private copy: a test session may rebuild dist/*.pyz meanwhile.
    pyz = Path(shutil.copy2(pyz, work / pyz.name))
    tree = work / "tree"
    started = time.monotonic()
    root, esp = work / "root.squashfs", work / "esp.img"
    with _timed("mmdebstrap", log):
        _debootstrap(board, tree, log)
    with _timed("customize", log):
        _customize(board, tree, pyz)
    with _timed("squashfs", log):
        _squash(tree, root)
    with _timed("esp and disk", log):
        _make_esp(board, tree, esp)
        _assemble(board, esp, root, work / "disk.img")
    # What `make bundle` signs for an update: the root and the boot files.
    kernel, initrd = _kernel_files(tree)
    shutil.copyfile(kernel, work / "vmlinuz")
    shutil.copyfile(initrd, work / "initrd.img")
    (work / "build-seconds").write_text(f"{time.monotonic() - started:.0f}\n")
    esp.unlink()
    pyz.unlink()
    shutil.rmtree(tree)
    shutil.rmtree(disk.parent, ignore_errors=True)
    work.rename(disk.parent)
    log(f"image built: {disk}")


@contextlib.contextmanager
def _timed(step: str, log):
    """Logs how long a build step took: where a slow build's time goes."""
    started = time.monotonic()
    yield
    log(f"step={step!r} seconds={time.monotonic() - started:.0f}")


def _debootstrap(board: Board, tree: Path, log) -> None:
    if board.debian_arch != "amd64":
        _ensure_binfmt(board)
    hook_dir = ROOTFS / "etc" / "initramfs-tools"
    # The initramfs settings must be in the tree when the customize hook
    # makes the initramfs, before _customize lays in the rest of rootfs/.
    setup_hook = (
        'mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/etc/initramfs-tools/hooks" && '
        f'cp {hook_dir}/conf.d/appliance "$1/etc/initramfs-tools/conf.d/" && '
        f'cp {hook_dir}/hooks/appliance "$1/etc/initramfs-tools/hooks/"'
    )
    command = [
        "mmdebstrap",
        "--mode=root",
        "--variant=essential",
        f"--arch={board.debian_arch}",
        "--format=directory",
        f"--include={','.join([*PACKAGES, board.kernel_package])}",
        *[f"--dpkgopt=path-exclude={pattern}" for pattern in DPKG_EXCLUDES],
        # Not unpacked either, so the kernel's postinst indexes what stays.
        *[f"--dpkgopt=path-exclude=/lib/modules/*/kernel/{path}/*" for path in UNUSED_MODULES],
        *[f"--dpkgopt=path-include={pattern}" for pattern in DPKG_INCLUDES],
        # Merged /usr set up by mmdebstrap's own hook rather than by the
        # usrmerge package, which pulls in perl (45 MB) to convert a tree
        # that was never split.
        f"--hook-dir={MERGED_USR_HOOKS}",
        f"--setup-hook={setup_hook}",
        f"--essential-hook={_hook_deferring(RUN_ONCE)}",
        f"--customize-hook={_hook_running_once(RUN_ONCE)}",
        "--quiet",
        SUITE,
        str(tree),
        *mirrors(),
    ]
    log(f"mmdebstrap {board.debian_arch} into {tree}")
    env = dict(os.environ, SOURCE_DATE_EPOCH=source_date_epoch())
    _run(command, env=env)


def _ensure_binfmt(board: Board) -> None:
    """Foreign packages' maintainer scripts run under qemu-user through binfmt_misc."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "status").exists():
        _run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(binfmt)])
    entry = binfmt / f"qemu-{board.pyz_arch}"
    if not entry.exists():
        _run(["update-binfmts", "--enable", f"qemu-{board.pyz_arch}"])


def _customize(board: Board, tree: Path, pyz: Path) -> None:
    shutil.copytree(ROOTFS, tree, symlinks=True, dirs_exist_ok=True)
    _unpack_service(tree, pyz, tree / "usr/lib/appliance/appliance.pyz")
    for mount_point in ("data", "efi"):
        (tree / mount_point).mkdir(exist_ok=True)
    _run(["systemctl", f"--root={tree}", "enable", "--quiet", *UNITS_ENABLED])
    _run(["systemctl", f"--root={tree}", "mask", "--quiet", *UNITS_MASKED])
    resolv = tree / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    resolv.symlink_to("../run/systemd/resolve/stub-resolv.conf")
    # Empty: systemd makes one in RAM at each boot; nothing per box is baked in.
    (tree / "etc/machine-id").write_text("")
    (tree / "var/lib/dbus/machine-id").unlink(missing_ok=True)
    _lock_root(tree)
    (tree / "etc/.resolv.conf.systemd-resolved.bak").unlink(missing_ok=True)
    for cache in ("var/cache/apt", "var/lib/apt/lists", "var/log", "var/cache/debconf"):
        for entry in (tree / cache).glob("*"):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def _unpack_service(tree: Path, pyz: Path, installed: Path) -> None:
    """The pyz's dependencies unpacked and compiled where its bootstrap looks
    (SHIV_ROOT, set by the units): a box neither unpacks nor compiles anything
    at boot, and the root stays read-only. shiv names the folder after the
    installed file and its build id (shiv/bootstrap cache_path)."""
    with zipfile.ZipFile(pyz) as archive:
        build_id = json.loads(archive.read("environment.json"))["build_id"]
        target = tree / UNPACKED_SERVICE.lstrip("/") / f"{installed.name}_{build_id}"
        members = [m for m in archive.namelist() if m.startswith("site-packages/")]
        archive.extractall(target, members)
        _install_bootstrap(pyz, archive, installed)
    # Debian's python3 on the build host is the image's (3.11): the same
    # bytecode. Hash-based .pyc files do not depend on file times.
    _run(["/usr/bin/python3", "-m", "compileall", "-q", "-j", "0",
          "--invalidation-mode", "unchecked-hash", "-s", str(tree), "-p", "/",
          str(target)])  # fmt: skip


def _install_bootstrap(pyz: Path, archive: zipfile.ZipFile, installed: Path) -> None:
    """The pyz without its site-packages: the bootstrap finds them unpacked
    under SHIV_ROOT and never reads its own copy, which would only add 17 MB
    to each root slot. Members keep their dates and compression: two builds
    give the same file."""
    with open(pyz, "rb") as source:
        shebang = source.readline()
    with open(installed, "wb") as target:
        target.write(shebang)
        with zipfile.ZipFile(target, "w") as bootstrap:
            for member in archive.infolist():
                if not member.filename.startswith("site-packages/"):
                    bootstrap.writestr(member, archive.read(member))
    installed.chmod(0o755)


def _lock_root(tree: Path) -> None:
    """No password works for root: '*' matches no password (shadow(5))."""
    shadow = tree / "etc/shadow"
    lines = shadow.read_text().splitlines()
    for index, line in enumerate(lines):
        fields = line.split(":")
        if fields[0] == "root":
            fields[1] = "*"
            lines[index] = ":".join(fields)
    shadow.write_text("\n".join(lines) + "\n")


def _kernel_files(tree: Path) -> tuple[Path, Path]:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise SystemExit(f"expected one kernel in the root, found {kernels}")
    release = kernels[0].name.removeprefix("vmlinuz-")
    return kernels[0], tree / "boot" / f"initrd.img-{release}"


def _squash(tree: Path, root: Path) -> None:
    epoch = source_date_epoch()
    _run(["mksquashfs", str(tree), str(root), "-noappend", "-quiet", "-no-progress",
          "-comp", "zstd", "-Xcompression-level", str(SQUASHFS_ZSTD_LEVEL), "-b", "256K",
          "-mkfs-time", epoch, "-all-time", epoch,
          "-e", "boot"])  # fmt: skip


def _make_esp(board: Board, tree: Path, esp: Path) -> None:
    esp.unlink(missing_ok=True)
    _run(["mkfs.fat", "-C", "-F", "32", "-n", "ESP", "-i", ESP_VOLUME_ID, "--invariant",
          str(esp), str(board.esp_size * 1024)])  # fmt: skip
    kernel, initrd = _kernel_files(tree)
    staging = esp.parent / "esp"
    shutil.rmtree(staging, ignore_errors=True)
    files = {
        f"EFI/BOOT/{board.efi_boot_file}": (tree / board.systemd_boot).read_bytes(),
        "loader/loader.conf": LOADER_CONF.encode(),
        # A new image's slot A is on trial like an update: if it never gets
        # healthy, the box falls back to B (the same root) by itself.
        f"loader/entries/slot-a+{TRIES}.conf": boot_entry(board, "a", 2).encode(),
        "loader/entries/slot-b.conf": boot_entry(board, "b", 1).encode(),
    }
    for slot in ("a", "b"):
        files[f"slot-{slot}/vmlinuz"] = kernel.read_bytes()
        files[f"slot-{slot}/initrd.img"] = initrd.read_bytes()
    epoch = int(source_date_epoch())
    for name, content in files.items():
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (epoch, epoch))
    for top in sorted(p.name for p in staging.iterdir()):
        _mtools(["mcopy", "-s", "-m", "-Q", str(staging / top), "::/"], esp)
    shutil.rmtree(staging)


def _mtools(command: list[str], image: Path, offset: int = 0) -> str:
    target = f"{image}@@{offset}" if offset else str(image)
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    return _run([command[0], "-i", target, *command[1:]], env=env)


def _assemble(board: Board, esp: Path, root: Path, disk: Path) -> None:
    if root.stat().st_size > board.root_size * MIB:
        raise SystemExit(f"root file system {root.stat().st_size} bytes > slot size")
    with open(disk, "wb") as f:
        f.truncate(board.disk_size * MIB)
    lines = [
        "label: gpt",
        f"label-id: {_uuid(board, 'disk')}",
        "unit: sectors",
        f"first-lba: {FIRST_LBA}",
    ]
    for name, type_guid, size in partitions(board):
        lines.append(
            f"size={size * MIB // SECTOR}, type={type_guid}, uuid={_uuid(board, name)}, "
            f'name="{name}"'
        )
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(disk)],
         stdin="\n".join(lines) + "\n")  # fmt: skip
    write_into(disk, partition_offset(board, "esp"), esp)
    for slot in ("root-a", "root-b"):
        write_into(disk, partition_offset(board, slot), root)


def write_into(disk: Path, offset: int, source: Path, chunk: int = MIB) -> None:
    """Copy source into disk at offset, leaving holes where source is zeros."""
    with open(source, "rb") as src, open(disk, "r+b") as dst:
        position = offset
        while block := src.read(chunk):
            if block.count(0) != len(block):
                dst.seek(position)
                dst.write(block)
            position += len(block)


def _uuid(board: Board, name: str) -> str:
    return str(uuid.uuid5(_UUID_NAMESPACE, f"{board.name}/{name}"))


# The ESP of an image file, read and changed with mtools (tests, updates by hand).


def esp_list(board: Board, disk: Path, directory: str = "loader/entries") -> list[str]:
    listing = _mtools(["mdir", "-b", f"::/{directory}"], disk, partition_offset(board, "esp"))
    return sorted(line.rsplit("/", 1)[-1] for line in listing.split() if line.strip())


def esp_read(board: Board, disk: Path, name: str) -> str:
    return _mtools(["mtype", f"::/{name}"], disk, partition_offset(board, "esp"))


def esp_write(board: Board, disk: Path, name: str, text: str) -> None:
    offset = partition_offset(board, "esp")
    with _scratch_file(disk, text) as source:
        _mtools(["mcopy", "-o", "-Q", str(source), f"::/{name}"], disk, offset)


def esp_remove(board: Board, disk: Path, name: str) -> None:
    _mtools(["mdel", f"::/{name}"], disk, partition_offset(board, "esp"))


class _scratch_file:
    def __init__(self, beside: Path, text: str):
        self.path = beside.with_name(beside.name + ".entry")
        self.text = text

    def __enter__(self) -> Path:
        self.path.write_text(self.text)
        return self.path

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def _run(command: list[str], env: dict | None = None, stdin: str | None = None) -> str:
    result = subprocess.run(command, capture_output=True, text=True, env=env, input=stdin)
    if result.returncode != 0:
        sys.stderr.write(result.stdout[-4000:] + result.stderr[-4000:])
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}")
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--board", default="x86_64", choices=["x86_64", "arm64"])
    parser.add_argument("--out", type=Path, default=REPO / "dist")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("building an image needs root (mmdebstrap --mode=root)")
    board = load_board(args.board)
    disk = build(board, args.out)
    published = args.out / f"appliance-{dist.version()}-{board.name}.img"
    published.unlink(missing_ok=True)
    os.link(disk, published)
    print(published)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
