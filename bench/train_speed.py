"""Training paths compared on this machine: events/s, and what the model has learnt after the
same wall-clock minutes (a faster path that learns worse is not faster).

    python bench/train_speed.py --data data/performance --init exported/improvd.onnx --minutes 2
    python bench/train_speed.py --paths torch,torch-bf16 --layers 3 --units 512 --embedding 256

Paths: tf (TensorFlow, fp32), tf-bf16 (Keras mixed_bfloat16 policy), keras-torch (Keras 3 on
its PyTorch backend), torch (PyTorch nn.LSTM, fp32), torch-bf16 (nn.LSTM under CPU autocast to
bfloat16). Every path starts from the same weights (--init, dequantized if int8), sees the same
augmented training batches in the same order (drawn once by improvd_train.train.windows and
cached), uses Adam with --lr and gradient clipping --clip-norm, and trains for --minutes after
two untimed warm-up steps. Each runs in its own process (a Keras backend is fixed per process).
Its weights are then scored by one evaluator (Keras on TensorFlow, fp32) on the same validation
windows, so the bits/event column compares learning, not arithmetic.

Prints a table and writes bench/results/train_speed.json. The cores should be otherwise idle:
--pause-pid FILE stops a background job (its pid in FILE) during each timed run and resumes it
after, also when the run fails.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from improvd_train.evaluate import machine  # noqa: E402

PATHS = "tf,tf-bf16,keras-torch,torch,torch-bf16"
MINUTES = 2.0
LR = 1e-3
CLIP_NORM = 3.0
DROPOUT = 0.05
WARMUP = 2
VALIDATION_WINDOWS = 64
RESULTS = ROOT / "bench" / "results"


def batches_file(args) -> Path:
    """The training batches every path sees, drawn once: [n, batch, seq_len + 1] int16."""
    from improvd_train import train

    path = RESULTS / f"train_speed_batches_{args.seq_len}x{args.batch}_{args.batches}.npy"
    if not path.exists():
        rng = np.random.default_rng(1)
        stream = train.windows(train.load_split(Path(args.data), "train"), args.seq_len, rng,
                               transpose=3, stretch=0.1, velocity_scale=0.2)
        rows = [np.concatenate([x, y[-1:]]) for x, y in (next(stream) for _ in range(args.batches * args.batch))]
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.asarray(rows, np.int16).reshape(args.batches, args.batch, args.seq_len + 1))
    return path


def initial_arrays(args) -> dict[str, np.ndarray]:
    from improvd_train import train

    return train.exported_arrays(Path(args.init))


# ---- one path, in its own process ------------------------------------------------------

def train_keras(path: str, arrays, batches, args) -> tuple[dict, int, float]:
    import keras

    from improvd_train import train

    if path == "tf-bf16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    model = train.build_model(args.layers, args.units, args.embedding, DROPOUT)
    model.compile(optimizer=keras.optimizers.Adam(args.lr, clipnorm=args.clip_norm),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train.set_keras_arrays(model, arrays)

    def step(i: int) -> None:
        batch = batches[i % len(batches)].astype(np.int32)
        model.train_on_batch(batch[:, :-1], batch[:, 1:])

    steps, seconds = timed(step, args.minutes)
    return train.keras_arrays(model), steps, seconds


def train_torch(path: str, arrays, batches, args) -> tuple[dict, int, float]:
    import torch

    from improvd import vocab
    from improvd_train import torch_lstm

    torch.manual_seed(1)
    model = torch_lstm.LSTMModel(vocab.VOCAB_SIZE, args.layers, args.units, args.embedding, DROPOUT)
    torch_lstm.load_keras_arrays(model, arrays)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=path == "torch-bf16")

    def step(i: int) -> None:
        batch = torch.from_numpy(batches[i % len(batches)].astype(np.int64))
        with autocast:
            logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab.VOCAB_SIZE), batch[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
        optimizer.step()

    steps, seconds = timed(step, args.minutes)
    return torch_lstm.keras_arrays(model), steps, seconds


def timed(step, minutes: float) -> tuple[int, float]:
    """WARMUP untimed steps (compilation, allocation), then steps until the budget is spent."""
    for i in range(WARMUP):
        step(i)
    started = time.perf_counter()
    i = WARMUP
    while time.perf_counter() - started < minutes * 60:
        step(i)
        i += 1
    return i - WARMUP, time.perf_counter() - started


def worker(args) -> None:
    if args.worker.startswith("torch"):
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    arrays = dict(np.load(args.arrays))
    batches = np.load(args.batches_file, mmap_mode="r")
    run = train_torch if args.worker.startswith("torch") else train_keras
    trained, steps, seconds = run(args.worker, arrays, batches, args)
    np.savez(args.result, **trained)
    print(json.dumps({"steps": steps, "train_s": round(seconds, 1)}))


# ---- the comparison ----------------------------------------------------------------------

class Paused:
    """SIGSTOP a background job for the length of a measurement; SIGCONT it however that ends."""

    def __init__(self, pid_file: str | None) -> None:
        self.pid = int(Path(pid_file).read_text()) if pid_file and Path(pid_file).exists() else None

    def __enter__(self):
        if self.pid:
            os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *exc):
        if self.pid:
            os.kill(self.pid, signal.SIGCONT)


def bits_per_event(arrays: dict[str, np.ndarray], windows: np.ndarray, args) -> float:
    """Mean cross-entropy over the validation windows' targets, in bits, Keras fp32 on TensorFlow."""
    import keras

    from improvd_train import train

    model = train.build_model(args.layers, args.units, args.embedding, DROPOUT)
    train.set_keras_arrays(model, arrays)
    total = 0.0
    for start in range(0, len(windows), 16):
        chunk = windows[start:start + 16].astype(np.int32)
        logits = model.predict(chunk[:, :-1], verbose=0).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(axis=-1))
        target = np.take_along_axis(logits, chunk[:, 1:, None], axis=-1)[..., 0]
        total += float((log_z - target).sum())
    keras.backend.clear_session()
    return total / windows[:, 1:].size / np.log(2)


