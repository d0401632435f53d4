"""Held-out bits/event of an exported model, beside the best n-gram on the same tokens.

    python -m improvd_train.evaluate --model exported/improvd.onnx --data data/corpus \\
        --report exported/improvd.eval.json

A model's bits/event means little alone: what it learned beyond local statistics shows only
next to a strong count-based baseline on the very same tokens. The baseline is an
interpolated Kneser-Ney n-gram model of every order 1..8, counted on the train
split; each order's discount is tuned on the validation split, the best order is chosen on
validation, and everything is reported on the test split, which nothing was tuned on. The
report also times the step model the way the daemon runs it (batch 1, one CPU thread), since
a model that answers late is no use on stage.

Beside the headline figure: bits per event type (a pianist's VELOCITY and TIME_SHIFT events
are where a model trained on scores was lost), bits per source folder, and the same test
pieces streamed with the state never reset (the daemon runs for hours) against a fresh
state per piece. Targets: test bits/event <= 3.2, VELOCITY <= 3.5, TIME_SHIFT <= 4, model
<= 0.85 x the best n-gram, never-reset stream within 0.05 bits of the per-piece figure,
step p99 <= 250 us.

With the player memory (improvd/memory.py): each test piece is also scored with a memory
built streaming on that piece's own earlier events (never the future), mixed with the model
by a fixed weight and by the adaptive weight, both fitted on --fit-pieces validation pieces;
by event type and by source, beside the model alone and the memory alone. Targets: with the
memory <= 0.75 x the model alone overall, <= 0.95 x on ASAP.

    python -m improvd_train.evaluate --midi ~/recordings     # any folder of MIDI files, each a piece

scores just that: every file with the model alone and with the memory (the shipped weight),
the last line reading ``bits/event: model X.XXX, with memory Y.YYY``.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from improvd import memory, vocab
from improvd.telemetry import percentiles
from improvd_train.train import load_split, piece_gap

# ---- defaults -------------------------------------------------------------------------
MODEL = "exported/improvd.onnx"
DATA = "data/performance"
MAX_ORDER = 8  # n-gram orders 1..8
DISCOUNTS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # grid tuned on validation
LANES = 64  # test streams the step model advances together, at most
PIECES_PER_LANE = 8  # each stream plays at least this many pieces in a row (when there are enough)
LATENCY_STEPS = 2000
WARMUP_STEPS = 200
TARGET_BITS = 3.2  # test bits/event
TARGET_TYPE_BITS = {"velocity": 3.5, "time_shift": 4.0}  # mean bits of one such event
TARGET_RATIO = 0.85  # model bits/event <= 0.85 x best n-gram
TARGET_DRIFT_BITS = 0.05  # never-reset stream minus per-piece reset, at most
TARGET_P99_US = 250.0  # one step on one CPU thread
FIT_PIECES = 40  # validation pieces the memory's mixing weights are fitted on
TARGET_MEMORY_RATIO = 0.75  # bits/event with the memory <= 0.75 x the LSTM alone
TARGET_MEMORY_RATIO_CLASSICAL = 0.95  # ... and <= 0.95 x on ASAP, where literal repetition is rarest
# ---------------------------------------------------------------------------------------


def stream_of(pieces: list[np.ndarray]) -> np.ndarray:
    """Pieces joined by the same one-second gap that training puts between them."""
    gap = piece_gap()
    return np.concatenate([part for piece in pieces for part in (piece, gap)]).astype(np.int32)


def _lanes_of(pieces: list[np.ndarray], lanes: int) -> list[list[int]]:
    """Pieces dealt to ``lanes`` streams of about equal length (longest first), each
    playing several pieces in a row, so that a state left running meets many of them."""
    lanes = max(1, min(lanes, -(-len(pieces) // PIECES_PER_LANE)))
    dealt: list[list[int]] = [[] for _ in range(lanes)]
    lengths = np.zeros(lanes)
    for index in sorted(range(len(pieces)), key=lambda i: -len(pieces[i])):
        lane = int(lengths.argmin())
        dealt[lane].append(index)
        lengths[lane] += len(pieces[index]) + len(piece_gap())
    return dealt


def token_losses(onnx_path: Path | str, pieces: list[np.ndarray], reset: bool = True,
                 lanes: int = LANES) -> list[np.ndarray]:
    """-log2 p of every token of every piece but its first, under the step model.

    The pieces are dealt to ``lanes`` streams that advance together, one batched step per
    position, each stream playing its pieces one after another with the training gap
    between them. With ``reset`` the state is zeroed at each piece; without, a stream's
    state runs on across its pieces the way the daemon's does for hours. The same tokens
    are scored either way, so the two are directly comparable.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    layers, _, units = session.get_inputs()[1].shape
    gap = piece_gap()
    dealt = _lanes_of(pieces, lanes)
    streams, owners, starts = [], [], []  # tokens; piece of each position (-1: gap); piece starts
    for lane in dealt:
        parts, owner, start = [], [], set()
        for index in lane:
            start.add(sum(len(p) for p in parts))
            parts += [pieces[index], gap]
            owner += [index] * len(pieces[index]) + [-1] * len(gap)
        streams.append(np.concatenate(parts).astype(np.int32))
        owners.append(np.asarray(owner))
        starts.append(start)
    length = max(len(s) for s in streams)
    grid = np.zeros((len(streams), length), np.int32)
    owner_grid = np.full((len(streams), length), -1)
    for row, (stream, owner) in enumerate(zip(streams, owners, strict=True)):
        grid[row, : len(stream)], owner_grid[row, : len(owner)] = stream, owner
    losses: list[list[float]] = [[] for _ in pieces]
    h = np.zeros((layers, len(streams), units), np.float32)
    c = np.zeros_like(h)
    rows = np.arange(len(streams))
    for position in range(length - 1):
        if reset:
            for row in rows:
                if position in starts[row]:
                    h[:, row], c[:, row] = 0.0, 0.0
        logits, h, c = session.run(None, {"token": grid[:, position], "h": h, "c": c})
        logits = logits.astype(np.float64)
        top = logits.max(1)
        log_norm = np.log(np.exp(logits - top[:, None]).sum(1)) + top
        nats = log_norm - logits[rows, grid[:, position + 1]]
        for row in rows:  # score a piece's tokens after its first, the same in both modes
            piece = owner_grid[row, position + 1]
            if piece >= 0 and owner_grid[row, position] == piece:
                losses[piece].append(nats[row] / np.log(2))
    return [np.asarray(piece_losses) for piece_losses in losses]


