"""The engine in simulated time, with the shipped ONNX model and fixed seeds."""

import mido
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from improvd import vocab
from tests.engine_helpers import RecordingModel, Room, make_engine, note, phrase, replay, run, stream_tokens

SILENCE = 0.5


def answer_notes(room: Room):
    return [t for t in room.sent if t.message.type == "note_on"]


def test_call_response_answers_after_the_silence_with_its_first_note_on_the_deadline():
    eng = make_engine(min_answer_s=2.0, max_answer_s=2.0)
    room = Room()
    events = phrase(0.0)
    last_event = max(t for t, _ in events)
    run(eng, room, 0.0, 6.0, events=events)
    deadline = last_event + SILENCE
    notes = answer_notes(room)
    assert notes, "no answer"
    assert notes[0].time == pytest.approx(deadline, abs=1e-9)  # on the deadline, not the 10 ms grid
    assert notes[0].answer_deadline == pytest.approx(deadline)
    assert all(t.time >= deadline - vocab.TICK_S for t in room.sent)
    assert max(t.time for t in room.sent) <= deadline + 2.0 + vocab.TICK_S
    assert not room.sounding and not room.problems
    assert eng.counters.answers == 1 and eng.counters.notes_in == 6


def test_answer_length_follows_the_phrase_within_bounds():
    eng = make_engine(min_answer_s=1.0, max_answer_s=8.0, answer_ratio=1.0)
    room = Room()
    events = phrase(0.0, pitches=(60, 62, 64, 65, 67, 69, 71, 72, 74, 76, 77, 79), spacing=0.25)
    run(eng, room, 0.0, 10.0, events=events)
    phrase_length = max(t for t, _ in events)  # first key down at 0.0 to last key up
    assert eng.voice.plan.answer_end - eng.voice.plan.deadline == pytest.approx(phrase_length, abs=vocab.TICK_S)


def test_no_answer_while_a_key_is_held():
    eng = make_engine()
    room = Room()
    run(eng, room, 0.0, 3.0, events=[(0.0, note("note_on", 60))])
    assert room.sent == [] and eng.counters.answers == 0


def test_output_is_playable_midi_and_respects_the_limits():
    eng = make_engine(random_seed=3, min_answer_s=8.0, max_answer_s=8.0, max_polyphony=2, max_note_s=0.5,
                      pitch_low=48, pitch_high=84)
    room = Room()
    run(eng, room, 0.0, 12.0, events=phrase(0.0))
    assert not room.problems and not room.sounding
    starts = {}
    polyphony = 0
    for timed in room.sent:
        m = timed.message
        if m.type == "note_on":
            assert 48 <= m.note <= 84
            starts[m.note] = timed.time
            polyphony = max(polyphony, len(starts))
        else:
            assert timed.time - starts.pop(m.note) <= 0.5 + 1e-9
    assert polyphony <= 2


def test_barge_in_stops_the_answer_releases_and_rolls_back_the_unheard_part():
    eng = make_engine(random_seed=11, model_class=RecordingModel, min_answer_s=4.0, max_answer_s=4.0)
    room = Room()
    events = phrase(0.0)
    deadline = max(t for t, _ in events) + SILENCE
    run(eng, room, 0.0, deadline + 1.0, events=events)
    assert answer_notes(room), "the answer had not started"
    barge = deadline + 1.0 + 0.005
    room.advance(barge)
    reply = eng.on_message(note("note_on", 60), barge, barge)
    assert reply.release and reply.cancel_after == barge
    assert eng.counters.barge_ins == 1 and not eng.voice.answering
    assert eng.stream.line.own_notes == {}
    # The state holds the phrase, the answer notes that sounded by then, their releases,
    # and the player's new note: nothing generated after the barge-in survives.
    heard_on = [t.message.note for t in room.sent if t.message.type == "note_on"]
    assert [tok for tok in stream_tokens(eng) if tok < 128] == [62, 66, 69, 71, 69, 66] + heard_on + [60]
    # ... and the state is exactly that of replaying the surviving tokens from scratch.
    expected = replay(stream_tokens(eng))
    state = eng.stream.state
    assert np.allclose(state.h, expected.h, atol=1e-5) and np.allclose(state.c, expected.c, atol=1e-5)
    room.submit(reply)
    assert not room.sounding and not room.queue
    # The player's new phrase gets its own answer afterwards.
    run(eng, room, barge + 0.01, barge + 4.0, events=[(barge + 0.2, note("note_off", 60))])
    assert eng.counters.answers == 2 and not room.problems


