import mido
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from improvd import vocab
from improvd.vocab import Event, EventType, Note

# The boundaries of every range, pinned: a change here changes every model.
BOUNDARIES = [
    (0, Event(EventType.NOTE_ON, 0)),
    (127, Event(EventType.NOTE_ON, 127)),
    (128, Event(EventType.NOTE_OFF, 0)),
    (255, Event(EventType.NOTE_OFF, 127)),
    (256, Event(EventType.TIME_SHIFT, 1)),
    (355, Event(EventType.TIME_SHIFT, 100)),
    (356, Event(EventType.VELOCITY, 0)),
    (387, Event(EventType.VELOCITY, 31)),
]


def test_vocabulary_has_388_classes():
    assert vocab.VOCAB_SIZE == 388
    assert vocab.spec()["size"] == 388


@pytest.mark.parametrize(("index", "event"), BOUNDARIES)
def test_boundary_indices(index, event):
    assert vocab.encode(event) == index
    assert vocab.decode(index) == event


def test_every_index_round_trips():
    for index in range(vocab.VOCAB_SIZE):
        assert vocab.encode(vocab.decode(index)) == index


@pytest.mark.parametrize("event", [Event(EventType.NOTE_ON, 128), Event(EventType.TIME_SHIFT, 0),
                                   Event(EventType.TIME_SHIFT, 101), Event(EventType.VELOCITY, 32)])
def test_out_of_range_values_are_refused(event):
    with pytest.raises(ValueError, match=event.type.value):
        vocab.encode(event)


@pytest.mark.parametrize("index", [-1, 388])
def test_out_of_range_indices_are_refused(index):
    with pytest.raises(ValueError):
        vocab.decode(index)


def test_long_gaps_split_into_one_second_shifts():
    assert vocab.time_shift_tokens(250) == [355, 355, 256 + 49]
    assert vocab.time_shift_tokens(0) == []


def test_velocity_token_only_when_the_bin_changes():
    notes = [Note(60, 101, 0.0, 0.5), Note(62, 104, 0.5, 1.0), Note(64, 40, 1.0, 1.5)]
    tokens = vocab.notes_to_tokens(notes)
    velocity_tokens = [t for t in tokens if vocab.decode(t).type is EventType.VELOCITY]
    assert [vocab.decode(t).value for t in velocity_tokens] == [vocab.velocity_to_bin(101), vocab.velocity_to_bin(40)]


def test_velocity_bins_cover_midi_range():
    assert vocab.velocity_to_bin(1) == 0
    assert vocab.velocity_to_bin(127) == 31
    assert vocab.bin_to_velocity(31) == 127
    assert all(vocab.velocity_to_bin(vocab.bin_to_velocity(b)) == b for b in range(32))


def test_sustain_pedal_extends_notes_until_released():
    encoder = vocab.Encoder()
    tokens = []
    tokens += encoder.feed(mido.Message("control_change", control=64, value=127), 0.0)
    tokens += encoder.feed(mido.Message("note_on", note=60, velocity=80), 0.1)
    tokens += encoder.feed(mido.Message("note_off", note=60), 0.3)
    tokens += encoder.feed(mido.Message("control_change", control=64, value=0), 1.0)
    notes = vocab.tokens_to_notes(tokens)
    assert [(n.pitch, round(n.start, 2), round(n.end, 2)) for n in notes] == [(60, 0.1, 1.0)]


def test_restrike_under_pedal_ends_the_held_note():
    encoder = vocab.Encoder()
    tokens = encoder.feed(mido.Message("control_change", control=64, value=127), 0.0)
    for time, kind in ((0.0, "note_on"), (0.2, "note_off"), (0.5, "note_on"), (0.7, "note_off")):
        tokens += encoder.feed(mido.Message(kind, note=60, velocity=70), time)
    tokens += encoder.feed(mido.Message("control_change", control=64, value=0), 1.0)
    assert [(round(n.start, 2), round(n.end, 2)) for n in vocab.tokens_to_notes(tokens)] == [(0.0, 0.5), (0.5, 1.0)]


def test_note_off_for_a_silent_key_gives_nothing():
    assert vocab.Encoder().feed(mido.Message("note_off", note=60), 1.0) == []


def test_midi_file_round_trip(tmp_path):
    notes = [Note(60, 90, 0.0, 0.5), Note(64, 60, 0.25, 1.25), Note(67, 30, 1.0, 2.0)]
    path = tmp_path / "x.mid"
    vocab.notes_to_midi(notes).save(path)
    back = vocab.midi_to_notes(mido.MidiFile(path))
    assert [n.pitch for n in back] == [60, 64, 67]
    for a, b in zip(notes, back, strict=True):
        assert abs(a.start - b.start) <= 0.01 and abs(a.end - b.end) <= 0.01
        assert vocab.velocity_to_bin(a.velocity) == vocab.velocity_to_bin(b.velocity)


def test_drums_are_skipped_in_files():
    midi = mido.MidiFile(type=0)
    track = mido.MidiTrack([mido.Message("note_on", note=36, velocity=100, channel=9, time=0),
                            mido.Message("note_on", note=60, velocity=100, channel=0, time=0),
                            mido.Message("note_off", note=60, channel=0, time=480),
                            mido.Message("note_off", note=36, channel=9, time=0)])
    midi.tracks.append(track)
    assert [n.pitch for n in vocab.midi_to_notes(midi)] == [60]


@st.composite
def note_lists(draw):
    """Notes of at least 20 ms that never overlap on the same key."""
    notes = []
    for pitch in draw(st.lists(st.integers(0, 127), min_size=1, max_size=6, unique=True)):
        time = 0.0
        for _ in range(draw(st.integers(1, 4))):
            start = time + draw(st.floats(0, 3))
            end = start + draw(st.floats(0.02, 3))
            notes.append(Note(pitch, draw(st.integers(1, 127)), start, end))
            time = end
    return notes


@settings(max_examples=200, deadline=None)
@given(note_lists())
def test_notes_tokens_notes_keeps_pitches_and_times(notes):
    back = vocab.tokens_to_notes(vocab.notes_to_tokens(notes))
    key = lambda n: (n.pitch, n.start)  # noqa: E731
    assert len(back) == len(notes)
    for a, b in zip(sorted(notes, key=key), sorted(back, key=key), strict=True):
        assert a.pitch == b.pitch
        assert abs(a.start - b.start) <= 0.01 + 1e-9
        assert abs(a.end - b.end) <= 0.01 + 1e-9
