"""MIDI ports over mido's python-rtmidi backend: virtual ports by default, existing ones
by case-insensitive substring, and reopening a port that went away when it comes back."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import mido

from improvd.errors import PortError

log = logging.getLogger(__name__)

APIS = {"auto": None, "alsa": "LINUX_ALSA", "jack": "UNIX_JACK", "coremidi": "MACOSX_CORE"}


def backend(api: str) -> mido.Backend:
    """mido's rtmidi backend on the chosen API. python-rtmidi defaults to ALSA even when
    only JACK runs, so "jack" must be asked for by name."""
    if api not in APIS:
        raise PortError(f"ports.api: unknown MIDI API {api!r} (one of {', '.join(APIS)})")
    name = "mido.backends.rtmidi" + (f"/{APIS[api]}" if APIS[api] else "")
    try:
        return mido.Backend(name, load=True)
    except Exception as err:  # noqa: BLE001 - rtmidi raises its own error types
        raise PortError(f"cannot load MIDI backend {name}: {err}") from err


def port_names(midi: mido.Backend) -> tuple[list[str], list[str]]:
    """(input names, output names) that exist now; an API that cannot start is an error."""
    try:
        return midi.get_input_names(), midi.get_output_names()
    except Exception as err:  # noqa: BLE001
        raise PortError(f"MIDI API unavailable: {err}") from err


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


class Port:
    """One MIDI port, virtual or existing. Subclasses override only open/send/receive/close
    (the rest, finding and reopening, is shared)."""

    direction = ""

    def __init__(self, midi: mido.Backend, name: str, virtual: bool) -> None:
        self.midi = midi
        self.wanted = name
        self.virtual = virtual
        self.name = name
        self.port = None
        self.lock = threading.Lock()

    def resolve(self) -> str:
        if self.virtual:
            return self.wanted
        inputs, outputs = port_names(self.midi)
        return find_port(self.wanted, inputs if self.direction == "input" else outputs, self.direction)

    def open(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with self.lock:
            if self.port is not None:
                try:
                    self.port.close()
                finally:
                    self.port = None

    def present(self) -> bool:
        """Whether the port we are connected to still exists (virtual ports always do)."""
        if self.virtual:
            return True
        try:
            inputs, outputs = port_names(self.midi)
        except PortError:
            return False
        return self.name in (inputs if self.direction == "input" else outputs)

    def check(self) -> None:
        """Close a port that vanished; reopen it when it is back. Called periodically."""
        if self.port is not None and not self.present():
            log.warning("%s port %r went away; waiting for it to come back", self.direction, self.name)
            self.close()
        elif self.port is None:
            try:
                self.open()
            except PortError:
                return
            log.warning("%s port %r is back and reopened", self.direction, self.name)

    def __str__(self) -> str:
        return f"{self.name!r}{' (virtual)' if self.virtual else ''}"


class InputPort(Port):
    direction = "input"

    def __init__(self, midi: mido.Backend, name: str, virtual: bool,
                 callback: Callable[[mido.Message], None]) -> None:
        super().__init__(midi, name, virtual)
        self.callback = callback

    def open(self) -> None:
        self.name = self.resolve()
        try:
            port = self.midi.open_input(self.name, virtual=self.virtual, callback=self.callback)
        except Exception as err:  # noqa: BLE001
            raise PortError(f"cannot open MIDI input {self.name!r}: {err}") from err
        with self.lock:
            self.port = port


class OutputPort(Port):
    direction = "output"

    def open(self) -> None:
        self.name = self.resolve()
        try:
            port = self.midi.open_output(self.name, virtual=self.virtual)
        except Exception as err:  # noqa: BLE001
            raise PortError(f"cannot open MIDI output {self.name!r}: {err}") from err
        with self.lock:
            self.port = port

    def send(self, message: mido.Message) -> None:
        """Send now; while the port is away, the message is dropped (the scheduler has
        already released what it must on reconnect via all-notes-off)."""
        with self.lock:
            if self.port is None:
                raise PortError(f"output port {self.name!r} is not connected")
            self.port.send(message)


def list_ports(api: str) -> str:
    inputs, outputs = port_names(backend(api))
    lines = ["inputs:"] + [f"  {n}" for n in inputs] + ["outputs:"] + [f"  {n}" for n in outputs]
    return "\n".join(lines)
