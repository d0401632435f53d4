"""JACK MIDI ports on improvd's one JACK client (improvd.jackgraph), served from its process
callback the way JACK clients are written: the callback only moves fixed-size records
between JACK's buffers and lock-free ring buffers (jack.RingBuffer: one writer, one reader),
into memory allocated when the port opened; it takes no lock and logs nothing, and holds
the GIL for a few microseconds a cycle. Parsing, clocks and the daemon's queues live in
ordinary threads on the other side of the rings.

Timing. Input is stamped with its frame time (the cycle's first frame plus the event's
offset), turned into time.monotonic() on the reader's side. Output carries the time it is
due: the sender hands each message over up to ``lead_s`` early, and the callback writes it
at the frame of that time within the cycle that contains it, so a receiver sees it on the
frame it was meant for (rather than on the first frame of the next cycle, up to one period
late). A message handed over late is written at the cycle's first frame and counted.
"""

from __future__ import annotations

import logging
import os
import select
import struct
import threading
import time

import jack
import mido

from improvd.errors import PortError
from improvd.jackgraph import FRAME_MASK, JackClient, Transport
from improvd.ports import Backend, InputPort, OutputPort, find_port

RECORD = struct.Struct("<IB3s")  # frame time, size, up to three MIDI bytes: 8 bytes
RING_RECORDS = 4096  # per direction: 1.5 s of a 2,700 messages/s flood at 128 frames
LATE_FRAME = 0x80000000  # a frame offset at or past this is in the past (32-bit wrap)
CLOCK_STATUS = 0xF8  # system realtime messages (clock, start, continue, stop) and above
NOW = 0x80  # flag in a record's size: no due time, write it in the next cycle
DRAIN_S = 0.5  # how long closing an output waits for what is queued to be written
LEAD_MARGIN_S = 0.010  # handed over one period plus this before it is due: covers the sender's wake-up
# on a busy machine (2 ms was late for a third of the notes with both cores busy); what is handed
# over cannot be called back, so a barge-in lets at most this much more of an answer through

log = logging.getLogger(__name__)

_ffi = jack._ffi  # JACK-Client's own cffi handle on libjack: the callback needs its
_lib = jack._lib  # preallocated, copy-free functions (the public ones allocate per call)


class _Ring:
    """A jack.RingBuffer of RECORDs and a preallocated record for the process callback."""

    def __init__(self) -> None:
        self.ring = jack.RingBuffer(RING_RECORDS * RECORD.size)
        self.ptr = self.ring._ptr
        self.record = _ffi.new("unsigned char[]", RECORD.size)
        self.frame = _ffi.cast("uint32_t *", self.record)  # the record's first field, in place
        self.data = self.record + 5


class JackPort:
    """What JACK's inputs and outputs share: a port registered on the client, connected to
    its peer by name (or left to others, virtual), its connections followed through JACK."""

    def __init__(self, client: JackClient) -> None:
        self.client = client
        self.jack_port: jack.OwnMidiPort | None = None
        self.full_name = ""

    def _register(self, ports: jack.Ports) -> None:
        self.jack_port = self.client.register(ports.register, self.name)
        self.full_name = self.jack_port.name
        self._buffer_port = self.jack_port._ptr
        self.client.add(self)

    def candidates(self) -> list[str]:
        """Other programs' ports this one could connect to (an input lists outputs)."""
        mine = f"{self.client.name}:"
        wanted = {"is_output": True} if self.direction == "input" else {"is_input": True}
        return [n for n in self.client.ports(**wanted) if not n.startswith(mine)]

    def resolve(self) -> str:
        return find_port(self.wanted, self.candidates(), self.direction)

    def _join(self) -> None:
        peer = self.resolve()
        ends = (peer, self.full_name) if self.direction == "input" else (self.full_name, peer)
        self.client.connect(*ends)
        self.peer = peer

    def open(self, wait: bool = False) -> None:
        if self.jack_port is None:
            self._register(self.client.client.midi_inports if self.direction == "input"
                           else self.client.client.midi_outports)
        if self.virtual:
            return
        try:
            self._join()
        except PortError:
            if not wait:
                raise
            self.away_since = self.away_since or time.monotonic()

    def follow(self) -> tuple[bool, bool]:
        """By the connection itself: JACK says when it breaks, however quickly the peer comes
        back. A virtual port reports a source that left (lost), and nothing comes back."""
        since = self.client.disconnected.pop(self.full_name, None)
        if self.virtual:
            return since is not None and self.direction == "input", False
        lost = self.peer is not None and not self.client.connected(self.full_name, self.peer)
        if lost:
            self._lost(since or time.monotonic())
        if self.peer is None:
            try:
                self._join()
            except PortError:
                return lost, False
            return lost, self._back()
        return lost, False

    def close(self) -> None:
        """Out of the process callback first (a cycle under way finishes with it), then off
        the graph."""
        port, self.jack_port, self.peer = self.jack_port, None, None
        self.client.remove(self)
        if port is None or not self.client.alive:
            return
        self.client.wait_cycles(2)
        self.client.ours.discard(port.name)
        try:
            port.unregister()
        except jack.JackError as err:  # closing never fails: the client goes with it anyway
            log.debug("unregistering %s: %s", port.name, err)

    def __str__(self) -> str:
        return f"{self.name!r} (virtual)" if self.virtual else f"{self.peer or self.wanted!r} (as {self.name!r})"


