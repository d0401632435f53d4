"""The engine: folds what the player does into the LSTM state and decides what to play.

Pure by design: no threads, no ports, no clock of its own. Every call takes ``now`` (seconds
on the caller's monotonic clock) and returns the messages to play with their times, so tests
run it in simulated time, deterministically with a seeded RNG. Nothing handed in is changed:
the musician's live knobs are the engine's own ``Live``. It sorts the player's input and
coordinates small parts: the stream (what the model has heard, one sequence of the player's
events and its own), the voice (what improvd generates ahead of time, journaled so the unheard
part can be taken back), the phrase (when to answer, for how long), the controls (CCs, clock),
the candidates, and the turns (the answer policy over them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import mido
import numpy as np

from improvd import vocab
from improvd.candidates import Candidates, Choice, Search
from improvd.config import Config, EngineConfig, Live, choices
from improvd.controls import CLOCK_MESSAGES, FORGET, PANIC, RELEASE_ALL, RELEASE_KEYS, RELEASE_PEDAL, Controls
from improvd.memory import Memory
from improvd.model import StepModel
from improvd.phrase import Phrase
from improvd.reply import Reply, Timed
from improvd.sampler import Sampler
from improvd.stream import Stream
from improvd.tempo import Beat
from improvd.turns import Turns
from improvd.voice import Voice

log = logging.getLogger(__name__)

MODES = choices(EngineConfig, "mode")
CANDIDATE_STEPS = 2  # candidate events per poll: small, so input is never kept waiting


@dataclass
class Counters:
    notes_in: int = 0
    notes_out: int = 0
    messages_ignored: int = 0
    answers: int = 0
    barge_ins: int = 0
    rollbacks: int = 0


class Engine:
    """Reads top to bottom: what the daemon calls, then the player's input.
    ``clock`` measures the candidates' compute time; ``candidate_steps`` is how far they
    go per poll (offline, with no clock to race, as far as they need). ``handed_over_s``:
    how far ahead of ``now`` output is already out of the scheduler's hands (a port that
    places messages at their frame gets them that early), so it counts as heard.
    ``generate_steps``: at most this many events generated per poll (live: the first ones are
    queued while the rest of the lookahead is still to come; None: the whole lookahead)."""

    def __init__(self, model: StepModel, config: Config, rng: np.random.Generator, now: float, *,
                 clock: Callable[[], float], candidate_steps: int = CANDIDATE_STEPS,
                 handed_over_s: float = 0.0, generate_steps: int | None = None) -> None:
        self.config = config
        self.handed_over_s = handed_over_s
        self.live = Live.of(config)
        self.counters = Counters()
        self.input_channels = frozenset(ch - 1 for ch in config.ports.input_channels)  # 0-based; empty: all
        self.sampler = Sampler(config.sampler, self.live, rng)
        self.beat = Beat(config.engine)  # tempo and grid: MIDI clock, a file's or JACK's map, or by hand
        self.controls = Controls(config.controls, self.beat)
        self.phrase = Phrase(config.engine, self.live, self.beat, now)
        self.memory = Memory(horizon_events=config.memory.horizon_events, horizon_s=config.memory.horizon_s)
        self.candidates = Candidates(model, self.sampler, config.sampler, candidate_steps, clock, self.memory,
                                     self.live)
        # The stream opens with the one-second gap training puts between pieces.
        self.stream = Stream(model, now - vocab.MAX_SHIFT_TICKS * vocab.TICK_S, config.ports.output_channel - 1,
                             self.memory)
        self.voice = Voice(self.stream, self.sampler, self.counters, self.live, self.beat)
        self.turns = Turns(config.engine, self.live, self.counters, self.stream, self.voice, self.phrase,
                           self.candidates, generate_steps)
        self.turns.fold(self.stream.encoder.advance(now))

    # ---- what the daemon calls ---------------------------------------------------------

    def on_message(self, message: mido.Message, arrival: float, now: float) -> Reply:
        """A message from the player that arrived at ``arrival``, handled at ``now``: what
        has sounded by ``now`` is never taken back. Never raises on odd input."""
        self.voice.journal.heard(now + self.handed_over_s)
        return self._hear(message, arrival)

    def poll(self, now: float) -> Reply:
        """Start an answer when the player has gone quiet, and keep generation ``lookahead``
        ahead of ``now``."""
        self.voice.journal.heard(now + self.handed_over_s)
        if not self.controls.playing:
            return Reply()
        return self._release_stale_keys(now).extend(self.turns.poll(now))

    def next_wakeup(self, now: float) -> float | None:
        """When ``poll`` next has work to do; None while only input can change anything."""
        return self.turns.next_wakeup(now) if self.controls.playing else None

    def search_answer(self, now: float) -> Search | None:
        """Advance the candidate answers for the coming silence deadline, as ``poll`` does
        while the player is silent; None once it is too late for them or while the phrase goes on."""
        return self.turns.search(now)

    def take_choice(self) -> Choice | None:
        """The candidate choice made since the last call, for telemetry."""
        return self.candidates.take_choice()

    def silence_deadline(self) -> float | None:
        return self.turns.deadline()

    def prime(self, messages: list[tuple[float, mido.Message]], now: float, length: float | None) -> Reply:
        """Prime the state with a motif as if it had just been played, ending at ``now``;
        the answer that follows lasts ``length`` seconds (or follows the phrase)."""
        if not messages:
            return Reply()
        end = messages[-1][0]
        reply = Reply()
        for time, message in messages:
            reply.extend(self._hear(message, now - end + time))
        self.phrase.next_length = length
        return reply

    def release_player(self, now: float, keys: bool = True, pedal: bool = True) -> Reply:
        """The player's connection went, or they sent All Notes Off: lift their keys (and
        pedal), which will never send their own releases, so that silence can be heard again."""
        self.voice.journal.heard(now + self.handed_over_s)
        encoder = self.stream.encoder
        player = encoder.sounding - self.stream.line.own_notes.keys()
        held = sorted(player if pedal else player - encoder.held_by_pedal) if keys else []
        channel = min(self.input_channels, default=0)
        releases = [mido.Message("note_off", note=pitch, channel=channel) for pitch in held]
        if pedal and encoder.pedal_down:
            releases.insert(0, mido.Message("control_change", control=vocab.SUSTAIN_CC, value=0, channel=channel))
        reply = Reply()
        for message in releases:
            reply.extend(self._hear(message, now))
        return reply

    def panic(self, now: float) -> Reply:
        """Stop the current answer or duet line and release its notes."""
        self.phrase.end()
        return self.turns.stop(now, take_back=True)

    def set_mode(self, mode: str, now: float) -> Reply:
        if mode not in MODES or mode == self.live.mode:
            return Reply()
        log.info("mode: %s -> %s", self.live.mode, mode)
        reply = self.panic(now)
        self.live.mode = mode
        self.memory.reset()  # what was learnt in one mode is not the player of the next
        return reply

    # ---- input ---------------------------------------------------------------------------

    def _hear(self, message: mido.Message, now: float) -> Reply:
        kind = message.type
        if kind in CLOCK_MESSAGES:
            action = self.controls.clock(kind, now, getattr(message, "pos", 0))
            return self.panic(now) if action == PANIC else Reply()
        channel = getattr(message, "channel", None)
        if channel is None or (self.input_channels and channel not in self.input_channels):
            self.counters.messages_ignored += 1
            return Reply()
        if kind == "control_change" and message.control != vocab.SUSTAIN_CC:
            return self._control(message.control, message.value, now)
        if kind not in ("note_on", "note_off", "control_change"):
            self.counters.messages_ignored += 1
            return Reply()
        reply = Reply()
        if self.config.ports.passthrough and kind != "control_change":
            reply.messages.append(Timed(now, message, passthrough=True))
        now = max(now, self.voice.committed_time())
        probe = self.stream.encoder.copy()
        if not probe.feed(message, now) and vars(probe) == vars(self.stream.encoder):
            return reply  # changes nothing: a NOTE_OFF for a key that is not down, a repeated pedal value
        reply.extend(self.turns.take_back(now))
        if kind == "note_on" and message.velocity > 0:
            self.counters.notes_in += 1
            reply.extend(self.turns.barge_in(now))
            self.phrase.strike(message.note, message.velocity, now)
            self.beat.heard_note(now)
        tokens = self.stream.encoder.feed(message, now)
        for token in tokens:
            if vocab.NOTE_OFF_OFFSET <= token < vocab.TIME_SHIFT_OFFSET:
                self.phrase.release(token - vocab.NOTE_OFF_OFFSET, now)
        self.turns.fold(tokens, played_at=now)
        self.phrase.last_heard = now
        return reply

    def _control(self, control: int, value: int, now: float) -> Reply:
        request = self.controls.control(control, value)
        if request is None:
            self.counters.messages_ignored += 1
            return Reply()
        name, setting = request
        if setting in (RELEASE_KEYS, RELEASE_ALL, RELEASE_PEDAL):
            reply = self.panic(now) if name == PANIC else Reply()
            return reply.extend(self.release_player(now, keys=setting != RELEASE_PEDAL,
                                                    pedal=setting != RELEASE_KEYS))
        if name == PANIC:
            return self.panic(now)
        if name == "mode":
            return self.set_mode(setting, now)
        if name == FORGET:
            self.memory.reset()
            return Reply()
        setattr(self.live, name, setting)
        return Reply()

    def _release_stale_keys(self, now: float) -> Reply:
        """A key held ``max_held_s`` with no other input from the player counts as released:
        its NOTE_OFF may never come (a player gone mid-note), and silence must."""
        idle = now - self.phrase.last_heard
        if not self.stream.line.player_keys_down() or idle < self.config.engine.max_held_s:
            return Reply()
        held = sorted(self.stream.encoder.sounding - self.stream.line.own_notes.keys())
        log.warning("player keys %s held %.0f s with no other input: counted as released", held, idle)
        return self.release_player(now)
