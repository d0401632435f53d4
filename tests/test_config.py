"""Config: defaults match the shipped file, every problem is reported at once, exactly."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

import improvd
from improvd import config as config_module
from improvd.config import (
    BUILT_IN,
    SECTIONS,
    Config,
    EngineConfig,
    format_config,
    load_config,
    search_paths,
)
from improvd.errors import ConfigError

SHIPPED = Path(__file__).resolve().parent.parent / "config.toml"
README = SHIPPED.with_name("README.md")
NOT_SETTINGS = {"model.predict"}  # Keras' method, named where the README compares with other projects


@pytest.fixture(autouse=True)
def no_system_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the host's /etc/improvd out of every test."""
    monkeypatch.setattr(config_module, "SYSTEM_CONFIG_PATH", tmp_path / "etc" / "config.toml")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def problems_in(tmp_path: Path, text: str, **kwargs: object) -> str:
    """The ConfigError message for a config file holding ``text``."""
    file = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as caught:
        load_config(file, **kwargs)
    return str(caught.value)


def expected(tmp_path: Path, *lines: str) -> str:
    return "\n  ".join([f"invalid configuration in {tmp_path / 'config.toml'}:", *lines])


# --- the shipped file and the defaults ----------------------------------------------------


def test_shipped_config_equals_built_in_defaults() -> None:
    assert load_config(SHIPPED) == Config()


def test_shipped_config_has_every_field_and_nothing_else() -> None:
    document = tomllib.loads(SHIPPED.read_text(encoding="utf-8"))
    assert list(document) == list(SECTIONS)
    for name, cls in SECTIONS.items():
        assert list(document[name]) == [f.name for f in dataclasses.fields(cls)], name


def test_readme_names_only_real_settings_with_valid_examples() -> None:
    """Every `section.key` the README names exists, and every `section.key = value` it shows loads."""
    mentions = re.findall(rf"`((?:{'|'.join(SECTIONS)})\.[a-z_]+)(?: = ([^`]+))?`", README.read_text(encoding="utf-8"))
    assert len(mentions) > 5
    for dotted, value in mentions:
        if dotted in NOT_SETTINGS:
            continue
        section, _, key = dotted.partition(".")
        assert key in SECTIONS[section].__dataclass_fields__, dotted
        if value:
            load_config(SHIPPED, overrides={dotted: tomllib.loads(f"v = {value}")["v"]})


def test_readme_states_the_defaults() -> None:
    """The defaults the README and docs/ quote are the built-in ones (each statement checked where it appears)."""
    pages = [README, *sorted((README.parent / "docs").glob("*.md"))]
    text = " ".join(" ".join(page.read_text(encoding="utf-8").split()) for page in pages)
    c = Config()
    weights = [getattr(c.sampler, f.name) for f in dataclasses.fields(c.sampler) if f.name.startswith("weight_")]
    statements = {
        r"`engine\.silence_ms` \((\d+) ms": [c.engine.silence_ms],
        r"the (\d+) ms lookahead": [c.engine.lookahead_ms],
        r"\((\d+) by default; `--candidates K`": [c.sampler.candidates],
        r"The default K = (\d+)": [c.sampler.candidates],
        r"Defaults ([\d.]+) / ([\d.]+) / ([\d.]+) / ([\d.]+) / ([\d.]+) / ([\d.]+) / ([\d.]+) / ([\d.]+)": weights,
        r"--weights fluency=([\d.]+),pitch_class=([\d.]+),register=([\d.]+),density=([\d.]+),dynamics=([\d.]+),"
            r"rhythm=([\d.]+),note_length=([\d.]+),texture=([\d.]+)": weights,
        r"CC (\d+) memory strength": [c.controls.memory_cc],
        r"CC (\d+) forgets": [c.controls.memory_reset_cc],
        r"CC (\d+) \(mod wheel\) temperature": [c.controls.temperature_cc],
        r"CC (\d+) answer length": [c.controls.answer_length_cc],
        r"CC (\d+) mode": [c.controls.mode_cc],
        r"CC (\d+) / CC 120 panic": [c.controls.panic_cc],
    }
    found = 0
    for pattern, defaults in statements.items():
        for match in re.finditer(pattern, text):
            found += 1
            assert [float(group) for group in match.groups()] == defaults, match.group(0)
    assert found >= 5


