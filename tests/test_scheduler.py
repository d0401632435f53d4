import threading
import time

import mido

from improvd.engine import Reply, Timed
from improvd.errors import PortError
from improvd.scheduler import Scheduler


class Recorder:
    def __init__(self, fail_on=None):
        self.sent: list[tuple[float, mido.Message]] = []
        self.due: list[float | None] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, message, at=None):
        if self.fail_on is not None and message.type == "note_on" and message.note == self.fail_on:
            raise PortError("port went away")
        with self.lock:
            self.sent.append((time.monotonic(), message))
            self.due.append(at)

    def notes(self):
        with self.lock:
            return [m for _, m in self.sent if m.type in ("note_on", "note_off")]


def on(pitch, channel=0):
    return mido.Message("note_on", note=pitch, velocity=90, channel=channel)


def off(pitch, channel=0):
    return mido.Message("note_off", note=pitch, velocity=0, channel=channel)


def wait_until(condition, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.005)
    return False


def started(recorder, lead_s=0.0):
    scheduler = Scheduler(recorder, lead_s=lead_s)
    scheduler.start()
    return scheduler


def test_start_and_stop_clear_all_sixteen_channels():
    recorder = Recorder()
    scheduler = started(recorder)
    cleared = {m.channel for _, m in recorder.sent if m.type == "control_change" and m.control == 123}
    assert cleared == set(range(16))
    scheduler.stop()
    assert sum(1 for _, m in recorder.sent if m.type == "control_change" and m.control == 123) == 32


def test_messages_go_out_in_time_order_and_not_early():
    recorder = Recorder()
    scheduler = started(recorder)
    now = time.monotonic()
    due = {60: now + 0.06, 62: now + 0.02, 64: now + 0.04}
    scheduler.submit(Reply([Timed(t, on(p)) for p, t in due.items()]))
    assert wait_until(lambda: len(recorder.notes()) == 3)
    sent = [(t, m) for t, m in recorder.sent if m.type == "note_on"]
    assert [m.note for _, m in sent] == [62, 64, 60]
    assert all(t >= due[m.note] for t, m in sent)
    scheduler.stop()


def test_stop_releases_every_sounding_note_per_channel():
    recorder = Recorder()
    scheduler = started(recorder)
    now = time.monotonic()
    scheduler.submit(Reply([Timed(now, on(60)), Timed(now, on(61, channel=5)), Timed(now + 5, off(60))]))
    assert wait_until(lambda: len(recorder.notes()) == 2)
    scheduler.stop()
    assert {(m.channel, m.note) for m in recorder.notes() if m.type == "note_off"} == {(0, 60), (5, 61)}


def test_cancel_drops_later_messages_and_release_silences_the_answer():
    recorder = Recorder()
    scheduler = started(recorder)
    now = time.monotonic()
    passthrough = Timed(now, on(50), passthrough=True)
    scheduler.submit(Reply([Timed(now, on(60)), passthrough, Timed(now + 0.3, off(60)), Timed(now + 0.3, on(62))]))
    assert wait_until(lambda: len(recorder.notes()) == 2)
    scheduler.submit(Reply(cancel_after=time.monotonic(), release=True))
    assert scheduler.pending() == 0
    time.sleep(0.4)
    notes = [(m.type, m.note) for m in recorder.notes()]
    assert ("note_on", 62) not in notes
    assert notes.count(("note_off", 60)) == 1 and ("note_off", 50) not in notes  # the player's note is theirs
    scheduler.stop()
    assert ("note_off", 50) in [(m.type, m.note) for m in recorder.notes()]


def test_a_failing_send_does_not_stop_the_clock():
    recorder = Recorder(fail_on=61)
    scheduler = started(recorder)
    now = time.monotonic()
    scheduler.submit(Reply([Timed(now, on(61)), Timed(now + 0.02, on(62)), Timed(now + 0.04, off(62))]))
    assert wait_until(lambda: len(recorder.notes()) == 2)
    assert scheduler.telemetry.snapshot()["counters"]["send_errors"] == 1
    scheduler.stop()


def test_lateness_and_first_note_latency_are_recorded():
    recorder = Recorder()
    scheduler = started(recorder)
    now = time.monotonic()
    scheduler.submit(Reply([Timed(now + 0.01, on(60), answer_deadline=now), Timed(now + 0.02, off(60))]))
    assert wait_until(lambda: len(recorder.notes()) == 2)
    latency = scheduler.telemetry.snapshot()["latency"]
    assert latency["output_lateness"]["n"] == 2
    assert latency["phrase_end_to_first_note"]["n"] == 1 and latency["phrase_end_to_first_note"]["p50_ms"] >= 10
    scheduler.stop()


