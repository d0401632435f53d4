"""What improvd has generated but the room has not yet heard, and how to take it back:
before each generated event the stream is snapshotted here, and restoring the snapshot at
the first unheard event undoes everything after it."""

from __future__ import annotations

from improvd.stream import Snapshot


class Journal:
    def __init__(self) -> None:
        self._entries: list[tuple[float, Snapshot]] = []  # (when it has sounded, the stream before it)

    def record(self, heard_at: float, before: Snapshot) -> None:
        """A generated event whose effect has sounded at ``heard_at`` (a shift: when it ends)."""
        self._entries.append((heard_at, before))

    def heard(self, now: float) -> None:
        """Forget the events that have sounded by ``now``: they can no longer be undone."""
        heard = 0
        while heard < len(self._entries) and self._entries[heard][0] <= now:
            heard += 1
        del self._entries[:heard]

    def first_unheard(self) -> Snapshot | None:
        """The stream as it was before the first event not yet heard; None if all were."""
        return self._entries[0][1] if self._entries else None

    def take_back(self, now: float) -> Snapshot | None:
        """The snapshot to restore to undo every event not heard by ``now``, forgetting them all."""
        self.heard(now)
        first = self.first_unheard()
        self._entries.clear()
        return first
