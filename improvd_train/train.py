"""Train the stacked LSTM on prepared tokens.

    python -m improvd_train.train --data data/corpus --out runs/default
    python -m improvd_train.train --out runs/default --resume
    python -m improvd_train.train --strategy mirrored ...     # several GPUs on one machine
    TF_CONFIG=... python -m improvd_train.train --strategy multiworker ...

Each epoch writes a checkpoint (weights + state.json), a CSV log line and the PNG learning
curve into --out; the run's arguments live beside them in args.json (never pickle), so
export and --resume need nothing else. Windows are drawn from the training pieces,
transposed and tempo-stretched afresh every epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from improvd import vocab  # noqa: E402

# ---- defaults -------------------------------------------------------------------------
DATA = "data/performance"
OUT = "runs/default"
LAYERS = 3
UNITS = 256
EMBEDDING = 128
DROPOUT = 0.05
SEQ_LEN = 512  # about 15 s of a pianist's playing: whole phrases, and the state they leave
BATCH = 32
EPOCHS = 50
LEARNING_RATE = 2e-3
CLIP_NORM = 1.0
PATIENCE = 3  # epochs without a better validation loss before stopping
TRANSPOSE = 6  # semitones, each way
STRETCH = 0.1  # tempo stretch, each way (0.1 = 90%..110%)
VELOCITY_SCALE = 0.2  # velocities scaled by a factor drawn from 80%..120% per piece
STEPS_PER_EPOCH = 0  # 0: one pass over the training tokens
MAX_MINUTES = 0.0  # 0: no wall-clock budget
LR_FINAL = 0.0  # with a budget: decay the learning rate linearly to this fraction by its end (0: on plateau)
WARMUP_STEPS = 0  # steps of linear learning-rate warm-up (with a budget): 0 = none
SEED = 1
SHUFFLE_WINDOWS = 1024  # windows mixed before batching, so a batch spans many pieces
# ---------------------------------------------------------------------------------------


def load_split(data: Path, split: str) -> list[np.ndarray]:
    """The pieces of one split, as token arrays."""
    archive = np.load(data / f"{split}.npz")
    tokens, offsets = archive["tokens"], archive["offsets"]
    return [tokens[a:b].astype(np.int32) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]


def augment(tokens: np.ndarray, rng: np.random.Generator, transpose: int, stretch: float,
            velocity_scale: float = 0.0) -> np.ndarray:
    """A piece transposed by a random interval that keeps it on the keyboard, played a
    random amount faster or slower and louder or softer; re-tokenized through the shared
    vocabulary."""
    notes = vocab.tokens_to_notes(tokens.tolist())
    if not notes:
        return tokens
    low, high = min(n.pitch for n in notes), max(n.pitch for n in notes)
    shift = int(rng.integers(max(-transpose, -low), min(transpose, 127 - high) + 1))
    factor = float(rng.uniform(1 - stretch, 1 + stretch)) if stretch > 0 else 1.0
    loudness = float(rng.uniform(1 - velocity_scale, 1 + velocity_scale)) if velocity_scale > 0 else 1.0
    moved = [
        vocab.Note(n.pitch + shift, min(127, max(1, round(n.velocity * loudness))), n.start * factor, n.end * factor)
        for n in notes
    ]
    return np.asarray(vocab.notes_to_tokens(moved), np.int32)


def piece_gap() -> np.ndarray:
    """One second of silence between concatenated pieces, as the player's pause would be."""
    return np.asarray(vocab.time_shift_tokens(100), np.int32)


def windows(pieces: list[np.ndarray], seq_len: int, rng: np.random.Generator | None,
            transpose: int = 0, stretch: float = 0.0, velocity_scale: float = 0.0):
    """(input, target) windows over the pieces played one after another, shuffled and
    augmented when rng is given. Pieces are augmented as the windows reach them, so the
    first batch does not wait for a pass over the whole corpus."""
    order = rng.permutation(len(pieces)) if rng is not None else range(len(pieces))
    gap = piece_gap()
    stream = np.zeros(0, np.int32)
    skip = int(rng.integers(seq_len)) if rng is not None else 0  # windows start anywhere in a piece
    for i in order:
        piece = augment(pieces[i], rng, transpose, stretch, velocity_scale) if rng is not None else pieces[i]
        stream = np.concatenate([stream, piece, gap])[skip:]
        skip = 0
        while len(stream) > seq_len:
            chunk, stream = stream[: seq_len + 1], stream[seq_len:]
            yield chunk[:-1], chunk[1:]


