"""The `improvd` command (also ``python -m improvd``).

Exit codes: 0 ok, 1 configuration, 2 bad input file, 3 model, 4 ports, 5 empty continuation.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from importlib import metadata
from pathlib import Path

from improvd.config import Config, format_config, load_config
from improvd.errors import ImprovdError

log = logging.getLogger("improvd")

EXIT_OK = 0
EXIT_CODES = "Exit codes: 0 ok, 1 configuration, 2 bad input file, 3 model, 4 ports, 5 empty continuation."
WEIGHTS = ("fluency", "pitch_class", "register", "density", "dynamics")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="improvd",
        description="Real-time MIDI improvisation: play a phrase, pause, and improvd answers.",
        epilog=EXIT_CODES,
    )
    parser.add_argument("command", nargs="?", choices=("run", "config"), default="run",
                        help="run the daemon (default) or print the effective configuration")
    parser.add_argument("--config", type=Path, help="config file (default: XDG, then /etc/improvd)")
    parser.add_argument("--in", dest="input", help="input port by name substring ('' = virtual 'improvd in')")
    parser.add_argument("--out", dest="output", help="output port by name substring ('' = virtual 'improvd out')")
    parser.add_argument("--api", choices=("auto", "alsa", "jack", "coremidi"), help="MIDI API")
    parser.add_argument("--mode", choices=("call-response", "duet"))
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the model runs")
    parser.add_argument("--model", type=Path, help="exported .onnx model (its .json beside it)")
    parser.add_argument("--random-seed", "--seed", type=int, dest="random_seed",
                        help="fix the sampler's RNG for reproducible answers (-1: random)")
    parser.add_argument("--candidates", type=int, metavar="K", help="choose each answer among K candidates (1: off)")
    parser.add_argument("--weights", type=weights_arg, default={}, metavar="NAME=W,...",
                        help=f"candidate score weights, any of {', '.join(WEIGHTS)} (see config.toml [sampler])")
    parser.add_argument("--seed-file", type=Path, help="a MIDI motif to prime the model with")
    parser.add_argument("--seed-track", type=int, help="use only this track of the seed file (0-based)")
    parser.add_argument("--output-file", type=Path, help="write motif + continuation here and exit (no ports)")
    parser.add_argument("--continuation-only", action="store_true",
                        help="with --output-file: the new notes alone, at their place in the motif's timeline")
    parser.add_argument("--plot", type=Path, help="with --output-file: a piano-roll PNG")
    parser.add_argument("--length", type=float, help="seconds of continuation for the seed file")
    parser.add_argument("--list-ports", action="store_true", help="list MIDI ports and exit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="store_true", help="improvd's version and its model's name and data")
    args = parser.parse_args(argv)
    if (args.output_file or args.plot) and not args.seed_file:
        parser.error("--output-file and --plot need --seed-file")
    if args.plot and not args.output_file:
        parser.error("--plot needs --output-file")
    if args.continuation_only and not args.output_file:
        parser.error("--continuation-only needs --output-file")
    if args.length is not None and not 0 < args.length <= 600:
        parser.error("--length must be between 0 and 600 seconds")
    return args


def overrides_of(args: argparse.Namespace) -> dict[str, object]:
    return {
        "ports.input": args.input, "ports.output": args.output, "ports.api": args.api,
        "engine.mode": args.mode, "engine.seed": args.random_seed, "sampler.temperature": args.temperature,
        "model.device": args.device, "model.path": str(args.model) if args.model else None,
        "log.level": "debug" if args.verbose else None, "sampler.candidates": args.candidates,
        **{f"sampler.weight_{name}": value for name, value in args.weights.items()},
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


def setup_logging(level: str) -> None:
    """One line per event on stderr; journald stamps its own time, so no timestamps there."""
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s "
    logging.basicConfig(level=level.upper(), stream=sys.stderr, format=f"{stamp}%(levelname)s %(name)s: %(message)s",
                        force=True)


def version_text(model_path: Path) -> str:
    """The package's version, and which model it runs, read from the model's JSON."""
    from improvd.model import read_metadata

    try:
        package = metadata.version("improvd")
    except metadata.PackageNotFoundError:
        package = "(not installed: running from a source tree)"
    model = read_metadata(model_path)
    arch = model["architecture"]
    training = model.get("training", {})
    data = training.get("data", {})
    sources = data.get("sources", {})
    names = [*sources.get("corpus", []), *(Path(f).name for f in sources.get("folders", []) or [])]
    bits = model.get("held_out_bits_per_event")
    lines = [f"improvd {package}",
             f"model {model_path} ({arch['layers']} x LSTM {arch['units']}, {model.get('precision', 'fp32')}"
             + (f", {bits:.3f} bits/event held out)" if isinstance(bits, float) else ")"),
             f"trained on {', '.join(names) or data.get('path', 'unrecorded data')}"
             + (f" ({data['files']} files)" if "files" in data else "")]
    return "\n".join(lines)


def continue_to_file(config: Config, args: argparse.Namespace) -> None:
    from improvd.daemon import build_engine
    from improvd.model import StepModel
    from improvd.seed import continue_offline, plot_piano_roll, read_motif, seed_notes, write_continuation

    seed = read_motif(args.seed_file, args.seed_track)
    model = StepModel(config.model.path, config.model.device)
    engine = build_engine(config, model, now=0.0)
    started = time.perf_counter()
    notes = continue_offline(engine, seed.messages, args.length)
    elapsed = time.perf_counter() - started
    write_continuation(args.output_file, seed, notes, channel=config.ports.output_channel - 1,
                       alone=args.continuation_only)
    motif = seed_notes(seed.messages)
    print(f"improvd: {args.output_file}: motif {len(motif)} notes + continuation {len(notes)} notes "
          f"({notes[-1].end - notes[0].start if notes else 0:.1f} s), {model.steps} model steps in {elapsed:.2f} s")
    if args.plot:
        plot_piano_roll(args.plot, motif, notes)
        print(f"improvd: {args.plot}: piano roll")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging("debug" if args.verbose else "info")
    try:
        overrides = overrides_of(args)
        config = load_config(args.config, overrides)
        setup_logging(config.log.level)
        if args.version:
            print(version_text(config.model.path))
            return EXIT_OK
        if args.list_ports:
            from improvd.ports import list_ports

            print(list_ports(config.ports.api))
            return EXIT_OK
        if args.command == "config":
            print(format_config(config))
            return EXIT_OK
        if args.output_file:
            continue_to_file(config, args)
            return EXIT_OK
        from improvd.daemon import Daemon

        daemon = Daemon(config, args.seed_file, args.seed_track, args.length, args.config, overrides)
        daemon.install_signal_handlers()
        return daemon.run()
    except ImprovdError as err:
        print(f"improvd: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
