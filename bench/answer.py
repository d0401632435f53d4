"""How long K candidate answers take, against the time the engine gives them.

    python bench/answer.py                      # CPU (one thread, the daemon's setting), CUDA where it starts
    python bench/answer.py --reps 50 --model exported/improvd.onnx

Candidates start the moment the player goes silent and must all be ready when the answer
starts, ``lookahead_ms`` before the silence deadline: a window of silence_ms - lookahead_ms
(250 ms with the shipped config). This primes the engine with examples/motif.mid, then times
what the daemon does in that window (the K rows generated a few events per poll, then scored
and the best chosen) for 2, 4 and 8 s answers, and prints the margin left at p99. A benchmark,
not a test: it prints a table and writes JSON (--out); nothing is asserted. About 30 s idle.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from improvd.config import Config
from improvd.daemon import build_engine
from improvd.errors import ModelError
from improvd.model import StepModel
from improvd.seed import read_seed
from improvd.telemetry import percentiles
from improvd_train.evaluate import machine

ROOT = Path(__file__).resolve().parent.parent
OUT = "bench/results/answer.json"
LENGTHS = (2.0, 4.0, 8.0)  # seconds of answer
CPU_KS = (1, 8, 32)
CUDA_KS = (64, 128, 256)
REPS = 20  # timed answers per configuration, each with its own seed
START = 10.0  # simulated clock at the end of the motif


def time_answers(model: StepModel, config: Config, seed: list, length: float, k: int, reps: int) -> dict:
    """Wall seconds from the first candidate event to the choice, over ``reps`` answers."""
    times, steps, margins = [], [], []
    for rep in range(reps):
        run_config = replace(config, engine=replace(config.engine, seed=rep),
                             sampler=replace(config.sampler, candidates=k))
        engine = build_engine(run_config, model, 0.0)
        engine.prime(seed, START, length)
        started = time.perf_counter()
        search = engine.search_answer(START)  # what poll does while silent (it skips K = 1: so call it directly)
        while not search.done:
            engine.search_answer(START)
        choice = search.choose(START)
        times.append(time.perf_counter() - started)
        steps.append(choice.steps)
        margins.append(choice.margin)
    window = (config.engine.silence_ms - config.engine.lookahead_ms) / 1000
    figures = percentiles(times)
    return {"length_s": length, "k": k, "reps": reps, "events_p50": float(np.median(steps)), **figures,
            "window_ms": window * 1e3, "p99_margin_ms": window * 1e3 - figures["p99_ms"],
            "score_margin_p50": float(np.median(margins))}


def load() -> dict:
    """The load this ran under: figures from a loaded machine are not the ones to quote."""
    load = os.getloadavg()[0]
    return {"load_1min": load, "loaded": load > 0.5 * (os.cpu_count() or 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Config().model.path)
    parser.add_argument("--motif", type=Path, default=ROOT / "examples" / "motif.mid")
    parser.add_argument("--reps", type=int, default=REPS)
    parser.add_argument("--out", type=Path, default=ROOT / OUT)
    args = parser.parse_args()
    config = replace(Config(), model=replace(Config().model, path=args.model))
    seed = read_seed(args.motif)
    info = {**machine(), **load()}
    print(f"# {info['cpu']}, {info['cores']} cores, load {info['load_1min']:.2f} "
          f"({'LOADED' if info['loaded'] else 'idle'}), {info['date']}")
    rows = []
    devices = [("cpu", CPU_KS)]
    try:
        StepModel(args.model, "cuda")
        devices.append(("cuda", CUDA_KS))
    except ModelError as err:
        print(f"# CUDA not measured: {err}")
    for device, ks in devices:
        model = StepModel(args.model, device)
        for length in LENGTHS:
            for k in ks:
                rows.append({"device": device, **time_answers(model, config, seed, length, k, args.reps)})
    header = (f"{'device':6} {'answer s':>8} {'K':>4} {'events':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
              f"{'window ms':>9} {'p99 margin ms':>13}")
    print(header)
    for r in rows:
        print(f"{r['device']:6} {r['length_s']:8.0f} {r['k']:4d} {r['events_p50']:6.0f} {r['p50_ms']:8.1f} "
              f"{r['p99_ms']:8.1f} {r['max_ms']:8.1f} {r['window_ms']:9.0f} {r['p99_margin_ms']:13.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": info, "model": str(args.model), "rows": rows}, indent=2))
    print(f"# wrote {args.out}")


if __name__ == "__main__":
    main()
