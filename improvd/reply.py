"""What the engine hands the scheduler: messages with their times, and what to take back."""

from __future__ import annotations

from dataclasses import dataclass, field

import mido


@dataclass(frozen=True)
class Timed:
    """A message to send at ``time``; ``answer_deadline`` marks an answer's first note,
    ``passthrough`` the player's own notes echoed to the output."""

    time: float
    message: mido.Message
    answer_deadline: float | None = None
    passthrough: bool = False


@dataclass
class Reply:
    """What the scheduler must do: drop what it holds for later than ``cancel_after``;
    if ``release``, drop every generated message it holds and release every generated
    note still sounding; then play ``messages``. ``settle_at``: an answer ends then, and
    any note improvd started that still sounds at that moment is released (the answer's
    own releases come first; this catches a note whose release a cancellation took back
    after the note itself had gone out)."""

    messages: list[Timed] = field(default_factory=list)
    cancel_after: float | None = None
    release: bool = False
    settle_at: float | None = None

    def extend(self, other: Reply) -> Reply:
        if other.cancel_after is not None:
            earlier = other.cancel_after if self.cancel_after is None else min(self.cancel_after, other.cancel_after)
            self.cancel_after = earlier
            self.messages = [m for m in self.messages if m.time <= other.cancel_after]
            if self.settle_at is not None and self.settle_at > other.cancel_after:
                self.settle_at = None
        self.release |= other.release
        if other.settle_at is not None:
            self.settle_at = other.settle_at
        self.messages += other.messages
        return self
