"""MIDI ports: one interface, two backends.

- JACK (improvd.jackports): one JACK client through JACK-Client and the system's libjack,
  its ports served from a realtime process callback; events at their frame, transport.
- ALSA, and CoreMIDI elsewhere (improvd.rtmidiports): python-rtmidi.

A port is virtual (others connect to it; ``wanted`` is its name) or connected to another
program's port found by case-insensitive substring of its name (``wanted`` is that
substring, ``peer`` the full name found). Either way ``name`` is our own port's name.
Ports of this process are left out of every listing, so that a substring can never
connect improvd to itself. Each backend overrides open, send (outputs), receive (inputs),
close and follow: how a peer that goes and comes back is noticed and joined again.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable

import mido

from improvd.errors import PortError

log = logging.getLogger(__name__)

API_CHOICES = ("auto", "alsa", "jack", "coremidi")
RECEIVE_WAIT_S = 0.1  # how long the reader thread waits for input before looking at its flag


def find_port(wanted: str, names: list[str], direction: str) -> str:
    """The existing port whose name contains ``wanted`` (any case); exact matches first."""
    for name in names:
        if name.lower() == wanted.lower():
            return name
    matches = [name for name in names if wanted.lower() in name.lower()]
    if matches:
        if len(matches) > 1:
            log.info("%s port %r matches %s; using %r", direction, wanted, matches, matches[0])
        return matches[0]
    listed = ", ".join(repr(n) for n in names) if names else "none"
    raise PortError(f"no MIDI {direction} port matches {wanted!r}; {direction} ports: {listed}")


class Port(abc.ABC):
    """One MIDI port of ours and the peer it follows."""

    direction = ""

    def __init__(self, wanted: str, virtual: bool, name: str) -> None:
        self.wanted = wanted  # a virtual port's name, or a substring of the peer's
        self.virtual = virtual
        self.name = name  # our port's own name
        self.peer: str | None = None  # the peer's full name, while we are connected to it
        self.away_since: float | None = None  # since when the peer has been away

    @abc.abstractmethod
    def open(self, wait: bool = False) -> None:
        """Open the port and connect it to its peer. With ``wait``, a peer that is not
        there yet is waited for (``follow`` joins it) instead of being an error."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close the port; safe to call twice, and after its server went away."""

    @abc.abstractmethod
    def follow(self) -> tuple[bool, bool]:
        """(lost, back): the peer went away since the last call; it is connected again.
        Both at once when it went and came back between two calls."""

    @abc.abstractmethod
    def candidates(self) -> list[str]:
        """The other programs' ports this one could connect to now."""

    def _lost(self, since: float) -> None:
        self.peer, self.away_since = None, since
        log.warning("%s port %r went away; waiting for it to come back", self.direction, self.wanted)

    def _back(self) -> bool:
        away = time.monotonic() - (self.away_since or time.monotonic())
        self.away_since = None
        log.warning("%s port %r is back after %.2f s away; reconnected", self.direction, self.peer, away)
        return True


class InputPort(Port):
    """An input: ``receive`` returns what came in; a reader thread of its own hands every
    message on to ``callback(message, arrival)`` (arrival on time.monotonic())."""

    direction = "input"

    def __init__(self, wanted: str, virtual: bool, name: str,
                 callback: Callable[[mido.Message, float], None]) -> None:
        super().__init__(wanted, virtual, name)
        self.callback = callback
        self.ignored = 0  # deliveries that were no MIDI message (garbage, running status)
        self._reading = False
        self._reader: threading.Thread | None = None

    @abc.abstractmethod
    def receive(self, timeout: float) -> list[tuple[float, bytes]]:
        """(arrival, MIDI bytes) of what came in since the last call, oldest first; waits
        up to ``timeout`` when nothing has."""

    def start_reading(self, setup: Callable[[], None] | None = None) -> None:
        """Start the reader thread; ``setup`` runs in it first (its scheduling priority)."""
        if self._reader is None:
            self._reading = True
            self._reader = threading.Thread(target=self._read, args=(setup,), name=f"improvd-{self.direction}",
                                            daemon=True)
            self._reader.start()

    def _read(self, setup: Callable[[], None] | None) -> None:
        if setup is not None:
            setup()
        while self._reading:
            for arrival, data in self.receive(RECEIVE_WAIT_S):
                try:
                    message = mido.Message.from_bytes(data)
                except ValueError:  # garbage, running status, truncated data
                    self.ignored += 1
                    continue
                self.callback(message, arrival)

    def close(self) -> None:
        """Stop the reader thread (what it was handing on is finished first)."""
        reader, self._reader = self._reader, None
        self._reading = False
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=2 * RECEIVE_WAIT_S + 1)


