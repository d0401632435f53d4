import json
import logging
import shutil

import numpy as np
import pytest

from improvd import vocab
from improvd.errors import ModelError
from improvd.model import FORMAT_VERSION, StepModel
from tests.engine_helpers import MODEL_PATH, StatefulModel


@pytest.fixture
def model_copy(tmp_path):
    onnx = tmp_path / "m.onnx"
    shutil.copy(MODEL_PATH, onnx)
    shutil.copy(MODEL_PATH.with_suffix(".json"), onnx.with_suffix(".json"))
    return onnx


def edit_metadata(onnx, change):
    path = onnx.with_suffix(".json")
    metadata = json.loads(path.read_text())
    change(metadata)
    path.write_text(json.dumps(metadata))


def test_shipped_model_follows_the_contract():
    model = StatefulModel(MODEL_PATH, device="cpu", batch=3)
    logits = model.step([1, 2, 3])
    assert logits.shape == (3, vocab.VOCAB_SIZE)
    assert model.h.shape == (model.layers, 3, model.units) == model.c.shape
    assert np.isfinite(logits).all()
    assert model.metadata["format_version"] == FORMAT_VERSION


def test_snapshot_and_restore_reproduce_the_same_future():
    model = StatefulModel(MODEL_PATH, device="cpu")
    for token in (300, 360, 60):
        model.step([token])
    saved = model.snapshot()
    first = model.step([64]).copy()
    model.step([70])
    model.restore(saved)
    assert np.array_equal(model.step([64]), first)


def test_batch_rows_are_independent():
    """Up to int8 rounding: dynamic quantization picks one activation scale per batch."""
    model = StatefulModel(MODEL_PATH, device="cpu", batch=2)
    single = StatefulModel(MODEL_PATH, device="cpu")
    for token in (60, 300, 188):
        both = model.step([token, 62])
        alone = single.step([token])
    def probabilities(logits):
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()

    def distance(a, b):  # total variation between two next-event distributions
        return 0.5 * np.abs(probabilities(a) - probabilities(b)).sum()

    assert distance(both[0], alone[0]) < 0.02
    assert distance(both[0], both[1]) > 0.2  # and the other row really is another stream


def test_vocabulary_mismatch_is_refused_naming_the_file(model_copy):
    edit_metadata(model_copy, lambda m: m["vocab"].update(size=400))
    with pytest.raises(ModelError, match=r"m\.json: vocabulary differs.*size: model 400 != 388"):
        StepModel(model_copy, device="cpu")


def test_format_version_mismatch_is_refused(model_copy):
    edit_metadata(model_copy, lambda m: m.update(format_version=99))
    with pytest.raises(ModelError, match="format_version 99, this improvd reads 1"):
        StepModel(model_copy, device="cpu")


def test_changed_onnx_file_is_refused(model_copy):
    model_copy.write_bytes(model_copy.read_bytes()[:1000])
    with pytest.raises(ModelError, match="sha256 differs"):
        StepModel(model_copy, device="cpu")


def test_missing_files_are_named(tmp_path, model_copy):
    with pytest.raises(ModelError, match="nothing.onnx: model file not found"):
        StepModel(tmp_path / "nothing.onnx")
    model_copy.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="m.json: model metadata not found"):
        StepModel(model_copy)


def test_auto_device_says_which_provider_in_one_line(caplog):
    with caplog.at_level(logging.INFO, logger="improvd.model"):
        model = StepModel(MODEL_PATH, device="auto")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    expected = "CUDA" if model.provider == "cuda" else "runs on the CPU, one thread (device=auto"
    assert expected in lines[0]


def test_cuda_requested_without_a_gpu_is_a_clear_error():
    try:
        model = StepModel(MODEL_PATH, device="cuda")
    except ModelError as err:
        assert "device 'cuda' requested but unavailable" in str(err)
    else:
        assert model.provider == "cuda"
