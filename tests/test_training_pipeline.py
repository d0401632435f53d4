"""The offline pipeline end to end, on a handful of pieces and a tiny model: prepare -> train
one epoch -> export (parity, int8) -> evaluate -> listen, each as its own
`python -m improvd_train.<name>`, the way `make model` runs them; plus the n-gram baseline against
its definition."""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest

from improvd import vocab
from improvd.model import FORMAT_VERSION
from improvd_train import evaluate, listen
from improvd_train.train import load_split, piece_gap
from tests.performance_fixtures import asap_like, pop_like

ROOT = Path(__file__).resolve().parents[1]
LAYERS, UNITS, EMBEDDING = 2, 32, 16
SPLITS = ("train", "validation", "test")
UNIFORM_BITS = math.log2(vocab.VOCAB_SIZE)


def run(module: str, *args) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"improvd_train.{module}", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"improvd_train.{module} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    data, run_dir, out = tmp / "data", tmp / "run", tmp / "exported" / "tiny"
    asap, pop = asap_like(tmp / "midi"), pop_like(tmp / "midi")
    prepared = run("prepare", "--corpus", "essenFolksong,bach", "--limit", 2, "--performances", asap,
                   "--folder", pop, "--out", data)
    run("train", "--data", data, "--out", run_dir, "--layers", LAYERS, "--units", UNITS,
        "--embedding", EMBEDDING, "--epochs", 1, "--steps-per-epoch", 3, "--seq-len", 64,
        "--batch", 8)
    exported = run("export", "--run", run_dir, "--weights", "last", "--out", out, "--quantize")
    evaluated = run("evaluate", "--model", out.with_suffix(".onnx"), "--data", data,
                    "--report", tmp / "eval.json", "--latency-steps", 300)
    listened = run("listen", "--model", out.with_suffix(".onnx"), "--data", data, "--per-kind", 1,
                   "--report", tmp / "listen.json")
    midi_bits = run("evaluate", "--model", out.with_suffix(".onnx"), "--midi", pop)
    return SimpleNamespace(data=data, run=run_dir, onnx=out.with_suffix(".onnx"),
                           metadata=json.loads(out.with_suffix(".json").read_text()),
                           report=json.loads((tmp / "eval.json").read_text()),
                           listen=json.loads((tmp / "listen.json").read_text()),
                           prepared=prepared, exported=exported, evaluated=evaluated, listened=listened,
                           midi_bits=midi_bits)


# ---- prepare --------------------------------------------------------------------------


def test_prepared_arrays_agree_with_the_manifest(pipeline):
    manifest = json.loads((pipeline.data / "manifest.json").read_text())
    assert manifest["vocab"] == vocab.spec()
    assert manifest["sources"]["corpus"] == ["essenFolksong", "bach"]
    assert len(manifest["sources"]["folders"]) == len(manifest["sources"]["performances"]) == 1
    assert manifest["files"] == 2 + 2 + 13 + 6  # two files per collection, the two MIDI folders
    assert manifest["skipped"] == []
    for split in SPLITS:
        archive = np.load(pipeline.data / f"{split}.npz")
        tokens, offsets = archive["tokens"], archive["offsets"]
        assert tokens.dtype == np.int16 and tokens.ndim == 1
        assert 0 <= tokens.min() and tokens.max() < vocab.VOCAB_SIZE
        assert offsets[0] == 0 and offsets[-1] == len(tokens)
        assert np.all(np.diff(offsets) > 0)  # no empty piece
        assert manifest["splits"][split]["pieces"] == len(offsets) - 1
        assert manifest["splits"][split]["tokens"] == len(tokens)
        assert manifest["splits"][split]["pieces"] > 0
    pieces = sum(manifest["splits"][s]["pieces"] for s in SPLITS)
    tokens = sum(manifest["splits"][s]["tokens"] for s in SPLITS)
    assert f"23 files, {pieces} pieces, {tokens} tokens, 0 skipped" in pipeline.prepared
    assert manifest["splits"]["train"]["pieces"] > 5 * manifest["splits"]["test"]["pieces"]


