"""Listener checks: improvd's continuations of held-out performances beside what the
performer really played next, aspect by aspect, as a listener would compare them.

    python -m improvd_train.listen --data data/performance --per-kind 20
    python -m improvd_train.listen --row "memory off=--memory-strength 0" --row "memory on="
    python -m improvd_train.listen --split validation ...     # for tuning; report on test

For performances of the chosen split (one per piece, at least 36 s long; classical = ASAP,
pop = POP909, up to --per-kind of each, spread over the split), the primer is the notes from
20 s to 28 s (begun there, cut at 28 s: every key and the pedal released at the cut) and the
reference is what the performer played from 28 s to 36 s. improvd continues the primer the
way a user would ask it to:

    improvd --seed-file primer.mid --output-file answer.mid --length 8 --random-seed N

Each continuation (improvd's and the performer's) is compared with its primer; the distances:
- density: |log2 of the notes-per-second ratio|;
- note length: |log2 of the median-duration ratio|;
- rhythm: 1 - overlap of the inter-onset-interval histograms (12 log bins, 10 ms - 2 s);
- texture: |difference in the share of onsets struck together (< 30 ms after the previous)|;
- dynamics: |mean velocity difference|;
- key: 1 - correlation of the duration-weighted pitch-class profiles;
- melody: 1 - overlap of the |pitch step| histograms (0..11 semitones, 12 and more);
- register: |mean pitch difference|, in semitones.
The ratio of an aspect is improvd's mean distance over the performer's (1.0: as close to the
primer as the performer's own next bars). Beside them: the share of notes shorter than 60 ms,
and the echo share: of the continuation's 4-note shapes (3 pitch steps and 3 inter-onset
intervals in 50 ms classes), the share found verbatim in the primer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import mido
import numpy as np

from improvd import vocab
from improvd.candidates import ioi_histogram as onset_ioi_histogram
from improvd.candidates import together_share as onset_together_share

# ---- defaults -------------------------------------------------------------------------
DATA = "data/performance"
MODEL = "exported/improvd.onnx"
REPORT = "bench/results/listen.json"
SPLIT = "test"
PRIMER_FROM_S = 20.0
PRIMER_S = 8.0
ANSWER_S = 8.0
PER_KIND = 20  # primers of each kind (0: all)
KINDS = {"asap": "classical", "pop909": "pop"}  # source folder -> kind
SHORT_S = 0.06  # notes shorter than this are too short
STEP_BINS = 13  # |pitch step| 0..11 semitones, 12 and more
ECHO_CLASS_S = 0.05
ASPECTS = ("density", "note length", "rhythm", "texture", "dynamics", "key", "melody", "register")
# Targets, relative to the performer (the reference): every aspect ratio, their mean, short notes
# (x the performer's share), pitch-class correlation (x), register (x), echo share (+).
GOALS = {"aspect_ratio": 1.5, "mean_ratio": 1.2, "short_notes": 1.5, "correlation": 0.9, "register": 1.5,
         "echo": 0.25}
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


def onsets_of(notes: list[vocab.Note]) -> np.ndarray:
    return np.sort([n.start for n in notes])


def ioi_histogram(notes: list[vocab.Note]) -> np.ndarray:
    """Inter-onset intervals in 12 log bins, 10 ms - 2 s: the candidates' own measure."""
    return onset_ioi_histogram(onsets_of(notes))


def step_histogram(notes: list[vocab.Note]) -> np.ndarray:
    ordered = sorted(notes, key=lambda n: (n.start, n.pitch))
    steps = np.minimum(np.abs(np.diff([n.pitch for n in ordered])), STEP_BINS - 1)
    counts = np.bincount(steps.astype(int), minlength=STEP_BINS).astype(float)
    return counts / max(counts.sum(), 1)


def together_share(notes: list[vocab.Note]) -> float:
    """The share of onsets struck within 30 ms of the one before."""
    return onset_together_share(onsets_of(notes))


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum())


def shapes(notes: list[vocab.Note]) -> list[tuple]:
    """Every run of 4 notes as (3 pitch steps, 3 inter-onset intervals in 50 ms classes)."""
    ordered = sorted(notes, key=lambda n: (n.start, n.pitch))
    pitches = np.array([n.pitch for n in ordered])
    classes = np.round(np.diff([n.start for n in ordered]) / ECHO_CLASS_S).astype(int)
    steps = np.diff(pitches)
    return [(*steps[i:i + 3], *classes[i:i + 3]) for i in range(len(ordered) - 3)]


