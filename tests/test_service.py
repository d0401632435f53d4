"""improvd as a systemd service: signals on the real process over real JACK ports, the
unit files (systemd-analyze verify and security), `make install-service`, and log lines."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import mido
import pytest

from improvd import cli, vocab
from improvd.config import ServiceConfig, load_config
from tests.conftest import in_ci
from tests.engine_helpers import PROJECT_ROOT
from tests.improvd_process import improvd_command
from tests.service_helpers import (
    STOP_DEADLINE_S,
    TIMESTAMP,
    Improvd,
    Listener,
    Player,
    log_lines,
    offline_venv,
    write_config,
)

SYSTEMD = PROJECT_ROOT / "systemd"
USER_UNIT = SYSTEMD / "improvd.service"
SYSTEM_UNIT = SYSTEMD / "improvd-system.service"
SYSTEM_PREFIX = "/opt/improvd/"  # where `make install-service SYSTEM=1` puts the venv
MAX_EXPOSURE = 2.0


# ---- the real process, over JACK ----------------------------------------------------------


@pytest.fixture
def session(jack, tmp_path):
    """A running improvd on the test JACK server with a player and a listener wired to it."""
    started = []

    def start(config: Path | None = None, env: dict[str, str] | None = None) -> tuple[Improvd, Player, Listener]:
        daemon = Improvd(config or write_config(tmp_path / "config.toml"), env)
        started.append(daemon)
        daemon.wait_line("ready:")
        player, listener = Player(jack), Listener(jack)
        started.extend((player, listener))
        player.connect()
        listener.connect()
        return daemon, player, listener

    yield start
    for thing in reversed(started):
        thing.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_mid_answer_releases_every_note_and_exits_0_within_1s(session, signum):
    daemon, player, listener = session()
    player.play()
    sounding = listener.wait_sounding()  # the answer has started: these notes are down now
    sent_at = daemon.send_signal(signum)
    code, elapsed = daemon.wait_exit(sent_at)
    time.sleep(0.1)  # anything still in flight through JACK
    assert sounding, "the signal was meant to arrive while a note sounded"
    assert code == 0, daemon.log()
    assert elapsed < STOP_DEADLINE_S, f"exit took {elapsed:.3f} s"
    assert listener.unreleased() == [], (f"notes left sounding at the receiver: {listener.unreleased()}\n"
                                         f"{listener.transcript()}\n{daemon.log()}")
    assert listener.all_notes_off_channels(since=sent_at) == set(range(16))
    daemon.wait_line(f"stopping on {signal.Signals(signum).name}")
    assert all(TIMESTAMP.match(line) for line in log_lines(daemon)), "timestamps expected outside journald"


def test_stop_signal_while_idle_exits_0_within_1s(session):
    daemon, _, _ = session()
    time.sleep(0.3)  # the loop is waiting for input
    code, elapsed = daemon.wait_exit(daemon.send_signal(signal.SIGTERM))
    assert code == 0, daemon.log()
    assert elapsed < STOP_DEADLINE_S, f"exit took {elapsed:.3f} s"


def test_sighup_reloads_a_good_config_without_a_stuck_note_and_keeps_answering(session, tmp_path):
    config = write_config(tmp_path / "config.toml")
    daemon, player, listener = session(config)
    player.play()
    listener.wait_sounding()
    write_config(config, sampler={"temperature": 0.8}, engine={"silence_ms": 250})
    mark = len(daemon.lines)
    daemon.send_signal(signal.SIGHUP)
    reloaded = daemon.lines[daemon.wait_line("reloaded", start=mark)]
    assert "engine.silence_ms: 300 -> 250" in reloaded and "sampler.temperature: 1.0 -> 0.8" in reloaded, reloaded
    assert "seed" not in reloaded, "only what changed"
    time.sleep(0.2)
    assert listener.unreleased() == [], "the reload left notes sounding"
    assert daemon.process.poll() is None
    # Still answering, on the same ports.
    phrase_end = player.play()
    listener.wait_sounding()
    assert listener.note_ons(since=phrase_end)


@pytest.mark.parametrize("bad, problems", [
    ({"engine": {"silence_ms": 5}}, ["engine.silence_ms: must be between 50 and 10000, got 5"]),
    ({"model": {"path": "missing.onnx"}}, ["missing.onnx: model file not found"]),
    ({"engine": {"mode": "solo"}, "sampler": {"temprature": 1}},
     ["engine.mode: ", "sampler.temprature: unknown key"]),
], ids=["invalid-setting", "missing-model", "two-problems"])
def test_sighup_refuses_a_bad_config_and_keeps_the_old_one_running(session, tmp_path, bad, problems):
    config = write_config(tmp_path / "config.toml")
    daemon, player, listener = session(config)
    write_config(config, **bad)
    mark = len(daemon.lines)
    daemon.send_signal(signal.SIGHUP)
    line = daemon.lines[daemon.wait_line("reload refused", start=mark)]
    assert "keeping the running configuration" in line
    for problem in problems:  # each on a line of its own
        daemon.wait_line(problem, start=mark)
    assert "reloaded" not in daemon.log()
    phrase_end = player.play()
    listener.wait_sounding()  # the old configuration still answers
    assert listener.note_ons(since=phrase_end)
    assert daemon.process.poll() is None
    for problem in problems:
        assert sum(problem in line for line in daemon.lines[mark:]) == 1, daemon.log()


def test_sigusr1_logs_the_telemetry(session):
    daemon, player, listener = session()
    player.play()
    listener.wait_sounding()
    mark = len(daemon.lines)
    daemon.send_signal(signal.SIGUSR1)
    line = daemon.lines[daemon.wait_line("telemetry:", start=mark)]
    assert "input_to_state p50=" in line and "notes_in=" in line, line
    assert daemon.process.poll() is None


# ---- logs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("journal", [True, False], ids=["journald", "terminal"])
def test_log_lines_carry_priorities_under_journald_and_timestamps_outside(monkeypatch, capsys, journal):
    if journal:
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    cli.setup_logging("debug")
    log = logging.getLogger("improvd.daemon")
    try:
        log.debug("heard 3 notes")
        log.info("ready: mode duet")
        log.warning("reload: [ports] changes take effect at the next restart")
        log.error("reload refused:\n  engine.silence_ms: must be between 50 and 10000, got 5")
    finally:
        logging.getLogger().handlers.clear()
    lines = capsys.readouterr().err.splitlines()
    if journal:  # sd-daemon(3) prefixes, on every line, so `journalctl -p err` shows the whole error
        assert lines == ["<7>DEBUG improvd.daemon: heard 3 notes",
                         "<6>INFO improvd.daemon: ready: mode duet",
                         "<4>WARNING improvd.daemon: reload: [ports] changes take effect at the next restart",
                         "<3>ERROR improvd.daemon: reload refused:",
                         "<3>  engine.silence_ms: must be between 50 and 10000, got 5"]
    else:
        assert len(lines) == 5 and not any(line.startswith("<") for line in lines)
        assert TIMESTAMP.match(lines[1]) and lines[1].endswith("INFO improvd.daemon: ready: mode duet")


# ---- the unit files ---------------------------------------------------------------------------


def directives(path: Path) -> dict[str, list[str]]:
    """Section.Key -> every value it is given (systemd keeps repeated keys), comments skipped."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


