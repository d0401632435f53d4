import os

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


def learnt(tokens, memory=None, context=None, start=0.0, rate=0.01):
    """(memory, context after the tokens): the tokens learnt one by one."""
    memory = memory or Memory()
    context = context or Context()
    for i, token in enumerate(tokens):
        context = memory.learn(context, token, start + i * rate)
    return memory, context


def heard(memory, tokens, context=None):
    context = context or Context()
    for token in tokens:
        context = memory.advance(context, token)
    return context


def test_distribution_sums_to_one_and_agrees_with_single_token_probability():
    memory, context = learnt(motif_tokens(repeats=3))
    contexts = [context, Context(), memory.advance(context, vocab.NOTE_ON_OFFSET + 70)]
    prediction = memory.predict(contexts)
    np.testing.assert_allclose(prediction.probs.sum(1), 1.0)
    for row, context in enumerate(contexts):
        for token in (0, 60, 200, vocab.TIME_SHIFT_OFFSET + 19, vocab.VELOCITY_OFFSET + 19):
            p, order, escape, count = memory.probability(context, token)
            assert prediction.probs[row, token] == pytest.approx(p)
            assert (order, escape, count) == (prediction.order[row], pytest.approx(prediction.escape[row]),
                                              prediction.count[row])


def continuation_bits(learnt_, tokens):
    memory, context = learnt_
    bits = []
    for token in tokens:
        bits.append(-np.log2(memory.probability(context, token)[0]))
        context = memory.advance(context, token)
    return float(np.mean(bits))


def test_a_motif_heard_twice_is_predicted_again_transposed_faster_and_softer():
    variant = motif_tokens(transpose=5, tempo=0.95, velocity=70)
    knows_it = continuation_bits(learnt(motif_tokens(repeats=2)), variant)
    rng = np.random.default_rng(1)
    other = [vocab.Note(int(p), 80, 0.3 * i, 0.3 * i + 0.25) for i, p in enumerate(rng.integers(48, 84, 10))]
    knows_other = continuation_bits(learnt(vocab.notes_to_tokens(other)), variant)
    assert knows_it < 0.5 * knows_other


def test_improvds_own_events_move_the_context_but_teach_nothing():
    memory, context = learnt(motif_tokens())
    contexts, events = memory.contexts, memory.events
    before = memory.predict([context]).probs
    after = heard(memory, motif_tokens(transpose=3), context)
    assert (memory.contexts, memory.events) == (contexts, events)
    assert not np.allclose(memory.predict([after]).probs, before)


def test_reset_forgets_everything():
    memory, context = learnt(motif_tokens(repeats=3))
    memory.reset()
    assert memory.events == 0 and memory.contexts == 0
    np.testing.assert_allclose(memory.predict([context]).probs, 1 / vocab.VOCAB_SIZE)
    assert memory.predict([context]).order[0] == -1


def test_forgetting_takes_back_exactly_what_was_learnt():
    """An event leaving the horizon takes its counts with it: the memory is then the same
    as one that only ever heard the events still inside."""
    tokens = motif_tokens(repeats=4) + motif_tokens(transpose=-7, tempo=1.3, repeats=3)
    memory, context = learnt(tokens, Memory(horizon_events=100))
    fresh = Memory(horizon_events=100)
    before = heard(fresh, tokens[:-100])  # heard, never learnt: the same contexts for the events after
    learnt(tokens[-100:], fresh, before)
    probe = [context, Context(), Context((vocab.NOTE_ON_OFFSET + 62,), 60)]
    np.testing.assert_allclose(memory.predict(probe).probs, fresh.predict(probe).probs)
    assert memory.contexts == fresh.contexts


def resident_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_memory_stays_bounded_over_a_simulated_day():
    """A day of playing at about two events a second, new material every hour: once the
    horizon is full the memory holds no more events or contexts, and the process no more RAM."""
    rng = np.random.default_rng(0)
    memory = Memory(horizon_events=2000, horizon_s=600.0)
    sizes, now, context = [], 0.0, Context()
    for _hour in range(24):
        pitches = rng.integers(48, 84, 500)
        notes = [vocab.Note(int(p), int(rng.integers(40, 110)), i * 0.5, i * 0.5 + 0.3) for i, p in enumerate(pitches)]
        tokens = vocab.notes_to_tokens(notes)
        for i, token in enumerate(tokens):
            context = memory.learn(context, token, now + i * 3600 / len(tokens))
        memory.predict([context] * 8)
        now += 3600
        sizes.append((memory.events, memory.contexts, resident_bytes()))
    events, contexts, resident = np.array(sizes).T
    assert events.max() <= 2000 and memory.events < 1000  # the 600 s horizon: a sixth of an hour
    assert contexts[2:].max() <= 1.2 * contexts[1]
    assert resident[2:].max() - resident[1] < 4 * 2**20  # flat after the first hours


