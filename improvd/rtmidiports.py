"""MIDI ports over python-rtmidi (ALSA on Linux, CoreMIDI on macOS), with mido's messages.

rtmidi is driven directly rather than through mido's rtmidi backend: mido turns any open
that passes ``client_name`` into a *virtual* port, and lists ports through two new clients
per call. Here every port of ours is one client, named after it, kept for the life of the
port: it lists the candidates, and follows its peer by name. The listed name carries the
ALSA client number, so a peer that comes back is a new name: the port is closed and
reopened to it. rtmidi's ``close_port`` also cancels the input callback, so it is set again
before every open.
"""

from __future__ import annotations

import abc
import contextlib
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import mido
import rtmidi

from improvd.errors import PortError
from improvd.ports import Backend, InputPort, OutputPort, find_port

APIS = {"alsa": rtmidi.API_LINUX_ALSA, "coremidi": rtmidi.API_MACOSX_CORE}
API_HINTS = {"alsa": "is the ALSA sequencer loaded (/dev/snd/seq)?", "coremidi": "CoreMIDI exists only on macOS"}
INPUT_QUEUE = 4096  # rtmidi's own input queue (only used while no callback is set)

T = TypeVar("T")


@contextlib.contextmanager
def quiet_c_stderr() -> Iterator[None]:
    """Hide what libasound prints on fd 2 while an API is probed: the failure is reported
    once, as a PortError, instead of a wall of C library noise."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _retry(create: Callable[[], T], attempts: int = 3) -> T:
    """A new MIDI client, tried again after a moment: a sequencer may refuse one now and
    then while it is still reaping one that just quit."""
    for attempt in range(attempts):
        try:
            return create()
        except rtmidi.RtMidiError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class RtMidiBackend(Backend):
    """One rtmidi API that starts here, and the names of this process's ports."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.rtapi = APIS[api]
        self.own: set[str] = set()  # our ports' names: left out of every listing

    @classmethod
    def start(cls, api: str) -> RtMidiBackend:
        """The named API once a client of it opens; PortError saying why not."""
        if APIS[api] not in rtmidi.get_compiled_api():
            raise PortError(f"MIDI API {api!r} is not compiled into python-rtmidi here")
        try:
            with quiet_c_stderr():
                _retry(lambda: rtmidi.MidiIn(APIS[api], name="improvd probe")).delete()
        except rtmidi.RtMidiError as err:
            raise PortError(f"MIDI API {api}: {str(err).rstrip('.')}; {API_HINTS[api]}") from err
        return cls(api)

    def mine(self, name: str) -> bool:
        """Whether a listed port ("client:port 128:0") is one of ours."""
        client, _, port = name.partition(":")
        return any(client == own and port.startswith(own) for own in self.own)

    def names(self, rt: rtmidi.MidiIn | rtmidi.MidiOut) -> list[str]:
        """The ports ``rt`` could open (an input lists outputs, an output inputs), ours left out."""
        try:
            return [n for n in rt.get_ports() if not self.mine(n)]
        except rtmidi.RtMidiError as err:
            raise PortError(f"MIDI API {self.api} unavailable: {err}") from err

    def listing(self) -> tuple[list[str], list[str]]:
        with quiet_c_stderr():
            scan_in = _retry(lambda: rtmidi.MidiIn(self.rtapi, name="improvd scan"))
            scan_out = _retry(lambda: rtmidi.MidiOut(self.rtapi, name="improvd scan"))
        try:
            return self.names(scan_in), self.names(scan_out)
        finally:
            scan_in.delete()
            scan_out.delete()

    def input(self, wanted: str, virtual: bool, name: str,
              callback: Callable[[mido.Message, float], None]) -> RtMidiInput:
        return RtMidiInput(self, wanted, virtual, name, callback)

    def output(self, wanted: str, virtual: bool, name: str) -> RtMidiOutput:
        return RtMidiOutput(self, wanted, virtual, name)

    def close(self) -> None:
        pass


