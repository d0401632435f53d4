"""Tempo maps, the grid and MIDI clock following, in simulated time."""

from __future__ import annotations

from dataclasses import dataclass

import mido
import numpy as np
import pytest

from improvd.tempo import Beat, ClockFollower, Grid, TempoMap, answer_span


def midi_file(*meta: tuple[int, mido.MetaMessage], ticks_per_beat: int = 96) -> mido.MidiFile:
    """A file whose conductor track holds ``meta`` at absolute ticks."""
    midi = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    track = mido.MidiTrack()
    last = 0
    for tick, message in meta:
        track.append(message.copy(time=tick - last))
        last = tick
    midi.tracks.append(track)
    return midi


def test_file_tempo_map_follows_tempo_changes_and_meter() -> None:
    # 90 bpm in 3/4 for two bars (6 beats = 4 s), then 120 bpm in 4/4.
    midi = midi_file((0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90))),
                     (0, mido.MetaMessage("time_signature", numerator=3, denominator=4)),
                     (6 * 96, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(120))),
                     (6 * 96, mido.MetaMessage("time_signature", numerator=4, denominator=4)))
    tempo = TempoMap.of_midi(midi)
    assert tempo.seconds_at(6) == pytest.approx(4.0)
    assert tempo.seconds_at(8) == pytest.approx(5.0)
    assert tempo.beat_at(4.5) == pytest.approx(7.0)
    assert tempo.bpm_at(1.0) == pytest.approx(90) and tempo.bpm_at(4.1) == pytest.approx(120)
    assert tempo.next_bar(0.1) == pytest.approx(2.0)  # bar 2 of 3/4 at 90 bpm
    assert tempo.next_bar(2.0) == pytest.approx(2.0)  # on a bar already
    assert tempo.next_bar(2.1) == pytest.approx(4.0)
    assert tempo.next_bar(4.1) == pytest.approx(6.0)  # 4/4 bars from beat 6: 4 beats at 120 bpm
    assert tempo.next_beat(4.1) == pytest.approx(4.5)
    assert tempo.bar_length(1.0) == 3 and tempo.bar_length(7.0) == 4


def test_file_without_tempo_or_meter_is_120_bpm_in_four() -> None:
    tempo = TempoMap.of_midi(midi_file())
    assert tempo.bpm_at(0) == pytest.approx(120)
    assert tempo.next_bar(0.01) == pytest.approx(2.0)


def test_shifted_map_keeps_beats_on_another_clock() -> None:
    tempo = TempoMap.steady(90, beats_per_bar=3).shifted(10.0)
    assert tempo.seconds_at(3) == pytest.approx(12.0)
    assert tempo.next_bar(10.5) == pytest.approx(12.0)


@pytest.mark.parametrize(("text", "step"), [("1/4", 1.0), ("1/8", 0.5), ("1/16", 0.25), ("1/8t", 1 / 3),
                                            ("1/16t", 1 / 6), ("1/1", 4.0)])
def test_grid_names_are_note_values_in_beats(text: str, step: float) -> None:
    assert Grid.parse(text).step == pytest.approx(step)


@pytest.mark.parametrize("text", ["16", "1/0", "1/16x", "quarter", ""])
def test_unknown_grid_names_are_refused_saying_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="1/N"):
        Grid.parse(text)


def test_quantize_pulls_onsets_toward_the_grid_by_the_amount() -> None:
    tempo = TempoMap.steady(120)  # a sixteenth is 125 ms
    grid = Grid.parse("1/16")
    assert grid.place(0.140, tempo, 1.0) == pytest.approx(0.125)
    assert grid.place(0.140, tempo, 0.5) == pytest.approx(0.1325)
    assert grid.place(0.140, tempo, 0.0) == pytest.approx(0.140)
    assert grid.place(0.2, tempo, 1.0) == pytest.approx(0.25)
    assert grid.distance(0.140, tempo) == pytest.approx(0.015)


