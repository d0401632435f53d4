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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import mido

from improvd.config import Config, changed_settings, load_config
from improvd.engine import Engine, Reply, Timed
from improvd.errors import ImprovdError
from improvd.model import StepModel
from improvd.notify import Notifier
from improvd.report import Report
from improvd.sampler import make_rng
from improvd.scheduler import Scheduler, all_notes_off, raise_priority
from improvd.seed import read_seed
from improvd.session import Event, MidiSession
from improvd.telemetry import Telemetry
from improvd.tempo import TempoMap

log = logging.getLogger(__name__)

MAX_PENDING = 2048  # queued input messages beyond which new notes are dropped
HARD_MAX_PENDING = 8192  # beyond which everything is dropped: memory stays bounded
LOOP_MAX_WAIT_S = 0.05  # also bounds how long SIGTERM waits for the loop to notice
TRANSPORT_SOURCE = "JACK transport"
TRANSPORT_INTERVAL_S = 0.25  # JACK transport read this often: tempo changes followed within a beat
STATUS_INTERVAL_S = 5.0  # STATUS= for `systemctl status`, resent only when it changed
RELEASE_TYPES = ("note_off", "control_change")  # kept under load: they end notes
INPUT_BATCH = 32  # input messages folded between two generation polls
GENERATE_STEPS = 16  # events generated per loop turn: the first ones go out while the rest are made
MAX_LAG_S = 0.1  # a queued new note older than this is dropped
SWITCH_INTERVAL_S = 0.0005  # Python's default 5 ms GIL slice would make the scheduler late


def build_engine(config: Config, model: StepModel, now: float, **options) -> Engine:
    return Engine(model, config, make_rng(config.engine.seed), now, clock=time.perf_counter, **options)


class Periodic:
    """Something the loop does every ``interval`` seconds (None or 0: never on its own)."""

    def __init__(self, interval: float | None, now: float, first: float | None = None) -> None:
        self.interval = interval or None
        self.next = (now + self.interval if first is None else first) if self.interval else float("inf")

    def due(self, now: float) -> bool:
        """Whether it is time; if so, the next time is one interval from now."""
        if now < self.next:
            return False
        self.next = now + self.interval if self.interval else float("inf")
        return True


