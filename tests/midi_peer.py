"""A MIDI peer as a process of its own, so that a test can kill it (SIGKILL: JACK drops its
client and every connection at once, as when a synth or a keyboard bridge crashes) and
start another under the same name.

    python -m tests.midi_peer player CLIENT PORT     # stdin "play": the phrase; prints "played T"
    python -m tests.midi_peer receiver CLIENT PORT   # prints "T HEX" for every message

It prints "waiting", then waits for a line "open" on stdin before it makes its JACK
client, so that a test can start it ahead (Python takes a while to start on a loaded
machine) and time the absence itself; then it prints "ready". T is time.monotonic(), the same clock as the test's.
"""

from __future__ import annotations

import sys
import threading
import time

import mido
import rtmidi

# C major arpeggio up and down: (onset s, length s, pitch), about half a second long.
PHRASE = [(0.00, 0.07, 60), (0.08, 0.07, 64), (0.16, 0.07, 67), (0.24, 0.07, 72), (0.32, 0.07, 67),
          (0.40, 0.10, 64)]
POLL_S = 0.0005


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def play(rt: rtmidi.MidiOut) -> float:
    events = sorted([(on, "note_on", p) for on, _, p in PHRASE] + [(on + d, "note_off", p) for on, d, p in PHRASE])
    start = time.monotonic() + 0.01
    for offset, kind, pitch in events:
        time.sleep(max(0.0, start + offset - time.monotonic()))
        rt.send_message(mido.Message(kind, note=pitch, velocity=80 if kind == "note_on" else 0).bytes())
    return time.monotonic()


def player(client: str, port: str) -> None:
    rt = rtmidi.MidiOut(rtmidi.API_UNIX_JACK, name=client)
    rt.open_virtual_port(port)
    say("ready")
    for line in sys.stdin:
        if line.strip() == "play":
            say(f"played {play(rt)}")


def receiver(client: str, port: str) -> None:
    """Reads rtmidi's queue from the main thread (no Python callback in JACK's thread)."""
    rt = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, name=client, queue_size_limit=8192)
    rt.ignore_types(sysex=False, timing=False, active_sense=True)
    rt.open_virtual_port(port)
    threading.Thread(target=lambda: sys.stdin.read() or None, daemon=True).start()  # drain stdin
    say("ready")
    while True:
        event = rt.get_message()
        if event is None:
            time.sleep(POLL_S)
            continue
        say(f"{time.monotonic()} {bytes(event[0]).hex()}")


def main() -> None:
    role, client, port = sys.argv[1:4]
    say("waiting")
    if sys.stdin.readline().strip() != "open":
        return
    {"player": player, "receiver": receiver}[role](client, port)


if __name__ == "__main__":
    main()
