"""The systemd notify protocol over the $NOTIFY_SOCKET datagram socket (no C library needed)."""

from __future__ import annotations

import logging
import os
import socket

import trio

log = logging.getLogger("tachyond.systemd")


class Notifier:
    """Sends ``READY=1``, ``STATUS=…``, ``WATCHDOG=1`` and ``STOPPING=1``; a no-op without $NOTIFY_SOCKET."""

    def __init__(self, address: str | None = None):
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self.address = None
        if address:
            # An address starting with "@" names the abstract namespace.
            self.address = "\0" + address[1:] if address.startswith("@") else address

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *fields: str) -> None:
        if self.address is None:
            return
        msg = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto(msg, self.address)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address.lstrip("\0"), exc.strerror)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self, status: str = "stopping") -> None:
        self.notify("STOPPING=1", f"STATUS={status}")


def watchdog_interval_s() -> float | None:
    """Half of $WATCHDOG_USEC in seconds, when set for this process (WATCHDOG_PID absent or ours)."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        return None


async def serve_watchdog(
    notifier: Notifier, interval_s: float, healthy, *, task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Send ``WATCHDOG=1`` every ``interval_s`` while ``healthy()`` says the event loop and services answer."""
    task_status.started()
    while True:
        if healthy():
            notifier.notify("WATCHDOG=1")
        await trio.sleep(interval_s)
