"""Tempo, beats and the grid: where beats and bars fall in seconds, how MIDI clock is
followed, and how an onset is pulled toward a grid.

Pure: no clock of its own, no I/O; every time is passed in, in seconds on the caller's
clock (a file's timeline from its start, or the daemon's monotonic clock). A beat is a
quarter note, as in MIDI files and MIDI clock (24 clocks per beat).
"""

from __future__ import annotations

import bisect
import re
from collections import deque
from dataclasses import dataclass, replace
from fractions import Fraction

import mido

DEFAULT_TEMPO = 500_000  # microseconds per beat when a file sets none (MIDI's 120 bpm)
CLOCKS_PER_BEAT = 24
CLOCKS_PER_SONG_POSITION = 6  # Song Position Pointer counts sixteenth notes
MIN_BPM, MAX_BPM = 20.0, 400.0  # a clock outside these is noise, a paused sender or a glitch
CLOCK_WINDOW = CLOCKS_PER_BEAT + 1  # clocks fitted: one beat, so a tempo change is followed within a beat
REPEAT_PERIODS = 0.35  # a clock this soon after the last one is that one again (a tempo that
# doubles at once still counts: its clocks come half a period apart)
CLOCK_GAP = 12  # a clock this many periods after the last one: the clock paused, the fit starts anew
EPSILON_BEATS = 1e-6  # a time this close to a beat counts as on it
GRID = re.compile(r"^1/(\d+)(t?)$")


@dataclass(frozen=True)
class TempoMap:
    """Where beats fall in seconds and where bars begin: a file's tempo changes and time
    signatures, or one steady tempo followed live or set by hand.

    ``segments``: (beat, seconds, seconds per beat), ascending; the first one extends
    backwards and the last one forwards. ``meters``: (beat, beats per bar), ascending; a
    bar begins at each meter's beat and every ``beats per bar`` after it."""

    segments: tuple[tuple[float, float, float], ...]
    meters: tuple[tuple[float, float], ...] = ((0.0, 4.0),)

    @classmethod
    def steady(cls, bpm: float, at: float = 0.0, beat: float = 0.0, beats_per_bar: float = 4.0,
               bar_beat: float = 0.0) -> TempoMap:
        """``bpm`` with beat number ``beat`` at time ``at``; bars of ``beats_per_bar`` from ``bar_beat``."""
        return cls(((beat, at, 60.0 / bpm),), ((bar_beat, beats_per_bar),))

    @classmethod
    def of_midi(cls, midi: mido.MidiFile) -> TempoMap:
        """A file's tempo map (set_tempo) and meter (time_signature), seconds from its start."""
        ticks_per_beat = midi.ticks_per_beat
        tempos: dict[int, int] = {0: DEFAULT_TEMPO}
        meters: dict[int, float] = {0: 4.0}
        tick = 0
        for message in mido.merge_tracks(midi.tracks):
            tick += message.time
            if message.type == "set_tempo":
                tempos[tick] = message.tempo
            elif message.type == "time_signature":
                meters[tick] = message.numerator * 4 / message.denominator
        segments, seconds, last_tick, last_tempo = [], 0.0, 0, DEFAULT_TEMPO
        for change, tempo in sorted(tempos.items()):
            seconds += (change - last_tick) / ticks_per_beat * last_tempo / 1e6
            segments.append((change / ticks_per_beat, seconds, tempo / 1e6))
            last_tick, last_tempo = change, tempo
        return cls(tuple(segments), tuple((t / ticks_per_beat, bpb) for t, bpb in sorted(meters.items())))

    @classmethod
    def of_transport(cls, bpm: float, bar: int, beat: int, tick: float, ticks_per_beat: float,
                     beats_per_bar: float, at: float, beat_type: float = 4.0) -> TempoMap:
        """JACK transport's position (bar and beat from 1, ``tick`` into the beat; its beats
        of 1/``beat_type`` notes) at time ``at``, as a steady map in quarter notes."""
        quarter = 4.0 / beat_type
        position = ((bar - 1) * beats_per_bar + (beat - 1) + tick / ticks_per_beat) * quarter
        return cls.steady(bpm * quarter, at, position, beats_per_bar * quarter)

    def shifted(self, seconds: float) -> TempoMap:
        """The same map on a clock ``seconds`` ahead."""
        return replace(self, segments=tuple((b, s + seconds, spb) for b, s, spb in self.segments))

    def _segment(self, key: int, value: float) -> tuple[float, float, float]:
        index = bisect.bisect_right([segment[key] for segment in self.segments], value) - 1
        return self.segments[max(0, index)]

    def beat_at(self, seconds: float) -> float:
        beat, start, spb = self._segment(1, seconds)
        return beat + (seconds - start) / spb

    def seconds_at(self, beat: float) -> float:
        first, start, spb = self._segment(0, beat)
        return start + (beat - first) * spb

    def bpm_at(self, seconds: float) -> float:
        return 60.0 / self._segment(1, seconds)[2]

    def next_beat(self, seconds: float) -> float:
        """The first beat at or after ``seconds``."""
        beat = self.beat_at(seconds)
        return self.seconds_at(max(beat, float(_ceil(beat))))

    def next_bar(self, seconds: float) -> float:
        """The first downbeat at or after ``seconds``."""
        return self.seconds_at(self.next_bar_beat(self.beat_at(seconds)))

    def next_bar_beat(self, beat: float) -> float:
        index = max(0, bisect.bisect_right([m[0] for m in self.meters], beat + EPSILON_BEATS) - 1)
        start, length = self.meters[index]
        bar = start + _ceil((beat - start) / length) * length
        if index + 1 < len(self.meters):
            bar = min(bar, self.meters[index + 1][0])  # a new meter begins a bar
        return max(bar, beat)

    def bar_length(self, beat: float) -> float:
        """Beats in the bar at ``beat``."""
        index = max(0, bisect.bisect_right([m[0] for m in self.meters], beat + EPSILON_BEATS) - 1)
        return self.meters[index][1]


