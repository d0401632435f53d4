"""Peers and the JACK server going away and coming back under a running improvd (issue 10).

The keyboard and the synth are processes of their own (tests/midi_peer.py), killed with
SIGKILL as a crash would: JACK drops their clients and every connection at once. The next
one is started ahead and told when to open its port, so that the absence is what the test
says, not what Python's start-up on a loaded machine makes it. Everything is asserted at
the receiving end (notes from improvd) or in JACK's own graph (jack_lsp), not in logs.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import mido

from tests.conftest import Jack, free_server_name, start_server, stop_server
from tests.service_helpers import NotifySocket
from tests.test_ports import (
    MAX_ANSWER_S,
    Player,
    PlayerProcess,
    Receiver,
    ReceiverProcess,
    Recording,
    assert_well_formed,
    closing,
    daemon,
    kill_peers,  # noqa: F401 - an autouse fixture: every peer process gone after a test
    unique,
)

RECONNECT_S = 1.0  # the shipped default: a quick return falls well inside one check interval
CONNECT_WITHIN_S = RECONNECT_S + 1.0  # the "within ports.reconnect_s", plus a loaded machine
STABLE_S = 1.0  # improvd's ports present this long in a row count as settled
STUCK_REMADE_WITHIN_S = 5.0  # a client JACK never runs is made again (jackports.STUCK_S, and a few tries)
ANSWER_WITHIN_S = 5.0
RANDOM_RUN_S = 90.0
REPLAYS = 2  # a phrase played again when JACK overran while improvd's answer was awaited
RSS_GROWTH_KB = 4096


def connected(jack: Jack, a: str, b: str) -> bool:
    return b in jack.connections().get(a, [])


def wait_connected(jack: Jack, a: str, b: str, timeout: float = CONNECT_WITHIN_S) -> float:
    """Seconds until JACK shows ``a`` connected to ``b``."""
    start = time.monotonic()
    while not connected(jack, a, b):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{a!r} not connected to {b!r} within {timeout} s: {jack.connections()}")
        time.sleep(0.02)
    return time.monotonic() - start


def answer_after(synth: Recording, start: float, what: str, replay: Callable[[], float] | None = None) -> float:
    """The time of improvd's first NOTE_ON at ``synth`` after ``start``. An overrunning JACK
    server drops MIDI events at any client: when it overran while we waited, the phrase is
    played again (``replay``, up to REPLAYS times) before improvd is called deaf."""
    replays = 0
    while True:
        xruns = synth.jack.xruns()
        try:
            synth.wait_for(lambda s=start: synth.note_ons(s), ANSWER_WITHIN_S, what)
            return synth.note_ons(start)[0][0]
        except AssertionError:
            if replay is None or replays == REPLAYS or synth.jack.xruns() == xruns:
                raise
        replays += 1
        start = replay()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# ---- the keyboard and the synth, killed and restarted ---------------------------------------------


def test_input_flows_after_the_player_is_killed_and_restarted_slowly_and_quickly(jack: Jack, tmp_path: Path) -> None:
    """Issue 10, (1) and (2): after the keyboard's return improvd hears it again, whether it
    was away for 3 s (longer than a check interval) or 0.2 s (shorter: the name never looks
    gone to a name check, but JACK dropped the connection)."""
    client = unique("keys")
    synth = Receiver(jack)
    player = PlayerProcess(jack, client)
    player.open()
    with closing(synth), daemon(jack, tmp_path, "--in", client, "--out", synth.client,
                                               ports={"reconnect_s": RECONNECT_S}) as improvd:
        our_in = improvd.full_in
        assert connected(jack, player.name, our_in)
        answer_after(synth, player.play(), "the answer before any restart")
        for away in (3.0, 0.2):
            synth.wait_for(lambda: not synth.sounding(), MAX_ANSWER_S + 2, "the previous answer's end")
            player_next = PlayerProcess(jack, client).ready()
            gone = player.kill()
            time.sleep(max(0.0, gone + away - time.monotonic()))
            player = player_next
            back = player.open()
            wait_connected(jack, player.name, our_in)
            phrase_end = player.play()
            first = answer_after(synth, phrase_end, f"the answer after a {away} s absence of the keyboard")
            assert first > back
        assert improvd.process.poll() is None


def test_a_player_killed_holding_a_key_then_another_phrase_is_answered(jack: Jack, tmp_path: Path) -> None:
    """The keyboard dies with a key down on improvd's virtual input, so its NOTE_OFF never
    comes: JACK drops the connection and improvd releases what came through it. The next
    keyboard's phrase is answered (well before engine.max_held_s would release the key)."""
    synth = Receiver(jack)
    with closing(synth), daemon(jack, tmp_path, "--out", synth.client) as improvd:
        player = PlayerProcess(jack, unique("keys"))
        player.open()
        jack.connect(player.name, improvd.full_in)
        player.send(mido.Message("note_on", note=50, velocity=90))
        time.sleep(0.5)
        player.kill()
        second = PlayerProcess(jack, unique("keys"))
        second.open()
        jack.connect(second.name, improvd.full_in)
        answer_after(synth, second.play(), "the answer after a keyboard died holding a key")
        assert improvd.process.poll() is None


