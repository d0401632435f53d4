"""End-to-end latency of improvd over a real JACK server (dummy backend), in one run.

    python bench/latency.py                              # the full run (about 4 minutes)
    python bench/latency.py --quick                      # a few seconds per part, to try it
    python bench/latency.py --periods 64,256 --flood-seconds 30 --out bench/results/latency.json

What it measures, all through the same private JACK server (``jackd -n improvd-bench``,
restarted for each period size):

- transport floor: the round trip of a bare JACK-Client echo client (a second process
  that sends back what it receives in the same cycle), from a python-rtmidi sender to a
  receiver here that stamps each message with its JACK frame time on CLOCK_MONOTONIC; and
  ``jack_midi_latency_test`` through the same echo client (JACK's own frame-accurate figure);
- the daemon: key-down sent -> state updated (improvd's own ``input_to_state`` telemetry,
  from the callback to the LSTM state, plus one transport hop); phrase end -> first answer
  note received, minus the silence and minus the transport floor (the part improvd adds),
  next to improvd's own ``phrase_end_to_first_note`` (deadline -> sent);
- output timing: how late the answer's notes arrive *at the receiver* (stamped by frame)
  against the 10 ms grid they are scheduled on (a constant transport delay removed), once
  with the machine as it is and once with a busy-loop process added; next to improvd's own
  ``output_lateness`` (how late it handed each note to its port), and JACK's overruns, all
  and those jackd blamed on improvd's client;
- duet: a player looping a phrase while improvd plays along; improvd's own send lateness
  and input -> state, beside call-response's;
- loaded: every core busy with a busy-loop process of this benchmark's, then call-response
  (key-down -> state, improvd's part of phrase end -> first note, send lateness) and duet,
  with improvd's ``service.realtime`` off and on, side by side;
- a flood: a player sending 1,000 then 5,000 messages/s (passthrough on), with improvd's
  RSS and CPU sampled from /proc every second, and every echoed NOTE_ON checked for its
  NOTE_OFF at the receiver.

A benchmark, not a test: it prints a table and writes JSON; nothing is asserted. Needs
``jackd`` (Debian: ``apt-get install --no-install-recommends jackd2``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import jack
import numpy as np
import rtmidi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from improvd.telemetry import percentiles  # noqa: E402
from improvd_train.evaluate import machine  # noqa: E402
from tests.conftest import Jack, _stop_with_parent, start_server, stop_server  # noqa: E402 - the tests' JACK server harness
from tests.improvd_process import Improvd, jack_names, write_config  # noqa: E402 - and their improvd process

OUT = ROOT / "bench" / "results" / "latency.json"
SERVER = "improvd-bench"  # fixed: JACK's registry has 8 slots, reclaimed by name
RATE = 48000
TICK_S = 0.010  # improvd's time grid: every generated event is due on it
SILENCE_MS = 150
HOG = [sys.executable, "-c", "while True: pass"]  # one busy core
PHRASE = (60, 62, 64, 65, 67, 65, 64, 62)  # the duet player's loop: 120 ms apart, held 100 ms
J = rtmidi.API_UNIX_JACK


# ---- small helpers --------------------------------------------------------------------------


def fmt(s: dict, keys: tuple[str, ...] = ("p50_ms", "p99_ms", "max_ms")) -> str:
    if not s or not s.get("n"):
        return "-"
    return " / ".join(f"{s[k]:.2f}" for k in keys)


def spawn(args: list[str], log: Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed with the process
    return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                            preexec_fn=_stop_with_parent)


def stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def bench_machine() -> dict[str, object]:
    """The evaluation's machine description, and what a latency figure also depends on."""
    version = subprocess.run(["jackd", "--version"], capture_output=True, text=True).stdout.split()
    busiest = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return {
        **machine(), "kernel": platform.release(), "jackd": version[2] if len(version) > 2 else "unknown",
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "busiest_processes_at_start": [line.strip() for line in busiest.splitlines()[1:4]],
    }


# ---- the JACK server ------------------------------------------------------------------------


