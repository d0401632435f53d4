"""The ONNX step model: one LSTM step per event, the state held here, outside the graph.

Holding h/c outside the graph is what makes hearing a note cost one step however long the
performance has run, and what lets the engine snapshot and restore a speculative answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from improvd import vocab
from improvd.config import ModelConfig, choices
from improvd.errors import ModelError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
DEVICES = choices(ModelConfig, "device")


@dataclass(frozen=True)
class State:
    """A copy of the recurrent state, cheap enough to keep one per generated event."""

    h: np.ndarray
    c: np.ndarray
    logits: np.ndarray | None


def models_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where improvd-train puts the models it makes: $XDG_DATA_HOME/improvd/models."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return base / "improvd" / "models"


def named_model(value: str, env: Mapping[str, str] | None = None) -> str:
    """`--model NAME` (a bare name, no such file here) is models_dir()/NAME.onnx; a path stays a path."""
    if "/" in value or value.endswith(".onnx") or Path(value).exists():
        return value
    return str(models_dir(env) / f"{value}.onnx")


def read_metadata(onnx_path: Path) -> dict:
    """The model's JSON beside it, checked against this improvd's vocabulary and format."""
    json_path = onnx_path.with_suffix(".json")
    if not onnx_path.is_file():
        raise ModelError(f"{onnx_path}: model file not found")
    try:
        metadata = json.loads(json_path.read_text())
    except FileNotFoundError as err:
        raise ModelError(f"{json_path}: model metadata not found (export writes it beside the .onnx)") from err
    except (OSError, ValueError) as err:
        raise ModelError(f"{json_path}: unreadable model metadata: {err}") from err
    if not isinstance(metadata, dict):
        raise ModelError(f"{json_path}: model metadata is not a JSON object")
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelError(f"{json_path}: format_version {version!r}, this improvd reads {FORMAT_VERSION}")
    if metadata.get("vocab") != vocab.spec():
        difference = _vocab_difference(metadata.get("vocab"))
        raise ModelError(f"{json_path}: vocabulary differs from this improvd's: {difference}")
    architecture = metadata.get("architecture")
    if not isinstance(architecture, dict) or not all(
        isinstance(architecture.get(k), int) for k in ("layers", "units")
    ):
        raise ModelError(f"{json_path}: architecture.layers/units missing")
    expected = metadata.get("onnx_sha256")
    if expected and hashlib.sha256(onnx_path.read_bytes()).hexdigest() != expected:
        raise ModelError(f"{onnx_path}: sha256 differs from {json_path.name} (file changed or truncated)")
    return metadata


def _vocab_difference(theirs) -> str:
    ours = vocab.spec()
    if not isinstance(theirs, dict):
        return "no vocabulary spec"
    keys = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
    return ", ".join(f"{k}: model {theirs.get(k)!r} != {ours.get(k)!r}" for k in keys)


NO_CUDA_PROVIDER = "this onnxruntime build has no CUDA provider: pip install 'improvd[gpu]'"


def _cuda_available(ort) -> tuple[bool, str]:
    """Whether a CUDA session can really be created, and why not; quietly."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, _no_cuda_provider()
    if not any(Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia/version")):
        return False, "no NVIDIA driver found"
    return True, "CUDA provider and NVIDIA driver found"


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _no_cuda_provider() -> str:
    """Why the imported onnxruntime has no CUDA provider, and the command that fixes it. The CPU
    and GPU builds both install the module ``onnxruntime``: with both, whichever came last wins."""
    if _installed("onnxruntime-gpu") and _installed("onnxruntime"):
        return ("onnxruntime and onnxruntime-gpu are both installed and the CPU build's files won: "
                "pip uninstall -y onnxruntime && pip install --force-reinstall --no-deps onnxruntime-gpu")
    return NO_CUDA_PROVIDER


def _preload_cuda_libraries(ort) -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels of the [gpu] extra, so that a box with only
    the NVIDIA driver runs the CUDA provider; what it prints goes to the debug log."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            preload()
    except (OSError, RuntimeError) as err:
        log.debug("onnxruntime.preload_dlls failed: %s", err)
    if printed.getvalue().strip():
        log.debug("onnxruntime.preload_dlls: %s", " ".join(printed.getvalue().split()))


class StepModel:
    """An ONNX Runtime session over the step graph. It holds no state: callers hold theirs
    (the engine's stream, the candidates' batch) and step it with ``run``."""

    def __init__(self, onnx_path: str | Path, device: str = "auto") -> None:
        import onnxruntime as ort

        self.path = Path(onnx_path)
        self.metadata = read_metadata(self.path)
        self.layers = self.metadata["architecture"]["layers"]
        self.units = self.metadata["architecture"]["units"]
        if device not in DEVICES:
            raise ModelError(f"device {device!r}: expected one of {', '.join(DEVICES)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # measured: more threads raise the p99
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # our own log line says which provider runs
        self.session, self.provider = self._open_session(ort, options, device)
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if names != (["token", "h", "c"], ["logits", "h_out", "c_out"]):
            raise ModelError(f"{self.path}: inputs/outputs {names} do not follow the step contract")
        self.steps = 0  # for telemetry: model calls so far

    def _open_session(self, ort, options, device: str):
        if device in ("auto", "cuda"):
            usable, why = _cuda_available(ort)
            if usable:
                ort.set_default_logger_severity(4)  # a failed CUDA start logs a wall; our line says why
                _preload_cuda_libraries(ort)
                try:
                    session = ort.InferenceSession(
                        str(self.path), options, providers=["CUDAExecutionProvider", "CPUExecutionProvider"]
                    )
                except Exception as err:  # noqa: BLE001 - a broken CUDA install falls back below
                    usable, why = False, f"CUDA session failed: {str(err).splitlines()[0]}"
                else:
                    if session.get_providers()[0] == "CUDAExecutionProvider":
                        log.info("model %s runs on CUDA (%s)", self.path.name, why)
                        return session, "cuda"
                    usable, why = False, ("the CUDA provider did not start (CUDA 13 / cuDNN 9 libraries missing: "
                                     "pip install 'improvd[gpu]')")
                finally:
                    ort.set_default_logger_severity(2)
            if device == "cuda":
                raise ModelError(f"device 'cuda' requested but unavailable: {why}")
            if why == NO_CUDA_PROVIDER:  # a CPU-only install: the CPU is what it was installed for
                log.debug("device=auto: %s", why)
                log.info("model %s runs on the CPU, one thread (device=auto)", self.path.name)
            else:
                log.info("model %s runs on the CPU, one thread (device=auto: %s)", self.path.name, why)
        else:
            log.info("model %s runs on the CPU, one thread (device=cpu)", self.path.name)
        try:
            session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises several unrelated types
            raise ModelError(f"{self.path}: onnxruntime cannot load it: {str(err).splitlines()[0]}") from err
        return session, "cpu"

    def initial(self, batch: int = 1) -> State:
        """A fresh (silent) state for ``batch`` rows."""
        h = np.zeros((self.layers, batch, self.units), np.float32)
        return State(h, np.zeros_like(h), None)

    def run(self, tokens, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One step of every row: (logits [batch, vocab] for what comes next, h, c). The
        arrays are fresh each call, so a State made of them is already a copy."""
        feed = {"token": np.asarray(tokens, np.int32).reshape(h.shape[1]), "h": h, "c": c}
        logits, h_out, c_out = self.session.run(None, feed)
        self.steps += 1
        return logits, h_out, c_out