def _ceil(value: float) -> int:
    """Ceiling that forgives float noise: 2.0000000001 beats is beat 2."""
    return int(-(-(value - EPSILON_BEATS) // 1))


@dataclass(frozen=True)
class Grid:
    """Positions in beats onsets are pulled to: a step (``1/16`` a sixteenth, ``1/8t`` an
    eighth triplet) and swing, the delay of every second step as a fraction of a step
    (0 straight, 1/3 a triplet feel, at most 1/2)."""

    step: float
    swing: float = 0.0

    @classmethod
    def parse(cls, text: str, swing: float = 0.0) -> Grid:
        """``"1/16"``, ``"1/8t"`` ... ; ValueError naming the forms accepted."""
        match = GRID.match(text.strip())
        if not match or int(match.group(1)) == 0:
            raise ValueError(f"{text!r} is not a grid: write 1/N for a note value (1/4, 1/8, 1/16) "
                             "or 1/Nt for its triplet (1/8t)")
        step = Fraction(4, int(match.group(1))) * (Fraction(2, 3) if match.group(2) else 1)
        return cls(float(step), swing)

    def around(self, beat: float) -> tuple[float, float]:
        """The grid positions at or before ``beat`` and after it."""
        pair = 2 * self.step
        start = (beat // pair) * pair
        offbeat = self.step * (1 + self.swing)
        points = (start, start + offbeat, start + pair, start + pair + offbeat)
        before = max(p for p in points if p <= beat + EPSILON_BEATS)
        return before, min(p for p in points if p > before)

    def nearest(self, beat: float) -> float:
        """The grid position nearest ``beat``."""
        before, after = self.around(beat)
        return before if beat - before <= after - beat else after

    def place(self, seconds: float, tempo: TempoMap, amount: float) -> float:
        """``seconds`` pulled ``amount`` (0..1) of the way to the nearest grid position."""
        target = tempo.seconds_at(self.nearest(tempo.beat_at(seconds)))
        return seconds + amount * (target - seconds)

    def place_ahead(self, seconds: float, tempo: TempoMap, amount: float, slack: float) -> float:
        """Like ``place``, for an onset generated as it plays: time cannot go back, so it is
        pulled to the grid position at most ``slack`` seconds before it, else to the next."""
        before, after = self.around(tempo.beat_at(seconds))
        target = tempo.seconds_at(before)
        if seconds - target > slack:
            target = tempo.seconds_at(after)
        return seconds + amount * (target - seconds)

    def distance(self, seconds: float, tempo: TempoMap) -> float:
        """How far ``seconds`` lies from the nearest grid position, in seconds."""
        return abs(seconds - self.place(seconds, tempo, 1.0))


class ClockFollower:
    """Tempo and beat position from MIDI clock: 24 clocks per beat, Start (the next clock
    is beat 0), Continue, Stop, Song Position Pointer. Clock arrival times wobble (a
    millisecond or more over USB or a busy machine); a least-squares line through the last
    beat of clocks averages the wobble out and follows a tempo change within a beat."""

    def __init__(self, beats_per_bar: float = 4.0) -> None:
        self.beats_per_bar = beats_per_bar
        self.clocks: deque[tuple[int, float]] = deque(maxlen=CLOCK_WINDOW)  # (clock number, arrival)
        self.position = 0  # number of the next clock: 24 per beat from the song's start
        self.skipped = 0  # clocks the last one was counted as coming after, unheard
        self.running = True  # until a Stop; clock alone (no Start) still gives a tempo
        self.tempo: TempoMap | None = None

    def clock(self, now: float) -> None:
        """A clock arrived at ``now``. Clocks can be lost on the way (a MIDI server that
        overruns drops events): one arriving two or more periods after where the last one
        lies on the fitted line counts the ones missed. Or they can arrive late (a busy
        machine): when the next one then comes about when the last was due, the last was
        late, not clocks lost, and it takes its own place back. Or one can arrive twice (an
        overrunning JACK server hands a cycle's events over again one period later): a clock
        far too soon after one that came on time is that repeat, and not counted."""
        if self.clocks:
            number, last = self.clocks[-1]
            steps = 1
            if self.tempo is not None:
                period = 60.0 / self.tempo.bpm_at(now) / CLOCKS_PER_BEAT
                if (now - last) / period < REPEAT_PERIODS and not self.skipped:
                    return
                steps = round((now - self.tempo.seconds_at(number / CLOCKS_PER_BEAT)) / period)
                if steps <= 0 and self.skipped:
                    self.clocks[-1] = (number - self.skipped, last)
                    self.position -= self.skipped
                    steps = 1
            self.skipped = 0
            if now <= last or steps > CLOCK_GAP:
                self.clocks.clear()  # out of order, or a pause: the fit starts anew
            elif steps > 1:
                self.skipped = steps - 1
                self.position += self.skipped
        self.clocks.append((self.position, now))
        self.position += 1
        self._fit()

    def start(self) -> None:
        """Start: the song from its beginning; the next clock is beat 0."""
        self.position = 0
        self.running = True
        self._relabel()

    def stop(self) -> None:
        self.running = False

    def resume(self) -> None:
        """Continue: from the position reached (or set by a Song Position Pointer)."""
        self.running = True

    def song_position(self, sixteenths: int) -> None:
        """Song Position Pointer: the next clock is at this many sixteenth notes."""
        self.position = sixteenths * CLOCKS_PER_SONG_POSITION
        self._relabel()

    def _relabel(self) -> None:
        """A new position: the clocks before it no longer line up with the ones to come (a
        pause lies between), so the fit starts anew from the tempo known so far."""
        self.clocks.clear()
        self.skipped = 0

    def _fit(self) -> None:
        if len(self.clocks) < 2:
            if self.clocks and self.tempo is not None:  # clock again after a pause: the last tempo, placed anew
                number, at = self.clocks[-1]
                self.tempo = TempoMap.steady(self.tempo.bpm_at(at), at, number / CLOCKS_PER_BEAT, self.beats_per_bar)
            return
        n = len(self.clocks)
        mean_x = sum(x for x, _ in self.clocks) / n
        mean_t = sum(t for _, t in self.clocks) / n
        spread = sum((x - mean_x) ** 2 for x, _ in self.clocks)
        slope = sum((x - mean_x) * (t - mean_t) for x, t in self.clocks) / spread  # seconds per clock
        if slope <= 0:
            return
        bpm = 60.0 / (slope * CLOCKS_PER_BEAT)
        if not MIN_BPM <= bpm <= MAX_BPM:
            return
        last = self.clocks[-1][0]
        at = mean_t + (last - mean_x) * slope  # the fitted time of the last clock
        self.tempo = TempoMap.steady(bpm, at, last / CLOCKS_PER_BEAT, self.beats_per_bar)


def answer_span(deadline: float, length: float, tempo: TempoMap, start_on: str, bars: int) -> tuple[float, float]:
    """(start, end) of an answer when a tempo is known. It starts on the silence deadline,
    or on the first beat or downbeat at or after it (``start_on``); it lasts ``bars`` bars,
    or else ``length`` seconds rounded to whole beats ("beat") or bars ("bar"), at least one."""
    start = {"silence": deadline, "beat": tempo.next_beat(deadline), "bar": tempo.next_bar(deadline)}[start_on]
    first = tempo.beat_at(start)
    bar = tempo.bar_length(first)
    if bars > 0:
        return start, tempo.seconds_at(first + bars * bar)
    if start_on == "silence":
        return start, start + length
    unit = bar if start_on == "bar" else 1.0
    units = max(1, round((tempo.beat_at(start + length) - first) / unit))
    return start, tempo.seconds_at(first + units * unit)


CLOCK_STALE_S = 1.0  # MIDI clock unheard this long no longer sets the tempo


class Beat:
    """What the engine asks about tempo: the beats now (from a fixed map, such as a seed
    file's or JACK transport's; else from MIDI clock; else from a tempo set by hand, its
    beat 1 on the first note heard or played), where an answer starts and ends, and where an onset
    is played. ``config``: the engine section (tempo_bpm, beats_per_bar, answer_start,
    answer_bars, quantize, grid, swing). Without a tempo it changes nothing."""

    def __init__(self, config) -> None:
        self.config = config
        self.follower = ClockFollower(config.beats_per_bar)
        self.grid = Grid.parse(config.grid, config.swing)
        self.fixed: tuple[TempoMap, str] | None = None
        self.anchor: float | None = None  # the first note heard: beat 1 of a tempo set by hand
        self.last_clock: float | None = None

    def clock(self, kind: str, now: float, position: int = 0) -> None:
        """A clock message: "clock", "start", "continue", "stop", "songpos" (``position``
        in sixteenths)."""
        if kind == "clock":
            self.follower.clock(now)
            self.last_clock = now
        elif kind == "start":
            self.follower.start()
        elif kind == "continue":
            self.follower.resume()
        elif kind == "stop":
            self.follower.stop()
        elif kind == "songpos":
            self.follower.song_position(position)

    def set_tempo(self, tempo: TempoMap | None, source: str = "file") -> None:
        """A tempo map that overrides clock and hand (a seed file's, JACK transport's); None lifts it."""
        self.fixed = None if tempo is None else (tempo, source)

    def heard_note(self, now: float) -> None:
        if self.anchor is None:
            self.anchor = now

    def tempo(self, now: float) -> tuple[TempoMap, str] | None:
        """The tempo map in force at ``now`` and its source; None without one."""
        if self.fixed is not None:
            return self.fixed
        if self.follower.tempo is not None and self.last_clock is not None and now - self.last_clock <= CLOCK_STALE_S:
            return self.follower.tempo, "MIDI clock"
        if self.config.tempo_bpm > 0:
            at = now if self.anchor is None else self.anchor
            return TempoMap.steady(self.config.tempo_bpm, at, beats_per_bar=self.config.beats_per_bar), "set by hand"
        return None

    def span(self, deadline: float, length: float, now: float) -> tuple[float, float]:
        """(start, end) of the answer to a phrase that ends at ``deadline``: on the beat and
        in whole beats or bars when a tempo is known and asked for, else as it was."""
        tempo = self.tempo(now)
        if tempo is None:
            return deadline, deadline + length
        return answer_span(deadline, length, tempo[0], self.config.answer_start, self.config.answer_bars)

    def place(self, onset: float, now: float, slack: float) -> float:
        """Where a generated onset due at ``onset`` is played (see Grid.place_ahead). In
        duet improvd may play first: its first note is then beat 1 of a tempo set by hand."""
        if self.config.tempo_bpm > 0 and self.anchor is None:
            self.anchor = onset
        tempo = self.tempo(now)
        if tempo is None or self.config.quantize <= 0:
            return onset
        return self.grid.place_ahead(onset, tempo[0], self.config.quantize, slack)

    def distance(self, onset: float, now: float) -> float | None:
        """How far an onset lies from the grid; None without a tempo."""
        tempo = self.tempo(now)
        return None if tempo is None else self.grid.distance(onset, tempo[0])
