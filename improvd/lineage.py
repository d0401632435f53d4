"""A model's lineage: the training runs its weights went through, oldest first, as its card
(<name>.json) records them, and the short account of them `improvd --version` prints.

Each run continues from the model before it, so a card carries the whole chain: when it
started, how many minutes, on what data, with which augmentation, and the figures it reached.
Cards written before the chain was recorded are read through their `training` section."""

from __future__ import annotations

from pathlib import Path


def runs(card: dict) -> list[dict]:
    """The card's runs, oldest first (reconstructed from its training section if need be)."""
    if card.get("lineage"):
        return list(card["lineage"])
    training = card.get("training") or {}
    earlier = []
    started_from = training.get("started_from") or {}
    if started_from.get("data_sources"):  # a card that names only what its starting model saw
        earlier.append({"data": {"sources": source_names(started_from["data_sources"])},
                        "figures": {"test_bits_per_event": started_from.get("held_out_bits_per_event")}})
    if not training:
        return earlier
    arguments, data = training.get("arguments", {}), training.get("data", {})
    state = training.get("state", {})
    return earlier + [{
        "started": arguments.get("started"),
        "minutes": round(state["elapsed_s"] / 60, 1) if "elapsed_s" in state else None,
        "trainer": arguments.get("trainer", "tensorflow"),
        "data": {"sources": source_names(data.get("sources", {})), "files": data.get("files"),
                 "train_events": data.get("splits", {}).get("train", {}).get("tokens")},
        "augmentation": {k: arguments[k] for k in ("transpose", "stretch", "velocity_scale") if k in arguments},
        "figures": {"validation_bits_per_event": state.get("best_val_bits_per_event"),
                    "test_bits_per_event": card.get("held_out_bits_per_event")},
    }]


def source_names(sources: dict) -> list[str]:
    """A data manifest's sources as short names: folder names, and the music21 collections."""
    names = [Path(p).name for key in ("performances", "folders") for p in sources.get(key) or []]
    corpus = sources.get("corpus") or []
    return names + ([f"music21 {', '.join(corpus)}"] if corpus else [])


def summary(card: dict) -> list[str]:
    """One line per run, oldest first, and a total: what `improvd --version` shows."""
    chain = runs(card)
    lines = []
    for number, run in enumerate(chain, 1):
        data = run.get("data", {})
        what = " + ".join(data.get("sources") or ["unknown data"])
        if data.get("files"):
            what += f" ({data['files']} files)"
        parts = [p for p in ((run.get("started") or "")[:10], _minutes(run.get("minutes"))) if p]
        augmentation = _augmentation(run.get("augmentation") or {})
        figures = run.get("figures") or {}
        scores = ", ".join(f"{label} {figures[key]:.3f}" for key, label in
                           (("validation_bits_per_event", "validation"), ("test_bits_per_event", "test"))
                           if figures.get(key) is not None)
        line = f"  {number}. " + (", ".join(parts) + " on " if parts else "") + what
        line += f"; {augmentation}" if augmentation else ""
        lines.append(line + (f": {scores} bits/event" if scores else ""))
    minutes = sum(run.get("minutes") or 0 for run in chain)
    head = f"lineage: {len(chain)} training run{'s' if len(chain) != 1 else ''}"
    return [head + (f", {_minutes(minutes)} recorded" if minutes else "")] + lines


def _minutes(minutes: float | None) -> str:
    if not minutes:
        return ""
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def _augmentation(aug: dict) -> str:
    parts = []
    if aug.get("transpose"):
        parts.append(f"transposed ±{aug['transpose']}")
    if aug.get("stretch"):
        parts.append(f"tempo ±{aug['stretch']:.0%}")
    if aug.get("velocity_scale"):
        parts.append(f"velocity ±{aug['velocity_scale']:.0%}")
    return ", ".join(parts)
