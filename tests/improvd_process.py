"""improvd as a subprocess, for the tests and the benchmarks alike: its configuration written
from a few settings, its output (stderr and stdout) kept in a log file and read as it grows,
its telemetry read back from its log."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from improvd.config import format_sections
from tests.conftest import _stop_with_parent

SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")  # ours only when systemd runs it
TELEMETRY = re.compile(r"(\w+) p50=(-?[\d.]+) p99=(-?[\d.]+) max=(-?[\d.]+) ms \(n=(\d+)\)")
COUNTER = re.compile(r"(\w+)=(\d+)(?:;|$)")


def improvd_command() -> list[str]:
    """The console script the units run, when installed beside this Python; else the module."""
    script = Path(sys.executable).with_name("improvd")
    return [str(script)] if script.exists() else [sys.executable, "-m", "improvd.cli"]


def write_config(path: Path, settings: dict[str, dict[str, object]], **changes: dict[str, object]) -> Path:
    """A configuration file of ``settings`` ({section: {key: value}}) with ``changes`` merged
    in section by section (a key improvd does not know is written as given)."""
    merged = {section: dict(values) for section, values in settings.items()}
    for section, values in changes.items():
        merged.setdefault(section, {}).update(values)
    path.write_text(format_sections(merged), encoding="utf-8")
    return path


def jack_names(name: str) -> dict[str, str]:
    """[ports] settings that give a daemon a JACK client and virtual ports of its own."""
    return {"client_name": name, "virtual_input": f"{name} in", "virtual_output": f"{name} out"}


class Improvd:
    """An `improvd --config config` process; ``env`` is added to this environment (systemd's
    variables taken out), ``args`` follow the config."""

    def __init__(self, config: Path, env: dict[str, str] | None = None, args: tuple[str, ...] = (),
                 cwd: Path | None = None) -> None:
        base = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
        self.config = config
        self.log_path = config.with_name(f"{config.stem}-{uuid.uuid4().hex[:4]}.log")
        self.started = time.monotonic()
        self._lines: list[str] = []
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([*improvd_command(), "--config", str(config), *args],
                                            env={**base, **(env or {})}, cwd=cwd, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, preexec_fn=_stop_with_parent)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def lines(self) -> list[str]:
        """The log's complete lines (a line still being written is left for later): one list,
        brought up to date in place at each read, so that ``lines[wait_line(...)]`` finds the line."""
        text = self.log()
        self._lines[:] = text.splitlines() if self.process.poll() is not None else text.split("\n")[:-1]
        return self._lines

    def wait_log(self, pattern: str, timeout: float = 20.0, after: int = 0) -> re.Match[str]:
        """The first match of ``pattern`` in the log (from character ``after``)."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.process.poll() is not None
            match = re.compile(pattern).search(self.log(), after)
            if match:
                return match
            if exited:
                raise AssertionError(f"improvd exited ({self.process.returncode}) before {pattern!r}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} in improvd's log after {timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def wait_line(self, text: str, timeout: float = 20.0, start: int = 0) -> int:
        """The index of the first line from ``start`` on that contains ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.process.poll() is not None
            lines = self.lines
            for index in range(start, len(lines)):
                if text in lines[index]:
                    return index
            if exited or time.monotonic() > deadline:
                raise AssertionError(f"no log line with {text!r} from improvd; it wrote:\n" + self.log())
            time.sleep(0.02)

    def wait_ready(self) -> None:
        self.wait_log(r"INFO improvd\.daemon: ready: ")

    def send_signal(self, signum: int) -> float:
        self.process.send_signal(signum)
        return time.monotonic()

    def wait_exit(self, sent_at: float, timeout: float = 10.0) -> tuple[int, float]:
        """(exit code, seconds from ``sent_at`` to the process being gone)."""
        while self.process.poll() is None:
            if time.monotonic() - sent_at > timeout:
                raise AssertionError("improvd did not exit:\n" + self.log())
            time.sleep(0.005)
        return self.process.returncode, time.monotonic() - sent_at

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Signal it and wait: its exit code (killed and an AssertionError if it does not stop)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"improvd did not stop within {timeout} s of signal {sig}:\n{self.log()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def close(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL if it has not gone within ``timeout``."""
        try:
            self.stop(timeout=timeout)
        except AssertionError:
            pass

    def telemetry(self, kind: str = "stopped: ") -> dict[str, object]:
        """The series (n, p50_ms, p99_ms, max_ms) and counters of its last telemetry line of
        that kind ("stopped: " at exit, "telemetry: " on SIGUSR1 or periodically)."""
        lines = [line for line in self.lines if kind in line]
        if not lines:
            return {}
        found: dict[str, object] = {}
        for name, p50, p99, top, n in TELEMETRY.findall(lines[-1]):
            found[name] = {"n": int(n), "p50_ms": float(p50), "p99_ms": float(p99), "max_ms": float(top)}
        for key, value in COUNTER.findall(lines[-1]):
            found[key] = int(value)
        return found

    def report(self, timeout: float = 5.0) -> dict[str, object]:
        """SIGUSR1: it logs its telemetry now; that line read back."""
        before = self.log().count("telemetry: ")
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while self.log().count("telemetry: ") == before and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.telemetry("telemetry: ")
