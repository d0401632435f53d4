"""The listener's aspects on continuations whose distance to the primer is known."""

import numpy as np
import pytest

from improvd import vocab
from improvd_train import listen


def line(pitches, step=0.25, length=0.2, velocity=70, start=0.0, chord=1):
    """Notes every ``step`` seconds, ``chord`` at a time (a semitone apart)."""
    return [vocab.Note(p + c, velocity, start + i * step, start + i * step + length)
            for i, p in enumerate(pitches) for c in range(chord)]


PRIMER = line([60, 62, 64, 65, 67, 65, 64, 62] * 4)


def test_a_continuation_like_its_primer_is_at_distance_zero_and_an_echo():
    same = listen.distances(PRIMER, line([60, 62, 64, 65, 67, 65, 64, 62] * 4))
    for aspect in listen.ASPECTS:
        assert same[aspect] == pytest.approx(0, abs=1e-9), aspect
    assert same["echo"] == 1.0 and same["short"] == 0.0
    transposed = listen.distances(PRIMER, line([p + 5 for p in [60, 62, 64, 65, 67, 65, 64, 62] * 4]))
    assert transposed["echo"] == 1.0 and transposed["register"] == 5  # a shape is steps and intervals


def test_each_aspect_sees_its_own_difference():
    pitches = [60, 62, 64, 65, 67, 65, 64, 62] * 4
    twice_as_dense = listen.distances(PRIMER, line(pitches * 2, step=0.125, length=0.1))
    assert twice_as_dense["density"] == pytest.approx(1.0)
    assert twice_as_dense["note length"] == pytest.approx(1.0)
    assert twice_as_dense["rhythm"] == 1.0 and twice_as_dense["echo"] == 0.0
    chords = listen.distances(PRIMER, line(pitches[:16], step=0.5, chord=2))
    assert chords["texture"] == pytest.approx(0.5, abs=0.05)
    louder = listen.distances(PRIMER, line(pitches, velocity=90))
    assert louder["dynamics"] == 20 and louder["rhythm"] == 0
    leaps = listen.distances(PRIMER, line([60, 72] * 16))
    assert leaps["melody"] == 1.0
    staccato = listen.distances(PRIMER, line(pitches, length=0.05))
    assert staccato["short"] == 1.0


def test_ratios_and_goals_are_relative_to_the_performer():
    reference = {a: 1.0 for a in listen.ASPECTS} | {"short": 0.1, "correlation": 0.8, "echo": 0.01}
    answer = dict(reference) | {"density": 1.4, "rhythm": 1.6, "short": 0.2, "echo": 0.2}
    verdict = listen.judge(answer, reference)
    assert verdict["ratios"]["density"] == pytest.approx(1.4)
    assert verdict["mean_ratio"] == pytest.approx(np.mean([1.4, 1.6] + [1.0] * 6))
    assert verdict["met"] == {"every aspect ratio": False, "mean ratio": True, "short notes": False,
                              "pitch-class correlation": True, "register": True, "not an echo": True}
