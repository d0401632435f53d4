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
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.ma  # noqa: F401 - np.median loads it on first use: 20 ms in the first answer's search

from improvd import vocab
from improvd.config import Live, SamplerConfig
from improvd.memory import Memory
from improvd.model import State, StepModel
from improvd.phrase import Phrase, Plan, ticks
from improvd.sampler import Sampler
from improvd.stream import Line, Stream

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

    def fit(self, phrase: Profile, weights: SamplerConfig) -> float:
        """How well this answer fits ``phrase``: the score's terms other than fluency, with
        the ``weight_*`` settings: weight_pitch_class x pitch-class profile correlation -
        weight_register x |mean pitch difference| (semitones) - weight_density x |log2 of the
        note-density ratio| - weight_dynamics x |mean velocity difference| (MIDI units) -
        weight_rhythm x (1 - overlap of the inter-onset-interval histograms) - weight_note_length
        x |log2 of the median note-length ratio| - weight_texture x |difference in the share of
        onsets struck together|; the last three only when both timings are known."""
        correlation = 0.0
        if self.pitch_classes.std() > 0 and phrase.pitch_classes.std() > 0:
            correlation = float(np.corrcoef(self.pitch_classes, phrase.pitch_classes)[0, 1])
        return (weights.weight_pitch_class * correlation
                - weights.weight_register * abs(self.mean_pitch - phrase.mean_pitch)
                - weights.weight_density * abs(np.log2(self.density / phrase.density))
                - weights.weight_dynamics * abs(self.mean_velocity - phrase.mean_velocity)
                - self._timing_distance(phrase, weights))

    def _timing_distance(self, phrase: Profile, weights: SamplerConfig) -> float:
        if self.iois is None or phrase.iois is None:
            return 0.0
        return (weights.weight_rhythm * (1 - float(np.minimum(self.iois, phrase.iois).sum()))
                + weights.weight_note_length * abs(np.log2(self.median_length / phrase.median_length))
                + weights.weight_texture * abs(self.together - phrase.together))


@dataclass
class Candidate(Line):
    """One candidate answer: its line, and what it has played so far."""

    note_first: bool = True  # an answer opens on a note
    tokens: list[int] = field(default_factory=list)
    notes: list[tuple[int, int]] = field(default_factory=list)  # (pitch, velocity) onsets
    timing: list[list[int]] = field(default_factory=list)  # [start, end (-1: sounding), pitch] ticks of each note
    log_prob: float = 0.0

    def play(self, token: int, log_prob: float) -> None:
        self.tokens.append(token)
        self.log_prob += log_prob
        event = self.apply(token)
        if event.type is vocab.EventType.NOTE_ON:
            self.notes.append((event.value, self.velocity()))
            self.timing.append([self.encoder.tick, -1, event.value])
        elif event.type is vocab.EventType.NOTE_OFF:
            for timing in self.timing:
                if timing[1] < 0 and timing[2] == event.value:
                    timing[1] = self.encoder.tick

    def durations(self) -> list[tuple[float, float]]:
        """(start, end) seconds of each note played, the ones still sounding ending now."""
        return [(start * vocab.TICK_S, (end if end >= 0 else self.encoder.tick) * vocab.TICK_S)
                for start, end, _ in self.timing]


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
    """K candidate answers from one state, advanced a few steps per engine poll. It works on
    copies: the stream it starts from is untouched. ``clock`` measures compute time. Each row
    is sampled from, and scored under, the model mixed with the player ``memory`` after that
    row's own events, at the live memory strength."""

    def __init__(self, model: StepModel, sampler: Sampler, start: State, line: Line, plan: Plan,
                 phrase: Profile | None, config: SamplerConfig, clock: Callable[[], float],
                 memory: Memory, live: Live) -> None:
        self.clock = clock
        started = clock()
        self.model, self.sampler, self.plan, self.phrase, self.weights = model, sampler, plan, phrase, config
        self.memory, self.live = memory, live
        h, c, logits = start.h, start.c, start.logits
        encoder, context = line.encoder.copy(), line.context
        for token in vocab.time_shift_tokens(ticks(plan.deadline) - encoder.tick):
            logits, h, c = model.run([token], h, c)
            encoder.apply(token)
            context = memory.advance(context, token)
        k = config.candidates
        self.lines = [Candidate(encoder.copy(), dict(line.own_notes), context=context) for _ in range(k)]
        self.active = np.arange(k)  # rows of h/c/logits: the lines still short of the end
        self.h, self.c = np.repeat(h, k, axis=1), np.repeat(c, k, axis=1)
        self.logits = np.repeat(logits, k, axis=0)
        self.steps = 0
        self.ready_at: float | None = None
        self.compute_s = clock() - started

    @property
    def done(self) -> bool:
        return not len(self.active)

    def advance(self, steps: int, now: float) -> None:
        """Up to ``steps`` more events for every unfinished candidate."""
        started = self.clock()
        end_tick, end = self.plan.end_tick, self.plan.answer_end - self.plan.output_offset - 1e-9
        for _ in range(steps):
            if self.done:
                break
            lines = [self.lines[i] for i in self.active]
            allowed = np.stack([self.sampler.mask(line.grammar(end_tick)) for line in lines])
            logits = self.memory.mixed(self.logits, [line.context for line in lines], self.live.memory_strength)
            tokens = self.sampler.sample_rows(logits, allowed)
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_probs = shifted[np.arange(len(tokens)), tokens] - np.log(np.exp(shifted).sum(axis=1))
            for line, token, log_prob in zip(lines, tokens, log_probs, strict=True):
                line.play(int(token), float(log_prob))
                line.context = self.memory.advance(line.context, int(token))
            going = np.array([line.time < end for line in lines])
            self.active = self.active[going]
            if going.any():
                self.logits, self.h, self.c = self.model.run(tokens[going], self.h[:, going], self.c[:, going])
            self.steps += 1
        if self.done and self.ready_at is None:
            self.ready_at = now
        self.compute_s += self.clock() - started

    def choose(self, now: float) -> Choice | None:
        """The best-scoring candidate so far (finished or not); None if none has a note yet."""
        started = self.clock()
        scores = np.array([self.score(line) for line in self.lines])
        scored = int(np.isfinite(scores).sum())
        if not scored:
            return None
        winner = int(np.argmax(scores))
        runner_up = np.sort(scores[np.isfinite(scores)])[-2] if scored > 1 else scores[winner]
        compute_s = self.compute_s + self.clock() - started
        return Choice(list(self.lines[winner].tokens), len(self.lines), scored, winner, float(scores[winner]),
                      float(scores[winner] - runner_up), self.done, self.steps, compute_s,
                      None if self.ready_at is None else now - self.ready_at)

    def score(self, line: Candidate) -> float:
        """weight_fluency x mean log-probability (nats/event) + fit to the phrase; -inf for
        a line with no note."""
        seconds = (line.encoder.tick - ticks(self.plan.deadline)) * vocab.TICK_S
        profile = Profile.of(line.notes, seconds, line.durations())
        if profile is None:
            return -np.inf
        fit = 0.0 if self.phrase is None else profile.fit(self.phrase, self.weights)
        return self.weights.weight_fluency * line.log_prob / len(line.tokens) + fit