def test_a_synth_killed_and_restarted_quickly_gets_the_next_answer(jack: Jack, tmp_path: Path) -> None:
    """Issue 10, (2) on the output side: the synth crashes in the middle of an answer and is
    back 0.2 s later, well inside one check interval; it gets all-notes-off, then the next
    answer, complete."""
    client = unique("synth")
    player = Player(jack)
    synth = ReceiverProcess(jack, client)
    synth.open()
    with closing(player), daemon(jack, tmp_path, "--in", player.client, "--out", client,
                                 engine={"min_answer_s": 3.0, "max_answer_s": 3.0},
                                 ports={"reconnect_s": RECONNECT_S}) as improvd:
        our_out = improvd.full_out
        assert connected(jack, our_out, synth.name)
        player.play()
        synth.wait_for(synth.sounding, ANSWER_WITHIN_S, "a sounding answer note")
        synth_next = ReceiverProcess(jack, client).ready()
        gone = synth.kill()  # mid-answer
        time.sleep(max(0.0, gone + 0.2 - time.monotonic()))
        back = synth_next.open()
        wait_connected(jack, our_out, synth_next.name)
        synth_next.wait_for(lambda: synth_next.all_notes_off_channels() == set(range(16)), 2, "all-notes-off")
        phrase_end = player.play()
        first = answer_after(synth_next, phrase_end, "the answer on the synth that came back")
        assert first > back
        synth_next.wait_for(lambda: time.monotonic() > first + 3.0 and not synth_next.sounding(), 8,
                            "the answer's end")
        assert_well_formed(synth_next.notes(), "answer to the returned synth", synth_next)
        assert improvd.process.poll() is None


