"""The journal: what improvd generated and the room has not yet heard can be taken back."""

from improvd import vocab
from improvd.journal import Journal
from improvd.model import State
from improvd.stream import Line, Snapshot


def snapshot(tick: int) -> Snapshot:
    encoder = vocab.Encoder()
    encoder.tick = tick
    return Snapshot(State(None, None, None), Line(encoder))


def test_take_back_returns_the_stream_before_the_first_unheard_event_and_forgets_all():
    journal = Journal()
    for tick in range(5):
        journal.record(heard_at=(tick + 1) * 0.1, before=snapshot(tick))
    first = journal.take_back(0.25)  # events heard at 0.1 and 0.2 have sounded
    assert first.line.encoder.tick == 2
    assert journal.first_unheard() is None and journal.take_back(0.3) is None


def test_heard_events_can_no_longer_be_undone():
    journal = Journal()
    journal.record(0.1, snapshot(0))
    journal.record(0.2, snapshot(1))
    journal.heard(0.1)
    assert journal.first_unheard().line.encoder.tick == 1
    journal.heard(0.2)
    assert journal.take_back(0.2) is None