@pytest.mark.parametrize("unit", [USER_UNIT, SYSTEM_UNIT], ids=["user", "system"])
def test_units_are_notify_services_with_a_watchdog_reload_and_restart(unit):
    d = directives(unit)
    assert d["Service.Type"] == ["notify"]
    assert d["Service.NotifyAccess"] == ["main"]
    assert d["Service.ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Service.Restart"] == ["on-failure"]
    watchdog = d["Service.WatchdogSec"][0]
    assert watchdog.endswith("s") and float(watchdog[:-1]) >= 2
    assert "--config" in d["Service.ExecStart"][0]


def test_system_unit_runs_unprivileged_with_only_midi_devices_and_realtime():
    d = directives(SYSTEM_UNIT)
    assert d["Service.User"] == ["improvd"] and d["Service.SupplementaryGroups"] == ["audio"]
    assert d["Service.DevicePolicy"] == ["closed"] and d["Service.DeviceAllow"] == ["char-alsa rw"]
    assert d["Service.RestrictAddressFamilies"] == ["AF_UNIX"]  # sd_notify, JACK; no network
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateNetwork", "MemoryDenyWriteExecute"):
        assert d[f"Service.{key}"] == ["yes"], key
    assert d["Service.ProtectSystem"] == ["strict"]
    # The scheduler thread's SCHED_FIFO at the default priority must stay possible.
    assert int(d["Service.LimitRTPRIO"][0]) >= ServiceConfig().realtime_priority
    assert "Service.RestrictRealtime" not in d
    assert "Service.PrivateDevices" not in d  # it would hide /dev/snd/seq
    assert d["Service.ExecStart"][0].startswith(SYSTEM_PREFIX)


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        message = "systemd-analyze not found (Debian/Ubuntu: apt-get install systemd)"
        if in_ci():
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return path