def test_swing_delays_every_second_step() -> None:
    tempo = TempoMap.steady(60)  # one beat per second; eighths 0.5 s
    grid = Grid.parse("1/8", swing=1 / 3)
    assert grid.place(0.6, tempo, 1.0) == pytest.approx(2 / 3)  # the off-beat, a triplet late
    assert grid.place(0.1, tempo, 1.0) == pytest.approx(0.0)
    assert grid.place(0.95, tempo, 1.0) == pytest.approx(1.0)


def clocks(follower: ClockFollower, start: float, bpm: float, count: int, rng: np.random.Generator,
           jitter_s: float = 0.0) -> float:
    """Feed ``count`` clocks at ``bpm`` from ``start`` (each wobbling by up to ``jitter_s``);
    the time the next one is due."""
    period = 60 / bpm / 24
    for i in range(count):
        follower.clock(start + i * period + rng.uniform(-jitter_s, jitter_s))
    return start + count * period


def test_clock_with_jitter_gives_a_steady_tempo_and_beat() -> None:
    rng = np.random.default_rng(7)
    follower = ClockFollower()
    follower.start()
    due = clocks(follower, 5.0, 100, 24 * 8, rng, jitter_s=0.0015)  # 8 beats, +-1.5 ms per clock
    assert follower.tempo.bpm_at(due) == pytest.approx(100, abs=0.5)
    # Beat 8 falls where the sender put it: within a millisecond despite the wobble.
    assert abs(follower.tempo.seconds_at(8) - due) <= 0.001
    assert follower.tempo.next_bar(due - 0.01) == pytest.approx(due, abs=0.001)  # beat 8: a downbeat in 4/4


def test_tempo_change_is_followed_within_a_beat() -> None:
    rng = np.random.default_rng(8)
    follower = ClockFollower()
    follower.start()
    due = clocks(follower, 0.0, 100, 24 * 4, rng, jitter_s=0.001)
    due = clocks(follower, due, 120, 24, rng, jitter_s=0.001)  # one beat at the new tempo
    assert follower.tempo.bpm_at(due) == pytest.approx(120, abs=1)
    assert abs(follower.tempo.seconds_at(5) - due) <= 0.001


def test_start_song_position_and_a_paused_clock() -> None:
    rng = np.random.default_rng(9)
    follower = ClockFollower(beats_per_bar=3)
    due = clocks(follower, 0.0, 100, 30, rng)  # clock with no Start: a tempo, beats from the first clock heard
    assert follower.tempo.bpm_at(due) == pytest.approx(100)
    follower.stop()
    assert not follower.running
    follower.song_position(16)  # bar 2 of 3/4 would be 12 sixteenths; 16 is beat 4
    follower.resume()
    due += 2.0  # the clock paused while stopped
    due = clocks(follower, due, 100, 1, rng)
    last = due - 60 / 100 / 24
    assert follower.tempo.beat_at(last) == pytest.approx(4.0)  # the first clock after the pause
    assert follower.tempo.bpm_at(due) == pytest.approx(100)  # the tempo known before the pause
    follower.start()
    due = clocks(follower, due, 100, 1, rng)
    last = due - 60 / 100 / 24
    assert follower.tempo.beat_at(last) == pytest.approx(0.0)
    assert follower.tempo.next_bar(due) == pytest.approx(last + 3 * 0.6)  # bars of three beats from Start


def test_onsets_generated_as_they_play_are_pulled_ahead_to_the_grid() -> None:
    tempo = TempoMap.steady(120)  # sixteenths every 125 ms
    grid = Grid.parse("1/16")
    assert grid.place_ahead(0.130, tempo, 1.0, slack=0.005) == pytest.approx(0.250)  # 5 ms past: the next one
    assert grid.place_ahead(0.128, tempo, 1.0, slack=0.005) == pytest.approx(0.125)  # within the slack: this one
    assert grid.place_ahead(0.2, tempo, 0.5, slack=0.005) == pytest.approx(0.225)
    assert grid.place_ahead(0.25, tempo, 1.0, slack=0.005) == pytest.approx(0.25)
    swung = Grid.parse("1/16", swing=1 / 3)
    assert swung.place_ahead(0.13, tempo, 1.0, slack=0.005) == pytest.approx(0.125 * 4 / 3)


