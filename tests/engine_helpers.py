"""Shared by the engine tests: the shipped model, a token-recording model, and a 'room'
that plays replies the way the scheduler does, in simulated time."""

from __future__ import annotations

import heapq
import itertools
from pathlib import Path

import mido
import numpy as np

from improvd import engine, sampler
from improvd.model import State, StepModel

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MODEL_PATH = PROJECT_ROOT / "exported" / "improvd.onnx"


class RecordingModel(StepModel):
    """A StepModel that remembers the tokens its state is made of, rollbacks included."""

    def reset(self, batch=None):
        super().reset(batch)
        self.fed: list[int] = []

    def step(self, tokens):
        self.fed.append(int(np.asarray(tokens).reshape(-1)[0]))
        return super().step(tokens)

    def snapshot(self):
        return (super().snapshot(), len(self.fed))

    def restore(self, state):
        model_state, length = state
        super().restore(model_state)
        del self.fed[length:]


def make_engine(seed: int = 7, model_class=StepModel, now: float = 0.0, **settings) -> engine.Engine:
    sampler_settings = sampler.Settings(**{k: settings.pop(k) for k in list(settings) if hasattr(sampler.Settings, k)})
    model = model_class(MODEL_PATH, device="cpu")
    return engine.Engine(model, sampler.Sampler(sampler_settings, np.random.default_rng(seed)),
                         engine.Settings(**settings), now)


def replay(tokens: list[int]) -> State:
    model = StepModel(MODEL_PATH, device="cpu")
    for token in tokens:
        model.step([token])
    return model.snapshot()


def note(kind: str, pitch: int, velocity: int = 80, channel: int = 0) -> mido.Message:
    return mido.Message(kind, note=pitch, velocity=velocity if kind == "note_on" else 0, channel=channel)


class Room:
    """Applies engine replies like the scheduler: cancel, release, queue; then 'sends' each
    message at its time, checking that the output is playable MIDI."""

    def __init__(self) -> None:
        self.queue: list = []
        self.order = itertools.count()
        self.sounding: set[tuple[int, int]] = set()
        self.sent: list[engine.Timed] = []
        self.problems: list[str] = []

    def submit(self, reply: engine.Reply) -> None:
        if reply.cancel_after is not None:
            self.queue = [e for e in self.queue if e[0] <= reply.cancel_after]
            heapq.heapify(self.queue)
        if reply.release:
            self.queue = []
            self.sounding = {(ch, p) for ch, p in self.sounding if ch < 0}
        for timed in reply.messages:
            if not timed.passthrough:
                heapq.heappush(self.queue, (timed.time, next(self.order), timed))

    def advance(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            _, _, timed = heapq.heappop(self.queue)
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


def run(eng: engine.Engine, room: Room, start: float, end: float, step: float = 0.01,
        events: list[tuple[float, mido.Message]] = ()) -> None:
    """Drive the engine from ``start`` to ``end``: player events at their times, polls
    every ``step``, the room playing what is due."""
    pending = sorted(events, key=lambda e: e[0])
    now = start
    while now <= end + 1e-9:
        while pending and pending[0][0] <= now + 1e-9:
            time, message = pending.pop(0)
            room.advance(time)
            room.submit(eng.on_message(message, time))
        room.submit(eng.poll(now))
        room.advance(now)
        now += step


def phrase(start: float = 0.0, pitches=(62, 66, 69, 71, 69, 66), spacing: float = 0.25):
    events = []
    for i, pitch in enumerate(pitches):
        events.append((start + i * spacing, note("note_on", pitch)))
        events.append((start + i * spacing + spacing * 0.9, note("note_off", pitch)))
    return events
