"""The running daemon: where the pure engine meets threads, ports, signals and systemd.

Start-up runs in a fixed order (config -> model -> ports -> engine -> scheduler) so that a
bad model never leaves ports open; shutdown undoes it in reverse, in ``finally``, and the
scheduler's stop releases every note whatever the exit path.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import mido

from improvd import candidates as candidates_module
from improvd.config import Config, changed_settings, load_config
from improvd.engine import Engine, Reply, Timed
from improvd.errors import ImprovdError, PortError
from improvd.model import StepModel
from improvd.notify import Notifier
from improvd.ports import InputPort, Midi, OutputPort, backend
from improvd.sampler import make_rng
from improvd.scheduler import Scheduler, all_notes_off, raise_priority
from improvd.seed import read_seed
from improvd.telemetry import Telemetry

log = logging.getLogger(__name__)

MAX_PENDING = 2048  # queued input messages beyond which new notes are dropped
HARD_MAX_PENDING = 8192  # beyond which everything is dropped: memory stays bounded
LOOP_MAX_WAIT_S = 0.05  # also bounds how long SIGTERM waits for the loop to notice
STATUS_INTERVAL_S = 5.0  # STATUS= for `systemctl status`, resent only when it changed
RELEASE_TYPES = ("note_off", "control_change")  # kept under load: they end notes
INPUT_BATCH = 32  # input messages folded between two generation polls
MAX_LAG_S = 0.1  # a queued new note older than this is dropped
STUCK_XRUNS = 10  # overruns, just after our clients were made on a returned JACK server, that mean they are stuck
STUCK_WINDOW_S = 3.0  # how long after that they are watched for it
SWITCH_INTERVAL_S = 0.0005  # Python's default 5 ms GIL slice would make the scheduler late


def build_engine(config: Config, model: StepModel, now: float, **options) -> Engine:
    return Engine(model, config, make_rng(config.engine.seed), now, clock=time.perf_counter, **options)


class Inbox:
    """The input callback's queue: bounded, and under a flood it drops new notes before it
    drops anything that ends one."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.items: deque[tuple[float, mido.Message]] = deque()
        self.ready = threading.Condition()
        self.telemetry = telemetry

    def put(self, message: mido.Message) -> None:
        arrival = time.monotonic()
        with self.ready:
            size = len(self.items)
            if size >= HARD_MAX_PENDING or (size >= MAX_PENDING and message.type not in RELEASE_TYPES):
                self.telemetry.count("input_dropped")
                return
            self.items.append((arrival, message))
            self.ready.notify()

    def take(self, timeout: float, limit: int) -> list[tuple[float, mido.Message]]:
        """Up to ``limit`` messages, oldest first; a flood is worked off between polls so
        generation keeps up with the output schedule. New notes older than MAX_LAG_S are
        dropped (counted): under a flood, the state follows the player, not the backlog."""
        with self.ready:
            if not self.items and timeout > 0:
                self.ready.wait(timeout)
            taken = []
            stale = time.monotonic() - MAX_LAG_S
            while self.items and len(taken) < limit:
                arrival, message = self.items.popleft()
                if arrival < stale and message.type == "note_on" and message.velocity > 0:
                    self.telemetry.count("input_dropped")
                    continue
                taken.append((arrival, message))
            return taken

    def oldest(self) -> float:
        """Arrival time of the oldest queued message (infinity when none is queued)."""
        with self.ready:
            return self.items[0][0] if self.items else float("inf")


