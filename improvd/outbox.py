"""What is waiting to be sent, in time order, and how an engine reply changes it.

Pure (no threads, no clock, no port): the scheduler keeps one behind its lock and sends what
falls due; the tests' simulated room applies replies with the same one.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from improvd.reply import Reply, Timed

SETTLE = object()  # queued at an answer's end: release what it left sounding
PLAYER_GONE = object()  # queued when the player went: release their echoed notes still sounding


class Outbox:
    def __init__(self) -> None:
        self._entries: list[tuple[float, int, Timed | object]] = []  # (time, order, message or SETTLE)
        self._order = itertools.count()

    def apply(self, reply: Reply) -> bool:
        """Cancel, drop, then queue, as ``reply`` says: what is due after ``cancel_after`` goes;
        with ``release``, everything generated goes (the player's echoed notes stay); then its
        messages, and the answer's settling after them. Whether the caller must release every
        generated note still sounding (``release``)."""
        if reply.cancel_after is not None:
            self._keep(lambda entry: entry[0] <= reply.cancel_after)
        if reply.release:  # what is still queued of the line being stopped is stale too
            self._keep(lambda entry: entry[2] is PLAYER_GONE or (entry[2] is not SETTLE and entry[2].passthrough))
        for timed in reply.messages:
            heapq.heappush(self._entries, (timed.time, next(self._order), timed))
        if reply.settle_at is not None:
            heapq.heappush(self._entries, (reply.settle_at, next(self._order), SETTLE))
        return reply.release

    def mark(self, at: float, marker: object) -> None:
        """A marker (PLAYER_GONE) at ``at``, after what is already queued for that time."""
        heapq.heappush(self._entries, (at, next(self._order), marker))

    def due(self) -> float | None:
        """When the first entry is due (None when empty)."""
        return self._entries[0][0] if self._entries else None

    def pop(self) -> Timed | object:
        """The first entry: a message, SETTLE or a marker."""
        return heapq.heappop(self._entries)[2]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[float, int, Timed | object]]:
        return iter(sorted(self._entries))

    def _keep(self, wanted) -> None:
        self._entries = [entry for entry in self._entries if wanted(entry)]
        heapq.heapify(self._entries)