class Requests:
    """What signals ask of the running daemon. The handlers only set flags (no locks, no I/O
    in a signal handler); the loop, which wakes at least every LOOP_MAX_WAIT_S, acts on them.
    SIGTERM/SIGINT: stop and exit 0; SIGHUP: reload; SIGUSR1: log the telemetry."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.stop_signal: int | None = None  # the first that asked
        self.reload = threading.Event()
        self.report = threading.Event()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())
        signal.signal(signal.SIGUSR1, lambda *_: self.report.set())

    def _on_stop(self, signum: int, _frame) -> None:
        self.stop_signal = self.stop_signal or signum
        self.stop.set()


class Heartbeat:
    """systemd's view of the loop: watchdog pings, sent from the loop and only while the
    scheduler thread lives (a wedged engine or a dead scheduler stops them, and systemd
    restarts improvd), and STATUS= every few seconds (resent only when it changed)."""

    def __init__(self, notifier: Notifier, watchdog: bool, now: float) -> None:
        self.notifier = notifier
        every = notifier.watchdog_interval if watchdog else None
        self.ping = Periodic(every, now, first=now)
        self.status = Periodic(min(STATUS_INTERVAL_S, every or STATUS_INTERVAL_S), now, first=now)
        self.scheduler_died = False
        if notifier.watchdog_interval and not watchdog:
            log.warning("systemd expects watchdog pings (WatchdogSec=) but [service] watchdog = false: "
                        "it will kill improvd after %.1f s", 2 * notifier.watchdog_interval)

    def beat(self, now: float, scheduler_alive: Callable[[], bool], status: Callable[[], str]) -> None:
        if not self.notifier.active:
            return
        if self.ping.due(now):
            if scheduler_alive():
                self.notifier.watchdog()
            elif not self.scheduler_died:
                self.scheduler_died = True
                log.error("the scheduler thread has died; withholding watchdog pings so systemd restarts us")
        if self.status.due(now):
            self.notifier.status(status())


class Inbox:
    """The input's queue: bounded, and under a flood it drops new notes before it drops
    anything that ends one."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.items: deque[tuple[float, mido.Message]] = deque()
        self.ready = threading.Condition()
        self.telemetry = telemetry

    def put(self, message: mido.Message, arrival: float) -> None:
        with self.ready:
            size = len(self.items)
            if size >= HARD_MAX_PENDING or (size >= MAX_PENDING and message.type not in RELEASE_TYPES):
                self.telemetry.count("input_dropped")
                return
            self.items.append((arrival, message))
            self.ready.notify()

    def take(self, timeout: float, limit: int) -> list[tuple[float, mido.Message]]:
        """Up to ``limit`` messages, oldest first; a flood is worked off between polls so
        generation keeps up with the output schedule. While more than ``limit`` wait, new
        notes older than MAX_LAG_S are dropped (counted): under a flood, the state follows
        the player, not the backlog. A phrase that waited through a busy moment is kept."""
        with self.ready:
            if not self.items and timeout > 0:
                self.ready.wait(timeout)
            taken = []
            stale = time.monotonic() - MAX_LAG_S if len(self.items) > limit else -float("inf")
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
        self.requests = Requests()
        self.inbox = Inbox(self.telemetry)
        self.model: StepModel | None = None
        self.engine: Engine | None = None
        self.scheduler: Scheduler | None = None
        realtime = config.service.realtime_priority if config.service.realtime else 0
        self.session = MidiSession(config.ports, self.inbox.put, max(1, realtime - 1) if realtime else 0)
        self.report = Report(self.telemetry, self.session)

    # ---- lifecycle ---------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        self.requests.install()

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
            self.session.open()
            # The seed is folded in as if just played, ending now: the engine's stream must open
            # before its first note, or every message would be clamped to one instant.
            self.engine = build_engine(self.config, self.model, time.monotonic() - (seed[-1][0] if seed else 0.0),
                                       handed_over_s=self.session.lead_s, generate_steps=GENERATE_STEPS)
            realtime = self.config.service.realtime_priority if self.config.service.realtime else 0
            self.scheduler = Scheduler(self.session.send, self.telemetry, realtime_priority=realtime,
                                       lead_s=self.session.lead_s)
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            self.scheduler.start()
            # The engine loop (this thread) feeds the sender: realtime too, one step below it.
            raise_priority(max(1, realtime - 1) if realtime else 0, "engine")
            self._startup_messages(seed)
            self.notifier.ready(self.status())
            log.info("ready: %s", self.status())
            self._loop()
            if self.requests.stop_signal is not None:
                log.info("stopping on %s", signal.Signals(self.requests.stop_signal).name)
        except BaseException as err:
            failure = f"failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
            raise
        finally:
            self.notifier.stopping(failure or "stopping")
            if self.scheduler is not None:
                self.scheduler.stop()
            self.session.close()
            if self.scheduler is not None:
                log.info("stopped: %s", self.telemetry_line())
            self.notifier.close()
        return 0

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
        now = time.monotonic()
        heartbeat = Heartbeat(self.notifier, self.config.service.watchdog, now)
        report = Periodic(self.config.telemetry.interval_s, now)
        port_check = Periodic(self.config.ports.reconnect_s, now)
        transport = Periodic(TRANSPORT_INTERVAL_S, now)
        while not self.requests.stop.is_set():
            now = time.monotonic()
            wake = self.engine.next_wakeup(now)
            timeout = LOOP_MAX_WAIT_S if wake is None else min(LOOP_MAX_WAIT_S, max(0.0, wake - now))
            for arrival, message in self.inbox.take(timeout, INPUT_BATCH):
                self.scheduler.submit(self.engine.on_message(message, arrival, time.monotonic()))
                self.telemetry.record("input_to_state", time.monotonic() - arrival)
            # Silence is judged at the oldest input still queued, not at the clock.
            self.scheduler.submit(self.report.onsets(self.engine, self.engine.poll(min(time.monotonic(),
                                                                                       self.inbox.oldest()))))
            self.report.choice(self.engine.take_choice())
            now = time.monotonic()
            heartbeat.beat(now, self.scheduler.alive, self.status)
            if transport.due(now):
                self._follow_transport()
            if port_check.due(now) or self.session.changed():
                for event in self.session.check():
                    self._on_port_event(event)
            if report.due(now) or self.requests.report.is_set():
                self.requests.report.clear()
                log.info("telemetry: %s", self.telemetry_line())
            if self.requests.reload.is_set():
                self.requests.reload.clear()
                self.reload()

    def _follow_transport(self) -> None:
        """While a JACK timebase master (a DAW) rolls the transport, its tempo and bar are the
        beat improvd plays on; when it stops, MIDI clock or the tempo set by hand again."""
        beat = self.engine.beat
        position = self.session.transport()
        if position is not None and position.rolling:
            beat.set_tempo(TempoMap.of_transport(position.bpm, position.bar, position.beat, position.tick,
                                                 position.ticks_per_beat, position.beats_per_bar, position.at,
                                                 position.beat_type),
                           TRANSPORT_SOURCE)
        elif beat.fixed is not None and beat.fixed[1] == TRANSPORT_SOURCE:
            beat.set_tempo(None)

    def _on_port_event(self, event: Event) -> None:
        """A lost player's keys are released. When the output's peer goes, the answer is
        stopped and its notes forgotten while nothing can hear them (the release goes
        nowhere), so the peer that comes back gets all-notes-off and no stray NOTE_OFF. A
        server that went takes both; one that is back gets all-notes-off."""
        now = time.monotonic()
        if event in (Event.INPUT_LOST, Event.SERVER_LOST):
            self.scheduler.submit(self.engine.release_player(now))
            self.scheduler.release_echoed(now)  # and whatever of the player's the room still hears
        if event in (Event.OUTPUT_LOST, Event.SERVER_LOST):
            self._silence()
        if event is Event.SERVER_BACK:
            self.scheduler.lead_s = self.engine.handed_over_s = self.session.lead_s
        if event is Event.OUTPUT_BACK or (event is Event.SERVER_BACK and self.session.connected):
            self._all_notes_off()
        if event in (Event.SERVER_LOST, Event.SERVER_BACK):
            self.notifier.status(self.status())

    def _silence(self) -> None:
        """Stop the answer and forget its notes: nothing can hear their release."""
        self.scheduler.forget_all()
        self.scheduler.submit(self.engine.panic(time.monotonic()))

    def _all_notes_off(self) -> None:
        try:
            for message in all_notes_off():
                self.session.send(message)
        except ImprovdError as err:  # gone again already: the next check sees it
            log.warning("output port: %s", err)

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
        self.engine = build_engine(config, model, time.monotonic(), handed_over_s=self.session.lead_s,
                                   generate_steps=GENERATE_STEPS)
        log.info("reloaded %s (model %s): %s", config.source, config.model.path,
                 ", ".join(changes) or "no setting changed")
        self.notifier.ready(self.status())

    # ---- status ----------------------------------------------------------------------------

    def status(self) -> str:
        return self.report.status(self.config, self.engine, self.model)

    def telemetry_line(self) -> str:
        return self.report.line(self.engine, self.model)