# ---- train ----------------------------------------------------------------------------


def test_training_run_records_its_arguments_and_state(pipeline):
    args = json.loads((pipeline.run / "args.json").read_text())
    assert (args["layers"], args["units"], args["embedding"]) == (LAYERS, UNITS, EMBEDDING)
    assert (args["seq_len"], args["batch"], args["epochs"]) == (64, 8, 1)
    assert Path(args["data"]) == pipeline.data
    assert args["vocab"] == vocab.spec()
    state = json.loads((pipeline.run / "state.json").read_text())
    assert state["epoch"] == 1
    assert math.isfinite(state["best_val_loss"])
    assert state["best_val_bits_per_event"] == pytest.approx(state["best_val_loss"] / math.log(2))
    assert 0 < state["best_val_bits_per_event"] < UNIFORM_BITS + 0.5  # barely trained: ~uniform
    assert state["tokens_per_s"] > 0
    for name in ("last.weights.h5", "best.weights.h5", "curve.png"):
        assert (pipeline.run / name).stat().st_size > 0
    assert len((pipeline.run / "log.csv").read_text().splitlines()) == 2  # header + one epoch


@pytest.mark.parametrize("strategy", ["mirrored", "multiworker"])
def test_tf_distribute_strategies_train_and_resume(pipeline, tmp_path, strategy, monkeypatch):
    """Scale-out goes through tf.distribute; here a one-device mirror and a one-worker
    cluster from TF_CONFIG, which is what each machine of a real cluster runs."""
    if strategy == "multiworker":
        cluster = {"cluster": {"worker": ["localhost:23456"]}, "task": {"type": "worker", "index": 0}}
        monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    common = ("--data", pipeline.data, "--out", tmp_path, "--layers", 1, "--units", 16, "--embedding", 8,
              "--steps-per-epoch", 2, "--seq-len", 32, "--batch", 8, "--strategy", strategy)
    run("train", *common, "--epochs", 1)
    run("train", *common, "--epochs", 2, "--resume")
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["epoch"] == 2 and math.isfinite(state["best_val_loss"])
    assert json.loads((tmp_path / "args.json").read_text())["earlier"][0]["until_epoch"] == 1
    assert len((tmp_path / "log.csv").read_text().splitlines()) == 3  # header + both epochs


@pytest.mark.xfail(strict=True, reason="Keras 3's fit() cannot take MultiWorkerMirroredStrategy's per-replica "
                   "batches with more than one worker (keras-team/keras#20585, tensorflow/tensorflow#72388): "
                   "scale-out across processes goes through torch.distributed (test_training_torch.py)")
def test_two_worker_processes_train_one_model(pipeline, tmp_path):
    """A real cluster on this machine: two processes, one TF_CONFIG each, gradients all-reduced
    between them, so both end with the same weights."""
    import socket

    import h5py

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("localhost", 0))
            ports.append(s.getsockname()[1])
    workers = [f"localhost:{port}" for port in ports]
    processes = []
    for index in range(2):
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": {"worker": workers},
                                                      "task": {"type": "worker", "index": index}})}
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "improvd_train.train", "--data", str(pipeline.data), "--out",
             str(tmp_path / f"worker{index}"), "--layers", "1", "--units", "16", "--embedding", "8",
             "--steps-per-epoch", "2", "--seq-len", "32", "--batch", "8", "--epochs", "1",
             "--strategy", "multiworker"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:  # a worker whose peer failed waits for it for ever: never leave one behind
        for p in processes:
            p.kill()
            p.wait()
    assert [p.returncode for p in processes] == [0, 0], "\n".join(outputs)

    def weights(index):
        with h5py.File(tmp_path / f"worker{index}" / "last.weights.h5") as f:
            arrays = []
            f.visititems(lambda name, item: arrays.append(np.array(item)) if isinstance(item, h5py.Dataset) else None)
            return arrays

    first, second = weights(0), weights(1)
    assert len(first) == len(second) > 0
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))