def test_what_the_port_already_holds_counts_as_heard_at_a_barge_in():
    """A JACK port gets each message a period and a margin before it is due, and cannot
    give it back: at a barge-in, what is due within that lead has sounded in the state."""
    lead = 0.05
    eng = make_engine(random_seed=11, model_class=RecordingModel, min_answer_s=4.0, max_answer_s=4.0,
                      handed_over_s=lead)
    room = Room()
    events = phrase(0.0)
    deadline = max(t for t, _ in events) + SILENCE
    now = deadline + 0.2
    run(eng, room, 0.0, now, events=events)

    def coming() -> list[float]:
        return [t for t, _, timed in room.queue if timed.message.type == "note_on" and t > now + lead]

    while not coming():  # on to a moment when an answer note lies queued beyond the port's lead
        run(eng, room, now + 0.01, now + 0.05)
        now += 0.05
        assert now < deadline + 4.0, "the answer has no note to barge in on"
    # The port already holds that note, not yet due.
    barge = min(coming()) - lead / 2
    due = min(coming())
    run(eng, room, now + 0.01, barge)
    room.advance(barge + lead)  # handed over: as good as played
    assert any(t.time == due for t in room.sent)
    reply = eng.on_message(note("note_on", 60), barge, barge)
    heard_on = [t.message.note for t in room.sent if t.message.type == "note_on"]
    assert [tok for tok in stream_tokens(eng) if tok < 128][6:] == heard_on + [60]
    assert reply.release


def test_barge_in_right_after_the_first_note_releases_it_when_the_deadline_is_off_the_grid():
    eng = make_engine(random_seed=2, min_answer_s=2.0, max_answer_s=2.0)
    room = Room()
    events = [(0.0, note("note_on", 62)), (0.473, note("note_off", 62))]
    deadline = 0.473 + SILENCE  # 0.973: the 10 ms grid point before it is 0.97
    run(eng, room, 0.0, deadline, step=0.001, events=events)
    room.advance(deadline + 0.001)
    assert answer_notes(room) and answer_notes(room)[0].time == pytest.approx(deadline)
    reply = eng.on_message(note("note_on", 60), deadline + 0.001, deadline + 0.001)
    assert reply.release and eng.counters.barge_ins == 1
    room.submit(reply)
    assert not room.sounding and not room.queue


def test_player_returning_before_the_deadline_cancels_the_speculative_answer():
    eng = make_engine(lookahead_ms=300)
    room = Room()
    events = phrase(0.0)
    last = max(t for t, _ in events)
    run(eng, room, 0.0, last + SILENCE - 0.1, events=events)
    assert eng.voice.answering and room.queue, "no answer generated ahead of the deadline"
    reply = eng.on_message(note("note_on", 72), last + SILENCE - 0.05, last + SILENCE - 0.05)
    room.submit(reply)
    assert not room.queue and room.sent == []
    assert not eng.voice.answering and eng.counters.answers == 0
    assert eng.phrase.start == 0.0  # the phrase goes on; it did not end


def test_duet_regenerates_the_lookahead_when_the_player_comes_in():
    eng = make_engine(mode="duet", lookahead_ms=250, seed=5)
    room = Room()
    run(eng, room, 0.0, 2.0)
    assert room.sent, "duet played nothing"
    reply = eng.on_message(note("note_on", 50), 2.0, 2.0)
    assert reply.cancel_after == 2.0 and not reply.release
    room.submit(reply)
    assert all(e[0] <= 2.0 for e in room.queue)
    fresh = eng.poll(2.0)
    assert eng.stream.time >= 2.25 - vocab.TICK_S  # the lookahead is refilled at once
    assert all(m.time >= 2.0 - vocab.TICK_S for m in fresh.messages)
    room.submit(fresh)
    run(eng, room, 2.01, 6.0, events=[(2.3, note("note_off", 50))])
    assert not room.problems


def test_seed_primes_the_state_and_answers_with_the_given_length():
    eng = make_engine(model_class=RecordingModel)
    room = Room()
    motif = phrase(0.0)
    reply = eng.prime(motif, now=5.0, length=3.0)
    room.submit(reply)
    assert sum(1 for t in stream_tokens(eng) if t < 128) == 6  # every motif note folded in
    run(eng, room, 5.0, 10.0)
    notes = answer_notes(room)
    assert notes and notes[0].time == pytest.approx(5.0 + SILENCE, abs=vocab.TICK_S)
    assert eng.voice.plan.answer_end - eng.voice.plan.deadline == pytest.approx(3.0)
    assert not room.sounding


def test_same_seed_same_answer():
    outputs = []
    for _ in range(2):
        eng, room = make_engine(random_seed=42), Room()
        run(eng, room, 0.0, 5.0, events=phrase(0.0))
        outputs.append([(round(t.time, 3), str(t.message)) for t in room.sent])
    assert outputs[0] == outputs[1] and outputs[0]


