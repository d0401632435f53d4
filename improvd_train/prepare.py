"""Corpus -> token arrays, split train/validation/test by piece.

    python -m improvd_train.prepare --corpus essenFolksong,bach --out data/corpus
    python -m improvd_train.prepare --folder ~/midi --out data/mine
    python -m improvd_train.prepare --corpus '' --performances ../shared/data/asap \
        --folder ../shared/data/pop909 --out data/performance

Sources are collections of the corpus that ships inside music21 (no download) and folders
of .mid/.midi (read with mido) and .abc/.xml/.mxl/.musicxml/.krn (read with music21). A file
that cannot be read is named in the manifest's `skipped` list and the run goes on.

The split is by piece, never by performance, through a stable hash of the piece id:
- `--folder`: every file is its own piece (`<folder name>/<file name>`); all tracks of a MIDI
  file are played as one stream (POP909's melody, bridge and piano tracks together).
- `--performances`: a folder laid out as ASAP is, one subfolder per piece holding several
  performers' files; the piece id is that subfolder's path, with ASAP's variant suffixes
  (`_no_repeat`, `_repeat`, `_no_trio`, ...) removed, so every performance of a piece lands
  in the same split.
- `--corpus`: music21 scores, made to look played (see `humanize`): a tempo drawn per piece,
  onsets moved by a few milliseconds, phrase-level dynamics with per-note variation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import re
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
TEMPO_RANGE = (60.0, 180.0)  # bpm, drawn per score (log-uniform): scores are played at many tempi
ONSET_JITTER_S = 0.012  # standard deviation of a humanised onset (clipped at 3 sigma)
PHRASE_BEATS = 8.0  # beats over which a score's dynamics swell and fade
DYNAMICS_RANGE = (45, 100)  # mean phrase velocities are drawn from here
NOTE_VELOCITY_SD = 7.0  # per-note variation around the phrase's dynamics
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


VARIANT_SUFFIX = re.compile(r"_(no_(\w+_)?repeat|no_trio|repeat)$")


def piece_of_performance(root: Path, path: Path) -> str:
    """The piece a performance in an ASAP-like folder plays: its subfolder, variants folded."""
    parts = list(path.relative_to(root).parent.parts) or [path.stem]
    parts[-1] = VARIANT_SUFFIX.sub("", parts[-1])
    return f"{root.name}/" + "/".join(parts)


DRUMS_ONLY = "only drums (channel 10), which improvd ignores"
MUSIC21_LICENCE = "public-domain scores shipped with music21 (BSD-3-Clause)"


def licence_of(folder: Path) -> str:
    """The first line of a folder's LICENSE file (the model card names what the data allows)."""
    for candidate in sorted(folder.glob("LICEN[CS]E*")):
        for line in candidate.read_text(errors="replace").splitlines():
            if line.strip():
                return line.strip().lstrip("# ").strip()
    return "unknown: no LICENSE file in the folder"


def score_events(score) -> list[tuple[float, float, int]]:
    """(start, length, pitch) in quarter notes for every sounding note of a music21 score:
    ties joined, chords split, grace notes (no length) dropped."""
    events = []
    for element in score.stripTies().flatten().notes:
        start, length = float(element.offset), float(element.quarterLength)
        if length <= 0:
            continue
        events += [(start, length, p.midi) for p in element.pitches if 0 <= p.midi <= 127]
    return events


def humanize(events: list[tuple[float, float, int]], rng: np.random.Generator) -> list[vocab.Note]:
    """Quarter-note events as a pianist might play them: a tempo drawn for the piece, onsets
    off the grid by a few milliseconds, and velocities that follow phrase-level dynamics
    (a swell and fade every PHRASE_BEATS, around a level drawn per phrase) with per-note
    variation and a little weight on the beat."""
    bpm = float(np.exp(rng.uniform(*np.log(TEMPO_RANGE))))
    seconds_per_quarter = 60.0 / bpm
    phrases = int(max((s for s, _, _ in events), default=0) // PHRASE_BEATS) + 1
    levels = rng.uniform(*DYNAMICS_RANGE, size=phrases)
    notes = []
    for start, length, pitch in events:
        phrase, within = divmod(start, PHRASE_BEATS)
        swell = 12.0 * np.sin(np.pi * within / PHRASE_BEATS)
        accent = 6.0 if start % 1.0 == 0 else 0.0
        velocity = levels[int(phrase)] + swell + accent + rng.normal(0, NOTE_VELOCITY_SD)
        jitter = float(np.clip(rng.normal(0, ONSET_JITTER_S), -3 * ONSET_JITTER_S, 3 * ONSET_JITTER_S))
        onset = max(0.0, start * seconds_per_quarter + jitter)
        end = max(onset + vocab.TICK_S, (start + length) * seconds_per_quarter + jitter * 0.5)
        notes.append(vocab.Note(pitch, int(np.clip(round(velocity), 1, 127)), onset, end))
    notes.sort(key=lambda n: (n.start, n.pitch))
    return notes


def piece_rng(piece_id: str) -> np.random.Generator:
    """A generator seeded by the piece: the same rendering on every machine and run."""
    return np.random.default_rng(int(hashlib.sha1(piece_id.encode()).hexdigest()[:16], 16))


def read_source(item: tuple[str, str]) -> tuple[str, list[tuple[str, np.ndarray]], list[str]]:
    """(piece id, path) -> (path, [(piece id, tokens)], [skip reasons]); never raises."""
    label, path = item
    pieces: list[tuple[str, np.ndarray]] = []
    skipped: list[str] = []
    try:
        suffix = Path(path).suffix.lower()
        if suffix in MIDI_SUFFIXES:
            midi = mido.MidiFile(path)
            tokens = vocab.midi_to_tokens(midi)
            if tokens:
                pieces.append((label, np.asarray(tokens, np.int16)))
            elif vocab.midi_to_tokens(midi, skip_drums=False):
                skipped.append(f"{path}: {DRUMS_ONLY}")
            else:
                skipped.append(f"{path}: no notes")
        else:
            from music21 import converter, stream

            parsed = converter.parse(path)
            scores = list(parsed.scores) if isinstance(parsed, stream.Opus) else [parsed]
            for number, score in enumerate(scores):
                piece_id = f"{label}/{Path(path).name}#{number}"
                try:
                    events = score_events(score)
                except Exception as err:  # noqa: BLE001 - one broken tune must not lose its neighbours
                    skipped.append(f"{path}#{number}: {type(err).__name__}: {err}")
                    continue
                if len(events) >= MIN_NOTES:
                    tokens = vocab.notes_to_tokens(humanize(events, piece_rng(piece_id)))
                    pieces.append((piece_id, np.asarray(tokens, np.int16)))
    except Exception as err:  # noqa: BLE001 - music21 raises many types; one file must not stop the corpus
        skipped.append(f"{path}: {type(err).__name__}: {err}")
    return path, pieces, skipped


def list_sources(collections: list[str], folders: list[str], limit: int | None,
                 performances: list[str] = ()) -> list[tuple[str, str]]:
    """(piece id, path) for every file; a score file's pieces are numbered when it is read."""
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
    for folder, grouped in [(f, False) for f in folders] + [(f, True) for f in performances]:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise SystemExit(f"prepare: {root}: not a folder")
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES | SCORE_SUFFIXES)
        for path in paths:
            piece = piece_of_performance(root, path) if grouped else f"{root.name}/{path.name}"
            items.append((piece, str(path)))
    return items


