"""The player's phrase: when it ends (the silence deadline) and the answer planned for it."""

from __future__ import annotations

from dataclasses import dataclass

from improvd import vocab
from improvd.config import EngineConfig, Live
from improvd.tempo import Beat


def ticks(seconds: float) -> int:
    return round(seconds / vocab.TICK_S)


@dataclass(frozen=True)
class Plan:
    """Where the answer starts and ends, as the engine will play it."""

    deadline: float
    answer_end: float
    output_offset: float  # output times are stream (grid) times plus this

    @property
    def end_tick(self) -> int:
        return ticks(self.answer_end - self.output_offset)


class Phrase:
    """The phrase the player is playing, from its first note to the last thing heard."""

    def __init__(self, config: EngineConfig, live: Live, beat: Beat, now: float) -> None:
        self.config, self.live, self.beat = config, live, beat
        self._span: tuple[tuple[float, float], tuple[float, float]] | None = None  # (deadline, length) -> span
        self.start: float | None = None  # the first note; None between phrases
        self.notes: list[tuple[int, int]] = []  # (pitch, velocity) of the phrase's notes
        self.timing: list[list[float]] = []  # [start, end (-1: still down), pitch] of each note
        self.last_heard = now  # the player's last event
        self.next_length: float | None = None  # the next answer's length, if given (a primer's)
        self._start_before_answer: float | None = None

    def strike(self, pitch: int, velocity: int, now: float) -> None:
        if self.start is None:
            self.start = now
            self.notes, self.timing = [], []
        self.notes.append((pitch, velocity))
        self.timing.append([now, -1.0, pitch])

    def release(self, pitch: int, now: float) -> None:
        """A note of the phrase ends (as the model hears it: the pedal folded in)."""
        for timing in self.timing:
            if timing[1] < 0 and timing[2] == pitch and timing[0] < now:  # not a re-strike's new note
                timing[1] = now

    def durations(self) -> list[tuple[float, float]]:
        """(start, end) of each note of the phrase, the ones still down ending now."""
        return [(start, end if end >= 0 else self.last_heard) for start, end, _ in self.timing]

    def deadline(self, keys_down: bool) -> float | None:
        """When the phrase counts as ended: ``silence_ms`` after the player's last event,
        with every key up (a held note or pedal is not silence)."""
        if self.start is None or keys_down:
            return None
        return self.last_heard + self.config.silence_ms / 1000

    def length(self) -> float:
        start = self.last_heard if self.start is None else self.start
        return max(0.0, self.last_heard - start)

    def plan(self, deadline: float) -> Plan:
        """The answer: starting exactly on the deadline (not on the 10 ms grid the model
        counts in: output times are grid times plus an offset under 5 ms), or on the beat
        or bar after it when a tempo is known and asked for; as long as the phrase times
        the live ratio, within the configured bounds (or in whole beats or bars). Made
        once per deadline, so that candidates searched for it still fit when it starts
        while the clock's tempo moves."""
        length = self.next_length
        if length is None:
            length = min(max(self.live.answer_ratio * self.length(), self.config.min_answer_s),
                         self.config.max_answer_s)
        if self._span is None or self._span[0] != (deadline, length):
            self._span = ((deadline, length), self.beat.span(deadline, length, deadline))
        start, end = self._span[1]
        return Plan(start, end, start - ticks(start) * vocab.TICK_S)

    def answered(self) -> None:
        """The answer starts: the phrase is over (until the answer is taken back unheard)."""
        self.next_length = None
        self._start_before_answer, self.start = self.start, None

    def unanswered(self) -> None:
        """The answer was taken back before it began: the phrase goes on."""
        self.start = self._start_before_answer

    def end(self) -> None:
        self.start = None
