"""Boot an image in qemu: software emulation (TCG), UEFI firmware, a serial
console written to a file, and user-mode networking that forwards guest
ports to loopback. Used by tests/image and bench/image, and by hand:

    python image/qemu.py --board x86_64 dist/appliance-0.1.0-x86_64.img

(the serial console on the terminal; Ctrl-A X quits).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # noqa: E402 - the sibling script

# Seconds a clean power-off (ACPI power button, systemd shuts down) may take
# under software emulation on a busy machine.
POWERDOWN_TIMEOUT = 90.0
POWER_BUTTON_REPEAT = 30.0  # seconds between presses of the button
POLL_INTERVAL = 0.5


class VmError(RuntimeError):
    pass


class Vm:
    """One qemu process; its console log, firmware variables and monitor
    socket live in workdir."""

    def __init__(self, board: build.Board, disk: Path, workdir: Path, forwards: dict[int, int]):
        self.board = board
        self.disk = disk
        self.workdir = workdir
        self.forwards = forwards  # guest TCP port -> loopback port
        self.console = workdir / "console.log"
        self.monitor = workdir / "monitor.sock"
        self.process: subprocess.Popen | None = None

    def command(self, serial: str) -> list[str]:
        qemu = self.board.qemu
        firmware_vars = self.workdir / "efivars.fd"
        if not firmware_vars.exists():
            shutil.copyfile(qemu["firmware_vars"], firmware_vars)
        hostfwd = "".join(
            f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for guest, host in self.forwards.items()
        )
        disk = [arg.format(disk=self.disk) for arg in qemu["disk"]]
        return [
            qemu["binary"],
            *qemu["machine"],
            "-accel", "tcg,thread=multi",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={qemu['firmware_code']}",
            "-drive", f"if=pflash,format=raw,unit=1,file={firmware_vars}",
            *disk,
            "-netdev", f"user,id=net0{hostfwd}",
            *qemu["network"],
            "-display", "none",
            "-serial", serial,
        ]  # fmt: skip

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.monitor.unlink(missing_ok=True)
        command = self.command(f"file:{self.console}")
        command += ["-monitor", f"unix:{self.monitor},server,nowait"]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=open(self.workdir / "qemu.log", "ab"),  # noqa: SIM115 - the child keeps it
            stderr=subprocess.STDOUT,
        )

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> list[re.Match]:
        """The first count matches of pattern on the console, waiting up to timeout."""
        expression = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            matches = list(expression.finditer(self.console_text()))
            if len(matches) >= count:
                return matches[:count]
            if self.process is None or self.process.poll() is not None:
                raise VmError(f"qemu exited while waiting for {pattern!r}")
            if time.monotonic() > deadline:
                raise VmError(f"no {pattern!r} x{count} on the console within {timeout:.0f} s")
            time.sleep(POLL_INTERVAL)

    def wait_for_banner(self, guest_port: int, timeout: float) -> bytes:
        """The SMTP greeting through the forwarded port, once the guest sends one."""
        deadline = time.monotonic() + timeout
        last_error = "not tried"
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise VmError("qemu exited while waiting for the SMTP banner")
            try:
                with socket.create_connection(("127.0.0.1", self.forwards[guest_port]), 5) as s:
                    s.settimeout(10)
                    greeting = s.recv(512)
                if greeting.startswith(b"220"):
                    return greeting
                last_error = f"greeting {greeting!r}"
            except OSError as error:
                last_error = str(error)
            time.sleep(1)
        raise VmError(f"no SMTP banner within {timeout:.0f} s ({last_error})")

    def powerdown(self, timeout: float = POWERDOWN_TIMEOUT) -> bool:
        """Press the power button; True if the guest shut down by itself in time.

        The button is pressed again every POWER_BUTTON_REPEAT seconds: a press
        that comes while the guest is still starting the service that handles
        it (logind) is lost, as on a real box.
        """
        if self.process is None:
            return True
        deadline = time.monotonic() + timeout
        while True:
            self._press_power_button()
            wait = min(POWER_BUTTON_REPEAT, deadline - time.monotonic())
            try:
                self.process.wait(timeout=max(wait, 0))
                self.process = None
                return True
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    self.kill()
                    return False

    def _press_power_button(self) -> None:
        try:
            with socket.socket(socket.AF_UNIX) as monitor:
                monitor.settimeout(5)
                monitor.connect(str(self.monitor))
                monitor.sendall(b"system_powerdown\n")
        except OSError:
            pass

    def kill(self) -> None:
        """Pull the plug: the guest gets no chance to write anything."""
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description="boot an image on this terminal")
    parser.add_argument("--board", default="x86_64")
    parser.add_argument("disk", type=Path)
    parser.add_argument("--forward", action="append", default=[], metavar="GUEST:HOST")
    args = parser.parse_args()
    forwards = {int(g): int(h) for g, h in (f.split(":") for f in args.forward)}
    board = build.load_board(args.board)
    vm = Vm(board, args.disk, args.disk.parent / f"{args.disk.name}.vm", forwards)
    vm.workdir.mkdir(exist_ok=True)
    os.execvp(vm.board.qemu["binary"], vm.command("mon:stdio"))


if __name__ == "__main__":
    raise SystemExit(main())
