"""Settings: one frozen dataclass tree, read from TOML and checked all at once.

Layers, later winning: built-in defaults, the first config file found, command-line
overrides. Each setting declares its type (that of its default) and its limits once, in
its field's metadata, so that checking, error messages and ``format_config`` share a
single table. Every problem is reported together: a user fixes the file in one go rather
than one error per restart of a service.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from improvd import memory
from improvd.errors import ConfigError

log = logging.getLogger(__name__)

# The model inside the package (package data; in a checkout improvd/exported links to the
# exported/ folder training writes to), so an installed improvd needs no config to find it.
PACKAGED_MODEL = Path(str(resources.files("improvd") / "exported" / "improvd.onnx")).resolve()
SYSTEM_CONFIG_PATH = Path("/etc/improvd/config.toml")
BUILT_IN = "built-in defaults"


@dataclass(frozen=True)
class Rule:
    """What a setting accepts beyond its type, which is the type of its default."""

    choices: tuple[str, ...] = ()
    ge: float | None = None  # value >= ge
    gt: float | None = None  # value > gt
    le: float | None = None  # value <= le
    off: int | None = None  # a sentinel allowed outside the range (-1: off, none, random)
    nonempty: bool = False
    not_below: str | None = None  # another key of the section this one must be >= to
    distinct: bool = False  # must differ from the section's other distinct keys (unless off)


def setting(default: Any, **rule: Any) -> Any:
    """A dataclass field carrying its Rule, so that each setting is declared in one place."""
    return field(default=default, metadata={"rule": Rule(**rule)})


@dataclass(frozen=True)
class ModelConfig:
    """The exported step model and where it runs."""

    path: Path = setting(PACKAGED_MODEL, nonempty=True)
    device: str = setting("auto", choices=("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class PortsConfig:
    """Which MIDI ports to open, and what crosses them."""

    api: str = setting("auto", choices=("auto", "alsa", "jack", "coremidi"))
    input: str = setting("")
    output: str = setting("")
    virtual_input: str = setting("improvd in", nonempty=True)
    virtual_output: str = setting("improvd out", nonempty=True)
    input_channels: tuple[int, ...] = setting((), ge=1, le=16)
    output_channel: int = setting(1, ge=1, le=16)
    program: int = setting(-1, off=-1, ge=0, le=127)
    passthrough: bool = setting(False)
    reconnect_s: float = setting(1.0, gt=0)
    client_name: str = setting("improvd", nonempty=True)
    jack_wait_s: float = setting(0.0, ge=0)


@dataclass(frozen=True)
class EngineConfig:
    """When and for how long improvd plays."""

    mode: str = setting("call-response", choices=("call-response", "duet"))
    silence_ms: int = setting(500, ge=50, le=10000)
    min_answer_s: float = setting(2.0, gt=0, le=600)
    max_answer_s: float = setting(8.0, gt=0, le=600, not_below="min_answer_s")
    answer_ratio: float = setting(1.0, gt=0)
    lookahead_ms: int = setting(250, ge=20, le=5000)
    seed: int = setting(-1, off=-1, ge=0)
    max_held_s: float = setting(10.0, gt=0)
    tempo_bpm: float = setting(0.0, off=0, ge=20, le=400)
    beats_per_bar: int = setting(4, ge=1, le=16)
    answer_start: str = setting("silence", choices=("silence", "beat", "bar"))
    answer_bars: int = setting(0, ge=0, le=64)
    quantize: float = setting(0.0, ge=0, le=1)
    grid: str = setting("1/16", choices=("1/1", "1/2", "1/4", "1/8", "1/16", "1/32", "1/2t", "1/4t", "1/8t", "1/16t",
                                          "1/32t"))
    swing: float = setting(0.0, ge=0, le=0.5)


@dataclass(frozen=True)
class SamplerConfig:
    """How a token is drawn from the model's logits, and what keeps the output playable."""

    temperature: float = setting(1.0, gt=0, le=5)
    top_p: float = setting(0.95, gt=0, le=1)
    max_polyphony: int = setting(12, ge=1, le=16)
    min_note_s: float = setting(0.05, ge=0)
    max_note_s: float = setting(4.0, gt=0)
    pitch_low: int = setting(21, ge=0, le=127)
    pitch_high: int = setting(108, ge=0, le=127, not_below="pitch_low")
    candidates: int = setting(8, ge=1, le=4096)
    weight_fluency: float = setting(1.0, ge=0)
    weight_pitch_class: float = setting(2.0, ge=0)
    weight_register: float = setting(0.25, ge=0)
    weight_density: float = setting(1.0, ge=0)
    weight_dynamics: float = setting(0.08, ge=0)
    weight_rhythm: float = setting(1.0, ge=0)
    weight_note_length: float = setting(1.0, ge=0)
    weight_texture: float = setting(1.0, ge=0)


