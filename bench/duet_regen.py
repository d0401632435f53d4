"""Where duet loses time: the engine's work per player event, in real time, in this process.

    python bench/duet_regen.py [--seconds 20] [--out bench/results/duet_regen.json]

A player loops a phrase (a note every 120 ms, held 100 ms) into an Engine in duet mode with
the shipped model, driven the way the daemon's loop drives it (``on_message`` then
``poll`` on the real monotonic clock). For every player event it records how long that work
took until its first regenerated messages could be queued (the rollback, the fold, and the
first poll) and, for every message any poll produced, how late it already was when it was
handed to the scheduler: a message due before it exists can only be sent late. Two rows: the
whole lookahead regenerated in one poll, and the daemon's GENERATE_STEPS events per poll.
A benchmark, not a test: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import mido
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from improvd import engine  # noqa: E402
from improvd.config import Config  # noqa: E402
from improvd.daemon import GENERATE_STEPS  # noqa: E402
from improvd.model import StepModel  # noqa: E402
from improvd.scheduler import raise_priority  # noqa: E402
from improvd.telemetry import percentiles  # noqa: E402
from improvd.turns import REACTION_S  # noqa: E402
from improvd_train.evaluate import machine  # noqa: E402

# Which engine ran: output resumes REACTION_S after a player event.
ENGINE_VERSION = f"reaction {REACTION_S * 1e3:.0f} ms"
PHRASE = [60, 62, 64, 65, 67, 65, 64, 62]
GAP_S, HOLD_S = 0.12, 0.10


def run(seconds: float, generate_steps: int | None) -> dict[str, object]:
    model = StepModel(Config().model.path, device="cpu")
    config = replace(Config(), engine=replace(Config().engine, mode="duet"))
    duet = engine.Engine(model, config, np.random.default_rng(1), time.monotonic(), clock=time.perf_counter,
                         generate_steps=generate_steps)
    work, late_at_submit, per_event_messages = [], [], []
    submitted_before = 0

    def queue(reply: engine.Reply) -> None:
        """Each message's lateness at the moment it could first be queued."""
        nonlocal submitted_before
        done = time.monotonic()
        fresh = [m for m in reply.messages if not m.passthrough]
        late_at_submit.extend(max(0.0, done - m.time) for m in fresh)
        submitted_before += sum(1 for m in fresh if m.time < done)
        per_event_messages[-1] += len(fresh)

    events: list[tuple[float, mido.Message]] = []
    start = time.monotonic() + 0.5
    for k in range(int(seconds / GAP_S)):
        pitch = PHRASE[k % len(PHRASE)]
        events += [(start + k * GAP_S, mido.Message("note_on", note=pitch, velocity=80)),
                   (start + k * GAP_S + HOLD_S, mido.Message("note_off", note=pitch))]
    events.sort(key=lambda e: e[0])
    per_event_messages.append(0)
    for due, message in events:
        while (now := time.monotonic()) < due:  # the loop between player events: keep the lookahead full
            queue(duet.poll(now))
            time.sleep(min(0.002, max(0.0, due - time.monotonic())))
        per_event_messages.append(0)
        began = time.monotonic()
        reply = duet.on_message(message, began, began)
        reply.extend(duet.poll(time.monotonic()))
        work.append(time.monotonic() - began)  # until the first regenerated messages can be queued
        queue(reply)
    return {"generate_steps": generate_steps, "player_events": len(events), "work_per_event_s": percentiles(work),
            "messages_per_event_mean": float(np.mean(per_event_messages)),
            "messages": len(late_at_submit), "due_before_queued": submitted_before,
            "late_at_submit_s": percentiles([x for x in late_at_submit if x > 0]), "model_steps": model.steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--realtime", type=int, default=0,
                        help="SCHED_FIFO priority for this thread, as the daemon's engine loop takes it (0: none)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "duet_regen.json")
    args = parser.parse_args()
    raise_priority(args.realtime, "benchmark")
    result = {**machine(), "kernel": platform.release(),
              "loadavg_start": Path("/proc/loadavg").read_text().split()[:3], "realtime_priority": args.realtime,
              "engine_version": ENGINE_VERSION,
              "rows": [run(args.seconds, steps) for steps in (None, GENERATE_STEPS)]}
    print(f"duet, player event every {GAP_S * 1e3:.0f} ms for {args.seconds:.0f} s, {ENGINE_VERSION}, "
          f"SCHED_FIFO {args.realtime or 'off'} (load {' '.join(result['loadavg_start'])}):")
    print(f"{'events per poll':>16} {'work p50 ms':>12} {'work p99 ms':>12} {'msgs/event':>11} "
          f"{'late msgs':>10} {'late p50 ms':>12} {'late p99 ms':>12}")
    for row in result["rows"]:
        w, late = row["work_per_event_s"], row["late_at_submit_s"]
        print(f"{row['generate_steps'] or 'all':>16} {w['p50_ms']:12.2f} {w['p99_ms']:12.2f} "
              f"{row['messages_per_event_mean']:11.1f} {row['due_before_queued']:>5} of {row['messages']:<5}"
              f"{late.get('p50_ms', 0.0):>9.2f} {late.get('p99_ms', 0.0):12.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
