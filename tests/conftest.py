"""Shared fixtures. ``jack``: a real JACK server (dummy audio backend) for the port tests.

Which server the tests use:
- ``JACK_DEFAULT_SERVER`` set (``.ci/run`` sets it after starting its own ``jackd``): that
  server, which must answer (``IMPROVD_TEST_JACKD_LOG``, its log, lets tests count overruns);
- otherwise a private server, ``jackd -n improvd-test-N --realtime -d dummy -r 48000
  -p 128`` (the first free N of 0-3), started here and stopped at the end of the session.
  Being private, it never touches a developer's running JACK session (no test note
  reaches a real synth) nor another test run on the same machine.

Without ``jackd`` (Debian/Ubuntu: ``apt-get install --no-install-recommends jackd2``) the
tests that need it skip, saying so; under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import GIL_SLICE_S

# The dummy backend's clock: 128 frames at 48 kHz is a 2.7 ms period (.ci/run uses the same).
# Realtime where allowed (root, or an rtprio limit; elsewhere jackd says so and runs
# without): measured on a 2-core machine with both cores busy, a --no-realtime server
# overran about three times as many cycles during this suite, and an overrun repeats or
# drops MIDI events. IMPROVD_TEST_JACKD replaces these arguments.
sys.setswitchinterval(GIL_SLICE_S)  # for the JACK clients the tests run in this process
JACKD_ARGS = os.environ.get("IMPROVD_TEST_JACKD", "--realtime -d dummy -r 48000 -p 128").split()
SERVER_NAMES = [f"improvd-test-{i}" for i in range(4)]  # fixed: jackd reclaims a dead server's slot by name
START_TIMEOUT_S = 10.0
TOOL_TIMEOUT_S = 10.0
CLIENT_REFUSED = ("jack_client_open", "cannot connect", "not running", "cannot open")
JACK_TOOLS = ("jackd", "jack_lsp", "jack_connect", "jack_disconnect", "jack_bufsize", "jack_samplerate",
              "jack_midi_dump")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


def not_available(reason: str) -> None:
    """Skip on a developer's machine; fail in CI, where a missing JACK is a broken setup."""
    if in_ci():
        pytest.fail(f"CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


@dataclass
class Jack:
    """A running JACK server and JACK's own command-line clients, pointed at it."""

    server: str
    period_frames: int
    rate: int
    env: dict[str, str]
    log_path: Path | None = None  # jackd's log, when this session started the server

    def xruns(self) -> int:
        """Cycles jackd reported overrun so far (0 when its log is not ours). A client not
        finished in time lets the next cycle rewrite MIDI buffers it is still reading:
        events repeat or vanish, whoever sent them."""
        if self.log_path is None:
            return 0
        return self.log_path.read_text(errors="replace").count("XRun")

    @property
    def period_s(self) -> float:
        return self.period_frames / self.rate

    def tool(self, *args: str, check: bool = True, timeout: float = TOOL_TIMEOUT_S) -> str:
        """Run a JACK tool against this server; its stdout. jackd2 refuses a new client
        now and then while it is still reaping one that just quit ("Cannot notify add
        client"), so a client that cannot open is retried a few times."""
        for attempt in range(5):
            result = subprocess.run(args, env=self.env, capture_output=True, text=True, timeout=timeout)
            said = (result.stdout + result.stderr).lower()
            if result.returncode == 0 or not any(sign in said for sign in CLIENT_REFUSED):
                break
            time.sleep(0.05 * (attempt + 1))
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result.stdout

    def ports(self) -> list[str]:
        return [line for line in self.tool("jack_lsp").splitlines() if line and not line.startswith(" ")]

    def types(self) -> dict[str, str]:
        """port -> its type (``jack_lsp -t``: "8 bit raw midi", "32 bit float mono audio")."""
        found: dict[str, str] = {}
        current = ""
        for line in self.tool("jack_lsp", "-t").splitlines():
            if line.startswith((" ", "\t")):
                found[current] = line.strip()
            elif line:
                current = line
        return found

    def connections(self) -> dict[str, list[str]]:
        """port -> the ports it is connected to (``jack_lsp -c``)."""
        found: dict[str, list[str]] = {}
        current = ""
        for line in self.tool("jack_lsp", "-c").splitlines():
            if line.startswith(" "):
                found[current].append(line.strip())
            elif line:
                current = line
                found[current] = []
        return found

    def wait_port(self, suffix: str, timeout: float = 15.0, gone: bool = False) -> str:
        """The full name of the port named ``client:suffix`` once it exists (or "" once
        no such port exists, with ``gone``)."""
        deadline = time.monotonic() + timeout
        while True:
            matches = [p for p in self.ports() if p.partition(":")[2] == suffix]
            if gone and not matches:
                return ""
            if matches and not gone:
                return matches[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"JACK port ':{suffix}' {'still there' if gone else 'never appeared'}: "
                                     f"{self.ports()}")
            time.sleep(0.05)

    def wait_port_of(self, client: str, port: str, timeout: float = 10.0) -> str:
        """``client:port`` once it exists."""
        name = f"{client}:{port}"
        deadline = time.monotonic() + timeout
        while name not in self.ports():
            if time.monotonic() > deadline:
                raise AssertionError(f"JACK port {name!r} never appeared: {self.ports()}")
            time.sleep(0.02)
        return name

    def connect(self, source: str, destination: str) -> None:
        self.tool("jack_connect", source, destination)

    def disconnect(self, source: str, destination: str) -> None:
        self.tool("jack_disconnect", source, destination)


def _answers(env: dict[str, str]) -> bool:
    try:
        return subprocess.run(["jack_lsp"], env=env, capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _describe(env: dict[str, str], server: str, log_path: Path | None = None) -> Jack:
    frames = subprocess.run(["jack_bufsize"], env=env, capture_output=True, text=True, timeout=5).stdout
    rate = subprocess.run(["jack_samplerate"], env=env, capture_output=True, text=True, timeout=5).stdout
    try:
        return Jack(server, int(frames.split()[0]), int(rate.split()[0]), env, log_path)
    except (IndexError, ValueError):  # unreadable: assume the largest usual period
        return Jack(server, 1024, 48000, env, log_path)


def _stop_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="session")
def jack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jack]:
    missing = [tool for tool in JACK_TOOLS if shutil.which(tool) is None]
    if missing:
        not_available(f"JACK is not installed (missing {', '.join(missing)}); "
                      "install it with: apt-get install --no-install-recommends jackd2")
    env = dict(os.environ, JACK_NO_START_SERVER="1")
    given = os.environ.get("JACK_DEFAULT_SERVER")
    if given:
        if not _answers(env):
            not_available(f"JACK_DEFAULT_SERVER={given} is set but that JACK server does not answer")
        log = os.environ.get("IMPROVD_TEST_JACKD_LOG")  # .ci/run names its server's log
        yield _describe(env, given, Path(log) if log else None)
        return
    server = free_server_name(env)
    env["JACK_DEFAULT_SERVER"] = server
    log_path = Path(tmp_path_factory.mktemp("jack")) / "jackd.log"
    try:
        process = start_server(server, env, log_path)
    except JackdFailed as err:
        not_available(str(err))
    try:
        # Everything this session starts (rtmidi in this process, improvd, jack_* tools) uses it.
        saved = {key: os.environ.get(key) for key in ("JACK_DEFAULT_SERVER", "JACK_NO_START_SERVER")}
        os.environ.update(JACK_DEFAULT_SERVER=server, JACK_NO_START_SERVER="1")
        try:
            yield _describe(env, server, log_path)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    finally:
        stop_server(process)


