"""Listener checks: improvd's continuations of held-out performances beside what the
performer really played next.

    python -m training.listen --data data/performance --model exported/improvd.onnx
    python -m training.listen --candidates 1,16          # one row per number of candidates

For each test performance of --data (one per piece, at least 36 s long), the primer is its
notes from 20 s to 28 s (notes begun there, cut at 28 s: every key and the pedal released
at the cut) and the reference is what the performer played from 28 s to 36 s. improvd
continues the primer the way a user would ask it to:

    improvd --seed-file primer.mid --output-file answer.mid --length 8 --random-seed N

The answer and the reference are each compared with the primer:
- pitch-class correlation: Pearson correlation of the duration-weighted pitch-class profiles;
- register shift: |mean pitch - the primer's mean pitch|, in semitones;
- density ratio: notes per second over the primer's; "in range" within x0.5..x2;
- key agreement: music21's key analysis of both gives the same, the relative or the parallel key;
- velocity difference: |mean velocity - the primer's mean velocity|;
- one-pitch loop: a single pitch makes more than half of the notes.
Means over the primers are printed as one row per improvd setting, beside the reference's
row, and written as JSON with every primer's figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mido
import numpy as np

from improvd import vocab

# ---- defaults -------------------------------------------------------------------------
DATA = "data/performance"
MODEL = "exported/improvd.onnx"
REPORT = "bench/results/listen.json"
PRIMER_FROM_S = 20.0
PRIMER_S = 8.0
ANSWER_S = 8.0
PIECES = 0  # 0: every test piece long enough
DENSITY_RANGE = (0.5, 2.0)
LOOP_SHARE = 0.5  # one pitch making more than this share of the notes is a loop
# Goals relative to the reference: the model alone (one sampled answer), and chosen answers.
GOALS = {"model": {"correlation": 0.8, "register": 2.0, "density": 0.8},
         "chosen": {"correlation": 0.9, "register": 1.5, "density": 1.0}}
# ---------------------------------------------------------------------------------------


def window(notes: list[vocab.Note], start: float, length: float) -> list[vocab.Note]:
    """Notes begun in [start, start + length), cut at its end, times from ``start``."""
    end = start + length
    return [vocab.Note(n.pitch, n.velocity, n.start - start, min(n.end, end) - start)
            for n in notes if start <= n.start < end]


def pitch_class_profile(notes: list[vocab.Note]) -> np.ndarray:
    profile = np.zeros(12)
    for n in notes:
        profile[n.pitch % 12] += max(n.end - n.start, vocab.TICK_S)
    return profile


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def analyze_key(notes: list[vocab.Note]):
    """music21's key estimate (Krumhansl-Schmuckler) of a note list."""
    from music21 import note, stream

    part = stream.Stream()
    for n in notes:
        element = note.Note(n.pitch, quarterLength=max(0.125, round((n.end - n.start) * 8) / 8))
        part.insert(n.start * 2, element)  # 120 bpm: a second is two quarters
    return part.analyze("key")


def keys_agree(a, b) -> bool:
    """Same key, or its relative (C major / A minor) or parallel (C major / C minor)."""
    def same(x, y):
        return x.tonic.pitchClass == y.tonic.pitchClass and x.mode == y.mode

    return same(a, b) or same(a.relative, b) or same(a.parallel, b)


def compare(primer: list[vocab.Note], other: list[vocab.Note], primer_key) -> dict:
    """The figures of ``other`` (an answer or the reference) against its primer."""
    if not other:
        return {"notes": 0}
    density = (len(other) / ANSWER_S) / (len(primer) / PRIMER_S)
    counts = np.bincount([n.pitch for n in other], minlength=128)
    return {
        "notes": len(other),
        "correlation": correlation(pitch_class_profile(primer), pitch_class_profile(other)),
        "register": abs(np.mean([n.pitch for n in other]) - np.mean([n.pitch for n in primer])),
        "density_ratio": density,
        "density_in_range": DENSITY_RANGE[0] <= density <= DENSITY_RANGE[1],
        "key_agrees": keys_agree(primer_key, analyze_key(other)),
        "velocity": abs(np.mean([n.velocity for n in other]) - np.mean([n.velocity for n in primer])),
        "loop": counts.max() / len(other) > LOOP_SHARE,
    }


def summarize(rows: list[dict]) -> dict:
    """Means over primers; an answer with no notes counts as a failure, not a zero."""
    played = [r for r in rows if r["notes"] > 0]
    summary = {"primers": len(rows), "empty": len(rows) - len(played)}
    for key in ("correlation", "register", "density_ratio", "velocity"):
        summary[key] = float(np.mean([r[key] for r in played])) if played else float("nan")
    for key in ("density_in_range", "key_agrees", "loop"):
        summary[key] = float(np.mean([r[key] for r in rows if r["notes"]] + [0] * summary["empty"]))
    summary["notes"] = float(np.mean([r["notes"] for r in rows]))
    return summary


def primers(data: Path, limit: int) -> list[tuple[str, Path]]:
    """(piece, file) of one test performance per piece, long enough for primer and reference."""
    files = json.loads((data / "files.json").read_text())["test"]
    chosen, seen = [], set()
    for entry in files:
        path = Path(entry["path"])
        if entry["piece"] in seen or path.suffix.lower() not in (".mid", ".midi"):
            continue
        if mido.MidiFile(path).length < PRIMER_FROM_S + PRIMER_S + ANSWER_S:
            continue
        seen.add(entry["piece"])
        chosen.append((entry["piece"], path))
    if limit and len(chosen) > limit:  # spread over the sorted list: both sources, many composers
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, limit).round().astype(int)]
    return chosen


