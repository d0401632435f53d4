"""Shared by the engine tests: the shipped model, a token-recording model, and a 'room'
that plays replies the way the scheduler does, in simulated time."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import mido
import numpy as np

from improvd.config import SECTIONS, Config
from improvd.engine import CANDIDATE_STEPS, Engine
from improvd.model import State, StepModel
from improvd.outbox import SETTLE, Outbox
from improvd.reply import Reply, Timed

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = PROJECT_ROOT / "exported" / "improvd.onnx"


class StatefulModel(StepModel):
    """A StepModel that holds the state of ``batch`` rows itself: for tests of the model alone."""

    def __init__(self, onnx_path, device: str = "auto", batch: int = 1) -> None:
        super().__init__(onnx_path, device)
        self.restore(self.initial(batch))

    def step(self, tokens) -> np.ndarray:
        """Advance every row by one token; the logits [batch, vocab] for what comes next."""
        self.logits, self.h, self.c = self.run(tokens, self.h, self.c)
        return self.logits

    def snapshot(self) -> State:
        return State(self.h, self.c, self.logits)

    def restore(self, state: State) -> None:
        self.h, self.c, self.logits = state.h, state.c, state.logits


class RecordingModel(StepModel):
    """A StepModel that remembers the tokens each state it computed is made of, so that a
    test can ask what the engine's stream holds, rollbacks included."""

    def __init__(self, *args, **kwargs):
        # id(h) of each state stepped to -> (id(h) of the state before, the token, both arrays)
        self.parents: dict[int, tuple[int, int, tuple]] = {}
        super().__init__(*args, **kwargs)

    def run(self, tokens, h, c):
        logits, h_out, c_out = super().run(tokens, h, c)
        tokens = np.asarray(tokens).reshape(-1)
        if len(tokens) == 1:  # the stream's steps (a candidate batch has K rows)
            # keyed by id: both arrays are kept alive so that no other array can take their ids
            self.parents[id(h_out)] = (id(h), int(tokens[0]), (h, h_out))
        return logits, h_out, c_out

    def fed(self, state: State) -> list[int]:
        """The tokens that led to ``state``, from the silent state."""
        tokens, key = [], id(state.h)
        while key in self.parents:
            key, token, _ = self.parents[key]
            tokens.append(token)
        return tokens[::-1]


def stream_tokens(eng: Engine) -> list[int]:
    """What the engine's stream has heard, as tokens (with a RecordingModel)."""
    return eng.stream.model.fed(eng.stream.state)


def configure(**settings) -> Config:
    """The production defaults with ``settings`` changed, each key in whichever section has it."""
    config = Config()
    sections: dict[str, dict] = {}
    for key, value in settings.items():
        section = next(name for name, cls in SECTIONS.items() if key in cls.__dataclass_fields__)
        sections.setdefault(section, {})[key] = value
    return replace(config, **{name: replace(getattr(config, name), **values) for name, values in sections.items()})


def make_engine(random_seed: int = 7, model_class=StepModel, now: float = 0.0,
                candidate_steps: int = CANDIDATE_STEPS, handed_over_s: float = 0.0, generate_steps: int | None = None,
                **settings) -> Engine:
    """An engine on the shipped model with the production defaults but for ``settings``."""
    model = model_class(MODEL_PATH, device="cpu")
    return Engine(model, configure(**settings), np.random.default_rng(random_seed), now, clock=time.perf_counter,
                  candidate_steps=candidate_steps, handed_over_s=handed_over_s, generate_steps=generate_steps)


def replay(tokens: list[int]) -> State:
    model = StatefulModel(MODEL_PATH, device="cpu")
    for token in tokens:
        model.step([token])
    return model.snapshot()


def note(kind: str, pitch: int, velocity: int = 80, channel: int = 0) -> mido.Message:
    return mido.Message(kind, note=pitch, velocity=velocity if kind == "note_on" else 0, channel=channel)


class Room:
    """Applies engine replies with the scheduler's own queue (cancel, release, queue); then
    'sends' each message at its time, checking that the output is playable MIDI. It hears
    improvd's notes only (not the player's echoed ones), and an answer's end releases
    nothing: a note still sounding there is a problem, where the scheduler would clean up."""

    def __init__(self) -> None:
        self.queue = Outbox()
        self.sounding: set[tuple[int, int]] = set()
        self.sent: list[Timed] = []
        self.problems: list[str] = []

    def submit(self, reply: Reply) -> None:
        if self.queue.apply(replace(reply, messages=[t for t in reply.messages if not t.passthrough])):
            self.sounding.clear()

    def advance(self, now: float) -> None:
        while self.queue and self.queue.due() <= now:
            timed = self.queue.pop()
            if timed is SETTLE:
                if self.sounding:
                    self.problems.append(f"{sorted(self.sounding)} still sounding at an answer's end")
                continue
            self.sent.append(timed)
            m = timed.message
            key = (m.channel, m.note)
            if m.type == "note_on":
                if key in self.sounding:
                    self.problems.append(f"second NOTE_ON for sounding {key} at {timed.time:.2f}")
                self.sounding.add(key)
            elif m.type == "note_off":
                if key not in self.sounding:
                    self.problems.append(f"NOTE_OFF for silent {key} at {timed.time:.2f}")
                self.sounding.discard(key)


def run(eng: Engine, room: Room, start: float, end: float, step: float = 0.01,
        events: list[tuple[float, mido.Message]] = ()) -> None:
    """Drive the engine from ``start`` to ``end``: player events at their times, polls
    every ``step``, the room playing what is due."""
    pending = sorted(events, key=lambda e: e[0])
    now = start
    while now <= end + 1e-9:
        while pending and pending[0][0] <= now + 1e-9:
            time, message = pending.pop(0)
            room.advance(time)
            room.submit(eng.on_message(message, time, time))
        room.submit(eng.poll(now))
        room.advance(now)
        now += step


def phrase(start: float = 0.0, pitches=(62, 66, 69, 71, 69, 66), spacing: float = 0.25):
    events = []
    for i, pitch in enumerate(pitches):
        events.append((start + i * spacing, note("note_on", pitch)))
        events.append((start + i * spacing + spacing * 0.9, note("note_off", pitch)))
    return events