def test_training_can_start_from_an_exported_model(pipeline, tmp_path):
    """Fine-tuning a shipped model (whose checkpoint is gone) starts from its .onnx: the
    int8 weights, dequantized, give the Keras model the exported model's predictions."""
    from improvd_train.train import build_model, load_exported_weights

    tokens = np.concatenate(load_split(pipeline.data, "test"))[:48]
    session = onnxruntime.InferenceSession(str(pipeline.onnx), providers=["CPUExecutionProvider"])
    h = np.zeros((LAYERS, 1, UNITS), np.float32)
    c = np.zeros_like(h)
    streamed = []
    for token in tokens:
        logits, h, c = session.run(None, {"token": np.array([token], np.int32), "h": h, "c": c})
        streamed.append(logits[0])
    model = build_model(LAYERS, UNITS, EMBEDDING, 0.0)
    fresh = model.predict(tokens[None, :], verbose=0)[0]
    load_exported_weights(model, pipeline.onnx)
    loaded = model.predict(tokens[None, :], verbose=0)[0]
    # int8 weights and activations stream close to the dequantized weights in fp32; a model
    # that did not load them is ten times further off (a tiny, briefly trained model's logits
    # span little, so the bound is relative to that distance, not to their size)
    loaded_off, fresh_off = np.abs(loaded - streamed).max(), np.abs(fresh - streamed).max()
    assert loaded_off <= 0.1 * fresh_off, (loaded_off, fresh_off)
    run("train", "--data", pipeline.data, "--out", tmp_path, "--layers", LAYERS, "--units", UNITS,
        "--embedding", EMBEDDING, "--epochs", 1, "--steps-per-epoch", 1, "--seq-len", 64, "--batch", 8,
        "--init", pipeline.onnx)
    assert json.loads((tmp_path / "args.json").read_text())["init"] == str(pipeline.onnx)
    run("export", "--run", tmp_path, "--weights", "last", "--out", tmp_path / "tuned")
    card = json.loads((tmp_path / "tuned.json").read_text())
    assert card["training"]["started_from"]["onnx_sha256"] == pipeline.metadata["onnx_sha256"]
    assert card["licences"] == pipeline.metadata["licences"]  # what the starting model saw reaches this one
    # the lineage: the starting model's runs, then this one, each with its data, time and figures
    assert card["lineage"][:-1] == pipeline.metadata["lineage"] and len(pipeline.metadata["lineage"]) == 1
    latest = card["lineage"][-1]
    assert latest["figures"]["test_bits_per_event"] == card["held_out_bits_per_event"]
    assert latest["started"] == json.loads((tmp_path / "args.json").read_text())["started"]
    assert latest["augmentation"]["transpose"] > 0 and latest["data"]["files"] == pipeline.metadata["training"][
        "data"]["files"]


def test_a_fine_tuned_model_inherits_the_licences_of_the_model_it_started_from(tmp_path):
    from improvd_train.export import starting_point, terms_of
    from improvd_train.prepare import MUSIC21_LICENCE

    old = tmp_path / "scores.onnx"  # a card from before cards named licences: its sources tell
    old.with_suffix(".json").write_text(json.dumps(
        {"onnx_sha256": "ab", "held_out_bits_per_event": 1.4,
         "training": {"data": {"sources": {"corpus": ["bach"], "folders": []}}}}))
    started, licences = starting_point({"init": str(old)})
    assert started["onnx_sha256"] == "ab" and licences == {"music21 corpus": MUSIC21_LICENCE}
    cc = {"asap": "Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International"}
    old.with_suffix(".json").write_text(json.dumps({"licences": cc, "training": {"data": {}}}))
    assert starting_point({"init": str(old)})[1] == cc
    assert "inherits" in terms_of({**cc, "pop909": "MIT License"})
    assert starting_point({"init": None}) == (None, {})