class Daemon:
    def __init__(self, config: Config, seed_file: Path | None = None, seed_track: int | None = None,
                 length: float | None = None, config_path: Path | None = None,
                 overrides: dict | None = None, seed_from: float | None = None) -> None:
        self.config = config
        self.seed_file, self.seed_track, self.length, self.seed_from = seed_file, seed_track, length, seed_from
        self.config_path, self.overrides = config_path, overrides or {}
        self.telemetry = Telemetry()
        self.notifier = Notifier()
        self.stop_requested = threading.Event()
        self.stop_signal: int | None = None
        self.reload_requested = threading.Event()
        self.report_requested = threading.Event()
        self.inbox = Inbox(self.telemetry)
        self._last_steps = (time.monotonic(), 0)
        self.last_choice: candidates_module.Choice | None = None
        self.model: StepModel | None = None
        self.engine: Engine | None = None
        self.scheduler: Scheduler | None = None
        self.input: InputPort | None = None
        self.output: OutputPort | None = None
        self.midi: Midi | None = None
        self.server_lost_at: float | None = None  # since when the MIDI server has been gone
        self.recreated: tuple[float, int] | None = None  # (when, JACK's xrun count then) after a server return
        self.tempo_source: str | None = None  # where the tempo comes from, as last logged

    # ---- lifecycle ---------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """The handlers only set flags (no locks, no I/O in a signal handler); the loop, which
        wakes at least every LOOP_MAX_WAIT_S, acts on them. SIGTERM/SIGINT: stop and exit 0;
        SIGHUP: reload; SIGUSR1: log the telemetry."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        signal.signal(signal.SIGUSR1, lambda *_: self.report_requested.set())

    def _on_stop_signal(self, signum: int, _frame) -> None:
        self.stop_signal = self.stop_signal or signum
        self.stop_requested.set()

    def run(self) -> int:
        """Start up in order: (config, given) -> model -> ports -> engine -> scheduler, then
        READY=1; loop until SIGTERM/SIGINT; undo it in reverse in ``finally`` whatever the exit
        path: STOPPING=1, the scheduler releases every sounding note and sends all-notes-off,
        then the input and output ports close. The model and seed file load before any port
        opens, so a bad one never leaves dangling ports."""
        failure: str | None = None
        try:
            seed = read_seed(self.seed_file, self.seed_track, self.seed_from) if self.seed_file else None
            self.model = StepModel(self.config.model.path, self.config.model.device)
            self._open_ports()
            # The seed is folded in as if just played, ending now: the engine's stream must open
            # before its first note, or every message would be clamped to one instant.
            self.engine = build_engine(self.config, self.model, time.monotonic() - (seed[-1][0] if seed else 0.0))
            realtime = self.config.service.realtime_priority if self.config.service.realtime else 0
            self.scheduler = Scheduler(self.output.send, self.telemetry, realtime_priority=realtime)
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            self.scheduler.start()
            # The engine loop (this thread) feeds the sender: realtime too, one step below it.
            raise_priority(max(1, realtime - 1) if realtime else 0, "engine")
            self._startup_messages(seed)
            self.notifier.ready(self.status())
            log.info("ready: %s", self.status())
            self._loop()
            if self.stop_signal is not None:
                log.info("stopping on %s", signal.Signals(self.stop_signal).name)
        except BaseException as err:
            failure = f"failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            raise
        finally:
            self.notifier.stopping(failure or "stopping")
            if self.scheduler is not None:
                self.scheduler.stop()
            for port in (self.input, self.output):
                if port is not None:
                    port.close()
            if self.midi is not None:
                self.midi.close()
            if self.scheduler is not None:
                log.info("stopped: %s", self.telemetry_line())
            self.notifier.close()
        return 0

    def _open_ports(self) -> None:
        p = self.config.ports
        self.midi = midi = backend(p.api)
        self.output = OutputPort(midi, p.output or p.virtual_output, virtual=not p.output,
                                 local_name=p.virtual_output)
        self.output.open()
        self.input = InputPort(midi, p.input or p.virtual_input, virtual=not p.input, callback=self.inbox.put,
                               local_name=p.virtual_input)
        self.input.open()
        log.info("ports: in %s, out %s (api %s)", self.input, self.output, midi.api)

    def _startup_messages(self, seed) -> None:
        now = time.monotonic()
        messages = []
        if self.config.ports.program >= 0:
            messages.append(Timed(now, mido.Message("program_change", program=self.config.ports.program,
                                                    channel=self.config.ports.output_channel - 1)))
        self.scheduler.submit(Reply(messages))
        if seed is not None:
            log.info("seed %s: %d messages, %.1f s", self.seed_file, len(seed), seed[-1][0] if seed else 0)
            self.scheduler.submit(self.engine.prime(seed, now, self.length))

    # ---- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        next_report = time.monotonic() + (self.config.telemetry.interval_s or float("inf"))
        next_port_check = time.monotonic() + self.config.ports.reconnect_s
        next_watchdog = next_status = time.monotonic()
        scheduler_died = False
        if self.notifier.watchdog_interval and not self.config.service.watchdog:
            log.warning("systemd expects watchdog pings (WatchdogSec=) but [service] watchdog = false: "
                        "it will kill improvd after %.1f s", 2 * self.notifier.watchdog_interval)
        while not self.stop_requested.is_set():
            now = time.monotonic()
            wake = self.engine.next_wakeup(now)
            timeout = LOOP_MAX_WAIT_S if wake is None else min(LOOP_MAX_WAIT_S, max(0.0, wake - now))
            for arrival, message in self.inbox.take(timeout, INPUT_BATCH):
                self.scheduler.submit(self.engine.on_message(message, arrival, time.monotonic()))
                self.telemetry.record("input_to_state", time.monotonic() - arrival)
            # Silence is judged at the oldest input still queued, not at the clock.
            self.scheduler.submit(self._on_grid(self.engine.poll(min(time.monotonic(), self.inbox.oldest()))))
            self._record_choice(self.engine.take_choice())
            now = time.monotonic()
            if self.notifier.active:
                # Pinged from this loop, and only while the scheduler thread lives: a wedged
                # engine or a dead scheduler stops the pings and systemd restarts us.
                watchdog_every = self.notifier.watchdog_interval if self.config.service.watchdog else None
                if watchdog_every and now >= next_watchdog:
                    if self.scheduler.alive():
                        self.notifier.watchdog()
                    elif not scheduler_died:
                        scheduler_died = True
                        log.error("the scheduler thread has died; withholding watchdog pings so systemd restarts us")
                    next_watchdog = now + watchdog_every
                if now >= next_status:
                    self.notifier.status(self.status())
                    next_status = now + min(STATUS_INTERVAL_S, watchdog_every or STATUS_INTERVAL_S)
            if now >= next_port_check or self.midi.changed:
                self._check_ports()
                next_port_check = now + self.config.ports.reconnect_s
            if now >= next_report or self.report_requested.is_set():
                self.report_requested.clear()
                log.info("telemetry: %s", self.telemetry_line())
                next_report = now + (self.config.telemetry.interval_s or float("inf"))
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()

    def _on_grid(self, reply: Reply) -> Reply:
        """Telemetry: how far each generated onset is scheduled from the grid, while a tempo
        is known; a log line when the tempo's source changes."""
        now = time.monotonic()
        tempo = self.engine.beat.tempo(now)
        if (tempo and tempo[1]) != self.tempo_source:
            self.tempo_source = tempo and tempo[1]
            log.info("tempo: %s", f"{tempo[0].bpm_at(now):.1f} bpm ({tempo[1]})" if tempo else "none: free time")
        for timed in reply.messages:
            if timed.message.type == "note_on" and timed.message.velocity and not timed.passthrough:
                distance = self.engine.beat.distance(timed.time, now)
                if distance is not None:
                    self.telemetry.record("onset_to_grid", distance)
        return reply

    def _record_choice(self, choice: candidates_module.Choice | None) -> None:
        """Candidate figures for the telemetry line (the engine logs each choice at debug)."""
        if choice is None:
            return
        self.telemetry.record("candidate_generation", choice.compute_s)
        if choice.slack_s is not None:
            self.telemetry.record("candidate_slack", choice.slack_s)
        self.telemetry.count("candidates_scored", choice.scored)
        self.telemetry.count("answers_chosen")
        self.telemetry.count("answers_chosen_partial", int(not choice.complete))
        self.last_choice = choice

    def _check_ports(self) -> None:
        """Follow peers that go and come back, and the MIDI server itself. When the output's
        peer goes, the answer is stopped and the notes forgotten while nothing can hear them
        (the release goes nowhere), so the peer that comes back gets all-notes-off and no
        stray NOTE_OFF. A lost player's held keys are released."""
        self.midi.ports_checked()
        if self.server_lost_at is not None:
            self._recreate_ports()
            return
        lost = self.midi.server_lost()
        if lost is not None:
            self._server_lost(*lost)
            return
        if self.recreated is not None and self._recreated_clients_stuck():
            return
        output_lost, output_back = self.output.check()
        input_lost, _ = self.input.check()
        if input_lost:
            self.scheduler.submit(self.engine.release_player(time.monotonic()))
        if output_lost:
            self._silence()
        if output_back:
            self._all_notes_off()

    def _silence(self) -> None:
        """Stop the answer and forget its notes: nothing can hear their release."""
        self.scheduler.submit(self.engine.panic(time.monotonic()))
        self.scheduler.release_all()

    def _all_notes_off(self) -> None:
        try:
            for message in all_notes_off():
                self.output.send(message)
        except ImprovdError as err:  # gone again already: the next check sees it
            log.warning("output port: %s", err)

    def _server_lost(self, since: float, reason: str) -> None:
        """JACK went away (its shutdown callback said so) and took our clients and ports
        with it: release everything, close what is left, and wait for it to come back.
        Waiting, not exiting 4: on a desktop JACK (or PipeWire) restarts are routine, and
        the engine's state, the model and the seed survive; systemd sees the STATUS."""
        self.server_lost_at = since
        log.error("the JACK server went away (%s); waiting for it to come back to recreate our ports",
                  reason.strip() or "no reason given")
        self._drop_ports(since)
        self.scheduler.submit(self.engine.release_player(time.monotonic()))
        self._silence()
        self.notifier.status(self.status())

    def _recreate_ports(self) -> None:
        """Called every ``ports.reconnect_s`` while the server is away: once it answers,
        our clients and ports are made anew (peers by name are connected when they exist)."""
        try:
            self.midi.start()
            for port in (self.output, self.input):
                port.open(wait=True)
        except PortError as err:
            log.debug("JACK server not back yet: %s", err)
            self._drop_ports(self.server_lost_at)
            return
        away = time.monotonic() - self.server_lost_at
        self.recreated = (time.monotonic(), self.midi.graph.xruns)
        self.server_lost_at = None
        log.warning("the JACK server is back after %.2f s away; ports recreated: in %s, out %s",
                    away, self.input, self.output)
        if self.output.connected:
            self._all_notes_off()
        self.notifier.status(self.status())

    def _drop_ports(self, since: float) -> None:
        """Close what is left of our clients and ports (their server went at ``since``)."""
        for port in (self.input, self.output):
            port.drop(since)
        self.midi.close()

    def _recreated_clients_stuck(self) -> bool:
        """A JACK server that has just come back sometimes never wakes a client made at once
        (jackd reports it "not finished" every cycle, and it hears and sends nothing): while
        JACK reports overruns in a row just after our clients were made, make them anew."""
        since, xruns_then = self.recreated
        xruns = self.midi.graph.xruns - xruns_then
        if xruns >= STUCK_XRUNS:
            log.warning("JACK has not run our new clients (%d overruns in %.2f s); making them again",
                        xruns, time.monotonic() - since)
            self.recreated = None
            self._drop_ports(since)
            self.server_lost_at = since
            return True
        if time.monotonic() - since > STUCK_WINDOW_S:
            self.recreated = None
        return False

    def reload(self) -> None:
        """SIGHUP: new config and model without closing the ports; a bad one is refused and
        the running one goes on."""
        self.notifier.reloading()
        log.info("reloading %s", self.config_path or "the configuration")
        try:
            config = load_config(self.config_path, self.overrides)
            model = StepModel(config.model.path, config.model.device)
        except Exception as err:  # noqa: BLE001 - whatever is wrong with the new one, the old one plays on
            text = str(err) if isinstance(err, ImprovdError) else f"{type(err).__name__}: {err}"
            first, *problems = text.split("\n")  # one line per problem, each at error priority
            log.error("reload refused, keeping the running configuration: %s", first)
            for problem in problems:
                log.error("%s", problem)
            self.notifier.ready(self.status())
            return
        if replace(config.ports, reconnect_s=0) != replace(self.config.ports, reconnect_s=0):
            log.warning("reload: [ports] changes take effect at the next restart")
        if (config.service.realtime, config.service.realtime_priority) != (
                self.config.service.realtime, self.config.service.realtime_priority):
            log.warning("reload: [service] realtime changes take effect at the next restart")
        logging.getLogger().setLevel(config.log.level.upper())
        self.scheduler.submit(self.engine.panic(time.monotonic()))
        self.scheduler.release_all()
        changes = changed_settings(self.config, config)
        self.config, self.model = config, model
        self.engine = build_engine(config, model, time.monotonic())
        log.info("reloaded %s (model %s): %s", config.source, config.model.path,
                 ", ".join(changes) or "no setting changed")
        self.notifier.ready(self.status())

    # ---- status ----------------------------------------------------------------------------

    def status(self) -> str:
        engine = self.engine
        waiting = [f"JACK server gone for {time.monotonic() - self.server_lost_at:.0f} s, waiting for it"
                   ] if self.server_lost_at is not None else []
        parts = waiting + [f"mode {engine.live.mode if engine else self.config.engine.mode}",
                 f"in {self.input}", f"out {self.output}", f"model on {self.model.provider}"]
        if engine is not None:
            parts.append(f"memory {engine.live.memory_strength:.2f} ({engine.memory.events} events)")
        tempo = engine.beat.tempo(time.monotonic()) if engine is not None else None
        if tempo is not None:
            parts.append(f"tempo {tempo[0].bpm_at(time.monotonic()):.1f} bpm ({tempo[1]})")
        if engine is not None and not engine.controls.playing:
            parts.append("stopped by MIDI clock")
        latency = self.telemetry.snapshot()["latency"]["phrase_end_to_first_note"]
        if latency["n"]:
            parts.append(f"answer p99 {latency['p99_ms']:.1f} ms")
        return ", ".join(parts)

    def telemetry_line(self) -> str:
        extra: dict[str, object] = {}
        if self.engine is not None:
            c = self.engine.counters
            extra.update(notes_in=c.notes_in, notes_out=c.notes_out, answers=c.answers,
                         barge_ins=c.barge_ins, ignored=c.messages_ignored,
                         memory_strength=round(self.engine.live.memory_strength, 3),
                         memory_events=self.engine.memory.events)
        if self.model is not None:
            now, steps = time.monotonic(), self.model.steps
            last_time, last_steps = self._last_steps
            extra["model_steps"] = steps
            extra["model_steps_per_s"] = (steps - last_steps) / max(1e-9, now - last_time)
            self._last_steps = (now, steps)
        if self.last_choice is not None:
            extra.update(last_winner=self.last_choice.winner, last_margin=self.last_choice.margin)
        return self.telemetry.line(extra)
