"""The package as a user installs it: a wheel built from this checkout, installed into a
fresh virtual environment, run from another folder with no configuration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import mido
import pytest

from improvd import vocab
from tests.engine_helpers import MODEL_PATH, PROJECT_ROOT
from tests.service_helpers import offline_venv

EXAMPLE = PROJECT_ROOT / "examples" / "motif.mid"
VERSION = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]


def run(*args, **kwargs):
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel built from a copy of the sources (so no build/ lands in the checkout),
    installed into a new venv. The new venv sees this environment's dependencies through a
    .pth line (offline and fast) but not its improvd: that comes from the wheel alone."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    source.mkdir()
    for name in ("improvd", "improvd_train", "exported"):
        shutil.copytree(PROJECT_ROOT / name, source / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
        "--wheel-dir", root / "dist", source)
    wheel = next((root / "dist").glob("improvd-*.whl"))
    env_dir = offline_venv(root / "venv")
    python = env_dir / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--quiet", wheel)
    return env_dir


def user_env(home):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"))
    return env


def test_installed_wheel_continues_a_motif_from_any_folder(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(EXAMPLE, elsewhere / "motif.mid")
    result = run(installed / "bin" / "improvd", "--seed-file", "motif.mid", "--output-file", "out.mid",
                 "--length", "2", cwd=elsewhere, env=user_env(tmp_path))
    assert "continuation" in result.stdout
    continuation = vocab.midi_to_notes(mido.MidiFile(elsewhere / "out.mid"), track=1)
    assert continuation, "no continuation"


def test_installed_package_runs_its_own_model_and_code(installed, tmp_path):
    env = user_env(tmp_path)
    where = run(installed / "bin" / "python", "-c", "import improvd; print(improvd.__file__)", cwd=tmp_path,
                env=env).stdout.strip()
    assert where.startswith(str(installed)), where
    for command in ([installed / "bin" / "improvd"], [installed / "bin" / "python", "-m", "improvd"]):
        lines = run(*command, "--version", cwd=tmp_path, env=env).stdout.splitlines()
        assert lines[0] == f"improvd {VERSION}"
        model = lines[1].split()[1]
        assert model.startswith(str(installed)) and model.endswith("improvd/exported/improvd.onnx"), model
        assert Path(model).read_bytes() == MODEL_PATH.read_bytes()
        assert lines[2].startswith("trained on ")


def test_wheel_declares_its_licences_and_plotting_as_a_small_extra(installed, tmp_path):
    """pip shows the licence expression (the model's CC BY-NC-SA 4.0 beside the code's MIT), and
    `pip install 'improvd[plot]'` brings matplotlib for --plot without any of training's weight."""
    found = json.loads(run(installed / "bin" / "python", "-c",
                           "import importlib.metadata as m, json; d = m.metadata('improvd'); "
                           "print(json.dumps([d['License-Expression'], d.get_all('Requires-Dist')]))",
                           cwd=tmp_path, env=user_env(tmp_path)).stdout)
    licence, requires = found
    assert licence == "MIT AND CC-BY-NC-SA-4.0"
    plot = [r.split(";")[0].strip() for r in requires if 'extra == "plot"' in r]
    assert plot == ["matplotlib>=3.8"], requires


def test_make_demo_installs_the_runtime_and_plotting_without_training(tmp_path):
    """What `make demo` would run on a fresh machine (make -n: nothing is run)."""
    if shutil.which("make") is None:
        pytest.skip("make not found")
    result = run("make", "--no-print-directory", "-n", "demo", f"VENV={tmp_path / 'venv'}", cwd=PROJECT_ROOT)
    installs = [line for line in result.stdout.splitlines() if " install " in line and "-e" in line]
    assert installs == [f"{tmp_path / 'venv'}/bin/pip install --quiet -e '.[plot]'"], result.stdout
    assert "--plot continuation.png" in result.stdout


def test_wheel_installs_no_top_level_training_package(installed, tmp_path):
    """Training ships under improvd's own name: a top-level `training` would shadow any other."""
    site = Path(run(installed / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                    env=user_env(tmp_path)).stdout.strip())
    assert not (site / "training").exists()
    assert (site / "improvd_train" / "train.py").exists()
    top_level = {p.name for p in site.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert top_level == {"improvd", "improvd_train"}, top_level
    usage = run(installed / "bin" / "improvd-train", "--help", cwd=tmp_path, env=user_env(tmp_path)).stdout
    assert "improvd-train" in usage and "Exit codes" in usage
