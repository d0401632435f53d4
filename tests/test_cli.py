"""The `improvd` command end to end, as a user runs it: exit codes and one-line errors."""

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib

import mido
import pytest

from improvd import cli, vocab
from tests.engine_helpers import MODEL_PATH

EXAMPLE = MODEL_PATH.parent.parent / "examples" / "motif.mid"


def improvd(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "improvd.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=env)


def assert_one_line_error(result, code, *fragments):
    assert result.returncode == code, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("improvd:")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0]


def test_output_file_writes_motif_and_continuation(tmp_path):
    out, png = tmp_path / "out.mid", tmp_path / "out.png"
    result = improvd("--seed-file", EXAMPLE, "--output-file", out, "--plot", png, "--length", "4", "--random-seed", "3")
    assert result.returncode == 0, result.stderr
    assert f"{out}: motif 8 notes + continuation" in result.stdout
    midi = mido.MidiFile(out)
    motif, continuation = (vocab.midi_to_notes(midi, track=i) for i in (0, 1))
    assert [n.pitch for n in motif] == [62, 66, 69, 71, 69, 66, 64, 62]
    assert continuation, "no continuation"
    assert continuation[0].start == pytest.approx(motif[-1].end + 0.5, abs=0.02)
    assert continuation[-1].end <= motif[-1].end + 0.5 + 4.0 + 0.02
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"