def analyze(tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # SYSTEMD_LOG_TARGET=console: in --user mode the findings would otherwise go to a journal.
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_TARGET": "console", **(env or {})})


def improvd_executable() -> Path:
    command = improvd_command()
    if len(command) != 1:
        pytest.skip("no `improvd` console script beside this Python (pip install -e . makes one)")
    return Path(command[0])


def test_system_unit_verifies(systemd_analyze, tmp_path):
    # As `make install-service SYSTEM=1 PREFIX=...` installs it: ExecStart must exist to verify.
    prefix = tmp_path / "opt"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "improvd").symlink_to(improvd_executable())
    unit = tmp_path / "improvd.service"
    unit.write_text(SYSTEM_UNIT.read_text().replace(SYSTEM_PREFIX, f"{prefix}/"))
    result = analyze(systemd_analyze, "verify", str(unit))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


USER_PREFIX = "%h/.local/share/improvd/"  # where the user unit expects `make install-service`'s venv
# pip offline: the venv the install makes sees this environment's dependencies (offline_venv).
OFFLINE_PIP = {"PIP_NO_INDEX": "1", "PIP_NO_DEPS": "1", "PIP_NO_BUILD_ISOLATION": "0"}


def make(checkout: Path, target: str, home: Path) -> subprocess.CompletedProcess:
    """`make TARGET` as a user runs it, with HOME and XDG_CONFIG_HOME in a scratch home."""
    result = subprocess.run(["make", "--no-print-directory", target, f"HOME={home}",
                             f"XDG_CONFIG_HOME={home}/.config", "SYSTEMCTL=true"],
                            cwd=checkout, capture_output=True, text=True, timeout=300,
                            env={**os.environ, **OFFLINE_PIP})
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def user_install(tmp_path_factory) -> tuple[Path, Path]:
    """`make install-service` from a copy of this checkout into a scratch home: (home, checkout)."""
    if shutil.which("make") is None:
        pytest.skip("make not found")
    root = tmp_path_factory.mktemp("service")
    checkout, home = root / "checkout", root / "home"
    for name in ("improvd", "improvd_train", "exported", "systemd", "examples"):
        shutil.copytree(PROJECT_ROOT / name, checkout / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("Makefile", "pyproject.toml", "README.md", "config.toml"):
        shutil.copy(PROJECT_ROOT / name, checkout / name)
    offline_venv(home / ".local" / "share" / "improvd", with_pip=True)
    make(checkout, "install-service", home)
    return home, checkout


def installed_command(home: Path) -> list[str]:
    """The installed unit's ExecStart, its specifiers expanded as systemd would for this home."""
    unit = home / ".config" / "systemd" / "user" / "improvd.service"
    command = directives(unit)["Service.ExecStart"][0]
    return command.replace("%h", str(home)).replace("%E", str(home / ".config")).split()


def test_make_install_service_installs_unit_config_and_an_environment_of_its_own(user_install):
    home, checkout = user_install
    unit = home / ".config" / "systemd" / "user" / "improvd.service"
    prefix = home / ".local" / "share" / "improvd"
    assert unit.read_text() == USER_UNIT.read_text().replace(USER_PREFIX, f"{prefix}/")
    config = load_config(home / ".config" / "improvd" / "config.toml")
    assert config.model.path.is_file(), "the installed config must find the model from its new place"
    executable = Path(installed_command(home)[0])
    assert executable == prefix / "bin" / "improvd" and executable.is_file()
    assert checkout not in executable.resolve().parents


def test_make_install_service_again_upgrades_and_keeps_an_edited_config(user_install):
    home, checkout = user_install
    config = home / ".config" / "improvd" / "config.toml"
    config.write_text(config.read_text() + "\n# edited by hand\n")
    (checkout / "improvd" / "__init__.py").write_text('"""improvd, upgraded."""\n')
    make(checkout, "install-service", home)
    assert config.read_text().endswith("# edited by hand\n")
    installed = next((home / ".local" / "share" / "improvd").glob("lib/python*/site-packages/improvd/__init__.py"))
    assert installed.read_text() == '"""improvd, upgraded."""\n'


def test_user_unit_verifies_as_installed(systemd_analyze, user_install, tmp_path):
    home, _ = user_install
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    unit = home / ".config" / "systemd" / "user" / "improvd.service"
    result = analyze(systemd_analyze, "--user", "verify", str(unit),
                     env={"HOME": str(home), "XDG_CONFIG_HOME": f"{home}/.config", "XDG_RUNTIME_DIR": str(runtime)})
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_installed_service_runs_after_make_clean_and_without_the_checkout(user_install, tmp_path):
    home, checkout = user_install
    make(checkout, "clean", home)
    shutil.copy(checkout / "examples" / "motif.mid", tmp_path / "motif.mid")
    shutil.rmtree(checkout)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "JOURNAL_STREAM")}
    command = installed_command(home)
    for args in (["--version"], ["--seed-file", "motif.mid", "--output-file", "out.mid", "--length", "1"]):
        result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                                env={**env, "HOME": str(home)})
        assert result.returncode == 0, result.stderr
    assert vocab.midi_to_notes(mido.MidiFile(tmp_path / "out.mid"), track=1), "no continuation"


