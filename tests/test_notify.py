"""sd_notify: the datagrams themselves against a real unix socket, then the running daemon
speaking the protocol the way systemd sees it (READY after model and ports, WATCHDOG at the
configured interval, STATUS with mode/ports/latency, STOPPING on the way out)."""

from __future__ import annotations

import logging
import os
import signal
import socket
import statistics
import time

import pytest

from improvd.memory import STRENGTH
from improvd.notify import Notifier, watchdog_interval
from tests.service_helpers import (
    STOP_DEADLINE_S,
    TIMESTAMP,
    Improvd,
    Listener,
    NotifySocket,
    Player,
    log_lines,
    write_config,
)

WATCHDOG_USEC = 400_000  # WatchdogSec=0.4s: pings expected every 0.2 s


@pytest.fixture
def systemd(tmp_path):
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.close()


def received(sock: NotifySocket, count: int, timeout: float = 5.0) -> list[dict[str, str]]:
    deadline = time.monotonic() + timeout
    while len(sock.snapshot()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return [fields for _, fields in sock.snapshot()]


# ---- the Notifier on its own -------------------------------------------------------------------


def test_each_notification_is_one_datagram_of_key_value_lines(systemd):
    notifier = Notifier({"NOTIFY_SOCKET": str(systemd.path)})
    notifier.ready("mode duet, in 'a', out 'b'")
    notifier.watchdog()
    notifier.reloading()
    notifier.status("answer p99 3.1 ms")
    notifier.stopping()
    notifier.close()
    got = received(systemd, 5)
    assert got[0] == {"READY": "1", "STATUS": "mode duet, in 'a', out 'b'"}
    assert got[1] == {"WATCHDOG": "1"}
    assert got[2]["RELOADING"] == "1" and got[2]["STATUS"] == "reloading"
    assert abs(int(got[2]["MONOTONIC_USEC"]) - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 5_000_000
    assert got[3] == {"STATUS": "answer p99 3.1 ms"}
    assert got[4] == {"STOPPING": "1", "STATUS": "stopping"}


def test_status_stays_one_field_and_is_not_resent_unchanged(systemd):
    notifier = Notifier({"NOTIFY_SOCKET": str(systemd.path)})
    notifier.status("in 'evil\nREADY=1'")
    notifier.status("in 'evil\nREADY=1'")
    notifier.status("other")
    got = received(systemd, 2)
    time.sleep(0.1)
    assert [fields for _, fields in systemd.snapshot()] == [{"STATUS": "in 'evil READY=1'"}, {"STATUS": "other"}]
    assert "READY" not in got[0]


def test_abstract_socket_address(tmp_path):
    name = f"improvd-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready("ok")
        assert server.recv(4096) == b"READY=1\nSTATUS=ok"
    finally:
        server.close()


def test_without_notify_socket_nothing_is_sent_and_nothing_fails():
    notifier = Notifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.active
    assert notifier.watchdog_interval is None  # no socket to ping
    assert notifier.send(ready=1) is False
    notifier.stopping()
    notifier.close()


def test_a_vanished_socket_is_warned_about_once_and_never_raises(tmp_path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    with caplog.at_level(logging.WARNING, logger="improvd.notify"):
        for _ in range(3):
            notifier.watchdog()
    assert notifier.failures == 3
    assert len([r for r in caplog.records if "sd_notify" in r.message]) == 1


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "10000000"}, 5.0),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": str(os.getpid())}, 0.2),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_the_deadline_and_only_for_us(env, expected):
    assert watchdog_interval(env) == expected


# ---- the daemon, as systemd sees it --------------------------------------------------------------


def test_daemon_speaks_the_protocol_ready_watchdog_status_stopping(jack, tmp_path, systemd):
    env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": str(WATCHDOG_USEC), "JOURNAL_STREAM": "8:12345"}
    daemon = Improvd(write_config(tmp_path / "config.toml"), env)
    player = listener = None
    try:
        # READY=1 once the model is loaded and the ports are open, with mode and ports.
        _, ready = systemd.wait_for("READY", "1")
        assert {"improvd in", "improvd out"} <= {p.partition(":")[2] for p in jack.ports()}
        lines = log_lines(daemon)
        model_at = next(i for i, line in enumerate(lines) if "improvd.model" in line)
        ports_at = next(i for i, line in enumerate(lines) if "ports:" in line)
        ready_at = next(i for i, line in enumerate(lines) if "ready:" in line)
        assert model_at < ports_at < ready_at
        assert "mode call-response" in ready["STATUS"]
        assert "'improvd in'" in ready["STATUS"] and "'improvd out'" in ready["STATUS"]
        assert f"memory {STRENGTH:.2f} (0 events)" in ready["STATUS"]  # the default strength, nothing learnt yet

        # Under journald (JOURNAL_STREAM set), no timestamps of our own.
        assert lines and not any(TIMESTAMP.match(line) for line in lines)
        assert lines[0].startswith("<6>INFO improvd."), lines[0]  # and syslog priorities

        # STATUS= gains the latency once an answer has been played.
        player, listener = Player(jack), Listener(jack)
        player.connect()
        listener.connect()
        player.play()
        listener.wait_sounding()
        _, status = systemd.wait_for("STATUS", contains="answer p99", timeout=10)
        assert "mode call-response" in status["STATUS"] and "ms" in status["STATUS"]

        # WATCHDOG=1 every WATCHDOG_USEC / 2, from the engine loop, all along.
        sent_at = daemon.send_signal(signal.SIGTERM)
        code, elapsed = daemon.wait_exit(sent_at)
        assert code == 0 and elapsed < STOP_DEADLINE_S, (code, elapsed, daemon.log())
        time.sleep(0.05)
        datagrams = systemd.snapshot()
        ready_time = next(t for t, f in datagrams if f.get("READY") == "1")
        pings = [t for t, f in datagrams if f.get("WATCHDOG") == "1"]
        assert pings and pings[0] - ready_time < 0.1, "first ping right after READY"
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        assert len(gaps) >= 5, f"only {len(pings)} pings"
        interval = WATCHDOG_USEC / 2e6
        assert interval * 0.9 <= statistics.median(gaps) <= interval * 1.5, gaps
        assert max(gaps) < WATCHDOG_USEC / 1e6, f"a gap of {max(gaps):.3f} s would trip the watchdog"

        # STOPPING=1 last; nothing after it.
        assert datagrams[-1][1] == {"STOPPING": "1", "STATUS": "stopping"}
        assert sum("STOPPING" in f for _, f in datagrams) == 1
    finally:
        for thing in (player, listener, daemon):
            if thing is not None:
                thing.close()


def test_no_ready_when_the_model_fails_to_load(tmp_path, systemd):
    config = write_config(tmp_path / "config.toml", model={"path": "missing.onnx"})
    daemon = Improvd(config, {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    code, _ = daemon.wait_exit(time.monotonic(), timeout=60)
    time.sleep(0.05)
    assert code == 3, daemon.log()
    got = [fields for _, fields in systemd.snapshot()]
    assert not any("READY" in f for f in got)
    assert got[-1]["STOPPING"] == "1"
    assert got[-1]["STATUS"].startswith("failed: ") and "missing.onnx" in got[-1]["STATUS"]


def test_invalid_configuration_at_start_says_why_in_the_status(tmp_path, systemd):
    config = write_config(tmp_path / "config.toml", engine={"silence_ms": 5}, sampler={"temprature": 1})
    daemon = Improvd(config, {"NOTIFY_SOCKET": str(systemd.path)})
    code, _ = daemon.wait_exit(time.monotonic(), timeout=60)
    time.sleep(0.05)
    assert code == 1, daemon.log()
    got = [fields for _, fields in systemd.snapshot()]
    assert not any("READY" in f for f in got)
    status = got[-1]["STATUS"]  # what `systemctl status improvd` shows
    assert status.startswith(f"failed: invalid configuration in {config}"), status
    assert "engine.silence_ms: must be between 50 and 10000, got 5" in status
    assert "sampler.temprature: unknown key" in status


def test_a_wrong_flag_at_start_says_why_in_the_status(tmp_path, systemd):
    daemon = Improvd(write_config(tmp_path / "config.toml"), {"NOTIFY_SOCKET": str(systemd.path)},
                     args=("--mode", "dut"))
    code, _ = daemon.wait_exit(time.monotonic(), timeout=60)
    time.sleep(0.05)
    assert code == 64, daemon.log()
    status = [fields for _, fields in systemd.snapshot()][-1]["STATUS"]
    assert status.startswith("failed: argument --mode: invalid choice: 'dut'"), status
