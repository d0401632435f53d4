"""Trained weights -> single-step ONNX model + self-describing JSON (the daemon's contract).

    python -m improvd_train.export --run runs/default --out exported/improvd --quantize

Writes <out>.onnx and <out>.json. The step graph takes `token` int32 [batch], `h`, `c`
float32 [layers, batch, units] and gives `logits` [batch, vocab], `h_out`, `c_out`. Before
writing, streaming the step model over validation tokens must reproduce the Keras
full-sequence logits within --tolerance, or the export fails. With --quantize the weights
become int8 (ONNX Runtime dynamic quantization) and held-out bits/event may worsen by at
most --max-quant-loss.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from improvd import lineage, vocab  # noqa: E402
from improvd.model import FORMAT_VERSION  # noqa: E402
from improvd_train import evaluate, prepare, train  # noqa: E402

# ---- defaults -------------------------------------------------------------------------
RUN = "runs/default"
OUT = "exported/improvd"
WEIGHTS = "best"  # best | last
OPSET = 17
PARITY_TOKENS = 512
TOLERANCE = 1e-3
MAX_QUANT_LOSS = 0.02  # int8 may cost at most 2% bits/event
# ---------------------------------------------------------------------------------------


class ExportError(Exception):
    pass


def step_function(model, layers: int, units: int):
    """A tf.function doing one LSTM step per batch row with the trained layers' weights."""
    import tensorflow as tf

    embedding = model.get_layer("embedding")
    cells = [model.get_layer(f"lstm_{i}").cell for i in range(layers)]
    dense = model.get_layer("logits")
    signature = [
        tf.TensorSpec([None], tf.int32, name="token"),
        tf.TensorSpec([layers, None, units], tf.float32, name="h"),
        tf.TensorSpec([layers, None, units], tf.float32, name="c"),
    ]

    @tf.function(input_signature=signature)
    def step(token, h, c):
        x = embedding(token)
        h_out, c_out = [], []
        for i, cell in enumerate(cells):
            x, (h_i, c_i) = cell(x, [h[i], c[i]], training=False)
            h_out.append(h_i)
            c_out.append(c_i)
        return dense(x), tf.stack(h_out), tf.stack(c_out)

    return step, signature


def rename_io(onnx_model, inputs: list[str], outputs: list[str]) -> None:
    """tf2onnx names tensors like `token:0` and `Identity:0`; give them the contract's names."""
    graph = onnx_model.graph
    renames = {}
    for value, name in zip(graph.input, inputs, strict=True):
        renames[value.name] = name
    for value, name in zip(graph.output, outputs, strict=True):
        renames[value.name] = name
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for value in list(graph.input) + list(graph.output):
        value.name = renames[value.name]


def convert(model, layers: int, units: int, path: Path) -> None:
    import onnx
    import tf2onnx

    step, signature = step_function(model, layers, units)
    onnx_model, _ = tf2onnx.convert.from_function(step, input_signature=signature, opset=OPSET)
    rename_io(onnx_model, ["token", "h", "c"], ["logits", "h_out", "c_out"])
    onnx.checker.check_model(onnx_model)
    onnx.save(onnx_model, str(path))


def check_parity(model, onnx_path: Path, tokens: np.ndarray, layers: int, units: int) -> float:
    """Largest |Keras full-sequence logit - streamed ONNX step logit| over ``tokens``."""
    import onnxruntime as ort

    expected = model.predict(tokens[None, :], verbose=0)[0]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    h = np.zeros((layers, 1, units), np.float32)
    c = np.zeros_like(h)
    worst = 0.0
    for i, token in enumerate(tokens):
        logits, h, c = session.run(None, {"token": np.array([token], np.int32), "h": h, "c": c})
        worst = max(worst, float(np.max(np.abs(logits[0] - expected[i]))))
    return worst


def quantize(fp32_path: Path, int8_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(fp32_path), str(int8_path), weight_type=QuantType.QInt8)


