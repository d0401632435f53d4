"""The stream the model hears: one event sequence, the player's and improvd's, in time order.

A ``Line`` is where a stream stands (time, sounding keys, velocity, pedal, the notes improvd
holds) and what the grammar needs to know there; the engine's stream and every candidate
answer are one. A ``Stream`` is the engine's line together with the model state it has led
to, stepped one token at a time, and restorable from a ``Snapshot``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mido

from improvd import vocab
from improvd.memory import Context, Memory
from improvd.model import State, StepModel
from improvd.sampler import Grammar


@dataclass
class Line:
    """A stream's position, enough to build its grammar mask."""

    encoder: vocab.Encoder
    own_notes: dict[int, int] = field(default_factory=dict)  # pitch -> start tick of improvd's notes
    after_velocity: bool = False  # the last token was a VELOCITY
    note_first: bool = False  # an answer opens on a note: no pause before it
    context: Context = Context()  # the player memory's, after this line's events

    @property
    def time(self) -> float:
        return self.encoder.tick * vocab.TICK_S

    def player_keys_down(self) -> bool:
        """A key or the pedal the player holds (a held note is not silence)."""
        return bool(self.encoder.sounding - self.own_notes.keys())

    def grammar(self, end_tick: int | None) -> Grammar:
        return Grammar(self.own_notes, frozenset(self.encoder.sounding), self.encoder.tick,
                       self.encoder.velocity_bin, self.after_velocity, self.note_first, end_tick)

    def apply(self, token: int) -> vocab.Event:
        """Follow a generated token; the event it is."""
        self.encoder.apply(token)
        event = vocab.decode(token)
        self.after_velocity = event.type is vocab.EventType.VELOCITY
        if event.type is vocab.EventType.NOTE_ON:
            self.own_notes[event.value] = self.encoder.tick
            self.note_first = False
        elif event.type is vocab.EventType.NOTE_OFF:
            self.own_notes.pop(event.value, None)
        return event

    def velocity(self) -> int:
        """The MIDI velocity a NOTE_ON plays at here."""
        velocity_bin = self.encoder.velocity_bin
        return vocab.bin_to_velocity(vocab.velocity_to_bin(vocab.DEFAULT_VELOCITY) if velocity_bin is None
                                     else velocity_bin)

    def copy(self) -> Line:
        return Line(self.encoder.copy(), dict(self.own_notes), self.after_velocity, self.note_first, self.context)


@dataclass(frozen=True)
class Snapshot:
    state: State
    line: Line


class Stream:
    """The engine's line and the model state it has led to. The state is the stream's own
    (``model.run`` on it): the model object is shared, its state never changed. The player
    memory learns the player's events from here, and hears improvd's without learning them
    (learning its own answers would feed a loop of self-imitation)."""

    def __init__(self, model: StepModel, start: float, channel: int, memory: Memory) -> None:
        self.model = model
        self.memory = memory
        self.channel = channel  # 0-based, for the messages generated tokens play
        self.line = Line(vocab.Encoder(start))
        self.state = model.initial()

    @property
    def time(self) -> float:
        return self.line.time

    @property
    def encoder(self) -> vocab.Encoder:
        return self.line.encoder

    def fold(self, tokens: list[int], played_at: float | None = None) -> None:
        """Step the model through tokens the input made (the line already has them); the
        memory learns them if they are what the player played at ``played_at``."""
        for token in tokens:
            logits, h, c = self.model.run([token], self.state.h, self.state.c)
            self.state = State(h, c, logits)
            context = self.line.context
            self.line.context = (self.memory.advance(context, token) if played_at is None
                                 else self.memory.learn(context, token, played_at))

    def play(self, token: int) -> mido.Message | None:
        """Fold a generated token in; the MIDI message it plays, if any."""
        self.fold([token])
        event = self.line.apply(token)
        if event.type is vocab.EventType.NOTE_ON:
            return mido.Message("note_on", note=event.value, velocity=self.line.velocity(), channel=self.channel)
        if event.type is vocab.EventType.NOTE_OFF:
            return mido.Message("note_off", note=event.value, velocity=0, channel=self.channel)
        return None

    def snapshot(self) -> Snapshot:
        return Snapshot(self.state, self.line.copy())

    def restore(self, snapshot: Snapshot) -> None:
        self.state = snapshot.state
        self.line = snapshot.line.copy()