@dataclass(frozen=True)
class ControlsConfig:
    """MIDI controllers and clock messages that steer the daemon while it runs."""

    temperature_cc: int = setting(1, off=-1, ge=0, le=127, distinct=True)
    answer_length_cc: int = setting(2, off=-1, ge=0, le=127, distinct=True)
    mode_cc: int = setting(80, off=-1, ge=0, le=127, distinct=True)
    panic_cc: int = setting(123, off=-1, ge=0, le=127, distinct=True)
    memory_cc: int = setting(3, off=-1, ge=0, le=127, distinct=True)
    memory_reset_cc: int = setting(81, off=-1, ge=0, le=127, distinct=True)
    clock: bool = setting(True)


@dataclass(frozen=True)
class MemoryConfig:
    """The player memory: what improvd learns of this player while it runs."""

    strength: float = setting(memory.STRENGTH, ge=0, le=1)
    horizon_events: int = setting(memory.HORIZON_EVENTS, ge=1, le=20000)
    horizon_s: float = setting(memory.HORIZON_S, gt=0)


@dataclass(frozen=True)
class TelemetryConfig:
    """How often the latency and throughput figures are logged."""

    interval_s: float = setting(30.0, ge=0)


@dataclass(frozen=True)
class ServiceConfig:
    """How the daemon behaves under systemd."""

    watchdog: bool = setting(True)
    realtime: bool = setting(False)
    realtime_priority: int = setting(20, ge=1, le=99)


@dataclass(frozen=True)
class LogConfig:
    """How much the daemon logs."""

    level: str = setting("info", choices=("debug", "info", "warning", "error"))


