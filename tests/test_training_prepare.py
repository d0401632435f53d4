"""improvd_train.prepare on tiny performance folders: the piece-level split, the multi-track
merge with the pedal folded, and the humanised rendering of scores."""

from __future__ import annotations

import json

import mido
import numpy as np
import pytest

from improvd import vocab
from improvd_train import prepare, train
from tests.performance_fixtures import asap_like, performance, pop_like


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("performances")
    asap, pop = asap_like(root), pop_like(root)
    out = root / "prepared"
    prepare.main(["--corpus", "", "--performances", str(asap), "--folder", str(pop), "--out", str(out)])
    return out, asap, pop


def test_variants_of_a_piece_are_one_piece(tmp_path):
    root = tmp_path / "asap"
    ids = {prepare.piece_of_performance(root, root / "Beethoven/Piano_Sonatas" / folder / "X01.mid")
           for folder in ("17-1", "17-1_no_repeat", "17-1_repeat")}
    assert ids == {"asap/Beethoven/Piano_Sonatas/17-1"}
    other = prepare.piece_of_performance(root, root / "Beethoven/Piano_Sonatas/17-2/X01.mid")
    assert other == "asap/Beethoven/Piano_Sonatas/17-2"
    assert prepare.piece_of_performance(root, root / "Schumann/Toccata_repeat/Y.mid") == "asap/Schumann/Toccata"


def test_every_performance_of_a_piece_lands_in_one_split(prepared):
    out, asap, pop = prepared
    files = json.loads((out / "files.json").read_text())
    split_of_piece: dict[str, set[str]] = {}
    for split, entries in files.items():
        for entry in entries:
            split_of_piece.setdefault(entry["piece"], set()).add(split)
    assert all(len(splits) == 1 for splits in split_of_piece.values())
    assert {name for name, entries in files.items() if entries} == {"train", "validation", "test"}
    performers = [e for entries in files.values() for e in entries if e["piece"].startswith("asap/")]
    assert len(performers) == len(list(asap.rglob("*.mid"))) == 13
    assert len({e["piece"] for e in performers}) == 6  # the _no_repeat folder joined its piece
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["performances"] == [str(asap)]
    assert manifest["skipped"] == []
    for split, entries in files.items():  # files.json lists the pieces in the arrays' order
        archive = np.load(out / f"{split}.npz")
        assert len(archive["offsets"]) - 1 == len(entries) == manifest["splits"][split]["pieces"]


def test_the_split_is_stable_and_by_hash_of_the_piece():
    assert prepare.split_of("asap/Chopin/Ballade_1") == prepare.split_of("asap/Chopin/Ballade_1")
    counts = {name: 0 for name, _ in prepare.SPLITS}
    for number in range(2000):
        counts[prepare.split_of(f"piece {number}")] += 1
    assert 0.86 < counts["train"] / 2000 < 0.94 and counts["test"] > 60 and counts["validation"] > 60


def test_three_tracks_play_as_one_stream_with_the_pedal_folded(tmp_path):
    path = tmp_path / "song.mid"
    performance(path, 6.0, seed=3, tracks=3)
    midi = mido.MidiFile(path)
    struck = {(m.channel, m.note) for t in midi.tracks for m in t if m.type == "note_on" and m.velocity}
    notes = vocab.tokens_to_notes(prepare.read_source(("pop/song.mid", str(path)))[1][0][1].tolist())
    assert {n.pitch for n in notes} == {note for _, note in struck}  # every track's notes
    assert {c for c, _ in struck} == {0, 1, 2}
    # The pedal (down 0.01-1.5 s, 2.01-3.5 s, ...) holds every released key of the stream
    # until it comes up, or until the same key is struck again.
    held = [n for n in notes if 0.02 < n.start % 2.0 < 1.2]
    restrikes = {(n.pitch, round(n.start, 2)) for n in notes}
    assert len(held) > 10
    for n in held:
        pedal_up = n.start // 2.0 * 2.0 + 1.5
        assert n.end >= pedal_up - 0.011 or (n.pitch, round(n.end, 2)) in restrikes, n


def test_humanised_scores_look_played():
    events = [(beat * 0.5, 0.5, 60 + (beat % 7)) for beat in range(256)]  # 128 quarters of eighths
    renderings = [prepare.humanize(events, prepare.piece_rng(f"tune {i}")) for i in range(40)]
    tempi = [60 / (r[-1].start - r[0].start) * (events[-1][0] - events[0][0]) for r in renderings]
    assert prepare.TEMPO_RANGE[0] * 0.97 <= min(tempi) and max(tempi) <= prepare.TEMPO_RANGE[1] * 1.03
    assert max(tempi) - min(tempi) > 60  # tempi spread over the range
    notes = renderings[0]
    spq = (notes[-1].start - notes[0].start) / (events[-1][0] - events[0][0])
    jitter = np.array([n.start - e[0] * spq for n, e in zip(notes, events, strict=True)])
    assert 0.004 < np.std(jitter) < 0.03  # off the grid by milliseconds, not by beats
    velocities = np.array([n.velocity for n in notes])
    assert np.std(velocities) > 5 and 1 <= velocities.min() and velocities.max() <= 127
    phrases = [velocities[i:i + 16].mean() for i in range(0, len(velocities), 16)]  # 8 beats each
    assert max(phrases) - min(phrases) > 8  # dynamics move from phrase to phrase
    assert prepare.humanize(events, prepare.piece_rng("tune 0")) == notes  # reproducible


def test_training_augmentation_scales_velocities():
    notes = [vocab.Note(60 + i % 5, 40 + 10 * (i % 6), i * 0.2, i * 0.2 + 0.1) for i in range(60)]
    tokens = np.asarray(vocab.notes_to_tokens(notes), np.int32)
    rng = np.random.default_rng(0)
    means = []
    for _ in range(20):
        played = vocab.tokens_to_notes(train.augment(tokens, rng, 0, 0.0, 0.2).tolist())
        assert [n.pitch for n in played] == [n.pitch for n in vocab.tokens_to_notes(tokens.tolist())]
        means.append(np.mean([n.velocity for n in played]))
    original = np.mean([n.velocity for n in vocab.tokens_to_notes(tokens.tolist())])
    assert min(means) < original * 0.93 and max(means) > original * 1.07
    assert all(original * 0.78 <= m <= original * 1.22 for m in means)
