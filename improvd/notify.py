"""systemd's sd_notify protocol, spoken directly over $NOTIFY_SOCKET (no libsystemd needed)."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """READY/STOPPING/STATUS/WATCHDOG datagrams to systemd; silent when not run by it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        self.address = address or None
        self.socket: socket.socket | None = None
        if self.address:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        # Ping at half the deadline, as sd_watchdog_enabled(3) advises.
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and mine else None

    def send(self, **fields: str | int) -> None:
        if self.socket is None:
            return
        payload = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            self.socket.sendto(payload.encode(), self.address)
        except OSError as err:
            log.debug("sd_notify %s failed: %s", payload, err)

    def ready(self, status: str) -> None:
        self.send(ready=1, status=status)

    def stopping(self) -> None:
        self.send(stopping=1, status="stopping")

    def reloading(self) -> None:
        self.send(reloading=1, status="reloading")

    def watchdog(self) -> None:
        self.send(watchdog=1)

    def status(self, text: str) -> None:
        self.send(status=text)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
