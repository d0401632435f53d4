"""Best-of-K answers: the engine in simulated time with the shipped model and fixed seeds,
and the score and batch sampler on their own."""

import numpy as np
import pytest

from improvd import vocab
from improvd.candidates import Profile
from improvd.config import Config, Live, SamplerConfig
from improvd.sampler import Grammar, Sampler
from tests.engine_helpers import RecordingModel, Room, make_engine, note, phrase, replay, run, stream_tokens

SILENCE, LOOKAHEAD = 0.5, 0.25
REGISTER_ONLY = {name: float(name == "weight_register") for name in SamplerConfig.__dataclass_fields__
                 if name.startswith("weight_")}  # every score term but register off


def played_notes(room: Room) -> list[tuple[float, int, int]]:
    return [(t.time, t.message.note, t.message.velocity) for t in room.sent if t.message.type == "note_on"]


def test_the_best_scoring_candidate_is_the_answer_played():
    eng = make_engine(random_seed=4, candidates=16, candidate_steps=10_000, **REGISTER_ONLY,
                      min_answer_s=3.0, max_answer_s=3.0)
    room = Room()
    events = phrase(0.0, pitches=(48, 52, 55, 52, 48))  # low: far from where the model wanders
    deadline = max(t for t, _ in events) + SILENCE
    run(eng, room, 0.0, deadline - LOOKAHEAD - 0.02, events=events)
    search = eng.candidates.search
    assert search is not None and search.done and room.sent == []
    scores = [search.score(line) for line in search.lines]
    best = search.lines[int(np.argmax(scores))]
    run(eng, room, deadline - LOOKAHEAD - 0.01, deadline + 4.0)
    played = played_notes(room)
    assert [p for _, p, _ in played] == [p for p, _ in best.notes]
    assert played[0][0] == pytest.approx(deadline, abs=1e-9)
    phrase_mean = np.mean([48, 52, 55, 52, 48])
    distances = [abs(np.mean([p for p, _ in line.notes]) - phrase_mean) for line in search.lines]
    assert abs(np.mean([p for _, p, _ in played]) - phrase_mean) == pytest.approx(min(distances))
    choice = eng.take_choice()
    assert choice.candidates == 16 and choice.complete and choice.margin >= 0
    assert not room.sounding and not room.problems


def test_a_deadline_before_the_candidates_are_finished_still_starts_the_answer_on_time():
    # 50 ms between silence and answer start: 5 polls of 1 event, and no 6 s answer has only 5 events.
    eng = make_engine(random_seed=6, model_class=RecordingModel, candidates=8, candidate_steps=1, lookahead_ms=450,
                      min_answer_s=6.0, max_answer_s=6.0)
    room = Room()
    events = phrase(0.0)
    deadline = max(t for t, _ in events) + SILENCE
    run(eng, room, 0.0, deadline + 7.0, events=events)
    choice = eng.take_choice()
    assert choice is not None and not choice.complete and 0 < choice.steps <= 6
    played = played_notes(room)
    assert played[0][0] == pytest.approx(deadline, abs=1e-9)
    # The best partial candidate is played first, then only it is extended, to the end.
    fed = stream_tokens(eng)
    last_on = [i for i, token in enumerate(fed) if token < 128][5]  # the phrase's last note
    start = fed.index(vocab.NOTE_OFF_OFFSET + 66, last_on) + 1
    while fed[start] >= vocab.TIME_SHIFT_OFFSET and fed[start] < vocab.VELOCITY_OFFSET:
        start += 1  # the silence up to the deadline
    assert fed[start:start + len(choice.tokens)] == choice.tokens
    assert len(fed) > start + len(choice.tokens)  # and went on, sampled, from where it got to
    assert eng.voice.plan.answer_end == pytest.approx(deadline + 6.0) and not eng.voice.answering
    assert all(t.time <= deadline + 6.0 + 1e-9 for t in room.sent)
    assert not room.sounding and not room.problems


def test_the_player_coming_back_during_candidate_generation_throws_the_candidates_away():
    eng = make_engine(random_seed=8, model_class=RecordingModel, candidates=8, candidate_steps=1,
                      min_answer_s=2.0, max_answer_s=2.0)
    room = Room()
    events = phrase(0.0)
    last = max(t for t, _ in events)
    run(eng, room, 0.0, last + 0.15, events=events)
    assert eng.candidates.search is not None and eng.candidates.search.steps > 0  # candidates under way
    comeback = last + 0.16
    room.submit(eng.on_message(note("note_on", 72), comeback, comeback))
    assert eng.candidates.search is None and room.sent == [] and not room.queue
    # The stream holds only what the player played: no candidate event went into it.
    assert [t for t in stream_tokens(eng) if t < 128] == [62, 66, 69, 71, 69, 66, 72]
    expected = replay(stream_tokens(eng))
    assert np.allclose(eng.stream.state.h, expected.h, atol=1e-5)
    run(eng, room, comeback + 0.01, comeback + 4.0, events=[(comeback + 0.2, note("note_off", 72))])
    played = played_notes(room)
    assert played and played[0][0] == pytest.approx(comeback + 0.2 + SILENCE, abs=1e-9)
    assert eng.counters.answers == 1 and eng.take_choice() is not None