# ---- export ---------------------------------------------------------------------------


def test_onnx_step_model_has_the_contract_names_and_shapes(pipeline):
    graph = onnx.load(str(pipeline.onnx)).graph
    shapes = {value.name: [d.dim_value or "batch" for d in value.type.tensor_type.shape.dim]
              for value in list(graph.input) + list(graph.output)}
    assert [v.name for v in graph.input] == ["token", "h", "c"]
    assert [v.name for v in graph.output] == ["logits", "h_out", "c_out"]
    assert shapes["token"] == ["batch"]
    for name in ("h", "c", "h_out", "c_out"):
        assert shapes[name] == [LAYERS, "batch", UNITS]
    assert shapes["logits"] == ["batch", vocab.VOCAB_SIZE]

    session = onnxruntime.InferenceSession(str(pipeline.onnx), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(int32)"
    h = np.zeros((LAYERS, 3, UNITS), np.float32)
    logits, h_out, c_out = session.run(None, {"token": np.array([0, 200, 387], np.int32),
                                              "h": h, "c": h})
    assert logits.shape == (3, vocab.VOCAB_SIZE) and h_out.shape == c_out.shape == h.shape
    assert np.all(np.isfinite(logits)) and np.any(h_out != 0)


def test_metadata_describes_the_exported_file(pipeline):
    meta = pipeline.metadata
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["vocab"] == vocab.spec()
    assert meta["onnx_file"] == pipeline.onnx.name
    assert meta["onnx_sha256"] == hashlib.sha256(pipeline.onnx.read_bytes()).hexdigest()
    assert meta["architecture"] == {"layers": LAYERS, "units": UNITS, "embedding": EMBEDDING,
                                    "cell": "lstm", "dropout": 0.05}
    assert meta["training"]["arguments"] == json.loads((pipeline.run / "args.json").read_text())
    assert meta["training"]["state"] == json.loads((pipeline.run / "state.json").read_text())
    assert meta["training"]["weights"] == "last"
    assert meta["training"]["data"]["splits"] == json.loads(
        (pipeline.data / "manifest.json").read_text())["splits"]


def test_export_checked_parity_and_quantization(pipeline):
    report = pipeline.metadata["export"]
    assert report["parity_tokens"] == 512
    assert 0 <= report["parity_max_abs_diff"] <= 1e-3
    assert "parity over 512 tokens" in pipeline.exported
    assert pipeline.metadata["precision"] == "int8"
    assert math.isfinite(report["fp32_bits_per_event"]) and math.isfinite(report["int8_bits_per_event"])
    assert report["quantization_loss"] == pytest.approx(
        report["int8_bits_per_event"] / report["fp32_bits_per_event"] - 1)
    assert report["quantization_loss"] <= 0.02
    assert pipeline.metadata["held_out_bits_per_event"] == report["int8_bits_per_event"]
    graph = onnx.load(str(pipeline.onnx)).graph
    assert "MatMulInteger" in {node.op_type for node in graph.node}
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)


# ---- evaluate -------------------------------------------------------------------------