def model_bits_per_event(onnx_path: Path | str, pieces: list[np.ndarray], lanes: int = LANES) -> float:
    """Mean -log2 p(next token) over ``pieces``, each played from a fresh state."""
    return float(np.concatenate(token_losses(onnx_path, pieces, True, lanes)).mean())


def bits_by_event_type(pieces: list[np.ndarray], losses: list[np.ndarray]) -> dict[str, float]:
    """Mean bits of the events of each type: where a model is lost shows here first."""
    targets = np.concatenate([piece[1:] for piece in pieces])
    flat = np.concatenate(losses)
    result = {}
    for event_range in vocab.RANGES:
        offset = vocab.OFFSETS[event_range.type]
        chosen = (targets >= offset) & (targets < offset + event_range.size)
        result[event_range.type.value] = float(flat[chosen].mean()) if chosen.any() else float("nan")
    return result


# ---- the n-gram baseline --------------------------------------------------------------


def _previous(ids: np.ndarray) -> np.ndarray:
    """The id one position earlier (-1 at the first): the context of each position."""
    return np.concatenate(([-1], ids[:-1]))


def _take(table: np.ndarray, index: np.ndarray) -> np.ndarray:
    """table[index], and 0 where index is -1 (an n-gram or context never seen in training)."""
    return np.where(index >= 0, table[index], 0).astype(np.float64)