class JackInput(JackPort, InputPort):
    """Events arrive in the process callback, go through a ring to a reader thread, and are
    handed on as (message, arrival) with the arrival at their frame."""

    def __init__(self, client: JackClient, wanted: str, virtual: bool, name: str, callback) -> None:
        InputPort.__init__(self, wanted, virtual, name, callback)
        JackPort.__init__(self, client)
        self.rx = _Ring()
        self.event = _ffi.new("jack_midi_event_t *")
        self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.dropped = 0  # events the ring had no room for, or longer than three bytes (sysex)

    def cycle(self, frames: int) -> None:
        buffer = _lib.jack_port_get_buffer(self._buffer_port, frames)
        count = _lib.jack_midi_get_event_count(buffer)
        if not count:
            return
        rx, event = self.rx, self.event
        start = _lib.jack_last_frame_time(self.client.client._ptr)
        for index in range(count):
            if _lib.jack_midi_event_get(event, buffer, index):
                break
            if event.size > 3 or _lib.jack_ringbuffer_write_space(rx.ptr) < RECORD.size:
                self.dropped += 1
                continue
            rx.frame[0] = (start + event.time) & FRAME_MASK
            rx.record[4] = event.size
            _ffi.memmove(rx.data, event.buffer, event.size)
            _lib.jack_ringbuffer_write(rx.ptr, rx.record, RECORD.size)
        os.eventfd_write(self.wake_fd, 1)  # one non-blocking syscall: the reader wakes

    def receive(self, timeout: float) -> list[tuple[float, bytes]]:
        """(arrival, MIDI bytes) of what came in, oldest first; waits up to ``timeout``."""
        ready, _, _ = select.select([self.wake_fd], [], [], timeout)
        if ready:
            try:
                os.eventfd_read(self.wake_fd)
            except BlockingIOError:
                pass
        count = self.rx.ring.read_space // RECORD.size
        if not count:
            return []
        data = bytes(self.rx.ring.read(count * RECORD.size))
        now = time.monotonic()
        # A cycle's frames run from its start: one late in it may lie ahead of the clock. A
        # note is not heard before now; MIDI clock keeps its frame's time, or the beat fitted
        # to it would lean early by up to a period.
        return [(self.client.time_of(frame) if payload[0] >= CLOCK_STATUS else min(now, self.client.time_of(frame)),
                 payload[:size]) for frame, size, payload in RECORD.iter_unpack(data)]

    def open(self, wait: bool = False) -> None:
        if self.wake_fd < 0:
            self.wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        JackPort.open(self, wait)

    def close(self) -> None:
        InputPort.close(self)  # the reader has stopped: nothing waits on wake_fd any more
        JackPort.close(self)
        if self.wake_fd >= 0:
            os.close(self.wake_fd)
            self.wake_fd = -1


