"""Best-of-K answers: K candidate answers advanced together as K batch rows of the step
model, scored against the phrase the player just played, the best one played.

Sampling alone wanders away from the player's register and key; choosing among K samples
by the model's own likelihood plus their fit to the phrase keeps the answer an answer.
A search runs on its own copy of the state (the engine's stream is untouched until the
winner is replayed into it), so throwing it away when the player comes back costs nothing.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from improvd import vocab
from improvd.memory import Context, Memory, mix
from improvd.model import State, StepModel
from improvd.sampler import Grammar, Sampler

log = logging.getLogger(__name__)

MIN_PROFILE_S = 0.5  # densities of shorter stretches are noise: count them over this long
IOI_EDGES = np.geomspace(0.01, 2.0, 13)  # inter-onset intervals in 12 log bins, 10 ms - 2 s
TOGETHER_S = 0.03  # onsets closer than this are struck together (a chord)


def ioi_histogram(onsets: np.ndarray) -> np.ndarray:
    """The share of inter-onset intervals in each of 12 log bins (outside values clipped in)."""
    iois = np.clip(np.diff(np.sort(onsets)), IOI_EDGES[0], IOI_EDGES[-1] * 0.999)
    counts = np.histogram(iois, IOI_EDGES)[0].astype(float)
    return counts / max(counts.sum(), 1)


def together_share(onsets: np.ndarray) -> float:
    """The share of onsets struck within TOGETHER_S of the one before: how chordal."""
    iois = np.diff(np.sort(onsets))
    return float((iois < TOGETHER_S).mean()) if len(iois) else 0.0


@dataclass(frozen=True)
class Weights:
    """The score: fluency x mean log-probability (nats/event) + pitch_class x pitch-class
    profile correlation - register x |mean pitch difference| (semitones) - density x
    |log2 of the note-density ratio| - dynamics x |mean velocity difference| (MIDI units)."""

    fluency: float = 1.0
    pitch_class: float = 2.0
    register: float = 0.25
    density: float = 1.0
    dynamics: float = 0.02
    rhythm: float = 1.0  # x (1 - overlap of the inter-onset-interval histograms)
    note_length: float = 0.5  # x |log2 of the median note-length ratio|
    texture: float = 1.0  # x |difference in the share of onsets struck together|


@dataclass(frozen=True)
class Profile:
    """What the score compares between the phrase and a candidate answer."""

    pitch_classes: np.ndarray  # note counts per pitch class, C..B
    mean_pitch: float
    density: float  # notes per second
    mean_velocity: float
    iois: np.ndarray | None = None  # inter-onset-interval histogram (None: timing unknown)
    median_length: float = 0.0  # seconds
    together: float = 0.0  # share of onsets struck together

    @classmethod
    def of(cls, notes: list[tuple[int, int]], seconds: float,
           timing: list[tuple[float, float]] | None = None) -> Profile | None:
        """The profile of (pitch, velocity) onsets over ``seconds``, with each note's (start,
        end) in seconds when known; None without notes."""
        if not notes:
            return None
        pitches, velocities = np.array(notes, float).T
        counts = np.bincount(pitches.astype(int) % 12, minlength=12).astype(float)
        profile = cls(counts, float(pitches.mean()), len(notes) / max(seconds, MIN_PROFILE_S), float(velocities.mean()))
        if not timing:
            return profile
        starts, ends = np.array(timing, float).T
        return dataclasses.replace(profile, iois=ioi_histogram(starts), together=together_share(starts),
                                   median_length=float(max(np.median(ends - starts), vocab.TICK_S)))

    def fit(self, phrase: Profile, weights: Weights) -> float:
        """How well this answer fits ``phrase``: the score's terms other than fluency."""
        correlation = 0.0
        if self.pitch_classes.std() > 0 and phrase.pitch_classes.std() > 0:
            correlation = float(np.corrcoef(self.pitch_classes, phrase.pitch_classes)[0, 1])
        return (weights.pitch_class * correlation
                - weights.register * abs(self.mean_pitch - phrase.mean_pitch)
                - weights.density * abs(np.log2(self.density / phrase.density))
                - weights.dynamics * abs(self.mean_velocity - phrase.mean_velocity)
                - self._timing_distance(phrase, weights))

    def _timing_distance(self, phrase: Profile, weights: Weights) -> float:
        """Rhythm, note length and texture apart from the phrase's (0 when either's timing is unknown)."""
        if self.iois is None or phrase.iois is None:
            return 0.0
        return (weights.rhythm * (1 - float(np.minimum(self.iois, phrase.iois).sum()))
                + weights.note_length * abs(np.log2(self.median_length / phrase.median_length))
                + weights.texture * abs(self.together - phrase.together))