def terms_of(licences: dict[str, str]) -> str:
    """What a model inherits from its data: share-alike and non-commercial terms reach it."""
    binding = [f"{name} ({licence})" for name, licence in licences.items()
               if "NonCommercial" in licence or "ShareAlike" in licence or "unknown" in licence]
    if not binding:
        return "trained only on permissively licensed data: " + ", ".join(f"{k} ({v})" for k, v in licences.items())
    return ("weights derived from " + ", ".join(binding) + ": the model inherits these terms "
            "(non-commercial use, share-alike); the other data: "
            + (", ".join(f"{k} ({v})" for k, v in licences.items() if f"{k} ({v})" not in binding) or "none"))


def starting_point(run_args: dict) -> tuple[dict | None, dict[str, str]]:
    """(what the run started from, the licences it brings) when it was initialised from an
    exported model (train --init): its weights carry what that model was trained on."""
    init = run_args.get("init")
    card_path = Path(init).with_suffix(".json") if init else None
    if card_path is None or not card_path.exists():
        return ({"path": init} if init else None), {}
    card = json.loads(card_path.read_text())
    sources = card["training"]["data"].get("sources", {})
    licences = card.get("licences") or ({"music21 corpus": prepare.MUSIC21_LICENCE} if sources.get("corpus") else {})
    return {"path": init, "onnx_sha256": card.get("onnx_sha256"), "data_sources": sources,
            "held_out_bits_per_event": card.get("held_out_bits_per_event")}, licences


def run_record(run: Path, run_args: dict, data_manifest: dict, report: dict) -> dict:
    """This run as one link of the model's lineage (improvd.lineage reads it)."""
    state_path = run / "state.json"
    state = json.loads(state_path.read_text())
    started = run_args.get("started") or time.strftime(  # runs from before args.json kept it
        "%Y-%m-%dT%H:%MZ", time.gmtime(state_path.stat().st_mtime - state.get("elapsed_s", 0)))
    sources = data_manifest.get("sources", {})
    return {
        "started": started,
        "minutes": round(state.get("elapsed_s", 0) / 60, 1),
        "trainer": run_args.get("trainer", "tensorflow") + (f" ({state['device']})" if "device" in state else ""),
        "data": {"sources": lineage.source_names(sources) if sources else [str(data_manifest.get("path"))],
                 "files": data_manifest.get("files"),
                 "train_events": data_manifest.get("splits", {}).get("train", {}).get("tokens")},
        "augmentation": {k: run_args.get(k, 0) for k in ("transpose", "stretch", "velocity_scale")},
        "recipe": {k: run_args.get(k) for k in ("layers", "units", "embedding", "seq_len", "batch", "lr", "lr_final",
                                                "clip_norm", "dropout", "max_minutes", "minutes")
                   if run_args.get(k) is not None},
        "figures": {"validation_bits_per_event": state.get("best_val_bits_per_event"),
                    "test_bits_per_event": report.get("int8_bits_per_event", report["fp32_bits_per_event"]),
                    "test_fp32_bits_per_event": report["fp32_bits_per_event"]},
    }


