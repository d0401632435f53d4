"""What the running daemon says about itself: the figures it records as it plays, the status
line systemd shows (``systemctl status``), and the telemetry line it logs."""

from __future__ import annotations

import logging
import time

from improvd.candidates import Choice
from improvd.config import Config
from improvd.engine import Engine
from improvd.model import StepModel
from improvd.reply import Reply
from improvd.session import MidiSession
from improvd.telemetry import Telemetry

log = logging.getLogger(__name__)


class Report:
    """Reads the engine, the model and the session handed to each call (a reload replaces
    the first two); keeps only what the lines need between calls."""

    def __init__(self, telemetry: Telemetry, session: MidiSession) -> None:
        self.telemetry, self.session = telemetry, session
        self.last_choice: Choice | None = None
        self._last_steps = (time.monotonic(), 0)
        self.tempo_source: str | None = None  # where the tempo comes from, as last logged

    def onsets(self, engine: Engine, reply: Reply) -> Reply:
        """How far each generated onset is scheduled from the grid, while a tempo is known;
        a log line when the tempo's source changes."""
        now = time.monotonic()
        tempo = engine.beat.tempo(now)
        if (tempo and tempo[1]) != self.tempo_source:
            self.tempo_source = tempo and tempo[1]
            log.info("tempo: %s", f"{tempo[0].bpm_at(now):.1f} bpm ({tempo[1]})" if tempo else "none: free time")
        for timed in reply.messages:
            if timed.message.type == "note_on" and timed.message.velocity and not timed.passthrough:
                distance = engine.beat.distance(timed.time, now)
                if distance is not None:
                    self.telemetry.record("onset_to_grid", distance)
        return reply

    def choice(self, choice: Choice | None) -> None:
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

    def status(self, config: Config, engine: Engine | None, model: StepModel) -> str:
        session = self.session
        waiting = [session.waiting()] if session.waiting() else []
        parts = waiting + [f"mode {engine.live.mode if engine else config.engine.mode}",
                           session.ports_text(), f"model on {model.provider}"]
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

    def line(self, engine: Engine | None, model: StepModel | None) -> str:
        """The telemetry line: the series and counters, the engine's and the session's counters."""
        extra: dict[str, object] = {}
        if engine is not None:
            c = engine.counters
            extra.update(notes_in=c.notes_in, notes_out=c.notes_out, answers=c.answers,
                         barge_ins=c.barge_ins, ignored=c.messages_ignored,
                         memory_strength=round(engine.live.memory_strength, 3),
                         memory_events=engine.memory.events)
        if model is not None:
            now, steps = time.monotonic(), model.steps
            last_time, last_steps = self._last_steps
            extra["model_steps"] = steps
            extra["model_steps_per_s"] = (steps - last_steps) / max(1e-9, now - last_time)
            self._last_steps = (now, steps)
        if self.last_choice is not None:
            extra.update(last_winner=self.last_choice.winner, last_margin=self.last_choice.margin)
        extra.update(self.session.counters())
        return self.telemetry.line(extra)