def answer_notes(path: Path) -> list[vocab.Note]:
    """improvd's track of an --output-file, times from the start of the answer."""
    midi = mido.MidiFile(path)
    names = [next((m.name for m in t if m.type == "track_name"), "") for t in midi.tracks]
    notes = vocab.midi_to_notes(midi, track=names.index("improvd"))
    if not notes:
        return []
    start = notes[0].start
    return [vocab.Note(n.pitch, n.velocity, n.start - start, n.end - start) for n in notes]


def run_improvd(primer: Path, answer: Path, model: Path, seed: int, extra: list[str],
                plot: Path | None = None) -> str:
    """One continuation through the command line; '' on success, else its one-line error."""
    command = [sys.executable, "-m", "improvd.cli", "--model", str(model), "--seed-file", str(primer),
               "--output-file", str(answer), "--length", str(ANSWER_S), "--random-seed", str(seed), *extra]
    if plot is not None:
        command += ["--plot", str(plot)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
    return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA, help="prepared data with files.json (training.prepare)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--pieces", type=int, default=PIECES, help="at most this many primers (0: all)")
    parser.add_argument("--candidates", default="",
                        help="comma-separated numbers of candidates, one row each ('' : improvd's default)")
    parser.add_argument("--extra", default="", help="more improvd arguments for every row, space-separated")
    parser.add_argument("--random-seed", type=int, default=1, help="improvd's random seed, first primer (then +1 each)")
    parser.add_argument("--report", default=REPORT)
    parser.add_argument("--plots", type=int, default=0,
                        help="piano rolls (primer + answer) of the first N primers, beside the report")
    args = parser.parse_args(argv)

    data, model = Path(args.data), Path(args.model)
    settings = [[]] if not args.candidates else [["--candidates", k] for k in args.candidates.split(",")]
    extra = args.extra.split()
    started = time.monotonic()
    results: dict[str, list[dict]] = {"reference": []}
    errors: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for number, (piece, path) in enumerate(primers(data, args.pieces)):
            notes = vocab.midi_to_notes(mido.MidiFile(path))
            primer = window(notes, PRIMER_FROM_S, PRIMER_S)
            reference = window(notes, PRIMER_FROM_S + PRIMER_S, ANSWER_S)
            if len(primer) < 4:
                continue
            primer_path = Path(tmp) / "primer.mid"
            vocab.notes_to_midi(primer).save(primer_path)
            primer_key = analyze_key(primer)
            results["reference"].append({"piece": piece, **compare(primer, reference, primer_key)})
            for setting in settings:
                name = "improvd " + (" ".join(setting) or "(default)")
                answer_path = Path(tmp) / "answer.mid"
                plot = None
                if number < args.plots:
                    tag = "-".join(setting).replace("--", "") or "default"
                    plot = Path(args.report).with_name(f"listen-{number}-{tag}.png")
                    plot.parent.mkdir(parents=True, exist_ok=True)
                error = run_improvd(primer_path, answer_path, model, args.random_seed + number, setting + extra, plot)
                answer = [] if error else answer_notes(answer_path)
                if error:
                    errors.setdefault(name, []).append(f"{piece}: {error}")
                results.setdefault(name, []).append({"piece": piece, **compare(primer, answer, primer_key)})
            print(f"listen: {number + 1} {piece}", file=sys.stderr, flush=True)

    summaries = {name: summarize(rows) for name, rows in results.items()}
    reference = summaries["reference"]
    print(f"listen: {reference['primers']} primers of {PRIMER_S:.0f} s from {data} (test split), "
          f"answers of {ANSWER_S:.0f} s, model {model}")
    header = (f"{'':<28}{'pc corr':>8}{'register':>9}{'density':>8}{'in x0.5-2':>10}{'key':>6}"
              f"{'|dvel|':>7}{'loops':>6}{'notes':>7}{'empty':>6}")
    print(header)
    for name, s in sorted(summaries.items(), key=lambda item: item[0] == "reference"):
        print(f"{name:<28}{s['correlation']:>8.2f}{s['register']:>9.2f}{s['density_ratio']:>8.2f}"
              f"{s['density_in_range']:>10.0%}{s['key_agrees']:>6.0%}{s['velocity']:>7.1f}{s['loop']:>6.0%}"
              f"{s['notes']:>7.1f}{s['empty']:>6}")
    goals = {}
    for name, s in summaries.items():
        if name == "reference":
            continue
        goals[name] = {
            level: {"correlation": s["correlation"] >= g["correlation"] * reference["correlation"],
                    "register": s["register"] <= g["register"] * reference["register"],
                    "density": s["density_in_range"] >= g["density"] * reference["density_in_range"]}
            for level, g in GOALS.items()
        }
        for level, met in goals[name].items():
            print(f"  {name} vs goals for the {level}: " + ", ".join(
                f"{k} {'met' if v else 'MISSED'}" for k, v in met.items()))
    for name, lines in errors.items():
        print(f"  {name}: {len(lines)} runs failed, e.g. {lines[0]}")
    report = Path(args.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"model": str(model), "data": str(data), "primer_s": PRIMER_S,
                                  "answer_s": ANSWER_S, "primer_from_s": PRIMER_FROM_S, "goals": GOALS,
                                  "summary": summaries, "goals_met": goals, "errors": errors,
                                  "primers": results, "seconds": round(time.monotonic() - started, 1)},
                                 indent=1, default=float))
    print(f"listen: wrote {report}")


if __name__ == "__main__":
    main()