def test_shipped_config_comments_every_key() -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[number - 1].startswith("#") or "#" in line, line


def test_default_model_is_the_shipped_one() -> None:
    project_root = Path(improvd.__file__).resolve().parent.parent
    assert Config().model.path == project_root / "exported" / "improvd.onnx"


def test_no_file_anywhere_gives_built_in_defaults(tmp_path: Path) -> None:
    config = load_config(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")})
    assert config == Config()
    assert config.source == BUILT_IN


def test_sections_are_frozen() -> None:
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.engine.silence_ms = 100  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.engine = EngineConfig()  # type: ignore[misc]


# --- where the file comes from -------------------------------------------------------------


def test_search_order_xdg_then_system_then_built_in(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    xdg_file = tmp_path / "xdg" / "improvd" / "config.toml"
    system_file = config_module.SYSTEM_CONFIG_PATH
    assert search_paths(env) == (xdg_file, system_file)

    assert load_config(env=env).source == BUILT_IN
    write(system_file, "[engine]\nsilence_ms = 700\n")
    assert load_config(env=env).engine.silence_ms == 700
    assert load_config(env=env).source == str(system_file)
    write(xdg_file, "[engine]\nsilence_ms = 900\n")
    assert load_config(env=env).engine.silence_ms == 900
    assert load_config(env=env).source == str(xdg_file)


def test_xdg_defaults_to_home_config_and_ignores_a_relative_value(tmp_path: Path) -> None:
    home_file = tmp_path / ".config" / "improvd" / "config.toml"
    for env in ({"HOME": str(tmp_path)}, {"HOME": str(tmp_path), "XDG_CONFIG_HOME": "rel"}):
        assert search_paths(env)[0] == home_file


def test_explicit_path_beats_the_search(tmp_path: Path) -> None:
    env = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    write(tmp_path / "xdg" / "improvd" / "config.toml", "[engine]\nsilence_ms = 900\n")
    explicit = write(tmp_path / "mine.toml", "[engine]\nsilence_ms = 300\n")
    assert load_config(explicit, env=env).engine.silence_ms == 300


def test_explicit_missing_path_is_an_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert str(caught.value) == f"{missing}: config file not found"


# --- overrides and paths -------------------------------------------------------------------


def test_overrides_beat_the_file_and_none_means_not_given(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", '[sampler]\ntemperature = 0.5\n[engine]\nmode = "duet"\n')
    config = load_config(
        file, overrides={"sampler.temperature": 1.5, "engine.mode": None, "ports.input": "Kbd"}
    )
    assert config.sampler.temperature == 1.5
    assert config.engine.mode == "duet"
    assert config.ports.input == "Kbd"
    assert config.overridden == ("sampler.temperature", "ports.input")


def test_override_problems_say_they_come_from_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(
            overrides={"sampler.temperature": 0, "sampler.temprature": 1, "tempo.x": 1},
            env={"XDG_CONFIG_HOME": str(tmp_path)},
        )
    assert str(caught.value) == "\n  ".join(
        [
            "invalid configuration:",
            "sampler.temprature: unknown key (did you mean 'temperature'?) (command line)",
            "tempo: unknown section (valid sections: model, ports, engine, sampler, controls,"
            " memory, telemetry, service, log) (command line)",
            "sampler.temperature: must be greater than 0 and at most 5, got 0.0 (command line)",
        ]
    )


def test_relative_model_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    file = write(tmp_path / "sub" / "c.toml", '[model]\npath = "models/m.onnx"\n')
    assert load_config(file).model.path == tmp_path / "sub" / "models" / "m.onnx"


def test_absolute_and_home_model_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    file = write(tmp_path / "c.toml", f'[model]\npath = "{tmp_path}/abs.onnx"\n')
    assert load_config(file).model.path == tmp_path / "abs.onnx"
    file = write(tmp_path / "c.toml", '[model]\npath = "~/m.onnx"\n')
    assert load_config(file).model.path == tmp_path / "home" / "m.onnx"


def test_relative_model_path_override_is_relative_to_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(SHIPPED, overrides={"model.path": "x/m.onnx"})
    assert config.model.path == tmp_path / "x" / "m.onnx"


# --- error messages ------------------------------------------------------------------------


def test_several_problems_are_reported_together(tmp_path: Path) -> None:
    text = """
[engine]
silence_ms = 5
mode = "dut"

[sampler]
temprature = 0.8

[sampler2]
top_p = 0.9

[ports]
passthrough = "yes"
"""
    assert problems_in(tmp_path, text) == expected(
        tmp_path,
        "sampler.temprature: unknown key (did you mean 'temperature'?)",
        "sampler2: unknown section (did you mean 'sampler'?)",
        'ports.passthrough: expected a boolean, got "yes"',
        'engine.mode: must be one of "call-response", "duet", got "dut"',
        "engine.silence_ms: must be between 50 and 10000, got 5",
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[engine]\nsilence_ms = true", "engine.silence_ms: expected an integer, got true"),
        ("[engine]\nsilence_ms = 500.0", "engine.silence_ms: expected an integer, got 500.0"),
        ("[sampler]\ntemperature = false", "sampler.temperature: expected a number, got false"),
        ("[sampler]\ntemperature = '1'", 'sampler.temperature: expected a number, got "1"'),
        ("[ports]\ninput = 3", "ports.input: expected a string, got 3"),
        ("[model]\npath = 1", "model.path: expected a path (string), got 1"),
        ("[ports]\ninput_channels = 1", "ports.input_channels: expected a list of integers, got 1"),
        (
            "[ports]\ninput_channels = [1, true]",
            "ports.input_channels: expected a list of integers, got [1, true]",
        ),
        ("[service]\nrealtime = 1", "service.realtime: expected a boolean, got 1"),
        ("[engine]\nseed = 1979-05-27", "engine.seed: expected an integer, got 1979-05-27"),
        ("[engine]\nmode = {a = 1}", 'engine.mode: expected a string, got {"a" = 1}'),
        ("engine = 3", "engine: expected a table, got 3"),
    ],
)
def test_wrong_types(tmp_path: Path, text: str, problem: str) -> None:
    assert problems_in(tmp_path, text) == expected(tmp_path, problem)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "[sampler]\ntemperature = 0",
            "sampler.temperature: must be greater than 0 and at most 5, got 0.0",
        ),
        ("[sampler]\ntop_p = 1.5", "sampler.top_p: must be greater than 0 and at most 1, got 1.5"),
        ("[sampler]\nmax_note_s = -1", "sampler.max_note_s: must be greater than 0, got -1.0"),
        ("[sampler]\nmax_note_s = inf", "sampler.max_note_s: must be a finite number, got inf"),
        ("[sampler]\npitch_high = 128", "sampler.pitch_high: must be between 0 and 127, got 128"),
        ("[telemetry]\ninterval_s = -0.5", "telemetry.interval_s: must be at least 0, got -0.5"),
        ("[engine]\nseed = -2", "engine.seed: must be -1 or at least 0, got -2"),
        ("[ports]\nprogram = 128", "ports.program: must be -1 or between 0 and 127, got 128"),
        ("[controls]\npanic_cc = -5", "controls.panic_cc: must be -1 or between 0 and 127, got -5"),
        (
            "[ports]\ninput_channels = [1, 17]",
            "ports.input_channels: each entry must be between 1 and 16, got 17",
        ),
        ("[ports]\nvirtual_input = ''", "ports.virtual_input: must not be empty"),
        (
            "[ports]\napi = 'ALSA'",
            'ports.api: must be one of "auto", "alsa", "jack", "coremidi", got "ALSA"',
        ),
        (
            "[log]\nlevel = 'verbose'",
            'log.level: must be one of "debug", "info", "warning", "error", got "verbose"',
        ),
    ],
)
def test_out_of_range_and_invalid_choices(tmp_path: Path, text: str, problem: str) -> None:
    assert problems_in(tmp_path, text) == expected(tmp_path, problem)