class Server:
    """The private server, started and stopped by the tests' harness (tests/conftest.py);
    ``jack``: the tests' JACK tools, pointed at it."""

    def __init__(self, period: int, realtime: bool, workdir: Path) -> None:
        self.period = period
        self.log = workdir / f"jackd-{period}.log"
        flags = ["--realtime"] if realtime else ["--no-realtime"]
        self.process = start_server(SERVER, dict(os.environ), self.log,
                                    [*flags, "-d", "dummy", "-r", str(RATE), "-p", str(period)])
        self.jack = Jack(SERVER, period, RATE, dict(os.environ), self.log)
        text = self.log.read_text(errors="replace")
        self.realtime = realtime and "Cannot use real-time scheduling" not in text

    def xruns(self) -> int:
        return self.jack.xruns()

    def xruns_of(self, client: str) -> int:
        """Overruns jackd blamed on ``client`` ("client = NAME was not finished")."""
        return self.log.read_text(errors="replace").count(f"client = {client} was not finished")

    def wait_port(self, name: str) -> str:
        return self.jack.wait_port_of(*name.split(":", 1), timeout=15)

    def connect(self, source: str, destination: str) -> None:
        self.jack.connect(source, destination)

    def close(self) -> None:
        stop_server(self.process)


# ---- MIDI ends in this process --------------------------------------------------------------


class Receiver:
    """A JACK input here (JACK-Client, the system's libjack), each message stamped with its
    frame time on CLOCK_MONOTONIC: when JACK delivered it, whatever this process was doing
    (note lateness *at the receiver*, not at a thread of ours)."""

    def __init__(self, client: str) -> None:
        self.events: list[tuple[float, list[int]]] = []
        self.cond = threading.Condition()
        self.arrived: collections.deque[tuple[int, bytes]] = collections.deque()
        self.client = jack.Client(client, no_start_server=True)
        self.port = self.client.midi_inports.register("in")
        self.client.set_process_callback(self._process)
        self.client.activate()
        self.name = f"{self.client.name}:in"
        self.running = True
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _process(self, frames: int) -> None:
        start = self.client.last_frame_time
        for offset, data in self.port.incoming_midi_events():
            self.arrived.append((start + offset, bytes(data)))

    def _read(self) -> None:
        while self.running:
            if not self.arrived:
                time.sleep(0.0005)
                continue
            frame, data = self.arrived.popleft()
            age = ((self.client.frame_time - frame + 2**31) & 0xFFFFFFFF) - 2**31
            with self.cond:
                self.events.append((time.monotonic() - age / RATE, list(data)))
                self.cond.notify_all()

    def wait(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.05))
            return True

    def clear(self) -> None:
        with self.cond:
            self.events.clear()

    def close(self) -> None:
        self.running = False
        self.reader.join(1)
        self.client.deactivate()
        self.client.close()


class Sender:
    def __init__(self, client: str) -> None:
        self.rt = rtmidi.MidiOut(J, name=client)
        self.rt.open_virtual_port("out")
        self.name = f"{client}:out"

    def send(self, data: list[int]) -> float:
        self.rt.send_message(data)
        return time.monotonic()

    def close(self) -> None:
        self.rt.close_port()
        self.rt.delete()


def echo_main(client: str) -> None:
    """--echo: the bare JACK client of the transport floor (JACK-Client, one client, as
    improvd is): what comes in goes out in the same cycle, at the same frame."""
    echo = jack.Client(client, no_start_server=True)
    inp, out = echo.midi_inports.register("in"), echo.midi_outports.register("out")

    def process(frames: int) -> None:
        out.clear_buffer()
        for offset, data in inp.incoming_midi_events():
            out.write_midi_event(offset, data)

    echo.set_process_callback(process)
    echo.activate()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    echo.deactivate()
    echo.close()


# ---- the parts ------------------------------------------------------------------------------


def start_echo(jack: Server, workdir: Path, sender: Sender, receiver: Receiver) -> tuple[subprocess.Popen, int]:
    """The echo client, connected and answering; started again (up to twice) if it does not
    answer within 2 s."""
    for attempt in range(3):
        echo = spawn([sys.executable, __file__, "--echo", "echo"], workdir / f"echo-{jack.period}-{attempt}.log")
        jack.wait_port("echo:in")
        jack.wait_port("echo:out")
        jack.connect(sender.name, "echo:in")
        jack.connect("echo:out", receiver.name)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            receiver.clear()
            sender.send([0xB0, 1, 0])
            if receiver.wait(lambda: receiver.events, 0.2):
                return echo, attempt
        stop(echo, signal.SIGKILL)
        time.sleep(0.5)
    raise RuntimeError("the echo client never answered")