@dataclass
class Line:
    """One candidate: the stream as it would be if this answer were played, enough to
    build its grammar mask, and what it has played so far."""

    encoder: vocab.Encoder
    own_notes: dict[int, int]
    context: Context = Context()  # the memory's, after this line's events
    after_velocity: bool = False
    note_first: bool = True  # an answer opens on a note
    tokens: list[int] = field(default_factory=list)
    notes: list[tuple[int, int]] = field(default_factory=list)  # (pitch, velocity) onsets
    timing: list[list[int]] = field(default_factory=list)  # [start, end (-1: sounding), pitch] ticks of each note
    log_prob: float = 0.0

    def grammar(self, end_tick: int) -> Grammar:
        return Grammar(self.own_notes, frozenset(self.encoder.sounding), self.encoder.tick,
                       self.encoder.velocity_bin, self.after_velocity, self.note_first, end_tick)

    def apply(self, token: int, log_prob: float) -> None:
        self.tokens.append(token)
        self.log_prob += log_prob
        self.encoder.apply(token)
        event = vocab.decode(token)
        self.after_velocity = event.type is vocab.EventType.VELOCITY
        if event.type is vocab.EventType.NOTE_ON:
            self.own_notes[event.value] = self.encoder.tick
            self.note_first = False
            velocity_bin = self.encoder.velocity_bin
            bin_ = vocab.velocity_to_bin(vocab.DEFAULT_VELOCITY) if velocity_bin is None else velocity_bin
            self.notes.append((event.value, vocab.bin_to_velocity(bin_)))
            self.timing.append([self.encoder.tick, -1, event.value])
        elif event.type is vocab.EventType.NOTE_OFF:
            self.own_notes.pop(event.value, None)
            for timing in self.timing:
                if timing[1] < 0 and timing[2] == event.value:
                    timing[1] = self.encoder.tick


@dataclass(frozen=True)
class Plan:
    """Where the answer starts and ends, as the engine will play it."""

    deadline: float
    answer_end: float
    output_offset: float  # output times are stream (grid) times plus this

    @property
    def end_tick(self) -> int:
        return round((self.answer_end - self.output_offset) / vocab.TICK_S)


@dataclass(frozen=True)
class Choice:
    """The answer a search settled on, and the figures telemetry reports about it."""

    tokens: list[int]
    candidates: int
    scored: int  # candidates with at least one note, compared by score
    winner: int
    score: float
    margin: float  # the winner's score minus the runner-up's (0 with one scored)
    complete: bool  # every candidate reached the answer's end
    steps: int  # batched model steps the search took
    compute_s: float  # wall time spent generating and scoring
    slack_s: float | None  # from the moment every candidate was ready to the choice