def test_answers_start_on_the_beat_or_bar_and_last_whole_beats_or_bars() -> None:
    tempo = TempoMap.steady(120, at=1.0, beats_per_bar=3)  # beats every 0.5 s from 1.0; bars of 1.5 s
    assert answer_span(2.1, 2.0, tempo, "silence", 0) == pytest.approx((2.1, 4.1))
    assert answer_span(2.1, 2.0, tempo, "beat", 0) == pytest.approx((2.5, 4.5))  # 4 beats
    assert answer_span(2.1, 2.2, tempo, "beat", 0) == pytest.approx((2.5, 4.5))  # 4.4 beats: 4
    assert answer_span(2.1, 2.0, tempo, "bar", 0) == pytest.approx((2.5, 4.0))  # 1.33 bars: 1
    assert answer_span(2.1, 0.1, tempo, "bar", 0) == pytest.approx((2.5, 4.0))  # at least one bar
    assert answer_span(2.1, 9.0, tempo, "bar", 2) == pytest.approx((2.5, 5.5))  # answer_bars wins
    assert answer_span(2.5, 1.0, tempo, "beat", 0) == pytest.approx((2.5, 3.5))  # on a beat already


@dataclass(frozen=True)
class BeatConfig:
    """The engine section's tempo keys, as config.toml sets them by default."""

    tempo_bpm: float = 0.0
    beats_per_bar: int = 4
    answer_start: str = "silence"
    answer_bars: int = 0
    quantize: float = 0.0
    grid: str = "1/16"
    swing: float = 0.0


def test_without_a_tempo_nothing_moves() -> None:
    beat = Beat(BeatConfig(answer_start="bar", quantize=1.0))
    beat.heard_note(1.0)
    assert beat.tempo(2.0) is None
    assert beat.span(2.13, 1.7, 2.0) == (2.13, 2.13 + 1.7)
    assert beat.place(2.137, 2.0, 0.005) == 2.137


def test_tempo_by_hand_counts_from_the_first_note() -> None:
    beat = Beat(BeatConfig(tempo_bpm=120, answer_start="beat", quantize=1.0))
    beat.heard_note(3.02)
    beat.heard_note(3.6)  # later notes do not move beat 1
    tempo, source = beat.tempo(4.0)
    assert source == "set by hand" and tempo.seconds_at(1) == pytest.approx(3.52)
    assert beat.span(4.1, 1.2, 4.0) == pytest.approx((4.52, 5.52))  # next beat; 1.2 s -> 2 beats
    assert beat.place(4.6, 4.0, 0.005) == pytest.approx(4.645)  # the next sixteenth


def test_clock_overrides_the_hand_and_a_fixed_map_overrides_the_clock() -> None:
    rng = np.random.default_rng(3)
    beat = Beat(BeatConfig(tempo_bpm=90))
    beat.clock("start", 0.0)
    period = 60 / 100 / 24
    for i in range(48):
        beat.clock("clock", 1.0 + i * period + rng.uniform(-0.001, 0.001))
    now = 1.0 + 48 * period
    tempo, source = beat.tempo(now)
    assert source == "MIDI clock" and tempo.bpm_at(now) == pytest.approx(100, abs=0.5)
    assert beat.tempo(now + 2.0)[1] == "set by hand"  # the clock went quiet
    beat.set_tempo(TempoMap.steady(75), "JACK transport")
    assert beat.tempo(now)[1] == "JACK transport"
    beat.set_tempo(None)
    assert beat.tempo(now)[1] == "MIDI clock"


def test_song_position_pointer_sets_the_next_clock() -> None:
    beat = Beat(BeatConfig())
    period = 60 / 120 / 24
    for i in range(30):
        beat.clock("clock", i * period)
    beat.clock("stop", 30 * period)
    beat.clock("songpos", 30 * period, position=8)  # two beats in
    beat.clock("continue", 30 * period)
    beat.clock("clock", 31 * period)
    tempo, _ = beat.tempo(31 * period)
    assert tempo.beat_at(31 * period) == pytest.approx(2.0)


