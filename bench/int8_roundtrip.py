"""What continuing from the shipped int8 model costs: validation bits/event of a float checkpoint
beside the same weights after int8 quantization and back (what `train --init model.onnx` loads).

    python bench/int8_roundtrip.py --run runs/default --data data/performance

Both are scored by the same Keras fp32 model on the same validation windows; the difference is
what the round trip loses before any further training. Prints one line per variant and writes
bench/results/int8_roundtrip.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from improvd_train import export, train  # noqa: E402


def bits(model, windows: np.ndarray) -> float:
    total = 0.0
    for start in range(0, len(windows), 16):
        chunk = windows[start:start + 16]
        logits = model.predict(chunk[:, :-1], verbose=0).astype(np.float64)
        logits -= logits.max(axis=-1, keepdims=True)
        target = np.take_along_axis(logits, chunk[:, 1:, None], axis=-1)[..., 0]
        total += float((np.log(np.exp(logits).sum(axis=-1)) - target).sum())
    return total / windows[:, 1:].size / np.log(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a training run (args.json + .weights.h5)")
    parser.add_argument("--weights", choices=("best", "last"), default="last")
    parser.add_argument("--data", type=Path, default=Path(train.DATA))
    parser.add_argument("--windows", type=int, default=128, help="validation windows of 512 events")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "int8_roundtrip.json")
    args = parser.parse_args()

    run_args = json.loads((args.run / "args.json").read_text())
    layers, units = run_args["layers"], run_args["units"]
    model = train.build_model(layers, units, run_args["embedding"], 0.0)
    model.load_weights(args.run / f"{args.weights}.weights.h5")
    stream = train.windows(train.load_split(args.data, "validation"), 512, None)
    windows = np.asarray([np.concatenate([x, y[-1:]]) for x, y in (next(stream) for _ in range(args.windows))])
    fp32 = bits(model, windows)
    with tempfile.TemporaryDirectory() as tmp:
        export.convert(model, layers, units, Path(tmp) / "fp32.onnx")
        export.quantize(Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx")
        train.load_exported_weights(model, Path(tmp) / "int8.onnx")
    dequantized = bits(model, windows)
    report = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "run": str(args.run),
              "weights": args.weights, "validation_events": int(windows[:, 1:].size),
              "fp32_bits_per_event": fp32, "dequantized_int8_bits_per_event": dequantized,
              "cost": dequantized / fp32 - 1}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"fp32 weights            {fp32:.4f} bits/event ({windows[:, 1:].size} validation events)")
    print(f"int8 -> dequantized     {dequantized:.4f} bits/event ({report['cost']:+.3%})")


if __name__ == "__main__":
    main()
