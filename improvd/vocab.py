"""The performance event vocabulary: the one place where MIDI becomes tokens and back.

Training (``training/prepare.py``) and the daemon (``improvd/engine.py``) both go through
:class:`Encoder` and :func:`tokens_to_notes`, so what the model learned and what it hears
live can never disagree.
"""

from __future__ import annotations

import copy
import enum
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import mido

TICK_S = 0.01  # one TIME_SHIFT step: 10 ms
MAX_SHIFT_TICKS = 100  # the largest single TIME_SHIFT: 1 s
VELOCITY_BINS = 32
DEFAULT_VELOCITY = 64
SUSTAIN_CC = 64
DRUM_CHANNEL = 9


class EventType(enum.Enum):
    NOTE_ON = "note_on"
    NOTE_OFF = "note_off"
    TIME_SHIFT = "time_shift"
    VELOCITY = "velocity"


@dataclass(frozen=True)
class EventRange:
    type: EventType
    min_value: int
    max_value: int

    @property
    def size(self) -> int:
        return self.max_value - self.min_value + 1


# The vocabulary, in index order. Everything else (offsets, size, metadata) derives from it.
RANGES: tuple[EventRange, ...] = (
    EventRange(EventType.NOTE_ON, 0, 127),
    EventRange(EventType.NOTE_OFF, 0, 127),
    EventRange(EventType.TIME_SHIFT, 1, MAX_SHIFT_TICKS),
    EventRange(EventType.VELOCITY, 0, VELOCITY_BINS - 1),
)

OFFSETS: dict[EventType, int] = {}
_offset = 0
for _range in RANGES:
    OFFSETS[_range.type] = _offset
    _offset += _range.size
VOCAB_SIZE = _offset
_RANGE_BY_TYPE = {r.type: r for r in RANGES}


@dataclass(frozen=True)
class Event:
    type: EventType
    value: int


def encode(event: Event) -> int:
    """The token index of ``event``; ValueError when the value is outside its range."""
    event_range = _RANGE_BY_TYPE[event.type]
    if not event_range.min_value <= event.value <= event_range.max_value:
        raise ValueError(
            f"{event.type.value} value {event.value} outside "
            f"{event_range.min_value}..{event_range.max_value}"
        )
    return OFFSETS[event.type] + event.value - event_range.min_value


def decode(index: int) -> Event:
    """The event of token ``index``; the exact inverse of :func:`encode`."""
    if not 0 <= index < VOCAB_SIZE:
        raise ValueError(f"token {index} outside 0..{VOCAB_SIZE - 1}")
    for event_range in RANGES:
        offset = OFFSETS[event_range.type]
        if index < offset + event_range.size:
            return Event(event_range.type, event_range.min_value + index - offset)
    raise AssertionError("unreachable: ranges cover 0..VOCAB_SIZE-1")


def spec() -> dict:
    """The vocabulary as JSON-able data: stored in model metadata and compared on load."""
    return {
        "tick_s": TICK_S,
        "velocity_bins": VELOCITY_BINS,
        "sustain_folded": True,
        "size": VOCAB_SIZE,
        "ranges": [
            {"type": r.type.value, "min": r.min_value, "max": r.max_value, "offset": OFFSETS[r.type]}
            for r in RANGES
        ],
    }


# Convenience index helpers, used on hot paths (sampler masks, engine).
NOTE_ON_OFFSET = OFFSETS[EventType.NOTE_ON]
NOTE_OFF_OFFSET = OFFSETS[EventType.NOTE_OFF]
TIME_SHIFT_OFFSET = OFFSETS[EventType.TIME_SHIFT]
VELOCITY_OFFSET = OFFSETS[EventType.VELOCITY]


def velocity_to_bin(velocity: int) -> int:
    """MIDI velocity 1..127 to one of 32 bins of four values each."""
    return (min(max(velocity, 1), 127) - 1) // 4


def bin_to_velocity(velocity_bin: int) -> int:
    """The velocity a bin plays at: near the top of its four values, so bin 31 is 127."""
    return min(4 * velocity_bin + 4, 127)


def time_shift_tokens(ticks: int) -> list[int]:
    """``ticks`` x 10 ms of silence as TIME_SHIFT tokens, long gaps split into 1 s pieces."""
    tokens = []
    while ticks > 0:
        step = min(ticks, MAX_SHIFT_TICKS)
        tokens.append(TIME_SHIFT_OFFSET + step - 1)
        ticks -= step
    return tokens


@dataclass(frozen=True)
class Note:
    pitch: int
    velocity: int
    start: float  # seconds
    end: float


