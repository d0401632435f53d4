"""MIDI controllers and clock: the knobs a musician turns while playing, and the tempo and
start/stop a sequencer sends."""

from __future__ import annotations

from improvd.config import ControlsConfig

ALL_NOTES_OFF_CCS = (120, 123)  # All Sound Off, All Notes Off: always a panic
PANIC = "panic"
CLOCK_MESSAGES = ("start", "continue", "stop", "clock")


class Controls:
    """Reads CCs as requests (a live value, a mode, a panic), and follows MIDI clock."""

    def __init__(self, config: ControlsConfig) -> None:
        self.config = config
        self.playing = True  # MIDI clock Stop pauses, Start/Continue resumes
        self.clock_bpm: float | None = None
        self._last_clock: float | None = None

    def control(self, control: int, value: int) -> tuple[str, object] | None:
        """What a CC asks for: (PANIC, None), ("mode", a mode), or (a ``Live`` field, its new
        value); None when it is not one of ours."""
        c = self.config
        if control == c.panic_cc or control in ALL_NOTES_OFF_CCS:
            return PANIC, None
        if control == c.temperature_cc:
            return "temperature", 0.25 * 8 ** (value / 127)  # 0.25..2.0, logarithmic: the middle is 0.7
        if control == c.answer_length_cc:
            return "answer_ratio", 0.25 * 16 ** (value / 127)  # a quarter .. four times the phrase
        if control == c.mode_cc:
            return "mode", "duet" if value >= 64 else "call-response"
        return None

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
