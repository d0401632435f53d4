"""improvd's own voice: the answer or duet line it generates into the stream, ahead of time.

Generated events run up to a lookahead ahead of ``now``, each one journaled, so that when
the player comes in everything not yet heard can be taken back and the player's event folded
in after what really sounded. With a tempo and ``quantize``, each onset is placed on the grid
(improvd.tempo): the stream moves on to it first, so the model hears the note where it sounds.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Protocol

import mido

from improvd import vocab
from improvd.config import Live
from improvd.journal import Journal
from improvd.phrase import Plan, ticks
from improvd.reply import Timed
from improvd.sampler import Grammar, Sampler
from improvd.stream import Stream
from improvd.tempo import Beat


class Counts(Protocol):
    notes_out: int


class Voice:
    def __init__(self, stream: Stream, sampler: Sampler, counters: Counts, live: Live, beat: Beat) -> None:
        self.stream, self.sampler, self.counters, self.live, self.beat = stream, sampler, counters, live, beat
        self.journal = Journal()
        self.floor = 0.0  # no message before the last placed onset: output times never go back
        self.last = 0.0  # the time of the last message played: no onset is pulled back before it
        self.answering = False
        self.plan = Plan(0.0, 0.0, 0.0)  # the current (or last) answer's
        self.offset = 0.0  # output times are stream times plus this (the plan's, while answering)
        self.script: deque[int] = deque()  # the chosen answer's events, not yet played

    @property
    def time(self) -> float:
        """Where the stream stands, as an output time."""
        return self.stream.time + self.offset

    def committed_time(self) -> float:
        """Player events cannot be placed before generated events that already sounded."""
        first = self.journal.first_unheard()
        return self.stream.time if first is None else first.line.time

    def take_back(self, now: float) -> bool:
        """Throw away every generated event not yet heard at ``now``; whether there was one."""
        before = self.journal.take_back(now)
        if before is None:
            return False
        self.stream.restore(before)
        self.script.clear()
        self.floor = self.last = 0.0
        return True

    def stop(self) -> None:
        """End the answer or line where the stream stands: its notes are released in the state."""
        self.answering = False
        self.offset = 0.0
        self.script.clear()
        for pitch in sorted(self.stream.line.own_notes):
            self.stream.play(vocab.NOTE_OFF_OFFSET + pitch)

    def start(self, plan: Plan, script: list[int]) -> None:
        """An answer to ``plan``: silence up to its deadline, then ``script`` (if any) played first."""
        self.answering = True
        self.plan, self.offset = plan, plan.output_offset
        self.script = deque(script)
        for token in vocab.time_shift_tokens(ticks(plan.deadline) - self.stream.encoder.tick):
            self._emit(token)
        self.stream.line.note_first = True  # the answer opens on a note at the deadline, not a pause

    def resume_no_sooner_than(self, time: float) -> None:
        """After a rollback the stream stands at the player's event, i.e. at ``now`` or up to
        half a tick before it: an event sampled there would be due before it exists (the
        whole lookahead is generated before any of it is queued), so it could only be sent
        late. Time moves on to ``time`` first, in the state as in the room."""
        gap = math.ceil((time - self.offset) / vocab.TICK_S - 1e-9) - self.stream.encoder.tick
        for token in vocab.time_shift_tokens(gap):
            self._emit(token)

    def generate_until(self, until: float, steps: int | None = None) -> list[Timed]:
        """Events up to stream time ``until``, or to the answer's end (its notes released);
        at most ``steps`` sampled, when given (the rest at the next call)."""
        messages: list[Timed] = []
        sampled = 0
        while True:
            time = self.stream.time
            if self.answering and time + self.offset >= self.plan.answer_end - 1e-9:
                messages += self._finish()
                break
            if time >= until or (steps is not None and sampled >= steps):
                break
            sampled += 1
            line = self.stream.line
            grammar = self._grammar()
            opening = line.note_first  # the answer's first note carries its deadline
            token = self._scripted(grammar)
            if token is None:
                logits = self.stream.memory.mixed(self.stream.state.logits, [line.context], self.live.memory_strength)
                token = self.sampler.sample(logits[0], grammar)
            at = max(time + self.offset, self.floor)
            if self.beat.config.quantize > 0 and vocab.decode(token).type is vocab.EventType.NOTE_ON:
                placed = self._place(at, until)
                if placed != at and not self._still_allowed(token):
                    continue  # moved on to the grid, where the grammar wants something else first
                at = placed
            message = self._emit(token, at)
            if message is not None:
                self.last = at
                # The planned time of the answer's first note: its deadline, or the grid line after it.
                deadline = at if message.type == "note_on" and opening else None
                messages.append(Timed(at, message, deadline))
        return messages

    def _grammar(self) -> Grammar:
        return self.stream.line.grammar(ticks(self.plan.answer_end - self.offset) if self.answering else None)

    def _place(self, at: float, now: float) -> float:
        """Where an onset due ``at`` is played: on the grid, when asked (within half a tick
        of a grid line already passed, else ahead); the stream moves on to it first."""
        placed = self.beat.place(at, now, max(0.0, min(vocab.TICK_S / 2, at - self.last)))
        for token in vocab.time_shift_tokens(ticks(placed - self.offset) - self.stream.encoder.tick):
            self._emit(token)
        self.floor = placed
        return placed

    def _still_allowed(self, token: int) -> bool:
        if self.answering and self.time >= self.plan.answer_end - 1e-9:
            return False
        return bool(self.sampler.mask(self._grammar())[token])

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

    def _finish(self) -> list[Timed]:
        self.answering = False
        self.script.clear()
        time = self.time
        releases = [self._emit(vocab.NOTE_OFF_OFFSET + pitch) for pitch in sorted(self.stream.line.own_notes)]
        return [Timed(time, message) for message in releases if message is not None]

    def _emit(self, token: int, at: float | None = None) -> mido.Message | None:
        """Play a generated token into the stream, journaled so that it can be taken back
        until it has sounded (at ``at``, when its message is sent later than the stream's time)."""
        before = self.stream.snapshot()
        message = self.stream.play(token)
        self.journal.record(max(self.time, self.floor, at or 0.0), before)
        if message is not None and message.type == "note_on":
            self.counters.notes_out += 1
        return message