@dataclass(frozen=True)
class Config:
    """Every setting, plus where they came from (not part of equality)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    ports: PortsConfig = field(default_factory=PortsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = field(default=BUILT_IN, compare=False)  # the file read, or BUILT_IN
    overridden: tuple[str, ...] = field(default=(), compare=False)  # "section.key"s from flags


SECTIONS: dict[str, type] = {
    f.name: f.default_factory for f in fields(Config) if f.name not in ("source", "overridden")
}


def choices(section: type, key: str) -> tuple[str, ...]:
    """The values ``section.key`` accepts, for command-line flags and checks elsewhere."""
    return section.__dataclass_fields__[key].metadata["rule"].choices


@dataclass
class Live:
    """The few values a musician turns while playing (by CC); they start from the config.

    A new knob is a field here and a line in ``of``."""

    mode: str
    temperature: float
    answer_ratio: float
    memory_strength: float

    @classmethod
    def of(cls, config: Config) -> Live:
        return cls(mode=config.engine.mode, temperature=config.sampler.temperature,
                   answer_ratio=config.engine.answer_ratio, memory_strength=config.memory.strength)

_EXPECTED = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    Path: "a path (string)",
    tuple: "a list of integers",
}


class _Origin(NamedTuple):
    """Where a value came from: the base for relative paths and a note for its messages."""

    base_dir: Path
    note: str


class _Invalid(ValueError):
    """A value a setting does not accept; the message is the part after ``section.key: ``."""


def search_paths(env: Mapping[str, str] | None = None) -> tuple[Path, ...]:
    """The config files tried when none is given, first found wins (XDG, then system)."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME", "")
    # The XDG spec says to ignore a relative XDG_CONFIG_HOME.
    base = Path(xdg) if os.path.isabs(xdg) else Path(env.get("HOME") or Path.home()) / ".config"
    return (base / "improvd" / "config.toml", SYSTEM_CONFIG_PATH)


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, object] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Read the settings from ``path`` (or the first of ``search_paths(env)``) and overrides.

    ``overrides`` maps ``"section.key"`` to a Python value of the setting's type (as
    argparse delivers it); a value of None means "flag not given" and is skipped. Relative
    model paths are resolved against the config file's directory, or the current directory
    when they come from an override. ``env`` defaults to ``os.environ``.

    Raises ConfigError. A file that is missing (when given explicitly), unreadable or not
    TOML gives one line starting with the file's path::

        /etc/improvd/config.toml: invalid TOML: Expected '=' after a key ... (at line 2, column 12)

    Invalid settings give a first line naming the file, then one indented line per problem
    in the form ``section.key: message``; problems in an override end in "(command line)"::

        invalid configuration in /etc/improvd/config.toml:
          engine.silence_ms: must be between 50 and 10000, got 5
          sampler.temprature: unknown key (did you mean 'temperature'?)
    """
    file = Path(path).absolute() if path is not None else _find_config_file(env)
    given: dict[str, dict[str, tuple[object, _Origin]]] = {name: {} for name in SECTIONS}
    problems: list[str] = []
    if file is not None:
        origin = _Origin(file.resolve().parent, "")
        for section, table in _read_toml(file).items():
            if section not in SECTIONS:
                problems.append(_unknown_section(section, table))
            elif not isinstance(table, dict):
                problems.append(f"{section}: expected a table, got {_toml_value(table)}")
            else:
                for key, value in table.items():
                    _place(section, key, value, origin, given, problems)
    flags = {key: value for key, value in (overrides or {}).items() if value is not None}
    command_line = _Origin(Path.cwd(), " (command line)")
    for dotted, value in flags.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS:
            problems.append(_unknown_section(section, None) + command_line.note)
        else:
            _place(section, key, value, command_line, given, problems)

    sections = {name: _section_values(name, given[name], problems) for name in SECTIONS}
    if problems:
        header = f"invalid configuration in {file}:" if file else "invalid configuration:"
        raise ConfigError("\n  ".join([header, *problems]))
    source = str(file) if file else BUILT_IN
    log.debug("configuration from %s, overridden: %s", source, ", ".join(flags) or "nothing")
    return Config(
        **{name: SECTIONS[name](**values) for name, values in sections.items()},
        source=source,
        overridden=tuple(flags),
    )


def format_config(config: Config) -> str:
    """The effective settings as TOML that loads back to equal values (``improvd config``)."""
    lines = [f"# improvd configuration from {config.source}"]
    if config.overridden:
        lines.append(f"# overridden on the command line: {', '.join(config.overridden)}")
    sections = {name: {f.name: getattr(getattr(config, name), f.name) for f in fields(getattr(config, name))}
                for name in SECTIONS}
    return "\n".join(lines) + "\n" + format_sections(sections)


def format_sections(sections: Mapping[str, Mapping[str, object]]) -> str:
    """``{section: {key: value}}`` as TOML, a blank line before each section: the body of
    ``format_config``, and how tests and benchmarks write a daemon the few settings they change."""
    lines: list[str] = []
    for name, values in sections.items():
        lines += ["", f"[{name}]"]
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def changed_settings(old: Config, new: Config) -> list[str]:
    """``section.key: old -> new`` for every setting that differs (a reload's log line)."""
    changes = []
    for name in SECTIONS:
        before, after = getattr(old, name), getattr(new, name)
        for f in fields(before):
            was, now = getattr(before, f.name), getattr(after, f.name)
            if was != now:
                changes.append(f"{name}.{f.name}: {_toml_value(was)} -> {_toml_value(now)}")
    return changes


def _find_config_file(env: Mapping[str, str] | None) -> Path | None:
    for candidate in search_paths(env):
        try:
            if candidate.exists():
                return candidate
        except OSError:
            return candidate  # there but unreachable: reading it will say why
    log.debug("no config file found; using built-in defaults")
    return None


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except OSError as err:
        raise ConfigError(f"{file}: cannot read config file: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{file}: not UTF-8 text (byte {err.start})") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{file}: invalid TOML: {err}") from err


def _place(
    section: str,
    key: str,
    value: object,
    origin: _Origin,
    given: dict[str, dict[str, tuple[object, _Origin]]],
    problems: list[str],
) -> None:
    """Record a value for a known key, or the problem with an unknown one."""
    names = [f.name for f in fields(SECTIONS[section])]
    if key in names:
        given[section][key] = (value, origin)
        return
    match = difflib.get_close_matches(key, names, n=1)
    owner = _section_of(key)
    if match:
        hint = f"did you mean '{match[0]}'?"
    elif owner:
        hint = f"it belongs in [{owner}]"
    else:
        hint = f"valid keys: {', '.join(names)}"
    problems.append(f"{section}.{key}: unknown key ({hint}){origin.note}")


def _unknown_section(name: str, value: object) -> str:
    match = difflib.get_close_matches(name, SECTIONS, n=1)
    owner = _section_of(name)
    if match:
        hint = f"did you mean '{match[0]}'?"
    elif owner and not isinstance(value, dict):
        hint = f"did you mean '{owner}.{name}'?"  # a key written above every [section]
    else:
        hint = f"valid sections: {', '.join(SECTIONS)}"
    return f"{name}: unknown section ({hint})"


def _section_of(key: str) -> str | None:
    return next((name for name, cls in SECTIONS.items() if key in cls.__dataclass_fields__), None)


def _section_values(
    section: str, given: dict[str, tuple[object, _Origin]], problems: list[str]
) -> dict[str, Any]:
    """Check and convert one section's values; problems are appended, bad keys left out."""
    values: dict[str, Any] = {}
    for f in fields(SECTIONS[section]):
        if f.name not in given:
            values[f.name] = f.default
            continue
        value, origin = given[f.name]
        try:
            values[f.name] = _convert(f.default, f.metadata["rule"], value, origin.base_dir)
        except _Invalid as err:
            problems.append(f"{section}.{f.name}: {err}{origin.note}")
    problems += _cross_problems(section, values)
    return values


def _convert(default: object, rule: Rule, value: Any, base_dir: Path) -> Any:
    """The value as the setting's type, or _Invalid saying what is wrong with it."""
    kind = Path if isinstance(default, Path) else type(default)
    if not _has_type(kind, value):
        raise _Invalid(f"expected {_EXPECTED[kind]}, got {_toml_value(value)}")
    if kind is float:
        value = float(value)
        if not math.isfinite(value):
            raise _Invalid(f"must be a finite number, got {_toml_value(value)}")
    if rule.nonempty and not str(value):
        raise _Invalid("must not be empty")
    if rule.choices and value not in rule.choices:
        valid = ", ".join(_toml_value(choice) for choice in rule.choices)
        raise _Invalid(f"must be one of {valid}, got {_toml_value(value)}")
    if kind is tuple:
        for item in value:
            if not _in_range(rule, item):
                raise _Invalid(f"each entry {_range_text(rule)}, got {item}")
        return tuple(value)
    if kind in (int, float) and not _in_range(rule, value):
        raise _Invalid(f"{_range_text(rule)}, got {_toml_value(value)}")
    if kind is Path:
        return base_dir / Path(value).expanduser()  # joining keeps an absolute path as is
    return value


def _has_type(kind: type, value: object) -> bool:
    if kind is tuple:
        return isinstance(value, list | tuple) and all(_has_type(int, item) for item in value)
    if isinstance(value, bool):  # TOML keeps true apart from 1; so do we
        return kind is bool
    if kind is float:
        return isinstance(value, int | float)
    if kind is Path:
        return isinstance(value, str | Path)
    return isinstance(value, kind)


def _in_range(rule: Rule, value: float) -> bool:
    return value == rule.off or (
        (rule.ge is None or value >= rule.ge)
        and (rule.gt is None or value > rule.gt)
        and (rule.le is None or value <= rule.le)
    )


def _range_text(rule: Rule) -> str:
    if rule.ge is not None and rule.le is not None:
        text = f"between {rule.ge} and {rule.le}"
    else:
        low = f"at least {rule.ge}" if rule.ge is not None else f"greater than {rule.gt}"
        text = low if rule.le is None else f"{low} and at most {rule.le}"
    return f"must be {rule.off} or {text}" if rule.off is not None else f"must be {text}"


def _cross_problems(section: str, values: dict[str, Any]) -> list[str]:
    """Checks between keys of one section, skipping keys that already failed on their own."""
    problems = []
    distinct_owner: dict[Any, str] = {}
    for f in fields(SECTIONS[section]):
        rule: Rule = f.metadata["rule"]
        if f.name not in values:
            continue
        value = values[f.name]
        floor = values.get(rule.not_below) if rule.not_below else None
        if floor is not None and value < floor:
            problems.append(
                f"{section}.{f.name}: must be at least {section}.{rule.not_below} "
                f"({_toml_value(floor)}), got {_toml_value(value)}"
            )
        if rule.distinct and value != rule.off:
            if value in distinct_owner:
                problems.append(
                    f"{section}.{f.name}: must differ from {section}.{distinct_owner[value]}, "
                    f"both are {value}"
                )
            distinct_owner.setdefault(value, f.name)
    return problems


def _toml_value(value: object) -> str:
    """A value written as TOML: for ``format_config`` and to quote values in messages."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # Python's float repr (1.0, 1e-05, inf, nan) is valid TOML
    if isinstance(value, str | Path):
        # A JSON string is a TOML basic string, once DEL (which TOML forbids raw) is escaped.
        return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{_toml_value(str(key))} = {_toml_value(item)}" for key, item in value.items())
        return "{" + ", ".join(pairs) + "}"
    return str(value)  # TOML dates and times
