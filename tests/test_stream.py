"""The stream: one line type for the engine and the candidates, and the model state it led to."""

import numpy as np

from improvd import vocab
from improvd.memory import Memory
from improvd.model import StepModel
from improvd.stream import Line, Stream
from tests.engine_helpers import MODEL_PATH, replay

ON, OFF, SHIFT, VELOCITY = vocab.NOTE_ON_OFFSET, vocab.NOTE_OFF_OFFSET, vocab.TIME_SHIFT_OFFSET, vocab.VELOCITY_OFFSET


def test_a_line_follows_generated_tokens_into_its_grammar():
    line = Line(vocab.Encoder(), note_first=True)
    line.apply(VELOCITY + 20)
    assert line.grammar(None).after_velocity
    line.apply(ON + 60)
    line.apply(SHIFT + 9)  # ten ticks
    grammar = line.grammar(end_tick=50)
    assert grammar.own_notes == {60: 0} and grammar.sounding == {60} and grammar.tick == 10
    assert not grammar.note_first and not grammar.after_velocity and grammar.end_tick == 50
    copy = line.copy()
    line.apply(OFF + 60)
    assert line.own_notes == {} and copy.own_notes == {60: 0} and 60 in copy.encoder.sounding


def test_a_stream_plays_tokens_as_midi_and_restores_its_state_and_line():
    stream = Stream(StepModel(MODEL_PATH, device="cpu"), start=0.0, channel=3, memory=Memory())
    stream.fold(stream.encoder.advance(0.5))
    before = stream.snapshot()
    assert stream.play(VELOCITY + 31) is None
    on = stream.play(ON + 64)
    assert (on.type, on.note, on.channel, on.velocity) == ("note_on", 64, 3, vocab.bin_to_velocity(31))
    assert np.allclose(stream.state.h, replay([*vocab.time_shift_tokens(50), VELOCITY + 31, ON + 64]).h, atol=1e-5)
    stream.restore(before)
    assert stream.line.own_notes == {} and stream.state is before.state
