"""The `improvd` command (also ``python -m improvd``).

Exit codes: 0 ok, 1 configuration, 2 bad input file, 3 model, 4 ports, 5 empty continuation,
64 usage (EX_USAGE of sysexits.h: an unknown flag, or a flag's value argparse or --plot refuses).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from importlib import metadata
from pathlib import Path

from improvd.config import SECTIONS, Config, choices, format_config, load_config
from improvd.errors import ImprovdError, UsageError
from improvd.notify import Notifier

log = logging.getLogger("improvd")

EXIT_OK = 0
EXIT_CODES = ("Exit codes: 0 ok, 1 configuration, 2 bad input file, 3 model, 4 ports, 5 empty continuation, "
              f"{UsageError.exit_code} usage (a flag or its value).")
SYSLOG_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
WEIGHT = "weight_"
WEIGHTS = tuple(key.removeprefix(WEIGHT) for key in SECTIONS["sampler"].__dataclass_fields__ if key.startswith(WEIGHT))


class Parser(argparse.ArgumentParser):
    """argparse with improvd's one-line errors and its own usage exit code (2 means a bad input file)."""

    def error(self, message: str) -> None:
        notify_failure(UsageError(message))  # a wrong flag in a unit's ExecStart shows in `systemctl status`
        self.exit(UsageError.exit_code,
                  journal_text(f"improvd: {message} (improvd --help lists the flags)", logging.ERROR) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(
        prog="improvd",
        description="Real-time MIDI improvisation: play a phrase, pause, and improvd answers.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("command", nargs="?", choices=("run", "config"), default="run",
                        help="run the daemon (default) or print the effective configuration")
    parser.add_argument("--config", type=Path, help="config file (default: XDG, then /etc/improvd)")
    parser.add_argument("--in", dest="input", help="input port by name substring ('' = virtual 'improvd in')")
    parser.add_argument("--out", dest="output", help="output port by name substring ('' = virtual 'improvd out')")
    parser.add_argument("--api", choices=choices(SECTIONS["ports"], "api"), help="MIDI API")
    parser.add_argument("--mode", choices=choices(SECTIONS["engine"], "mode"))
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--device", choices=choices(SECTIONS["model"], "device"), help="where the model runs")
    parser.add_argument("--model", type=Path,
                        help="exported .onnx model (its .json beside it), or the NAME of one improvd-train made")
    parser.add_argument("--random-seed", type=int, dest="random_seed",
                        help="fix the sampler's RNG for reproducible answers (-1: random)")
    parser.add_argument("--memory-strength", type=float, metavar="S",
                        help="how much the memory of your playing steers improvd: 0 = the trained model alone, "
                             "1 = mirror you (config.toml [memory])")
    parser.add_argument("--candidates", type=int, metavar="K", help="choose each answer among K candidates (1: off)")
    parser.add_argument("--weights", type=weights_arg, default={}, metavar="NAME=W,...",
                        help=f"candidate score weights, any of {', '.join(WEIGHTS)} (see config.toml [sampler])")
    parser.add_argument("--seed-file", type=Path, help="a MIDI motif to prime the model with")
    parser.add_argument("--seed-track", type=int, help="use only this track of the seed file (0-based)")
    parser.add_argument("--seed-from", type=float, metavar="S",
                        help="prime with the seed file from S seconds on (default: its last 120 s)")
    parser.add_argument("--output-file", type=Path, help="write motif + continuation here and exit (no ports)")
    parser.add_argument("--continuation-only", action="store_true",
                        help="with --output-file: the new notes alone, at their place in the motif's timeline")
    parser.add_argument("--plot", type=Path, help="with --output-file: a piano roll (PNG, or PDF/SVG/... by extension)")
    parser.add_argument("--length", type=float, help="seconds of continuation for the seed file")
    parser.add_argument("--bpm", type=float, help="tempo when no MIDI clock or transport gives one (engine.tempo_bpm)")
    parser.add_argument("--answer-start", choices=("silence", "beat", "bar"),
                        help="answers start on the silence, or on the next beat or bar when a tempo is known")
    parser.add_argument("--quantize", type=float, metavar="Q",
                        help="0..1: how far onsets are pulled to engine.grid when a tempo is known")
    parser.add_argument("--list-ports", action="store_true", help="list MIDI ports and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="store_true",
                        help="improvd's version, its model, the data of each training stage, the weights' terms")
    args = parser.parse_args(argv)
    if (args.output_file or args.plot or args.seed_from is not None) and not args.seed_file:
        parser.error("--output-file, --plot and --seed-from need --seed-file")
    if args.plot and not args.output_file:
        parser.error("--plot needs --output-file")
    if args.continuation_only and not args.output_file:
        parser.error("--continuation-only needs --output-file")
    if args.length is not None and not 0 < args.length <= 600:
        parser.error(f"--length: must be more than 0 and at most 600 seconds, got {args.length:g}")
    if args.seed_from is not None and args.seed_from < 0:
        parser.error(f"--seed-from: must be 0 or more seconds, got {args.seed_from:g}")
    return args


def overrides_of(args: argparse.Namespace) -> dict[str, object]:
    from improvd.model import named_model

    return {
        "ports.input": args.input, "ports.output": args.output, "ports.api": args.api,
        "engine.mode": args.mode, "engine.seed": args.random_seed, "sampler.temperature": args.temperature,
        "engine.tempo_bpm": args.bpm, "engine.answer_start": args.answer_start, "engine.quantize": args.quantize,
        "model.device": args.device, "model.path": named_model(str(args.model)) if args.model else None,
        "log.level": "debug" if args.verbose else None, "sampler.candidates": args.candidates,
        "memory.strength": args.memory_strength,
        **{f"sampler.{WEIGHT}{name}": value for name, value in args.weights.items()},
    }


def weights_arg(text: str) -> dict[str, float]:
    """``fluency=1,register=0.5`` -> {"fluency": 1.0, "register": 0.5}; the config checks names and ranges."""
    weights = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r}: expected NAME=NUMBER") from None
    return weights