def echo_share(primer: list[vocab.Note], other: list[vocab.Note]) -> float:
    """The share of ``other``'s 4-note shapes that stand verbatim in the primer."""
    theirs = shapes(other)
    if not theirs:
        return 0.0
    known = set(shapes(primer))
    return float(np.mean([shape in known for shape in theirs]))


def distances(primer: list[vocab.Note], other: list[vocab.Note]) -> dict:
    """How far ``other`` (an answer or the reference) is from its primer, aspect by aspect,
    and its share of short notes and echoes."""
    if len(other) < 2:
        return {"notes": len(other)}
    durations = [n.end - n.start for n in other]
    primer_durations = [n.end - n.start for n in primer]
    pc = correlation(pitch_class_profile(primer), pitch_class_profile(other))
    return {
        "notes": len(other),
        "density": abs(np.log2((len(other) / ANSWER_S) / (len(primer) / PRIMER_S))),
        "note length": abs(np.log2(max(np.median(durations), vocab.TICK_S)
                                   / max(np.median(primer_durations), vocab.TICK_S))),
        "rhythm": 1 - overlap(ioi_histogram(primer), ioi_histogram(other)),
        "texture": abs(together_share(primer) - together_share(other)),
        "dynamics": abs(np.mean([n.velocity for n in other]) - np.mean([n.velocity for n in primer])),
        "key": 1 - pc,
        "melody": 1 - overlap(step_histogram(primer), step_histogram(other)),
        "register": abs(np.mean([n.pitch for n in other]) - np.mean([n.pitch for n in primer])),
        "correlation": pc,
        "short": float(np.mean(np.array(durations) < SHORT_S)),
        "echo": echo_share(primer, other),
    }


def summarize(rows: list[dict]) -> dict:
    """Means over primers; an answer with (almost) no notes is counted apart, as a failure."""
    played = [r for r in rows if r["notes"] >= 2]
    summary = {"primers": len(rows), "empty": len(rows) - len(played),
               "notes": float(np.mean([r["notes"] for r in rows])) if rows else float("nan")}
    for key in (*ASPECTS, "correlation", "short", "echo"):
        summary[key] = float(np.mean([r[key] for r in played])) if played else float("nan")
    return summary


def judge(answer: dict, reference: dict) -> dict:
    """Ratios to the performer and whether each goal is met."""
    ratios = {a: answer[a] / reference[a] if reference[a] > 0 else float("inf") for a in ASPECTS}
    mean_ratio = float(np.mean(list(ratios.values())))
    return {
        "ratios": ratios,
        "mean_ratio": mean_ratio,
        "met": {
            "every aspect ratio": all(r <= GOALS["aspect_ratio"] for r in ratios.values()),
            "mean ratio": mean_ratio <= GOALS["mean_ratio"],
            "short notes": answer["short"] <= GOALS["short_notes"] * reference["short"] + 1e-9,
            "pitch-class correlation": answer["correlation"] >= GOALS["correlation"] * reference["correlation"],
            "register": ratios["register"] <= GOALS["register"],
            "not an echo": answer["echo"] <= reference["echo"] + GOALS["echo"],
        },
    }


def located(path: Path, data: Path) -> Path:
    """A file named in files.json: as written, or relative to the checkout that prepared
    ``data`` (prepare runs from the repository root: data/<name> is two levels down)."""
    if path.is_absolute() or path.exists():
        return path
    return data.resolve().parent.parent / path


def primers(data: Path, split: str, per_kind: int) -> list[tuple[str, str, Path]]:
    """(kind, piece, file) of one performance per piece of ``split``, long enough for
    primer and reference, at most ``per_kind`` of each kind spread over the split."""
    files = json.loads((data / "files.json").read_text())[split]
    chosen: dict[str, list[tuple[str, str, Path]]] = {}
    seen = set()
    for entry in files:
        path = located(Path(entry["path"]), data)
        source = entry["piece"].split("/")[0]
        kind = KINDS.get(source, source)
        if entry["piece"] in seen or path.suffix.lower() not in (".mid", ".midi"):
            continue
        if mido.MidiFile(path).length < PRIMER_FROM_S + PRIMER_S + ANSWER_S:
            continue
        seen.add(entry["piece"])
        chosen.setdefault(kind, []).append((kind, entry["piece"], path))
    result = []
    for rows in chosen.values():
        if per_kind and len(rows) > per_kind:  # spread over the sorted list: many composers
            rows = [rows[i] for i in np.linspace(0, len(rows) - 1, per_kind).round().astype(int)]
        result += rows
    return result