class NGram:
    """Counts of every order up to ``max_order`` over a training stream, for interpolated
    Kneser-Ney: raw counts for the top order, continuation counts (distinct left
    neighbours) for the orders below it.

    An n-gram's key is (id of its context (n-1)-gram) * VOCAB_SIZE + token, the ids being
    positions in the sorted key array of the order below, so keys stay small at any order;
    counting is np.unique, lookup np.searchsorted.
    """

    def __init__(self, stream: np.ndarray, max_order: int = MAX_ORDER) -> None:
        tokens = np.asarray(stream, np.int64)
        self.levels: list[dict[str, np.ndarray]] = []
        ids = np.zeros(len(tokens), np.int64)  # order 0: the empty context, everywhere
        contexts = 1
        for order in range(1, max_order + 1):
            context = ids if order == 1 else _previous(ids)
            seen = np.flatnonzero(context >= 0)
            keys = context[seen] * vocab.VOCAB_SIZE + tokens[seen]
            grams, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
            counts = np.bincount(inverse, minlength=len(grams))
            parents = grams // vocab.VOCAB_SIZE
            level = {
                "grams": grams,
                "parents": parents,
                "count": counts,
                "total": np.bincount(parents, counts, contexts),
                "types": np.bincount(parents, minlength=contexts),
            }
            if self.levels:  # each distinct n-gram is one left neighbour of its (n-1)-gram suffix
                below = self.levels[-1]
                left = np.bincount(ids[seen[first]], minlength=len(below["grams"]))
                below["left"] = left
                below["left_total"] = np.bincount(below["parents"], left, len(below["total"]))
                below["left_types"] = np.bincount(below["parents"], left > 0, len(below["total"]))
            self.levels.append(level)
            ids = np.full(len(tokens), -1, np.int64)
            ids[seen] = inverse
            contexts = len(grams)

    def statistics(self, stream: np.ndarray) -> list[tuple[tuple, tuple | None]]:
        """For every order, at every position of ``stream``: (count of the n-gram ending
        there, total of its context, distinct tokens after its context), raw and by left
        neighbours (None for the top order)."""
        tokens = np.asarray(stream, np.int64)
        ids = np.zeros(len(tokens), np.int64)
        result = []
        for order, level in enumerate(self.levels, 1):
            context = ids if order == 1 else _previous(ids)
            keys = context * vocab.VOCAB_SIZE + tokens  # negative where the context is unknown
            at = np.minimum(np.searchsorted(level["grams"], keys), len(level["grams"]) - 1)
            ids = np.where(level["grams"][at] == keys, at, -1)
            raw = (_take(level["count"], ids), _take(level["total"], context),
                   _take(level["types"], context))
            left = None
            if "left" in level:
                left = (_take(level["left"], ids), _take(level["left_total"], context),
                        _take(level["left_types"], context))
            result.append((raw, left))
        return result


def _interpolate(stats: tuple, lower: np.ndarray, discount: float) -> np.ndarray:
    """Absolute discounting: what the discount takes from seen tokens goes to ``lower``."""
    count, total, types = stats
    mixed = (np.maximum(count - discount, 0) + discount * types * lower) / np.maximum(total, 1)
    return np.where(total > 0, mixed, lower)


def ngram_probabilities(statistics: list, discount: float) -> list[np.ndarray]:
    """p(token at each position) under the order 1, 2, ... models, down to uniform."""
    lower = np.full(len(statistics[0][0][0]), 1 / vocab.VOCAB_SIZE)
    result = []
    for raw, left in statistics:
        result.append(_interpolate(raw, lower, discount))
        if left is not None:
            lower = _interpolate(left, lower, discount)
    return result


def bits(probabilities: np.ndarray) -> float:
    """Mean -log2 p: the one figure the model and every baseline are compared by."""
    return float(-np.mean(np.log2(probabilities)))


def ngram_baseline(train: np.ndarray, validation: np.ndarray, test: np.ndarray,
                   max_order: int = MAX_ORDER, discounts=DISCOUNTS) -> dict:
    """Each order's discount tuned on validation; the best order chosen on validation."""
    started = time.monotonic()
    model = NGram(train, max_order)
    validation_statistics = model.statistics(validation)
    tuning = np.array([[bits(p) for p in ngram_probabilities(validation_statistics, d)]
                       for d in discounts])  # [discount, order]
    chosen = [discounts[i] for i in tuning.argmin(0)]
    test_statistics = model.statistics(test)
    on_test = {d: ngram_probabilities(test_statistics, d) for d in set(chosen)}
    orders = [
        {"order": order, "discount": chosen[order - 1],
         "validation_bits_per_event": float(tuning.min(0)[order - 1]),
         "test_bits_per_event": bits(on_test[chosen[order - 1]][order - 1])}
        for order in range(1, max_order + 1)
    ]
    best = min(orders, key=lambda row: row["validation_bits_per_event"])
    return {"orders": orders, "best_order": best["order"],
            "best_test_bits_per_event": best["test_bits_per_event"],
            "seconds": round(time.monotonic() - started, 1)}


