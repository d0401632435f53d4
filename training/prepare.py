"""Corpus -> token arrays, split train/validation/test by piece.

    python -m training.prepare --corpus essenFolksong,bach --out data/corpus
    python -m training.prepare --folder ~/midi --out data/mine

Sources are collections of the corpus that ships inside music21 (no download) and folders
of .mid/.midi (read with mido) and .abc/.xml/.mxl/.musicxml/.krn (read with music21). A file
that cannot be read is named in the manifest's `skipped` list and the run goes on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import time
from pathlib import Path

import mido
import numpy as np
from tqdm import tqdm

from improvd import vocab

# ---- defaults -------------------------------------------------------------------------
CORPUS = "essenFolksong,oneills1850,ryansMammoth,bach"
OUT = "data/corpus"
WORKERS = 2
DEFAULT_BPM = 120.0  # for scores that carry no metronome mark
DEFAULT_VELOCITY = 80  # for scores that carry no dynamics
MIN_NOTES = 8  # shorter pieces teach nothing
SPLITS = (("train", 90), ("validation", 5), ("test", 5))  # percent, by a stable hash
MIDI_SUFFIXES = {".mid", ".midi"}
SCORE_SUFFIXES = {".abc", ".xml", ".mxl", ".musicxml", ".krn"}
# ---------------------------------------------------------------------------------------


def split_of(piece_id: str) -> str:
    """The split a piece belongs to, the same on every machine and every run."""
    bucket = int(hashlib.sha1(piece_id.encode()).hexdigest(), 16) % 100
    for name, percent in SPLITS:
        if bucket < percent:
            return name
        bucket -= percent
    raise AssertionError("split percentages must add up to 100")


def score_to_notes(score) -> list[vocab.Note]:
    """A music21 score as timed notes: ties joined, chords split, tempo from its first
    metronome mark (or DEFAULT_BPM)."""
    from music21 import tempo

    marks = list(score.recurse().getElementsByClass(tempo.MetronomeMark))
    seconds_per_quarter = marks[0].secondsPerQuarter() if marks else 60.0 / DEFAULT_BPM
    notes = []
    for element in score.stripTies().flatten().notes:
        start = float(element.offset) * seconds_per_quarter
        end = start + float(element.quarterLength) * seconds_per_quarter
        if end <= start:  # grace notes have no length
            continue
        velocity = element.volume.velocity or DEFAULT_VELOCITY
        for pitch in element.pitches:
            if 0 <= pitch.midi <= 127:
                notes.append(vocab.Note(pitch.midi, int(velocity), start, end))
    return notes


def read_source(item: tuple[str, str]) -> tuple[str, list[tuple[str, np.ndarray]], list[str]]:
    """(label, path) -> (path, [(piece id, tokens)], [skip reasons]); never raises."""
    label, path = item
    pieces: list[tuple[str, np.ndarray]] = []
    skipped: list[str] = []
    try:
        suffix = Path(path).suffix.lower()
        if suffix in MIDI_SUFFIXES:
            tokens = vocab.midi_to_tokens(mido.MidiFile(path))
            pieces.append((f"{label}/{Path(path).name}", np.asarray(tokens, np.int16)))
        else:
            from music21 import converter, stream

            parsed = converter.parse(path)
            scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
            for number, score in enumerate(scores):
                try:
                    notes = score_to_notes(score)
                except Exception as err:  # one broken tune must not lose its neighbours
                    skipped.append(f"{path}#{number}: {type(err).__name__}: {err}")
                    continue
                if len(notes) >= MIN_NOTES:
                    tokens = vocab.notes_to_tokens(notes)
                    pieces.append((f"{label}/{Path(path).name}#{number}", np.asarray(tokens, np.int16)))
    except Exception as err:
        skipped.append(f"{path}: {type(err).__name__}: {err}")
    return path, pieces, skipped


def list_sources(collections: list[str], folders: list[str], limit: int | None) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    if collections:
        from music21 import corpus

        all_paths = [Path(p) for p in corpus.getPaths()]
        for name in collections:
            paths = sorted(
                str(p) for p in all_paths
                if f"/corpus/{name}/" in str(p) and p.suffix.lower() in SCORE_SUFFIXES
            )
            if not paths:
                raise SystemExit(f"prepare: music21 corpus has no collection {name!r}")
            items += [(name, p) for p in paths[:limit]]
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise SystemExit(f"prepare: {root}: not a folder")
        paths = sorted(
            str(p) for p in root.rglob("*")
            if p.suffix.lower() in MIDI_SUFFIXES | SCORE_SUFFIXES
        )
        items += [(root.name, p) for p in paths[:limit]]
    return items


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=CORPUS, help="music21 corpus collections, comma-separated ('' for none)")
    parser.add_argument("--folder", action="append", default=[],
                        help="a folder of MIDI/ABC/MusicXML/kern files (repeatable)")
    parser.add_argument("--out", default=OUT, help="output folder")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--limit", type=int, default=None, help="at most this many files per source (for quick runs)")
    args = parser.parse_args(argv)

    collections = [c for c in args.corpus.split(",") if c]
    items = list_sources(collections, args.folder, args.limit)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    by_split: dict[str, list[tuple[str, np.ndarray]]] = {name: [] for name, _ in SPLITS}
    skipped: list[str] = []
    with multiprocessing.Pool(args.workers) as pool:
        results = pool.imap_unordered(read_source, items)
        for _path, pieces, skips in tqdm(results, total=len(items), unit="file", desc="prepare"):
            skipped += skips
            for piece_id, tokens in pieces:
                by_split[split_of(piece_id)].append((piece_id, tokens))

    counts = {}
    for name, pieces in by_split.items():
        pieces.sort(key=lambda p: p[0])  # files finish in any order; the arrays must not
        lengths = [len(t) for _, t in pieces]
        tokens = np.concatenate([t for _, t in pieces]) if pieces else np.zeros(0, np.int16)
        np.savez(out / f"{name}.npz", tokens=tokens, offsets=np.cumsum([0] + lengths))
        counts[name] = {"pieces": len(pieces), "tokens": int(len(tokens))}

    manifest = {
        "vocab": vocab.spec(),
        "sources": {"corpus": collections, "folders": args.folder, "limit": args.limit},
        "files": len(items),
        "splits": counts,
        "skipped": skipped,
        "default_bpm": DEFAULT_BPM,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    total = sum(c["tokens"] for c in counts.values())
    print(f"prepare: {len(items)} files, {sum(c['pieces'] for c in counts.values())} pieces, "
          f"{total} tokens, {len(skipped)} skipped -> {out}")
    for name, c in counts.items():
        print(f"  {name:<10} {c['pieces']:>7} pieces {c['tokens']:>10} tokens")
    for reason in skipped[:20]:
        print(f"  skipped: {reason}")


if __name__ == "__main__":
    main()