def test_evaluation_report(pipeline):
    report = pipeline.report
    assert report["model"]["sha256"] == pipeline.metadata["onnx_sha256"]
    assert report["model"]["architecture"] == pipeline.metadata["architecture"]
    model_bits = report["model_test_bits_per_event"]
    assert model_bits == pytest.approx(pipeline.metadata["held_out_bits_per_event"], abs=1e-6)

    ngram = report["ngram"]
    orders = ngram["orders"]
    assert [row["order"] for row in orders] == list(range(1, 9))
    validation = [row["validation_bits_per_event"] for row in orders]
    assert all(math.isfinite(row["test_bits_per_event"]) for row in orders)
    assert validation[0] < UNIFORM_BITS
    assert validation[1] < validation[0] and validation[2] < validation[1]
    assert all(row["discount"] in evaluate.DISCOUNTS for row in orders)
    assert ngram["best_order"] == 1 + int(np.argmin(validation))
    best = orders[ngram["best_order"] - 1]
    assert ngram["best_test_bits_per_event"] == best["test_bits_per_event"]
    assert report["ratio_to_best_ngram"] == pytest.approx(model_bits / best["test_bits_per_event"])
    assert report["ratio_to_best_ngram"] > 1  # three training steps cannot beat counting
    targets = report["targets"]
    assert targets["ratio_to_best_ngram"] == {"value": report["ratio_to_best_ngram"], "target": 0.85, "met": False}
    assert targets["bits_per_event"]["met"] is False

    by_type = report["model_test_bits_by_event_type"]
    assert set(by_type) == {"note_on", "note_off", "time_shift", "velocity"}
    assert all(0 < bits < 3 * UNIFORM_BITS for bits in by_type.values())
    assert targets["velocity_bits"]["value"] == by_type["velocity"]
    assert set(report["model_test_bits_by_source"]) <= {"asap", "pop", "essenFolksong", "bach"}
    drift = report["model_test_bits_never_reset"] - model_bits
    assert drift != 0 and targets["never_reset_minus_reset"]["value"] == pytest.approx(drift)

    tokens = report["data"]["tokens"]
    for split in SPLITS:
        pieces = json.loads((pipeline.data / "manifest.json").read_text())["splits"][split]
        assert tokens[split] == pieces["tokens"] + pieces["pieces"] * len(piece_gap())

    step = report["latency"]
    assert (step["threads"], step["batch"], step["steps"]) == (1, 1, 300)
    assert 0 < step["p50_us"] <= step["p99_us"]
    assert step["target_p99_us"] == 250
    assert step["target_met"] == (step["p99_us"] <= 250)
    machine = report["machine"]
    assert machine["onnxruntime"] == onnxruntime.__version__ and machine["cpu"]
    datetime.datetime.fromisoformat(machine["date"])
    assert re.search(rf"n-gram order {ngram['best_order']} .*<- best on validation",
                     pipeline.evaluated)


def test_losses_are_per_piece_with_reset_and_carry_on_without(pipeline):
    pieces = [p for p in load_split(pipeline.data, "test") if len(p) > 50][:3]
    assert len(pieces) == 3
    alone = [evaluate.token_losses(pipeline.onnx, [piece], reset=True, lanes=1)[0] for piece in pieces]
    assert [len(a) for a in alone] == [len(p) - 1 for p in pieces]
    together = evaluate.token_losses(pipeline.onnx, pieces, reset=True, lanes=2)
    for mine, reference in zip(together, alone, strict=True):  # int8 scales follow the batch a little
        assert abs(mine.mean() - reference.mean()) < 0.02
    running = evaluate.token_losses(pipeline.onnx, pieces, reset=False, lanes=1)
    np.testing.assert_allclose(running[0], alone[0], rtol=1e-5)  # the first piece starts fresh either way
    assert not np.allclose(running[1], alone[1]) and not np.allclose(running[2], alone[2])


def test_listener_compares_answers_and_the_reference_with_the_primer(pipeline):
    summary = pipeline.listen["summary"]
    assert set(summary) == {"classical", "pop"}  # asap-like and pop-like folders
    for kind, rows in summary.items():
        reference, answers = rows["reference"], rows["improvd (default)"]
        assert reference["primers"] == answers["primers"] == 1
        assert reference["empty"] == 0 and reference["notes"] > 10
        assert all(reference[aspect] >= 0 for aspect in listen.ASPECTS)
        assert 0 <= reference["echo"] <= 1 and 0 <= reference["short"] <= 1
        verdict = pipeline.listen["verdicts"][kind]["improvd (default)"]
        assert set(verdict["ratios"]) == set(listen.ASPECTS)
        assert set(verdict["met"]) == {"every aspect ratio", "mean ratio", "short notes", "pitch-class correlation",
                                       "register", "not an echo"}
    assert "mean ratio" in pipeline.listened and "echo share" in pipeline.listened


