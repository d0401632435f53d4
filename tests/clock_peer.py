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

import sys

from tests import GIL_SLICE_S
from tests.daw_peer import DawPeer


def main() -> None:
    client_name, bpm = sys.argv[1], float(sys.argv[2])
    daw = DawPeer(client_name)
    client, rate = daw.client, daw.rate
    clock_out = client.midi_outports.register("clock")
    state = {"period": rate * 60 / bpm / 24, "next": None, "start": False}

    @client.set_process_callback
    def process(frames: int) -> None:
        first = client.last_frame_time
        clock_out.clear_buffer()
        daw.keys_out.clear_buffer()
        daw.hear(first)
        if state["start"]:
            state["start"] = False
            clock_out.write_midi_event(0, b"\xfa")
            daw.log.put(f"start {first}")
            state["next"] = float(first)
        while state["next"] is not None and state["next"] < first + frames:
            frame = int(state["next"])
            clock_out.write_midi_event(max(0, frame - first), b"\xf8")
            daw.log.put(f"clock {max(frame, first)}")
            state["next"] += state["period"]
        daw.play_due(first, frames)

    def start(_: list[str]) -> None:
        state["start"] = True

    def tempo(args: list[str]) -> None:
        state["period"] = rate * 60 / float(args[0]) / 24

    def play(_: list[str]) -> None:
        beat = state["period"] * 24
        daw.phrase((state["next"] or client.frame_time) + beat, beat)  # about a beat from now

    daw.serve({"start": start, "bpm": tempo, "play": play})


if __name__ == "__main__":
    sys.setswitchinterval(GIL_SLICE_S)
    main()