class JackOutput(JackPort, OutputPort):
    """Messages go into a ring with the frame they are due at; the process callback writes
    each one at its frame once its cycle comes."""

    def __init__(self, client: JackClient, wanted: str, virtual: bool, name: str) -> None:
        OutputPort.__init__(self, wanted, virtual, name)
        JackPort.__init__(self, client)
        self.tx = _Ring()
        self.writing = threading.Lock()  # the scheduler and the daemon's thread both send
        self.late = 0  # messages written at a cycle's first frame because they came too late

    @property
    def lead_s(self) -> float:
        return self.client.period_s + LEAD_MARGIN_S

    def cycle(self, frames: int) -> None:
        buffer = _lib.jack_port_get_buffer(self._buffer_port, frames)
        _lib.jack_midi_clear_buffer(buffer)
        tx = self.tx
        start = _lib.jack_last_frame_time(self.client.client._ptr)
        last = 0
        while _lib.jack_ringbuffer_read_space(tx.ptr) >= RECORD.size:
            _lib.jack_ringbuffer_peek(tx.ptr, tx.record, RECORD.size)
            size = tx.record[4]
            offset = (tx.frame[0] - start) & FRAME_MASK
            if size & NOW:
                offset, size = last, size & ~NOW
            elif offset >= LATE_FRAME:
                offset = last
                self.late += 1
            elif offset >= frames:
                break  # due in a later cycle, and so is everything behind it
            elif offset < last:
                offset = last  # JACK keeps a buffer's events in time order
            _lib.jack_midi_event_write(buffer, offset, tx.data, size)
            last = offset
            _lib.jack_ringbuffer_read_advance(tx.ptr, RECORD.size)

    def send(self, message: mido.Message, at: float | None = None) -> None:
        """Queue ``message`` for the frame of ``at`` (None: as soon as possible)."""
        data = message.bytes()
        if len(data) > 3:
            raise PortError(f"output port {self.name!r}: {message.type} is longer than JACK output takes here")
        if not self.connected:  # nothing queued for a peer that is away reaches it when it returns
            raise PortError(f"output port {self.name!r} is not connected")
        record = RECORD.pack(0, len(data) | NOW, bytes(data)) if at is None else \
            RECORD.pack(self.client.frame_at(at), len(data), bytes(data))
        with self.writing:
            if self.tx.ring.write_space < RECORD.size:
                raise PortError(f"output port {self.name!r}: {RING_RECORDS} messages already queued")
            self.tx.ring.write(record)

    @property
    def connected(self) -> bool:
        return self.jack_port is not None and self.client.alive and (self.virtual or self.peer is not None)

    def close(self) -> None:
        """What is queued goes out first (the releases a stop sends), for up to DRAIN_S."""
        deadline = time.monotonic() + DRAIN_S
        while self.tx.ring.read_space and self.client.alive and time.monotonic() < deadline:
            time.sleep(0.001)
        JackPort.close(self)


STUCK_S = 1.0  # a client JACK has not run this long after it opened is made again


class JackBackend(Backend):
    """The JACK API: improvd's one client, its ports, and what the server says."""

    api = "jack"

    def __init__(self, client_name: str) -> None:
        self.client = JackClient(client_name)
        self.opened_at = time.monotonic()

    def input(self, wanted: str, virtual: bool, name: str, callback) -> JackInput:
        return JackInput(self.client, wanted, virtual, name, callback)

    def output(self, wanted: str, virtual: bool, name: str) -> JackOutput:
        return JackOutput(self.client, wanted, virtual, name)

    def listing(self) -> tuple[list[str], list[str]]:
        mine = f"{self.client.name}:"
        inputs = [n for n in self.client.ports(is_output=True) if not n.startswith(mine)]
        outputs = [n for n in self.client.ports(is_input=True) if not n.startswith(mine)]
        return inputs, outputs

    @property
    def xruns(self) -> int:
        return self.client.xruns

    def changed(self) -> bool:
        return self.client.changed.is_set()

    def checked(self) -> None:
        self.client.changed.clear()

    def server_lost(self) -> tuple[float, str] | None:
        if self.client.alive:
            return None
        return self.client.shutdown_at, self.client.shutdown_reason

    def stuck(self) -> bool:
        return self.client.alive and self.client.cycles == 0 and time.monotonic() - self.opened_at > STUCK_S

    def transport(self) -> Transport | None:
        return self.client.transport()

    @property
    def failures(self) -> int:
        return self.client.failures

    @property
    def realtime(self) -> bool:
        """Whether the server runs its clients' process threads realtime."""
        return self.client.client.realtime

    def close(self) -> None:
        self.client.close()
