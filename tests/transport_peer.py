"""A DAW in miniature as JACK's timebase master: a JACK client process of its own that
publishes bar, beat, tick, meter and tempo from a tempo map over the transport's frames,
rolls, stops and relocates the transport, plays phrases from port ``keys`` and records what
arrives at port ``in``; every event stamped with its JACK frame, so that the master's own
beats and improvd's answers are compared at the sample, whatever the machine's load.

    python -m tests.transport_peer CLIENT BPM [OFFSET [METER]]

BPM counts the meter's beats (4/4 unless METER says, e.g. 6/8: eighths). With OFFSET, the
bar, beat and tick published are those of OFFSET frames before the cycle, saying so (JACK's
bbt_offset), as some masters do.

stdin: "start", "stop" (the transport), "bpm X" (the tempo from the next beat on),
"locate" (jump ahead a bar and an eighth of a beat), "play [FRAME]" (a short phrase from
JACK frame FRAME, or about a beat from now), "quit". stdout: "ready RATE", then
"rolling FRAME" / "starting FRAME" / "stopped FRAME" when the transport's state changes, "beat FRAME BAR
BEAT" for every beat the rolling transport passes (as published: bar and beat from 1),
"locate FRAME" where the transport jumped, "sent FRAME HEX" for each key message and
"in FRAME HEX" for each message received.
"""

from __future__ import annotations

import math
import sys

import jack

from tests import GIL_SLICE_S
from tests.daw_peer import DawPeer

TICKS_PER_BEAT = 1920.0  # Ardour's
STATES = {jack.ROLLING: "rolling", jack.STARTING: "starting"}
JUMP_PERIODS = 8
LOCATE_BEATS = 4.125  # in 4/4 a bar and half a sixteenth: the grid moves half a step


class TempoMap:
    """Beats over the transport's frames: (frame, beat, frames per beat) segments, ascending."""

    def __init__(self, rate: int, bpm: float) -> None:
        self.rate = rate
        self.segments: tuple[tuple[float, float, float], ...] = ((0.0, 0.0, rate * 60 / bpm),)

    def _at(self, frame: float) -> tuple[float, float, float]:
        return next((s for s in reversed(self.segments) if s[0] <= frame), self.segments[0])

    def beat_at(self, frame: float) -> float:
        start, beat, spb = self._at(frame)
        return beat + (frame - start) / spb

    def frame_at(self, beat: float) -> float:
        start, first, spb = next((s for s in reversed(self.segments) if s[1] <= beat), self.segments[0])
        return start + (beat - first) * spb

    def bpm_at(self, frame: float) -> float:
        return self.rate * 60 / self._at(frame)[2]

    def change(self, frame: float, bpm: float) -> None:
        """A new tempo from the first beat at or after ``frame``."""
        beat = math.ceil(self.beat_at(frame))
        self.segments = (*self.segments, (self.frame_at(beat), float(beat), self.rate * 60 / bpm))


def main() -> None:
    client_name, bpm = sys.argv[1], float(sys.argv[2])
    bbt_offset = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    beats_per_bar, beat_type = (int(n) for n in (sys.argv[4] if len(sys.argv) > 4 else "4/4").split("/"))
    daw = DawPeer(client_name)
    client, log = daw.client, daw.log
    tempo = TempoMap(daw.rate, bpm)
    state = {"transport": None, "first": None, "here": 0, "beat": None, "bpm": None, "locate": False}

    @client.set_timebase_callback
    def timebase(transport: int, blocksize: int, pos, new_pos: bool) -> None:
        """Bar, beat and tick of ``pos.frame`` (the cycle this position is for), from the map."""
        beats = tempo.beat_at(pos.frame - bbt_offset)
        whole = math.floor(beats)
        pos.valid = jack._lib.JackPositionBBT | (jack._lib.JackBBTFrameOffset if bbt_offset else 0)
        pos.bbt_offset = bbt_offset
        pos.beats_per_bar = float(beats_per_bar)
        pos.beat_type = float(beat_type)
        pos.ticks_per_beat = TICKS_PER_BEAT
        pos.beats_per_minute = tempo.bpm_at(pos.frame - bbt_offset)
        pos.bar = whole // beats_per_bar + 1
        pos.beat = whole % beats_per_bar + 1
        pos.tick = min(int((beats - whole) * TICKS_PER_BEAT), int(TICKS_PER_BEAT) - 1)
        pos.bar_start_tick = (pos.bar - 1) * beats_per_bar * TICKS_PER_BEAT

    @client.set_process_callback
    def process(frames: int) -> None:
        first = client.last_frame_time
        daw.keys_out.clear_buffer()
        daw.hear(first)
        transport, pos = client.transport_query_struct()
        rolling, here = transport == jack.ROLLING, pos.frame
        if state["first"] is not None:
            # An overrunning server skips cycles, and can move the transport a period more or
            # less than its frame time for a cycle or two: only a jump of more than that is a
            # relocation (one passes through "starting": a cycle without slow-sync clients).
            jump = here - state["here"] - (first - state["first"] if state["transport"] == jack.ROLLING else 0)
            if abs(jump) > JUMP_PERIODS * frames:
                log.put(f"locate {first}")
                state["beat"] = None
        if transport != state["transport"]:
            log.put(f"{STATES.get(transport, 'stopped')} {first}")
        state.update(transport=transport, first=first, here=here)
        if rolling:
            if state["bpm"] is not None:
                tempo.change(here + frames, state["bpm"])
                state["bpm"] = None
            if state["locate"]:
                state["locate"] = False
                client.transport_locate(int(tempo.frame_at(tempo.beat_at(here) + LOCATE_BEATS)))
            # Every beat once, those of cycles this callback missed (a busy machine) too.
            beat = math.ceil(tempo.beat_at(here)) if state["beat"] is None else state["beat"]
            while tempo.frame_at(beat) < here + frames:
                at = first + round(tempo.frame_at(beat) - here)
                log.put(f"beat {at} {beat // beats_per_bar + 1} {beat % beats_per_bar + 1}")
                beat += 1
            state["beat"] = beat
        else:
            state["beat"] = None
        daw.play_due(first, frames)

    def bpm_from_next_beat(args: list[str]) -> None:
        state["bpm"] = float(args[0])

    def locate(_: list[str]) -> None:
        state["locate"] = True

    def play(args: list[str]) -> None:
        beat = tempo.segments[-1][2]
        daw.phrase(int(args[0]) if args else client.frame_time + beat, beat)

    daw.serve({"start": lambda _: client.transport_start(), "stop": lambda _: client.transport_stop(),
               "bpm": bpm_from_next_beat, "locate": locate, "play": play})


if __name__ == "__main__":
    sys.setswitchinterval(GIL_SLICE_S)
    main()