class Search:
    """K candidate answers from one state, advanced a few steps per engine poll."""

    def __init__(self, model: StepModel, sampler: Sampler, start: State, line: Line, plan: Plan,
                 k: int, phrase: Profile | None, weights: Weights, memory: Memory | None = None,
                 strength: float = 0.0) -> None:
        started = time.perf_counter()
        self.model, self.sampler, self.plan, self.phrase, self.weights = model, sampler, plan, phrase, weights
        self.memory, self.strength = memory, strength
        h, c, logits = start.h, start.c, start.logits
        context = line.context
        for token in vocab.time_shift_tokens(round(plan.deadline / vocab.TICK_S) - line.encoder.tick):
            logits, h, c = model.run([token], h, c)
            line.encoder.apply(token)
            context = memory.advance(context, token) if memory is not None else context
        self.lines = [Line(line.encoder.copy(), dict(line.own_notes), context) for _ in range(k)]
        self.active = np.arange(k)  # rows of h/c/logits: the lines still short of the end
        self.h, self.c = np.repeat(h, k, axis=1), np.repeat(c, k, axis=1)
        self.logits = np.repeat(logits, k, axis=0)
        self.steps = 0
        self.ready_at: float | None = None
        self.compute_s = time.perf_counter() - started

    @property
    def done(self) -> bool:
        return not len(self.active)

    def advance(self, steps: int, now: float) -> None:
        """Up to ``steps`` more events for every unfinished candidate."""
        started = time.perf_counter()
        end_tick, end = self.plan.end_tick, self.plan.answer_end - self.plan.output_offset - 1e-9
        for _ in range(steps):
            if self.done:
                break
            lines = [self.lines[i] for i in self.active]
            allowed = np.stack([self.sampler.mask(line.grammar(end_tick)) for line in lines])
            logits = self._mixed([line.context for line in lines])
            tokens = self.sampler.sample_rows(logits, allowed)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted[np.arange(len(tokens)), tokens] - np.log(np.exp(shifted).sum(axis=1))
            for line, token, log_prob in zip(lines, tokens, log_probs, strict=True):
                line.apply(int(token), float(log_prob))
                if self.memory is not None:
                    line.context = self.memory.advance(line.context, int(token))
            going = np.array([line.encoder.tick * vocab.TICK_S < end for line in lines])
            self.active = self.active[going]
            if going.any():
                self.logits, self.h, self.c = self.model.run(tokens[going], self.h[:, going], self.c[:, going])
            self.steps += 1
        if self.done and self.ready_at is None:
            self.ready_at = now
        self.compute_s += time.perf_counter() - started

    def _mixed(self, contexts: list[Context]) -> np.ndarray:
        """The rows' logits mixed with the memory's prediction after each row's context (the
        fluency term then scores each line under the mixture too)."""
        if self.memory is None or self.strength <= 0 or not self.memory.events:
            return self.logits
        return mix(self.logits, self.memory.predict(contexts), self.strength)

    def choose(self, now: float) -> Choice | None:
        """The best-scoring candidate so far (finished or not); None if none has a note yet."""
        started = time.perf_counter()
        scores = np.array([self.score(line) for line in self.lines])
        scored = int(np.isfinite(scores).sum())
        if not scored:
            return None
        winner = int(np.argmax(scores))
        runner_up = np.sort(scores[np.isfinite(scores)])[-2] if scored > 1 else scores[winner]
        compute_s = self.compute_s + time.perf_counter() - started
        return Choice(list(self.lines[winner].tokens), len(self.lines), scored, winner, float(scores[winner]),
                      float(scores[winner] - runner_up), self.done, self.steps, compute_s,
                      None if self.ready_at is None else now - self.ready_at)

    def score(self, line: Line) -> float:
        """fluency x mean log-probability + fit to the phrase; -inf for a line with no note."""
        seconds = (line.encoder.tick - round(self.plan.deadline / vocab.TICK_S)) * vocab.TICK_S
        timing = [(start * vocab.TICK_S, (end if end >= 0 else line.encoder.tick) * vocab.TICK_S)
                  for start, end, _ in line.timing]
        profile = Profile.of(line.notes, seconds, timing)
        if profile is None:
            return -np.inf
        fit = 0.0 if self.phrase is None else profile.fit(self.phrase, self.weights)
        return self.weights.fluency * line.log_prob / len(line.tokens) + fit
