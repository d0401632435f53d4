"""MIDI controllers and clock: the knobs a musician turns while playing, and the tempo and
start/stop a sequencer sends."""

from __future__ import annotations

from improvd.config import ControlsConfig
from improvd.tempo import Beat

ALL_SOUND_OFF_CC, RESET_CONTROLLERS_CC, ALL_NOTES_OFF_CC = 120, 121, 123
PANIC = "panic"
RELEASE_KEYS, RELEASE_ALL, RELEASE_PEDAL = "keys", "keys and pedal", "pedal"  # what the player lifts
FORGET = "forget"  # the player memory forgets this player
CLOCK_MESSAGES = ("start", "continue", "stop", "clock", "songpos")


class Controls:
    """Reads CCs as requests (a live value, a mode, a panic), and follows MIDI clock (into ``beat``)."""

    def __init__(self, config: ControlsConfig, beat: Beat) -> None:
        self.config, self.beat = config, beat
        self.playing = True  # MIDI clock Stop pauses, Start/Continue resumes

    def control(self, control: int, value: int) -> tuple[str, object] | None:
        """What a CC asks for: (PANIC, what of the player's to release or None), (PANIC or None,
        RELEASE_PEDAL), (FORGET, None), ("mode", a mode), or (a ``Live`` field, its new value);
        None when it is not one of ours. All Notes Off / All Sound Off from a player (a DAW's
        Stop) also lift the keys it holds, whose NOTE_OFFs will never come."""
        c = self.config
        if control == ALL_NOTES_OFF_CC:
            return PANIC, RELEASE_KEYS
        if control == ALL_SOUND_OFF_CC:
            return PANIC, RELEASE_ALL
        if control == RESET_CONTROLLERS_CC:
            return None, RELEASE_PEDAL
        if control == c.panic_cc:
            return PANIC, None
        if control == c.temperature_cc:
            return "temperature", 0.25 * 8 ** (value / 127)  # 0.25..2.0, logarithmic: the middle is 0.7
        if control == c.answer_length_cc:
            return "answer_ratio", 0.25 * 16 ** (value / 127)  # a quarter .. four times the phrase
        if control == c.mode_cc:
            return "mode", "duet" if value >= 64 else "call-response"
        if control == c.memory_cc:
            return "memory_strength", value / 127  # 0: the trained model alone .. 127: mirror the player
        if control == c.memory_reset_cc:
            return FORGET, None
        return None

    def clock(self, kind: str, now: float, position: int = 0) -> str | None:
        """Follow a clock message (one of CLOCK_MESSAGES; a Song Position Pointer's
        ``position`` in sixteenths); PANIC when Stop must silence improvd."""
        self.beat.clock(kind, now, position)
        if kind in ("clock", "songpos") or not self.config.clock:
            return None
        self.playing = kind != "stop"
        return PANIC if kind == "stop" else None