def answer_notes(path: Path) -> list[vocab.Note]:
    """improvd's track of an --output-file, times from the start of the answer."""
    midi = mido.MidiFile(path)
    names = [next((m.name for m in t if m.type == "track_name"), "") for t in midi.tracks]
    notes = vocab.midi_to_notes(midi, track=names.index("improvd"))
    if not notes:
        return []
    start = notes[0].start
    return [vocab.Note(n.pitch, n.velocity, n.start - start, n.end - start) for n in notes]


def run_improvd(primer: Path, answer: Path, model: Path, seed: int, extra: list[str]) -> str:
    """One continuation through improvd's command line (in this process: the same code path,
    without an interpreter start each time); '' on success, else its one-line error."""
    from improvd import cli

    command = ["--model", str(model), "--seed-file", str(primer), "--output-file", str(answer),
               "--length", str(ANSWER_S), "--random-seed", str(seed), *extra]
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):
        code = cli.main(command)
    if code != 0:
        return (errors.getvalue().strip().splitlines() or [f"exit {code}"])[-1]
    return ""


def plot(path: Path, piece: str, primer: list[vocab.Note], continuations: dict[str, list[vocab.Note]]) -> None:
    """One piano roll per continuation (the performer's first), each after the same primer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = primer + [n for notes in continuations.values() for n in notes]
    low, high = min(n.pitch for n in everything) - 2, max(n.pitch for n in everything) + 2
    fig, axes = plt.subplots(len(continuations), 1, figsize=(10, 2.2 * len(continuations)), sharex=True)
    colormap = plt.get_cmap("viridis")
    for ax, (name, notes) in zip(np.atleast_1d(axes), continuations.items(), strict=True):
        for n in primer:
            ax.add_patch(plt.Rectangle((n.start, n.pitch - 0.4), n.end - n.start, 0.8, color=(0.6, 0.6, 0.6)))
        for n in notes:
            ax.add_patch(plt.Rectangle((PRIMER_S + n.start, n.pitch - 0.4), n.end - n.start, 0.8,
                                       color=colormap(n.velocity / 127)))
        ax.axvline(PRIMER_S, color="red", lw=0.8, ls="--")
        ax.set_xlim(0, PRIMER_S + ANSWER_S)
        ax.set_ylim(low, high)
        ax.set_ylabel("pitch")
        ax.set_title(f"{name}: {len(notes)} notes", fontsize=9, loc="left")
    np.atleast_1d(axes)[-1].set_xlabel("seconds (primer grey; continuation coloured by velocity)")
    fig.suptitle(piece, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def settings_of(args: argparse.Namespace) -> dict[str, list[str]]:
    """Row name -> improvd arguments, from --row NAME=ARGS, --candidates, or the default."""
    settings = {}
    for row in args.row:
        name, _, arguments = row.partition("=")
        settings[name.strip()] = arguments.split()
    for k in filter(None, args.candidates.split(",")):
        settings[f"improvd --candidates {k}"] = ["--candidates", k]
    return settings or {"improvd (default)": []}


def print_table(kind: str, summaries: dict[str, dict], verdicts: dict[str, dict]) -> None:
    reference = summaries["reference"]
    names = [n for n in summaries if n != "reference"]
    print(f"\n{kind}: {reference['primers']} primers   distance to the primer (ratio to the performer's)")
    print(f"  {'aspect':<24}{'performer':>10}" + "".join(f"{n[:22]:>24}" for n in names))
    for aspect in ASPECTS:
        print(f"  {aspect:<24}{reference[aspect]:>10.3f}" + "".join(
            f"{summaries[n][aspect]:>14.3f} ({verdicts[n]['ratios'][aspect]:>4.1f}x)" for n in names))
    print(f"  {'mean ratio':<24}{'':>10}" + "".join(f"{verdicts[n]['mean_ratio']:>23.2f}x" for n in names))
    for key, label, scale in (("short", "notes < 60 ms", 100), ("echo", "echo share", 100),
                              ("correlation", "pitch-class corr", 1), ("notes", "notes", 1)):
        unit = " %" if scale == 100 else "  "
        print(f"  {label:<24}{reference[key] * scale:>8.2f}{unit}" + "".join(
            f"{summaries[n][key] * scale:>22.2f}{unit}" for n in names))
    print(f"  {'empty answers':<24}{reference['empty']:>10}" + "".join(f"{summaries[n]['empty']:>24}" for n in names))
    for name in names:
        print(f"  {name}: " + ", ".join(f"{goal} {'met' if met else 'MISSED'}"
                                        for goal, met in verdicts[name]["met"].items()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA, help="prepared data with files.json (improvd_train.prepare)")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--split", default=SPLIT, choices=("test", "validation", "train"),
                        help="test to report; validation to tune on")
    parser.add_argument("--per-kind", type=int, default=PER_KIND,
                        help="at most this many primers of each kind (0: all)")
    parser.add_argument("--row", action="append", default=[],
                        help="NAME=IMPROVD ARGS: a row of answers (repeatable), e.g. 'memory off=--memory-strength 0'")
    parser.add_argument("--candidates", default="",
                        help="comma-separated numbers of candidates, one row each")
    parser.add_argument("--extra", default="", help="more improvd arguments for every row, space-separated")
    parser.add_argument("--random-seed", type=int, default=1, help="improvd's random seed, first primer (then +1 each)")
    parser.add_argument("--report", default=REPORT)
    parser.add_argument("--plots", type=int, default=0,
                        help="piano rolls (primer, the performer's and each row's continuation) of the "
                             "first N primers of each kind, beside the report")
    args = parser.parse_args(argv)

    data, model = Path(args.data), Path(args.model)
    settings, extra = settings_of(args), args.extra.split()
    started = time.monotonic()
    results: dict[str, dict[str, list[dict]]] = {}  # kind -> row -> per-primer figures
    errors: dict[str, list[str]] = {}
    plotted: dict[str, int] = {}
    report = Path(args.report)
    with tempfile.TemporaryDirectory() as tmp:
        for number, (kind, piece, path) in enumerate(primers(data, args.split, args.per_kind)):
            notes = vocab.midi_to_notes(mido.MidiFile(path))
            primer = window(notes, PRIMER_FROM_S, PRIMER_S)
            reference = window(notes, PRIMER_FROM_S + PRIMER_S, ANSWER_S)
            if len(primer) < 4:
                continue
            primer_path = Path(tmp) / "primer.mid"
            vocab.notes_to_midi(primer).save(primer_path)
            rows = results.setdefault(kind, {"reference": []})
            rows["reference"].append({"piece": piece, **distances(primer, reference)})
            continuations = {"performer": reference}
            for name, arguments in settings.items():
                answer_path = Path(tmp) / "answer.mid"
                error = run_improvd(primer_path, answer_path, model, args.random_seed + number, arguments + extra)
                answer = [] if error else answer_notes(answer_path)
                if error:
                    errors.setdefault(name, []).append(f"{piece}: {error}")
                rows.setdefault(name, []).append({"piece": piece, **distances(primer, answer)})
                continuations[name] = answer
            if plotted.get(kind, 0) < args.plots:
                report.parent.mkdir(parents=True, exist_ok=True)
                plot(report.with_name(f"listen-{kind}-{plotted.get(kind, 0)}.png"), piece, primer, continuations)
                plotted[kind] = plotted.get(kind, 0) + 1
            print(f"listen: {number + 1} {piece}", file=sys.stderr, flush=True)

    summaries = {kind: {name: summarize(r) for name, r in rows.items()} for kind, rows in results.items()}
    verdicts = {kind: {name: judge(s, by_row["reference"]) for name, s in by_row.items() if name != "reference"}
                for kind, by_row in summaries.items()}
    print(f"listen: primers of {PRIMER_S:.0f} s from {PRIMER_FROM_S:.0f} s into {args.split} performances of "
          f"{data}, continuations of {ANSWER_S:.0f} s, model {model}")
    for kind in summaries:
        print_table(kind, summaries[kind], verdicts[kind])
    for name, lines in errors.items():
        print(f"  {name}: {len(lines)} runs failed, e.g. {lines[0]}")
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps({"model": str(model), "data": str(data), "split": args.split,
                                  "primer_s": PRIMER_S, "answer_s": ANSWER_S, "primer_from_s": PRIMER_FROM_S,
                                  "rows": settings, "extra": extra, "goals": GOALS, "summary": summaries,
                                  "verdicts": verdicts, "errors": errors, "primers": results,
                                  "seconds": round(time.monotonic() - started, 1)}, indent=1, default=float))
    print(f"listen: wrote {report}")


if __name__ == "__main__":
    main()
