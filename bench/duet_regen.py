"""Where duet loses time: the engine's work per player event, in real time, in this process.

    python bench/duet_regen.py [--seconds 20] [--out bench/results/duet_regen.json]

A player loops a phrase (a note every 120 ms, held 100 ms) into an Engine in duet mode with
the shipped model, driven the way the daemon's loop drives it (``on_message`` then
``poll`` on the real monotonic clock). For every player event it records how long that work
took (the rollback, the fold, and regenerating the lookahead) and, for every message the
work produced, how late it already was when it was handed to the scheduler (its time minus
the moment it could first be queued): a message due before it exists can only be sent late.
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
from improvd.model import StepModel  # noqa: E402
from improvd.scheduler import raise_priority  # noqa: E402
from improvd.telemetry import percentiles  # noqa: E402
from improvd.turns import REACTION_S  # noqa: E402
from improvd_train.evaluate import machine  # noqa: E402

# Which engine ran: output resumes REACTION_S after a player event.
ENGINE_VERSION = f"reaction {REACTION_S * 1e3:.0f} ms"
PHRASE = [60, 62, 64, 65, 67, 65, 64, 62]
GAP_S, HOLD_S = 0.12, 0.10


def run(seconds: float) -> dict[str, object]:
    model = StepModel(Config().model.path, device="cpu")
    config = replace(Config(), engine=replace(Config().engine, mode="duet"))
    duet = engine.Engine(model, config, np.random.default_rng(1), time.monotonic(), clock=time.perf_counter)
    work, late_at_submit, per_event_messages = [], [], []
    events: list[tuple[float, mido.Message]] = []
    start = time.monotonic() + 0.5
    for k in range(int(seconds / GAP_S)):
        pitch = PHRASE[k % len(PHRASE)]
        events += [(start + k * GAP_S, mido.Message("note_on", note=pitch, velocity=80)),
                   (start + k * GAP_S + HOLD_S, mido.Message("note_off", note=pitch))]
    events.sort(key=lambda e: e[0])
    submitted_before = 0
    for due, message in events:
        while (now := time.monotonic()) < due:  # the loop between player events: keep the lookahead full
            duet.poll(now)
            time.sleep(min(0.002, max(0.0, due - time.monotonic())))
        began = time.monotonic()
        reply = duet.on_message(message, began, began)
        queued = time.monotonic()  # the rollback's cancel reaches the scheduler here
        reply.extend(duet.poll(queued))
        done = time.monotonic()  # ... and the regenerated messages here
        work.append(done - began)
        fresh = [m for m in reply.messages if not m.passthrough]
        per_event_messages.append(len(fresh))
        late_at_submit += [max(0.0, done - m.time) for m in fresh]
        submitted_before += sum(1 for m in fresh if m.time < done)
    return {"player_events": len(events), "work_per_event_s": percentiles(work),
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
              "engine_version": ENGINE_VERSION, **run(args.seconds)}
    w, late = result["work_per_event_s"], result["late_at_submit_s"]
    print(f"duet, player event every {GAP_S * 1e3:.0f} ms for {args.seconds:.0f} s, {ENGINE_VERSION}, "
          f"SCHED_FIFO {args.realtime or 'off'} (load {' '.join(result['loadavg_start'])}):")
    print(f"  engine work per player event (rollback + fold + regenerate) p50 / p99 / max: "
          f"{w['p50_ms']:.2f} / {w['p99_ms']:.2f} / {w['max_ms']:.2f} ms, "
          f"{result['messages_per_event_mean']:.1f} messages regenerated per event")
    print(f"  messages already due when queued: {result['due_before_queued']} of {result['messages']}"
          + (f", late by p50 / p99 / max {late['p50_ms']:.2f} / {late['p99_ms']:.2f} / {late['max_ms']:.2f} ms"
             if late.get("n") else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
