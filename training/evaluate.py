"""Held-out bits/event of an exported model, beside the best n-gram on the same tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.train import piece_gap


def stream_of(pieces: list[np.ndarray]) -> np.ndarray:
    """Pieces joined by the same one-second gap that training puts between them."""
    gap = piece_gap()
    return np.concatenate([part for piece in pieces for part in (piece, gap)]).astype(np.int32)


def model_bits_per_event(onnx_path: Path | str, pieces: list[np.ndarray], lanes: int = 64) -> float:
    """Mean -log2 p(next token) of the step model streamed over ``pieces``: the stream is cut
    into ``lanes`` equal parts that advance together, one batched step per position."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    h_shape = session.get_inputs()[1].shape
    layers, units = h_shape[0], h_shape[2]
    stream = stream_of(pieces)
    lanes = max(1, min(lanes, len(stream) // 2))
    length = len(stream) // lanes
    grid = stream[: lanes * length].reshape(lanes, length)
    h = np.zeros((layers, lanes, units), np.float32)
    c = np.zeros_like(h)
    total = 0.0
    for position in range(length - 1):
        logits, h, c = session.run(None, {"token": grid[:, position], "h": h, "c": c})
        logits = logits.astype(np.float64)
        log_norm = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
        total += float(np.sum(log_norm - logits[np.arange(lanes), grid[:, position + 1]]))
    return total / (lanes * (length - 1)) / np.log(2)