def test_adaptive_weight_follows_the_strength():
    order, escape, count = np.array([-1, 0, 3, 8]), np.array([1.0, 0.5, 0.2, 0.1]), np.array([0, 10, 5, 3])
    assert not adaptive_weight(order, escape, count, strength=0.0).any()
    np.testing.assert_array_equal(adaptive_weight(order, escape, count, strength=1.0), [0, 1, 1, 1])
    middle = adaptive_weight(order, escape, count, strength=0.5)
    low = adaptive_weight(order, escape, count, strength=0.2)
    high = adaptive_weight(order, escape, count, strength=0.8)
    assert middle[0] == 0 and (0 < middle[1:]).all() and (middle[1:] < 1).all()
    assert (low[1:] < middle[1:]).all() and (middle[1:] < high[1:]).all()


# ---- in the engine: what the player hears --------------------------------------------

RHYTHM = (0.6, 0.2, 0.2, 0.6, 0.2, 0.2)  # long, short, short: seconds to the next onset
PITCHES = (62, 66, 69, 74, 69, 66)


def played(times=3):
    """The motif as a player's messages, ``times`` over, and as notes."""
    from tests.engine_helpers import note

    events, notes, t = [], [], 0.0
    for _ in range(times):
        for pitch, step in zip(PITCHES, RHYTHM, strict=True):
            events += [(t, note("note_on", pitch, 70)), (t + 0.8 * step, note("note_off", pitch))]
            notes.append(vocab.Note(pitch, 70, t, t + 0.8 * step))
            t += step
    return sorted(events, key=lambda e: e[0]), notes


def answer(seed, **settings):
    """The engine (production defaults but ``settings``) and its answer to the motif played three times."""
    from improvd.seed import OFFLINE_CANDIDATE_STEPS, continue_offline
    from tests.engine_helpers import make_engine

    engine = make_engine(random_seed=seed, candidate_steps=OFFLINE_CANDIDATE_STEPS, **settings)
    return engine, continue_offline(engine, played()[0], 6.0)


def test_a_motif_played_three_times_is_answered_in_its_rhythm():
    """The notes improvd plays after a motif heard three times move in the motif's rhythm
    (its inter-onset intervals) with the memory at its default strength, not without it."""
    from improvd_train.listen import ioi_histogram, overlap

    motif = ioi_histogram(played()[1])
    with_memory = [overlap(motif, ioi_histogram(answer(seed)[1])) for seed in (1, 2, 3)]
    without = [overlap(motif, ioi_histogram(answer(seed, strength=0.0)[1])) for seed in (1, 2, 3)]
    assert np.mean(with_memory) >= 0.45 and np.mean(with_memory) > np.mean(without) + 0.2, (with_memory, without)


def test_strength_zero_is_the_model_alone_note_for_note():
    """At strength 0 the answer is the one the trained model gives with nothing learnt:
    same seed, same notes; a strength above it changes them."""
    from improvd.memory import Memory as Base
    from improvd.seed import OFFLINE_CANDIDATE_STEPS, continue_offline
    from tests.engine_helpers import make_engine

    engine, alone = answer(5, strength=0.0)
    assert engine.memory.events > 0  # it listened all the same

    class Deaf(Base):
        def learn(self, context, token, now):  # hears, never learns
            return self.advance(context, token)

    deaf = make_engine(random_seed=5, candidate_steps=OFFLINE_CANDIDATE_STEPS, strength=0.8)
    deaf.memory.__class__ = Deaf
    assert continue_offline(deaf, played()[0], 6.0) == alone
    assert answer(5, strength=0.8)[1] != alone


def test_the_memory_learns_the_players_events_not_improvds():
    from tests.engine_helpers import make_engine

    engine = make_engine(random_seed=2)
    engine.prime(played()[0], 10.0, 4.0)
    heard_ = engine.memory.events
    now = 10.0
    while now < 16.0:
        engine.poll(now)
        now += 0.01
    assert engine.counters.notes_out > 0 and engine.memory.events == heard_


def test_controllers_set_the_strength_and_reset_the_memory():
    import mido

    from tests.engine_helpers import make_engine

    engine = make_engine(random_seed=2)
    cc = engine.config.controls
    engine.prime(played()[0], 10.0, 4.0)
    engine.on_message(mido.Message("control_change", control=cc.memory_cc, value=127), 10.1, 10.1)
    assert engine.live.memory_strength == 1.0
    engine.on_message(mido.Message("control_change", control=cc.memory_cc, value=0), 10.2, 10.2)
    assert engine.live.memory_strength == 0.0 and engine.memory.events > 0
    engine.on_message(mido.Message("control_change", control=cc.memory_reset_cc, value=127), 10.3, 10.3)
    assert engine.memory.events == 0
    engine.prime(played()[0], 20.0, 4.0)
    engine.set_mode("duet", 20.1)
    assert engine.memory.events == 0