def under_journald() -> bool:
    """systemd sets JOURNAL_STREAM when stderr goes to the journal."""
    return bool(os.environ.get("JOURNAL_STREAM"))


def journal_text(text: str, level: int) -> str:
    """Under journald, each line prefixed with its syslog priority as sd-daemon(3) describes
    (``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>`` debug), so `journalctl -p err` finds it."""
    if not under_journald():
        return text
    priority = next((p for at_least, p in SYSLOG_PRIORITIES if level >= at_least), 7)
    return "\n".join(f"<{priority}>{line}" for line in text.split("\n"))


class LogFormatter(logging.Formatter):
    """The log line format, with journald's priority prefix where it applies."""

    def format(self, record: logging.LogRecord) -> str:
        return journal_text(super().format(record), record.levelno)


def setup_logging(level: str) -> None:
    """One line per event on stderr; journald stamps its own time, so no timestamps there."""
    stamp = "" if under_journald() else "%(asctime)s "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter(f"{stamp}%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def version_text(model_path: Path) -> str:
    """The package's version, and which model it runs as its card (the JSON beside it) tells:
    the data of every training stage, and the terms the weights inherit from that data."""
    from improvd.lineage import runs, summary
    from improvd.model import read_metadata

    try:
        package = metadata.version("improvd")
    except metadata.PackageNotFoundError:
        package = "(not installed: running from a source tree)"
    card = read_metadata(model_path)
    arch = card["architecture"]
    bits = card.get("held_out_bits_per_event")
    stages = [" + ".join(run.get("data", {}).get("sources") or ["unrecorded data"]) for run in runs(card)]
    trained = "trained on " + ", then ".join(stages or ["unrecorded data"])
    licences = card.get("licences", {})
    terms = card.get("terms") or "; ".join(f"{name}: {licence}" for name, licence in licences.items())
    return "\n".join([
        f"improvd {package}",
        f"model {model_path} ({arch['layers']} x LSTM {arch['units']}, {card.get('precision', 'fp32')}"
        + (f", {bits:.3f} bits/event held out)" if isinstance(bits, float) else ")"),
        trained,
        f"terms: {terms or 'none recorded'}",
        *summary(card),
    ])


def continue_to_file(config: Config, args: argparse.Namespace) -> None:
    from improvd.daemon import build_engine
    from improvd.model import StepModel
    from improvd.seed import (
        OFFLINE_CANDIDATE_STEPS,
        continue_offline,
        motif_tempo,
        plot_format,
        plot_piano_roll,
        read_motif,
        seed_notes,
        write_continuation,
    )

    image_format = plot_format(args.plot) if args.plot else None  # before any work: a bad one costs nothing
    seed = read_motif(args.seed_file, args.seed_track, args.seed_from)
    model = StepModel(config.model.path, config.model.device)
    engine = build_engine(config, model, now=0.0, candidate_steps=OFFLINE_CANDIDATE_STEPS)
    started = time.perf_counter()
    tempo = motif_tempo(seed, config.engine.tempo_bpm, config.engine.beats_per_bar)
    notes = continue_offline(engine, seed.messages, args.length, tempo)
    elapsed = time.perf_counter() - started
    write_continuation(args.output_file, seed, notes, channel=config.ports.output_channel - 1,
                       alone=args.continuation_only)
    motif = seed_notes(seed.messages)
    print(f"improvd: {args.output_file}: motif {len(motif)} notes + continuation {len(notes)} notes "
          f"({notes[-1].end - notes[0].start if notes else 0:.1f} s), {model.steps} model steps in {elapsed:.2f} s")
    if args.plot:
        plot_piano_roll(args.plot, image_format, motif, notes)
        print(f"improvd: {args.plot}: piano roll")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("debug" if args.verbose else "info")
    daemon = None
    try:
        overrides = overrides_of(args)
        config = load_config(args.config, overrides)
        setup_logging(config.log.level)
        if args.version:
            print(version_text(config.model.path))
            return EXIT_OK
        if args.list_ports:
            from improvd.ports import list_ports

            print(list_ports(config.ports.api, config.ports.client_name))
            return EXIT_OK
        if args.command == "config":
            print(format_config(config))
            return EXIT_OK
        if args.output_file:
            continue_to_file(config, args)
            return EXIT_OK
        from improvd.daemon import Daemon

        if args.seed_file and not config.ports.output:
            log.info("--seed-file with the virtual output: its continuation plays %d ms after 'ready', heard only "
                     "if something is connected by then (--out PORT plays to that port from the start)",
                     config.engine.silence_ms)
        daemon = Daemon(config, args.seed_file, args.seed_track, args.length, args.config, overrides,
                        seed_from=args.seed_from)
        daemon.install_signal_handlers()
        return daemon.run()
    except ImprovdError as err:
        print(journal_text(f"improvd: {err}", logging.ERROR), file=sys.stderr)
        if daemon is None:  # a running daemon tells systemd itself; before it, say why here
            notify_failure(err)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_OK


def notify_failure(err: ImprovdError) -> None:
    """Under systemd, the reason start-up failed as the unit's STATUS= (all of it, on one line)."""
    first, *rest = str(err).split("\n")
    notifier = Notifier()
    notifier.stopping(f"failed: {' '.join([first, '; '.join(line.strip() for line in rest)]).strip()}")
    notifier.close()


if __name__ == "__main__":
    sys.exit(main())
