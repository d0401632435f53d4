"""Seed files continued into MIDI files a DAW takes back: the motif's tempo map, meter,
ticks per beat and notes as written, the continuation at its place in the motif's timeline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mido
import pytest

from improvd import vocab
from improvd.errors import UsageError

TICKS_PER_BEAT = 384  # not mido's 480: a resolution that must be kept, not reset
SILENCE_S = 0.5  # config.toml's silence_ms
# (beat, length in beats, pitch, velocity): two bars of 3/4, velocities as a player left them.
MOTIF = [(0, 1, 62, 81), (1, 0.5, 66, 47), (1.5, 0.5, 69, 99), (2, 1, 71, 64), (3, 1.5, 69, 90),
         (4.5, 0.5, 66, 55), (5, 1, 64, 72)]


def improvd(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "improvd.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def waltz(path: Path, bpm: float = 90, lead_in_beats: float = 0, tempo_changes: tuple = ()) -> Path:
    """A type-1 file as a DAW exports it: a conductor track (tempo, 3/4) and the motif's
    track, its first note ``lead_in_beats`` after the start; ``tempo_changes``: (beat, bpm)."""
    conductor = [(0, mido.MetaMessage("track_name", name="waltz")),
                 (0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))),
                 (0, mido.MetaMessage("time_signature", numerator=3, denominator=4))]
    conductor += [(round(b * TICKS_PER_BEAT), mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(t)))
                  for b, t in tempo_changes]
    notes = []
    for beat, length, pitch, velocity in MOTIF:
        start = round((lead_in_beats + beat) * TICKS_PER_BEAT)
        notes += [(start, mido.Message("note_on", note=pitch, velocity=velocity)),
                  (start + round(length * TICKS_PER_BEAT), mido.Message("note_off", note=pitch, velocity=0))]
    midi = mido.MidiFile(type=1, ticks_per_beat=TICKS_PER_BEAT)
    for events in (conductor, [(0, mido.MetaMessage("track_name", name="piano"))] + notes):
        track, last = mido.MidiTrack(), 0
        for tick, message in sorted(events, key=lambda e: e[0]):
            track.append(message.copy(time=tick - last))
            last = tick
        midi.tracks.append(track)
    midi.save(path)
    return path


def continue_file(seed: Path, out: Path, *args: object) -> mido.MidiFile:
    result = improvd("--seed-file", seed, "--output-file", out, "--random-seed", 4, "--length", 3, *args)
    assert result.returncode == 0, result.stderr
    return mido.MidiFile(out)


def meter_and_tempo(midi: mido.MidiFile) -> list[tuple[int, str, object]]:
    """(tick, kind, value) of every tempo and time signature, tracks merged."""
    found, tick = [], 0
    for message in mido.merge_tracks(midi.tracks):
        tick += message.time
        if message.type == "set_tempo":
            found.append((tick, "tempo", round(mido.tempo2bpm(message.tempo), 3)))
        elif message.type == "time_signature":
            found.append((tick, "meter", (message.numerator, message.denominator)))
    return found


def note_events(track: mido.MidiTrack) -> list[tuple[int, str, int, int]]:
    """(tick, type, pitch, velocity) of a track's notes, in absolute ticks."""
    events, tick = [], 0
    for message in track:
        tick += message.time
        if message.type in ("note_on", "note_off"):
            events.append((tick, message.type, message.note, message.velocity))
    return events


def motif_end_s(seed: Path) -> float:
    midi = mido.MidiFile(seed)
    return max(t for t, m in vocab.midi_messages(midi) if m.type in ("note_on", "note_off"))


def test_output_keeps_tempo_meter_resolution_and_the_motif_as_written(tmp_path: Path) -> None:
    seed = waltz(tmp_path / "waltz.mid")
    out = continue_file(seed, tmp_path / "out.mid")
    source = mido.MidiFile(seed)
    assert out.ticks_per_beat == TICKS_PER_BEAT
    assert meter_and_tempo(out) == [(0, "tempo", 90.0), (0, "meter", (3, 4))]
    assert [t.name for t in out.tracks] == ["waltz", "piano", "improvd"]
    assert note_events(out.tracks[1]) == note_events(source.tracks[1])  # velocities and ticks untouched
    continuation = vocab.midi_to_notes(out, track=2)
    assert continuation
    assert continuation[0].start == pytest.approx(motif_end_s(seed) + SILENCE_S, abs=0.011)
    assert continuation[-1].end <= motif_end_s(seed) + SILENCE_S + 3 + 0.011


def test_continuation_only_holds_the_new_notes_at_their_place_on_the_motif_tempo_map(tmp_path: Path) -> None:
    seed = waltz(tmp_path / "waltz.mid")
    whole = continue_file(seed, tmp_path / "whole.mid")
    alone = continue_file(seed, tmp_path / "alone.mid", "--continuation-only")
    assert alone.ticks_per_beat == TICKS_PER_BEAT
    assert len(alone.tracks) == 1
    assert meter_and_tempo(alone) == [(0, "tempo", 90.0), (0, "meter", (3, 4))]
    # Exactly the whole file's improvd track: dropped at the motif region's start, it lines up.
    assert note_events(alone.tracks[0]) == note_events(whole.tracks[2])
    first_onset = min(t for t, m in vocab.midi_messages(alone) if m.type == "note_on")
    assert first_onset == pytest.approx(motif_end_s(seed) + SILENCE_S, abs=0.011)