class Encoder:
    """Turns timed MIDI messages into tokens as they happen, one message at a time.

    Time is kept on an absolute 10 ms grid, so rounding never drifts however long the
    performance runs. The sustain pedal is folded into note lengths: while it is down,
    a released key keeps sounding until the pedal comes up or the key is struck again.
    """

    def __init__(self, start_time: float = 0.0) -> None:
        self.tick = round(start_time / TICK_S)
        self.velocity_bin: int | None = None
        self.sounding: set[int] = set()
        self.held_by_pedal: set[int] = set()
        self.pedal_down = False

    def advance(self, time: float) -> list[int]:
        """TIME_SHIFT tokens that bring the encoder up to ``time`` (none if it is not later)."""
        tick = round(time / TICK_S)
        if tick <= self.tick:
            return []
        tokens = time_shift_tokens(tick - self.tick)
        self.tick = tick
        return tokens

    def note_on(self, pitch: int, velocity: int) -> list[int]:
        tokens = []
        if pitch in self.sounding:  # a re-strike: the old note ends where the new one starts
            tokens.append(NOTE_OFF_OFFSET + pitch)
        self.held_by_pedal.discard(pitch)
        velocity_bin = velocity_to_bin(velocity)
        if velocity_bin != self.velocity_bin:
            tokens.append(VELOCITY_OFFSET + velocity_bin)
            self.velocity_bin = velocity_bin
        tokens.append(NOTE_ON_OFFSET + pitch)
        self.sounding.add(pitch)
        return tokens

    def note_off(self, pitch: int) -> list[int]:
        if pitch not in self.sounding:
            return []
        if self.pedal_down:
            self.held_by_pedal.add(pitch)
            return []
        self.sounding.discard(pitch)
        return [NOTE_OFF_OFFSET + pitch]

    def sustain(self, down: bool) -> list[int]:
        self.pedal_down = down
        if down:
            return []
        tokens = [NOTE_OFF_OFFSET + p for p in sorted(self.held_by_pedal)]
        self.sounding -= self.held_by_pedal
        self.held_by_pedal.clear()
        return tokens

    def apply(self, token: int) -> None:
        """Follow a token that was generated rather than played, so the stream stays one."""
        event = decode(token)
        if event.type is EventType.TIME_SHIFT:
            self.tick += event.value
        elif event.type is EventType.VELOCITY:
            self.velocity_bin = event.value
        elif event.type is EventType.NOTE_ON:
            self.sounding.add(event.value)
        else:
            self.sounding.discard(event.value)
            self.held_by_pedal.discard(event.value)

    def copy(self) -> Encoder:
        clone = copy.copy(self)
        clone.sounding = set(self.sounding)
        clone.held_by_pedal = set(self.held_by_pedal)
        return clone

    def release_all(self) -> list[int]:
        """NOTE_OFFs for everything still sounding (end of a piece)."""
        tokens = [NOTE_OFF_OFFSET + p for p in sorted(self.sounding)]
        self.sounding.clear()
        self.held_by_pedal.clear()
        return tokens

    def feed(self, message: mido.Message, time: float) -> list[int]:
        """Tokens for one message arriving at ``time`` seconds; other messages give none."""
        kind = message.type
        if kind == "note_on" and message.velocity > 0:
            return self.advance(time) + self.note_on(message.note, message.velocity)
        if kind == "note_off" or (kind == "note_on" and message.velocity == 0):
            tokens = self.note_off(message.note)
            return self.advance(time) + tokens if tokens else []
        if kind == "control_change" and message.control == SUSTAIN_CC:
            tokens = self.sustain(message.value >= 64)
            return self.advance(time) + tokens if tokens else []
        return []


def notes_to_tokens(notes: Iterable[Note]) -> list[int]:
    """A note list as tokens, through the same :class:`Encoder` the daemon uses."""
    events = []
    for note in notes:
        start_tick = round(note.start / TICK_S)
        end_tick = max(round(note.end / TICK_S), start_tick + 1)
        # At equal times, releases come before strikes so a repeated pitch re-sounds.
        events.append((start_tick, 1, note.pitch, note.velocity))
        events.append((end_tick, 0, note.pitch, 0))
    events.sort()
    encoder = Encoder()
    tokens: list[int] = []
    for tick, is_on, pitch, velocity in events:
        time = tick * TICK_S
        if is_on:
            tokens += encoder.advance(time) + encoder.note_on(pitch, velocity)
        else:
            released = encoder.note_off(pitch)
            if released:
                tokens += encoder.advance(time) + released
    return tokens


