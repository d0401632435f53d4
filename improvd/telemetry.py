"""Latency figures the daemon keeps about itself: bounded, thread-safe, cheap to record."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

WINDOW = 10_000  # samples kept per series: memory stays flat however long it runs


def percentiles(seconds, scale: float = 1e3, unit: str = "ms") -> dict[str, float]:
    """n, p50, p99 and max of durations in seconds, each times ``scale`` and named for
    ``unit`` (p50_ms ...): the one summary the daemon, the benchmarks and the evaluation use."""
    values = np.asarray(seconds, float)
    if not values.size:
        return {"n": 0}
    p50, p99 = np.percentile(values, [50, 99])
    return {"n": int(values.size), f"p50_{unit}": float(p50 * scale), f"p99_{unit}": float(p99 * scale),
            f"max_{unit}": float(values.max() * scale)}


class Series:
    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=WINDOW)
        self.count = 0

    def add(self, value: float) -> None:
        self.samples.append(value)
        self.count += 1

    def summary(self) -> dict[str, float]:
        return {**percentiles(self.samples), "n": self.count}


class Telemetry:
    """Named latency series plus counters, read by the periodic log line and the status."""

    # candidate_generation: wall time generating and scoring an answer's candidates;
    # candidate_slack: from every candidate being ready to the answer starting;
    # onset_to_grid: how far improvd's onsets are scheduled from the grid, while a tempo is known.
    SERIES = ("input_to_state", "phrase_end_to_first_note", "output_lateness", "candidate_generation",
              "candidate_slack", "onset_to_grid")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.series = {name: Series() for name in self.SERIES}
        self.counters: dict[str, int] = {}

    def record(self, name: str, seconds: float) -> None:
        with self._lock:
            self.series[name].add(seconds)

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + amount

    def snapshot(self) -> dict:
        with self._lock:
            return {"latency": {k: s.summary() for k, s in self.series.items()}, "counters": dict(self.counters)}

    def line(self, extra: dict[str, object] | None = None) -> str:
        """One log line: every series as p50/p99/max in ms, then the counters."""
        snap = self.snapshot()
        parts = []
        for name, s in snap["latency"].items():
            if s["n"]:
                figures = f"p50={s['p50_ms']:.2f} p99={s['p99_ms']:.2f} max={s['max_ms']:.2f} ms"
                parts.append(f"{name} {figures} (n={s['n']})")
        counters = {**snap["counters"], **(extra or {})}
        parts += [f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(counters.items())]
        return "; ".join(parts) if parts else "no activity yet"
