"""Turning logits into the next event: temperature, top-p, and a grammar mask that keeps
the output playable MIDI whatever the network says."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from improvd import vocab
from improvd.config import Live, SamplerConfig

ON, OFF = vocab.NOTE_ON_OFFSET, vocab.NOTE_OFF_OFFSET
SHIFT, VELOCITY = vocab.TIME_SHIFT_OFFSET, vocab.VELOCITY_OFFSET
TYPE_STARTS = np.array(sorted((ON, OFF, SHIFT, VELOCITY)))  # each event type's first token
TYPE_OF = np.repeat(np.arange(len(TYPE_STARTS)), np.diff(np.append(TYPE_STARTS, vocab.VOCAB_SIZE)))


@dataclass(frozen=True)
class Grammar:
    """What the mask needs to know about the stream at this point."""

    own_notes: dict[int, int]  # pitch -> start tick, notes the model is sounding
    sounding: frozenset[int]  # every key sounding in the stream (player's and model's)
    tick: int  # the stream's current time, in 10 ms ticks
    velocity_bin: int | None
    after_velocity: bool  # the previous token was a VELOCITY
    note_first: bool  # no silence allowed before the next note (the answer's first note)
    end_tick: int | None = None  # the answer ends here: no TIME_SHIFT beyond it


class Sampler:
    """Draws events for one stream (``sample``) or many at once (``sample_rows``), at the
    temperature the musician has set live."""

    def __init__(self, config: SamplerConfig, live: Live, rng: np.random.Generator) -> None:
        self.config, self.live, self.rng = config, live, rng

    def mask(self, grammar: Grammar) -> np.ndarray:
        """Allowed tokens: NOTE_OFF only for the model's own notes sounding min_note_s; NOTE_ON only for
        silent keys in range under the polyphony cap; TIME_SHIFT no further than the moment
        the oldest note reaches max_note_s, which then must be released."""
        s = self.config
        allowed = np.zeros(vocab.VOCAB_SIZE, bool)
        max_ticks = round(s.max_note_s / vocab.TICK_S)
        overdue = [p for p, start in grammar.own_notes.items() if grammar.tick - start >= max_ticks]
        if overdue:
            allowed[[OFF + p for p in overdue]] = True
            return allowed
        shortest = max(1, round(s.min_note_s / vocab.TICK_S))  # a note lasts at least a tick
        for pitch, start in grammar.own_notes.items():
            allowed[OFF + pitch] = grammar.tick - start >= shortest
        if len(grammar.own_notes) < s.max_polyphony:
            allowed[ON + s.pitch_low : ON + s.pitch_high + 1] = True
            # the model's own notes too: a player's NOTE_OFF for a key improvd holds leaves it sounding
            for pitch in grammar.sounding | grammar.own_notes.keys():
                allowed[ON + pitch] = False
        if not grammar.after_velocity:
            allowed[VELOCITY : VELOCITY + vocab.VELOCITY_BINS] = True
            if grammar.velocity_bin is not None:
                allowed[VELOCITY + grammar.velocity_bin] = False
            if not grammar.note_first:
                longest = vocab.MAX_SHIFT_TICKS
                if grammar.own_notes:
                    oldest = min(grammar.own_notes.values())
                    longest = min(longest, oldest + max_ticks - grammar.tick)
                if grammar.end_tick is not None:
                    longest = min(longest, max(1, grammar.end_tick - grammar.tick))
                allowed[SHIFT : SHIFT + longest] = True
        if not allowed.any():  # every key in range is held by the player: wait
            allowed[SHIFT] = True
        return allowed

    def sample(self, logits: np.ndarray, grammar: Grammar) -> int:
        """One token drawn from the masked, tempered, nucleus-truncated distribution."""
        probs = self._probabilities(logits, self.mask(grammar))
        order = np.argsort(probs)[::-1]
        cumulative = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cumulative, self.config.top_p)) + 1]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[self.rng.choice(len(keep), p=kept)])

    def sample_rows(self, logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """One token per row of ``logits`` [rows, vocab] under its row of ``allowed``, drawn
        from the same distribution as ``sample``: K candidate answers cost one numpy pass."""
        probs = self._probabilities(logits, allowed)
        order = np.argsort(-probs, axis=1, kind="stable")
        ranked = np.take_along_axis(probs, order, axis=1)
        kept = np.arange(probs.shape[1]) <= (np.cumsum(ranked, axis=1) < self.config.top_p).sum(1, keepdims=True)
        cdf = np.cumsum(np.where(kept, ranked, 0.0), axis=1)
        draw = self.rng.random(len(probs)) * cdf[:, -1]
        pick = np.minimum((cdf <= draw[:, None]).sum(1), kept.sum(1) - 1)
        return order[np.arange(len(probs)), pick]

    def _probabilities(self, logits: np.ndarray, allowed: np.ndarray) -> np.ndarray:
        """Tempered softmax (over the last axis) in which the grammar picks *which* event,
        not *what kind*: each event type keeps the probability the model gave it, shared
        among its allowed tokens. A model that means to release a note but is unsure which
        (a NOTE_OFF for a key that is not sounding) releases one of the sounding notes,
        instead of that mass going to new notes and notes piling up.

        Every draw (single answers, candidate rows, duet) forms its distribution here: the
        place where another source (a memory of the player) would mix into the model's."""
        scaled = logits.astype(np.float64) / self.live.temperature
        masked = np.where(allowed, scaled, -np.inf)
        # +inf for a type with nothing allowed: those tokens are masked out just below
        shift = (_log_mass_by_type(scaled) - _log_mass_by_type(masked))[..., TYPE_OF]
        log_probs = np.where(allowed, scaled + shift, -np.inf)
        probs = np.exp(log_probs - log_probs.max(axis=-1, keepdims=True))
        return probs / probs.sum(axis=-1, keepdims=True)


def _log_mass_by_type(scaled: np.ndarray) -> np.ndarray:
    """log sum exp of the scores of each event type's tokens (-inf where all are -inf)."""
    top = np.maximum.reduceat(scaled, TYPE_STARTS, axis=-1)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.log(np.add.reduceat(np.exp(scaled - top[..., TYPE_OF]), TYPE_STARTS, axis=-1)) + top


def make_rng(seed: int) -> np.random.Generator:
    """A seeded generator for reproducible runs, or fresh entropy when ``seed`` is -1."""
    return np.random.default_rng(None if seed < 0 else seed)
