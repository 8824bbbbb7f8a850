"""`python3 -m appliance.health`: does this box receive mail?

The image's boot counting asks this before it marks a newly installed root
slot good: a slot is good when the service's store opens and its SMTP
listener answers with a 220 greeting (RFC 5321 4.2), not merely when the
kernel started. The check retries until a deadline, since the service may
still be starting (on the first boot it also unpacks itself and makes its
TLS certificate). Exit status 0: healthy; 1: not healthy by the deadline.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

from appliance import config
from appliance.store import open_store

# The whole check. A first boot on a slow SD card unpacks the service and
# makes an RSA key before it listens; a box that is not up by then is broken.
DEFAULT_DEADLINE = 180.0
# One try at connecting and reading the greeting.
ATTEMPT_TIMEOUT = 5.0
RETRY_PAUSE = 1.0
# A listener on every address is reached through loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def store_opens(data_dir: Path, settings: config.Settings) -> None:
    store = open_store(data_dir, settings.store)
    try:
        store.read(lambda txn: txn.meta("setup_done"))
    finally:
        store.close()


def smtp_greets(host: str, port: int) -> str:
    """The greeting line, if it is a 220; raises OSError otherwise."""
    with socket.create_connection((host, port), timeout=ATTEMPT_TIMEOUT) as connection:
        greeting = connection.makefile("rb").readline(512).decode("ascii", "replace").strip()
    if not greeting.startswith("220"):
        raise OSError(f"greeting is not 220: {greeting!r}")
    return greeting


def check(data_dir: Path, deadline: float) -> tuple[bool, str]:
    settings = config.load(data_dir)
    if "smtp" not in settings.listen:
        return False, "no smtp listener configured"
    host, port = settings.listen["smtp"]
    host = _WILDCARDS.get(host, host)
    give_up = time.monotonic() + deadline
    reason = "not tried"
    while True:
        try:
            store_opens(data_dir, settings)
            return True, f"store opens, smtp {host}:{port} says {smtp_greets(host, port)}"
        except Exception as error:  # noqa: BLE001 - any failure means: not healthy yet
            reason = f"{type(error).__name__}: {error}"
        if time.monotonic() + RETRY_PAUSE > give_up:
            return False, reason
        time.sleep(RETRY_PAUSE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="appliance.health", description=__doc__.splitlines()[0])
    parser.add_argument("--data", metavar="DIR", help="data directory (as for appliance)")
    parser.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE, metavar="SECONDS")
    args = parser.parse_args(argv)
    healthy, detail = check(config.data_dir_from(args.data), args.deadline)
    print(f"health {'good' if healthy else 'bad'}: {detail}", flush=True)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
