"""A DAW in miniature, as a JACK client process of its own: it sends MIDI clock (24 per
beat, Start) from port ``clock``, plays phrases from port ``keys``, and records what
arrives at port ``in``, every event stamped with its JACK frame, so that beats and answers
are compared at the sample, whatever the machine's load.

    python -m tests.clock_peer CLIENT BPM

stdin: "start" (Start, then clock from beat 0), "bpm X" (the tempo from the next clock),
"play" (a short phrase from the next beat), "quit". stdout: "ready RATE", then
"clock FRAME" for every clock sent (the first after Start is beat 0), "start FRAME",
"sent FRAME HEX" for each key message and "in FRAME HEX" for each message received.
"""

from __future__ import annotations

import queue
import sys
import threading

import jack

from tests import GIL_SLICE_S

# (beat offset, beats held, pitch): four notes up, a quarter note apart.
PHRASE = [(0.0, 0.5, 60), (1.0, 0.5, 64), (2.0, 0.5, 67), (3.0, 0.75, 72)]


def main() -> None:
    client_name, bpm = sys.argv[1], float(sys.argv[2])
    client = jack.Client(client_name, no_start_server=True)
    clock_out = client.midi_outports.register("clock")
    keys_out = client.midi_outports.register("keys")
    listen = client.midi_inports.register("in")
    rate = client.samplerate
    state = {"period": rate * 60 / bpm / 24, "next": None, "start": False, "clocks": 0}
    keys: list[tuple[int, bytes]] = []  # (frame, message), due order; written from the main thread under lock
    lock = threading.Lock()
    log: queue.SimpleQueue[str] = queue.SimpleQueue()

    @client.set_process_callback
    def process(frames: int) -> None:
        first = client.last_frame_time
        clock_out.clear_buffer()
        keys_out.clear_buffer()
        for offset, data in listen.incoming_midi_events():
            log.put(f"in {first + offset} {bytes(data).hex()}")
        if state["start"]:
            state["start"] = False
            clock_out.write_midi_event(0, b"\xfa")
            log.put(f"start {first}")
            state["next"] = float(first)
        while state["next"] is not None and state["next"] < first + frames:
            frame = int(state["next"])
            clock_out.write_midi_event(max(0, frame - first), b"\xf8")
            log.put(f"clock {max(frame, first)}")
            state["next"] += state["period"]
        with lock:
            while keys and keys[0][0] < first + frames:
                frame, data = keys.pop(0)
                keys_out.write_midi_event(max(0, frame - first), data)
                log.put(f"sent {max(frame, first)} {data.hex()}")

    def printer() -> None:
        while True:
            sys.stdout.write(log.get() + "\n")
            sys.stdout.flush()

    threading.Thread(target=printer, daemon=True).start()
    with client:
        sys.stdout.write(f"ready {rate}\n")
        sys.stdout.flush()
        for line in sys.stdin:
            command = line.split()
            if not command:
                continue
            if command[0] == "start":
                state["start"] = True
            elif command[0] == "bpm":
                state["period"] = rate * 60 / float(command[1]) / 24
            elif command[0] == "play":
                beat = state["period"] * 24
                begin = (state["next"] or client.frame_time) + beat  # about a beat from now
                events = []
                for on, held, pitch in PHRASE:
                    events.append((int(begin + on * beat), bytes([0x90, pitch, 80])))
                    events.append((int(begin + (on + held) * beat), bytes([0x80, pitch, 0])))
                with lock:
                    keys.extend(sorted(events))
            elif command[0] == "quit":
                break


if __name__ == "__main__":
    sys.setswitchinterval(GIL_SLICE_S)
    main()
