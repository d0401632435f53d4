"""improvd's JACK client reading JACK transport from a real timebase master
(tests/transport_peer.py), over a real JACK server: the beats its reading predicts are the
beats the master publishes, at the frame."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from tests.test_beat_live import Band
from tests.test_ports import ROOT, unique

if TYPE_CHECKING:
    from tests.conftest import Jack

READS = 12
# In its own process: libjack wants one client per process (improvd.jackgraph), and this
# test process may hold others. Each read: the frame and number of the next beat, as
# improvd's tempo map of the transport places them (beat 0: bar 1, beat 1).
READER = f"""
import sys, time
from improvd.jackgraph import JackClient
from improvd.tempo import TempoMap
client = JackClient(sys.argv[1])
for _ in range({READS}):
    t = client.transport()
    if t is None:
        print("none", flush=True)
    else:
        tempo = TempoMap.of_transport(t.bpm, t.bar, t.beat, t.tick, t.ticks_per_beat, t.beats_per_bar, t.at,
                                      t.beat_type)
        beat = int(tempo.beat_at(time.monotonic())) + 1
        print("read", client.frame_at(tempo.seconds_at(beat)), beat, int(t.rolling), flush=True)
    time.sleep(0.13)
client.close()
"""


def read_transport(jack: Jack) -> list[tuple[int, int, bool]]:
    result = subprocess.run([sys.executable, "-c", READER, unique("reader")], env=jack.env, cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    reads = [line.split() for line in result.stdout.splitlines()]
    assert all(read[0] == "read" for read in reads) and len(reads) == READS, result.stdout
    return [(int(frame), int(beat), rolling == "1") for _, frame, beat, rolling in reads]


@pytest.mark.parametrize("offset", [0, 1000], ids=["bbt-of-the-cycle", "bbt-offset"])
def test_the_transport_read_places_the_masters_beats_at_their_frames_and_numbers(jack: Jack, offset: int) -> None:
    """``offset``: the master publishes the bar, beat and tick of that many frames before the
    cycle, and says so (JACK's bbt_offset)."""
    band = Band(jack, 100, "tests.transport_peer", str(offset))
    try:
        band.send("start")
        band.wait_line("rolling")
        band.send("bpm 137")  # a tempo whose beats fall between cycles' frames
        time.sleep(1.0)
        reads = read_transport(jack)
        time.sleep(1.0)  # the beats predicted have been published
        published = {}  # frame -> beat number (beat 0: bar 1, beat 1)
        with band.changed:
            for line in band.lines:
                if line.startswith("beat "):
                    _, frame, bar, beat = line.split()
                    published[int(frame)] = (int(bar) - 1) * 4 + int(beat) - 1
        band.send("stop")
        band.wait_line("stopped", after=len(band.lines) - 1)
        stopped = read_transport(jack)
    finally:
        band.close()
    errors = []
    for frame, number, rolling in reads:
        assert rolling
        nearest = min(published, key=lambda f: abs(f - frame))
        assert published[nearest] == number, (frame, number, published[nearest])  # bar and beat from 1
        errors.append(frame - nearest)
    period = jack.period_frames
    print(f"transport read: next beat predicted {statistics.median(map(abs, errors))} frames from the master's "
          f"(median; max {max(map(abs, errors))}; period {period}): {errors}")
    # The position is the cycle's start: read at the query's time instead, beats land up to a
    # period late (more on a busy machine).
    assert statistics.median(map(abs, errors)) <= period / 4, errors
    assert max(map(abs, errors)) <= period, errors
    assert not any(rolling for _, _, rolling in stopped)
