"""Training throughput of candidate model sizes on this machine: tokens/s per train step.

    python bench/train_speed.py                     # the default grid
    python bench/train_speed.py --configs 3x512:256:512:16,3x384:256:256:32

A config is LAYERSxUNITS:EMBEDDING:SEQ_LEN:BATCH. Each is built with improvd_train.train's own
model and optimizer, warmed up, then timed over --steps train steps on random tokens (the
cost of an LSTM step does not depend on the data). Prints a table and writes
bench/results/train_speed.json. Run it on an idle machine: both cores are its to use.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from improvd import vocab  # noqa: E402
from improvd_train.train import build_model  # noqa: E402

CONFIGS = "3x256:128:512:32,3x384:192:512:32,3x512:256:512:16,3x512:256:512:32"
STEPS = 6
WARMUP = 2


def measure(layers: int, units: int, embedding: int, seq_len: int, batch: int, jit: bool, steps: int) -> dict:
    import keras

    keras.backend.clear_session()
    model = build_model(layers, units, embedding, 0.1)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.integers(0, vocab.VOCAB_SIZE, (batch, seq_len)).astype(np.int32)
    y = rng.integers(0, vocab.VOCAB_SIZE, (batch, seq_len)).astype(np.int32)
    for _ in range(WARMUP):
        model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"layers": layers, "units": units, "embedding": embedding, "seq_len": seq_len, "batch": batch,
            "jit_compile": jit, "params": int(model.count_params()), "step_s_median": round(median, 4),
            "tokens_per_s": round(seq_len * batch / median, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=CONFIGS)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--jit", choices=("on", "off", "both"), default="both")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_speed.json"))
    args = parser.parse_args()

    jits = {"on": [True], "off": [False], "both": [False, True]}[args.jit]
    rows = []
    print(f"{'config':<22} {'jit':<4} {'params':>9} {'step s':>8} {'tokens/s':>9}")
    for config in args.configs.split(","):
        size, embedding, seq_len, batch = config.split(":")
        layers, units = map(int, size.split("x"))
        for jit in jits:
            row = measure(layers, units, int(embedding), int(seq_len), int(batch), jit, args.steps)
            rows.append(row)
            print(f"{config:<22} {'on' if jit else 'off':<4} {row['params']:>9} {row['step_s_median']:>8.3f} "
                  f"{row['tokens_per_s']:>9.0f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "processor": platform.processor(),
                                           "platform": platform.platform()},
                               "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
