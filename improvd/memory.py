"""The player memory: a variable-order model of what this player has played this session.

The LSTM knows music; the memory knows this player (the Continuator's idea, Pachet 2003).
It counts, for every context of up to ``max_order`` events, which event followed, and
predicts with Witten-Bell interpolation from the longest context seen down to uniform.

Contexts survive what players do: pitches are taken relative to the last struck note (a
motif transposed is the same motif), and time shifts and velocities are coarsened (the same
rhythm a little faster or softer is the same context). The predicted event keeps its exact
time and velocity, give or take a little (a blur); its pitch is the step from the last struck
note, turned back into a key and weighted by the pitch classes the player has used (the key)
and by how near it lies to the player's recent register. A release is a release of a key the
stream holds: one predicted for a silent key goes to the held ones.

Bounded and forgetting: only the last ``horizon_events`` events, and none older than
``horizon_s``, are counted; an event leaving the horizon takes its counts with it, so a
daemon running for days neither grows nor fossilizes. Pure: time is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from improvd import vocab

ON, OFF = vocab.NOTE_ON_OFFSET, vocab.NOTE_OFF_OFFSET
SHIFT, VELOCITY = vocab.TIME_SHIFT_OFFSET, vocab.VELOCITY_OFFSET
SIZE = vocab.VOCAB_SIZE
CENTRE = 60  # the reference pitch before any note is struck: middle C

# ---- defaults -------------------------------------------------------------------------
MAX_ORDER = 8
HORIZON_EVENTS = 4000
HORIZON_S = 600.0
SHIFT_CLASS_TICKS = 5  # time shifts in 50 ms classes as context
VELOCITY_CLASS_BINS = 4  # velocities in classes of four bins (16 MIDI values) as context
SHIFT_BLUR = 0.05  # predicted time shifts spread by a Gaussian of this width in log time (5 %)
VELOCITY_BLUR = 0.5  # predicted velocities spread by a Gaussian this many bins wide
KEY_PRIOR = 1.0  # predicted notes weighted by the player's pitch-class counts plus this (0: off)
# Predicted notes pulled towards the player's register: weighted by a Gaussian around the mean
# of the player's last REGISTER_NOTES pitches, REGISTER_WIDTH times their spread (at least
# REGISTER_MIN_SEMITONES) wide. Steps are relative to the last note, so without it a run of
# rising steps climbs off the keyboard. 0: off.
REGISTER_NOTES = 32
REGISTER_WIDTH = 1.5
REGISTER_MIN_SEMITONES = 4.0
# 0: the trained model alone; 0.5: the weight that predicts held-out performances best; 1: mirror
# the player. 0.85 leans towards the player: on validation primers its answers come as close to
# the player's phrase as the performer's own next bars, and 3-8 % of their shapes echo it.
STRENGTH = 0.85
FITTED_STRENGTH = 0.5  # the strength at which the adaptive weight is the fitted logistic itself
# The adaptive weight's coefficients over weight_features (bias, order, log2(1 + count), escape),
# fitted on 30 validation pieces as `python -m improvd_train.evaluate` fits (and prints) them.
ADAPTIVE = (0.59, 0.56, -0.18, -6.43)
# ---------------------------------------------------------------------------------------


def _relative_table() -> np.ndarray:
    """[ref, token]: the token with its pitch as a step from ``ref`` (a key CENTRE - ref
    away, modulo 128: a permutation of the vocabulary for each ref). Other events stay."""
    tokens = np.arange(SIZE)
    relative = np.tile(tokens, (128, 1))
    refs = np.arange(128)[:, None]
    for block in (ON, OFF):
        relative[:, block:block + 128] = block + (tokens[None, :128] - refs + CENTRE) % 128
    return relative


RELATIVE = _relative_table()


def _class_table(shift_ticks: int, velocity_bins: int) -> np.ndarray:
    """The context class of each (relative) token: pitches exact, time and velocity coarse."""
    table = np.arange(SIZE)
    table[SHIFT:SHIFT + vocab.MAX_SHIFT_TICKS] = SHIFT + np.arange(vocab.MAX_SHIFT_TICKS) // shift_ticks
    table[VELOCITY:] = VELOCITY + np.arange(vocab.VELOCITY_BINS) // velocity_bins
    return table


def _blur(values: np.ndarray, width: float) -> np.ndarray:
    """[source, destination]: how a count at one value spreads over its neighbours (each row
    sums to 1), a Gaussian of ``width`` in the units of ``values``; identity at width 0."""
    if width <= 0:
        return np.eye(len(values))
    kernel = np.exp(-0.5 * ((values[None, :] - values[:, None]) / width) ** 2)
    return kernel / kernel.sum(1, keepdims=True)


BLOCKS = ((SHIFT, vocab.MAX_SHIFT_TICKS), (VELOCITY, vocab.VELOCITY_BINS))


@dataclass(frozen=True)
class Context:
    """Where a stream stands, for the memory: its last events as context classes, and the
    pitch of its last struck note. Immutable, so a candidate row or a journal keeps one."""

    symbols: tuple[int, ...] = ()
    ref: int = CENTRE
    held: tuple[int, ...] = ()  # the keys struck and not yet released, oldest first


@dataclass(frozen=True)
class Prediction:
    """The memory's next-event distribution for K contexts, and how sure it is of each."""

    probs: np.ndarray  # [K, vocab] over absolute tokens
    order: np.ndarray  # [K] length of the longest context seen before (0: none)
    escape: np.ndarray  # [K] Witten-Bell escape probability at that context
    count: np.ndarray  # [K] events counted after that context


