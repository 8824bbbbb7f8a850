"""The one-time setup code: who may claim a box that is not set up yet.

The box prints the code on its console (and `appliance setup-code` prints
it); whoever types it into the setup page proves they are in front of the
box, not merely on its network. The code lives in DATA/setup-code, readable
only by the service, until setup completes; then the file is removed and the
store remembers that setup is done, so the code never works again.

No aiohttp here: the CLI imports this too.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

FILE_NAME = "setup-code"
# Without 0/O and 1/I/L, so a code read off a screen is typed right.
_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
_GROUPS, _GROUP_LENGTH = 3, 4  # 12 symbols: about 59 bits
SETUP_DONE = "setup_done"  # store meta: when setup completed (seconds since the epoch)


def path(data_dir: Path) -> Path:
    return data_dir / FILE_NAME


def read(data_dir: Path) -> str | None:
    try:
        return path(data_dir).read_text().strip() or None
    except FileNotFoundError:
        return None


def ensure(data_dir: Path) -> str:
    """The current code, made if there is none."""
    return read(data_dir) or renew(data_dir)


def renew(data_dir: Path) -> str:
    """A new random code replacing any old one."""
    symbols = "".join(secrets.choice(_ALPHABET) for _ in range(_GROUPS * _GROUP_LENGTH))
    code = "-".join(symbols[i : i + _GROUP_LENGTH] for i in range(0, len(symbols), _GROUP_LENGTH))
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = path(data_dir).with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(code + "\n")
    os.replace(temporary, path(data_dir))
    return code


def matches(data_dir: Path, typed: str) -> bool:
    """Whether typed is the current code; case, spaces and dashes do not matter."""
    code = read(data_dir)
    if code is None:
        return False
    return hmac.compare_digest(_canonical(typed).encode(), _canonical(code).encode())


def remove(data_dir: Path) -> None:
    path(data_dir).unlink(missing_ok=True)


def _canonical(code: str) -> str:
    return "".join(c for c in code.upper() if c.isalnum())