def validation_windows(args) -> np.ndarray:
    from improvd_train import train

    stream = train.windows(train.load_split(Path(args.data), "validation"), args.seq_len, None)
    return np.asarray([np.concatenate([x, y[-1:]]) for x, y in
                       (next(stream) for _ in range(VALIDATION_WINDOWS))], np.int32)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default=PATHS)
    parser.add_argument("--data", default="data/performance")
    parser.add_argument("--init", default="exported/improvd.onnx", help="starting weights: an exported .onnx")
    parser.add_argument("--minutes", type=float, default=MINUTES, help="timed training per path")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--units", type=int, default=256)
    parser.add_argument("--embedding", type=int, default=128)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--batches", type=int, default=160, help="distinct training batches drawn (then reused)")
    parser.add_argument("--lr", type=float, default=LR)
    parser.add_argument("--clip-norm", type=float, default=CLIP_NORM)
    parser.add_argument("--pause-pid", help="a file holding the pid of a background job to stop while timing")
    parser.add_argument("--out", default=str(RESULTS / "train_speed.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--arrays", help=argparse.SUPPRESS)
    parser.add_argument("--batches-file", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {"rows": {}}
    batches = batches_file(args)
    windows = validation_windows(args)
    with tempfile.TemporaryDirectory() as tmp:
        start = Path(tmp) / "start.npz"
        arrays = initial_arrays(args)
        np.savez(start, **arrays)
        report["start_bits_per_event"] = round(bits_per_event(arrays, windows, args), 4)
        for path in args.paths.split(","):
            result = Path(tmp) / f"{path}.npz"
            env = {**os.environ, "KERAS_BACKEND": "torch" if path == "keras-torch" else "tensorflow"}
            command = [sys.executable, __file__, "--worker", path, "--arrays", start, "--batches-file", batches,
                       "--result", result, *(f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
                                              ("minutes", "layers", "units", "embedding", "lr", "clip_norm"))]
            with Paused(args.pause_pid):
                load_before = load()
                done = subprocess.run(list(map(str, command)), env=env, capture_output=True, text=True)
            if done.returncode:  # a path this machine cannot run is a result too
                error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
                report["rows"][path] = {"error": error[:300], "load_before": load_before}
                print(f"{path}: failed: {error}", file=sys.stderr)
                continue
            timing = json.loads(done.stdout.strip().splitlines()[-1])
            events = timing["steps"] * args.batch * args.seq_len
            report["rows"][path] = {
                **timing, "events": events, "events_per_s": round(events / timing["train_s"], 1),
                "validation_bits_per_event": round(bits_per_event(dict(np.load(result)), windows, args), 4),
                "load_before": load_before,
            }
            print(path, report["rows"][path], flush=True)
    report.update(
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=machine(),
        setup={k: getattr(args, k) for k in ("init", "minutes", "layers", "units", "embedding", "seq_len", "batch",
                                             "lr", "clip_norm")} | {"validation_events": int(windows[:, 1:].size),
                                                                    "dropout": DROPOUT, "warmup_steps": WARMUP},
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nstart (--init): {report['start_bits_per_event']:.4f} bits/event, "
          f"{windows[:, 1:].size} validation events")
    print(f"{'path':<12} {'steps':>6} {'events/s':>9} {'val bits/event':>15}")
    for path, row in report["rows"].items():
        if "error" in row:
            print(f"{path:<12} failed: {row['error'][:100]}")
        else:
            print(f"{path:<12} {row['steps']:>6} {row['events_per_s']:>9.0f} {row['validation_bits_per_event']:>15.4f}")


if __name__ == "__main__":
    main()
