import numpy as np
import pytest

from improvd import vocab
from improvd.memory import Context, Memory, adaptive_weight

MOTIF = [(60, 0.2), (62, 0.2), (64, 0.4), (67, 0.2), (64, 0.6)]  # (pitch, seconds to the next onset)


def motif_tokens(transpose=0, tempo=1.0, velocity=80, repeats=1, start=0.0):
    notes, t = [], start
    for _ in range(repeats):
        for pitch, step in MOTIF:
            notes.append(vocab.Note(pitch + transpose, velocity, t, t + 0.8 * step * tempo))
            t += step * tempo
    return vocab.notes_to_tokens(notes)


def learnt(tokens, memory=None, start=0.0, rate=0.01):
    memory = memory or Memory()
    for i, token in enumerate(tokens):
        memory.learn(token, start + i * rate)
    return memory


def test_distribution_sums_to_one_and_agrees_with_single_token_probability():
    memory = learnt(motif_tokens(repeats=3))
    contexts = [memory.context, Context(), memory.advance(memory.context, vocab.NOTE_ON_OFFSET + 70)]
    prediction = memory.predict(contexts)
    np.testing.assert_allclose(prediction.probs.sum(1), 1.0)
    for row, context in enumerate(contexts):
        for token in (0, 60, 200, vocab.TIME_SHIFT_OFFSET + 19, vocab.VELOCITY_OFFSET + 19):
            p, order, escape, count = memory.probability(context, token)
            assert prediction.probs[row, token] == pytest.approx(p)
            assert (order, escape, count) == (prediction.order[row], pytest.approx(prediction.escape[row]),
                                              prediction.count[row])


def continuation_bits(memory, tokens):
    bits = []
    for token in tokens:
        bits.append(-np.log2(memory.probability(memory.context, token)[0]))
        memory.follow(token)
    return float(np.mean(bits))


def test_a_motif_heard_twice_is_predicted_again_transposed_faster_and_softer():
    fresh = continuation_bits(learnt(motif_tokens()), motif_tokens(transpose=5))
    memory = learnt(motif_tokens(repeats=2))
    variant = motif_tokens(transpose=5, tempo=0.95, velocity=70)
    assert continuation_bits(memory, variant) < 0.6 * fresh
    assert continuation_bits(learnt(motif_tokens(repeats=2)), motif_tokens(transpose=5)) < 1.0


def test_improvds_own_events_move_the_context_but_teach_nothing():
    memory = learnt(motif_tokens())
    contexts, events = memory.contexts, memory.events
    before = memory.predict([memory.context]).probs
    for token in motif_tokens(transpose=3):
        memory.follow(token)
    assert (memory.contexts, memory.events) == (contexts, events)
    assert not np.allclose(memory.predict([memory.context]).probs, before)


def test_reset_forgets_everything():
    memory = learnt(motif_tokens(repeats=3))
    memory.reset()
    assert memory.events == 0 and memory.contexts == 0
    np.testing.assert_allclose(memory.predict([memory.context]).probs, 1 / vocab.VOCAB_SIZE)
    assert memory.predict([memory.context]).order[0] == -1


def test_forgetting_takes_back_exactly_what_was_learnt():
    """An event leaving the horizon takes its counts with it: the memory is then the same
    as one that only ever heard the events still inside."""
    tokens = motif_tokens(repeats=4) + motif_tokens(transpose=-7, tempo=1.3, repeats=3)
    memory = learnt(tokens, Memory(horizon_events=100))
    fresh = Memory(horizon_events=100)
    for token in tokens[:-100]:  # heard, never learnt: the same contexts for the events after
        fresh.follow(token)
    learnt(tokens[-100:], fresh)
    probe = [memory.context, Context(), Context((vocab.NOTE_ON_OFFSET + 62,), 60)]
    np.testing.assert_allclose(memory.predict(probe).probs, fresh.predict(probe).probs)
    assert memory.contexts == fresh.contexts


def test_memory_stays_bounded_over_a_simulated_day():
    """A day of playing at about two events a second: the memory's size stops growing once
    the horizon is full, and the oldest material is gone."""
    rng = np.random.default_rng(0)
    memory = Memory(horizon_events=2000, horizon_s=600.0)
    sizes, now = [], 0.0
    for _hour in range(24):
        pitches = rng.integers(48, 84, 500)  # new material every hour, so contexts keep changing
        notes = [vocab.Note(int(p), int(rng.integers(40, 110)), i * 0.5, i * 0.5 + 0.3) for i, p in enumerate(pitches)]
        tokens = vocab.notes_to_tokens(notes)
        for i, token in enumerate(tokens):
            memory.learn(token, now + i * 3600 / len(tokens))
        now += 3600
        sizes.append((memory.events, memory.contexts, memory.nbytes))
    events, contexts, nbytes = np.array(sizes).T
    assert events.max() <= 2000 and contexts[2:].max() <= 1.2 * contexts[1]
    assert nbytes[2:].max() == nbytes[1]  # no growth after the first hours
    assert memory.events < 1000  # the 600 s horizon holds about a sixth of an hour's events


def test_adaptive_weight_follows_the_strength():
    order, escape, count = np.array([-1, 0, 3, 8]), np.array([1.0, 0.5, 0.2, 0.1]), np.array([0, 10, 5, 3])
    assert not adaptive_weight(order, escape, count, strength=0.0).any()
    np.testing.assert_array_equal(adaptive_weight(order, escape, count, strength=1.0), [0, 1, 1, 1])
    middle = adaptive_weight(order, escape, count, strength=0.5)
    low = adaptive_weight(order, escape, count, strength=0.2)
    high = adaptive_weight(order, escape, count, strength=0.8)
    assert middle[0] == 0 and (0 < middle[1:]).all() and (middle[1:] < 1).all()
    assert (low[1:] < middle[1:]).all() and (middle[1:] < high[1:]).all()
