"""What the miniature DAWs (tests/clock_peer.py, tests/transport_peer.py) share: one JACK
client with a ``keys`` output and an ``in`` input, a line on stdout for every event with its
JACK frame, a phrase played at the frames it is due, and a command loop on stdin."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable

import jack

# (beat offset, beats held, pitch): four notes up, a beat apart.
PHRASE = [(0.0, 0.5, 60), (1.0, 0.5, 64), (2.0, 0.5, 67), (3.0, 0.75, 72)]


class DawPeer:
    def __init__(self, client_name: str) -> None:
        self.client = jack.Client(client_name, no_start_server=True)
        self.keys_out = self.client.midi_outports.register("keys")
        self.listen = self.client.midi_inports.register("in")
        self.rate = self.client.samplerate
        self.keys: list[tuple[int, bytes]] = []  # (frame, message), due order; written under lock
        self.lock = threading.Lock()
        self.log: queue.SimpleQueue[str] = queue.SimpleQueue()

    # ---- in the process callback ------------------------------------------------------------

    def hear(self, first: int) -> None:
        """Log what arrived at ``in`` in the cycle starting at frame ``first``."""
        for offset, data in self.listen.incoming_midi_events():
            self.log.put(f"in {first + offset} {bytes(data).hex()}")

    def play_due(self, first: int, frames: int) -> None:
        """Write the phrase's messages due in this cycle at their frames (a late one at once)."""
        with self.lock:
            while self.keys and self.keys[0][0] < first + frames:
                frame, data = self.keys.pop(0)
                self.keys_out.write_midi_event(max(0, frame - first), data)
                self.log.put(f"sent {max(frame, first)} {data.hex()}")

    # ---- the main thread --------------------------------------------------------------------

    def phrase(self, begin: float, beat: float) -> None:
        """PHRASE from frame ``begin``, ``beat`` frames a beat."""
        events = []
        for on, held, pitch in PHRASE:
            events.append((int(begin + on * beat), bytes([0x90, pitch, 80])))
            events.append((int(begin + (on + held) * beat), bytes([0x80, pitch, 0])))
        with self.lock:
            self.keys.extend(sorted(events))

    def serve(self, commands: dict[str, Callable[[list[str]], None]]) -> None:
        """Activate, say "ready RATE", then run each stdin line's command until "quit"."""
        def printer() -> None:
            while True:
                sys.stdout.write(self.log.get() + "\n")
                sys.stdout.flush()

        threading.Thread(target=printer, daemon=True).start()
        with self.client:
            sys.stdout.write(f"ready {self.rate}\n")
            sys.stdout.flush()
            for line in sys.stdin:
                command = line.split()
                if not command:
                    continue
                if command[0] == "quit":
                    break
                if command[0] in commands:
                    commands[command[0]](command[1:])
