"""The phrase: when the player's silence ends it, and how long the answer to it lasts."""

import pytest

from improvd import vocab
from improvd.config import Config, EngineConfig, Live
from improvd.phrase import Phrase
from improvd.tempo import Beat


def phrase(**settings) -> Phrase:
    config = Config(engine=EngineConfig(**settings))
    return Phrase(config.engine, Live.of(config), Beat(config.engine), now=0.0)


def test_the_deadline_is_silence_ms_after_the_last_event_with_every_key_up():
    p = phrase(silence_ms=500)
    assert p.deadline(keys_down=False) is None  # no phrase yet
    p.strike(60, 80, 1.0)
    p.last_heard = 1.3
    assert p.deadline(keys_down=True) is None
    assert p.deadline(keys_down=False) == pytest.approx(1.8)


def test_the_answer_follows_the_phrase_length_within_bounds_and_starts_on_the_deadline():
    p = phrase(min_answer_s=1.0, max_answer_s=3.0, answer_ratio=1.0)
    p.strike(60, 80, 1.0)
    p.last_heard = 3.0
    plan = p.plan(3.503)
    assert plan.answer_end - plan.deadline == pytest.approx(2.0)
    assert plan.deadline - plan.output_offset == pytest.approx(round(3.503 / vocab.TICK_S) * vocab.TICK_S)
    p.live.answer_ratio = 4.0
    assert p.plan(3.5).answer_end - 3.5 == pytest.approx(3.0)  # capped at max_answer_s
    p.next_length = 0.5  # a primer's answer length wins over the bounds
    assert p.plan(3.5).answer_end - 3.5 == pytest.approx(0.5)


def test_an_answer_taken_back_unheard_leaves_the_phrase_going_on():
    p = phrase()
    p.strike(60, 80, 1.0)
    p.answered()
    assert p.start is None and p.next_length is None
    p.unanswered()
    assert p.start == 1.0


def test_with_a_tempo_the_answer_starts_on_the_next_beat_and_lasts_whole_beats():
    p = phrase(tempo_bpm=120, answer_start="beat", silence_ms=500, min_answer_s=2.0)
    p.beat.heard_note(1.0)  # beat 1 of a tempo set by hand
    p.strike(60, 80, 1.0)
    p.last_heard = 2.2
    plan = p.plan(p.deadline(keys_down=False))  # deadline 2.7 s: the next beat is at 3.0 s
    assert (plan.deadline, plan.answer_end) == pytest.approx((3.0, 5.0))  # 2 s: four beats
    assert p.plan(2.7) == plan  # made once for its deadline


def test_without_a_tempo_answer_start_changes_nothing():
    p = phrase(answer_start="bar", quantize=1.0, silence_ms=500, min_answer_s=2.0)
    p.strike(60, 80, 1.0)
    p.last_heard = 1.13
    assert p.plan(1.63).deadline == pytest.approx(1.63)


def test_the_phrase_times_its_notes_a_restruck_key_included():
    config = Config()
    phrase = Phrase(config.engine, Live.of(config), Beat(config.engine), 0.0)
    phrase.strike(60, 80, 1.0)
    phrase.strike(64, 80, 1.5)
    phrase.release(60, 2.0)
    phrase.strike(64, 80, 2.5)  # struck again while down: the old note ends where the new begins
    phrase.release(64, 2.5)
    phrase.last_heard = 3.0
    assert phrase.durations() == [(1.0, 2.0), (1.5, 2.5), (2.5, 3.0)]
