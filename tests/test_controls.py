"""Controllers and clock: knobs turn live values, CCs switch mode or panic, clock sets tempo."""

import pytest

from improvd.config import ControlsConfig, EngineConfig, Live
from improvd.controls import PANIC, RELEASE_ALL, RELEASE_KEYS, RELEASE_PEDAL, Controls
from improvd.tempo import Beat


def controls(**settings) -> Controls:
    return Controls(ControlsConfig(**settings), Beat(EngineConfig()))


def test_knobs_ask_for_live_values_mode_and_panic():
    c = controls()
    name, temperature = c.control(1, 127)
    assert name in Live.__dataclass_fields__ and temperature == pytest.approx(2.0)
    name, ratio = c.control(2, 0)
    assert name in Live.__dataclass_fields__ and ratio == pytest.approx(0.25)
    assert c.control(80, 64) == ("mode", "duet") and c.control(80, 63) == ("mode", "call-response")
    assert c.control(123, 0) == (PANIC, RELEASE_KEYS) and c.control(120, 0) == (PANIC, RELEASE_ALL)
    assert c.control(121, 0) == (None, RELEASE_PEDAL)  # Reset All Controllers: the player's pedal comes up
    assert controls(panic_cc=60).control(60, 0) == (PANIC, None)
    assert c.control(7, 100) is None


def test_a_disabled_knob_is_just_another_cc():
    assert controls(temperature_cc=-1).control(1, 127) is None


def test_clock_gives_the_tempo_and_stop_start_pause_and_resume():
    c = controls()
    for i in range(48):
        c.clock("clock", i * 60 / (24 * 90))
    tempo, source = c.beat.tempo(2.0)
    assert source == "MIDI clock" and tempo.bpm_at(2.0) == pytest.approx(90, rel=0.01)
    assert c.clock("stop", 3.0) == PANIC and not c.playing
    assert c.clock("continue", 3.5) is None and c.playing


def test_clock_off_ignores_start_and_stop():
    c = controls(clock=False)
    assert c.clock("stop", 1.0) is None and c.playing
