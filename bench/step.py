"""Per-step latency of the ONNX step model, against the seed projects' way of generating.

    python bench/step.py                          # exports fp32 + int8 from runs/default
    python bench/step.py --run runs/mine
    python bench/step.py --fp32 a.onnx --int8 exported/improvd.onnx

A live answer has to come within a few milliseconds of the player's note, so what matters is
the cost of one step, its tail (p99) as much as its median. This times the step model the way
the daemon calls it (state fed back, one call per event) in fp32 and int8, on one CPU thread
(the daemon's setting) and on two (to show what a second thread does to the p99), on CUDA
where onnxruntime can really start it, and with batches of candidate continuations. In the
same run it times the seed projects' approach, a Keras `model.predict` over a 100-note window
for every generated note, on a full-sequence model of the same size, and prints the ratio.
A benchmark, not a test: it prints a table and writes JSON (--out); nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from improvd import vocab  # noqa: E402
from improvd_train import evaluate, export, train  # noqa: E402

# ---- defaults -------------------------------------------------------------------------
RUN = "runs/default"
OUT = "bench/results/step.json"
STEPS = 2000  # timed steps per configuration
WARMUP = 200  # untimed steps before them
BATCHES = (1, 8, 32)  # candidate continuations advanced by one call
THREADS = (1, 2)  # intra-op threads, at batch 1
WINDOW = 100  # notes the seed projects re-run through the network for each new note
NOTES = 50  # notes generated their way (each one a full-window pass)
NOTES_WARMUP = 3
# ---------------------------------------------------------------------------------------


def from_run(run: Path, folder: Path) -> tuple[dict, dict[str, Path], object]:
    """Export fp32 and int8 step models of a training run into ``folder``."""
    run_args = json.loads((run / "args.json").read_text())
    weights = run / "best.weights.h5"
    if not weights.exists():
        weights = run / "last.weights.h5"
    size = {key: run_args[key] for key in ("layers", "units", "embedding", "dropout")}
    model = train.build_model(**size)
    model.load_weights(weights)
    paths = {"fp32": folder / "fp32.onnx", "int8": folder / "int8.onnx"}
    export.convert(model, size["layers"], size["units"], paths["fp32"])
    export.quantize(paths["fp32"], paths["int8"])
    return size, paths, model


def have_keras() -> bool:
    try:
        import keras  # noqa: F401
    except ImportError:
        return False
    return True


def cuda_session(path: Path):
    """A session on CUDA, or None and the reason why not."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None, f"onnxruntime {ort.__version__} was built without CUDAExecutionProvider"
    try:
        session = evaluate.step_session(path, 1, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    except Exception as err:  # noqa: BLE001 - a broken CUDA install must not lose the CPU numbers
        return None, f"CUDAExecutionProvider failed: {err}"
    if session.get_providers()[0] != "CUDAExecutionProvider":
        return None, ("onnxruntime could not start CUDAExecutionProvider and fell back to the CPU "
                      "(no GPU, or CUDA/cuDNN libraries missing: its log above names which)")
    return session, None


def per_note(logits_of, window: int, notes: int) -> np.ndarray:
    """Seconds per generated note when each note costs one full pass over the last
    ``window`` notes: the seed projects' loop (sample, slide the window, run again)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab.VOCAB_SIZE, window, np.int32)
    times = []
    for _ in range(NOTES_WARMUP + notes):
        started = time.perf_counter()
        logits = np.asarray(logits_of(tokens[None]))[0, -1].astype(np.float64)
        times.append(time.perf_counter() - started)
        p = np.exp(logits - logits.max())
        tokens = np.append(tokens[1:], rng.choice(len(p), p=p / p.sum())).astype(np.int32)
    return np.array(times[NOTES_WARMUP:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", default=None, help=f"training run to export (default {RUN})")
    parser.add_argument("--fp32", default=None, help="an exported fp32 step model instead")
    parser.add_argument("--int8", default=None, help="an exported int8 step model instead")
    parser.add_argument("--out", default=OUT, help="JSON results")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--notes", type=int, default=NOTES)
    args = parser.parse_args(argv)

    tmp = tempfile.TemporaryDirectory()
    if args.fp32 or args.int8:
        paths = {name: Path(p) for name, p in (("fp32", args.fp32), ("int8", args.int8)) if p}
        metadata = next(p.with_suffix(".json") for p in paths.values())
        if not metadata.exists():
            sys.exit(f"bench: {metadata} not found: the model's size comes from its metadata")
        size = {key: json.loads(metadata.read_text())["architecture"][key]
                for key in ("layers", "units", "embedding", "dropout")}
        # the seed approach's cost does not depend on weights; a machine without Keras (a GPU
        # machine with PyTorch only) times the step model alone
        keras_model = train.build_model(**size) if have_keras() else None
        source = {name: str(p) for name, p in paths.items()}
    else:
        run = Path(args.run or RUN)
        if not (run / "args.json").exists():
            sys.exit(f"bench: no training run at {run} (train one, or pass --run, --fp32 or --int8)")
        size, paths, keras_model = from_run(run, Path(tmp.name))
        source = {"run": str(run)}

    rows = []

    def measure(precision: str, provider: str, session, threads: int, batch: int) -> None:
        result = evaluate.latency(evaluate.step_times(session, batch, args.steps, WARMUP))
        rows.append({"precision": precision, "provider": provider, "threads": threads,
                     "batch": batch, **result, "per_candidate_us": result["p50_us"] / batch})

    for precision, path in paths.items():
        for threads in THREADS:
            session = evaluate.step_session(path, threads)
            for batch in BATCHES if threads == 1 else (1,):
                measure(precision, "CPU", session, threads, batch)
    cuda_reason = None
    for precision, path in paths.items():
        session, cuda_reason = cuda_session(path)
        if session is None:
            break
        for batch in BATCHES:
            measure(precision, "CUDA", session, 1, batch)

    seed_approach = None
    if keras_model is not None:
        predict = evaluate.latency(per_note(lambda x: keras_model.predict(x, verbose=0),
                                            args.window, args.notes))
        call = evaluate.latency(per_note(lambda x: keras_model(x, training=False),
                                         args.window, args.notes))
        baseline = {r["precision"]: r["p50_us"] for r in rows
                    if r["provider"] == "CPU" and r["threads"] == 1 and r["batch"] == 1}
        ratios = {precision: predict["p50_us"] / us for precision, us in baseline.items()}
        seed_approach = {"predict_per_note": predict, "call_per_note": call, "ratio_predict_to_step": ratios}
    tmp.cleanup()

    import onnxruntime

    results = {
        "machine": {**evaluate.machine(), "keras": keras_model is not None,
                    "onnxruntime_providers": onnxruntime.get_available_providers()},
        "model": {**size, "source": source},
        "settings": {"steps": args.steps, "warmup": WARMUP, "window": args.window,
                     "notes": args.notes, "tensorflow_threads": "default (all cores)"},
        "steps": rows,
        "cuda": {"measured": cuda_reason is None, "reason": cuda_reason},
        "seed_approach": seed_approach,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))

    print(f"\nstep model {size['layers']}x{size['units']} (embedding {size['embedding']}), "
          f"{args.steps} steps after {WARMUP} warm-up, on {results['machine']['cpu']}")
    print(f"{'precision':<10}{'provider':<9}{'threads':>8}{'batch':>6}{'p50 us':>9}{'p99 us':>9}"
          f"{'steps/s':>10}{'us/candidate':>14}")
    for r in rows:
        print(f"{r['precision']:<10}{r['provider']:<9}{r['threads']:>8}{r['batch']:>6}"
              f"{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['steps_per_s']:>10.0f}"
              f"{r['per_candidate_us']:>14.1f}")
    if cuda_reason:
        print(f"CUDA skipped: {cuda_reason}")
    if seed_approach:
        print(f"\nseed approach, per generated note over a {args.window}-note window "
              f"({args.notes} notes, TensorFlow on all cores):")
        for name, key in (("model.predict", "predict_per_note"), ("model(x) call", "call_per_note")):
            result = seed_approach[key]
            print(f"  {name:<14} p50 {result['p50_us'] / 1e3:8.2f} ms   p99 {result['p99_us'] / 1e3:8.2f} ms")
        print("  predict / one step (CPU, 1 thread, batch 1): " + ", ".join(
            f"{precision} {ratio:,.0f}x" for precision, ratio in seed_approach["ratio_predict_to_step"].items()))
    print(f"bench: wrote {out}")


if __name__ == "__main__":
    main()
