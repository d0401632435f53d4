"""The lineage a model card records and the summary `improvd --version` prints of it."""

from __future__ import annotations

import json

from improvd import lineage
from tests.engine_helpers import MODEL_PATH


def run(started, minutes, sources, validation, test, **augmentation):
    return {"started": started, "minutes": minutes, "data": {"sources": sources, "files": 10},
            "augmentation": augmentation, "figures": {"validation_bits_per_event": validation,
                                                      "test_bits_per_event": test}}


def test_summary_has_a_line_per_run_oldest_first_and_the_total_time():
    card = {"lineage": [run("2026-11-28T10:00Z", 56.0, ["asap", "pop909"], 5.07, 5.385, transpose=6, stretch=0.1),
                        run("2026-11-30T03:50Z", 150.0, ["asap", "pop909"], 4.9, 5.1, transpose=6)]}
    lines = lineage.summary(card)
    assert lines[0] == "lineage: 2 training runs, 3.4 h recorded"
    assert lines[1] == ("  1. 2026-11-28, 56 min on asap + pop909 (10 files); transposed ±6, tempo ±10%: "
                        "validation 5.070, test 5.385 bits/event")
    assert lines[2].startswith("  2. 2026-11-30, 2.5 h on asap + pop909")


def test_a_card_from_before_the_lineage_is_read_through_its_training_section():
    card = json.loads(MODEL_PATH.with_suffix(".json").read_text())
    runs = lineage.runs(card)
    assert runs[-1]["figures"]["test_bits_per_event"] == card["held_out_bits_per_event"]
    assert runs[-1]["data"]["files"] == card["training"]["data"]["files"]
    if "lineage" not in card:  # the shipped card: a score model, then the performance fine-tune
        assert runs[0]["data"]["sources"] == ["music21 essenFolksong, oneills1850, ryansMammoth, bach"]
        assert runs[1]["data"]["sources"] == ["asap", "pop909"]
        assert runs[1]["minutes"] == round(card["training"]["state"]["elapsed_s"] / 60, 1)
    summary = lineage.summary(card)
    assert len(summary) == len(runs) + 1


def test_an_empty_card_has_no_runs():
    assert lineage.runs({}) == []
    assert lineage.summary({}) == ["lineage: 0 training runs"]
