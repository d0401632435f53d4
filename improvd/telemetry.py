"""Latency figures the daemon keeps about itself: bounded, thread-safe, cheap to record."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

WINDOW = 10_000  # samples kept per series: memory stays flat however long it runs


class Series:
    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=WINDOW)
        self.count = 0

    def add(self, value: float) -> None:
        self.samples.append(value)
        self.count += 1

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {"n": 0}
        values = np.fromiter(self.samples, float)
        p50, p99 = np.percentile(values, [50, 99])
        return {"n": self.count, "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "max_ms": values.max() * 1e3}


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
