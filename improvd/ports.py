"""MIDI ports over python-rtmidi, with mido's messages: virtual ports by default, existing
ones by case-insensitive substring, and reopening a port that went away when it comes back.

rtmidi is driven directly rather than through mido's rtmidi backend, for three reasons
measured over JACK:

- mido's backend turns any open that passes ``client_name`` into a *virtual* port, so an
  existing port could only be opened under rtmidi's anonymous "RtMidiIn Client:RtMidi
  Input" names; here every port of ours is named: client and port both carry the
  configured name (``improvd in:improvd in``), virtual or connected to a peer.
- every rtmidi object is a JACK (or ALSA) client of its own: mido's name listing creates
  and destroys two clients per call (about 20 ms each on JACK), which would stall the
  daemon's loop at every reconnect check, and each extra client is one more thread JACK
  must wake every period. Here each port lists its candidates through the one client that
  carries it, kept for the life of the port: improvd is two MIDI clients (on JACK, plus
  the port-less watcher of improvd.jackgraph), and a listing costs microseconds.
- python-rtmidi's default API stays ALSA even where only JACK runs; ``api = "auto"``
  here tries each compiled API in turn and keeps the first that starts.

Ports of this process are left out of every listing, so that a substring can never
connect improvd to itself.

Peers that go and come back. On JACK each port of ours is registered once and stays (a
virtual rtmidi port), and its connection to the peer is made and watched through JACK
itself (improvd.jackgraph): a peer that dies drops the connection, JACK says so at once, and
the connection is made again as soon as a port by the wanted name exists, however quickly
it came back. Nothing is closed and reopened, so rtmidi's input callback stays in place.
Elsewhere (ALSA) the peer is followed by its listed name, which carries the ALSA client
number, and the port is closed and reopened; rtmidi's ``close_port`` also cancels the
input callback, so it is set again after every open.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

import mido
import rtmidi

from improvd.errors import PortError

if TYPE_CHECKING:
    from improvd.jackgraph import JackGraph

log = logging.getLogger(__name__)

APIS = {
    "auto": None,
    "alsa": rtmidi.API_LINUX_ALSA,
    "jack": rtmidi.API_UNIX_JACK,
    "coremidi": rtmidi.API_MACOSX_CORE,
}
API_HINTS = {
    "alsa": "is the ALSA sequencer loaded (/dev/snd/seq)?",
    "jack": "is a JACK server running (e.g. `jackd -d dummy`, or your session's JACK)?",
    "coremidi": "CoreMIDI exists only on macOS",
}
INPUT_QUEUE = 4096  # rtmidi's own input queue (only used while no callback is set)
DEFAULT_LOCAL = {"input": "improvd in", "output": "improvd out"}

T = TypeVar("T")


@contextlib.contextmanager
def _quiet_c_stderr() -> Iterator[None]:
    """Hide what libasound and libjack print on fd 2 while an API is probed: the failure
    is reported once, as a PortError, instead of a wall of C library noise."""
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
    """A new MIDI client, tried again after a moment: jackd2 refuses a client now and then
    while it is still reaping one that just quit ("Cannot notify add client")."""
    for attempt in range(attempts):
        try:
            return create()
        except Exception:  # noqa: BLE001
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class Midi:
    """One MIDI API that starts here: its name, its rtmidi id, and the names of the ports
    this process made (left out of every listing)."""

    def __init__(self, api: str, rtapi: int) -> None:
        self.api = api
        self.rtapi = rtapi
        self.own: set[str] = set()  # client = port names of our ports
        self.graph: JackGraph | None = None
        if api == "jack":
            self.start()

    def start(self) -> None:
        """(JACK) Watch the graph; PortError while no server answers."""
        from improvd.jackgraph import JackGraph  # loads libjack: only where JACK is used

        with _quiet_c_stderr():
            self.graph = JackGraph()

    @property
    def changed(self) -> bool:
        """Whether JACK reported a change in the graph since the last ``ports_checked``."""
        return self.graph is not None and self.graph.changed.is_set()

    def ports_checked(self) -> None:
        if self.graph is not None:
            self.graph.changed.clear()

    def server_lost(self) -> tuple[float, str] | None:
        """(when, JACK's reason) once the JACK server has gone away, else None."""
        graph = self.graph
        if graph is None or graph.alive:
            return None
        return graph.shutdown_at, graph.shutdown_reason

    def mine(self, name: str) -> bool:
        """Whether a listed port ("client:port", ALSA adds " 128:0") is one of ours; JACK
        renames a second client of the same name "name-01"."""
        client, _, port = name.partition(":")
        return any((client == own or client.startswith(own + "-")) and port.startswith(own) for own in self.own)

    def names(self, rt: rtmidi.MidiIn | rtmidi.MidiOut) -> list[str]:
        """The ports ``rt`` could open (an input lists outputs, an output inputs), ours left out."""
        try:
            return [n for n in rt.get_ports() if not self.mine(n)]
        except Exception as err:  # noqa: BLE001
            raise PortError(f"MIDI API {self.api} unavailable: {err}") from err

    def listing(self) -> tuple[list[str], list[str]]:
        """(input names, output names) that exist now, through two short-lived clients."""
        with _quiet_c_stderr():
            scan_in = _retry(lambda: rtmidi.MidiIn(self.rtapi, name="improvd scan"))
            scan_out = _retry(lambda: rtmidi.MidiOut(self.rtapi, name="improvd scan"))
        try:
            return self.names(scan_in), self.names(scan_out)
        finally:
            scan_in.delete()
            scan_out.delete()

    def close(self) -> None:
        """Stop watching the graph (after the ports that use it are closed)."""
        graph, self.graph = self.graph, None
        if graph is not None:
            graph.close()


def backend(api: str) -> Midi:
    """The MIDI API to use: the one named, or with "auto" the first compiled-in API that
    starts (on Linux ALSA, then JACK). PortError with the reason when none does."""
    if api not in APIS:
        raise PortError(f"ports.api: unknown MIDI API {api!r} (one of {', '.join(APIS)})")
    compiled = rtmidi.get_compiled_api()
    names = {rtapi: name for name, rtapi in APIS.items() if rtapi is not None}
    if api == "auto":
        candidates = [names[rtapi] for rtapi in compiled if rtapi in names]
    else:
        if APIS[api] not in compiled:
            built = ", ".join(names[a] for a in compiled if a in names) or "none"
            raise PortError(f"MIDI API {api!r} is not compiled into python-rtmidi here (it has: {built})")
        candidates = [api]
    failures = []
    for name in candidates:
        try:
            with _quiet_c_stderr():
                _retry(lambda rtapi=APIS[name]: rtmidi.MidiIn(rtapi, name="improvd probe")).delete()
        except Exception as err:  # noqa: BLE001 - rtmidi raises its own error types
            failures.append(f"{name}: {str(err).rstrip('.')}; {API_HINTS[name]}")
            continue
        if api == "auto":
            log.info("MIDI API: %s (api = auto%s)", name, "; " + "; ".join(failures) if failures else "")
        return Midi(name, APIS[name])
    if api != "auto":
        raise PortError(f"MIDI API {failures[0]}")
    raise PortError("no MIDI API could start: " + "; ".join(failures or ["none compiled in"]))


def port_names(midi: Midi) -> tuple[list[str], list[str]]:
    """(input names, output names) that exist now, ours left out."""
    try:
        return midi.listing()
    except PortError:
        raise
    except Exception as err:  # noqa: BLE001
        raise PortError(f"MIDI API {midi.api} unavailable: {err}") from err


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
    """One MIDI port of ours: virtual (others connect to it), or connected to an existing
    port found by substring. Either way it is one MIDI client of its own, named ``local``
    (on JACK the port reads ``local:local``), kept for the life of the port: it lists the
    candidates, watches the peer and reconnects it, so that no other client comes and goes.
    Subclasses make the rtmidi object and name the direction."""

    direction = ""

    def __init__(self, midi: Midi, name: str, virtual: bool, local_name: str | None = None) -> None:
        self.midi = midi
        self.wanted = name
        self.virtual = virtual
        self.local = name if virtual else (local_name or DEFAULT_LOCAL[self.direction])
        self.name = name  # the virtual port's name, or the peer's full name once found
        self.rt: rtmidi.MidiIn | rtmidi.MidiOut | None = None  # the client, open or not
        self.port: rtmidi.MidiIn | rtmidi.MidiOut | None = None  # the client while its port is open
        self.own_name = ""  # (JACK) our port's full name, "local:local" or "local-01:local"
        self.peer: str | None = None  # the peer while we are connected to it
        self.away_since: float | None = None  # since when the peer has been away
        self.lock = threading.Lock()

    @abc.abstractmethod
    def _create(self) -> rtmidi.MidiIn | rtmidi.MidiOut:
        """The rtmidi client object for this direction, named ``self.local``."""

    def _opening(self, rt: rtmidi.MidiIn | rtmidi.MidiOut) -> None:  # noqa: B027 - only inputs need it
        """Called just before a port of ``rt`` opens."""

    def _client(self) -> rtmidi.MidiIn | rtmidi.MidiOut:
        if self.rt is None:
            try:
                self.rt = _retry(self._create)
            except Exception as err:  # noqa: BLE001
                raise PortError(f"cannot open MIDI {self.direction} {self.wanted!r}: {err}") from err
            self.midi.own.add(self.local)
        return self.rt

    @property
    def connected(self) -> bool:
        """Whether what is sent reaches the peer (a virtual port: whoever connected to it)."""
        return self.port is not None and (self.virtual or self.peer is not None)

    def candidates(self) -> list[str]:
        """The ports this one could connect to now (other programs' ports only)."""
        rt = self._client()
        with self.lock:
            return self.midi.names(rt)

    def resolve(self) -> str:
        if self.virtual:
            return self.wanted
        return find_port(self.wanted, self.candidates(), self.direction)

    def open(self, wait: bool = False) -> None:
        """Open the port and connect it to its peer. With ``wait``, a peer that is not
        there yet is waited for (``check`` connects it) instead of being an error."""
        rt = self._client()
        try:
            if self.midi.graph is not None:
                self._register(rt)
                if not self.virtual:
                    self._join()
                return
            self.name = self.resolve()
            self._opening(rt)
            with self.lock:
                if self.virtual:
                    rt.open_virtual_port(self.local)
                else:
                    peers = rt.get_ports()
                    if self.name not in peers:
                        raise PortError(f"MIDI {self.direction} port {self.name!r} went away while opening it")
                    rt.open_port(peers.index(self.name), name=self.local)
                self.port = rt
            self.peer = self.name
        except PortError:
            if wait and self.port is not None:
                self.away_since = self.away_since or time.monotonic()
                return
            self._drop_client()
            raise
        except Exception as err:
            self._drop_client()  # a client that failed (say, its server went) is made anew next time
            raise PortError(f"cannot open MIDI {self.direction} {self.name!r}: {err}") from err

    def _register(self, rt: rtmidi.MidiIn | rtmidi.MidiOut) -> None:
        """(JACK) Our port, registered for good: ``local:local``, or as JACK renamed it."""
        pattern = f"^{re.escape(self.local)}(-[0-9]+)?:{re.escape(self.local)}$"
        before = set(self.midi.graph.ports(pattern))
        self._opening(rt)
        with self.lock:
            rt.open_virtual_port(self.local)
            self.port = rt
        new = set(self.midi.graph.ports(pattern)) - before
        self.own_name = new.pop() if len(new) == 1 else f"{self.local}:{self.local}"
        self.midi.graph.watched.add(self.own_name)

    def _join(self) -> None:
        """(JACK) Connect our port to the peer found by name."""
        name = self.resolve()
        ends = (name, self.own_name) if self.direction == "input" else (self.own_name, name)
        self.midi.graph.connect(*ends)
        self.name = self.peer = name

    def _close_port(self) -> None:
        with self.lock:
            rt, self.port, self.peer = self.port, None, None
            if rt is not None:
                try:
                    rt.close_port()  # rtmidi first delivers what is still queued
                except Exception as err:  # noqa: BLE001 - closing must never fail a shutdown
                    log.debug("closing %s: %s", self, err)

    def _drop_client(self) -> None:
        with self.lock:
            rt, self.rt, self.port, self.peer = self.rt, None, None, None
        if rt is not None:
            rt.delete()

    def close(self) -> None:
        """Close the port and its client."""
        if isinstance(self.rt, rtmidi.MidiIn):
            try:
                self.rt.cancel_callback()
            except Exception as err:  # noqa: BLE001
                log.debug("closing %s: %s", self, err)
        self._close_port()
        self._drop_client()

    def drop(self, since: float) -> None:
        """The MIDI server went away at ``since`` and took the port with it: close what is
        left; the peer counts as away from then on."""
        self.close()
        self.away_since = since

    def present(self) -> bool:
        """Whether the port we are connected to still exists (virtual ports always do)."""
        if self.virtual:
            return True
        try:
            return self.name in self.candidates()
        except PortError:
            return False

    def check(self) -> tuple[bool, bool]:
        """Follow the peer: (lost, back). Lost: it went away since the last check (its
        connection broke, or its name is gone). Back: it is connected again. Both at once
        when it went and came back between two checks. Cheap: one port listing."""
        if self.virtual:
            return False, False
        graph = self.midi.graph
        if graph is not None:  # JACK: by the connection itself
            lost = self.peer is not None and not graph.connected(self.own_name, self.peer)
            since = graph.disconnected.pop(self.own_name, None)
            if lost:
                self._lost(since or time.monotonic())
            if self.peer is None:
                try:
                    self._join()
                except PortError:
                    return lost, False
                return lost, self._back()
            return lost, False
        if self.port is not None and not self.present():
            self._close_port()
            self._lost(time.monotonic())
            return True, False
        if self.port is None:
            try:
                self.open()
            except PortError:
                return False, False
            return False, self._back()
        return False, False

    def _lost(self, since: float) -> None:
        self.peer, self.away_since = None, since
        log.warning("%s port %r went away; waiting for it to come back", self.direction, self.name)

    def _back(self) -> bool:
        away = time.monotonic() - (self.away_since or time.monotonic())
        self.away_since = None
        log.warning("%s port %r is back after %.2f s away; reconnected", self.direction, self.name, away)
        return True

    def __str__(self) -> str:
        return f"{self.name!r}{' (virtual)' if self.virtual else f' (as {self.local!r})'}"


class InputPort(Port):
    direction = "input"

    def __init__(self, midi: Midi, name: str, virtual: bool, callback: Callable[[mido.Message], None],
                 local_name: str | None = None) -> None:
        super().__init__(midi, name, virtual, local_name)
        self.callback = callback
        self.ignored = 0  # deliveries that were no MIDI message (garbage, running status)

    def _create(self) -> rtmidi.MidiIn:
        rt = rtmidi.MidiIn(self.midi.rtapi, name=self.local, queue_size_limit=INPUT_QUEUE)
        rt.ignore_types(sysex=False, timing=False, active_sense=True)
        rt.set_callback(self._receive)  # before any port opens: nothing waits in rtmidi's queue
        return rt

    def _opening(self, rt: rtmidi.MidiIn) -> None:
        """Before every open: python-rtmidi's ``close_port`` cancels the callback, and a
        reopened port would otherwise deliver nothing (issue 10)."""
        rt.set_callback(self._receive)

    def _receive(self, event: tuple[list[int], float], _data: object = None) -> None:
        """rtmidi's callback (its own thread; on JACK the JACK process thread): parse and
        hand over at once; it must never raise."""
        try:
            message = mido.Message.from_bytes(event[0])
        except Exception:  # noqa: BLE001 - garbage, running status, truncated data
            self.ignored += 1
            return
        try:
            self.callback(message)
        except Exception:  # noqa: BLE001
            log.exception("input callback failed on %s", message)


class OutputPort(Port):
    direction = "output"

    def _create(self) -> rtmidi.MidiOut:
        return rtmidi.MidiOut(self.midi.rtapi, name=self.local)

    def send(self, message: mido.Message) -> None:
        """Send now; while the port is away this raises PortError (the scheduler counts
        it and goes on; on reconnect the daemon sends all-notes-off)."""
        with self.lock:
            if not self.connected:
                raise PortError(f"output port {self.name!r} is not connected")
            self.port.send_message(message.bytes())


def list_ports(api: str) -> str:
    midi = backend(api)
    try:
        inputs, outputs = port_names(midi)
    finally:
        midi.close()
    lines = [f"api: {midi.api}", "inputs (improvd --in):"] + [f"  {n}" for n in inputs]
    lines += ["outputs (improvd --out):"] + [f"  {n}" for n in outputs]
    return "\n".join(lines)