def test_control_changes():
    eng = make_engine()
    eng.on_message(mido.Message("control_change", control=1, value=127), 0.0, 0.0)
    assert eng.live.temperature == pytest.approx(2.0)
    eng.on_message(mido.Message("control_change", control=1, value=0), 0.0, 0.0)
    assert eng.live.temperature == pytest.approx(0.25)
    eng.on_message(mido.Message("control_change", control=2, value=127), 0.0, 0.0)
    assert eng.live.answer_ratio == pytest.approx(4.0)
    eng.on_message(mido.Message("control_change", control=1, value=85), 0.0, 0.0)
    assert eng.live.temperature == pytest.approx(1.0, abs=0.01)
    room = Room()
    run(eng, room, 0.0, 1.0)
    eng.on_message(mido.Message("control_change", control=80, value=127), 1.0, 1.0)
    assert eng.live.mode == "duet"
    run(eng, room, 1.0, 5.0)
    assert room.sent
    panic = eng.on_message(mido.Message("control_change", control=123, value=0), 5.0, 5.0)
    assert panic.release and panic.cancel_after == 5.0
    room.submit(panic)
    assert not room.sounding and not room.queue
    switch = eng.on_message(mido.Message("control_change", control=80, value=0), 5.5, 5.5)
    assert eng.live.mode == "call-response" and switch.release


def test_midi_clock_stop_and_start():
    eng = make_engine()
    room = Room()
    run(eng, room, 0.0, 0.2, events=[(0.1, mido.Message("stop"))])
    run(eng, room, 0.2, 4.0, events=phrase(0.3))
    assert room.sent == [] and not eng.controls.playing
    for i in range(48):
        eng.on_message(mido.Message("clock"), 4.0 + i * 60 / (24 * 120), 4.0 + i * 60 / (24 * 120))
    tempo, source = eng.beat.tempo(4.0 + 48 * 60 / (24 * 120))
    assert source == "MIDI clock" and tempo.bpm_at(4.0) == pytest.approx(120, rel=0.01)
    run(eng, room, 4.5, 8.0, events=[(4.5, mido.Message("start"))] + phrase(4.6))
    assert answer_notes(room)


def test_pedal_pressed_during_an_answer_holds_the_players_next_notes():
    eng = make_engine(min_answer_s=2.0, max_answer_s=2.0)
    room = Room()
    run(eng, room, 0.0, 2.5, events=phrase(0.0))
    assert eng.voice.answering
    eng.on_message(mido.Message("control_change", control=64, value=127), 2.5, 2.5)
    assert eng.stream.encoder.pedal_down and eng.voice.answering  # the pedal is not a barge-in
    eng.on_message(note("note_on", 40), 2.6, 2.6)
    eng.on_message(note("note_off", 40), 2.7, 2.7)
    assert 40 in eng.stream.encoder.held_by_pedal and eng.silence_deadline() is None


def test_vanished_keyboard_releases_the_players_keys_so_silence_comes():
    eng = make_engine()
    room = Room()
    run(eng, room, 0.0, 1.0, events=[(0.0, mido.Message("control_change", control=64, value=127)),
                                     (0.1, note("note_on", 60)), (0.2, note("note_on", 64))])
    assert eng.silence_deadline() is None
    eng.release_player(1.0)
    assert not eng.stream.encoder.pedal_down and not eng.stream.encoder.sounding
    run(eng, room, 1.0, 3.0)
    assert answer_notes(room) and answer_notes(room)[0].time == pytest.approx(1.5)


def test_channel_filter_ignores_other_channels():
    eng = make_engine(input_channels=(1,))
    room = Room()
    run(eng, room, 0.0, 3.0, events=[(0.0, note("note_on", 60, channel=3)), (0.2, note("note_off", 60, channel=3))])
    assert room.sent == [] and eng.counters.notes_in == 0


def test_passthrough_echoes_the_players_notes():
    eng = make_engine(passthrough=True)
    reply = eng.on_message(note("note_on", 60), 0.0, 0.0)
    assert [t.message for t in reply.messages if t.passthrough] == [note("note_on", 60)]