def test_one_candidate_is_todays_answer_sampled_as_it_plays():
    eng = make_engine(random_seed=42, candidates=1, min_answer_s=4.0, max_answer_s=4.0)
    room = Room()
    events = phrase(0.0)
    deadline = max(t for t, _ in events) + SILENCE
    run(eng, room, 0.0, deadline - LOOKAHEAD + 0.05, events=events)
    assert eng.candidates.search is None and eng.voice.answering
    # Generated only a lookahead (plus at most one TIME_SHIFT) ahead: the rest is not decided yet.
    assert eng.stream.time <= deadline + 0.05 + vocab.MAX_SHIFT_TICKS * vocab.TICK_S < eng.voice.plan.answer_end
    steps = eng.stream.model.steps
    run(eng, room, deadline - LOOKAHEAD + 0.06, deadline + 5.0)
    assert eng.stream.model.steps > steps and eng.take_choice() is None
    assert played_notes(room)[0][0] == pytest.approx(deadline, abs=1e-9)


def test_same_seed_same_chosen_answer():
    outputs = []
    for _ in range(2):
        eng, room = make_engine(random_seed=3, candidates=4, candidate_steps=3), Room()
        run(eng, room, 0.0, 5.0, events=phrase(0.0))
        outputs.append(played_notes(room))
    assert outputs[0] == outputs[1] and outputs[0]


# ---- the score ------------------------------------------------------------------------------

C_MAJOR = [(p, 80) for p in (60, 62, 64, 65, 67, 69, 71, 72, 64, 67)]


def test_profile_counts_pitch_classes_register_density_and_dynamics():
    profile = Profile.of(C_MAJOR, 2.0)
    assert profile.pitch_classes[0] == 2 and profile.pitch_classes[1] == 0
    assert profile.mean_pitch == pytest.approx(66.1)
    assert profile.density == pytest.approx(5.0) and profile.mean_velocity == 80
    assert Profile.of([], 2.0) is None


def test_fit_prefers_the_phrases_key_register_density_and_dynamics():
    phrase_profile = Profile.of(C_MAJOR, 2.0)
    same = Profile.of(C_MAJOR, 2.0)
    weights = SamplerConfig()
    assert same.fit(phrase_profile, weights) == pytest.approx(weights.weight_pitch_class)  # correlation 1, no distance
    f_sharp = Profile.of([(p + 6, v) for p, v in C_MAJOR], 2.0)
    octave_up = Profile.of([(p + 12, v) for p, v in C_MAJOR], 2.0)
    twice_as_dense = Profile.of(C_MAJOR, 1.0)
    louder = Profile.of([(p, 100) for p, _ in C_MAJOR], 2.0)
    best = same.fit(phrase_profile, weights)
    assert f_sharp.fit(phrase_profile, weights) < best
    assert octave_up.fit(phrase_profile, weights) == pytest.approx(best - 12 * weights.weight_register)
    assert twice_as_dense.fit(phrase_profile, weights) == pytest.approx(best - weights.weight_density)
    assert louder.fit(phrase_profile, weights) == pytest.approx(best - 20 * weights.weight_dynamics)


def test_sample_rows_respects_each_rows_mask_and_draws_like_sample():
    sampler = Sampler(SamplerConfig(top_p=0.9), Live.of(Config()), np.random.default_rng(0))
    logits = np.random.default_rng(1).normal(size=(3, vocab.VOCAB_SIZE)).astype(np.float32) * 3
    grammar = Grammar({60: 0}, frozenset({60}), 10, 5, False, False, None)
    allowed = np.stack([sampler.mask(grammar)] * 3)
    allowed[1, vocab.NOTE_ON_OFFSET:vocab.NOTE_ON_OFFSET + 128] = False
    draws = np.array([sampler.sample_rows(logits, allowed) for _ in range(4000)])
    assert all(allowed[row, draws[:, row]].all() for row in range(3))
    assert not np.isin(draws[:, 1], range(vocab.NOTE_ON_OFFSET, vocab.NOTE_ON_OFFSET + 128)).any()
    single = Sampler(SamplerConfig(top_p=0.9), Live.of(Config()), np.random.default_rng(2))
    reference = np.array([single.sample(logits[0], grammar) for _ in range(4000)])
    frequencies = [np.bincount(d, minlength=vocab.VOCAB_SIZE) / len(d) for d in (draws[:, 0], reference)]
    assert np.abs(frequencies[0] - frequencies[1]).max() < 0.04


def test_fit_prefers_the_phrases_rhythm_note_lengths_and_texture():
    """Same notes, same density: what differs is when they start and how long they last."""
    weights = Config().sampler
    even = [(0.25 * i, 0.25 * i + 0.2) for i in range(len(C_MAJOR))]  # one note every 250 ms
    phrase = Profile.of(C_MAJOR, 2.5, even)
    same = Profile.of(C_MAJOR, 2.5, even)
    assert same.fit(phrase, weights) == pytest.approx(weights.weight_pitch_class)
    swung = Profile.of(C_MAJOR, 2.5, [(0.25 * i + (0.1 if i % 2 else 0), 0.25 * i + 0.2) for i in range(10)])
    longer = Profile.of(C_MAJOR, 2.5, [(start, start + 0.8) for start, _ in even])  # four times as long
    chords = Profile.of(C_MAJOR, 2.5, [(0.5 * (i // 2), 0.5 * (i // 2) + 0.2) for i in range(10)])
    best = same.fit(phrase, weights)
    assert swung.fit(phrase, weights) < best - 0.5 * weights.weight_rhythm
    assert longer.fit(phrase, weights) == pytest.approx(best - 2 * weights.weight_note_length)
    assert chords.fit(phrase, weights) < best - 0.4 * weights.weight_texture
    untimed = Profile.of(C_MAJOR, 2.5)  # no timing known: those terms do not count
    assert untimed.fit(phrase, weights) == pytest.approx(best)
