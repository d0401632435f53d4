"""The MIDI session when JACK is not up yet: improvd started with ``--api jack`` before its
server (a login session where JACK or PipeWire comes up after it) waits for it, telling
systemd so and keeping its watchdog fed, then makes its ports and answers. Observed at
JACK (ports, notes) and at a notify socket standing in for systemd."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import mido

from improvd.config import PortsConfig
from improvd.session import MidiSession
from tests.conftest import Jack, free_server_name, start_server, stop_server
from tests.midi_peer import JackPeer
from tests.service_helpers import NotifySocket
from tests.test_ports import daemon, unique

SERVER_LATE_S = 3.0
PORTS_WITHIN_S = 3.0  # ports.reconnect_s is 0.2 in the test config; a loaded machine
ANSWER_WITHIN_S = 5.0


def test_no_server_at_start_then_up_3_s_later_its_ports_appear_and_it_answers(jack: Jack, tmp_path: Path) -> None:
    env = dict(jack.env)
    server = free_server_name(env, [f"improvd-late-{i}" for i in range(4)])  # no one else may start it meanwhile
    systemd = NotifySocket(tmp_path / "notify.sock")
    own = Jack(server, jack.period_frames, jack.rate,
               dict(env, JACK_DEFAULT_SERVER=server, NOTIFY_SOCKET=str(systemd.path), WATCHDOG_USEC="1000000"))
    process = None
    try:
        with daemon(own, tmp_path, ready=False, service={"watchdog": True}) as improvd:
            started = time.monotonic()
            systemd.wait_for("READY", "1", timeout=30)
            systemd.wait_for("STATUS", contains="JACK server not up yet", timeout=5)
            time.sleep(max(0.0, started + SERVER_LATE_S - time.monotonic()))
            assert improvd.process.poll() is None, improvd.log()
            process = start_server(server, env, tmp_path / "jackd.log")
            up = time.monotonic()
            pings = [t for t, fields in systemd.snapshot() if fields.get("WATCHDOG") == "1" and t < up]
            assert len(pings) >= 2, f"watchdog pings while waiting: {systemd.snapshot()}"
            while not {improvd.full_in, improvd.full_out} <= set(own.ports()):
                assert time.monotonic() - up < PORTS_WITHIN_S, f"no ports after the server came up:\n{improvd.log()}"
                time.sleep(0.02)
            heard: list[tuple[float, mido.Message]] = []
            peer = JackPeer(unique("band"), keys="keys", synth="synth", server=server,
                            on_message=lambda message, at: heard.append((at, message)))
            try:
                own.connect(f"{peer.client.name}:keys", improvd.full_in)
                own.connect(improvd.full_out, f"{peer.client.name}:synth")
                phrase_end = peer.play()
                deadline = time.monotonic() + ANSWER_WITHIN_S
                while not [m for t, m in heard if t > phrase_end and m.type == "note_on"]:
                    assert time.monotonic() < deadline, f"no answer on the server that came up:\n{improvd.log()}"
                    time.sleep(0.05)
            finally:
                peer.close()
            assert improvd.stop() == 0
    finally:
        if process is not None:
            stop_server(process)
        systemd.close()


def test_a_server_that_never_comes_within_jack_wait_s_exits_4(jack: Jack, tmp_path: Path) -> None:
    env = dict(jack.env)
    server = free_server_name(env, [f"improvd-late-{i}" for i in range(4)])
    own = Jack(server, jack.period_frames, jack.rate, dict(env, JACK_DEFAULT_SERVER=server))
    with daemon(own, tmp_path, ready=False, ports={"jack_wait_s": 1.0}) as improvd:
        assert improvd.process.wait(30) == 4, improvd.log()
        assert "improvd: no JACK server after " in improvd.log()
        assert "Traceback" not in improvd.log()


TIMEBASE_MASTER = """
import sys, time, jack
client = jack.Client(sys.argv[1], no_start_server=True)

def timebase(state, blocksize, position, new_position):
    position.valid = jack._lib.JackPositionBBT
    position.bar, position.beat, position.tick, position.bar_start_tick = 3, 2, 0, 0.0
    position.beats_per_bar, position.beat_type = 4.0, 4.0
    position.ticks_per_beat, position.beats_per_minute = 1920.0, 96.0

client.set_timebase_callback(timebase)
client.activate()
client.transport_start()
print("ready", flush=True)
sys.stdin.read()
"""


def test_jack_transport_tempo_bar_and_beat_are_readable_through_the_session(jack: Jack) -> None:
    """A DAW as JACK's timebase master (a process of its own: one JACK client a process)."""
    master = subprocess.Popen([sys.executable, "-c", TIMEBASE_MASTER, unique("daw")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=jack.env)
    session = MidiSession(PortsConfig(api="jack", client_name=unique("improvd")), lambda message, at: None)
    try:
        assert master.stdout.readline().strip() == "ready"
        session.open()
        deadline = time.monotonic() + 5
        while (transport := session.transport()) is None or not transport.rolling:
            assert time.monotonic() < deadline, f"no transport: {transport}"
            time.sleep(0.02)
        assert (transport.bpm, transport.bar, transport.beat, transport.beats_per_bar) == (96.0, 3, 2, 4.0)
    finally:
        session.close()
        master.stdin.close()
        master.wait(5)
