"""Tiny performance MIDI folders laid out as the real training data is: an ASAP-like tree
(Composer/Work/Piece/Performer.mid, several performers and a `_no_repeat` variant of one
piece) and a POP909-like folder of three-track songs with pedal. Written with mido."""

from __future__ import annotations

from pathlib import Path

import mido
import numpy as np

from improvd_train.prepare import split_of


def performance(path: Path, seconds: float, seed: int, tracks: int = 1, pedal: bool = True) -> None:
    """A played-looking file: uneven onsets, varied velocities, sustain pedal in the last
    track; each track in its own register and on its own channel, as POP909's are."""
    rng = np.random.default_rng(seed)
    midi = mido.MidiFile(type=1, ticks_per_beat=480)
    tempo = mido.bpm2tempo(100)
    for number in range(tracks):
        events = []  # (seconds, message)
        t = 0.05 * number
        while t < seconds:
            pitch = int(48 + 12 * number + rng.integers(0, 12))
            length = float(rng.uniform(0.08, 0.5))
            events.append((t, mido.Message("note_on", note=pitch, velocity=int(rng.integers(30, 110)),
                                           channel=number)))
            events.append((t + length, mido.Message("note_off", note=pitch, velocity=0, channel=number)))
            t += float(rng.uniform(0.1, 0.35))
        if pedal and number == tracks - 1:
            for down in np.arange(0.0, seconds, 2.0):
                events.append((down + 0.01, mido.Message("control_change", control=64, value=100, channel=number)))
                events.append((down + 1.5, mido.Message("control_change", control=64, value=0, channel=number)))
        events.sort(key=lambda e: e[0])
        track = mido.MidiTrack()
        if number == 0:
            track.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
        last = 0
        for when, message in events:
            tick = round(mido.second2tick(when, midi.ticks_per_beat, tempo))
            track.append(message.copy(time=tick - last))
            last = tick
        midi.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(path)


def numbers_in_every_split(piece_id: str, each: int = 1) -> list[str]:
    """Numbers n such that the piece ids ``piece_id.format(n)`` fall ``each`` in every split."""
    wanted = {"train": each, "validation": each, "test": each}
    names = []
    for number in range(10_000):
        split = split_of(piece_id.format(number))
        if wanted[split]:
            wanted[split] -= 1
            names.append(str(number))
        if not any(wanted.values()):
            return names
    raise AssertionError("no names for every split")


def asap_like(root: Path, seconds: float = 40.0) -> Path:
    """root/asap/Composer/Sonatas/<piece>/<performer>.mid: two performers per piece, and
    the first piece again as a `_no_repeat` variant."""
    folder = root / "asap"
    pieces = [f"Sonata_{n}" for n in numbers_in_every_split("asap/Composer/Sonatas/Sonata_{}", each=2)]
    for number, piece in enumerate(pieces):
        for performer in ("PerformerA01", "PerformerB02"):
            performance(folder / "Composer" / "Sonatas" / piece / f"{performer}.mid", seconds, seed=number)
    performance(folder / "Composer" / "Sonatas" / f"{pieces[0]}_no_repeat" / "PerformerC03.mid", seconds, seed=99)
    return folder


def pop_like(root: Path, seconds: float = 40.0) -> Path:
    """root/pop/<n>.mid: three tracks (melody, bridge, piano with pedal) per song."""
    folder = root / "pop"
    for number, name in enumerate(numbers_in_every_split("pop/{}.mid", each=2)):
        performance(folder / f"{name}.mid", seconds, seed=100 + number, tracks=3)
    return folder