def free_server_name(env: dict[str, str], names: list[str] = SERVER_NAMES) -> str:
    """The first of SERVER_NAMES no running server answers to. JACK keeps at most 8 servers
    in its registry, and a server that is killed keeps its slot until one of the same name
    starts: so a few fixed names, never one per run, and jackd is told to stop (cleanly,
    releasing its slot) if this process dies first."""
    for server in names:
        if not _answers(dict(env, JACK_DEFAULT_SERVER=server)):
            return server
    not_available(f"every test JACK server name is taken ({', '.join(names)})")
    raise AssertionError("unreachable")


class JackdFailed(RuntimeError):
    """jackd exited, or did not answer in time."""


def start_server(server: str, env: dict[str, str], log_path: Path, args: list[str] | None = None) -> subprocess.Popen:
    """``jackd -n server`` with ``args`` (JACKD_ARGS), once it answers (its output appended to
    log_path); JackdFailed with the end of its log if it does not. Shared with bench/."""
    args = JACKD_ARGS if args is None else args
    env = dict(env, JACK_DEFAULT_SERVER=server)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(["jackd", "-n", server, *args], env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_stop_with_parent)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _answers(env):
        if process.poll() is not None or time.monotonic() > deadline:
            stop_server(process)
            text = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise JackdFailed(f"jackd {' '.join(args)} did not start: " + " | ".join(text))
        time.sleep(0.05)
    return process


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