class Memory:
    """Counts of what followed each context, kept for the events inside the horizon."""

    def __init__(self, max_order: int = MAX_ORDER, horizon_events: int = HORIZON_EVENTS,
                 horizon_s: float = HORIZON_S, shift_class_ticks: int = SHIFT_CLASS_TICKS,
                 velocity_class_bins: int = VELOCITY_CLASS_BINS,
                 shift_blur: float = SHIFT_BLUR, velocity_blur: float = VELOCITY_BLUR,
                 key_prior: float = KEY_PRIOR, register_width: float = REGISTER_WIDTH) -> None:
        self.key_prior = key_prior
        self.register_width = register_width
        self.max_order = max_order
        self.horizon_events = horizon_events
        self.horizon_s = horizon_s
        self.classes = _class_table(shift_class_ticks, velocity_class_bins)
        # a time shift a little longer or shorter, a velocity a little louder or softer: what
        # followed a context is expected again, give or take (on a log scale for time)
        self.blurs = (_blur(np.log(np.arange(1, vocab.MAX_SHIFT_TICKS + 1)), shift_blur),
                      _blur(np.arange(vocab.VELOCITY_BINS, dtype=float), velocity_blur))
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new player, mode or model."""
        # Every event adds at most one context per order, so the horizon bounds the contexts:
        # room for all of them from the start (zeroed pages cost no memory until touched), and
        # never a copy to grow into while someone is playing.
        capacity = self.horizon_events * (self.max_order + 1) + 1
        self._slots: dict[tuple[int, ...], int] = {}
        self._counts = np.zeros((capacity, SIZE), np.uint16)
        self._total = np.zeros(capacity, np.int64)
        self._types = np.zeros(capacity, np.int64)
        self._free = list(range(capacity - 1, -1, -1))
        self._keys: list[tuple[int, ...]] = [()] * capacity  # the context of each slot in use
        self._events: deque[tuple[float, tuple[int, ...], int, int]] = deque()  # (time, slots, target, token)
        self._pitch_classes = np.zeros(12)  # of the notes struck inside the horizon
        self._pitches: deque[int] = deque()  # of the notes struck inside the horizon, in order
        self._learnt = 0  # events learnt so far: what is derived from the counts is kept per value
        self._prior_cache: tuple[int, np.ndarray | None] | None = None

    @property
    def events(self) -> int:
        """Events inside the horizon."""
        return len(self._events)

    @property
    def nbytes(self) -> int:
        """Bytes held by the count arrays (the bulk of the memory's size)."""
        return self._counts.nbytes + self._total.nbytes + self._types.nbytes

    @property
    def contexts(self) -> int:
        return len(self._slots)

    def advance(self, context: Context, token: int) -> Context:
        """``context`` after ``token`` heard but not learnt from (improvd's own, or a
        candidate row's)."""
        symbols = (*context.symbols, int(self.classes[RELATIVE[context.ref, token]]))[-self.max_order:]
        if ON <= token < ON + 128:
            return Context(symbols, token - ON, (*(p for p in context.held if p != token - ON), token - ON))
        if OFF <= token < OFF + 128:
            return Context(symbols, context.ref, tuple(p for p in context.held if p != token - OFF))
        return Context(symbols, context.ref, context.held)

    def learn(self, context: Context, token: int, now: float) -> Context:
        """A player's event at ``now`` after ``context``: counted after each of its
        contexts; the context after it."""
        symbols = context.symbols
        target = int(RELATIVE[context.ref, token])
        slots = []
        for order in range(len(symbols) + 1):
            key = symbols[len(symbols) - order:]
            slot = self._slots.get(key)
            if slot is None:
                slot = self._slots[key] = self._free.pop()
                self._keys[slot] = key
            if self._counts[slot, target] == 0:
                self._types[slot] += 1
            self._counts[slot, target] += 1
            self._total[slot] += 1
            slots.append(slot)
        self._events.append((now, tuple(slots), target, token))
        self._learnt += 1
        if ON <= token < ON + 128:
            self._pitch_classes[(token - ON) % 12] += 1
            self._pitches.append(token - ON)
        self._forget(now)
        return self.advance(context, token)

    def _forget(self, now: float) -> None:
        """Take back the counts of events that left the horizon; free their empty contexts."""
        while self._events and (len(self._events) > self.horizon_events
                                or self._events[0][0] < now - self.horizon_s):
            _, slots, target, token = self._events.popleft()
            if ON <= token < ON + 128:
                self._pitch_classes[(token - ON) % 12] -= 1
                self._pitches.popleft()
            for slot in slots:
                self._counts[slot, target] -= 1
                if self._counts[slot, target] == 0:
                    self._types[slot] -= 1
                self._total[slot] -= 1
                if self._total[slot] == 0:
                    del self._slots[self._keys[slot]]
                    self._free.append(slot)

    def mixed(self, logits: np.ndarray, contexts: Sequence[Context], strength: float) -> np.ndarray:
        """The model's logits [rows, vocab] mixed with this memory's prediction after each
        row's context; the logits themselves at strength 0 or with nothing learnt (the
        trained model alone, exactly)."""
        if strength <= 0 or not self._events:
            return logits
        return mix(logits, self.predict(contexts), strength)

    def probability(self, context: Context, token: int) -> tuple[float, int, float, int]:
        """(p(token), order, escape, count) of ``predict([context])``, for one token without
        the whole distribution: what scoring a long performance needs, event by event."""
        if ON <= token < ON + 256:  # the key and register weigh on every NOTE_ON, the held keys on every NOTE_OFF
            prediction = self.predict([context])
            return (float(prediction.probs[0, token]), int(prediction.order[0]), float(prediction.escape[0]),
                    int(prediction.count[0]))
        symbols = context.symbols
        target = int(RELATIVE[context.ref, token])
        block = next(((start, size, blur) for (start, size), blur in zip(BLOCKS, self.blurs, strict=True)
                      if start <= target < start + size), None)
        p = 0.0 if block is None else np.zeros(block[1])  # from the counts; the uniform part apart:
        uniform = 1.0 / SIZE  # a blur moves what was counted, not the floor under everything
        order, escape, count = -1, 1.0, 0
        for length in range(len(symbols) + 1):
            slot = self._slots.get(symbols[len(symbols) - length:])
            if slot is None:
                break
            total, types = int(self._total[slot]), int(self._types[slot])
            seen = self._counts[slot, target] if block is None else self._counts[slot, block[0]:block[0] + block[1]]
            p = (seen + types * p) / (total + types)
            order, escape, count = length, types / (total + types), total
            uniform *= escape
        if block is not None:
            p = p @ block[2][:, target - block[0]]
        return float(p + uniform), order, escape, count

    def _prior(self) -> np.ndarray | None:
        """Weights over the 128 keys from the player's key and register (None: both off);
        the same for every row and step until the player plays again, so kept till then."""
        if self._prior_cache is not None and self._prior_cache[0] == self._learnt:
            return self._prior_cache[1]
        prior = None
        if self.key_prior:
            prior = np.tile((self._pitch_classes + self.key_prior) / (self._pitch_classes.sum() + 12 * self.key_prior),
                            11)[:128]
        if self.register_width and self._pitches:
            recent = np.fromiter(islice(reversed(self._pitches), REGISTER_NOTES), float)
            width = self.register_width * max(recent.std(), REGISTER_MIN_SEMITONES)
            register = np.exp(-0.5 * ((np.arange(128) - recent.mean()) / width) ** 2)
            prior = register if prior is None else prior * register
        self._prior_cache = (self._learnt, prior)
        return prior

    def predict(self, contexts: Sequence[Context]) -> Prediction:
        """The next-event distribution after each of ``contexts``: Witten-Bell, from the
        uniform distribution up through every context order seen, longest last."""
        rows = len(contexts)
        slots = np.full((rows, self.max_order + 1), -1)
        for row, context in enumerate(contexts):
            symbols = context.symbols
            for order in range(len(symbols) + 1):
                slot = self._slots.get(symbols[len(symbols) - order:])
                if slot is None:
                    break
                slots[row, order] = slot
        seen = slots >= 0
        at = np.where(seen, slots, 0)
        total = np.where(seen, self._total[at], 0).astype(float)
        types = np.where(seen, self._types[at], 0).astype(float)
        denominator = np.maximum(total + types, 1)
        # The recursion p_n = (counts_n + types_n p_(n-1)) / (total_n + types_n), unrolled: each
        # order's counts weighted by 1 / its denominator x the escapes of every longer order.
        escapes = np.where(seen, types / denominator, 1.0)
        longer = np.cumprod(np.concatenate([np.ones((rows, 1)), escapes[:, :0:-1]], 1), 1)[:, ::-1]
        weights = np.where(seen, longer / denominator, 0.0)
        probs = np.matmul(weights[:, None, :], self._counts[at]).reshape(rows, SIZE)
        for (start, size), blur in zip(BLOCKS, self.blurs, strict=True):  # what was counted, not the floor
            probs[:, start:start + size] = probs[:, start:start + size] @ blur
        probs += (longer[:, 0] * escapes[:, 0] / SIZE)[:, None]
        order = seen.sum(1) - 1
        top = np.maximum(order, 0)
        escape = np.where(order >= 0, escapes[np.arange(rows), top], 1.0)
        count = total[np.arange(rows), top]
        refs = np.array([c.ref for c in contexts])
        absolute = probs[np.arange(rows)[:, None], RELATIVE[refs]]
        # steps taken from where a row is now land in the player's key and register
        prior = self._prior()
        if prior is not None:
            notes = absolute[:, ON:ON + 128]
            weighted = notes * prior
            absolute[:, ON:ON + 128] = weighted * (notes.sum(1) / np.maximum(weighted.sum(1), 1e-300))[:, None]
        # A release predicted for a key that is not sounding (the steps were the player's, the
        # notes are this row's) is a release all the same: its share goes to the keys held,
        # evenly, so that a note struck long ago is let go too, not only the last one.
        held = np.zeros((rows, 128), bool)
        for row, context in enumerate(contexts):
            held[row, list(context.held)] = True
        offs = absolute[:, OFF:OFF + 128]
        silent = np.where(held, 0.0, offs).sum(1)
        spread = silent / np.maximum(held.sum(1), 1)
        absolute[:, OFF:OFF + 128] = np.where(held, offs + spread[:, None], np.where(held.any(1)[:, None], 0.0, offs))
        return Prediction(absolute, order, escape, count)


def weight_features(order: np.ndarray, escape: np.ndarray, count: np.ndarray) -> np.ndarray:
    """[n, 4]: what the adaptive weight reads of the memory's confidence in a context."""
    order, escape, count = (np.asarray(a, float) for a in (order, escape, count))
    return np.stack([np.ones_like(order), order, np.log2(1 + count), escape], axis=-1)


def adaptive_weight(order: np.ndarray, escape: np.ndarray, count: np.ndarray, strength: float = STRENGTH,
                    coefficients: Sequence[float] = ADAPTIVE) -> np.ndarray:
    """The memory's share of the mixture in each context: a logistic function of its
    confidence (fitted on held-out performances for the strength 0.5), raised to a power
    that sends it to 0 at strength 0 (the trained model alone) and 1 at strength 1 (the
    memory alone: mirror the player). An empty memory gets no share at any strength."""
    if strength <= 0:
        return np.zeros(np.shape(order))
    bias, per_order, per_count, per_escape = coefficients  # over weight_features, term by term (fast)
    order, escape, count = (np.asarray(a, float) for a in (order, escape, count))
    base = 1 / (1 + np.exp(-(bias + per_order * order + per_count * np.log2(1 + count) + per_escape * escape)))
    share = base ** (np.log(strength) / np.log(FITTED_STRENGTH)) if strength < 1 else np.ones_like(base)
    return np.where(np.asarray(order) >= 0, share, 0.0)


def mix(logits: np.ndarray, prediction: Prediction, strength: float) -> np.ndarray:
    """Row by row, log((1 - w) softmax(logits) + w memory) with w the adaptive weight at
    ``strength``: scores the sampler takes as it takes the model's logits."""
    weight = adaptive_weight(prediction.order, prediction.escape, prediction.count, strength)[:, None]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    model = np.exp(shifted)
    model /= model.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        return np.log((1 - weight) * model + weight * prediction.probs)