class RtMidiPort(abc.ABC):
    """What rtmidi inputs and outputs share: one client of their own, named ``name``."""

    def __init__(self, midi: RtMidiBackend) -> None:
        self.midi = midi
        self.rt: rtmidi.MidiIn | rtmidi.MidiOut | None = None  # the client, open or not
        self.port_open = False
        self.lock = threading.Lock()

    @abc.abstractmethod
    def _create(self) -> rtmidi.MidiIn | rtmidi.MidiOut:
        """A new rtmidi client of this port's direction."""

    def _opening(self, rt: rtmidi.MidiIn | rtmidi.MidiOut) -> None:  # noqa: B027 - a hook; an output needs none
        """Called just before a port of ``rt`` opens."""

    def _client(self) -> rtmidi.MidiIn | rtmidi.MidiOut:
        if self.rt is None:
            try:
                self.rt = _retry(self._create)
            except rtmidi.RtMidiError as err:
                raise PortError(f"cannot open MIDI {self.direction} {self.wanted!r}: {err}") from err
            self.midi.own.add(self.name)
        return self.rt

    def candidates(self) -> list[str]:
        rt = self._client()
        with self.lock:
            return self.midi.names(rt)

    def open(self, wait: bool = False) -> None:
        rt = self._client()
        try:
            peer = self.wanted if self.virtual else find_port(self.wanted, self.candidates(), self.direction)
            self._opening(rt)
            with self.lock:
                if self.virtual:
                    rt.open_virtual_port(self.name)
                else:
                    peers = rt.get_ports()
                    if peer not in peers:
                        raise PortError(f"MIDI {self.direction} port {peer!r} went away while opening it")
                    rt.open_port(peers.index(peer), name=self.name)
                self.port_open = True
            self.peer = peer
        except PortError:
            if wait:
                self.away_since = self.away_since or time.monotonic()
                return
            raise
        except rtmidi.RtMidiError as err:
            raise PortError(f"cannot open MIDI {self.direction} {self.wanted!r}: {err}") from err

    def _close_port(self) -> None:
        with self.lock:
            rt, self.port_open, self.peer = self.rt, False, None
            if rt is not None:
                rt.close_port()  # rtmidi first delivers what is still queued

    def close(self) -> None:
        self._close_port()
        with self.lock:
            rt, self.rt = self.rt, None
        if rt is not None:
            rt.delete()

    def follow(self) -> tuple[bool, bool]:
        """By name: a peer whose listed name is gone is lost; one listed again is reopened."""
        if self.virtual:
            return False, False
        if self.port_open:
            try:
                present = self.peer in self.candidates()
            except PortError:
                present = False
            if present:
                return False, False
            self._close_port()
            self._lost(time.monotonic())
            return True, False
        try:
            self.open()
        except PortError:
            return False, False
        return False, self._back()

    def __str__(self) -> str:
        return f"{self.name!r} (virtual)" if self.virtual else f"{self.peer or self.wanted!r} (as {self.name!r})"


class RtMidiInput(RtMidiPort, InputPort):
    """rtmidi's callback (its own thread) puts each message in a queue ``receive`` reads."""

    def __init__(self, midi: RtMidiBackend, wanted: str, virtual: bool, name: str,
                 callback: Callable[[mido.Message, float], None]) -> None:
        InputPort.__init__(self, wanted, virtual, name, callback)
        RtMidiPort.__init__(self, midi)
        self.arrived: queue.SimpleQueue[tuple[float, list[int]]] = queue.SimpleQueue()

    def _create(self) -> rtmidi.MidiIn:
        rt = rtmidi.MidiIn(self.midi.rtapi, name=self.name, queue_size_limit=INPUT_QUEUE)
        rt.ignore_types(sysex=False, timing=False, active_sense=True)
        return rt

    def _opening(self, rt: rtmidi.MidiIn) -> None:
        rt.set_callback(self._arrived)  # python-rtmidi's close_port cancels it

    def _arrived(self, event: tuple[list[int], float], _data: object = None) -> None:
        self.arrived.put((time.monotonic(), event[0]))

    def receive(self, timeout: float) -> list[tuple[float, bytes]]:
        try:
            received = [self.arrived.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                received.append(self.arrived.get_nowait())
            except queue.Empty:
                return [(arrival, bytes(data)) for arrival, data in received]

    def close(self) -> None:
        InputPort.close(self)
        RtMidiPort.close(self)


class RtMidiOutput(RtMidiPort, OutputPort):
    def __init__(self, midi: RtMidiBackend, wanted: str, virtual: bool, name: str) -> None:
        OutputPort.__init__(self, wanted, virtual, name)
        RtMidiPort.__init__(self, midi)

    def _create(self) -> rtmidi.MidiOut:
        return rtmidi.MidiOut(self.midi.rtapi, name=self.name)

    @property
    def connected(self) -> bool:
        return self.port_open and (self.virtual or self.peer is not None)

    def send(self, message: mido.Message, at: float | None = None) -> None:
        """Now (rtmidi has no timed sending); PortError while the peer is away."""
        with self.lock:
            if not self.connected:
                raise PortError(f"output port {self.wanted!r} is not connected")
            self.rt.send_message(message.bytes())