def build_model(layers: int, units: int, embedding: int, dropout: float):
    """Embedding -> stacked LSTM (dropout between layers) -> logits over the vocabulary.
    Layer names are part of the export contract (training/export.py looks them up)."""
    import keras

    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(vocab.VOCAB_SIZE, embedding, name="embedding")(tokens)
    for i in range(layers):
        x = keras.layers.LSTM(units, return_sequences=True, name=f"lstm_{i}")(x)
        x = keras.layers.Dropout(dropout, name=f"dropout_{i}")(x)
    logits = keras.layers.Dense(vocab.VOCAB_SIZE, name="logits", dtype="float32")(x)  # fp32 under mixed precision
    return keras.Model(tokens, logits, name="improvd_lstm")


def exported_arrays(onnx_path: Path) -> dict[str, np.ndarray]:
    """The Keras-layout weights ("<layer>/<index>", as keras_arrays gives them) of an exported
    step model (export.py's graph; int8 weights are dequantized): fine-tuning a shipped model
    needs no checkpoint of it."""
    import onnx
    from onnx import numpy_helper

    arrays = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}

    def weight(name: str) -> np.ndarray:
        if name in arrays:
            return arrays[name].astype(np.float32)
        quantized = arrays[name + "_quantized"].astype(np.float32)
        return (quantized - arrays[name + "_zero_point"].astype(np.float32)) * arrays[name + "_scale"]

    def scope(prefix: str) -> list[str]:  # tf2onnx names: "<layer>_<n>/...", n in graph order
        names = {key.split("/")[0] for key in arrays if key.startswith(prefix + "_")}
        return sorted(names, key=lambda name: int(name.rsplit("_", 1)[1]))

    (embedding,), cells, (logits,) = scope("embedding"), scope("lstm_cell"), scope("logits")
    out = {"embedding/0": weight(f"{embedding}/GatherV2/ReadVariableOp:0"),
           "logits/0": weight(f"{logits}/Cast/ReadVariableOp:0"),
           "logits/1": weight(f"{logits}/BiasAdd/ReadVariableOp:0")}
    for i, cell in enumerate(cells):
        for j, part in enumerate(("Cast", "Cast_1", "BiasAdd")):
            out[f"lstm_{i}/{j}"] = weight(f"{cell}/{part}/ReadVariableOp:0")
    return out


def keras_arrays(model) -> dict[str, np.ndarray]:
    """The weights of build_model's layers keyed "<layer>/<index>" (the interchange with
    improvd_train.torch_lstm)."""
    return {f"{layer.name}/{j}": np.asarray(w, np.float32)
            for layer in model.layers for j, w in enumerate(layer.get_weights())}


def set_keras_arrays(model, arrays: dict[str, np.ndarray], source: object = "the weights") -> None:
    """Load "<layer>/<index>" arrays into build_model's layers; the architecture must match."""
    layers = sum(layer.name.startswith("lstm_") for layer in model.layers)
    if sum(key.endswith("/0") and key.startswith("lstm_") for key in arrays) != layers:
        raise SystemExit(f"train: {source} has a different number of LSTM layers; --layers must match it")
    for layer in model.layers:
        count = len(layer.get_weights())
        if count:
            layer.set_weights([np.asarray(arrays[f"{layer.name}/{j}"], np.float32) for j in range(count)])


def load_exported_weights(model, onnx_path: Path) -> None:
    """Start from an exported step model (int8 weights are dequantized)."""
    set_keras_arrays(model, exported_arrays(onnx_path), onnx_path)