def test_bits_of_a_midi_folder_with_and_without_the_memory(pipeline):
    last = pipeline.midi_bits.strip().splitlines()[-1]
    match = re.fullmatch(r"bits/event: model (\d+\.\d{3}), with memory (\d+\.\d{3})", last)
    assert match, last
    model_bits, with_memory = map(float, match.groups())
    assert 0 < with_memory < model_bits  # the fixture songs repeat themselves; the memory hears it


# ---- the n-gram baseline --------------------------------------------------------------


def periodic(period: np.ndarray, repeats: int, start: int = 0) -> np.ndarray:
    return np.tile(np.roll(period, -start), repeats).astype(np.int32)


def test_ngram_learns_a_periodic_sequence():
    period = np.random.default_rng(3).permutation(vocab.VOCAB_SIZE)[:16]
    result = evaluate.ngram_baseline(periodic(period, 200), periodic(period, 100, 5),
                                     periodic(period, 100, 11))
    test = [row["test_bits_per_event"] for row in result["orders"]]
    assert test[0] == pytest.approx(math.log2(16), abs=0.05)  # 16 tokens, equally often
    assert test[7] < 0.01  # the past gives the next token away (but for the first few)
    assert result["best_test_bits_per_event"] < 0.01


def test_ngram_needs_context_to_resolve_a_small_alphabet():
    period = np.random.default_rng(4).integers(0, 4, 60)  # 4 tokens, 60 long: ambiguous locally
    result = evaluate.ngram_baseline(periodic(period, 100), periodic(period, 10, 7),
                                     periodic(period, 10, 31))
    validation = [row["validation_bits_per_event"] for row in result["orders"]]
    assert validation[0] > 1.5
    assert all(b <= a + 1e-9 for a, b in zip(validation, validation[1:], strict=False))
    assert validation[7] < 0.05


def reference_probability(train: list[int], history: list[int], token: int, order: int,
                          discount: float, top: bool = True) -> float:
    """Interpolated Kneser-Ney written out from its definition, one probability at a time."""
    if order == 0:
        return 1 / vocab.VOCAB_SIZE
    lower = reference_probability(train, history, token, order - 1, discount, top=False)
    n = order - 1
    if len(history) < n:
        return lower
    context = history[len(history) - n:]
    counts: dict[int, int] = {}
    lefts: dict[int, set[int]] = {}
    for i in range(n, len(train)):
        if train[i - n:i] == context:
            counts[train[i]] = counts.get(train[i], 0) + 1
            if i - n >= 1:
                lefts.setdefault(train[i], set()).add(train[i - n - 1])
    if not top:
        counts = {w: len(s) for w, s in lefts.items()}
    total = sum(counts.values())
    if total == 0:
        return lower
    return (max(counts.get(token, 0) - discount, 0) + discount * len(counts) * lower) / total


def test_ngram_matches_the_definition_of_kneser_ney():
    rng = np.random.default_rng(5)
    train = rng.integers(0, 5, 200).astype(np.int32)
    train[50:90] = train[10:50]  # some long repeats, so high orders have something to count
    held_out = np.concatenate([train[20:40], rng.integers(0, 6, 20)]).astype(np.int32)
    statistics = evaluate.NGram(train, max_order=4).statistics(held_out)
    for discount in (0.3, 0.8):
        probabilities = evaluate.ngram_probabilities(statistics, discount)
        for order in range(1, 5):
            expected = [reference_probability(train.tolist(), held_out[:i].tolist(),
                                              int(held_out[i]), order, discount)
                        for i in range(len(held_out))]
            np.testing.assert_allclose(probabilities[order - 1], expected, rtol=1e-12)


