"""MIDI controllers and clock: the knobs a musician turns while playing, and the tempo and
start/stop a sequencer sends."""

from __future__ import annotations

from improvd.config import ControlsConfig, Live

ALL_NOTES_OFF_CCS = (120, 123)  # All Sound Off, All Notes Off: always a panic
PANIC = "panic"
CLOCK_MESSAGES = ("start", "continue", "stop", "clock")


class Controls:
    """Turns CCs into live values or actions, and follows MIDI clock."""

    def __init__(self, config: ControlsConfig, live: Live) -> None:
        self.config, self.live = config, live
        self.playing = True  # MIDI clock Stop pauses, Start/Continue resumes
        self.clock_bpm: float | None = None
        self._last_clock: float | None = None

    def control(self, control: int, value: int) -> str | None:
        """What a CC asks for: PANIC, a mode to switch to, "" when it turned a live value,
        or None when it is not one of ours."""
        c = self.config
        if control == c.panic_cc or control in ALL_NOTES_OFF_CCS:
            return PANIC
        if control == c.temperature_cc:
            # 0..127 -> 0.25..2.0, logarithmic so the middle of the knob is 0.7.
            self.live.temperature = 0.25 * 8 ** (value / 127)
        elif control == c.answer_length_cc:
            self.live.answer_ratio = 0.25 * 16 ** (value / 127)  # a quarter .. four times the phrase
        elif control == c.mode_cc:
            return "duet" if value >= 64 else "call-response"
        else:
            return None
        return ""

    def clock(self, kind: str, now: float) -> str | None:
        """Follow a clock message (one of CLOCK_MESSAGES); PANIC when Stop must silence improvd."""
        if kind == "clock":
            if self._last_clock is not None and now > self._last_clock:
                bpm = 60 / (24 * (now - self._last_clock))
                self.clock_bpm = bpm if self.clock_bpm is None else 0.9 * self.clock_bpm + 0.1 * bpm
            self._last_clock = now
            return None
        if not self.config.clock:
            return None
        self.playing = kind != "stop"
        return PANIC if kind == "stop" else None