def make_strategy(name: str):
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":  # cluster layout from TF_CONFIG
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def make_dataset(generator_fn, seq_len: int, batch: int, repeat: bool):
    import tensorflow as tf

    spec = tf.TensorSpec(shape=(seq_len,), dtype=tf.int32)
    dataset = tf.data.Dataset.from_generator(generator_fn, output_signature=(spec, spec))
    if repeat:  # training: endless, shuffled across pieces
        dataset = dataset.repeat().shuffle(SHUFFLE_WINDOWS)
    dataset = dataset.batch(batch, drop_remainder=repeat).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def plot_curve(log_csv: Path, png: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_csv.open()))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("loss", "train"), ("val_loss", "validation")):
        ax.plot(epochs, [float(r[key]) / np.log(2) for r in rows], marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("bits/event")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--units", type=int, default=UNITS)
    parser.add_argument("--embedding", type=int, default=EMBEDDING)
    parser.add_argument("--dropout", type=float, default=DROPOUT)
    parser.add_argument("--seq-len", type=int, default=SEQ_LEN)
    parser.add_argument("--batch", type=int, default=BATCH, help="global batch size")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--lr", type=float, default=LEARNING_RATE)
    parser.add_argument("--clip-norm", type=float, default=CLIP_NORM)
    parser.add_argument("--patience", type=int, default=PATIENCE)
    parser.add_argument("--transpose", type=int, default=TRANSPOSE)
    parser.add_argument("--stretch", type=float, default=STRETCH)
    parser.add_argument("--velocity-scale", type=float, default=VELOCITY_SCALE)
    parser.add_argument("--steps-per-epoch", type=int, default=STEPS_PER_EPOCH)
    parser.add_argument("--max-minutes", type=float, default=MAX_MINUTES, help="stop after this much training time")
    parser.add_argument("--lr-final", type=float, default=LR_FINAL,
                        help="with --max-minutes: decay the learning rate linearly to lr x this by the end")
    parser.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS,
                        help="with --max-minutes and --lr-final: raise the learning rate linearly over these steps")
    parser.add_argument("--random-seed", type=int, default=SEED)
    parser.add_argument("--strategy", choices=("default", "mirrored", "multiworker"), default="default")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    parser.add_argument("--progress", action="store_true",
                        help="one progress bar over the time budget (or the epochs) instead of a line per epoch")
    parser.add_argument("--init", type=Path,
                        help="start from these weights: a Keras .weights.h5, or an exported .onnx (fine-tuning)")
    args = parser.parse_args(argv)

    import keras

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "state.json"
    initial_epoch = 0
    if args.resume:
        saved = json.loads((out / "args.json").read_text())
        for key in ("layers", "units", "embedding"):  # the architecture cannot change mid-run
            setattr(args, key, saved[key])
        initial_epoch = json.loads(state_path.read_text())["epoch"]
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "resume"}
    settings["started"] = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())  # the model card's lineage
    if args.resume:  # keep the arguments of every earlier leg of the run, with where it stopped
        earlier = {k: v for k, v in saved.items() if k not in ("earlier", "vocab")}
        settings["earlier"] = saved.get("earlier", []) + [{**earlier, "until_epoch": initial_epoch}]
        settings["started"] = saved.get("started", settings["started"])
    (out / "args.json").write_text(json.dumps({**settings, "vocab": vocab.spec()}, indent=2))

    data = Path(args.data)
    train_pieces = load_split(data, "train")
    validation_pieces = load_split(data, "validation")
    train_tokens = sum(len(p) for p in train_pieces)
    keras.utils.set_random_seed(args.random_seed + initial_epoch)
    rng = np.random.default_rng(args.random_seed + initial_epoch)

    strategy = make_strategy(args.strategy)
    with strategy.scope():
        model = build_model(args.layers, args.units, args.embedding, args.dropout)
        model.compile(
            optimizer=keras.optimizers.Adam(args.lr, clipnorm=args.clip_norm),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    if args.resume:
        model.load_weights(out / "last.weights.h5")
    elif args.init and args.init.suffix == ".onnx":
        load_exported_weights(model, args.init)
    elif args.init:
        model.load_weights(args.init)
    if not args.progress:
        model.summary(print_fn=lambda line, **_: print(line))

    train_ds = make_dataset(
        lambda: windows(train_pieces, args.seq_len, rng, args.transpose, args.stretch, args.velocity_scale),
        args.seq_len, args.batch, repeat=True,
    )
    validation_ds = make_dataset(
        lambda: windows(validation_pieces, args.seq_len, None), args.seq_len, args.batch, repeat=False
    )
    steps = args.steps_per_epoch or max(1, train_tokens // (args.seq_len * args.batch))
    print(f"train: {len(train_pieces)} pieces, {train_tokens} tokens, {steps} steps/epoch")

    started = time.monotonic()

    class Checkpoint(keras.callbacks.Callback):
        """Weights, state and learning curve after every epoch; a wall-clock budget."""

        def __init__(self) -> None:
            super().__init__()
            self.best = json.loads(state_path.read_text())["best_val_loss"] if args.resume else float("inf")

        def on_train_batch_end(self, batch, logs=None):
            if args.max_minutes and time.monotonic() - started > args.max_minutes * 60:
                self.model.stop_training = True  # ends the epoch here: validation and checkpoint follow

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.model.save_weights(out / "last.weights.h5")
            val_loss = float(logs.get("val_loss", float("inf")))
            if val_loss < self.best:
                self.best = val_loss
                self.model.save_weights(out / "best.weights.h5")
            state = {
                "epoch": epoch + 1,
                "best_val_loss": self.best,
                "best_val_bits_per_event": self.best / np.log(2),
                "elapsed_s": round(time.monotonic() - started, 1),
                "tokens_per_s": round(steps * args.seq_len * args.batch / max(1e-9, logs.get("epoch_s", 1)), 1),
            }
            state_path.write_text(json.dumps(state, indent=2))
            plot_curve(out / "log.csv", out / "curve.png")
            if args.max_minutes and time.monotonic() - started > args.max_minutes * 60:
                print(f"train: wall-clock budget of {args.max_minutes} min reached")
                self.model.stop_training = True

    class BudgetDecay(keras.callbacks.Callback):
        """A time budget, not an epoch count, bounds the run: decay against the clock, after a
        linear warm-up that lets a fresh Adam settle before it moves trained weights at full rate."""

        seen = 0

        def on_train_batch_begin(self, batch, logs=None):
            done = min(1.0, (time.monotonic() - started) / (args.max_minutes * 60))
            self.seen += 1
            warm = min(1.0, self.seen / args.warmup_steps) if args.warmup_steps else 1.0
            self.model.optimizer.learning_rate.assign(args.lr * warm * (1 - (1 - args.lr_final) * done))

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.monotonic()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["epoch_s"] = time.monotonic() - self.t0
                logs["val_bits_per_event"] = logs.get("val_loss", float("nan")) / np.log(2)

    class Progress(keras.callbacks.Callback):
        """A bar over the time budget (seconds) or the epochs' steps, with the validation figure."""

        def on_train_begin(self, logs=None):
            from tqdm import tqdm

            budget = args.max_minutes * 60
            self.bar = tqdm(total=round(budget) if budget else (args.epochs - initial_epoch) * steps,
                            unit="s" if budget else "step", desc="train", dynamic_ncols=True)

        def on_train_batch_end(self, batch, logs=None):
            done = round(time.monotonic() - started) if args.max_minutes else self.bar.n + 1
            self.bar.update(min(done, self.bar.total) - self.bar.n)

        def on_epoch_end(self, epoch, logs=None):
            self.bar.set_postfix_str(f"validation {(logs or {}).get('val_loss', float('nan')) / np.log(2):.3f} "
                                     "bits/event")

        def on_train_end(self, logs=None):
            self.bar.close()

    model.fit(
        train_ds,
        validation_data=validation_ds,
        epochs=args.epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=steps,
        verbose=0 if args.progress else 2,
        callbacks=[*([Progress()] if args.progress else []),
            EpochTimer(),
            keras.callbacks.CSVLogger(str(out / "log.csv"), append=args.resume),
            BudgetDecay() if args.max_minutes and args.lr_final else
            keras.callbacks.ReduceLROnPlateau(factor=0.5, patience=1, min_lr=1e-5),
            keras.callbacks.EarlyStopping(patience=args.patience),
            Checkpoint(),
        ],
    )
    state = json.loads(state_path.read_text())
    print(f"train: best validation {state['best_val_bits_per_event']:.4f} bits/event -> {out}")


if __name__ == "__main__":
    main()