def save_splits(out: Path, by_split: dict[str, list[tuple[str, str, np.ndarray]]]) -> tuple[dict, dict]:
    """<split>.npz (tokens + piece offsets) for each split of (piece id, path, tokens);
    returns the manifest's counts and files.json's lists."""
    counts, files = {}, {}
    for name, pieces in by_split.items():
        pieces.sort(key=lambda p: (p[0], p[1]))  # files finish in any order; the arrays must not
        lengths = [len(t) for _, _, t in pieces]
        tokens = np.concatenate([t for _, _, t in pieces]) if pieces else np.zeros(0, np.int16)
        np.savez(out / f"{name}.npz", tokens=tokens, offsets=np.cumsum([0] + lengths))
        counts[name] = {"pieces": len(pieces), "tokens": int(len(tokens)),
                        "distinct": len({piece_id for piece_id, _, _ in pieces})}
        files[name] = [{"piece": piece_id, "path": path} for piece_id, path, _ in pieces]
    return counts, files


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=CORPUS, help="music21 corpus collections, comma-separated ('' for none)")
    parser.add_argument("--folder", action="append", default=[],
                        help="a folder of MIDI/ABC/MusicXML/kern files (repeatable)")
    parser.add_argument("--performances", action="append", default=[],
                        help="a folder with one subfolder of performances per piece, as ASAP (repeatable)")
    parser.add_argument("--out", default=OUT, help="output folder")
    parser.add_argument("--workers", type=int, default=WORKERS)
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many files per corpus collection (quick runs); folders are read whole")
    args = parser.parse_args(argv)

    collections = [c for c in args.corpus.split(",") if c]
    items = list_sources(collections, args.folder, args.limit, args.performances)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    by_split: dict[str, list[tuple[str, str, np.ndarray]]] = {name: [] for name, _ in SPLITS}
    skipped: list[str] = []
    with multiprocessing.Pool(args.workers) as pool:
        results = pool.imap_unordered(read_source, items)
        for path, pieces, skips in tqdm(results, total=len(items), unit="file", desc="prepare"):
            skipped += skips
            for piece_id, tokens in pieces:
                by_split[split_of(piece_id)].append((piece_id, path, tokens))

    counts, files = save_splits(out, by_split)

    manifest = {
        "vocab": vocab.spec(),
        "sources": {"corpus": collections, "folders": args.folder, "performances": args.performances,
                    "limit": args.limit},
        "files": len(items),
        "splits": counts,
        "skipped": skipped,
        "licences": {Path(f).expanduser().name: licence_of(Path(f).expanduser())
                     for f in args.folder + args.performances}
                    | ({"music21 corpus": MUSIC21_LICENCE} if collections else {}),
        "split_rule": f"sha1(piece id) % 100 -> {dict(SPLITS)} percent",
        "humanize": {"tempo_bpm": TEMPO_RANGE, "onset_jitter_s": ONSET_JITTER_S, "phrase_beats": PHRASE_BEATS,
                     "dynamics": DYNAMICS_RANGE, "note_velocity_sd": NOTE_VELOCITY_SD},
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (out / "files.json").write_text(json.dumps(files, indent=1))
    total = sum(c["tokens"] for c in counts.values())
    print(f"prepare: {len(items)} files, {sum(c['pieces'] for c in counts.values())} pieces, "
          f"{total} tokens, {len(skipped)} skipped -> {out}")
    for name, c in counts.items():
        print(f"  {name:<10} {c['pieces']:>7} pieces ({c['distinct']} distinct) {c['tokens']:>10} tokens")
    for reason in skipped[:20]:
        print(f"  skipped: {reason}")


if __name__ == "__main__":
    main()
