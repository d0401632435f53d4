"""A JACK MIDI peer written with JACK-Client, the way the tests' keyboards and synths are:
one JACK client, a keyboard output and/or a synth input, each event stamped with its frame.

In-process (``JackPeer``), or as a process of its own, so that a test can kill it (SIGKILL:
JACK drops its client and every connection at once, as when a synth or a keyboard bridge
crashes) and start another under the same name:

    python -m tests.midi_peer player CLIENT PORT     # stdin "play": the phrase; prints "played T"
                                                     # "send HEX": those bytes; prints "sent T"
    python -m tests.midi_peer receiver CLIENT PORT   # prints "T HEX" for every message

It prints "waiting", then waits for a line "open" on stdin before it makes its JACK
client, so that a test can start it ahead (Python takes a while to start on a loaded
machine) and time the absence itself; then it prints "ready". T is time.monotonic(), the
same clock as the test's.

One client per process: libjack shares one table of activation semaphores among the
clients of a process, and a second client can inherit a stale one (docs/jack.md).
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from collections.abc import Callable

import jack
import mido

from tests import GIL_SLICE_S

# C major arpeggio up and down: (onset s, length s, pitch), about half a second long.
PHRASE = [(0.00, 0.07, 60), (0.08, 0.07, 64), (0.16, 0.07, 67), (0.24, 0.07, 72), (0.32, 0.07, 67),
          (0.40, 0.10, 64)]
POLL_S = 0.001


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class JackPeer:
    """A keyboard (``keys``: an output port) and/or a synth (``synth``: an input port) on
    one JACK client. What the synth receives goes to ``on_message(message, time)`` from a
    thread of its own, timed at its frame."""

    def __init__(self, client: str, keys: str | None = None, synth: str | None = None,
                 on_message: Callable[[mido.Message, float], None] | None = None, server: str | None = None) -> None:
        self.client = jack.Client(client, no_start_server=True, servername=server)
        self.outbox: collections.deque[bytes] = collections.deque()
        self.inbox: collections.deque[tuple[int, bytes]] = collections.deque()
        self.on_message = on_message
        self.keys = self.client.midi_outports.register(keys) if keys else None
        self.synth = self.client.midi_inports.register(synth) if synth else None
        self.xruns = 0  # cycles JACK reported overrun while this peer was open (any client's)
        self.client.set_process_callback(self._process)
        self.client.set_xrun_callback(self._xrun)
        self.client.activate()
        self.running = True
        self.reader = threading.Thread(target=self._read, daemon=True)
        if synth:
            self.reader.start()

    def _process(self, frames: int) -> None:
        if self.keys is not None:
            self.keys.clear_buffer()
            while self.outbox:
                self.keys.write_midi_event(0, self.outbox.popleft())
        if self.synth is not None:
            start = self.client.last_frame_time
            for offset, data in self.synth.incoming_midi_events():
                self.inbox.append((start + offset, bytes(data)))

    def _xrun(self, delay_usecs: float) -> None:
        self.xruns += 1

    def _read(self) -> None:
        while self.running:
            if not self.inbox:
                time.sleep(POLL_S)
                continue
            frame, data = self.inbox.popleft()
            for _ in range(5):  # the frame time and the clock read together, not split by a preemption
                before = time.monotonic()
                current = self.client.frame_time
                after = time.monotonic()
                if after - before < 50e-6:
                    break
            age = ((current - frame + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            at = (before + after) / 2 - age / self.client.samplerate
            try:
                message = mido.Message.from_bytes(data)
            except ValueError:
                continue
            if self.on_message is not None:
                self.on_message(message, at)

    def send(self, message: mido.Message) -> float:
        self.outbox.append(bytes(message.bytes()))
        return time.monotonic()

    def play(self, phrase: list[tuple[float, float, int]] = PHRASE, channel: int = 0) -> float:
        """Play (onset, length, pitch) notes on time; the send time of the last message."""
        events = sorted([(on, "note_on", p) for on, _, p in phrase] + [(on + d, "note_off", p) for on, d, p in phrase])
        start = time.monotonic() + 0.01
        sent = start
        for offset, kind, pitch in events:
            time.sleep(max(0.0, start + offset - time.monotonic()))
            sent = self.send(mido.Message(kind, note=pitch, velocity=80 if kind == "note_on" else 0, channel=channel))
        return sent

    def close(self) -> None:
        self.running = False
        if self.reader.is_alive():
            self.reader.join(1)
        self.client.deactivate()
        self.client.close()


def player(client: str, port: str) -> None:
    peer = JackPeer(client, keys=port)
    say("ready")
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "play":
            say(f"played {peer.play()}")
        elif command == "send":  # raw bytes, garbage included
            peer.outbox.append(bytes.fromhex(argument))
            say(f"sent {time.monotonic()}")


def receiver(client: str, port: str) -> None:
    JackPeer(client, synth=port, on_message=lambda message, at: say(f"{at} {message.bin().hex()}"))
    threading.Thread(target=lambda: sys.stdin.read() or None, daemon=True).start()  # drain stdin
    say("ready")
    while True:
        time.sleep(1)


def main() -> None:
    role, client, port = sys.argv[1:4]
    say("waiting")
    if sys.stdin.readline().strip() != "open":
        return
    {"player": player, "receiver": receiver}[role](client, port)


if __name__ == "__main__":
    sys.setswitchinterval(GIL_SLICE_S)
    main()
