"""improvd-train, as a musician runs it: a folder of their MIDI in, a model they can play with
`improvd --model NAME` out; and one clear line with exit code 2 for a folder it cannot use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mido
import pytest

from improvd_train.finetune import EXIT_FOLDER
from tests.performance_fixtures import performance

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "motif.mid"


def improvd_train(*args, data_home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_DATA_HOME": str(data_home)}
    return subprocess.run([sys.executable, "-m", "improvd_train.finetune", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def drums(path: Path) -> None:
    midi = mido.MidiFile()
    track = mido.MidiTrack()
    for i in range(16):
        track.append(mido.Message("note_on", note=36 + i % 3, velocity=90, channel=9, time=0 if i == 0 else 120))
        track.append(mido.Message("note_off", note=36 + i % 3, velocity=0, channel=9, time=60))
    midi.tracks.append(track)
    path.parent.mkdir(parents=True, exist_ok=True)
    midi.save(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    folder = root / "my-trio"
    for number in range(5):
        performance(folder / f"take{number}.mid", seconds=12, seed=number)
    drums(folder / "beat.mid")
    (folder / "notes.txt").write_text("not music")
    result = improvd_train(folder, "--minutes", 0.5, "--steps", 2, data_home=root / "share")
    return root, result


def test_a_folder_becomes_a_model_improvd_plays(trained, tmp_path):
    root, result = trained
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped" in result.stdout and "beat.mid: only drums" in result.stdout
    assert "play it with: improvd --model my-trio" in result.stdout
    model = root / "share" / "improvd" / "models" / "my-trio.onnx"
    card = json.loads(model.with_suffix(".json").read_text())
    tune = card["fine_tune"]
    assert tune["held_out_pieces"] == 1
    assert f"{tune['bits_per_event_before']:.3f} before, {tune['bits_per_event_after']:.3f} after" in result.stdout
    assert card["lineage"][-1]["data"]["sources"] == ["my-trio"]
    assert len(card["lineage"]) >= 2  # the shipped model's runs come first
    assert "NonCommercial" in card["terms"] or "non-commercial" in card["terms"]  # inherited from the base

    env = {**os.environ, "XDG_DATA_HOME": str(root / "share")}
    version = subprocess.run([sys.executable, "-m", "improvd", "--model", "my-trio", "--version"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=60)
    assert version.returncode == 0, version.stderr
    assert str(model) in version.stdout
    out = tmp_path / "out.mid"
    played = subprocess.run([sys.executable, "-m", "improvd", "--model", "my-trio", "--seed-file", EXAMPLE,
                             "--output-file", out, "--length", "2"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert played.returncode == 0, played.stderr
    assert out.exists()


@pytest.mark.parametrize("make, message", [
    (lambda folder: None, "the folder is empty"),
    (lambda folder: (folder / "readme.txt").write_text("hello"), "no MIDI files"),
    (lambda folder: drums(folder / "beat.mid"), "only drums (channel 10)"),
    (lambda folder: performance(folder / "one.mid", seconds=5, seed=1), "one piece is not enough"),
])
def test_a_folder_it_cannot_use_gets_one_line_and_exit_2(tmp_path, make, message):
    folder = tmp_path / "midi"
    folder.mkdir()
    make(folder)
    result = improvd_train(folder, data_home=tmp_path / "share", timeout=60)
    assert result.returncode == EXIT_FOLDER == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "share" / "improvd" / "models").exists()


def test_a_missing_folder_gets_exit_2(tmp_path):
    result = improvd_train(tmp_path / "nowhere", data_home=tmp_path / "share", timeout=60)
    assert result.returncode == 2 and "not a folder" in result.stderr