def test_lost_clocks_do_not_move_the_beat() -> None:
    follower = ClockFollower()
    follower.start()
    period = 60 / 120 / 24
    arrivals = [i * period for i in range(24 * 6) if i not in (50, 51, 97)]  # three clocks lost on the way
    for at in arrivals:
        follower.clock(at)
    assert follower.tempo.seconds_at(6) == pytest.approx(3.0, abs=1e-6)


def test_a_time_a_hair_before_a_grid_line_is_on_it() -> None:
    tempo = TempoMap.steady(100)
    grid = Grid.parse("1/16")
    for beat in (0.5 - 1e-9, 2.0 - 1e-9, 7.25 - 1e-12):
        assert grid.distance(tempo.seconds_at(beat), tempo) == pytest.approx(0.0, abs=1e-6)
        assert grid.place_ahead(tempo.seconds_at(beat), tempo, 1.0, 0.005) == pytest.approx(tempo.seconds_at(beat))


def test_clocks_arriving_late_do_not_move_the_beat() -> None:
    """A busy machine hands clocks over late, one at a time or several at once: they are
    not clocks lost."""
    follower = ClockFollower()
    follower.start()
    period = 60 / 100 / 24
    arrivals = [i * period for i in range(24 * 6)]
    arrivals[40] += 0.7 * period  # one clock late by most of a period
    for i in (70, 71):  # three handed over together, with the third
        arrivals[i] = arrivals[72] + 0.0001 * (i - 70)
    arrivals[72] += 0.0002
    for at in arrivals:
        follower.clock(at)
    assert follower.tempo.seconds_at(6) == pytest.approx(6 * 0.6, abs=0.002)


def test_jack_transport_position_gives_the_beats_and_bars() -> None:
    # Bar 3, beat 2, half-way through it, in 3/4 at 90 bpm, read at t = 100 s.
    tempo = TempoMap.of_transport(90, bar=3, beat=2, tick=960, ticks_per_beat=1920, beats_per_bar=3, at=100.0)
    assert tempo.beat_at(100.0) == pytest.approx(2 * 3 + 1.5)
    assert tempo.next_bar(100.0) == pytest.approx(100.0 + 1.5 * 60 / 90)  # bar 4: a beat and a half on
    # 6/8 counts eighths: 120 eighths per minute are 60 quarter notes.
    eighths = TempoMap.of_transport(120, bar=1, beat=4, tick=0, ticks_per_beat=1920, beats_per_bar=6, at=0.0,
                                    beat_type=8)
    assert eighths.bpm_at(0.0) == pytest.approx(60) and eighths.beat_at(0.0) == pytest.approx(1.5)
    assert eighths.next_bar(0.0) == pytest.approx(1.5)  # three eighths to the next bar: 1.5 s


def test_a_clock_handed_over_twice_does_not_move_the_beat() -> None:
    """An overrunning JACK server hands a cycle's events over again one period (here 2.7 ms)
    later: each repeat is the same clock, not the next one."""
    follower = ClockFollower()
    follower.start()
    period = 60 / 100 / 24
    arrivals = sorted([i * period for i in range(24 * 6)] + [i * period + 128 / 48000 for i in (30, 61, 62, 100)])
    for at in arrivals:
        follower.clock(at)
    assert follower.tempo.seconds_at(6) == pytest.approx(6 * 0.6, abs=0.002)


def test_a_tempo_that_doubles_at_once_is_followed() -> None:
    rng = np.random.default_rng(9)
    follower = ClockFollower()
    follower.start()
    due = clocks(follower, 0.0, 100, 24 * 4, rng)
    due = clocks(follower, due, 200, 24 * 2, rng)
    assert follower.tempo.bpm_at(due) == pytest.approx(200, abs=1)
    assert abs(follower.tempo.seconds_at(6) - due) <= 0.001
