"""improvd-train: fine-tune the shipped model on your own MIDI folder, in one command.

    improvd-train ~/midi/my-trio --minutes 20
    improvd --model my-trio                      # then play with it

Reads every MIDI file under FOLDER (reporting the ones it skips, and why), holds out about
one piece in HOLDOUT (at least one) to measure on, fine-tunes the starting model (the one
improvd ships, or --base) for --minutes with a progress bar, exports it (parity-checked,
fp32), and compares bits/event on the held-out pieces before and after: lower is better,
and the number says how much more of your music the model now expects. The model and its
card land in $XDG_DATA_HOME/improvd/models/NAME.onnx (~/.local/share/... by default); the
prepared data and the training run stay beside it, in ../runs/NAME.

The fine-tuned weights inherit the terms of the data the starting model saw (see its card).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import warnings
from pathlib import Path

EXIT_OK, EXIT_SETUP, EXIT_FOLDER, EXIT_TRAINING = 0, 1, 2, 3
EXIT_CODES = ("Exit codes: 0 ok, 1 training extra missing (pip install 'improvd[train]'), 2 bad folder (missing, "
              "empty, no MIDI, only drums, too few pieces), 3 training or export failed.")
MINUTES = 20.0
HOLDOUT = 8  # one piece in this many is held out (at least one)
STEPS_PER_EPOCH = 20
WARMUP = 20  # steps of learning-rate warm-up: a fresh Adam must not jolt the trained weights
LR = 5e-4  # gentler than training from scratch: the shipped model already knows music


class FolderError(Exception):
    """A folder improvd-train cannot learn from (exit 2)."""


def packaged_model() -> Path:
    from improvd.config import PACKAGED_MODEL

    return Path(PACKAGED_MODEL)


def read_folder(folder: Path, data: Path) -> tuple[dict, list[str]]:
    """Tokens of every readable file in ``folder``, split into train and held-out pieces,
    written to ``data`` as improvd_train.train reads them. Returns (manifest, skipped)."""
    from improvd import vocab
    from improvd_train import prepare

    if not folder.is_dir():
        raise FolderError(f"{folder}: not a folder")
    if not any(folder.iterdir()):
        raise FolderError(f"{folder}: the folder is empty")
    items = prepare.list_sources([], [str(folder)], None)
    if not any(Path(p).suffix.lower() in prepare.MIDI_SUFFIXES for _, p in items):
        raise FolderError(f"{folder}: no MIDI files (.mid, .midi) in it")
    pieces, skipped = [], []
    for item in items:
        path, found, skips = prepare.read_source(item)
        skipped += skips
        pieces += [(piece_id, path, tokens) for piece_id, tokens in found]
    if not pieces:
        if skipped and all(reason.endswith(prepare.DRUMS_ONLY) for reason in skipped):
            raise FolderError(f"{folder}: its MIDI files hold {prepare.DRUMS_ONLY}: nothing to learn from")
        raise FolderError(f"{folder}: no file with notes improvd can read ({len(skipped)} skipped: {skipped[0]})")
    if len(pieces) < 2:
        raise FolderError(f"{folder}: one piece is not enough: one to learn from and one held out to measure on")
    pieces.sort(key=lambda p: hashlib.sha1(p[0].encode()).hexdigest())  # the same held-out pieces every run
    held = max(1, len(pieces) // HOLDOUT)
    data.mkdir(parents=True, exist_ok=True)
    counts, files = prepare.save_splits(data, {"train": pieces[held:], "validation": pieces[:held],
                                               "test": list(pieces[:held])})
    manifest = {
        "vocab": vocab.spec(),
        "sources": {"corpus": [], "folders": [str(folder)], "performances": []},
        "files": len(items), "splits": counts, "skipped": skipped,
        "licences": {folder.name: prepare.licence_of(folder)},
        "split_rule": f"held out: the first {held} of {len(pieces)} pieces by sha1 of the piece id "
                      "(validation and test are the same held-out pieces)",
    }
    (data / "manifest.json").write_text(json.dumps(manifest, indent=2))
    (data / "files.json").write_text(json.dumps(files, indent=1))
    return manifest, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="improvd-train", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="your MIDI files (searched recursively)")
    parser.add_argument("--minutes", type=float, default=MINUTES, help="training time budget")
    parser.add_argument("--name", help="the model's name (default: the folder's name)")
    parser.add_argument("--base", type=Path, help="the model to start from (default: the one improvd ships)")
    parser.add_argument("--steps", type=int, default=0,
                        help="stop after this many training steps (quick trials; 0: the budget decides)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=LR)
    args = parser.parse_args(argv)

    try:
        from improvd_train import evaluate, export, train
    except ImportError as err:
        print(f"improvd-train: needs the training extra ({err.name} is missing): pip install 'improvd[train]'",
              file=sys.stderr)
        return EXIT_SETUP
    from improvd.model import models_dir, read_metadata

    folder = args.folder.expanduser()
    name = args.name or folder.resolve().name
    base = (args.base or packaged_model()).resolve()
    arch = read_metadata(base)["architecture"]
    work = models_dir().parent / "runs" / name
    shutil.rmtree(work, ignore_errors=True)
    try:
        manifest, skipped = read_folder(folder, work / "data")
    except FolderError as err:
        print(f"improvd-train: {err}", file=sys.stderr)
        return EXIT_FOLDER
    splits = manifest["splits"]
    print(f"improvd-train: {splits['train']['pieces']} pieces to learn from ({splits['train']['tokens']} events), "
          f"{splits['test']['pieces']} held out ({splits['test']['tokens']} events)")
    for reason in skipped:
        print(f"  skipped {reason}")

    held_out = train.load_split(work / "data", "test")
    # windows must fit in what there is: a small folder trains on shorter windows, smaller batches
    seq_len = max(16, min(args.seq_len, splits["train"]["tokens"] // 2, splits["test"]["tokens"] - 1))
    batch = max(1, min(args.batch, splits["train"]["tokens"] // seq_len))
    before = evaluate.model_bits_per_event(base, held_out)
    out = models_dir() / name
    # an epoch (a validation pass and a checkpoint) every STEPS_PER_EPOCH steps at least, however small the folder
    per_epoch = max(STEPS_PER_EPOCH, splits["train"]["tokens"] // (seq_len * batch))
    steps = (["--steps-per-epoch", args.steps, "--epochs", 1] if args.steps
             else ["--steps-per-epoch", per_epoch, "--epochs", 100_000])  # the budget ends it
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")  # its notes are for developers
    try:
        train.main(list(map(str, [
            "--data", work / "data", "--out", work / "run", "--init", base, "--layers", arch["layers"],
            "--units", arch["units"], "--embedding", arch["embedding"], "--dropout", arch.get("dropout", 0.0),
            "--seq-len", seq_len, "--batch", batch, "--lr", args.lr, "--lr-final", 0.05,
            "--max-minutes", args.minutes, "--warmup-steps", WARMUP, "--clip-norm", 3.0, "--progress",
            "--patience", 100_000, *steps])))  # the held-out pieces measure; they do not steer
        # fp32: a fine-tune's small updates mostly fall between the int8 steps of the weights it started from
        export.main(list(map(str, ["--run", work / "run", "--weights", "last", "--out", out])))
    except (export.ExportError, OSError, ValueError, SystemExit) as err:
        print(f"improvd-train: {err}", file=sys.stderr)
        return EXIT_TRAINING
    after = evaluate.model_bits_per_event(out.with_suffix(".onnx"), held_out)
    card_path = out.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["fine_tune"] = {"held_out_pieces": splits["test"]["pieces"], "bits_per_event_before": before,
                         "bits_per_event_after": after, "base": str(base)}
    card_path.write_text(json.dumps(card, indent=2))
    print(f"improvd-train: held-out bits/event {before:.3f} before, {after:.3f} after "
          f"({after / before - 1:+.1%}; lower is better)")
    print(f"improvd-train: wrote {out.with_suffix('.onnx')} and its card; play it with: improvd --model {name}")
    return EXIT_OK


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