def test_random_kills_and_restarts_of_both_peers(jack: Jack, tmp_path: Path) -> None:
    """Many crashes of the keyboard, the synth or both, at random moments (mid-phrase,
    mid-answer, in silence), each away 0.1-3 s. After every return improvd answers the
    next phrase; at the end it is connected both ways, nothing sounds at the synth, and its
    memory has not grown. The seed is printed: rerun with IMPROVD_TEST_SEED to repeat."""
    seed = int(os.environ.get("IMPROVD_TEST_SEED", random.randrange(1 << 31)))
    print(f"random kill/restart run: IMPROVD_TEST_SEED={seed}")
    rng = random.Random(seed)
    keys, synth_client = unique("keys"), unique("synth")
    player, synth = PlayerProcess(jack, keys), ReceiverProcess(jack, synth_client)
    player.open()
    synth.open()
    with daemon(jack, tmp_path, "--in", keys, "--out", synth_client, ports={"reconnect_s": RECONNECT_S}) as improvd:
        our_in, our_out = improvd.full_in, improvd.full_out
        answer_after(synth, player.play(), "the first answer", replay=player.play)
        rss: list[int] = []
        cycles: list[str] = []
        deadline = time.monotonic() + RANDOM_RUN_S
        while time.monotonic() < deadline:
            victims = rng.choice(["player", "synth", "both"])
            moment = rng.choice(["mid-phrase", "mid-answer", "silence"])
            away = rng.uniform(0.1, 3.0)
            cycles.append(f"{victims} {moment} {away:.2f} s")
            player_next = PlayerProcess(jack, keys).ready() if victims != "synth" else None
            synth_next = ReceiverProcess(jack, synth_client).ready() if victims != "player" else None
            if moment == "mid-phrase":
                player.start_phrase()
                time.sleep(rng.uniform(0.0, 0.4))
            elif moment == "mid-answer":
                answer_after(synth, player.play(), f"an answer to interrupt (cycles: {cycles})", replay=player.play)
                time.sleep(rng.uniform(0.0, 0.5))
            else:
                time.sleep(rng.uniform(0.0, 1.0))
            gone = time.monotonic()
            for old, new in ((player, player_next), (synth, synth_next)):
                if new is not None:
                    old.kill()
            time.sleep(max(0.0, gone + away - time.monotonic()))
            player, synth = player_next or player, synth_next or synth
            for new in (player_next, synth_next):
                if new is not None:
                    new.open()
            wait_connected(jack, player.name, our_in)
            wait_connected(jack, our_out, synth.name)
            try:
                synth.wait_for(lambda s=synth: not s.sounding(all_notes_off=True), MAX_ANSWER_S + 2, "silence first")
                answer_after(synth, player.play(), "the answer after", replay=player.play)
            except AssertionError as err:
                raise AssertionError(f"{err}\nafter {cycles}; improvd's log ends:\n{improvd.log()[-6000:]}") from None
            rss.append(rss_kb(improvd.process.pid))
        first = synth.note_ons()[-1][0]
        synth.wait_for(lambda: time.monotonic() > first + MAX_ANSWER_S and not synth.sounding(), 5,
                       "the last answer's end")
        synth.wait_quiet(0.5, 5)
        assert not synth.sounding(all_notes_off=True), f"left sounding after {cycles}: {synth.summary()}"
        assert connected(jack, player.name, our_in) and connected(jack, our_out, synth.name)
        assert improvd.process.poll() is None, improvd.log()
        print(f"{len(cycles)} cycles; improvd RSS {rss[0]} kB after the first, {rss[-1]} kB after the last")
        assert len(cycles) >= 10, cycles
        settled = rss[len(rss) // 4]
        assert rss[-1] - settled <= RSS_GROWTH_KB, f"RSS grew from {settled} to {rss[-1]} kB over {cycles}"


# ---- the JACK server itself -----------------------------------------------------------------


def test_a_jack_server_restart_ends_with_improvd_on_the_new_server(jack: Jack, tmp_path: Path) -> None:
    """Issue 10, (3): a private server is stopped and started again under a running improvd
    (virtual ports, as shipped). improvd tells systemd it is waiting, and never runs on
    without ports: once the server is back, its ports are there again within a check
    interval and it answers through them."""
    env = dict(jack.env)
    # Its own names: while it is down, another test session must not take its name.
    server = free_server_name(env, [f"improvd-restart-{i}" for i in range(4)])
    systemd = NotifySocket(tmp_path / "notify.sock")
    own = Jack(server, jack.period_frames, jack.rate,
               dict(env, JACK_DEFAULT_SERVER=server, NOTIFY_SOCKET=str(systemd.path)))
    log_path = tmp_path / "jackd.log"
    process = start_server(server, env, log_path)
    try:
        with daemon(own, tmp_path, ports={"reconnect_s": 0.2}) as improvd:
            ours = {improvd.full_in, improvd.full_out}
            assert ours <= set(own.ports())
            stop_server(process)
            systemd.wait_for("STATUS", contains="JACK server gone", timeout=5)  # noticed and said
            time.sleep(1.0)
            assert improvd.process.poll() is None, improvd.log()
            process = start_server(server, env, log_path)
            back = time.monotonic()
            while not ours <= set(own.ports()):
                assert improvd.process.poll() is None, f"improvd exited:\n{improvd.log()}"
                assert time.monotonic() - back < CONNECT_WITHIN_S, f"no ports on the new server:\n{improvd.log()}"
                time.sleep(0.02)
            # A client that a just-returned jackd never runs is made again (improvd sees JACK's
            # overruns): the peers connect once the ports have stayed put for a while.
            stable_since = time.monotonic()
            while time.monotonic() - stable_since < STABLE_S:
                if not ours <= set(own.ports()):
                    stable_since = time.monotonic()
                assert time.monotonic() - back < CONNECT_WITHIN_S + STUCK_REMADE_WITHIN_S, \
                    f"improvd's ports never settled on the new server:\n{improvd.log()}"
                time.sleep(0.02)
            player, synth = PlayerProcess(own, unique("keys")), ReceiverProcess(own, unique("synth"))
            player.open()
            synth.open()
            own.connect(player.name, improvd.full_in)
            own.connect(improvd.full_out, synth.name)
            try:
                answer_after(synth, player.play(), "an answer on the new server")
            except AssertionError as err:
                raise AssertionError(f"{err}\nimprovd's log:\n{improvd.log()}") from None
            assert improvd.stop() == 0
    finally:
        stop_server(process)
        systemd.close()