def test_cross_field_checks(tmp_path: Path) -> None:
    text = """
[engine]
min_answer_s = 10
[sampler]
pitch_low = 60
pitch_high = 48
[controls]
mode_cc = 1
panic_cc = 2
"""
    assert problems_in(tmp_path, text) == expected(
        tmp_path,
        "engine.max_answer_s: must be at least engine.min_answer_s (10.0), got 8.0",
        "sampler.pitch_high: must be at least sampler.pitch_low (60), got 48",
        "controls.mode_cc: must differ from controls.temperature_cc, both are 1",
        "controls.panic_cc: must differ from controls.answer_length_cc, both are 2",
    )


def test_cross_field_check_skips_a_key_that_failed_alone(tmp_path: Path) -> None:
    text = "[engine]\nmin_answer_s = 700\nmax_answer_s = 9"
    assert problems_in(tmp_path, text) == expected(
        tmp_path, "engine.min_answer_s: must be greater than 0 and at most 600, got 700.0"
    )


def test_disabled_controls_may_repeat_and_ints_are_accepted_as_floats(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml",
        "[controls]\ntemperature_cc = -1\nmode_cc = -1\n[ports]\nreconnect_s = 2\n",
    )
    config = load_config(file)
    assert (config.controls.temperature_cc, config.controls.mode_cc) == (-1, -1)
    assert config.ports.reconnect_s == 2.0
    assert isinstance(config.ports.reconnect_s, float)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[log]\nfoo = 1", "log.foo: unknown key (valid keys: level)"),
        (
            "[engine]\ntemperature = 1.0",
            "engine.temperature: unknown key (it belongs in [sampler])",
        ),
        ("temperature = 0.8", "temperature: unknown section (did you mean 'sampler.temperature'?)"),
    ],
)
def test_unknown_keys_without_a_close_match(tmp_path: Path, text: str, problem: str) -> None:
    assert problems_in(tmp_path, text) == expected(tmp_path, problem)