MESSAGES = st.one_of(
    st.builds(lambda n, v, c: mido.Message("note_on", note=n, velocity=v, channel=c),
              st.integers(0, 127), st.integers(0, 127), st.integers(0, 15)),
    st.builds(lambda n, c: mido.Message("note_off", note=n, channel=c), st.integers(0, 127), st.integers(0, 15)),
    st.builds(lambda cc, v: mido.Message("control_change", control=cc, value=v),
              st.sampled_from([1, 2, 7, 64, 80, 120, 123]), st.integers(0, 127)),
    st.builds(lambda p: mido.Message("pitchwheel", pitch=p), st.integers(-8192, 8191)),
    st.builds(lambda d: mido.Message("sysex", data=d), st.lists(st.integers(0, 127), max_size=20)),
    st.sampled_from([mido.Message("clock"), mido.Message("start"), mido.Message("stop"),
                     mido.Message("continue"), mido.Message("program_change", program=5),
                     mido.Message("aftertouch", value=3), mido.Message("songpos", pos=10)]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.floats(0, 0.4), MESSAGES), max_size=40), st.sampled_from(["call-response", "duet"]))
def test_random_input_never_crashes_and_leaves_nothing_sounding(timeline, mode):
    eng = make_engine(random_seed=1, mode=mode, silence_ms=100, min_answer_s=0.3, max_answer_s=0.6)
    room = Room()
    events, now = [], 0.0
    for gap, message in timeline:
        now += gap
        events.append((now, message))
    run(eng, room, 0.0, now + 0.2, step=0.02, events=events)
    room.submit(eng.panic(now + 0.3))
    room.advance(now + 10)
    assert not room.sounding and not room.problems


def cc(control: int, value: int = 0) -> mido.Message:
    return mido.Message("control_change", control=control, value=value)


@pytest.mark.parametrize("control", [123, 120])
def test_all_notes_off_from_the_player_releases_their_held_keys_so_silence_comes(control):
    """A DAW's Stop sends All Notes Off while a key is down: the key counts as up, and the
    next phrase is answered."""
    eng = make_engine()
    room = Room()
    run(eng, room, 0.0, 1.0, events=[(0.0, note("note_on", 60)), (0.1, note("note_on", 64)), (1.0, cc(control))])
    run(eng, room, 1.0, 3.0, events=[(1.2, note("note_on", 67)), (1.3, note("note_off", 67))])
    assert answer_notes(room) and answer_notes(room)[0].time == pytest.approx(1.3 + SILENCE)


def test_all_notes_off_leaves_the_pedal_and_reset_all_controllers_lifts_it():
    eng = make_engine()
    room = Room()
    run(eng, room, 0.0, 1.0, events=[(0.0, cc(64, 127)), (0.1, note("note_on", 60)), (0.2, note("note_on", 62)),
                                     (0.3, note("note_off", 62)), (0.5, cc(123))])
    assert eng.stream.encoder.pedal_down and eng.stream.encoder.sounding == {60, 62}  # both ring on under the pedal
    run(eng, room, 1.0, 2.0, events=[(1.2, note("note_on", 67)), (1.3, note("note_off", 67))])
    assert room.sent == []  # the pedal still holds them: no silence
    run(eng, room, 2.0, 4.0, events=[(2.0, cc(121))])
    assert not eng.stream.encoder.pedal_down
    assert answer_notes(room) and answer_notes(room)[0].time == pytest.approx(2.0 + SILENCE)


def test_a_key_held_max_held_s_with_no_other_input_counts_as_released_logged_once(caplog):
    """A player gone mid-note never sends its NOTE_OFF: after max_held_s the key is up."""
    eng = make_engine(max_held_s=2.0)
    room = Room()
    with caplog.at_level("WARNING", logger="improvd.engine"):
        run(eng, room, 0.0, 1.9, events=[(0.0, note("note_on", 60)), (0.5, note("note_on", 64)),
                                         (0.6, note("note_off", 64))])
        assert room.sent == [] and eng.silence_deadline() is None  # 1.3 s since the last input
        run(eng, room, 1.9, 4.0)
    assert answer_notes(room) and answer_notes(room)[0].time == pytest.approx(0.6 + 2.0 + SILENCE, abs=0.011)
    assert len([r for r in caplog.records if "counted as released" in r.getMessage()]) == 1


def test_duet_onsets_keep_to_the_grid_of_a_tempo_set_by_hand():
    """A tempo by hand counts beat 1 from the first note, the player's or (in duet, where
    improvd may begin) improvd's; at 120 bpm every onset improvd plays lies on a sixteenth
    (125 ms) from there."""
    eng = make_engine(mode="duet", tempo_bpm=120, quantize=1.0)
    room = Room()
    run(eng, room, 0.0, 4.0, events=phrase(0.3))
    onsets = [t.time for t in room.sent if t.message.type == "note_on" and t.message.velocity and not t.passthrough]
    assert len(onsets) >= 4 and not room.problems
    first = min(onsets[0], 0.3)
    assert all(abs((t - first) / 0.125 - round((t - first) / 0.125)) < 1e-6 for t in onsets), onsets
