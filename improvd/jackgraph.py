"""The JACK graph as JACK itself reports it, through JACK-Client: which ports exist, who is
connected to whom, and whether the server is still there.

rtmidi carries the MIDI but tells nothing about connections: a peer that dies and comes
back between two name checks looks as if it never left, while JACK has dropped the
connection with it. One extra JACK client, with no ports and no process callback (JACK
never wakes it in the audio cycle), watches instead: JACK calls it back when a port
appears or goes, when a connection is made or broken, and when the server shuts down. The
callbacks run in JACK's notification thread, where JACK calls are not allowed, so they only
note the time and wake whoever waits on ``changed``; the daemon's loop does the rest.
"""

from __future__ import annotations

import logging
import threading
import time

from improvd.errors import PortError

try:
    import jack
except OSError as err:  # JACK-Client loads libjack when imported
    raise PortError(f"JACK-Client cannot load libjack ({err}); install JACK (jackd2 or pipewire-jack)") from err

log = logging.getLogger(__name__)

WATCHER_NAME = "improvd watch"


class JackGraph:
    """A port-less JACK client that watches the graph and makes improvd's connections."""

    def __init__(self, name: str = WATCHER_NAME) -> None:
        self.changed = threading.Event()  # set by every callback: something may need a look
        self.watched: set[str] = set()  # our own ports
        self.disconnected: dict[str, float] = {}  # our port -> when it last lost a connection
        self.shutdown_at: float | None = None
        self.shutdown_reason = ""
        self.xruns = 0  # cycles in which some client did not finish in time, as JACK reports them
        try:
            self.client = jack.Client(name, no_start_server=True)
        except jack.JackError as err:
            raise PortError(f"cannot open a JACK client: {err}") from err
        self.client.set_port_registration_callback(self._registered)
        self.client.set_port_connect_callback(self._connected)
        self.client.set_shutdown_callback(self._shutdown)
        self.client.set_xrun_callback(self._xrun)
        self.client.activate()  # callbacks reach active clients only

    # ---- JACK's notification thread: note and wake, nothing else ----------------------------

    def _registered(self, port: jack.Port, register: bool) -> None:
        self.changed.set()

    def _connected(self, a: jack.Port, b: jack.Port, connect: bool) -> None:
        if not connect:
            now = time.monotonic()
            for name in (a.name, b.name):
                if name in self.watched:
                    self.disconnected[name] = now
        self.changed.set()

    def _xrun(self, delay_usecs: float) -> None:
        self.xruns += 1

    def _shutdown(self, status: jack.Status, reason: str) -> None:
        self.shutdown_at = time.monotonic()
        self.shutdown_reason = reason
        self.changed.set()

    # ---- the daemon's thread ------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.shutdown_at is None

    def ports(self, pattern: str = "") -> list[str]:
        """MIDI port names (a regular expression narrows them)."""
        return [p.name for p in self.client.get_ports(pattern, is_midi=True)]

    def connected(self, port: str, peer: str) -> bool:
        """Whether ``port`` and ``peer`` are connected now (False when either is gone)."""
        try:
            return peer in {p.name for p in self.client.get_all_connections(port)}
        except (jack.JackError, KeyError):
            return False

    def connect(self, source: str, destination: str) -> None:
        if self.connected(source, destination):
            return
        try:
            self.client.connect(source, destination)
        except jack.JackError as err:
            raise PortError(f"cannot connect {source!r} to {destination!r}: {err}") from err

    def close(self) -> None:
        """Leave the graph; after a server shutdown there is nothing to leave."""
        if self.alive:
            try:
                self.client.deactivate()
            except jack.JackError as err:
                log.debug("deactivating the JACK watcher: %s", err)
        try:
            self.client.close()
        except jack.JackError as err:
            log.debug("closing the JACK watcher: %s", err)