def test_a_motif_after_a_lead_in_and_tempo_changes_is_continued_in_its_own_timeline(tmp_path: Path) -> None:
    """The first note a bar in, the tempo slowing in the middle of the motif and again after
    it: the continuation starts a silence after the motif's last note, in seconds and in
    the file's ticks, under the tempo the file has there."""
    seed = waltz(tmp_path / "late.mid", lead_in_beats=3, tempo_changes=((6, 60), (9.25, 45)))
    out = continue_file(seed, tmp_path / "out.mid")
    end = motif_end_s(seed)  # 3 beats at 90 + 3 at 90 + 3 at 60 = 7 s
    assert end == pytest.approx(7.0, abs=1e-3)
    continuation = vocab.midi_to_notes(out, track=2)
    assert continuation[0].start == pytest.approx(end + SILENCE_S, abs=0.011)
    first_tick = next(t for t, kind, _, _ in note_events(out.tracks[2]) if kind == "note_on")
    expected = (9.25 + 0.25 / (60 / 45)) * TICKS_PER_BEAT  # 7.25 s is beat 9.25; then 45 bpm
    assert first_tick == pytest.approx(expected, abs=TICKS_PER_BEAT * 0.011 / (60 / 45))


def test_seed_track_output_keeps_the_files_tempo_map_with_that_track(tmp_path: Path) -> None:
    seed = waltz(tmp_path / "waltz.mid")
    out = continue_file(seed, tmp_path / "out.mid", "--seed-track", 1)
    assert [t.name for t in out.tracks] == ["piano", "improvd"]
    assert meter_and_tempo(out) == [(0, "tempo", 90.0), (0, "meter", (3, 4))]
    assert note_events(out.tracks[0]) == note_events(mido.MidiFile(seed).tracks[1])


def test_continuation_only_needs_an_output_file() -> None:
    result = improvd("--seed-file", "x.mid", "--continuation-only")
    assert result.returncode == UsageError.exit_code and "--continuation-only needs --output-file" in result.stderr


def onset_ticks(track: mido.MidiTrack) -> list[int]:
    return [t for t, kind, _, velocity in note_events(track) if kind == "note_on" and velocity > 0]


def test_continuation_starts_on_the_next_bar_of_the_motif_and_keeps_to_its_grid(tmp_path: Path) -> None:
    """90 bpm in 3/4: the motif's last note ends at beat 6 (4 s), the silence at 4.5 s
    (beat 6.75): the continuation opens on beat 9, the downbeat of bar 4, lasts whole bars
    and has every onset on a sixteenth."""
    seed = waltz(tmp_path / "waltz.mid")
    out = continue_file(seed, tmp_path / "out.mid", "--answer-start", "bar", "--quantize", 1)
    onsets = onset_ticks(out.tracks[2])
    assert onsets[0] == 9 * TICKS_PER_BEAT
    assert all(tick % (TICKS_PER_BEAT // 4) == 0 for tick in onsets), onsets
    bar = 3 * TICKS_PER_BEAT
    end = max(t for t, *_ in note_events(out.tracks[2]))
    assert end <= 9 * TICKS_PER_BEAT + 2 * bar  # 4 s of motif: two bars of answer


def test_bpm_gives_a_file_without_a_tempo_its_grid(tmp_path: Path) -> None:
    """A motif recorded in free time (the file says nothing but MIDI's default 120 bpm):
    with --bpm 100 the continuation starts on a beat of 100 bpm counted from the file's
    start and its onsets keep to the sixteenths of that tempo, in seconds."""
    midi = mido.MidiFile(type=0, ticks_per_beat=480)
    track = mido.MidiTrack()
    for pitch, length in ((60, 310), (62, 170), (64, 440), (67, 260)):
        track += [mido.Message("note_on", note=pitch, velocity=70), mido.Message("note_off", note=pitch, time=length)]
    midi.tracks.append(track)
    seed = tmp_path / "free.mid"
    midi.save(seed)
    out = continue_file(seed, tmp_path / "out.mid", "--bpm", 100, "--answer-start", "beat", "--quantize", 1)
    onsets = [t for t, m in vocab.midi_messages(out, 1) if m.type == "note_on" and m.velocity > 0]
    sixteenth = 60 / 100 / 4
    assert onsets[0] / (4 * sixteenth) == pytest.approx(round(onsets[0] / (4 * sixteenth)), abs=0.01)
    assert all(abs(t / sixteenth - round(t / sixteenth)) * sixteenth < 0.002 for t in onsets), onsets


def test_without_beat_options_the_file_tempo_changes_nothing(tmp_path: Path) -> None:
    """The defaults (answer_start = "silence", quantize = 0) continue a 90 bpm motif a
    silence after its end, off any grid: exactly as without a tempo."""
    seed = waltz(tmp_path / "waltz.mid")
    plain = continue_file(seed, tmp_path / "plain.mid")
    assert onset_ticks(plain.tracks[2])[0] == round((4.0 + SILENCE_S) / (60 / 90) * TICKS_PER_BEAT)