def test_ngram_distributions_sum_to_one():
    rng = np.random.default_rng(6)
    train = rng.integers(0, 12, 3000).astype(np.int32)
    model = evaluate.NGram(train)
    contexts = [train[:7], train[-7:], train[1000:1007], rng.integers(0, 12, 7),
                np.array([300, 301], np.int32), np.zeros(0, np.int32)]
    for context in contexts:
        candidates = [np.append(context, token).astype(np.int32)
                      for token in range(vocab.VOCAB_SIZE)]
        for discount in (0.1, 1.0):
            totals = sum(np.array([p[-1] for p in evaluate.ngram_probabilities(
                model.statistics(stream), discount)]) for stream in candidates)
            np.testing.assert_allclose(totals, 1.0, rtol=1e-9)


def test_a_run_without_a_recorded_start_is_dated_from_its_state(tmp_path):
    """Runs whose args.json predates the `started` key still get a start date in the lineage."""
    from improvd_train.export import run_record

    state = tmp_path / "state.json"
    state.write_text(json.dumps({"elapsed_s": 3600.0, "best_val_bits_per_event": 5.0}))
    ended = datetime.datetime(2026, 11, 30, 6, 0, tzinfo=datetime.UTC).timestamp()
    os.utime(state, (ended, ended))
    record = run_record(tmp_path, {"transpose": 6, "stretch": 0.15},
                        {"sources": {"performances": ["../shared/data/asap"], "folders": ["../shared/data/pop909"]},
                         "files": 1846}, {"fp32_bits_per_event": 5.1, "int8_bits_per_event": 5.11})
    assert record["started"] == "2026-11-30T05:00Z" and record["minutes"] == 60.0
    assert record["data"]["sources"] == ["asap", "pop909"] and record["data"]["files"] == 1846
    assert record["augmentation"] == {"transpose": 6, "stretch": 0.15, "velocity_scale": 0}
    assert record["figures"]["test_bits_per_event"] == 5.11 and record["trainer"] == "tensorflow"


# ---- the player memory in the evaluation ------------------------------------------------


def test_memory_features_never_see_the_future():
    """A token's memory probability depends only on the events before it: changing the
    piece after position 60 leaves the first 59 scores untouched."""
    rng = np.random.default_rng(3)
    piece = np.tile(rng.integers(0, vocab.VOCAB_SIZE, 12), 10).astype(np.int32)
    changed = piece.copy()
    changed[60:] = rng.integers(0, vocab.VOCAB_SIZE, len(piece) - 60)
    original, other = evaluate.memory_features([piece, changed])
    np.testing.assert_array_equal(original[:59], other[:59])
    assert original[80:, 0].mean() > 0.5  # by then a period of 12 repeating tokens is known


def test_mixing_weights_fit_where_the_memory_knows():
    """Where the memory is sure and right, the fitted weights lean on it; the mixture never
    does worse than the better of its two parts by more than the grid's step."""
    rng = np.random.default_rng(0)
    n = 4000
    sure = rng.random(n) < 0.5
    features = np.stack([np.where(sure, 0.9, 0.001), np.where(sure, 6, 0), np.where(sure, 0.05, 0.9),
                         np.where(sure, 20, 1)], axis=1)
    model_bits = np.full(n, 4.0)
    fixed = evaluate.fit_fixed_weight(model_bits, features)
    assert 0 < fixed < 1
    coefficients = evaluate.fit_adaptive_weight(model_bits, features)
    from improvd.memory import FITTED_STRENGTH, adaptive_weight

    weights = adaptive_weight(features[:, 1], features[:, 2], features[:, 3], FITTED_STRENGTH, coefficients)
    assert weights[sure].min() > 0.8 and weights[~sure].max() < 0.2
    adaptive = evaluate.mixed_bits(model_bits, features, weights).mean()
    assert adaptive < evaluate.mixed_bits(model_bits, features, fixed).mean() < model_bits.mean()
