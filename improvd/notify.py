"""systemd's sd_notify protocol, spoken directly over $NOTIFY_SOCKET (no libsystemd needed).

One datagram per notification, newline-separated ``KEY=value`` fields (sd_notify(3)). The
socket is a path (``/run/systemd/notify``, or ``$XDG_RUNTIME_DIR/systemd/notify`` under a
user manager) or, starting with ``@``, a name in the abstract namespace. Without
$NOTIFY_SOCKET every call is a no-op, so the daemon runs the same by hand and under systemd.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

MAX_STATUS = 1024  # systemctl shows one line; keep the datagram small


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings, or None when systemd wants none from this process.

    Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises; WATCHDOG_PID, when set, must
    be ours (a child that inherited the environment must not ping for its parent).
    """
    usec = env.get("WATCHDOG_USEC", "").strip()
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID", "").strip()
    if owner and owner != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 2e6


def clean(text: str) -> str:
    """A field value on one line: a newline would start a new ``KEY=`` field."""
    return " ".join(str(text).split())[:MAX_STATUS]


class Notifier:
    """READY/RELOADING/STOPPING/STATUS/WATCHDOG datagrams to systemd; silent when not run by it."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace
            address = "\0" + address[1:]
        elif address and not address.startswith("/"):
            log.warning("NOTIFY_SOCKET %r is neither a path nor @abstract; not notifying systemd", address)
            address = ""
        self.address = address or None
        self.socket: socket.socket | None = None
        if self.address:
            self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_interval = watchdog_interval(env) if self.address else None
        self.failures = 0
        self.last_status: str | None = None

    @property
    def active(self) -> bool:
        return self.socket is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram; True when it was handed to the socket. Never raises: systemd
        going away must not take the music with it."""
        if self.socket is None:
            return False
        payload = "\n".join(f"{key.upper()}={clean(value)}" for key, value in fields.items())
        try:
            self.socket.sendto(payload.encode("utf-8", "replace"), self.address)
        except OSError as err:
            self.failures += 1
            if self.failures == 1:  # once, not at every watchdog ping
                log.warning("sd_notify to %s failed: %s", self.address.replace("\0", "@"), err)
            return False
        if "status" in fields:
            self.last_status = clean(fields["status"])
        return True

    def ready(self, status: str) -> None:
        """Start-up (or a reload) is complete: model loaded, ports open."""
        self.send(ready=1, status=status)

    def reloading(self) -> None:
        # MONOTONIC_USEC is what Type=notify-reload (systemd >= 253) asks for; older ones ignore it.
        self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000,
                  status="reloading")

    def stopping(self, status: str = "stopping") -> None:
        self.send(stopping=1, status=status)

    def watchdog(self) -> None:
        self.send(watchdog=1)

    def status(self, text: str) -> None:
        """STATUS= for `systemctl status`; a text identical to the last one is not resent."""
        if clean(text) != self.last_status:
            self.send(status=text)

    def close(self) -> None:
        if self.socket is not None:
            self.socket.close()
            self.socket = None