def test_make_uninstall_service_removes_unit_and_environment_and_keeps_the_config(user_install):
    home, _ = user_install  # the checkout may be gone: any checkout's Makefile uninstalls
    make(PROJECT_ROOT, "uninstall-service", home)
    assert not (home / ".config" / "systemd" / "user" / "improvd.service").exists()
    assert not (home / ".local" / "share" / "improvd").exists()
    assert (home / ".config" / "improvd" / "config.toml").is_file()


def test_system_unit_security_exposure_is_at_most_2(systemd_analyze):
    result = analyze(systemd_analyze, "security", "--offline=true", "--no-pager", str(SYSTEM_UNIT))
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"\nsystemd-analyze security --offline=true {SYSTEM_UNIT.name}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, result.stdout


def fifo_priorities(pid: int) -> dict[int, int]:
    """thread id -> SCHED_FIFO priority, for the process's threads that run SCHED_FIFO."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        rt_priority, policy = int(fields[37]), int(fields[38])  # stat fields 40 and 41
        if policy == os.SCHED_FIFO:
            found[int(task.name)] = rt_priority
    return found


def test_realtime_runs_the_engine_loop_sched_fifo_below_the_sender(session, tmp_path):
    config = write_config(tmp_path / "rt.toml", service={"realtime": True, "realtime_priority": 20})
    daemon, player, listener = session(config)
    player.play()
    assert listener.wait_sounding(), "no answer with realtime on:\n" + daemon.log()
    log = daemon.log()
    if "realtime priority 20 for the scheduler thread refused" in log:  # an unprivileged machine
        assert "realtime priority 19 for the engine thread refused" in log
        return
    daemon.wait_line("scheduler thread runs SCHED_FIFO priority 20")
    daemon.wait_line("engine thread runs SCHED_FIFO priority 19")
    fifo = fifo_priorities(daemon.process.pid)
    assert fifo.get(daemon.process.pid) == 19, fifo  # the engine loop is the main thread
    assert 20 in fifo.values(), fifo  # the sender


def test_live_seed_file_left_with_the_pedal_down_is_answered(jack, tmp_path):
    """A live --seed-file whose motif never lifts the pedal nor its last key: released at the
    file's end, it is answered, where before improvd waited for a silence that never came."""
    seed = mido.MidiFile(ticks_per_beat=480)
    seed.tracks.append(mido.MidiTrack([
        mido.Message("control_change", control=64, value=127, time=0),
        mido.Message("note_on", note=60, velocity=80, time=0), mido.Message("note_off", note=60, time=240),
        mido.Message("note_on", note=64, velocity=80, time=0),
        mido.MetaMessage("end_of_track", time=240)]))
    seed.save(tmp_path / "held.mid")
    listener = Listener(jack)
    daemon = Improvd(write_config(tmp_path / "config.toml"), args=("--seed-file", str(tmp_path / "held.mid")))
    try:
        daemon.wait_line("ready:")
        listener.connect()
        assert listener.wait_sounding(), "the seed was never answered:\n" + daemon.log()
    finally:
        daemon.close()
        listener.close()
