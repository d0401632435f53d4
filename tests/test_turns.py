"""The answer policy's timing, driven through the engine in simulated time."""

import pytest

from improvd import turns
from tests.engine_helpers import Room, make_engine, note, run


@pytest.mark.parametrize("offset", [0.0, 0.004, 0.0049, 0.006])  # player events fall anywhere on the 10 ms grid
def test_duet_never_schedules_output_before_it_can_exist(offset):
    """Regenerating the lookahead takes milliseconds and none of it is queued before the
    end: after a player event, nothing may be due sooner than REACTION_S from then."""
    eng = make_engine(mode="duet", lookahead_ms=250, seed=11)
    room = Room()
    run(eng, room, 0.0, 1.0)
    for k in range(30):
        now = 1.0 + offset + 0.12 * k
        pitch = 60 + k % 12
        for message, at in ((note("note_on", pitch), now), (note("note_off", pitch), now + 0.1)):
            room.submit(eng.on_message(message, at, at))
            fresh = eng.poll(at)
            assert all(m.time >= at + turns.REACTION_S - 1e-9 for m in fresh.messages), (at, fresh.messages)
            room.submit(fresh)
    assert not room.problems


def test_a_live_poll_generates_a_few_events_and_the_next_ones_go_on_from_there():
    """Live, each poll generates at most ``generate_steps`` events, so the first ones can be
    queued while the rest of the lookahead is made: polled again at once, the engine plays
    exactly what one poll of the whole lookahead plays."""
    whole = make_engine(mode="duet", lookahead_ms=2000, seed=5)
    chunked = make_engine(mode="duet", lookahead_ms=2000, seed=5, generate_steps=3)
    now = 1.0
    for eng in (whole, chunked):
        eng.on_message(note("note_on", 60), now, now)
    expected = [(m.time, m.message) for m in whole.poll(now).messages if not m.passthrough]
    got, polls = [], 0
    while True:
        fresh = [m for m in chunked.poll(now).messages if not m.passthrough]
        polls += 1
        if not fresh and chunked.stream.time >= now + 2.0:
            break
        got += [(m.time, m.message) for m in fresh]
    assert got == expected and len(expected) > 3 and polls > 2
