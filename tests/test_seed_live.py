"""A seed file played live: what reaches a real JACK port, beside what ``--output-file``
writes for the same motif, config and random seed."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import mido

from improvd import vocab
from tests.improvd_process import improvd_command
from tests.test_ports import MOTIF, SEED, Receiver, assert_well_formed, closing, daemon, tolerance

if TYPE_CHECKING:
    from tests.conftest import Jack

# As a user runs it: the defaults' silence (candidates chosen within it) and answer bounds, so
# the answer follows the motif's length (3.3 s for examples/motif.mid).
ENGINE = {"silence_ms": 500, "min_answer_s": 2.0, "max_answer_s": 8.0}
CHORD_S = 0.012  # onsets closer than this (about one 10 ms step) count as one


def notes_per_onset(onsets: list[float]) -> float:
    groups = 0
    last = None
    for t in sorted(onsets):
        if last is None or t - last > CHORD_S:
            groups += 1
        last = t
    return len(onsets) / groups


def continuation_in_file(path: Path) -> tuple[list[float], float]:
    """Onsets and end (seconds) of the continuation track of an ``--output-file``."""
    midi = mido.MidiFile(path)
    events = list(vocab.midi_messages(midi, len(midi.tracks) - 1))
    onsets = [t for t, m in events if m.type == "note_on" and m.velocity > 0]
    return onsets, max(t for t, m in events if m.type in ("note_on", "note_off"))


def test_live_seed_file_answer_keeps_the_motif_length_and_its_line(jack: Jack, tmp_path: Path) -> None:
    """The motif is heard with its rhythm, not as one chord: the answer at the port lasts
    about as long as the file's continuation (the motif's length), one note at a time."""
    synth = Receiver(jack)
    with closing(synth):
        with daemon(jack, tmp_path, "--seed-file", str(MOTIF), "--out", synth.client, ready=False,
                    engine=ENGINE) as improvd:
            improvd.wait_ready()
            ready = time.monotonic()
            synth.wait_for(synth.note_ons, 5, "the answer")
            synth.wait_quiet(1.5, 15)
            assert improvd.stop() == 0
            config = improvd.config
        events = synth.notes()
        onsets = [t for t, _ in assert_well_formed(events, "answer", synth)]
        live_length = max(t for t, _ in events) - onsets[0]
        silence = ENGINE["silence_ms"] / 1000
        assert onsets[0] - ready <= silence + tolerance(jack), "the answer starts a silence after the motif"
        out = tmp_path / "continued.mid"
        subprocess.run([*improvd_command(), "--config", str(config), "--random-seed", str(SEED),
                        "--seed-file", str(MOTIF), "--output-file", str(out)],
                       check=True, capture_output=True, timeout=60)
        file_onsets, file_end = continuation_in_file(out)
        file_length = file_end - file_onsets[0]
        live_density = notes_per_onset(onsets)
        print(f"answer at the port {live_length:.2f} s, {live_density:.2f} notes per onset ({len(onsets)} notes); "
              f"--output-file {file_length:.2f} s, {notes_per_onset(file_onsets):.2f} notes per onset")
        assert live_length >= 2.5, f"answer {live_length:.2f} s at the port; {synth.summary()}"
        assert abs(live_length - file_length) <= 0.3, (live_length, file_length)
        assert live_density <= 1.5, f"{live_density:.2f} notes per onset at the port; {synth.summary()}"
