"""The daemon's input queue: a flood is worked off, a phrase that waited is kept."""

from __future__ import annotations

import time

import mido

from improvd.daemon import INPUT_BATCH, Inbox
from improvd.telemetry import Telemetry


def note(kind: str, pitch: int) -> mido.Message:
    return mido.Message(kind, note=pitch, velocity=80 if kind == "note_on" else 0)


def test_a_phrase_that_waited_through_a_busy_moment_is_heard_whole() -> None:
    inbox = Inbox(Telemetry())
    played = time.monotonic() - 0.5  # the loop was busy for half a second
    phrase = [note(kind, pitch) for pitch in (60, 62, 64, 65) for kind in ("note_on", "note_off")]
    for i, message in enumerate(phrase):
        inbox.put(message, played + 0.05 * i)
    assert [m for _, m in inbox.take(0, INPUT_BATCH)] == phrase


def test_under_a_flood_old_new_notes_go_and_releases_stay() -> None:
    telemetry = Telemetry()
    inbox = Inbox(telemetry)
    old = time.monotonic() - 0.5
    for pitch in range(40, 40 + 2 * INPUT_BATCH):
        inbox.put(note("note_on", pitch), old)
        inbox.put(note("note_off", pitch), old)
    taken = [m for _, m in inbox.take(0, INPUT_BATCH)]
    assert taken and all(m.type == "note_off" for m in taken)
    assert telemetry.snapshot()["counters"]["input_dropped"] >= INPUT_BATCH // 2
