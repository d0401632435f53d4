"""The MIDI session: the backend and both ports, and what happens to them.

The daemon opens it, sends through it, and calls ``check`` when the backend reports a
change or every ``ports.reconnect_s``; ``check`` follows the peers and the server and
returns what happened, as events the daemon acts on (release the player's keys, silence
the answer, clear a synth that came back). The server's loss is a state of the session:
JACK went away (or was not up yet at start), the ports are closed, and every check tries
to make them again until the server answers.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

import mido

from improvd.config import PortsConfig
from improvd.errors import PortError
from improvd.ports import Backend, InputPort, OutputPort, backend
from improvd.scheduler import raise_priority

log = logging.getLogger(__name__)


class Event(enum.Enum):
    INPUT_LOST = "input lost"  # the player's port went (on JACK: or a player left our virtual input)
    INPUT_BACK = "input back"
    OUTPUT_LOST = "output lost"
    OUTPUT_BACK = "output back"
    SERVER_LOST = "server lost"
    SERVER_BACK = "server back"


class MidiSession:
    """``deliver(message, arrival)`` gets the input, from a reader thread that runs SCHED_FIFO
    at ``reader_priority`` (0: as it is): on JACK that thread shares the GIL with the realtime
    process callback, which must not wait for a thread the kernel has preempted."""

    def __init__(self, config: PortsConfig, deliver: Callable[[mido.Message, float], None],
                 reader_priority: int = 0) -> None:
        self.config = config
        self.deliver = deliver
        self.reader_priority = reader_priority
        self.backend: Backend | None = None
        self.input: InputPort | None = None
        self.output: OutputPort | None = None
        self.server_lost_at: float | None = None  # since when the server has been away
        self.never_up = False  # waiting for a server that was not up at start
        self.xruns_before = 0  # overruns reported to clients that are closed now

    @property
    def api(self) -> str:
        return self.backend.api if self.backend is not None else self.config.api

    def open(self) -> None:
        """Open the backend and both ports; PortError when they cannot be. With ``api =
        "jack"`` and no server yet, wait for it as after a loss: ``check`` opens them."""
        try:
            self.backend = backend(self.config.api, self.config.client_name)
        except PortError as err:
            if self.config.api != "jack":
                raise
            self.server_lost_at, self.never_up = time.monotonic(), True
            wait = f"up to {self.config.jack_wait_s:g} s" if self.config.jack_wait_s else "for as long as it takes"
            log.warning("no JACK server yet (%s); waiting for it %s", err, wait)
            return
        self._open_ports(wait=False)
        log.info("ports: in %s, out %s (api %s)", self.input, self.output, self.backend.api)
        if self.backend.realtime and not self.reader_priority:
            log.warning("JACK runs realtime but improvd's threads do not ([service] realtime = false): on a busy "
                        "machine its JACK callback can wait for them and overrun (docs/jack.md)")

    def _open_ports(self, wait: bool) -> None:
        p, midi = self.config, self.backend
        try:
            self.output = midi.output(p.output or p.virtual_output, not p.output, p.virtual_output)
            self.output.open(wait)
            self.input = midi.input(p.input or p.virtual_input, not p.input, p.virtual_input, self.deliver)
            self.input.open(wait)
        except PortError:
            self._close_ports()
            raise
        self.input.start_reading(lambda: raise_priority(self.reader_priority, "input"))

    def send(self, message: mido.Message, at: float | None = None) -> None:
        if self.output is None:
            raise PortError(f"output port {self.config.output or self.config.virtual_output!r} is not open")
        self.output.send(message, at)

    @property
    def lead_s(self) -> float:
        """How early the output wants messages, to place them at their time."""
        return self.output.lead_s if self.output is not None else 0.0

    @property
    def connected(self) -> bool:
        return self.output is not None and self.output.connected

    def changed(self) -> bool:
        return self.backend is not None and self.backend.changed()

    def transport(self):
        """JACK transport (tempo, bar, beat, position) while a timebase master publishes
        it (improvd.jackgraph.Transport); None otherwise."""
        return self.backend.transport() if self.backend is not None else None

    @property
    def xruns(self) -> int:
        return self.xruns_before + (self.backend.xruns if self.backend is not None else 0)

    def counters(self) -> dict[str, int]:
        """For the telemetry line: JACK's overruns, and what the ports' callbacks counted."""
        found = {"jack_xruns": self.xruns} if self.api == "jack" else {}
        for port, counter, name in ((self.output, "late", "output_late"), (self.input, "dropped", "input_overflow"),
                                    (self.backend, "failures", "callback_errors")):
            if getattr(port, counter, 0):
                found[name] = getattr(port, counter)
        return found

    def check(self) -> list[Event]:
        """Follow the peers and the server; what happened since the last check."""
        if self.server_lost_at is not None:
            return self._reopen()
        self.backend.checked()
        lost = self.backend.server_lost()
        if lost is not None:
            since, reason = lost
            log.error("the JACK server went away (%s); waiting for it to come back to recreate our ports",
                      reason.strip() or "no reason given")
            self._drop(since)
            return [Event.SERVER_LOST]
        if self.backend.stuck():
            log.warning("JACK has not run our client since it opened; making it again")
            self._drop(time.monotonic())
            return [Event.SERVER_LOST]
        events = []
        output_lost, output_back = self.output.follow()
        input_lost, input_back = self.input.follow()
        if input_lost and self.input.virtual:
            log.warning("a player left %s; its held keys are released", self.input)
        for happened, event in ((output_lost, Event.OUTPUT_LOST), (output_back, Event.OUTPUT_BACK),
                                (input_lost, Event.INPUT_LOST), (input_back, Event.INPUT_BACK)):
            if happened:
                events.append(event)
        return events

    def _reopen(self) -> list[Event]:
        """Make the client and ports again once the server answers (peers by name are
        joined when they exist)."""
        try:
            self.backend = backend(self.config.api, self.config.client_name)
            self._open_ports(wait=True)
        except PortError as err:
            log.debug("JACK server not back yet: %s", err)
            self._close_backend()
            waited = time.monotonic() - self.server_lost_at
            if self.never_up and self.config.jack_wait_s and waited > self.config.jack_wait_s:
                raise PortError(f"no JACK server after {waited:.0f} s (ports.jack_wait_s = "
                                f"{self.config.jack_wait_s:g}): {err}") from err
            return []
        away = time.monotonic() - self.server_lost_at
        log.warning("the JACK server is %s after %.2f s; ports: in %s, out %s",
                    "up" if self.never_up else "back", away, self.input, self.output)
        self.server_lost_at, self.never_up = None, False
        return [Event.SERVER_BACK]

    def ports_text(self) -> str:
        """"in X, out Y" for the status line (the names asked for, while no port is open)."""
        p = self.config
        return (f"in {self.input or repr(p.input or p.virtual_input)}, "
                f"out {self.output or repr(p.output or p.virtual_output)}")

    def waiting(self) -> str:
        """What the session waits for, for systemd's STATUS ("" when it waits for nothing)."""
        if self.server_lost_at is None:
            return ""
        away = time.monotonic() - self.server_lost_at
        if self.never_up:
            return f"JACK server not up yet, waiting for it ({away:.0f} s)"
        return f"JACK server gone for {away:.0f} s, waiting for it"

    def _close_ports(self) -> None:
        for port in (self.input, self.output):
            if port is not None:
                port.close()

    def _close_backend(self) -> None:
        self._close_ports()
        if self.backend is not None:
            self.xruns_before += self.backend.xruns
            self.backend.close()
        self.backend = None

    def _drop(self, since: float) -> None:
        """The server went at ``since`` and took the ports with it: close what is left."""
        self._close_backend()
        self.server_lost_at = since

    def close(self) -> None:
        self._close_backend()
