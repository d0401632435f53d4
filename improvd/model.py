"""The ONNX step model: one LSTM step per event, state held outside the graph."""

FORMAT_VERSION = 1
