"""The GPU path on the CPU: pack -> improvd_train.torch_train (nn.LSTM) -> improvd_train.export
(parity against Keras, int8), on tiny data and a tiny model, the same commands a GPU window runs.
Skipped where PyTorch is not installed: it is no dependency of improvd or of `make test`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from improvd import vocab
from improvd_train import prepare
from tests.performance_fixtures import asap_like, pop_like

torch = pytest.importorskip("torch", reason="PyTorch is not installed (only the GPU path needs it)")

from improvd_train import torch_lstm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAYERS, UNITS, EMBEDDING = 2, 24, 8


def run(module: str, *args) -> str:
    result = subprocess.run([sys.executable, "-m", f"improvd_train.{module}", *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{module} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch")
    out = root / "prepared"
    prepare.main(["--corpus", "", "--performances", str(asap_like(root)), "--folder", str(pop_like(root)),
                  "--out", str(out)])
    return out


def test_gap_between_pieces_is_the_vocabularys_one_second():
    from improvd_train import torch_train

    assert list(torch_train.GAP) == vocab.time_shift_tokens(100)


def test_torch_weights_map_onto_keras_and_back():
    """The same weights give the same logits in nn.LSTM and in the Keras model."""
    from improvd_train import train

    keras_model = train.build_model(LAYERS, UNITS, EMBEDDING, 0.0)
    tokens = np.random.default_rng(0).integers(0, vocab.VOCAB_SIZE, (2, 40)).astype(np.int32)
    expected = keras_model.predict(tokens, verbose=0)
    model = torch_lstm.LSTMModel(vocab.VOCAB_SIZE, LAYERS, UNITS, EMBEDDING, 0.0).eval()
    torch_lstm.load_keras_arrays(model, train.keras_arrays(keras_model))
    with torch.no_grad():
        got = model(torch.from_numpy(tokens.astype(np.int64))).numpy()
    assert np.abs(got - expected).max() < 1e-4
    back = torch_lstm.keras_arrays(model)
    for key, value in train.keras_arrays(keras_model).items():
        assert np.allclose(back[key], value, atol=1e-6), key


def test_transposition_moves_notes_and_keeps_them_on_the_keyboard():
    from improvd_train import torch_train

    top = torch.tensor([[127, 127 + 128, 300, 60]])  # a window holding the top key cannot go up
    moved = torch_train.transpose(top.repeat(200, 1), 3, torch.Generator().manual_seed(0))
    pitches = moved[:, [0, 1, 3]] % 128
    assert (moved[:, 2] == 300).all()  # time shifts never move
    assert (pitches[:, 0] == pitches[:, 1]).all() and (pitches[:, 0] <= 127).all()
    assert set((moved[:, 3] - 60).tolist()) == {-3, -2, -1, 0}


def test_a_torch_run_exports_through_the_parity_check(data, tmp_path):
    pack = tmp_path / "pack.npz"
    run("pack", "--data", data, "--out", pack)
    size = pack.stat().st_size
    tokens = sum(np.load(data / f"{s}.npz")["tokens"].size for s in ("train", "validation"))
    assert size < 2 * tokens + 20_000  # two bytes an event, and a small header
    run_dir = tmp_path / "run"
    out = run("torch_train", "--pack", pack, "--out", run_dir, "--device", "cpu", "--layers", LAYERS,
              "--units", UNITS, "--embedding", EMBEDDING, "--seq-len", 32, "--batch", 4, "--steps", 4,
              "--validation-events", 256, "--checkpoint-dtype", "float16")  # as the GPU command runs it
    assert "best validation" in out
    state = json.loads((run_dir / "state.json").read_text())
    assert state["steps"] == 4 and state["best_val_bits_per_event"] < 1.2 * np.log2(vocab.VOCAB_SIZE)
    assert np.load(run_dir / "best.weights.npz")["lstm_0/0"].dtype == np.float16
    assert len((run_dir / "log.csv").read_text().splitlines()) >= 2
    exported = run("export", "--run", run_dir, "--weights", "last", "--out", tmp_path / "gpu", "--quantize")
    assert "parity over" in exported
    card = json.loads((tmp_path / "gpu.json").read_text())
    assert card["architecture"]["units"] == UNITS and card["precision"] == "int8"
    assert card["export"]["parity_max_abs_diff"] <= 1e-3
    assert card["training"]["arguments"]["trainer"] == "torch"


def test_two_processes_train_one_model_through_torch_distributed(data, tmp_path):
    """Scale-out for real on this machine: torchrun starts two processes (gloo), each trains on
    its own windows with half the batch, gradients averaged: both end with the same weights."""
    pack = tmp_path / "pack.npz"
    run("pack", "--data", data, "--out", pack)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "improvd_train.torch_train", "--pack", pack, "--out", tmp_path / "run", "--device", "cpu",
         "--layers", "1", "--units", "16", "--embedding", "8", "--seq-len", "32", "--batch", "4", "--steps", "3",
         "--validation-events", "128"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    checksums = dict(re.findall(r"process (\d) of 2: weights checksum (\S+)", output))
    assert set(checksums) == {"0", "1"}, output
    # equal to float32 rounding: each Adam step moves every weight by about the learning rate
    # (1e-3), so processes out of step would differ from the fourth digit on
    assert float(checksums["0"]) == pytest.approx(float(checksums["1"]), rel=1e-6), output
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["steps"] == 3
    trained = np.load(tmp_path / "run" / "last.weights.npz")
    assert float(sum(trained[k].astype(np.float64).sum() for k in trained.files)) == pytest.approx(
        float(checksums["0"]), rel=1e-5)  # the weights written are the ones both processes hold
