"""The one JACK client improvd opens, through JACK-Client and the system's libjack: its MIDI
ports' process callback, the graph (ports, connections), the server's state, its transport.

One client, not one per port: libjack keeps a single table of activation semaphores per
process, indexed by client number and updated by each client's notification thread. With
two or more clients in a process, one client's late notification can leave the slot of a
number that JACK has just reused mapped to the semaphore of the client that had it before;
a client of ours that gets that number waits for ever on a semaphore jackd never signals
(docs/jack.md). So improvd opens exactly one client, never a short-lived second one (not
even to list ports), and closes it fully before it makes a new one after a server loss.

Callbacks other than the process callback run in JACK's notification thread, where no
JACK call is allowed: they note what happened and wake whoever waits on ``changed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from improvd.errors import PortError

try:
    import jack
except OSError as err:  # JACK-Client loads libjack when imported
    raise PortError(f"JACK-Client cannot load libjack ({err}); install JACK (jackd2 or pipewire-jack)") from err

log = logging.getLogger(__name__)
# libjack's own messages ("Cannot connect to server socket", ...) go to the log, not stderr.
jack.set_error_function(lambda message: log.debug("libjack: %s", message))
jack.set_info_function(lambda message: log.debug("libjack: %s", message))

FRAME_MASK = 0xFFFFFFFF  # JACK's frame counter is 32 bits and wraps (every 24.9 h at 48 kHz)
HALF_RANGE = 0x80000000
PAIRED_S = 50e-6  # a frame time and a monotonic time read this close together belong together
PAIR_TRIES = 5


@dataclass(frozen=True)
class Transport:
    """JACK transport, as the timebase master (a DAW) publishes it: bar and beat count from 1,
    in beats of 1/``beat_type`` notes, ``bpm`` of them a minute."""

    rolling: bool
    bpm: float
    bar: int
    beat: int
    tick: int
    ticks_per_beat: float
    beats_per_bar: float
    beat_type: float
    frame: int  # the transport's frame (the song's position), not JACK's frame time
    at: float  # time.monotonic() of this bar, beat and tick: its cycle's start, less any bbt_offset


class JackClient:
    """A JACK client with no port of its own: MIDI ports register on it and run in its
    process callback (``cycle(frames)`` each, in the order they were added)."""

    def __init__(self, name: str) -> None:
        self.changed = threading.Event()  # set by every notification: something may need a look
        self.disconnected: dict[str, float] = {}  # our port -> when it last lost a connection
        self.ours: set[str] = set()  # full names of our ports
        self.shutdown_at: float | None = None
        self.shutdown_reason = ""
        self.xruns = 0  # cycles JACK reported overrun (by any client), since this client opened
        self.cycles = 0  # process callbacks run: a client JACK never runs stays at 0
        self.failures = 0  # process callbacks that raised (a bug: counted, never raised into JACK)
        self.processors: tuple = ()
        try:
            self.client = jack.Client(name, no_start_server=True)
        except jack.JackError as err:
            raise PortError(f"cannot open a JACK client: {err}") from err
        self.name = self.client.name  # JACK appends "-01" when the name is taken
        self.rate = self.client.samplerate
        self.client.set_process_callback(self._process)
        self.client.set_port_registration_callback(self._registered, only_available=False)
        self.client.set_port_connect_callback(self._connected, only_available=False)
        self.client.set_shutdown_callback(self._shutdown)
        self.client.set_xrun_callback(self._xrun)
        try:
            self.client.activate()
        except jack.JackError as err:
            self.client.close()
            raise PortError(f"cannot activate the JACK client {name!r}: {err}") from err

    # ---- JACK's process thread: as if in a signal handler --------------------------------------

    def _process(self, frames: int) -> None:
        """No allocation beyond what Python does by itself, no lock, no logging, never raises."""
        self.cycles += 1
        try:
            for port in self.processors:
                port.cycle(frames)
        except Exception:  # noqa: BLE001 - raising here would make JACK drop the client
            self.failures += 1

    # ---- JACK's notification thread: note and wake, nothing else -------------------------------

    def _registered(self, port: jack.Port | None, register: bool) -> None:
        self.changed.set()

    def _connected(self, a: jack.Port | None, b: jack.Port | None, connect: bool) -> None:
        if not connect:
            now = time.monotonic()
            for port in (a, b):
                if port is not None and port.name in self.ours:
                    self.disconnected[port.name] = now
        self.changed.set()

    def _xrun(self, delay_usecs: float) -> None:
        self.xruns += 1

    def _shutdown(self, status: jack.Status, reason: str) -> None:
        self.shutdown_at = time.monotonic()
        self.shutdown_reason = reason
        self.changed.set()

    # ---- the daemon's threads ----------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.shutdown_at is None

    @property
    def period_s(self) -> float:
        return self.client.blocksize / self.rate

    def add(self, port: object) -> None:
        """Run ``port.cycle(frames)`` in every process callback from now on."""
        self.processors = (*self.processors, port)

    def remove(self, port: object) -> None:
        self.processors = tuple(p for p in self.processors if p is not port)

    def wait_cycles(self, count: int, timeout: float = 0.2) -> None:
        """Until ``count`` more process callbacks have run (or ``timeout`` has passed)."""
        target, deadline = self.cycles + count, time.monotonic() + timeout
        while self.cycles < target and time.monotonic() < deadline:
            time.sleep(0.001)

    def _now(self) -> tuple[int, float]:
        """JACK's frame time and time.monotonic() read together: a thread preempted between
        the two reads (a busy machine) would shift every time converted by the gap, so a
        pair read further apart than PAIRED_S is read again."""
        for _ in range(PAIR_TRIES):
            before = time.monotonic()
            frame = self.client.frame_time
            after = time.monotonic()
            if after - before <= PAIRED_S:
                break
        return frame, (before + after) / 2

    def frame_at(self, when: float) -> int:
        """The JACK frame time of ``when`` (time.monotonic()); JACK's clock is the same one."""
        frame, now = self._now()
        return (frame + round((when - now) * self.rate)) & FRAME_MASK

    def time_of(self, frame: int) -> float:
        """The time.monotonic() of a recent JACK frame time (a cycle's frames run from its
        start, so the last of them is up to one period ahead of the clock)."""
        current, now = self._now()
        age = ((current - frame + HALF_RANGE) & FRAME_MASK) - HALF_RANGE
        return now - age / self.rate

    def ports(self, pattern: str = "", **flags: bool) -> list[str]:
        """MIDI port names (a regular expression and is_input/is_output narrow them)."""
        return [p.name for p in self.client.get_ports(pattern, is_midi=True, **flags)]

    def connected(self, port: str, peer: str) -> bool:
        """Whether ``port`` and ``peer`` are connected now (False when either is gone)."""
        try:
            return peer in {p.name for p in self.client.get_all_connections(port)}
        except (jack.JackError, KeyError):
            return False

    def connections(self, port: str) -> list[str]:
        try:
            return [p.name for p in self.client.get_all_connections(port)]
        except (jack.JackError, KeyError):
            return []

    def connect(self, source: str, destination: str) -> None:
        if self.connected(source, destination):
            return
        try:
            self.client.connect(source, destination)
        except jack.JackError as err:
            raise PortError(f"cannot connect {source!r} to {destination!r}: {err}") from err

    def register(self, register: Callable[[str], jack.OwnMidiPort], name: str) -> jack.OwnMidiPort:
        try:
            port = register(name)
        except jack.JackError as err:
            raise PortError(f"cannot register the JACK port {name!r}: {err}") from err
        self.ours.add(port.name)
        return port

    def transport(self) -> Transport | None:
        """Tempo, bar and beat while a timebase master publishes them; else None. The position
        is the one at the start of the current cycle, so its time is that cycle's start (read
        again if a cycle began during the query), not the time of the query: a query up to a
        period later, or later still on a busy machine, would put every beat that much late.
        A master may publish the bar, beat and tick of a frame before the cycle (bbt_offset)."""
        if not self.alive:
            return None
        for _ in range(PAIR_TRIES):
            cycle = self.client.last_frame_time
            state, position = self.client.transport_query()
            if self.client.last_frame_time == cycle:
                break
        if "beats_per_minute" not in position:
            return None
        return Transport(rolling=state == jack.ROLLING, bpm=position["beats_per_minute"], bar=position["bar"],
                         beat=position["beat"], tick=position["tick"], ticks_per_beat=position["ticks_per_beat"],
                         beats_per_bar=position["beats_per_bar"], beat_type=position["beat_type"],
                         frame=position["frame"], at=self.time_of((cycle - position.get("bbt_offset", 0)) & FRAME_MASK))

    def close(self) -> None:
        """Leave the graph. After a server shutdown the client is closed too (nothing to tell
        the server): libjack then drops its per-process tables, and a new client starts clean."""
        self.processors = ()
        if self.alive:
            self.client.deactivate(ignore_errors=True)
        self.client.close(ignore_errors=True)
