"""Whose turn it is: improvd answers when the player's phrase ends (or plays along, in duet),
and gives the turn back when the player comes in again. What was generated but not yet
heard is taken back; what sounds is released, in the model's state as in the room."""

from __future__ import annotations

from typing import Protocol

from improvd.candidates import Candidates, Search
from improvd.config import EngineConfig, Live
from improvd.phrase import Phrase
from improvd.reply import Reply
from improvd.stream import Stream
from improvd.voice import Voice

# Generated output resumes no sooner than this after ``now``: longer than regenerating the
# lookahead takes (bench/duet_regen.py: p99 under 5 ms with both cores busy and SCHED_FIFO).
REACTION_S = 0.02


class Counts(Protocol):
    answers: int
    barge_ins: int
    rollbacks: int


class Turns:
    """The answer policy over the engine's parts: when an answer starts (the silence deadline,
    less the lookahead it is generated ahead by), the candidate search before it, the
    generation that keeps ahead of ``now``, and the take-back and stop when the player returns."""

    def __init__(self, config: EngineConfig, live: Live, counters: Counts, stream: Stream, voice: Voice,
                 phrase: Phrase, candidates: Candidates, generate_steps: int | None = None) -> None:
        self.config, self.live, self.counters = config, live, counters
        self.generate_steps = generate_steps
        self.stream, self.voice, self.phrase, self.candidates = stream, voice, phrase, candidates

    @property
    def lookahead(self) -> float:
        return self.config.lookahead_ms / 1000

    def deadline(self) -> float | None:
        """When the player's phrase counts as ended (None while it goes on)."""
        return self.phrase.deadline(self.stream.line.player_keys_down())

    def fold(self, tokens: list[int], played_at: float | None = None) -> None:
        """Input into the stream; a search from before it is stale."""
        self.candidates.drop()
        self.stream.fold(tokens, played_at)

    def poll(self, now: float) -> Reply:
        """Start the answer ``lookahead`` before the deadline (advancing the candidates until
        then), and keep generating ``lookahead`` ahead of ``now``; when the answer ends, the
        reply says so (``settle_at``)."""
        if self.live.mode == "call-response" and not self.voice.answering:
            if self.candidates.on:
                self.search(now)
            deadline = self.deadline()
            if deadline is not None and now >= deadline - self.lookahead:
                self._start(deadline, now)
        reply = Reply()
        if self.voice.answering or self.live.mode == "duet":
            answering = self.voice.answering
            self.voice.resume_no_sooner_than(now + REACTION_S)
            reply.messages += self.voice.generate_until(now + self.lookahead, self.generate_steps)
            if answering and not self.voice.answering:
                reply.settle_at = self.voice.time
        return reply

    def next_wakeup(self, now: float) -> float | None:
        """When ``poll`` next has work to do; None while only input can change anything."""
        if self.voice.answering or self.live.mode == "duet":
            return max(now, self.stream.time - self.lookahead / 2)
        deadline = self.deadline()
        if deadline is None:
            return None
        if self.candidates.on and self.candidates.pending():
            return now  # candidates to advance
        return max(now, deadline - self.lookahead)

    def search(self, now: float) -> Search | None:
        """Advance the candidate answers for the coming deadline; they must be ready
        ``lookahead`` before it, so None after that or while the phrase goes on."""
        deadline = self.deadline()
        if deadline is None or now >= deadline - self.lookahead:
            return None
        return self.candidates.advance(self.stream, self.phrase, self.phrase.plan(deadline), now)

    def take_back(self, now: float) -> Reply:
        """Throw away every generated event not yet heard at ``now``."""
        if not self.voice.take_back(now):
            return Reply()
        self.counters.rollbacks += 1
        if self.live.mode == "call-response":
            if self.voice.time < self.voice.plan.deadline - 1e-9:  # the answer had not begun: nothing sounded
                self.voice.answering = False
                self.phrase.unanswered()
                self.counters.answers -= 1
            else:  # resume where it was heard up to, ending it if its end was reached
                self.voice.answering = self.voice.time < self.voice.plan.answer_end or bool(self.stream.line.own_notes)
        return Reply(cancel_after=now)

    def barge_in(self, now: float) -> Reply:
        """The player strikes a note: an answer that sounds stops (call-response only)."""
        if not (self.voice.answering and self.live.mode == "call-response"):
            return Reply()
        self.counters.barge_ins += 1
        return self.stop(now)

    def stop(self, now: float, take_back: bool = False) -> Reply:
        """End the answer or duet line at ``now``: its sounding notes are released, in the
        state as in the room."""
        reply = self.take_back(now) if take_back else Reply()
        self.fold(self.stream.encoder.advance(now))
        self.voice.stop()
        return reply.extend(Reply(cancel_after=now, release=True))

    def _start(self, deadline: float, now: float) -> None:
        plan = self.phrase.plan(deadline)
        self.phrase.answered()
        self.counters.answers += 1
        self.voice.start(plan, self.candidates.choose(plan, now) if self.candidates.on else [])
