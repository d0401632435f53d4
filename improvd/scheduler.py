"""The scheduler: one thread that sends each message at its time and never leaves a note on.

It sleeps until shortly before a message is due, then spins on the monotonic clock for the
last stretch (sleep alone wakes up to a millisecond late). It knows every note it has
started, per channel, so stop, barge-in, panic and any exception can release them all.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

import mido

from improvd.reply import Reply, Timed
from improvd.telemetry import Telemetry

log = logging.getLogger(__name__)

SPIN_S = 0.002  # spin this long before a due time instead of trusting sleep
IDLE_WAIT_S = 0.5


def all_notes_off() -> list[mido.Message]:
    """CC 123 (All Notes Off) and CC 64 = 0 (pedal up) on all 16 channels: clears what a
    crashed run or another program may have left sounding."""
    return [mido.Message("control_change", channel=ch, control=cc, value=0)
            for ch in range(16) for cc in (64, 123)]


def raise_priority(priority: int, thread: str) -> None:
    """SCHED_FIFO at ``priority`` for the calling thread (0: leave it as it is); where the
    system refuses, say so and run on at normal priority."""
    if not priority:
        return
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
        log.info("%s thread runs SCHED_FIFO priority %d", thread, priority)
    except (OSError, AttributeError) as err:
        log.warning("realtime priority %d for the %s thread refused (%s): timing may suffer under load",
                    priority, thread, err)


class Scheduler:
    def __init__(self, send: Callable[[mido.Message], None], telemetry: Telemetry | None = None,
                 clock: Callable[[], float] = time.monotonic, realtime_priority: int = 0) -> None:
        self._send = send
        self.telemetry = telemetry or Telemetry()
        self.clock = clock
        self.realtime_priority = realtime_priority
        self._queue: list[tuple[float, int, Timed]] = []  # (time, order, message)
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.sounding: dict[int, set[int]] = {}  # channel -> notes we started (generated)
        self.passed_through: dict[int, set[int]] = {}  # channel -> the player's echoed notes

    def start(self) -> None:
        for message in all_notes_off():
            self._send_now(message)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="improvd-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sending, release every note we started, and clear the channels."""
        with self._wake:
            self._running = False
            self._queue.clear()
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._wake:
            self._release(self.sounding)
            self._release(self.passed_through)
        for message in all_notes_off():
            self._send_now(message)

    def submit(self, reply: Reply) -> None:
        """Apply an engine reply: cancel, release, then queue its messages."""
        if reply.cancel_after is None and not reply.release and not reply.messages:
            return
        with self._wake:
            if reply.cancel_after is not None:
                self._queue = [e for e in self._queue if e[0] <= reply.cancel_after]
                heapq.heapify(self._queue)
            if reply.release:  # what is still queued of the line being stopped is stale too
                self._queue = [e for e in self._queue if e[2].passthrough]
                heapq.heapify(self._queue)
                self._release(self.sounding)
            for timed in reply.messages:
                heapq.heappush(self._queue, (timed.time, next(self._order), timed))
            self._wake.notify()

    def release_all(self) -> None:
        """Panic: drop what is queued and release every sounding note now."""
        with self._wake:
            self._queue.clear()
            self._release(self.sounding)
            self._release(self.passed_through)

    def alive(self) -> bool:
        """Whether the sending thread runs: the watchdog pings only while it does."""
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> int:
        with self._wake:
            return len(self._queue)

    def _release(self, notes: dict[int, set[int]]) -> None:
        for channel, pitches in notes.items():
            for pitch in sorted(pitches):
                self._send_now(mido.Message("note_off", channel=channel, note=pitch, velocity=0))
            pitches.clear()

    def _send_now(self, message: mido.Message) -> None:
        try:
            self._send(message)
        except Exception as err:  # noqa: BLE001 - a vanished port must not kill the clock
            self.telemetry.count("send_errors")
            log.debug("send failed: %s", err)

    def _track(self, message: mido.Message, passthrough: bool) -> None:
        notes = self.passed_through if passthrough else self.sounding
        if message.type == "note_on" and message.velocity > 0:
            notes.setdefault(message.channel, set()).add(message.note)
        elif message.type in ("note_on", "note_off"):
            notes.get(message.channel, set()).discard(message.note)

    def _run(self) -> None:
        raise_priority(self.realtime_priority, "scheduler")
        try:
            while True:
                with self._wake:
                    if not self._running:
                        return
                    if not self._queue:
                        self._wake.wait(IDLE_WAIT_S)
                        continue
                    due = self._queue[0][0]
                    wait = due - self.clock() - SPIN_S
                    if wait > 0:
                        self._wake.wait(wait)
                        continue  # the queue may have changed while we slept
                while self.clock() < due:
                    pass
                with self._wake:
                    if not self._queue or self._queue[0][0] != due:
                        continue
                    _, _, timed = heapq.heappop(self._queue)
                    self._send_now(timed.message)
                    sent_at = self.clock()
                    self._track(timed.message, timed.passthrough)
                self.telemetry.record("output_lateness", max(0.0, sent_at - timed.time))
                if timed.answer_deadline is not None:
                    self.telemetry.record("phrase_end_to_first_note", sent_at - timed.answer_deadline)
        except BaseException:
            log.exception("scheduler failed; releasing every note")
            with self._wake:
                self._release(self.sounding)
                self._release(self.passed_through)
            raise
