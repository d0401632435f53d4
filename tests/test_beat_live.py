"""Answers on the beat, over a real JACK server: a DAW in miniature (tests/clock_peer.py, a
JACK-Client process) sends MIDI clock and plays a phrase into improvd, and records improvd's
answer. Beats and answer onsets are compared in JACK frames at that receiver: the clock
the receiver sent is the grid, and what arrives is where improvd's notes landed."""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.test_ports import ROOT, daemon, unique

if TYPE_CHECKING:
    from tests.conftest import Jack

CLOCKS_PER_BEAT = 24
CLOCKS_PER_SIXTEENTH = 6
BEAT = {"answer_start": "beat", "quantize": 1.0, "grid": "1/16", "silence_ms": 300, "min_answer_s": 1.5,
        "max_answer_s": 3.0}


class Band:
    """tests/clock_peer.py (or ``peer``, another speaking its protocol) as a subprocess: clock
    out, keys out, and a recording input."""

    def __init__(self, jack: Jack, bpm: float, peer: str = "tests.clock_peer", *args: str) -> None:
        self.name = unique("band")
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.process = subprocess.Popen([sys.executable, "-m", peer, self.name, str(bpm), *args],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=jack.env,
                                        cwd=ROOT)
        threading.Thread(target=self._read, daemon=True).start()
        self.rate = int(self.wait_line("ready").split()[1])

    def _read(self) -> None:
        for line in self.process.stdout:
            with self.changed:
                self.lines.append(line.strip())
                self.changed.notify_all()

    def wait_line(self, prefix: str, timeout: float = 15.0, after: int = 0) -> str:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                found = next((line for line in self.lines[after:] if line.startswith(prefix)), None)
                if found:
                    return found
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"clock peer: no {prefix!r} line; it said {self.lines[-5:]}")
                self.changed.wait(0.05)

    def send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def frames(self, kind: str) -> list[int]:
        with self.changed:
            return [int(line.split()[1]) for line in self.lines if line.startswith(kind + " ")]

    def onsets(self, since: int = 0) -> list[int]:
        """Frames of the NOTE_ONs received from improvd."""
        with self.changed:
            found = []
            for line in self.lines:
                if line.startswith("in "):
                    _, frame, data = line.split()
                    raw = bytes.fromhex(data)
                    if raw[0] & 0xF0 == 0x90 and raw[2] > 0 and int(frame) >= since:
                        found.append(int(frame))
            return found

    def frame_now(self) -> int:
        """About now, in frames: the last clock sent (one every few milliseconds)."""
        return self.frames("clock")[-1]

    def close(self) -> None:
        if self.process.poll() is None:
            self.send("quit")
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def nearest(frame: int, grid: list[int]) -> int:
    """Signed distance in frames from ``frame`` to the closest of ``grid``."""
    return min((frame - g for g in grid), key=abs)


def answer_after(band: Band, since: int, timeout: float = 15.0) -> list[int]:
    """The onsets of the first answer received after frame ``since`` (until a quiet second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        onsets = band.onsets(since)
        if onsets and band.frame_now() - onsets[-1] > band.rate:
            return onsets
        time.sleep(0.1)
    raise AssertionError(f"no complete answer after frame {since}: {band.onsets(since)}")


def measure(jack: Jack, tmp_path: Path) -> tuple[dict[int, tuple[float, float, float, int]], str]:
    """Per tempo: (first note to the beat, onsets to the 1/16 grid p90 and p50 in ms, notes),
    and improvd's log."""
    band = Band(jack, bpm=100)
    try:
        with daemon(jack, tmp_path, engine=BEAT) as improvd:
            improvd_in, improvd_out = improvd.ports()
            jack.connect(f"{band.name}:clock", improvd_in)
            jack.connect(f"{band.name}:keys", improvd_in)
            jack.connect(improvd_out, f"{band.name}:in")
            band.send("start")
            start = int(band.wait_line("start").split()[1])
            results = {}
            for bpm in (100, 120):
                if bpm != 100:
                    band.send(f"bpm {bpm}")
                time.sleep(2 * 60 / bpm)  # two beats of clock at this tempo before the phrase
                mark = len(band.lines)
                band.send("play")
                played = int(band.wait_line("sent", after=mark).split()[1])
                onsets = answer_after(band, played + band.rate)
                clocks = [c for c in band.frames("clock") if c >= start]
                beats, sixteenths = clocks[::CLOCKS_PER_BEAT], clocks[::CLOCKS_PER_SIXTEENTH]
                to_ms = 1000 / band.rate
                first = abs(nearest(onsets[0], beats)) * to_ms
                grid = sorted(abs(nearest(f, sixteenths)) * to_ms for f in onsets)
                results[bpm] = (first, grid[math.ceil(0.9 * len(grid)) - 1], statistics.median(grid), len(grid))
            assert improvd.stop() == 0
            return results, improvd.log()
    finally:
        band.close()


def test_answers_start_on_the_beat_on_the_sixteenth_grid_and_follow_a_tempo_change(jack: Jack, tmp_path: Path) -> None:
    """Measured again once when JACK overran meanwhile: an overrun drops or repeats MIDI
    events at any client, clock and phrase included."""
    # The target, plus one period of JACK's delay on the loop's last connection (the band
    # hears improvd a cycle late) and one of slack.
    allowed = 5 + 2 * jack.period_s * 1000
    for attempt in (1, 2):
        xruns = jack.xruns()
        (tmp_path / f"try{attempt}").mkdir()
        results, log = measure(jack, tmp_path / f"try{attempt}")
        overran = jack.xruns() - xruns
        for bpm, (first, p90, median, count) in results.items():
            print(f"{bpm} bpm: first note {first:.2f} ms from the beat; onsets to the 1/16 grid p50 {median:.2f} "
                  f"ms, p90 {p90:.2f} ms ({count} notes; JACK period {jack.period_s * 1000:.2f} ms; "
                  f"{overran} overruns)")
        on_time = all(first <= allowed and p90 <= allowed for first, p90, _, _ in results.values())
        if on_time or not overran:
            break
    for bpm, (first, p90, _, _) in results.items():
        assert first <= allowed, (bpm, results, f"{overran} overruns", log[-3000:])
        assert p90 <= allowed, (bpm, results, f"{overran} overruns", log[-3000:])


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
