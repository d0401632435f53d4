"""The engine: folds what the player does into the LSTM state and decides what to play.

Pure by design: no threads, no ports, no clock of its own. Every call takes ``now`` (seconds
on the caller's monotonic clock) and returns the messages to play with their times, so tests
run it in simulated time, deterministically with a seeded RNG.

The model hears one stream: the player's events and its own, in time order. Generated
events run up to ``lookahead`` ahead of ``now``; before each one the state is journaled, so
when the player comes in, everything not yet heard is thrown away by restoring the state
at the first unplayed event, and the player's event is folded in after what really sounded.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field

import mido
import numpy as np

from improvd import vocab
from improvd.candidates import Choice, Line, Plan, Profile, Search, Weights
from improvd.model import State, StepModel
from improvd.sampler import Grammar, Sampler

log = logging.getLogger(__name__)

MODES = ("call-response", "duet")
ALL_NOTES_OFF_CCS = (120, 123)  # All Sound Off, All Notes Off: always a panic, and the player's keys up
ALL_SOUND_OFF_CC, RESET_CONTROLLERS_CC = 120, 121  # ... and the pedal too; the pedal alone
# Generated output resumes no sooner than this after ``now``: longer than regenerating the
# lookahead takes (bench/duet_regen.py: p99 under 5 ms with both cores busy and SCHED_FIFO).
REACTION_S = 0.02


@dataclass
class Settings:
    mode: str = "call-response"
    silence_ms: float = 500.0
    min_answer_s: float = 2.0
    max_answer_s: float = 8.0
    answer_ratio: float = 1.0
    lookahead_ms: float = 250.0
    input_channels: frozenset[int] = frozenset()  # 0-based; empty = every channel
    output_channel: int = 0  # 0-based
    passthrough: bool = False
    temperature_cc: int = 1
    answer_length_cc: int = 2
    mode_cc: int = 80
    panic_cc: int = 123
    clock: bool = True
    candidates: int = 1  # call-response answers chosen among this many; 1: sampled as they play
    weights: Weights = field(default_factory=Weights)
    candidate_steps: int = 2  # candidate events per poll: small, so input is never kept waiting
    max_held_s: float = 10.0  # a player's key held this long with no other input counts as released


@dataclass(frozen=True)
class Timed:
    """A message to send at ``time``; ``answer_deadline`` marks an answer's first note,
    ``passthrough`` the player's own notes echoed to the output."""

    time: float
    message: mido.Message
    answer_deadline: float | None = None
    passthrough: bool = False


@dataclass
class Reply:
    """What the scheduler must do: drop what it holds for later than ``cancel_after``;
    if ``release``, drop every generated message it holds and release every generated
    note still sounding; then play ``messages``."""

    messages: list[Timed] = field(default_factory=list)
    cancel_after: float | None = None
    release: bool = False

    def extend(self, other: Reply) -> Reply:
        if other.cancel_after is not None:
            earlier = other.cancel_after if self.cancel_after is None else min(self.cancel_after, other.cancel_after)
            self.cancel_after = earlier
            self.messages = [m for m in self.messages if m.time <= other.cancel_after]
        self.release |= other.release
        self.messages += other.messages
        return self


@dataclass(frozen=True)
class _Snapshot:
    model: State
    encoder: vocab.Encoder
    own_notes: dict[int, int]
    after_velocity: bool
    note_first: bool
    first_note_pending: bool


@dataclass(frozen=True)
class _JournalEntry:
    heard_at: float  # when the token's effect has sounded (a shift: when it ends)
    before: _Snapshot


@dataclass
class Counters:
    notes_in: int = 0
    notes_out: int = 0
    messages_ignored: int = 0
    answers: int = 0
    barge_ins: int = 0
    rollbacks: int = 0


def _ticks(seconds: float) -> int:
    return round(seconds / vocab.TICK_S)


