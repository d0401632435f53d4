"""The training model in PyTorch (nn.LSTM: oneDNN on the CPU, cuDNN on CUDA), with its weights
mapped to and from the Keras layout that improvd_train.export reads.

Keras LSTM: kernel [in, 4u], recurrent_kernel [u, 4u], bias [4u]; torch: weight_ih [4u, in],
weight_hh [4u, u] and two biases. Both order the gates input, forget, cell, output, so the
mapping is a transpose and a sum of the biases. The interchange format is a .npz of the
Keras layer weights keyed "<layer>/<index>" (e.g. "lstm_0/1"): numpy only, so a machine
with PyTorch and no TensorFlow can write it.

Imports nothing from improvd: it runs where only numpy and torch are installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


class LSTMModel(nn.Module):
    """Embedding -> stacked LSTM (dropout between layers) -> logits: improvd_train.train's
    build_model, layer for layer."""

    def __init__(self, vocab_size: int, layers: int, units: int, embedding: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding)
        self.lstm = nn.LSTM(embedding, units, num_layers=layers, batch_first=True, dropout=dropout)
        self.drop = nn.Dropout(dropout)  # Keras drops after every LSTM layer, the last one too
        self.logits = nn.Linear(units, vocab_size)
        self.layers = layers

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x, _ = self.lstm(self.embedding(tokens))
        return self.logits(self.drop(x))


def keras_arrays(model: LSTMModel) -> dict[str, np.ndarray]:
    """The model's weights in the Keras layout, keyed "<layer>/<index>"."""
    arrays = {"embedding/0": model.embedding.weight, "logits/0": model.logits.weight.T,
              "logits/1": model.logits.bias}
    for i in range(model.layers):
        arrays[f"lstm_{i}/0"] = getattr(model.lstm, f"weight_ih_l{i}").T
        arrays[f"lstm_{i}/1"] = getattr(model.lstm, f"weight_hh_l{i}").T
        arrays[f"lstm_{i}/2"] = getattr(model.lstm, f"bias_ih_l{i}") + getattr(model.lstm, f"bias_hh_l{i}")
    return {k: v.detach().float().cpu().numpy().copy() for k, v in arrays.items()}


def load_keras_arrays(model: LSTMModel, arrays: dict[str, np.ndarray]) -> None:
    """Set the model's weights from Keras-layout arrays (the bias goes to bias_ih, bias_hh is 0)."""
    def put(param: torch.Tensor, value: np.ndarray) -> None:
        if tuple(param.shape) != value.shape:
            raise ValueError(f"weights of shape {value.shape} do not fit {tuple(param.shape)}: "
                             "the model's layers, units and embedding must match the weights'")
        with torch.no_grad():
            param.copy_(torch.from_numpy(np.ascontiguousarray(value, np.float32)))

    put(model.embedding.weight, arrays["embedding/0"])
    put(model.logits.weight, arrays["logits/0"].T)
    put(model.logits.bias, arrays["logits/1"])
    for i in range(model.layers):
        put(getattr(model.lstm, f"weight_ih_l{i}"), arrays[f"lstm_{i}/0"].T)
        put(getattr(model.lstm, f"weight_hh_l{i}"), arrays[f"lstm_{i}/1"].T)
        put(getattr(model.lstm, f"bias_ih_l{i}"), arrays[f"lstm_{i}/2"])
        put(getattr(model.lstm, f"bias_hh_l{i}"), np.zeros_like(arrays[f"lstm_{i}/2"]))


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a checkpoint cut off mid-write must not replace a good one."""
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as f:
        np.savez(f, **arrays)
    partial.replace(path)