def transport_floor(args: argparse.Namespace, jack: Server, workdir: Path) -> dict[str, object]:
    sender, receiver = Sender("floor sender"), Receiver("floor receiver")
    echo = None
    try:
        echo, restarts = start_echo(jack, workdir, sender, receiver)
        rtts, lost = [], 0
        xruns = jack.xruns()
        for i in range(args.floor_samples):
            receiver.clear()
            data = [0x90, i % 128, 1 + (i // 128) % 127]
            sent = sender.send(data)
            if receiver.wait(lambda d=data: any(e[1] == d for e in receiver.events), 0.5):
                rtts.append(next(t for t, e in receiver.events if e == data) - sent)
            else:
                lost += 1
            time.sleep(random.uniform(0.004, 0.012))  # phases spread over the JACK cycle
        result: dict[str, object] = {"round_trip_s": percentiles(rtts), "lost": lost, "xruns": jack.xruns() - xruns,
                                     "echo_restarts": restarts}
        sender.close()
        receiver.close()
        sender = receiver = None
        # JACK's own tool, frame-accurate, through the same echo client.
        test = jack.jack.tool("jack_midi_latency_test", "-s", str(args.jack_test_samples), "echo:in", "echo:out",
                              check=False, timeout=60)
        found = {key: float(m.group(1)) for key, pattern in (
            ("average_ms", r"Average latency: ([\d.]+) ms"), ("lowest_ms", r"Lowest latency: ([\d.]+) ms"),
            ("highest_ms", r"Highest latency: ([\d.]+) ms"), ("peak_jitter_ms", r"Peak MIDI jitter: ([\d.]+) ms"),
            ("sent", r"Messages sent: (\d+)"), ("received", r"Messages received: (\d+)"))
            if (m := re.search(pattern, test))}
        result["jack_midi_latency_test"] = found or {"error": test.strip()[-300:]}
        return result
    finally:
        for end in (sender, receiver):
            if end is not None:
                end.close()
        stop(echo)


class Daemon(Improvd):
    """improvd --api jack with a bench config (``args``: its silence, realtime sender and
    candidates), its own client and ports; ready and its ports there once made."""

    def __init__(self, args: argparse.Namespace, jack: Server, workdir: Path, name: str,
                 **sections: dict[str, object]) -> None:
        settings: dict[str, dict[str, object]] = {
            "model": {"device": "cpu"},
            "ports": {"api": "jack", **jack_names(name)},
            "engine": {"silence_ms": args.silence_ms, "seed": 1234},
            "telemetry": {"interval_s": 0.0},
            "service": {"watchdog": False, "realtime": args.scheduler_realtime},
        }
        if args.candidates is not None:
            settings["sampler"] = {"candidates": args.candidates}
        super().__init__(write_config(workdir / f"{name}.toml", settings, **sections))
        self.name = name
        self.input, self.output = f"{name}:{name} in", f"{name}:{name} out"
        self.wait_log("daemon: ready:", timeout=30)
        jack.wait_port(self.input)
        jack.wait_port(self.output)

    def finish(self) -> dict[str, object]:
        """Stop it; the telemetry it logged on the way out."""
        self.close(timeout=15)
        return self.telemetry()


def note_ons(events: list[tuple[float, list[int]]], after: float) -> list[float]:
    return [t for t, e in events if t > after and len(e) == 3 and e[0] & 0xF0 == 0x90 and e[2] > 0]


def phrase_latency(args: argparse.Namespace, jack: Server, workdir: Path, floor_p50: float, tag: str = "",
                   **sections: dict[str, object]) -> dict[str, object]:
    """Phrase end -> first answer note. Each trial is a one-note phrase; as soon as the answer's
    first note arrives, the next trial's note cuts it off (a barge-in) and begins the next."""
    daemon = Daemon(args, jack, workdir, f"bench-phrase-{jack.period}{tag}", **sections)
    sender, receiver = Sender("player"), Receiver("listener")
    try:
        jack.connect(sender.name, daemon.input)
        jack.connect(daemon.output, receiver.name)
        silence = args.silence_ms / 1000
        raw, misses = [], 0
        xruns = jack.xruns()
        for i in range(args.phrases):
            pitch = 48 + (i * 5) % 24
            sender.send([0x90, pitch, 90])
            time.sleep(0.04)
            end = sender.send([0x80, pitch, 0])
            if receiver.wait(lambda e=end: note_ons(receiver.events, e), silence + 1.0):
                raw.append(note_ons(receiver.events, end)[0] - end - silence)
            else:
                misses += 1
        time.sleep(0.3)
        telemetry = daemon.finish()
        added = [r - floor_p50 for r in raw]
        return {"received_minus_silence_s": percentiles(raw), "daemon_added_s": percentiles(added), "misses": misses,
                "telemetry": telemetry, "xruns": jack.xruns() - xruns}
    finally:
        sender.close()
        receiver.close()
        daemon.kill()


def grid_lateness(times: list[float]) -> list[float]:
    """Each arrival's lateness against the 10 ms grid its note was scheduled on (one
    answer: its notes lie on the grid shifted by one offset), the earliest-phase arrival
    taken as on time: the phases are rotated so that the largest empty stretch of the
    10 ms cycle comes last, so a constant transport delay drops out."""
    if not times:
        return []
    phases = sorted(t % TICK_S for t in times)
    gaps = [(phases[(i + 1) % len(phases)] - phases[i]) % TICK_S for i in range(len(phases))]
    start = phases[(int(np.argmax(gaps)) + 1) % len(phases)]
    return [((t % TICK_S) - start) % TICK_S for t in times]


def output_timing(args: argparse.Namespace, jack: Server, workdir: Path, busy: bool, tag: str = "",
                  **sections: dict[str, object]) -> dict[str, object]:
    """Long answers, heard to their end; every note's lateness against its grid."""
    name = f"bench-timing-{jack.period}-{'busy' if busy else 'idle'}{tag}"
    hog = spawn(HOG) if busy else None
    daemon = Daemon(args, jack, workdir, name, engine={"min_answer_s": 4.0, "max_answer_s": 4.0}, **sections)
    sender, receiver = Sender("player"), Receiver("listener")
    try:
        jack.connect(sender.name, daemon.input)
        jack.connect(daemon.output, receiver.name)
        lateness: list[float] = []
        answers = 0
        xruns, ours = jack.xruns(), jack.xruns_of(daemon.name)
        deadline = time.monotonic() + args.timing_seconds
        while time.monotonic() < deadline:
            receiver.clear()
            end = 0.0
            for k, pitch in enumerate((60, 64, 67, 72)):
                sender.send([0x90, pitch, 80])
                time.sleep(0.06)
                end = sender.send([0x80, pitch, 0])
                time.sleep(0.02 if k < 3 else 0)
            if not receiver.wait(lambda e=end: note_ons(receiver.events, e), 2.0):
                continue
            first = note_ons(receiver.events, end)[0]
            receiver.wait(lambda f=first: time.monotonic() > f + 4.3, 6.0)
            # One answer's notes share one offset from the grid (it starts on the deadline).
            lateness += grid_lateness([t for t, e in receiver.events if t >= first and e[0] & 0xE0 == 0x80])
            answers += 1
        telemetry = daemon.finish()
        return {"busy_loop": busy, "answers": answers, "lateness_s": percentiles(lateness),
                "telemetry_output_lateness": telemetry.get("output_lateness", {}), "xruns": jack.xruns() - xruns,
                "xruns_improvd": jack.xruns_of(daemon.name) - ours}
    finally:
        sender.close()
        receiver.close()
        daemon.kill()
        stop(hog, signal.SIGKILL)


def duet(args: argparse.Namespace, jack: Server, workdir: Path, tag: str = "",
         **sections: dict[str, object]) -> dict[str, object]:
    """improvd in duet with a player looping a phrase (a note every 120 ms, held 100 ms, then
    half a second of rest): its send lateness and input -> state, from its telemetry, and what
    arrived at the receiver."""
    engine = {"mode": "duet", **sections.pop("engine", {})}
    daemon = Daemon(args, jack, workdir, f"bench-duet-{jack.period}{tag}", engine=engine, **sections)
    sender, receiver = Sender("player"), Receiver("listener")
    try:
        jack.connect(sender.name, daemon.input)
        jack.connect(daemon.output, receiver.name)
        xruns, ours, loops = jack.xruns(), jack.xruns_of(daemon.name), 0
        deadline = time.monotonic() + args.timing_seconds
        while time.monotonic() < deadline:
            for pitch in PHRASE:
                sender.send([0x91, pitch, 80])  # channel 2: the player's notes apart from improvd's
                time.sleep(0.1)
                sender.send([0x81, pitch, 0])
                time.sleep(0.02)
            time.sleep(0.5)
            loops += 1
        telemetry = daemon.finish()
        with receiver.cond:
            received = note_balance(list(receiver.events), channel=0)
        return {"phrases": loops, "telemetry": telemetry, "received": received, "xruns": jack.xruns() - xruns,
                "xruns_improvd": jack.xruns_of(daemon.name) - ours}
    finally:
        sender.close()
        receiver.close()
        daemon.kill()


def loaded(args: argparse.Namespace, jack: Server, workdir: Path, floor_p50: float) -> dict[str, object]:
    """Every core busy with a busy-loop process of its own; call-response and duet with
    improvd's service.realtime off, then on."""
    hogs = [spawn(HOG) for _ in range(os.cpu_count() or 1)]
    try:
        result = {}
        for realtime in (False, True):
            tag, service = f"-loaded-rt{int(realtime)}", {"service": {"realtime": realtime}}
            print(f"  loaded, realtime {'on' if realtime else 'off'} ...", file=sys.stderr)
            result["on" if realtime else "off"] = {
                "phrase": phrase_latency(args, jack, workdir, floor_p50, tag, **service),
                "timing": output_timing(args, jack, workdir, False, tag, **service),
                "duet": duet(args, jack, workdir, tag, **service),
            }
        return {"busy_loops": len(hogs), **result}
    finally:
        for hog in hogs:
            stop(hog, signal.SIGKILL)


def note_balance(events: list[tuple[float, list[int]]], channel: int) -> dict[str, object]:
    """On one channel: NOTE_ONs, NOTE_OFFs, NOTE_OFFs for a key not down, keys left down."""
    on = off = stray = 0
    down: set[int] = set()
    for _, e in events:
        if len(e) != 3 or e[0] & 0xE0 != 0x80 or e[0] & 0x0F != channel:
            continue
        if e[0] & 0xF0 == 0x90 and e[2] > 0:
            on += 1
            down.add(e[1])
        else:
            off += 1
            if e[1] in down:
                down.discard(e[1])
            else:
                stray += 1
    return {"note_on": on, "note_off": off, "note_off_for_silent_key": stray, "left_sounding": sorted(down)}


def proc_sample(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("VmRSS:"))
    return cpu, rss


def flood(args: argparse.Namespace, jack: Server, workdir: Path) -> dict[str, object]:
    """A player sending note on/off pairs at each rate in turn, passthrough on: improvd's RSS and
    CPU each second, and at the receiver every echoed NOTE_ON checked for its NOTE_OFF."""
    daemon = Daemon(args, jack, workdir, f"bench-flood-{jack.period}", ports={"passthrough": True})
    sender, receiver = Sender("flooder"), Receiver("listener")
    pid = daemon.process.pid
    try:
        jack.connect(sender.name, daemon.input)
        jack.connect(daemon.output, receiver.name)
        time.sleep(0.5)
        results = []
        sent_total = 0
        xruns = jack.xruns()
        for rate in args.flood_rates:
            samples: list[tuple[float, float, int]] = []
            start = time.monotonic()
            last_sample = start - 1
            sent = 0
            while (now := time.monotonic()) - start < args.flood_seconds:
                due = int((now - start) * rate)
                while sent < due:
                    k = sent_total + sent
                    pitch = 36 + (k // 2) % 60
                    sender.rt.send_message([0x91, pitch, 64] if k % 2 == 0 else [0x81, pitch, 0])  # channel 2
                    sent += 1
                if now - last_sample >= 1.0:
                    cpu, rss = proc_sample(pid)
                    samples.append((now, cpu, rss))
                    last_sample = now
                time.sleep(0.001)
            sent_total += sent
            telemetry = daemon.report()
            cpu_pct = [100 * (b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:], strict=False)]
            rss = [s[2] for s in samples]
            third = max(1, len(rss) // 3)
            results.append({
                "rate_per_s": rate, "seconds": args.flood_seconds, "sent": sent,
                "rss_mib_first_third": statistics.mean(rss[:third]) / 2**20,
                "rss_mib_last_third": statistics.mean(rss[-third:]) / 2**20, "rss_mib_max": max(rss) / 2**20,
                "cpu_percent_mean": statistics.mean(cpu_pct) if cpu_pct else 0.0,
                "cpu_percent_max": max(cpu_pct) if cpu_pct else 0.0,
                "input_dropped_total": telemetry.get("input_dropped", 0),
                "input_to_state_s": telemetry.get("input_to_state", {}),
            })
        # Quiet: improvd answers the flood's last "phrase"; let it end, then stop it.
        time.sleep(args.silence_ms / 1000 + 2.5)
        telemetry = daemon.finish()
        with receiver.cond:
            events = list(receiver.events)
        echoes = note_balance(events, channel=1)  # the player's notes passed through
        answers = note_balance(events, channel=0)  # improvd's own answers meanwhile
        return {"rates": results, "sent_total": sent_total, "echoed": echoes, "answers": answers,
                "telemetry": telemetry, "xruns": jack.xruns() - xruns}
    finally:
        sender.close()
        receiver.close()
        daemon.kill()


# ---- the run --------------------------------------------------------------------------------


def table(result: dict) -> str:
    m = result["machine"]
    lines = [f"improvd latency over JACK ({m['date']}): {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, "
             f"jackd {m['jackd']}, load {' '.join(m['loadavg_start'])} at start",
             "ms; p50 / p99 / max unless said; JACK dummy backend at 48 kHz", ""]
    periods = result["periods"]
    head = f"{'':44}" + "".join(f"{p['frames']:>5} fr = {p['period_ms']:.2f} ms{'':4}" for p in periods)
    lines.append(head + "  " + "realtime: " + ", ".join("yes" if p["realtime"] else "no" for p in periods))

    def row(label: str, get) -> None:
        cells = []
        for p in periods:
            try:
                cells.append(get(p))
            except (KeyError, TypeError):
                cells.append("-")
        lines.append(f"{label:44}" + "".join(f"{c:>26}" for c in cells))

    row("transport: echo client round trip", lambda p: fmt(p["floor"]["round_trip_s"]))
    row("  lost echoes / JACK xruns", lambda p: f"{p['floor']['lost']} / {p['floor']['xruns']}")
    row("  jack_midi_latency_test avg / low / high", lambda p: "{average_ms:.2f} / {lowest_ms:.2f} / {highest_ms:.2f}"
        .format(**p["floor"]["jack_midi_latency_test"]))
    row("key-down -> state updated (telemetry)", lambda p: fmt(p["phrase"]["telemetry"]["input_to_state"]))
    row("phrase end -> first note received", lambda p: fmt(p["phrase"]["received_minus_silence_s"]))
    row("  minus transport floor p50 (improvd's part)", lambda p: fmt(p["phrase"]["daemon_added_s"]))
    row("  deadline -> sent (telemetry)", lambda p: fmt(p["phrase"]["telemetry"]["phrase_end_to_first_note"]))
    row("  misses / JACK xruns", lambda p: f"{p['phrase']['misses']} / {p['phrase']['xruns']}")
    for kind in ("idle", "busy"):
        label = "machine as is" if kind == "idle" else "+ busy-loop process"
        row(f"note lateness at receiver ({label})", lambda p, k=kind: fmt(p["timing"][k]["lateness_s"]))
        row("  improvd's own send lateness (telemetry)",
            lambda p, k=kind: fmt(p["timing"][k]["telemetry_output_lateness"]))
        row("  notes / answers / JACK xruns (improvd's)", lambda p, k=kind: "{} / {} / {} ({})".format(
            p["timing"][k]["lateness_s"].get("n", 0), p["timing"][k]["answers"], p["timing"][k]["xruns"],
            p["timing"][k]["xruns_improvd"]))
    row("duet: send lateness (telemetry)", lambda p: fmt(p["duet"]["telemetry"]["output_lateness"]))
    row("duet: input -> state (telemetry)", lambda p: fmt(p["duet"]["telemetry"]["input_to_state"]))
    row("  notes played / left sounding / xruns (improvd's)", lambda p: "{} / {} / {} ({})".format(
        p["duet"]["received"]["note_on"], len(p["duet"]["received"]["left_sounding"]), p["duet"]["xruns"],
        p["duet"]["xruns_improvd"]))
    for rt in ("off", "on"):
        lines.append(f"every core busy (a busy loop each), improvd service.realtime {rt}:")
        row("  key-down -> state (telemetry)", lambda p, r=rt: fmt(p["loaded"][r]["phrase"]["telemetry"]
                                                                   ["input_to_state"]))
        row("  phrase end -> first note, improvd's part", lambda p, r=rt: fmt(p["loaded"][r]["phrase"]
                                                                             ["daemon_added_s"]))
        row("  send lateness, call-response (telemetry)", lambda p, r=rt: fmt(p["loaded"][r]["timing"]
                                                                             ["telemetry_output_lateness"]))
        row("  duet: send lateness (telemetry)", lambda p, r=rt: fmt(p["loaded"][r]["duet"]["telemetry"]
                                                                    ["output_lateness"]))
        row("  duet: input -> state (telemetry)", lambda p, r=rt: fmt(p["loaded"][r]["duet"]["telemetry"]
                                                                     ["input_to_state"]))
        row("  note lateness at receiver, call-response", lambda p, r=rt: fmt(p["loaded"][r]["timing"]
                                                                             ["lateness_s"]))
        row("  JACK xruns (improvd's): call-resp. / duet", lambda p, r=rt: "{} ({}) / {} ({})".format(
            p["loaded"][r]["timing"]["xruns"], p["loaded"][r]["timing"]["xruns_improvd"],
            p["loaded"][r]["duet"]["xruns"], p["loaded"][r]["duet"]["xruns_improvd"]))
    flood_result = result.get("flood")
    if flood_result:
        lines += ["", f"flood at {flood_result['period_frames']} frames, passthrough on "
                  f"({flood_result['rates'][0]['seconds']:.0f} s per rate)"]
        lines.append(f"{'rate/s':>8} {'sent':>8} {'RSS MiB first/last third, max':>31} {'CPU % mean/max':>16} "
                     f"{'dropped':>8} {'input->state p50/p99/max':>26}")
        for r in flood_result["rates"]:
            lines.append(f"{r['rate_per_s']:>8} {r['sent']:>8} "
                         f"{r['rss_mib_first_third']:>12.1f} / {r['rss_mib_last_third']:.1f}, {r['rss_mib_max']:.1f}"
                         f"{r['cpu_percent_mean']:>10.0f} / {r['cpu_percent_max']:.0f}"
                         f"{r['input_dropped_total']:>9} {fmt(r['input_to_state_s']):>26}")
        for label, key in (("player's notes passed through", "echoed"), ("improvd's answers", "answers")):
            b = flood_result[key]
            lines.append(f"{label}: NOTE_ON {b['note_on']}, NOTE_OFF {b['note_off']}, left sounding "
                         f"{len(b['left_sounding'])}, NOTE_OFF for a silent key {b['note_off_for_silent_key']}")
        lines.append(f"JACK xruns during the flood: {flood_result['xruns']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--periods", default="64,256",
                        help="JACK periods in frames at 48 kHz, in turn; the flood runs at the last (default 64,256)")
    parser.add_argument("--realtime", choices=("yes", "no"), default="yes",
                        help="jackd --realtime (falls back where not allowed; default) or --no-realtime")
    parser.add_argument("--floor-samples", type=int, default=400, help="echo round trips per period")
    parser.add_argument("--jack-test-samples", type=int, default=1000, help="jack_midi_latency_test messages")
    parser.add_argument("--phrases", type=int, default=60, help="phrase-end trials per period")
    parser.add_argument("--timing-seconds", type=float, default=30, help="seconds of answers per timing condition")
    parser.add_argument("--flood-seconds", type=float, default=30, help="seconds per flood rate")
    parser.add_argument("--flood-rates", default="1000,5000", help="messages per second, in turn")
    parser.add_argument("--no-flood", action="store_true")
    parser.add_argument("--no-loaded", action="store_true",
                        help="skip the run with every core busy (realtime off and on side by side)")
    parser.add_argument("--scheduler-realtime", action="store_true",
                        help="run improvd with service.realtime = true (its sending thread SCHED_FIFO)")
    parser.add_argument("--candidates", type=int, help="sampler.candidates for improvd (default: its default)")
    parser.add_argument("--silence-ms", type=int, default=SILENCE_MS,
                        help=f"engine.silence_ms (default {SILENCE_MS}; candidates need more than lookahead_ms, 250)")
    parser.add_argument("--quick", action="store_true", help="a few seconds per part: to try the benchmark")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--echo", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo:
        echo_main(args.echo)
        return 0
    if shutil.which("jackd") is None:
        print("bench/latency.py needs jackd: apt-get install --no-install-recommends jackd2", file=sys.stderr)
        return 1
    if args.quick:
        args.floor_samples, args.jack_test_samples, args.phrases = 60, 200, 10
        args.timing_seconds, args.flood_seconds = 6, 4
    args.periods = [int(p) for p in args.periods.split(",")]
    args.flood_rates = [int(r) for r in args.flood_rates.split(",")]
    os.environ.update(JACK_DEFAULT_SERVER=SERVER, JACK_NO_START_SERVER="1")
    sys.setswitchinterval(0.0005)  # the receive callbacks here must not wait 5 ms for the GIL
    result: dict[str, object] = {"machine": bench_machine(), "settings": {
        "rate": RATE, "silence_ms": args.silence_ms, "realtime_requested": args.realtime == "yes",
        **{k: v for k, v in vars(args).items() if k not in ("out", "echo", "quick")}}, "periods": []}
    workdir = args.out.parent / "latency-logs"  # jackd's, improvd's and the echo client's logs, kept
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    for index, period in enumerate(args.periods):
        jack = Server(period, args.realtime == "yes", workdir)
        try:
            print(f"period {period} frames ({1e3 * period / RATE:.2f} ms), realtime {jack.realtime}:",
                  file=sys.stderr)
            entry: dict[str, object] = {"frames": period, "period_ms": 1e3 * period / RATE,
                                        "realtime": jack.realtime}
            print("  transport floor ...", file=sys.stderr)
            entry["floor"] = transport_floor(args, jack, workdir)
            floor_p50 = entry["floor"]["round_trip_s"].get("p50_ms", 0.0) / 1e3
            print("  phrase end -> answer ...", file=sys.stderr)
            entry["phrase"] = phrase_latency(args, jack, workdir, floor_p50)
            entry["timing"] = {}
            for busy in (False, True):
                print(f"  output timing ({'busy' if busy else 'idle'}) ...", file=sys.stderr)
                entry["timing"]["busy" if busy else "idle"] = output_timing(args, jack, workdir, busy)
            print("  duet ...", file=sys.stderr)
            entry["duet"] = duet(args, jack, workdir)
            if not args.no_loaded:
                entry["loaded"] = loaded(args, jack, workdir, floor_p50)
            if index == len(args.periods) - 1 and not args.no_flood:  # last: it loads the machine most
                print("  flood ...", file=sys.stderr)
                result["flood"] = {"period_frames": period, **flood(args, jack, workdir)}
            entry["xruns_total"] = jack.xruns()
            result["periods"].append(entry)
        finally:
            jack.close()
    result["machine"]["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    text = table(result)
    result["table"] = text
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nwritten: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