def earlier_runs(run_args: dict) -> list[dict]:
    """The lineage of the model this run started from (train --init an exported .onnx)."""
    init = run_args.get("init")
    if not init:
        return []
    card_path = Path(init).with_suffix(".json")
    if Path(init).suffix != ".onnx" or not card_path.exists():
        return [{"data": {"sources": [f"unknown: weights from {init}"]}}]
    return lineage.runs(json.loads(card_path.read_text()))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default=RUN, help="training output folder (args.json + weights)")
    parser.add_argument("--out", default=OUT, help="output path without suffix")
    parser.add_argument("--weights", choices=("best", "last"), default=WEIGHTS)
    parser.add_argument("--data", default=None, help="prepared data (default: the run's own)")
    parser.add_argument("--parity-tokens", type=int, default=PARITY_TOKENS)
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    parser.add_argument("--quantize", action="store_true", help="ship int8 weights")
    parser.add_argument("--max-quant-loss", type=float, default=MAX_QUANT_LOSS)
    args = parser.parse_args(argv)

    run = Path(args.run)
    run_args = json.loads((run / "args.json").read_text())
    # read before anything is written: --out may be the very model this run started from
    started_from, inherited = starting_point(run_args)
    earlier = earlier_runs(run_args)
    layers, units = run_args["layers"], run_args["units"]
    data = Path(args.data or run_args["data"])
    model = train.build_model(layers, units, run_args["embedding"], run_args["dropout"])
    keras_weights = run / f"{args.weights}.weights.h5"
    if keras_weights.exists():
        model.load_weights(keras_weights)
    else:  # a PyTorch run (improvd_train.torch_train): Keras-layout arrays
        train.set_keras_arrays(model, dict(np.load(run / f"{args.weights}.weights.npz")), run)

    validation = train.load_split(data, "validation")
    test = train.load_split(data, "test")
    parity_tokens = np.concatenate(validation)[: args.parity_tokens]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx_path = out.with_suffix(".onnx")

    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        convert(model, layers, units, fp32_path)
        worst = check_parity(model, fp32_path, parity_tokens, layers, units)
        print(f"export: parity over {len(parity_tokens)} tokens: max |diff| = {worst:.2e}")
        if not worst <= args.tolerance:
            raise ExportError(f"parity failed: {worst:.2e} > {args.tolerance:.0e}")
        fp32_bits = evaluate.model_bits_per_event(fp32_path, test)
        print(f"export: fp32 held-out {fp32_bits:.4f} bits/event")
        report = {"parity_max_abs_diff": worst, "parity_tokens": len(parity_tokens),
                  "fp32_bits_per_event": fp32_bits}
        chosen = fp32_path
        if args.quantize:
            int8_path = Path(tmp) / "int8.onnx"
            quantize(fp32_path, int8_path)
            int8_bits = evaluate.model_bits_per_event(int8_path, test)
            loss = int8_bits / fp32_bits - 1
            print(f"export: int8 held-out {int8_bits:.4f} bits/event ({loss:+.2%})")
            if loss > args.max_quant_loss:
                raise ExportError(f"int8 costs {loss:.2%} bits/event, more than {args.max_quant_loss:.0%}")
            report.update(int8_bits_per_event=int8_bits, quantization_loss=loss)
            chosen = int8_path
        onnx_path.write_bytes(chosen.read_bytes())

    manifest_path = data / "manifest.json"
    data_manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"path": str(data)}
    data_manifest["skipped"] = len(data_manifest.get("skipped", []))  # the count; the list stays with the data
    licences = {**inherited, **data_manifest.get("licences", {})}
    metadata = {
        "format_version": FORMAT_VERSION,
        "vocab": vocab.spec(),
        "architecture": {"layers": layers, "units": units, "embedding": run_args["embedding"],
                         "cell": "lstm", "dropout": run_args["dropout"]},
        "precision": "int8" if args.quantize else "fp32",
        "training": {
            "arguments": run_args,
            "data": data_manifest,
            "state": json.loads((run / "state.json").read_text()),
            "weights": args.weights,
            "started_from": started_from,
        },
        "licences": licences,
        "terms": terms_of(licences),
        "lineage": earlier + [run_record(run, run_args, data_manifest, report)],
        "held_out_bits_per_event": report.get("int8_bits_per_event", report["fp32_bits_per_event"]),
        "export": report,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "onnx_file": onnx_path.name,
    }
    out.with_suffix(".json").write_text(json.dumps(metadata, indent=2))
    print(f"export: wrote {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json')}")


if __name__ == "__main__":
    try:
        main()
    except ExportError as err:
        print(f"export: {err}", file=sys.stderr)
        sys.exit(1)
