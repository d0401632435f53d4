"""Seed files: reading a motif safely, and continuing it into a MIDI file with no ports.

The offline continuation drives the same engine as the live daemon, in simulated time:
the motif is played into it as if by a player, and what it answers is written out in the
motif's own timeline: its tempo map, meter and resolution, so that it lines up in a DAW.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mido

from improvd import vocab
from improvd.engine import Engine
from improvd.errors import ConfigError, EmptyContinuationError, ImprovdError, InputFileError, UsageError
from improvd.tempo import TempoMap

log = logging.getLogger(__name__)

MAX_SEED_BYTES = 8 * 1024 * 1024  # a seed is a motif, not a symphony collection
SEED_WINDOW_S = 120.0  # two minutes are folded in (the last, or from --seed-from): the LSTM forgets earlier
SIMULATION_STEP_S = 0.01
# No clock to race offline: every candidate answer is finished before one is chosen.
OFFLINE_CANDIDATE_STEPS = 1_000_000  # candidate events per poll: more than any answer has
CONDUCTOR = ("set_tempo", "time_signature", "key_signature", "smpte_offset")  # kept with a continuation alone


@dataclass(frozen=True)
class Motif:
    """A seed file read: ``messages`` as the engine hears them, in seconds from ``start``
    (the first note, or the start of the last SEED_WINDOW_S), and the file as written."""

    messages: list[tuple[float, mido.Message]]
    midi: mido.MidiFile
    track: int | None  # the track the motif was read from; None: all of them
    start: float  # seconds from the file's start to the messages' zero
    tempo: TempoMap
    cut: bool = False  # only part of the file primes (a long one's end, or --seed-from)


def read_seed(path: Path, track: int | None = None, start: float | None = None) -> list[tuple[float, mido.Message]]:
    """(seconds from the first note, message) for the note and pedal messages of a MIDI
    file, at most SEED_WINDOW_S of them: the last ones, or those from ``start`` seconds into
    the file on; InputFileError with a one-line reason for anything unusable."""
    return read_motif(path, track, start).messages


def read_motif(path: Path, track: int | None = None, start: float | None = None) -> Motif:
    """The motif of a MIDI file as ``read_seed`` takes it, with the file as written and its timeline."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise InputFileError(f"{path}: cannot read seed file: {err.strerror}") from err
    if not path.is_file():
        raise InputFileError(f"{path}: not a file")
    if size == 0:
        raise InputFileError(f"{path}: empty file")
    if size > MAX_SEED_BYTES:
        limit = MAX_SEED_BYTES // 2**20
        raise InputFileError(f"{path}: too large for a seed ({size / 2**20:.1f} MiB, limit {limit} MiB)")
    try:
        midi = mido.MidiFile(path)
    except (OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as err:
        reason = str(err) or type(err).__name__
        raise InputFileError(f"{path}: not a readable MIDI file ({reason})") from err
    if track is not None and not 0 <= track < len(midi.tracks):
        raise InputFileError(f"{path}: no track {track} (the file has {len(midi.tracks)}: 0..{len(midi.tracks) - 1})")
    if midi.type == 2 and track is None:
        raise InputFileError(f"{path}: a type 2 MIDI file: its {len(midi.tracks)} tracks are separate pieces; "
                             f"choose one with --seed-track N (0..{len(midi.tracks) - 1})")
    try:
        messages = [
            (t, m) for t, m in vocab.midi_messages(midi, track)
            if m.type in ("note_on", "note_off") or (m.type == "control_change" and m.control == vocab.SUSTAIN_CC)
        ]
        file_end = vocab.midi_end(midi, track)
        tempo = TempoMap.of_midi(midi)
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise InputFileError(f"{path}: corrupt MIDI data ({err})") from err
    in_track = f" in track {track}" if track is not None else ""
    pitched = [(t, m) for t, m in messages if getattr(m, "channel", 0) != vocab.DRUM_CHANNEL]
    if not _onsets(pitched):
        if _onsets(messages):
            raise InputFileError(f"{path}: its notes{in_track} are all drums (channel 10), which improvd ignores")
        raise InputFileError(f"{path}: no notes to continue{in_track}")
    if start is not None:
        begin, messages = _window(path, pitched, start, min(file_end, start + SEED_WINDOW_S))
        cut = True
    else:
        messages = pitched + released_at_end(pitched, max(file_end, pitched[-1][0]))
        first, end = _onsets(messages)[0], messages[-1][0]
        begin = max(first, end - SEED_WINDOW_S)
        cut = begin > first
        if cut:
            log.info("%s: %.0f s long; priming with its last %.0f s only (from %.1f s; --seed-from S chooses where)",
                     path, end - first, SEED_WINDOW_S, begin)
    return Motif([(t - begin, m) for t, m in messages if t >= begin], midi, track, begin, tempo, cut)


def _onsets(messages: list[tuple[float, mido.Message]]) -> list[float]:
    return [t for t, m in messages if m.type == "note_on" and m.velocity > 0]


def _window(path: Path, messages: list[tuple[float, mido.Message]], start: float,
            end: float) -> tuple[float, list[tuple[float, mido.Message]]]:
    """The messages from ``start`` to ``end`` seconds (--seed-from), released at ``end``,
    and where the first note among them lies."""
    inside = [(t, m) for t, m in messages if start <= t < end]
    onsets = _onsets(inside)
    if not onsets:
        last = _onsets(messages)[-1]
        raise InputFileError(f"{path}: no notes from {start:g} s on (its last note starts at {last:.1f} s)")
    inside += released_at_end(inside, end)
    log.info("%s: priming with %.1f..%.1f s of the file (--seed-from)", path, onsets[0], end)
    return onsets[0], inside


def released_at_end(messages: list[tuple[float, mido.Message]], end: float) -> list[tuple[float, mido.Message]]:
    """What a DAW sends at a region's end: pedal up and key up wherever one is still down,
    at ``end`` (a key struck right at the end still sounds for one tick)."""
    down: dict[tuple[int, int], float] = {}  # (channel, key) -> onset
    pedal: set[int] = set()
    for time, message in messages:
        if message.type == "control_change":
            (pedal.add if message.value >= 64 else pedal.discard)(message.channel)
        elif message.type == "note_on" and message.velocity > 0:
            down[(message.channel, message.note)] = time
        else:
            down.pop((message.channel, message.note), None)
    releases = [(end, mido.Message("control_change", channel=ch, control=vocab.SUSTAIN_CC, value=0))
                for ch in sorted(pedal)]
    releases += [(max(end, onset + vocab.TICK_S), mido.Message("note_off", channel=ch, note=key))
                 for (ch, key), onset in sorted(down.items())]
    return sorted(releases, key=lambda release: release[0])


def continue_offline(engine: Engine, seed: list[tuple[float, mido.Message]],
                     length: float | None, tempo: TempoMap | None = None) -> list[vocab.Note]:
    """The continuation's notes, generated in simulated time right after the motif by an
    engine made with ``candidate_steps=OFFLINE_CANDIDATE_STEPS``; its length is ``length``
    seconds, or follows the motif's as a live answer would. ``tempo``: where the motif's
    beats fall, in seconds from the seed's zero (the file's own map)."""
    motif_end = seed[-1][0]
    start = 10.0  # simulated clock; any value works, the engine only sees differences
    if tempo is not None:
        engine.beat.set_tempo(tempo.shifted(start), "file")
    replies = [engine.prime(seed, start + motif_end, length)]
    now = start + motif_end
    settings = engine.config.engine
    limit = now + settings.silence_ms / 1000 + (length or settings.max_answer_s) + 5
    while now < limit:
        replies.append(engine.poll(now))
        if replies[-1].messages == [] and not engine.voice.answering and engine.counters.answers:
            break
        now += SIMULATION_STEP_S
    notes: list[vocab.Note] = []
    sounding: dict[int, tuple[float, int]] = {}
    offset = start
    for reply in replies:
        for timed in reply.messages:
            message = timed.message
            if timed.passthrough or message.type not in ("note_on", "note_off"):
                continue
            if message.type == "note_on" and message.velocity > 0:
                sounding[message.note] = (timed.time - offset, message.velocity)
            elif message.note in sounding:
                begin, velocity = sounding.pop(message.note)
                notes.append(vocab.Note(message.note, velocity, begin, timed.time - offset))
    if sounding:
        raise ImprovdError(f"internal error: continuation left notes {sorted(sounding)} sounding")
    if not notes:
        raise EmptyContinuationError(f"empty continuation: {_why_empty(engine)}")
    return notes


def _why_empty(engine: Engine) -> str:
    if not engine.counters.notes_in:
        channels = sorted(engine.config.ports.input_channels)
        return f"improvd heard none of the motif's notes (ports.input_channels = {channels} leaves out their channels)"
    if not engine.counters.answers:
        return "the motif never fell silent, so improvd never answered"
    return "the model played no note in its answer"


def motif_tempo(motif: Motif, bpm: float, beats_per_bar: int) -> TempoMap:
    """The beats a continuation follows, in seconds from the seed's zero: the file's tempo
    map and meter, or ``bpm`` (when set) from the file's start."""
    tempo = motif.tempo if bpm <= 0 else TempoMap.steady(bpm, beats_per_bar=beats_per_bar)
    return tempo.shifted(-motif.start)


def write_continuation(path: Path, motif: Motif, continuation: list[vocab.Note], channel: int,
                       alone: bool = False) -> None:
    """The motif as written (every track, or the seed track with the file's tempo map; its
    meter and ticks per beat) and a last track "improvd" with the continuation at its place
    in the motif's timeline. With ``alone``, a one-track file of the continuation on the
    motif's tempo map and meter: what a DAW takes back, lining up when dropped at the
    motif region's start."""
    source = motif.midi
    notes = [(0, mido.MetaMessage("track_name", name="improvd"))] + continuation_track(motif, continuation, channel)
    if alone:
        tracks = [_relative(_conductor(source.tracks) + notes)]
    elif motif.cut:  # the part that primed, at its ticks, on the whole file's tempo map
        primed = [(_tick(motif, t), m) for t, m in motif.messages]
        tracks = [_relative(_conductor(source.tracks) + primed), _relative(notes)]
    elif motif.track is None:
        tracks = [track.copy() for track in source.tracks] + [_relative(notes)]
    else:
        others = [track for i, track in enumerate(source.tracks) if i != motif.track]
        tracks = [_relative(_conductor(others) + _absolute(source.tracks[motif.track])), _relative(notes)]
    out = mido.MidiFile(type=0 if alone else 1, ticks_per_beat=source.ticks_per_beat)
    out.tracks += tracks
    try:
        out.save(path)
    except OSError as err:
        raise InputFileError(f"{path}: cannot write output file: {err.strerror}") from err


def continuation_track(motif: Motif, continuation: list[vocab.Note], channel: int) -> list[tuple[int, mido.Message]]:
    """(tick, message) for the continuation in the motif's ticks; a note keeps at least one
    tick, and a key struck again is released first."""
    released: dict[int, int] = {}
    events = []
    for note in sorted(continuation, key=lambda n: n.start):
        on = max(_tick(motif, note.start), released.get(note.pitch, 0))
        off = released[note.pitch] = max(_tick(motif, note.end), on + 1)
        events.append((on, 1, mido.Message("note_on", note=note.pitch, velocity=note.velocity, channel=channel)))
        events.append((off, 0, mido.Message("note_off", note=note.pitch, velocity=0, channel=channel)))
    return [(t, m) for t, _, m in sorted(events, key=lambda event: event[:2])]


def _tick(motif: Motif, seconds: float) -> int:
    """The file's tick at ``seconds`` from the motif's zero."""
    return round(motif.tempo.beat_at(motif.start + seconds) * motif.midi.ticks_per_beat)


def _absolute(track: mido.MidiTrack) -> list[tuple[int, mido.Message]]:
    tick, events = 0, []
    for message in track:
        tick += message.time
        events.append((tick, message))
    return events


def _conductor(tracks: list[mido.MidiTrack]) -> list[tuple[int, mido.Message]]:
    """The tempo map, meter and key of ``tracks``, at their ticks."""
    return [(tick, m) for track in tracks for tick, m in _absolute(track) if m.type in CONDUCTOR]


def _relative(events: list[tuple[int, mido.Message]]) -> mido.MidiTrack:
    """A track from (tick, message) events, in tick order (stable: earlier events first)."""
    track, last = mido.MidiTrack(), 0
    for tick, message in sorted(events, key=lambda event: event[0]):
        track.append(message.copy(time=tick - last))
        last = tick
    return track


def seed_notes(seed: list[tuple[float, mido.Message]]) -> list[vocab.Note]:
    """The motif's notes as the model heard them (pedal folded, 10 ms grid)."""
    encoder = vocab.Encoder()
    tokens: list[int] = []
    for time, message in seed:
        tokens += encoder.feed(message, time)
    return vocab.tokens_to_notes(tokens + encoder.release_all())


def plot_format(path: Path) -> str:
    """The image format --plot writes ``path`` in: its extension's, PNG without one (the file is
    written at ``path`` exactly); checked before the continuation is worked out."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as err:
        raise ConfigError("--plot needs matplotlib: pip install 'improvd[plot]'") from err
    formats = FigureCanvasAgg.get_supported_filetypes()
    image_format = path.suffix[1:].lower() or "png"
    if image_format not in formats:
        raise UsageError(f"--plot {path}: no image format '.{image_format}' (use one of: "
                         f"{', '.join('.' + name for name in sorted(formats))})")
    return image_format


def plot_piano_roll(path: Path, image_format: str, motif: list[vocab.Note], continuation: list[vocab.Note]) -> None:
    """A piano roll (``plot_format``'s format): the motif in grey, the continuation in colour by velocity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    colormap = plt.get_cmap("viridis")
    for notes, coloured in ((motif, False), (continuation, True)):
        for n in notes:
            shade = colormap(n.velocity / 127) if coloured else (0.55, 0.55, 0.55)
            ax.add_patch(plt.Rectangle((n.start, n.pitch - 0.4), n.end - n.start, 0.8, color=shade))
    everything = motif + continuation
    ax.set_xlim(0, max(n.end for n in everything) + 0.2)
    ax.set_ylim(min(n.pitch for n in everything) - 2, max(n.pitch for n in everything) + 2)
    if motif and continuation:
        ax.axvline(continuation[0].start, color="red", lw=0.8, ls="--")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MIDI pitch")
    ax.set_title("motif (grey) and improvd's continuation (colour = velocity)")
    fig.tight_layout()
    try:
        fig.savefig(path, format=image_format, dpi=100)
    except OSError as err:
        raise InputFileError(f"{path}: cannot write plot: {err.strerror}") from err
    finally:
        plt.close(fig)