class Candidates:
    """Best-of-K for the engine: a search started the moment the player falls silent,
    advanced ``steps`` events per poll so input is never kept waiting, and its winner taken
    when the answer starts. Off (sampled as it plays) with one candidate."""

    def __init__(self, model: StepModel, sampler: Sampler, config: SamplerConfig, steps: int,
                 clock: Callable[[], float], memory: Memory, live: Live) -> None:
        self.model, self.sampler, self.config, self.steps, self.clock = model, sampler, config, steps, clock
        self.memory, self.live = memory, live
        self.on = config.candidates > 1
        self.search: Search | None = None  # candidate answers for the coming deadline
        self.choice: Choice | None = None  # the last choice, until taken

    def drop(self) -> None:
        """The stream changed under the search: candidates from before are stale."""
        self.search = None

    def pending(self) -> bool:
        return self.search is None or not self.search.done

    def advance(self, stream: Stream, phrase: Phrase, plan: Plan, now: float) -> Search:
        """Start the search for ``plan`` from the stream as it stands, or take it further."""
        if self.search is None:
            profile = Profile.of(phrase.notes, phrase.length(), phrase.durations())
            self.search = Search(self.model, self.sampler, stream.state, stream.line, plan, profile, self.config,
                                 self.clock, self.memory, self.live)
        self.search.advance(self.steps, now)
        return self.search

    def choose(self, plan: Plan, now: float) -> list[int]:
        """The best candidate's events if a search for ``plan`` has one; else none, and the
        answer is sampled as it plays."""
        search, self.search = self.search, None
        if search is None or search.plan != plan:
            return []
        self.choice = c = search.choose(now)
        if c is None:
            return []
        log.debug("answer chosen among %d candidates (%d scored, %s after %d steps): #%d, score %.3f, margin %.3f; "
                  "generation %.1f ms, ready %s before the answer starts", c.candidates, c.scored,
                  "complete" if c.complete else "partial", c.steps, c.winner, c.score, c.margin, c.compute_s * 1e3,
                  "never" if c.slack_s is None else f"{c.slack_s * 1e3:.0f} ms")
        return list(c.tokens)

    def take_choice(self) -> Choice | None:
        """The choice made since the last call, for telemetry."""
        choice, self.choice = self.choice, None
        return choice
