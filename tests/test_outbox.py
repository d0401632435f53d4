"""The scheduler's queue alone: what an engine reply keeps, drops and adds, in what order."""

import mido

from improvd.outbox import SETTLE, Outbox
from improvd.reply import Reply, Timed


def on(pitch: int) -> mido.Message:
    return mido.Message("note_on", note=pitch, velocity=90)


def drain(box: Outbox) -> list:
    out = []
    while box:
        out.append(box.pop())
    return out


def test_messages_come_out_in_time_order_ties_in_the_order_given():
    box = Outbox()
    late, first, second = Timed(0.3, on(60)), Timed(0.1, on(62)), Timed(0.1, on(64))
    assert not box.apply(Reply([late, first, second]))
    assert box.due() == 0.1
    assert drain(box) == [first, second, late]
    assert box.due() is None


def test_cancel_drops_what_is_due_after_it_and_keeps_the_rest():
    box = Outbox()
    kept, dropped = Timed(0.2, on(60)), Timed(0.4, on(62))
    box.apply(Reply([kept, dropped], settle_at=0.5))
    box.apply(Reply(cancel_after=0.2))
    assert drain(box) == [kept]


def test_release_drops_everything_generated_keeps_the_players_echo_and_asks_for_the_release():
    box = Outbox()
    echo = Timed(0.3, on(50), passthrough=True)
    box.apply(Reply([Timed(0.2, on(60)), echo], settle_at=0.4))
    assert box.apply(Reply(release=True))
    assert drain(box) == [echo]


def test_an_answers_settling_comes_after_its_own_releases_at_the_same_time():
    box = Outbox()
    release = Timed(1.0, mido.Message("note_off", note=60))
    box.apply(Reply([Timed(0.5, on(60)), release], settle_at=1.0))
    assert drain(box)[1:] == [release, SETTLE]