# ---- the player memory ----------------------------------------------------------------


def event_times(piece: np.ndarray) -> np.ndarray:
    """Seconds at which each token of a piece happens (its TIME_SHIFTs summed before it)."""
    ticks = np.where(piece >= vocab.TIME_SHIFT_OFFSET, piece - vocab.TIME_SHIFT_OFFSET + 1, 0)
    ticks = np.where(piece >= vocab.VELOCITY_OFFSET, 0, ticks)
    return np.cumsum(ticks) * vocab.TICK_S


def memory_features(pieces: list[np.ndarray], settings: dict | None = None) -> list[np.ndarray]:
    """For every token of every piece but its first: [p, order, escape, count] under a memory
    that has heard only that piece's earlier events, learnt one by one as they come (the
    memory is what the daemon would have built from this player by then; never the future)."""
    result = []
    for piece in pieces:
        memory_ = memory.Memory(**(settings or {}))
        times = event_times(piece)
        rows = np.empty((max(len(piece) - 1, 0), 4))
        context = memory_.learn(memory.Context(), int(piece[0]), float(times[0]))
        for i in range(1, len(piece)):
            token = int(piece[i])
            rows[i - 1] = memory_.probability(context, token)
            context = memory_.learn(context, token, float(times[i]))
        result.append(rows)
    return result