def test_toml_syntax_error_is_one_line_naming_the_file(tmp_path: Path) -> None:
    file = write(tmp_path / "config.toml", "[engine]\nsilence_ms 5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert str(caught.value) == (
        f"{file}: invalid TOML: Expected '=' after a key in a key/value pair (at line 2, column 12)"
    )
    assert isinstance(caught.value.__cause__, tomllib.TOMLDecodeError)


def test_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    file = tmp_path / "config.toml"
    file.write_bytes(b"[log]\nlevel = '\xff'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    assert str(caught.value) == f"{file}: not UTF-8 text (byte 15)"


# --- format_config -------------------------------------------------------------------------


def test_format_config_round_trips(tmp_path: Path) -> None:
    file = write(
        tmp_path / "c.toml",
        """
[model]
path = "m/x.onnx"
[ports]
input = "Digital \\"Piano\\" \\\\ 1"
input_channels = [1, 10]
passthrough = true
[engine]
mode = "duet"
min_answer_s = 0.25
[sampler]
top_p = 1e-3
""",
    )
    config = load_config(file, overrides={"sampler.temperature": 0.7})
    text = format_config(config)
    assert text.splitlines()[:2] == [
        f"# improvd configuration from {file}",
        "# overridden on the command line: sampler.temperature",
    ]
    assert tomllib.loads(text)["ports"]["input_channels"] == [1, 10]
    reloaded = load_config(write(tmp_path / "other" / "again.toml", text))
    assert reloaded == config
    assert reloaded.ports.input == 'Digital "Piano" \\ 1'
    assert reloaded.model.path == tmp_path / "m" / "x.onnx"


def test_format_config_of_defaults_names_the_built_in_source() -> None:
    assert format_config(Config()).startswith("# improvd configuration from built-in defaults\n")