def test_seed_track_selects_one_track(tmp_path):
    midi = mido.MidiFile(type=1)
    for pitch in (60, 72):
        midi.tracks.append(mido.MidiTrack([mido.Message("note_on", note=pitch, velocity=80, time=0),
                                           mido.Message("note_off", note=pitch, time=480)]))
    seed = tmp_path / "two.mid"
    midi.save(seed)
    out = tmp_path / "out.mid"
    assert improvd("--seed-file", seed, "--seed-track", 1, "--output-file", out, "--length", 1).returncode == 0
    assert [n.pitch for n in vocab.midi_to_notes(mido.MidiFile(out), track=0)] == [72]
    assert_one_line_error(improvd("--seed-file", seed, "--seed-track", 5, "--output-file", out), 2, "no track 5")


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def bad_seed_files(tmp_path):
    good = EXAMPLE.read_bytes()
    silent = mido.MidiFile()
    silent.tracks.append(mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500000)]))
    silent.save(tmp_path / "silent.mid")
    drums = mido.MidiFile()
    drums.tracks.append(mido.MidiTrack([mido.Message("note_on", channel=9, note=36, velocity=90),
                                        mido.Message("note_off", channel=9, note=36, time=240)]))
    drums.save(tmp_path / "drums.mid")
    patterns = mido.MidiFile(type=2)
    for pitch in (60, 67):
        patterns.tracks.append(mido.MidiTrack([mido.Message("note_on", note=pitch, velocity=80),
                                               mido.Message("note_off", note=pitch, time=480)]))
    patterns.save(tmp_path / "patterns.mid")
    return {
        "missing": (tmp_path / "nope.mid", "cannot read seed file"),
        "empty": (write(tmp_path, "empty.mid", b""), "empty file"),
        "not midi": (write(tmp_path, "text.mid", b"hello, this is not MIDI at all\n" * 4), "not a readable MIDI file"),
        "truncated": (write(tmp_path, "cut.mid", good[: len(good) // 2]), "not a readable MIDI file"),
        "no notes": (tmp_path / "silent.mid", "no notes to continue"),
        "huge": (write(tmp_path, "huge.mid", good + b"\0" * (9 * 2**20)), "too large for a seed"),
        "drums only": (tmp_path / "drums.mid", "its notes are all drums (channel 10), which improvd ignores"),
        "type 2": (tmp_path / "patterns.mid", "choose one with --seed-track N (0..1)"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "not midi", "truncated", "no notes", "huge", "drums only",
                                  "type 2"])
def test_bad_seed_file_is_one_line_and_exit_2(tmp_path, case):
    path, reason = bad_seed_files(tmp_path)[case]
    result = improvd("--seed-file", path, "--output-file", tmp_path / "out.mid")
    assert_one_line_error(result, 2, str(path), reason)
    assert not (tmp_path / "out.mid").exists()


def test_bad_config_exits_1_listing_every_problem(tmp_path):
    config = tmp_path / "bad.toml"
    config.write_text('[engine]\nsilence_ms = 5\n[sampler]\ntemprature = 2.0\n')
    result = improvd("--config", config, "--seed-file", EXAMPLE, "--output-file", tmp_path / "o.mid")
    assert result.returncode == 1
    assert "engine.silence_ms: must be between 50 and 10000, got 5" in result.stderr
    assert "sampler.temprature: unknown key (did you mean 'temperature'?)" in result.stderr
    assert "Traceback" not in result.stderr


def test_broken_model_exits_3(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"not onnx")
    result = improvd("--model", tmp_path / "m.onnx", "--seed-file", EXAMPLE, "--output-file", tmp_path / "o.mid")
    assert_one_line_error(result, 3, "m.json: model metadata not found")


def test_unusable_midi_api_exits_4_before_anything_plays(tmp_path):
    result = improvd("--api", "coremidi", "--in", "keyboard")
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr


def test_config_command_prints_the_effective_settings(tmp_path):
    result = improvd("config", "--temperature", "1.5", "--mode", "duet")
    assert result.returncode == 0, result.stderr
    settings = tomllib.loads(result.stdout)
    assert settings["sampler"]["temperature"] == 1.5 and settings["engine"]["mode"] == "duet"
    assert settings["model"]["path"] == str(MODEL_PATH)


def motif_file(path, pedal_up=True, last_released=True, tail_ticks=0, track_count=1):
    """C-E-G, half a second each (480 ticks at 120 bpm), pedal down from the start; the
    pedal lift and the G's release are optional, as a DAW region cut short leaves them."""
    events = [mido.Message("control_change", control=64, value=127, time=0)]
    for pitch in (60, 64, 67):
        events.append(mido.Message("note_on", note=pitch, velocity=80, time=0))
        if pitch != 67 or last_released:
            events.append(mido.Message("note_off", note=pitch, time=480))
    if pedal_up:
        events.append(mido.Message("control_change", control=64, value=0, time=0))
    events.append(mido.MetaMessage("end_of_track", time=tail_ticks))
    midi = mido.MidiFile(type=1, ticks_per_beat=480)
    for _ in range(track_count - 1):  # other tracks first: --seed-track picks the last one
        midi.tracks.append(mido.MidiTrack([mido.Message("note_on", note=40, velocity=60, time=0),
                                           mido.Message("note_off", note=40, time=240)]))
    midi.tracks.append(mido.MidiTrack(events))
    midi.save(path)
    return path


HELD_AT_END = {  # case -> (motif_file arguments, seconds at which the motif's last sound ends)
    "pedal never lifted": ({"pedal_up": False, "tail_ticks": 240}, 1.75),
    "last note never released": ({"last_released": False, "tail_ticks": 480}, 1.5),
    "both": ({"pedal_up": False, "last_released": False, "tail_ticks": 960}, 2.0),
    "ends with a long silence": ({"tail_ticks": 480 * 20}, 1.5),
}


@pytest.mark.parametrize("case", list(HELD_AT_END))
def test_motif_left_held_at_its_end_is_released_there_and_continued(tmp_path, case):
    arguments, motif_end = HELD_AT_END[case]
    seed, out = motif_file(tmp_path / "motif.mid", **arguments), tmp_path / "out.mid"
    result = improvd("--seed-file", seed, "--output-file", out, "--length", "2", "--random-seed", "5")
    assert result.returncode == 0, result.stderr
    midi = mido.MidiFile(out)
    motif, continuation = (vocab.midi_to_notes(midi, track=i) for i in (0, 1))
    assert [n.pitch for n in motif] == [60, 64, 67]
    # The motif track as written (a hanging pedal or key included); it was heard released at motif_end.
    assert [m for m in midi.tracks[0] if not m.is_meta] == [m for m in mido.MidiFile(seed).tracks[0] if not m.is_meta]
    assert continuation, "no continuation"
    assert continuation[0].start == pytest.approx(motif_end + 0.5, abs=0.011)  # silence_ms after the motif
    assert continuation[-1].end <= motif_end + 0.5 + 2.0 + 0.011


def test_seed_track_left_held_at_its_end_is_released_there_and_continued(tmp_path):
    seed = motif_file(tmp_path / "tracks.mid", pedal_up=False, last_released=False, tail_ticks=480, track_count=2)
    out = tmp_path / "out.mid"
    result = improvd("--seed-file", seed, "--seed-track", 1, "--output-file", out, "--length", "2")
    assert result.returncode == 0, result.stderr
    motif, continuation = (vocab.midi_to_notes(mido.MidiFile(out), track=i) for i in (0, 1))
    assert [n.pitch for n in motif] == [60, 64, 67]
    assert continuation and continuation[0].start == pytest.approx(1.5 + 0.5, abs=0.011)


def test_empty_continuation_says_why_and_exits_5(tmp_path):
    config = tmp_path / "channel5.toml"
    config.write_text("[ports]\ninput_channels = [5]\n")  # the motif plays on channel 1
    out = tmp_path / "out.mid"
    result = improvd("--config", config, "--seed-file", EXAMPLE, "--output-file", out)
    assert_one_line_error(result, 5, "empty continuation", "ports.input_channels = [5]")
    assert not out.exists()


def test_cuda_that_cannot_start_exits_3_saying_why(tmp_path):
    result = improvd("--device", "cuda", "--seed-file", EXAMPLE, "--output-file", tmp_path / "o.mid")
    if result.returncode == 0:
        pytest.skip("CUDA really starts here")
    assert_one_line_error(result, 3, "device 'cuda' requested but unavailable: ")
    assert not (tmp_path / "o.mid").exists()


def test_seed_file_answer_is_chosen_among_candidates_reproducibly_by_random_seed(tmp_path):
    def answer(k, name):
        out = tmp_path / name
        result = improvd("--seed-file", EXAMPLE, "--output-file", out, "--candidates", k, "--random-seed", "3",
                         "--weights", "register=0.5")
        assert result.returncode == 0, result.stderr
        return vocab.midi_to_notes(mido.MidiFile(out), track=1)

    chosen, again, sampled = answer(8, "a.mid"), answer(8, "b.mid"), answer(1, "c.mid")
    assert chosen and chosen == again
    assert chosen != sampled
    assert chosen[0].start == pytest.approx(sampled[0].start, abs=0.02)  # both on the silence deadline


def test_a_type_2_file_plays_the_track_chosen(tmp_path):
    patterns = mido.MidiFile(type=2)
    for pitch in (60, 67):
        patterns.tracks.append(mido.MidiTrack([mido.Message("note_on", note=pitch, velocity=80),
                                               mido.Message("note_off", note=pitch, time=480)]))
    patterns.save(tmp_path / "patterns.mid")
    out = tmp_path / "out.mid"
    result = improvd("--seed-file", tmp_path / "patterns.mid", "--seed-track", 1, "--output-file", out, "--length", 1)
    assert result.returncode == 0, result.stderr
    assert [n.pitch for n in vocab.midi_to_notes(mido.MidiFile(out), track=0)] == [67]


def long_seed(path, seconds):
    """One note a second, its pitch climbing a semitone a second from 30: the time says the pitch."""
    events = []
    for second in range(seconds):
        events += [mido.Message("note_on", note=30 + second % 70, velocity=80, time=0),
                   mido.Message("note_off", note=30 + second % 70, time=480)]  # 0.5 s at 120 bpm
        events.append(mido.Message("note_on", note=0, velocity=0, time=480))  # 0.5 s rest
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks.append(mido.MidiTrack(events))
    midi.save(path)
    return path


def test_a_long_seed_is_cut_to_its_last_120_s_saying_so_and_seed_from_chooses_where(tmp_path):
    seed, out = long_seed(tmp_path / "long.mid", 150), tmp_path / "out.mid"
    result = improvd("--seed-file", seed, "--output-file", out, "--length", 1)
    assert result.returncode == 0, result.stderr
    assert "priming with its last 120 s only" in result.stderr and "--seed-from S" in result.stderr
    motif = vocab.midi_to_notes(mido.MidiFile(out), track=0)
    assert motif[0].pitch == 30 + 30 % 70 and len(motif) == 120  # seconds 30..149

    result = improvd("--seed-file", seed, "--seed-from", 10, "--output-file", out, "--length", 1)
    assert result.returncode == 0, result.stderr
    midi = mido.MidiFile(out)
    motif, continuation = (vocab.midi_to_notes(midi, track=i) for i in (0, 1))
    assert motif[0].pitch == 40 and len(motif) == 120  # seconds 10..129
    assert continuation and continuation[0].start == pytest.approx(motif[-1].end + 0.5, abs=0.02)

    result = improvd("--seed-file", seed, "--seed-from", 400, "--output-file", out)
    assert_one_line_error(result, 2, "no notes from 400 s on")


USAGE = {  # arguments -> what the one line says
    "unknown choice": (["--mode", "dut"], "argument --mode: invalid choice: 'dut'"),
    "unknown flag": (["--sede-file=x.mid"], "unrecognized arguments: --sede-file=x.mid"),
    "zero length": (["--seed-file", "x.mid", "--output-file", "o.mid", "--length", "0"],
                    "--length: must be more than 0 and at most 600 seconds, got 0"),
    "plot without output": (["--seed-file", "x.mid", "--plot", "o.png"], "--plot needs --output-file"),
}


@pytest.mark.parametrize("case", list(USAGE))
def test_usage_errors_are_one_line_and_exit_64(case):
    arguments, message = USAGE[case]
    result = improvd(*arguments)
    assert_one_line_error(result, 64, message)
    assert "usage:" not in result.stderr


def test_help_and_readme_give_the_same_exit_codes():
    help_text = " ".join(improvd("--help").stdout.split())
    readme = " ".join((MODEL_PATH.parent.parent / "README.md").read_text().split())
    assert " ".join(cli.EXIT_CODES.split()) in help_text
    assert cli.EXIT_CODES in readme


def test_plot_with_an_unknown_extension_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out.mid"
    result = improvd("--seed-file", EXAMPLE, "--output-file", out, "--plot", tmp_path / "roll.xyz")
    assert_one_line_error(result, 64, f"--plot {tmp_path / 'roll.xyz'}: no image format '.xyz'", ".png", ".svg")
    assert not out.exists() and not (tmp_path / "roll.xyz").exists()


@pytest.mark.parametrize("name, magic", [("roll", b"\x89PNG"), ("roll.svg", b"<?xml"), ("roll.PDF", b"%PDF")])
def test_plot_writes_the_path_given_in_its_extension_format(tmp_path, name, magic):
    plot = tmp_path / name
    result = improvd("--seed-file", EXAMPLE, "--output-file", tmp_path / "out.mid", "--plot", plot, "--length", 1)
    assert result.returncode == 0, result.stderr
    assert f"improvd: {plot}: piano roll" in result.stdout
    assert plot.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("roll")] == [name]


def test_plot_without_matplotlib_names_the_small_extra(tmp_path):
    shadow = tmp_path / "no-matplotlib" / "matplotlib"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named matplotlib')\n")
    out = tmp_path / "out.mid"
    result = improvd("--seed-file", EXAMPLE, "--output-file", out, "--plot", tmp_path / "roll.png",
                     env={**os.environ, "PYTHONPATH": str(shadow.parent)})
    assert_one_line_error(result, 1, "--plot needs matplotlib: pip install 'improvd[plot]'")
    assert not out.exists()


def test_version_tells_every_training_stage_and_the_terms_of_the_weights():
    card = json.loads(MODEL_PATH.with_suffix(".json").read_text())
    result = improvd("--version")
    assert result.returncode == 0, result.stderr
    _, model, trained, terms, *lineage = result.stdout.splitlines()
    assert model.startswith(f"model {MODEL_PATH} ")
    stages = trained.removeprefix("trained on ").split(", then ")
    runs = card["lineage"]
    assert len(stages) == len(runs) >= 2 and len(lineage) == len(runs) + 1  # a heading, then a line per run
    for stage, run in zip(stages, runs, strict=True):  # every stage's data, the music21 pre-training first
        assert all(source in stage for source in run["data"]["sources"])
    assert "music21" in stages[0] and "asap" in stages[-1] and "pop909" in stages[-1]
    assert terms == f"terms: {card['terms']}"
    assert "NonCommercial-ShareAlike" in terms and "non-commercial use, share-alike" in terms


def cpu_only_onnxruntime():
    import onnxruntime

    return "CUDAExecutionProvider" not in onnxruntime.get_available_providers() and not any(
        d.metadata["Name"] == "onnxruntime-gpu" for d in importlib.metadata.distributions())


def test_a_cpu_only_install_does_not_advertise_the_gpu_extra_at_info(tmp_path):
    if not cpu_only_onnxruntime():
        pytest.skip("this onnxruntime has a CUDA provider (or onnxruntime-gpu is installed)")
    arguments = ("--seed-file", EXAMPLE, "--output-file", tmp_path / "out.mid", "--length", 1)
    quiet, verbose = improvd(*arguments), improvd(*arguments, "-v")
    assert quiet.returncode == verbose.returncode == 0, quiet.stderr
    assert "runs on the CPU, one thread (device=auto)" in quiet.stderr
    assert "improvd[gpu]" not in quiet.stderr
    assert "DEBUG improvd.model: device=auto: this onnxruntime build has no CUDA provider" in verbose.stderr


def test_under_journald_every_line_carries_its_syslog_priority(tmp_path):
    env = {**os.environ, "JOURNAL_STREAM": "8:12345"}
    good = improvd("--seed-file", EXAMPLE, "--output-file", tmp_path / "o.mid", "--length", 1, "-v", env=env)
    assert good.returncode == 0, good.stderr
    ours = [line for line in good.stderr.splitlines() if " improvd." in line]
    assert any(line.startswith("<6>INFO improvd.model: ") for line in ours), good.stderr
    assert any(line.startswith("<7>DEBUG improvd.") for line in ours), good.stderr
    assert all(line[:3] in ("<6>", "<7>") for line in ours), good.stderr
    config = tmp_path / "bad.toml"
    config.write_text("[engine]\nsilence_ms = 5\nmode = 'solo'\n")
    bad = improvd("--config", config, "config", env=env)
    assert bad.returncode == 1
    lines = bad.stderr.splitlines()
    assert lines[0] == f"<3>improvd: invalid configuration in {config}:" and len(lines) == 3
    assert all(line.startswith("<3>  engine.") for line in lines[1:]), lines
    usage = improvd("--mode", "dut", env=env)
    assert usage.returncode == 64 and usage.stderr.startswith("<3>improvd: argument --mode"), usage.stderr
    plain = improvd("--config", config, "config")
    assert not any(line.startswith("<") for line in plain.stderr.splitlines())