class OutputPort(Port):
    """An output: ``send(message, at)`` plays ``message`` at ``at`` (time.monotonic(); None:
    now). A backend that places messages at their time wants them ``lead_s`` early."""

    direction = "output"
    lead_s = 0.0

    @abc.abstractmethod
    def send(self, message: mido.Message, at: float | None = None) -> None:
        """PortError while the port is closed or its peer away (the caller counts it)."""

    @property
    @abc.abstractmethod
    def connected(self) -> bool:
        """Whether what is sent reaches the peer (a virtual port: whoever connected to it)."""


class Backend(abc.ABC):
    """A MIDI API that has started: it makes ports and lists other programs' ports."""

    api = ""
    xruns = 0  # overrun cycles its server reported (JACK only)
    realtime = False  # whether its server runs our callback in a realtime thread (JACK only)

    @abc.abstractmethod
    def input(self, wanted: str, virtual: bool, name: str,
              callback: Callable[[mido.Message, float], None]) -> InputPort: ...

    @abc.abstractmethod
    def output(self, wanted: str, virtual: bool, name: str) -> OutputPort: ...

    @abc.abstractmethod
    def listing(self) -> tuple[list[str], list[str]]:
        """(input names, output names) of other programs' ports that exist now."""

    def changed(self) -> bool:
        """Whether the server reported a change worth a look since ``checked``."""
        return False

    def checked(self) -> None:  # noqa: B027 - only a server that reports changes needs it
        """The change reported has been looked at."""

    def server_lost(self) -> tuple[float, str] | None:
        """(when, the server's reason) once its server has gone away, else None."""
        return None

    def stuck(self) -> bool:
        """Whether the server has not run our client for a while since it opened."""
        return False

    def transport(self) -> object | None:
        """The server's transport (tempo, bar, beat) when it has one."""
        return None

    @abc.abstractmethod
    def close(self) -> None: ...


def backend(api: str, client_name: str) -> Backend:
    """The MIDI API to use: the one named, or with "auto" the first that starts (on Linux
    ALSA, then JACK). PortError with the reason when none does."""
    from improvd import rtmidiports  # python-rtmidi: ALSA, CoreMIDI

    if api not in API_CHOICES:
        raise PortError(f"ports.api: unknown MIDI API {api!r} (one of {', '.join(API_CHOICES)})")
    if api == "jack":
        return jack_backend(client_name)
    if api != "auto":
        return rtmidiports.RtMidiBackend.start(api)
    failures = []
    try:
        found: Backend = rtmidiports.RtMidiBackend.start("alsa")
    except PortError as err:
        failures.append(str(err))
        try:
            found = jack_backend(client_name)
        except PortError as err:
            failures.append(str(err))
            raise PortError("no MIDI API could start: " + "; ".join(failures)) from err
    log.info("MIDI API: %s (api = auto%s)", found.api, "; " + "; ".join(failures) if failures else "")
    return found


def jack_backend(client_name: str) -> Backend:
    from improvd.jackports import JackBackend  # loads libjack: only where JACK is used

    return JackBackend(client_name)


def list_ports(api: str, client_name: str) -> str:
    midi = backend(api, client_name)
    try:
        inputs, outputs = midi.listing()
    finally:
        midi.close()
    lines = [f"api: {midi.api}", "inputs (improvd --in):"] + [f"  {n}" for n in inputs]
    lines += ["outputs (improvd --out):"] + [f"  {n}" for n in outputs]
    return "\n".join(lines)