def test_a_port_that_places_messages_itself_gets_them_early_with_their_time():
    recorder = Recorder()
    scheduler = started(recorder, lead_s=0.03)
    now = time.monotonic()
    due = now + 0.1
    scheduler.submit(Reply([Timed(due, on(60))]))
    assert wait_until(lambda: recorder.notes())
    (handed, _), = [(t, m) for t, m in recorder.sent if m.type == "note_on"]
    assert due - 0.03 <= handed < due - 0.015
    assert recorder.due[-1] == due
    scheduler.stop()


def test_forget_all_drops_the_queue_and_sounding_notes_without_a_release():
    recorder = Recorder()
    scheduler = started(recorder)
    now = time.monotonic()
    scheduler.submit(Reply([Timed(now, on(60)), Timed(now + 5, off(60))]))
    assert wait_until(lambda: len(recorder.notes()) == 1)
    scheduler.forget_all()
    assert scheduler.pending() == 0
    scheduler.submit(Reply(cancel_after=time.monotonic(), release=True))
    scheduler.stop()
    assert [(m.type, m.note) for m in recorder.notes()] == [("note_on", 60)]


def test_an_answer_that_ends_with_a_note_on_whose_release_was_cancelled_releases_it():
    """A note that went out before a cancellation took its release back still ends with
    the answer, and only improvd's own: the player's echoed notes keep sounding."""
    recorder = Recorder()
    scheduler = started(recorder)
    now = time.monotonic()
    scheduler.submit(Reply([Timed(now + 0.01, on(60)), Timed(now + 0.01, on(64), passthrough=True),
                            Timed(now + 0.3, off(60))]))
    assert wait_until(lambda: len(recorder.notes()) == 2)
    scheduler.submit(Reply(cancel_after=now + 0.05))  # takes the release back
    scheduler.submit(Reply([Timed(now + 0.1, on(67)), Timed(now + 0.15, off(67))], settle_at=now + 0.15))
    assert wait_until(lambda: off(60) in recorder.notes())
    scheduler.stop()
    notes = recorder.notes()
    assert notes.index(off(60)) > notes.index(off(67))  # at the answer's end, after its own releases
    assert off(64) not in notes[:notes.index(off(60)) + 1]
    assert scheduler.telemetry.snapshot()["counters"]["notes_left_at_answer_end"] == 1


def test_a_note_handed_over_early_and_then_taken_back_is_ended_where_it_starts():
    """A port that places messages at their frame gets them ``lead_s`` early, and what it
    holds cannot be called back: a note_on the engine takes back after that gets its
    note_off at the same time, so the room is left with nothing sounding."""
    recorder = Recorder()
    scheduler = started(recorder, lead_s=0.2)
    now = time.monotonic()
    scheduler.submit(Reply([Timed(now + 0.1, on(60)), Timed(now + 0.15, on(64)), Timed(now + 0.5, off(60)),
                            Timed(now + 0.5, off(64))]))
    assert wait_until(lambda: len(recorder.notes()) == 2)  # both note_ons handed over
    # The engine keeps 60, takes 64 back, and goes on without it.
    scheduler.submit(Reply([Timed(now + 0.5, off(60))], cancel_after=now + 0.12))
    assert wait_until(lambda: off(60) in recorder.notes())
    scheduler.stop()
    with recorder.lock:
        sent = [(m, at) for (_, m), at in zip(recorder.sent, recorder.due, strict=True) if m.type != "control_change"]
    assert (off(64), now + 0.15) in sent  # ended at its own time, not after the answer
    assert [m for m, _ in sent].count(off(64)) == 1 and [m for m, _ in sent].count(off(60)) == 1
    assert scheduler.telemetry.snapshot()["counters"]["notes_recalled"] == 1


def test_a_player_gone_leaves_none_of_their_echoed_notes_sounding():
    recorder = Recorder()
    scheduler = started(recorder)
    now = time.monotonic()
    scheduler.submit(Reply([Timed(now, on(58), passthrough=True), Timed(now, on(60))]))
    assert wait_until(lambda: len(recorder.notes()) == 2)
    scheduler.submit(Reply([Timed(now + 0.01, off(58), passthrough=True)]))  # the engine's own release
    scheduler.release_echoed(now + 0.01)
    scheduler.submit(Reply([Timed(now, on(62), passthrough=True)]))  # ... of a key it did not know held
    assert wait_until(lambda: off(62) in recorder.notes())
    notes = recorder.notes()
    assert notes.count(off(58)) == 1 and off(60) not in notes  # no second release; improvd's own note plays on
    scheduler.stop()
