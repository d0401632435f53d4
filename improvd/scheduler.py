"""The scheduler: one thread that sends each message at its time and never leaves a note on.

It sleeps until shortly before a message is due, then spins on the monotonic clock for the
last stretch (sleep alone wakes up to a millisecond late). A port that places messages at
their time itself (JACK, at their frame) gets each one ``lead_s`` early, with its time. It
knows every note it has started, per channel, so stop, barge-in, panic and any exception
can release them all.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable

import mido

from improvd.errors import PortError
from improvd.outbox import PLAYER_GONE, SETTLE, Outbox
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
    """``send(message, at)`` plays a message at ``at`` (None: now); ``lead_s``: how early the
    port wants it (0: it sends at once, so it is handed over on time)."""

    def __init__(self, send: Callable[[mido.Message, float | None], None], telemetry: Telemetry | None = None,
                 clock: Callable[[], float] = time.monotonic, realtime_priority: int = 0,
                 lead_s: float = 0.0) -> None:
        self._send = send
        self.lead_s = lead_s
        self.telemetry = telemetry or Telemetry()
        self.clock = clock
        self.realtime_priority = realtime_priority
        self._queue = Outbox()
        self._wake = threading.Condition()
        self._running = False
        self._thread: threading.Thread | None = None
        self.sounding: dict[int, set[int]] = {}  # channel -> notes we started (generated)
        self._ahead: deque[Timed] = deque()  # generated, handed over early (lead_s), not yet due
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
        """Apply an engine reply: cancel, release, then queue its messages (and the answer's
        settling, after them)."""
        if reply.cancel_after is None and not reply.release and not reply.messages and reply.settle_at is None:
            return
        with self._wake:
            if reply.cancel_after is not None:
                self._recall(reply.cancel_after)
            if self._queue.apply(reply):
                self._release(self.sounding)
            self._wake.notify()

    def release_all(self) -> None:
        """Panic: drop what is queued and release every sounding note now."""
        with self._wake:
            self._queue.clear()
            self._release(self.sounding)
            self._release(self.passed_through)

    def release_echoed(self, at: float) -> None:
        """The player is gone: at ``at``, after the releases the engine queued for the keys
        it knew held, release every echoed note of theirs still sounding (one whose NOTE_ON
        reached the engine another way: a repeat, or a lost release on the way in)."""
        with self._wake:
            self._queue.mark(at, PLAYER_GONE)
            self._wake.notify()

    def forget_all(self) -> None:
        """The output's peer is gone: drop what is queued and forget every sounding note
        without releasing it (nothing can hear the release, and a peer that is already back
        must not get NOTE_OFFs for notes it never heard; it gets all-notes-off instead)."""
        with self._wake:
            self._queue.clear()
            self.sounding.clear()
            self.passed_through.clear()
            self._ahead.clear()

    def alive(self) -> bool:
        """Whether the sending thread runs: the watchdog pings only while it does."""
        return self._thread is not None and self._thread.is_alive()

    def pending(self) -> int:
        with self._wake:
            return len(self._queue)

    def _release(self, notes: dict[int, set[int]]) -> None:
        if notes is self.sounding:
            self._ahead.clear()  # released, so nothing of it is left to recall
        for channel, pitches in notes.items():
            for pitch in sorted(pitches):
                self._send_now(mido.Message("note_off", channel=channel, note=pitch, velocity=0))
            pitches.clear()

    def _recall(self, after: float) -> None:
        """What a port was handed early cannot be called back: a note the engine takes back
        (due after ``after``) that has already gone out is ended where it starts, so the
        engine's view and the room's agree and nothing is left sounding."""
        now = self.clock()
        kept: deque[Timed] = deque()
        for timed in self._ahead:
            message = timed.message
            if timed.time <= now:
                continue  # it has sounded: the engine keeps it too
            if timed.time > after and message.type == "note_on" and message.velocity > 0 \
                    and message.note in self.sounding.get(message.channel, ()):
                release = mido.Message("note_off", channel=message.channel, note=message.note, velocity=0)
                self._send_now(release, timed.time)
                self.sounding[message.channel].discard(message.note)
                self.telemetry.count("notes_recalled")
            elif timed.time > after:
                continue
            else:
                kept.append(timed)
        self._ahead = kept

    def _settle(self) -> None:
        """An answer has ended: a generated note still sounding lost its release to a
        cancellation after it went out (counted; it should not happen)."""
        left = sum(len(pitches) for pitches in self.sounding.values())
        if left:
            self.telemetry.count("notes_left_at_answer_end", left)
            log.debug("answer ended with %d of its notes sounding: released", left)
            self._release(self.sounding)

    def _send_now(self, message: mido.Message, at: float | None = None) -> None:
        try:
            self._send(message, at)
        except PortError as err:  # a vanished port must not kill the clock
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
                    due = self._queue.due()
                    hand_over = due - self.lead_s
                    # A port that places messages at their time needs no spinning (which
                    # holds the GIL that port's realtime callback waits for).
                    wait = hand_over - self.clock() - (0.0 if self.lead_s else SPIN_S)
                    if wait > 0:
                        self._wake.wait(wait)
                        continue  # the queue may have changed while we slept
                while self.clock() < hand_over:
                    pass
                with self._wake:
                    if self._queue.due() != due:
                        continue
                    timed = self._queue.pop()
                    if timed is SETTLE:
                        self._settle()
                        continue
                    if timed is PLAYER_GONE:
                        self._release(self.passed_through)
                        continue
                    self._send_now(timed.message, timed.time)
                    late = max(0.0, self.clock() - hand_over)
                    self._track(timed.message, timed.passthrough)
                    if self.lead_s and not timed.passthrough:
                        while self._ahead and self._ahead[0].time <= hand_over:
                            self._ahead.popleft()  # sounded by now
                        self._ahead.append(timed)
                self.telemetry.record("output_lateness", late)
                if timed.answer_deadline is not None:
                    self.telemetry.record("phrase_end_to_first_note", timed.time + late - timed.answer_deadline)
        except BaseException:
            log.exception("scheduler failed; releasing every note")
            with self._wake:
                self._release(self.sounding)
                self._release(self.passed_through)
            raise