class Engine:
    def __init__(self, model: StepModel, sampler: Sampler, settings: Settings, now: float) -> None:
        self.model = model
        self.sampler = sampler
        self.settings = settings
        self.counters = Counters()
        self.playing = True  # MIDI clock Stop pauses, Start/Continue resumes
        self.clock_bpm: float | None = None
        self._last_clock: float | None = None
        self.model.reset(1)
        # The stream opens with the one-second gap training puts between pieces.
        self.encoder = vocab.Encoder(now - vocab.MAX_SHIFT_TICKS * vocab.TICK_S)
        self.own_notes: dict[int, int] = {}
        self.after_velocity = False
        self.note_first = False
        self.first_note_pending = False
        self.journal: list[_JournalEntry] = []
        self.answering = False
        # The answer starts exactly on the silence deadline, not on the 10 ms grid the
        # model counts time in: output times are grid times plus this offset (< 5 ms).
        self.output_offset = 0.0
        self.answer_end = 0.0
        self.answer_deadline = 0.0
        self.next_answer_length: float | None = None
        self.phrase_start: float | None = None
        self._phrase_start_before_answer: float | None = None
        self.last_player_time = now
        self.phrase_notes: list[tuple[int, int]] = []  # (pitch, velocity) of the phrase's notes
        self.search: Search | None = None  # candidate answers for the coming deadline
        self.script: deque[int] = deque()  # the chosen answer's events, not yet played
        self.choice: Choice | None = None  # the last choice, until the daemon takes it
        self._fold(self.encoder.advance(now))

    # ---- what the daemon calls ---------------------------------------------------------

    def on_message(self, message: mido.Message, now: float) -> Reply:
        """A message from the player, arriving at ``now``. Never raises on odd input."""
        kind = message.type
        if kind in ("start", "continue", "stop", "clock"):
            return self._clock(kind, now)
        channel = getattr(message, "channel", None)
        if channel is None or (self.settings.input_channels and channel not in self.settings.input_channels):
            self.counters.messages_ignored += 1
            return Reply()
        if kind == "control_change" and message.control != vocab.SUSTAIN_CC:
            return self._control(message.control, message.value, now)
        if kind not in ("note_on", "note_off", "control_change"):
            self.counters.messages_ignored += 1
            return Reply()
        reply = Reply()
        if self.settings.passthrough and kind != "control_change":
            reply.messages.append(Timed(now, message, passthrough=True))
        now = max(now, self._committed_time())
        probe = self.encoder.copy()
        if not probe.feed(message, now) and vars(probe) == vars(self.encoder):
            return reply  # changes nothing: a NOTE_OFF for a key that is not down, a repeated pedal value
        is_strike = kind == "note_on" and message.velocity > 0
        reply.extend(self._rollback(now))
        if is_strike:
            self.counters.notes_in += 1
            if self.answering and self.settings.mode == "call-response":
                self.counters.barge_ins += 1
                reply.extend(self._stop_generating(now))
            if self.phrase_start is None:
                self.phrase_start = now
                self.phrase_notes = []
            self.phrase_notes.append((message.note, message.velocity))
        self._fold(self.encoder.feed(message, now))
        self.last_player_time = now
        return reply

    def poll(self, now: float) -> Reply:
        """Start an answer when the player has gone quiet, and keep generation ``lookahead``
        ahead of ``now``."""
        self.heard(now)
        if not self.playing:
            return Reply()
        reply = self._release_stale_keys(now)
        if self.settings.mode == "call-response" and not self.answering:
            deadline = self.silence_deadline()
            if deadline is not None and self.settings.candidates > 1:
                self._search(deadline, now)
            if deadline is not None and now >= deadline - self._lookahead():
                self._start_answer(deadline, now)
        if self.answering or self.settings.mode == "duet":
            self._resume_no_sooner_than(now + REACTION_S)
            reply.messages += self._generate_until(now + self._lookahead())
        return reply

    def next_wakeup(self, now: float) -> float | None:
        """When ``poll`` next has work to do; None while only input can change anything."""
        if not self.playing:
            return None
        if self.answering or self.settings.mode == "duet":
            return max(now, self._stream_time() - self._lookahead() / 2)
        deadline = self.silence_deadline()
        if deadline is None:
            return None
        if self.settings.candidates > 1 and (self.search is None or not self.search.done):
            return now  # candidates to advance
        return max(now, deadline - self._lookahead())

    def take_choice(self) -> Choice | None:
        """The candidate choice made since the last call, for telemetry."""
        choice, self.choice = self.choice, None
        return choice

    def silence_deadline(self) -> float | None:
        """When the player's phrase counts as ended: ``silence_ms`` after the last event,
        with every key up (a held note or pedal is not silence)."""
        if self.phrase_start is None or self._player_keys_down():
            return None
        return self.last_player_time + self.settings.silence_ms / 1000

    def seed(self, messages: list[tuple[float, mido.Message]], now: float, length: float | None) -> Reply:
        """Prime the state with a motif as if it had just been played, ending at ``now``;
        the answer that follows lasts ``length`` seconds (or follows the phrase)."""
        if not messages:
            return Reply()
        end = messages[-1][0]
        reply = Reply()
        for time, message in messages:
            reply.extend(self.on_message(message, now - end + time))
        self.next_answer_length = length
        return reply

    def release_player(self, now: float, keys: bool = True, pedal: bool = True) -> Reply:
        """The player's connection went, or they sent All Notes Off: lift their keys (and
        pedal), which will never send their own releases, so that silence can be heard again."""
        self.heard(now)
        player = self.encoder.sounding - self.own_notes.keys()
        held = sorted(player if pedal else player - self.encoder.held_by_pedal) if keys else []
        reply = Reply()
        channel = min(self.settings.input_channels, default=0)
        if pedal and self.encoder.pedal_down:
            reply.extend(self.on_message(mido.Message("control_change", control=vocab.SUSTAIN_CC, value=0,
                                                      channel=channel), now))
        for pitch in held:
            reply.extend(self.on_message(mido.Message("note_off", note=pitch, channel=channel), now))
        return reply

    def panic(self, now: float) -> Reply:
        """Stop the current answer or duet line and release its notes."""
        self.phrase_start = None
        return self._stop_generating(now, rollback=True)

    def set_mode(self, mode: str, now: float) -> Reply:
        if mode not in MODES or mode == self.settings.mode:
            return Reply()
        log.info("mode: %s -> %s", self.settings.mode, mode)
        reply = self.panic(now)
        self.settings.mode = mode
        return reply

    # ---- controls ------------------------------------------------------------------------

    def _release_stale_keys(self, now: float) -> Reply:
        """A key held ``max_held_s`` with no other input from the player counts as released:
        its NOTE_OFF may never come (a player gone mid-note), and silence must."""
        if not self._player_keys_down() or now - self.last_player_time < self.settings.max_held_s:
            return Reply()
        held = sorted(self.encoder.sounding - self.own_notes.keys())
        log.warning("player keys %s held %.0f s with no other input: counted as released", held,
                    now - self.last_player_time)
        return self.release_player(now)

    def _control(self, control: int, value: int, now: float) -> Reply:
        s = self.settings
        if control == RESET_CONTROLLERS_CC:
            return self.release_player(now, keys=False)
        if control == s.panic_cc or control in ALL_NOTES_OFF_CCS:
            reply = self.panic(now)
            if control in ALL_NOTES_OFF_CCS:
                reply.extend(self.release_player(now, pedal=control == ALL_SOUND_OFF_CC))
            return reply
        if control == s.temperature_cc:
            # 0..127 -> 0.25..2.0, logarithmic so the middle of the knob is 0.7.
            self.sampler.settings.temperature = 0.25 * 8 ** (value / 127)
        elif control == s.answer_length_cc:
            s.answer_ratio = 0.25 * 16 ** (value / 127)  # a quarter .. four times the phrase
        elif control == s.mode_cc:
            return self.set_mode("duet" if value >= 64 else "call-response", now)
        else:
            self.counters.messages_ignored += 1
        return Reply()

    def _clock(self, kind: str, now: float) -> Reply:
        if kind == "clock":
            if self._last_clock is not None and now > self._last_clock:
                bpm = 60 / (24 * (now - self._last_clock))
                self.clock_bpm = bpm if self.clock_bpm is None else 0.9 * self.clock_bpm + 0.1 * bpm
            self._last_clock = now
            return Reply()
        if not self.settings.clock:
            return Reply()
        if kind == "stop":
            reply = self.panic(now)
            self.playing = False
            return reply
        self.playing = True
        return Reply()

    # ---- the stream ------------------------------------------------------------------------

    def _lookahead(self) -> float:
        return self.settings.lookahead_ms / 1000

    def _stream_time(self) -> float:
        return self.encoder.tick * vocab.TICK_S

    def _committed_time(self) -> float:
        """Player events cannot be placed before generated events that already sounded."""
        return self.journal[0].before.encoder.tick * vocab.TICK_S if self.journal else self._stream_time()

    def _player_keys_down(self) -> bool:
        return bool(self.encoder.sounding - self.own_notes.keys())

    def _fold(self, tokens: list[int]) -> None:
        self.search = None  # the stream changes under it: candidates from before are stale
        for token in tokens:
            self.model.step([token])

    def _snapshot(self) -> _Snapshot:
        return _Snapshot(self.model.snapshot(), self.encoder.copy(), dict(self.own_notes),
                         self.after_velocity, self.note_first, self.first_note_pending)

    def _restore(self, snapshot: _Snapshot) -> None:
        self.model.restore(snapshot.model)
        self.encoder = snapshot.encoder.copy()
        self.own_notes = dict(snapshot.own_notes)
        self.after_velocity = snapshot.after_velocity
        self.note_first = snapshot.note_first
        self.first_note_pending = snapshot.first_note_pending
        self.script.clear()

    def heard(self, now: float) -> None:
        """Forget the snapshots of events that have sounded by ``now``: they can no longer
        be undone. The daemon calls it with the real time before handing over input that
        arrived earlier, so a rollback never takes back a note already sent."""
        heard = 0
        while heard < len(self.journal) and self.journal[heard].heard_at <= now:
            heard += 1
        del self.journal[:heard]

    def _rollback(self, now: float) -> Reply:
        """Throw away every generated event not yet heard at ``now``."""
        self.heard(now)
        if not self.journal:
            return Reply()
        self.counters.rollbacks += 1
        self._restore(self.journal[0].before)
        self.journal.clear()
        if self.settings.mode == "call-response":
            time = self._stream_time() + self.output_offset
            if time < self.answer_deadline - 1e-9:  # the answer had not begun: nothing sounded
                self.answering = False
                self.phrase_start = self._phrase_start_before_answer
                self.counters.answers -= 1
            else:  # resume where it was heard up to, ending it if its end was reached
                self.answering = time < self.answer_end or bool(self.own_notes)
        return Reply(cancel_after=now)

    def _stop_generating(self, now: float, rollback: bool = False) -> Reply:
        """End the answer or duet line at ``now``: its sounding notes are released, in the
        state as in the room."""
        reply = self._rollback(now) if rollback else Reply()
        self.answering = False
        self.output_offset = 0.0
        self.script.clear()
        self._fold(self.encoder.advance(now))
        for pitch in sorted(self.own_notes):
            self._apply(vocab.NOTE_OFF_OFFSET + pitch)
        self.own_notes.clear()
        return reply.extend(Reply(cancel_after=now, release=True))

    def _phrase_length(self) -> float:
        start = self.last_player_time if self.phrase_start is None else self.phrase_start
        return max(0.0, self.last_player_time - start)

    def _plan(self, deadline: float) -> Plan:
        s = self.settings
        length = self.next_answer_length
        if length is None:
            length = min(max(s.answer_ratio * self._phrase_length(), s.min_answer_s), s.max_answer_s)
        return Plan(deadline, deadline + length, deadline - _ticks(deadline) * vocab.TICK_S)

    def _search(self, deadline: float, now: float) -> None:
        """Advance the candidate answers for ``deadline``, started the moment silence begins;
        they must be ready when the answer starts, ``lookahead`` before the deadline."""
        if now >= deadline - self._lookahead():
            return
        if self.search is None:
            line = Line(self.encoder.copy(), dict(self.own_notes))
            phrase = Profile.of(self.phrase_notes, self._phrase_length())
            start = State(self.model.h, self.model.c, self.model.logits)
            self.search = Search(self.model, self.sampler, start, line, self._plan(deadline),
                                 self.settings.candidates, phrase, self.settings.weights)
        self.search.advance(self.settings.candidate_steps, now)

    def _choose(self, plan: Plan, now: float) -> None:
        """Script the best candidate ready for ``plan``; with none, the answer is sampled."""
        search, self.search = self.search, None
        if search is None or search.plan != plan:
            return
        self.choice = search.choose(now)
        if self.choice is None:
            return
        self.script = deque(self.choice.tokens)
        c = self.choice
        log.debug("answer chosen among %d candidates (%d scored, %s after %d steps): #%d, score %.3f, margin %.3f; "
                  "generation %.1f ms, ready %s before the answer starts", c.candidates, c.scored,
                  "complete" if c.complete else "partial", c.steps, c.winner, c.score, c.margin, c.compute_s * 1e3,
                  "never" if c.slack_s is None else f"{c.slack_s * 1e3:.0f} ms")

    def _start_answer(self, deadline: float, now: float) -> None:
        plan = self._plan(deadline)
        self.next_answer_length = None
        if self.settings.candidates > 1:
            self._choose(plan, now)
        self.answering = True
        self.answer_deadline = deadline
        self.output_offset = plan.output_offset
        self.answer_end = plan.answer_end
        self._phrase_start_before_answer = self.phrase_start
        self.phrase_start = None
        self.counters.answers += 1
        for token in vocab.time_shift_tokens(_ticks(deadline) - self.encoder.tick):
            self._journal_and_apply(token)
        self.note_first = True  # the answer opens on a note at the deadline, not a pause
        self.first_note_pending = True

    def _resume_no_sooner_than(self, time: float) -> None:
        """After a rollback the stream stands at the player's event, i.e. at ``now`` or up to
        half a tick before it: an event sampled there would be due before it exists (the
        whole lookahead is generated before any of it is queued), so it could only be sent
        late. Time moves on to ``time`` first, in the state as in the room."""
        gap = math.ceil((time - self.output_offset) / vocab.TICK_S - 1e-9) - self.encoder.tick
        for token in vocab.time_shift_tokens(gap):
            self._journal_and_apply(token)

    def _generate_until(self, until: float) -> list[Timed]:
        messages: list[Timed] = []
        while True:
            time = self._stream_time()
            if self.answering and time + self.output_offset >= self.answer_end - 1e-9:
                messages += self._finish_answer()
                break
            if time >= until:
                break
            grammar = Grammar(self.own_notes, frozenset(self.encoder.sounding), self.encoder.tick,
                              self.encoder.velocity_bin, self.after_velocity, self.note_first,
                              _ticks(self.answer_end - self.output_offset) if self.answering else None)
            token = self._scripted(grammar)
            if token is None:
                token = self.sampler.sample(self.model.logits[0], grammar)
            message = self._journal_and_apply(token)
            if message is not None:
                deadline = None
                if message.type == "note_on" and self.first_note_pending:
                    self.first_note_pending = False
                    deadline = self.answer_deadline
                messages.append(Timed(time + self.output_offset, message, deadline))
        return messages

    def _scripted(self, grammar: Grammar) -> int | None:
        """The chosen answer's next event, while it lasts and the grammar still allows it;
        after it, the answer goes on sampled from where the chosen one got to."""
        if not self.script:
            return None
        token = self.script.popleft()
        if self.sampler.mask(grammar)[token]:
            return token
        self.script.clear()
        return None

    def _finish_answer(self) -> list[Timed]:
        self.answering = False
        self.script.clear()
        time = self._stream_time() + self.output_offset
        return [Timed(time, m) for m in (self._journal_and_apply(vocab.NOTE_OFF_OFFSET + p)
                                         for p in sorted(self.own_notes)) if m is not None]

    def _journal_and_apply(self, token: int) -> mido.Message | None:
        before = self._snapshot()
        message = self._apply(token)
        self.journal.append(_JournalEntry(self._stream_time() + self.output_offset, before))
        return message

    def _apply(self, token: int) -> mido.Message | None:
        """Feed a generated token to the model and the stream; the MIDI message it plays."""
        self.model.step([token])
        self.encoder.apply(token)
        event = vocab.decode(token)
        self.after_velocity = event.type is vocab.EventType.VELOCITY
        channel = self.settings.output_channel
        if event.type is vocab.EventType.NOTE_ON:
            self.own_notes[event.value] = self.encoder.tick
            self.note_first = False
            self.counters.notes_out += 1
            velocity = vocab.bin_to_velocity(self.encoder.velocity_bin
                                             if self.encoder.velocity_bin is not None
                                             else vocab.velocity_to_bin(vocab.DEFAULT_VELOCITY))
            return mido.Message("note_on", note=event.value, velocity=velocity, channel=channel)
        if event.type is vocab.EventType.NOTE_OFF:
            self.own_notes.pop(event.value, None)
            return mido.Message("note_off", note=event.value, velocity=0, channel=channel)
        return None


def make_rng(seed: int) -> np.random.Generator:
    """A seeded generator for reproducible runs, or fresh entropy when ``seed`` is -1."""
    return np.random.default_rng(None if seed < 0 else seed)
