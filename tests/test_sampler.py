import numpy as np
import pytest

from improvd import vocab
from improvd.config import Config, Live, SamplerConfig
from improvd.sampler import OFF, ON, SHIFT, VELOCITY, Grammar, Sampler


def grammar(own=None, sounding=(), tick=100, velocity_bin=10, after_velocity=False, note_first=False, end_tick=None):
    own = own or {}
    return Grammar(own, frozenset(sounding) | frozenset(own), tick, velocity_bin, after_velocity, note_first, end_tick)


def sampler(seed=0, **settings):
    return Sampler(SamplerConfig(**settings), Live.of(Config()), np.random.default_rng(seed))


def test_note_off_only_for_own_notes_that_sounded_min_note_s():
    mask = sampler().mask(grammar(own={60: 90, 62: 95, 64: 97, 65: 100}, sounding={67}))
    offs = {i - OFF for i in range(OFF, OFF + 128) if mask[i]}
    assert offs == {60, 62}  # 64 sounded 30 ms and 65 not at all (min_note_s 0.05); 67 is the player's
    mask = sampler(min_note_s=0.0).mask(grammar(own={60: 90, 64: 99, 65: 100}))
    assert {i - OFF for i in range(OFF, OFF + 128) if mask[i]} == {60, 64}  # at least a tick, always


def test_no_second_note_on_for_a_sounding_key_and_pitch_range():
    mask = sampler(pitch_low=40, pitch_high=80).mask(grammar(own={60: 90}, sounding={62}))
    ons = {i for i in range(128) if mask[ON + i]}
    assert ons == set(range(40, 81)) - {60, 62}


def test_no_second_note_on_for_an_own_note_the_player_released():
    """A player's NOTE_OFF for a key improvd holds takes it out of the stream's sounding keys,
    not out of improvd's: it must not strike that key again before releasing it."""
    own_not_in_stream = Grammar({74: 90}, frozenset(), 100, 10, False, False)
    assert not sampler().mask(own_not_in_stream)[ON + 74]


def test_polyphony_cap_blocks_new_notes():
    mask = sampler(max_polyphony=2).mask(grammar(own={60: 90, 62: 95}))
    assert not mask[ON:ON + 128].any()


def test_overdue_note_must_be_released():
    mask = sampler(max_note_s=1.0).mask(grammar(own={60: 0, 62: 95}, tick=100))
    assert np.flatnonzero(mask).tolist() == [OFF + 60]


def test_time_shift_stops_at_the_forced_release_and_the_answer_end():
    s = sampler(max_note_s=1.0)
    mask = s.mask(grammar(own={60: 50}, tick=100))
    assert np.flatnonzero(mask[SHIFT:SHIFT + 100]).max() + 1 == 50
    mask = s.mask(grammar(tick=100, end_tick=130))
    assert np.flatnonzero(mask[SHIFT:SHIFT + 100]).max() + 1 == 30


def test_answer_opens_on_a_note_and_velocity_is_not_repeated():
    mask = sampler().mask(grammar(note_first=True, velocity_bin=10))
    assert not mask[SHIFT:SHIFT + 100].any()
    assert not mask[VELOCITY + 10] and mask[VELOCITY + 11]
    assert not sampler().mask(grammar(after_velocity=True))[VELOCITY:].any()


def test_sampling_never_picks_a_masked_token():
    logits = np.zeros(vocab.VOCAB_SIZE, np.float32)
    logits[OFF + 70] = 50  # the network insists on releasing a key nobody holds
    s = sampler(seed=1)
    picks = {s.sample(logits, grammar(own={60: 0})) for _ in range(200)}
    assert OFF + 70 not in picks


def test_not_argmax_and_seeded():
    logits = np.zeros(vocab.VOCAB_SIZE, np.float32)
    logits[[ON + 60, ON + 64]] = 20
    draws = [sampler(seed=3).sample(logits, grammar()) for _ in range(2)]
    assert draws[0] == draws[1]
    s = sampler(seed=3)
    assert {s.sample(logits, grammar()) for _ in range(100)} == {ON + 60, ON + 64}


def test_low_top_p_keeps_only_the_most_likely():
    logits = np.zeros(vocab.VOCAB_SIZE, np.float32)
    logits[ON + 60], logits[ON + 64] = 5, 4
    s = sampler(seed=0, top_p=0.01)
    assert {s.sample(logits, grammar()) for _ in range(50)} == {ON + 60}


def test_an_impossible_note_off_releases_a_sounding_note_instead():
    """The model's choice of event type survives the grammar: mass on NOTE_OFFs of keys
    that are not sounding goes to the sounding notes' NOTE_OFFs, not to new notes."""
    logits = np.zeros(vocab.VOCAB_SIZE, np.float32)
    logits[OFF:OFF + 128] = 6.0  # "release a note", unsure which: most of the mass
    probs = sampler()._probabilities(logits, sampler().mask(grammar(own={60: 0, 64: 0})))
    model = np.exp(logits) / np.exp(logits).sum()
    assert probs[OFF + 60] + probs[OFF + 64] == pytest.approx(model[OFF:OFF + 128].sum())
    assert probs[OFF + 60] == pytest.approx(probs[OFF + 64])
    assert probs[ON:ON + 128].sum() == pytest.approx(model[ON:ON + 128].sum())  # new notes: no more than meant
    rows = sampler()._probabilities(np.stack([logits, logits]), np.stack([sampler().mask(grammar(own={60: 0}))] * 2))
    assert rows[:, OFF + 60] == pytest.approx([model[OFF:OFF + 128].sum()] * 2)


def test_types_the_grammar_rules_out_give_their_mass_to_the_others_in_proportion():
    logits = np.zeros(vocab.VOCAB_SIZE, np.float32)
    probs = sampler()._probabilities(logits, sampler().mask(grammar(note_first=True, velocity_bin=None)))
    assert probs[SHIFT:SHIFT + 100].sum() == 0.0 and probs[OFF:OFF + 128].sum() == 0.0
    assert probs.sum() == pytest.approx(1.0)
    on, velocity = probs[ON:ON + 128].sum(), probs[VELOCITY:].sum()
    assert on / velocity == pytest.approx(128 / 32)  # each type keeps its share: 128 and 32 tokens
