"""Shared by the notify and service tests: a real `improvd` process (tests/improvd_process.py)
on the test JACK server (the ``jack`` fixture of conftest.py), a player that sends it phrases and a listener that
records what it plays, both real JACK MIDI clients made with mido."""

from __future__ import annotations

import re
import shutil
import socket
import sys
import sysconfig
import threading
import time
import venv
from pathlib import Path

import mido

from tests import improvd_process
from tests.engine_helpers import MODEL_PATH
from tests.improvd_process import Improvd

PHRASE = [60, 62, 64, 65, 67, 65, 64, 62]  # played 120 ms apart, each held 100 ms
STOP_DEADLINE_S = 1.0  # the "within 1 s" from SIGTERM/SIGINT to exit
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")
LOG_LINE = re.compile(r"\b(DEBUG|INFO|WARNING|ERROR|CRITICAL) improvd[.:]")  # ours, not libjack's
SETTINGS: dict[str, dict[str, object]] = {
    "model": {"path": MODEL_PATH, "device": "cpu"},
    "ports": {"api": "jack"},
    "engine": {"silence_ms": 300, "min_answer_s": 2.0, "max_answer_s": 3.0, "seed": 7},
    "telemetry": {"interval_s": 0},
}


def write_config(path: Path, **changes: dict[str, object]) -> Path:
    """A config file for a test daemon: the shipped model on the CPU, JACK, short silences,
    a fixed seed, no periodic telemetry; ``changes`` maps section -> {key: value}."""
    return improvd_process.write_config(path, SETTINGS, **changes)


def log_lines(daemon: Improvd) -> list[str]:
    """The daemon's own log lines (libjack and onnxruntime write to stderr too)."""
    return [line for line in daemon.lines if LOG_LINE.search(line)]


class Listener:
    """A JACK MIDI input connected to improvd's output: records every message, and which
    notes are sounding at the receiver."""

    def __init__(self, jack, name: str = "listener") -> None:
        self.jack = jack
        self.received: list[tuple[float, mido.Message]] = []
        self.sounding: set[tuple[int, int]] = set()
        self.changed = threading.Condition()
        client = f"improvd-test-{name}"
        self.port = mido.Backend("mido.backends.rtmidi/UNIX_JACK").open_input(
            name, virtual=True, client_name=client, callback=self._on_message)
        self.full_name = jack.wait_port(name)

    def connect(self, improvd_output: str = "improvd out") -> None:
        self.jack.connect(self.jack.wait_port(improvd_output), self.full_name)

    def _on_message(self, message: mido.Message) -> None:
        with self.changed:
            self.received.append((time.monotonic(), message))
            key = (getattr(message, "channel", -1), getattr(message, "note", -1))
            if message.type == "note_on" and message.velocity > 0:
                self.sounding.add(key)
            elif message.type in ("note_on", "note_off"):
                self.sounding.discard(key)
            self.changed.notify_all()

    def wait_sounding(self, timeout: float = 15.0) -> set[tuple[int, int]]:
        """Block until some note sounds at the receiver; the sounding (channel, note) pairs."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not self.sounding:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"improvd played no note in {timeout} s; received {len(self.received)}")
                self.changed.wait(left)
            return set(self.sounding)

    def note_ons(self, since: float = 0.0) -> list[mido.Message]:
        with self.changed:
            return [m for t, m in self.received if t >= since and m.type == "note_on" and m.velocity > 0]

    def unreleased(self) -> list[tuple[int, int]]:
        """(channel, note) of every note_on that no note_off (or velocity-0 note_on) followed."""
        with self.changed:
            return sorted(self.sounding)

    def transcript(self) -> str:
        """What arrived, one message a line with its time: for failure messages."""
        with self.changed:
            start = self.received[0][0] if self.received else 0.0
            return "\n".join(f"{t - start:8.4f} {m}" for t, m in self.received
                             if m.type != "control_change" or m.control != 64)

    def all_notes_off_channels(self, since: float) -> set[int]:
        with self.changed:
            return {m.channel for t, m in self.received
                    if t >= since and m.type == "control_change" and m.control == 123}

    def close(self) -> None:
        self.port.close()


class Player:
    """A JACK MIDI output connected to improvd's input, playing phrases like a keyboard."""

    def __init__(self, jack, name: str = "player") -> None:
        self.port = mido.Backend("mido.backends.rtmidi/UNIX_JACK").open_output(
            name, virtual=True, client_name=f"improvd-test-{name}")
        self.jack = jack
        self.full_name = jack.wait_port(name)

    def connect(self, improvd_input: str = "improvd in") -> None:
        self.jack.connect(self.full_name, self.jack.wait_port(improvd_input))

    def play(self, notes: list[int] = PHRASE, gap: float = 0.12, hold: float = 0.1) -> float:
        """Play the phrase; the time its last note ended."""
        for pitch in notes:
            self.port.send(mido.Message("note_on", note=pitch, velocity=80))
            time.sleep(hold)
            self.port.send(mido.Message("note_off", note=pitch, velocity=0))
            time.sleep(gap - hold)
        return time.monotonic()

    def close(self) -> None:
        self.port.close()


class NotifySocket:
    """The systemd side of sd_notify: a bound unix datagram socket, received in a thread,
    every datagram kept with its arrival time as a dict of its fields."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        self.socket.settimeout(0.05)
        self.datagrams: list[tuple[float, dict[str, str]]] = []
        self.changed = threading.Condition()
        self.running = True
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self) -> None:
        while self.running:
            try:
                data = self.socket.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().split("\n") if line)
            with self.changed:
                self.datagrams.append((time.monotonic(), fields))
                self.changed.notify_all()

    def wait_for(self, key: str, value: str | None = None, contains: str | None = None,
                 timeout: float = 20.0) -> tuple[float, dict[str, str]]:
        """The first datagram with ``key`` (equal to ``value``, or containing ``contains``)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for arrived, fields in self.datagrams:
                    if key in fields and (value is None or fields[key] == value) and (
                            contains is None or contains in fields[key]):
                        return arrived, fields
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {key}={value or contains or ''} datagram; got {self.datagrams}")
                self.changed.wait(left)

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self.changed:
            return list(self.datagrams)

    def close(self) -> None:
        self.running = False
        self.thread.join(timeout=2)
        self.socket.close()


def offline_venv(path: Path, with_pip: bool = False) -> Path:
    """A new virtual environment that sees this one's dependencies (and its setuptools, to
    build improvd without network) through a .pth line, but not this one's improvd."""
    venv.create(path, with_pip=with_pip)
    site = next(path.glob("lib/python*/site-packages"))
    for own in site.iterdir():  # ensurepip's setuptools may predate what pyproject.toml asks for
        if own.name.startswith(("setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence")):
            shutil.rmtree(own) if own.is_dir() else own.unlink()
    folders = [sysconfig.get_paths()["purelib"], *(p for p in sys.path if Path(p).name == "site-packages")]
    (site / "dependencies.pth").write_text("".join(f"{folder}\n" for folder in dict.fromkeys(folders)))
    return path