def mixed_bits(model_bits: np.ndarray, features: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    """-log2 of (1 - w) p_model + w p_memory, token by token."""
    return -np.log2((1 - weight) * np.exp2(-model_bits) + weight * features[:, 0])


def fit_fixed_weight(model_bits: np.ndarray, features: np.ndarray) -> float:
    """The one weight (0.00 .. 1.00 in steps of 0.05) with the fewest bits on these tokens."""
    grid = np.round(np.arange(0, 1.0001, 0.05), 2)
    return float(grid[int(np.argmin([mixed_bits(model_bits, features, w).mean() for w in grid]))])


def fit_adaptive_weight(model_bits: np.ndarray, features: np.ndarray, steps: int = 300) -> tuple[float, ...]:
    """The coefficients of memory.adaptive_weight that minimise bits on these tokens
    (gradient descent with Adam on the mixture's log loss; numpy only)."""
    p_model, p_memory = np.exp2(-model_bits), features[:, 0]
    x = memory.weight_features(features[:, 1], features[:, 2], features[:, 3])
    theta = np.zeros(x.shape[1])
    first, second = np.zeros_like(theta), np.zeros_like(theta)
    for step in range(1, steps + 1):
        w = 1 / (1 + np.exp(-x @ theta))
        mix = (1 - w) * p_model + w * p_memory
        # d(-ln mix)/d theta = -(p_memory - p_model) w (1 - w) / mix x
        gradient = -(((p_memory - p_model) * w * (1 - w) / mix)[:, None] * x).mean(0)
        first = 0.9 * first + 0.1 * gradient
        second = 0.999 * second + 0.001 * gradient ** 2
        theta -= 0.1 * (first / (1 - 0.9 ** step)) / (np.sqrt(second / (1 - 0.999 ** step)) + 1e-8)
    return tuple(float(t) for t in theta)


def by_groups(bits_: list[np.ndarray], pieces: list[np.ndarray], sources: list[str]) -> dict:
    """Mean bits overall, by event type and by source, of per-piece token bits."""
    flat = np.concatenate(bits_)
    return {"all": float(flat.mean()), "by_event_type": bits_by_event_type(pieces, bits_),
            "by_source": {name: float(np.concatenate([b for b, s in zip(bits_, sources, strict=True)
                                                      if s == name]).mean())
                          for name in sorted(set(sources))}}


def memory_report(onnx_path: Path, validation: list[np.ndarray], test: list[np.ndarray],
                  test_sources: list[str], test_losses: list[np.ndarray]) -> dict:
    """Bits/event on ``test`` of the LSTM alone, the memory alone, and the two mixed with a
    fixed weight and with the adaptive weight, both fitted on ``validation``."""
    started = time.monotonic()
    fit_losses = np.concatenate(token_losses(onnx_path, validation, reset=True))
    fit_features = np.concatenate(memory_features(validation))
    fixed = fit_fixed_weight(fit_losses, fit_features)
    coefficients = fit_adaptive_weight(fit_losses, fit_features)
    features = memory_features(test)
    rows = {
        "lstm": test_losses,
        "memory alone": [-np.log2(f[:, 0]) for f in features],
        f"fixed weight {fixed:.2f}": [mixed_bits(b, f, fixed) for b, f in zip(test_losses, features, strict=True)],
        "adaptive weight": [mixed_bits(b, f, memory.adaptive_weight(f[:, 1], f[:, 2], f[:, 3],
                                                                    memory.FITTED_STRENGTH, coefficients))
                            for b, f in zip(test_losses, features, strict=True)],
    }
    table = {name: by_groups(bits_, test, test_sources) for name, bits_ in rows.items()}
    lstm, adaptive = table["lstm"], table["adaptive weight"]
    ratios = {"all": adaptive["all"] / lstm["all"]}
    ratios |= {source: adaptive["by_source"][source] / lstm["by_source"][source] for source in lstm["by_source"]}
    return {"settings": {"max_order": memory.MAX_ORDER, "horizon_events": memory.HORIZON_EVENTS,
                         "horizon_s": memory.HORIZON_S, "shift_class_ticks": memory.SHIFT_CLASS_TICKS,
                         "velocity_class_bins": memory.VELOCITY_CLASS_BINS},
            "fixed_weight": fixed, "adaptive_coefficients": coefficients,
            "shipped_coefficients": list(memory.ADAPTIVE), "validation_tokens": len(fit_losses),
            "test": table, "ratio_to_lstm": ratios,
            "targets": {"all": {"value": ratios["all"], "target": TARGET_MEMORY_RATIO,
                                "met": ratios["all"] <= TARGET_MEMORY_RATIO},
                        **{source: {"value": ratios[source], "target": TARGET_MEMORY_RATIO_CLASSICAL,
                                    "met": ratios[source] <= TARGET_MEMORY_RATIO_CLASSICAL}
                           for source in ("asap",) if source in ratios}},
            "seconds": round(time.monotonic() - started, 1)}


def print_memory_report(report: dict) -> None:
    print(f"  with the player memory (built on each test piece's earlier events; weights fitted on "
          f"{report['validation_tokens']} validation tokens): bits/event")
    sources = list(report["test"]["lstm"]["by_source"])
    types = list(report["test"]["lstm"]["by_event_type"])
    print(f"    {'':<20}{'all':>8}" + "".join(f"{s:>10}" for s in sources) + "".join(f"{t:>11}" for t in types))
    for name, row in report["test"].items():
        print(f"    {name:<20}{row['all']:>8.3f}" + "".join(f"{row['by_source'][s]:>10.3f}" for s in sources)
              + "".join(f"{row['by_event_type'][t]:>11.3f}" for t in types))
    print("    adaptive coefficients (bias, order, log2(1 + count), escape): "
          + ", ".join(f"{c:.3f}" for c in report["adaptive_coefficients"]))


def midi_folder(onnx_path: Path, folder: Path, strength: float) -> None:
    """Every MIDI file of ``folder`` as a piece: bits/event of the model alone and with the
    memory (shipped adaptive weight), file by file; the last line sums them up."""
    import mido

    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    pieces, names = [], []
    for path in paths:
        try:
            tokens = np.asarray(vocab.midi_to_tokens(mido.MidiFile(path)), np.int32)
        except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as err:
            print(f"  {path}: skipped ({type(err).__name__}: {err})")
            continue
        if len(tokens) > 1:
            pieces.append(tokens)
            names.append(path.relative_to(folder))
    if not pieces:
        raise SystemExit(f"evaluate: {folder}: no MIDI file with notes")
    losses = token_losses(onnx_path, pieces, reset=True)
    features = memory_features(pieces)
    mixed = [mixed_bits(b, f, memory.adaptive_weight(f[:, 1], f[:, 2], f[:, 3], strength))
             for b, f in zip(losses, features, strict=True)]
    for name, alone, together in zip(names, losses, mixed, strict=True):
        print(f"  {name}: {len(alone)} events, model {alone.mean():.3f}, with memory {together.mean():.3f}")
    print(f"bits/event: model {np.concatenate(losses).mean():.3f}, with memory {np.concatenate(mixed).mean():.3f}")


# ---- step latency ---------------------------------------------------------------------


def step_session(onnx_path: Path | str, threads: int = 1, providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session set up as the daemon's: ``threads`` intra-op, one inter-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), options, providers=list(providers))


def step_times(session, batch: int = 1, steps: int = LATENCY_STEPS,
               warmup: int = WARMUP_STEPS) -> np.ndarray:
    """Seconds of each of ``steps`` timed calls (after ``warmup`` untimed ones), the state
    fed back from call to call as in the daemon."""
    layers, _, units = session.get_inputs()[1].shape
    h = np.zeros((layers, batch, units), np.float32)
    c = np.zeros_like(h)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab.VOCAB_SIZE, (warmup + steps, batch), np.int32)
    times = np.empty(steps)
    for i, token in enumerate(tokens):
        started = time.perf_counter()
        _, h, c = session.run(None, {"token": token, "h": h, "c": c})
        if i >= warmup:
            times[i - warmup] = time.perf_counter() - started
    return times


def latency(times: np.ndarray) -> dict:
    return {**percentiles(times, 1e6, "us"),
            "mean_us": float(times.mean() * 1e6),
            "steps_per_s": float(len(times) / times.sum())}


def machine() -> dict:
    """Where the numbers were measured: timings mean nothing without it."""
    import onnxruntime

    cpu = platform.processor()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"platform": platform.platform(), "python": platform.python_version(), "cpu": cpu,
            "cores": os.cpu_count(), "onnxruntime": onnxruntime.__version__,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=MODEL, help="exported step model (.onnx)")
    parser.add_argument("--data", default=DATA, help="prepared data (train/validation/test.npz)")
    parser.add_argument("--report", default=None, help="JSON report (default: <model>.eval.json)")
    parser.add_argument("--max-order", type=int, default=MAX_ORDER, help="highest n-gram order")
    parser.add_argument("--extra-train", action="append", default=[],
                        help="prepared data whose train split the n-gram also counts (repeatable): "
                             "does extra material help on this test split?")
    parser.add_argument("--latency-steps", type=int, default=LATENCY_STEPS,
                        help=f"timed steps (after {WARMUP_STEPS} warm-up steps)")
    parser.add_argument("--fit-pieces", type=int, default=FIT_PIECES,
                        help="validation pieces the memory's weights are fitted on (0: all)")
    parser.add_argument("--midi", type=Path, metavar="DIR",
                        help="only this: bits/event of every MIDI file in DIR (each a piece), model alone "
                             "and with the player memory")
    parser.add_argument("--memory-strength", type=float, default=memory.FITTED_STRENGTH,
                        help="with --midi: the memory's strength (0 = model alone .. 1 = memory alone; "
                             "default: the fitted weight)")
    args = parser.parse_args(argv)
    if args.midi:
        midi_folder(Path(args.model), args.midi, args.memory_strength)
        return

    model_path, data = Path(args.model), Path(args.data)
    report_path = Path(args.report) if args.report else model_path.with_suffix(".eval.json")
    metadata_path = model_path.with_suffix(".json")
    metadata = json.loads(metadata_path.read_text()) if metadata_path.exists() else {}
    splits = ("train", "validation", "test")
    streams = {split: stream_of(load_split(data, split)) for split in splits}
    extra = [stream_of(load_split(Path(folder), "train")) for folder in args.extra_train]
    streams["train"] = np.concatenate([streams["train"], *extra])

    test_pieces = load_split(data, "test")
    reset_losses = token_losses(model_path, test_pieces, reset=True)
    stream_losses = token_losses(model_path, test_pieces, reset=False)
    model_bits = float(np.concatenate(reset_losses).mean())
    stream_bits = float(np.concatenate(stream_losses).mean())
    by_type = bits_by_event_type(test_pieces, reset_losses)
    files_path = data / "files.json"
    sources = [f["piece"].split("/")[0] for f in json.loads(files_path.read_text())["test"]] \
        if files_path.exists() else ["all"] * len(test_pieces)
    by_source = by_groups(reset_losses, test_pieces, sources)["by_source"]
    validation_pieces = load_split(data, "validation")
    if args.fit_pieces and len(validation_pieces) > args.fit_pieces:
        spread = np.linspace(0, len(validation_pieces) - 1, args.fit_pieces).round().astype(int)
        validation_pieces = [validation_pieces[i] for i in spread]
    with_memory = memory_report(model_path, validation_pieces, test_pieces, sources, reset_losses)
    ngram = ngram_baseline(streams["train"], streams["validation"], streams["test"], args.max_order)
    ratio = model_bits / ngram["best_test_bits_per_event"]
    step = latency(step_times(step_session(model_path), 1, args.latency_steps))
    latency_met = step["p99_us"] <= TARGET_P99_US
    targets = {
        "bits_per_event": {"value": model_bits, "target": TARGET_BITS, "met": model_bits <= TARGET_BITS},
        **{f"{kind}_bits": {"value": by_type[kind], "target": limit, "met": by_type[kind] <= limit}
           for kind, limit in TARGET_TYPE_BITS.items()},
        "ratio_to_best_ngram": {"value": ratio, "target": TARGET_RATIO, "met": ratio <= TARGET_RATIO},
        "never_reset_minus_reset": {"value": stream_bits - model_bits, "target": TARGET_DRIFT_BITS,
                                    "met": stream_bits - model_bits <= TARGET_DRIFT_BITS},
        "step_p99_us": {"value": step["p99_us"], "target": TARGET_P99_US, "met": latency_met},
        **{f"memory_ratio_{name}": target for name, target in with_memory["targets"].items()},
    }

    report = {
        "model": {"path": str(model_path),
                  "sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
                  "precision": metadata.get("precision"),
                  "architecture": metadata.get("architecture")},
        "data": {"path": str(data), "tokens": {split: len(s) for split, s in streams.items()},
                 "extra_train": args.extra_train,
                 "test_pieces": len(test_pieces)},
        "model_test_bits_per_event": model_bits,
        "model_test_bits_by_event_type": by_type,
        "model_test_bits_by_source": by_source,
        "model_test_bits_never_reset": stream_bits,
        "ngram": ngram,
        "ratio_to_best_ngram": ratio,
        "memory": with_memory,
        "targets": targets,
        "latency": {**step, "threads": 1, "batch": 1, "steps": args.latency_steps,
                    "target_p99_us": TARGET_P99_US, "target_met": bool(latency_met)},
        "machine": machine(),
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2))

    arch = metadata.get("architecture") or {}
    size = f"{arch['layers']}x{arch['units']}" if arch else "?"
    print(f"evaluate: {model_path} ({metadata.get('precision', '?')}, {size}) on {data}, "
          f"test {len(streams['test'])} tokens")
    print(f"  {'':<16}{'validation':>12}{'test':>10}{'discount':>10}   bits/event")
    for row in ngram["orders"]:
        mark = "  <- best on validation" if row["order"] == ngram["best_order"] else ""
        print(f"  n-gram order {row['order']:<3}{row['validation_bits_per_event']:>12.4f}"
              f"{row['test_bits_per_event']:>10.4f}{row['discount']:>10.2f}{mark}")
    print(f"  {'model':<16}{'':>12}{model_bits:>10.4f}")
    print("  by event type: " + ", ".join(f"{k} {v:.3f}" for k, v in by_type.items()))
    print("  by source: " + ", ".join(f"{k} {v:.3f}" for k, v in by_source.items()))
    print(f"  state never reset: {stream_bits:.4f} (reset per piece: {model_bits:.4f})")
    print_memory_report(with_memory)
    print(f"  step latency, 1 thread, batch 1: p50 {step['p50_us']:.0f} us, p99 {step['p99_us']:.0f} us")
    for name, target in targets.items():
        print(f"  target {name:<26} {target['value']:>9.3f} <= {target['target']:<7} "
              f"{'met' if target['met'] else 'MISSED'}")
    print(f"evaluate: wrote {report_path}")


if __name__ == "__main__":
    main()
