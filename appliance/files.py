"""Small files the service keeps on the data partition (settings, keys,
certificates, caches), replaced whole so that a crash or a power cut leaves
the old content or the new, never a part of either."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def replace_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Put data at path in one rename, with the file and the rename on disk.

    The new file is made beside the old one (a rename is atomic only within
    one file system) with a unique name, so two writers never share it; it
    gets mode before any byte is written, so a key is never readable by
    others even for a moment.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make the names in directory (a rename, a new file) survive a power cut."""
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