class Decoder:
    """Walks a token stream and says, per token, which MIDI event it plays and when."""

    def __init__(self, start_time: float = 0.0) -> None:
        self.time = start_time
        self.velocity = DEFAULT_VELOCITY
        self.sounding: dict[int, tuple[float, int]] = {}  # pitch -> (start, velocity)

    def feed(self, token: int) -> Event:
        event = decode(token)
        if event.type is EventType.TIME_SHIFT:
            self.time += event.value * TICK_S
        elif event.type is EventType.VELOCITY:
            self.velocity = bin_to_velocity(event.value)
        return event


def tokens_to_notes(tokens: Iterable[int], start_time: float = 0.0) -> list[Note]:
    """The notes a token stream plays; a NOTE_OFF for a silent key is ignored, a repeated
    NOTE_ON ends the sounding note first, and notes left open end with the stream."""
    decoder = Decoder(start_time)
    notes = []
    for token in tokens:
        event = decoder.feed(token)
        if event.type is EventType.NOTE_ON:
            if event.value in decoder.sounding:
                start, velocity = decoder.sounding.pop(event.value)
                notes.append(Note(event.value, velocity, start, decoder.time))
            decoder.sounding[event.value] = (decoder.time, decoder.velocity)
        elif event.type is EventType.NOTE_OFF and event.value in decoder.sounding:
            start, velocity = decoder.sounding.pop(event.value)
            notes.append(Note(event.value, velocity, start, decoder.time))
    end = decoder.time
    for pitch, (start, velocity) in decoder.sounding.items():
        notes.append(Note(pitch, velocity, start, max(end, start + TICK_S)))
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes


def midi_messages(midi: mido.MidiFile, track: int | None = None) -> Iterator[tuple[float, mido.Message]]:
    """(seconds, message) for every channel message of a file, tracks merged unless one is
    chosen, tempo changes applied by mido."""
    now = 0.0
    for message in _source(midi, track):
        now += message.time
        if not message.is_meta:
            yield now, message


def midi_end(midi: mido.MidiFile, track: int | None = None) -> float:
    """Seconds to the last event of the file (or of one track), its end-of-track included:
    where a DAW region ends."""
    return _source(midi, track).length


def _source(midi: mido.MidiFile, track: int | None) -> mido.MidiFile:
    """The file, or one of its tracks merged with every track's tempo changes."""
    if track is None:
        return midi
    source = mido.MidiFile(type=0, ticks_per_beat=midi.ticks_per_beat)
    tempo_map = [m for t in midi.tracks for m in _absolute(t) if m[1].type == "set_tempo"]
    merged = sorted(tempo_map + list(_absolute(midi.tracks[track])), key=lambda m: m[0])
    source.tracks.append(_relative(merged))
    return source


def _absolute(track: mido.MidiTrack) -> Iterator[tuple[int, mido.Message]]:
    tick = 0
    for message in track:
        tick += message.time
        yield tick, message


def _relative(events: list[tuple[int, mido.Message]]) -> mido.MidiTrack:
    track = mido.MidiTrack()
    last = 0
    for tick, message in events:
        track.append(message.copy(time=tick - last))
        last = tick
    return track


def midi_to_tokens(
    midi: mido.MidiFile, track: int | None = None, skip_drums: bool = True
) -> list[int]:
    """A whole MIDI file as tokens, through the live :class:`Encoder` (pedal included)."""
    encoder = Encoder()
    tokens: list[int] = []
    for time, message in midi_messages(midi, track):
        if skip_drums and getattr(message, "channel", None) == DRUM_CHANNEL:
            continue
        tokens += encoder.feed(message, time)
    return tokens + encoder.release_all()


def midi_to_notes(
    midi: mido.MidiFile, track: int | None = None, skip_drums: bool = True
) -> list[Note]:
    return tokens_to_notes(midi_to_tokens(midi, track, skip_drums))


def notes_to_midi(notes: Iterable[Note], channel: int = 0, program: int = 0) -> mido.MidiFile:
    """A type-0 file at 120 bpm, 480 ticks per beat (1 ms per 0.96 ticks)."""
    midi = mido.MidiFile(type=0, ticks_per_beat=480)
    track = mido.MidiTrack()
    midi.tracks.append(track)
    tempo = mido.bpm2tempo(120)
    track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    track.append(mido.Message("program_change", program=program, channel=channel, time=0))
    events = []
    for note in notes:
        events.append((note.start, 1, note.pitch, note.velocity))
        events.append((note.end, 0, note.pitch, 0))
    events.sort(key=lambda e: (e[0], e[1]))
    last_tick = 0
    for time, is_on, pitch, velocity in events:
        tick = round(mido.second2tick(time, midi.ticks_per_beat, tempo))
        kind = "note_on" if is_on else "note_off"
        track.append(
            mido.Message(kind, note=pitch, velocity=velocity, channel=channel, time=tick - last_tick)
        )
        last_tick = tick
    return midi
