"""Torch-free installs are first-class: `pip install moekit` is the estimators' install, and every
command that needs the deep-learning extra says exactly what to install instead of a traceback.

The subprocess tests hide packages with a ``sitecustomize`` on PYTHONPATH whose import hook
refuses them, as an environment without them would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
HIDE = '''
import importlib.abc, sys

HIDDEN = {hidden!r}


class _Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, _Hide())
'''
DEEP = ("torch", "safetensors", "matplotlib", "transformers", "triton")


def run_without(tmp_path: Path, hidden: tuple[str, ...], *args: str) -> subprocess.CompletedProcess:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE.format(hidden=set(hidden)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT / "src")]))
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)


def test_the_hook_really_hides_torch(tmp_path):
    done = run_without(tmp_path, DEEP, "-c", "import torch")
    assert done.returncode == 1 and "No module named 'torch'" in done.stderr


@pytest.mark.parametrize("argv", [
    ["demo", "--quick", "--output", "out"],
    ["train", str(ROOT / "examples" / "configs" / "audio.toml"), "--output", "out"],
])
def test_torch_commands_say_what_to_install(tmp_path, argv):
    done = run_without(tmp_path, DEEP, "-m", "moekit", *argv)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    line, = done.stderr.strip().splitlines()
    assert line.startswith(f"moekit {argv[0]}: error: this command needs torch")
    assert "pip install 'moekit[torch]'" in line and "download.pytorch.org/whl/cpu" in line
    assert not (tmp_path / "out").exists()  # refused before doing anything


def test_report_without_matplotlib_says_what_to_install(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    done = run_without(tmp_path, DEEP, "-m", "moekit", "report", str(run))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "needs matplotlib" in done.stderr and "pip install 'moekit[plots]'" in done.stderr


def test_the_statisticians_side_works_without_torch(tmp_path):
    code = ("import sys; from moekit.estimators import MixtureOfExpertsRegressor, "
            "make_moe_regression; X, y, _ = make_moe_regression(n_samples=200, n_features=2, "
            "n_experts=2, random_state=0); "
            "MixtureOfExpertsRegressor(n_experts=2, n_init=1, random_state=0).fit(X, y); "
            "import moekit.runs; assert 'torch' not in sys.modules")
    done = run_without(tmp_path, DEEP, "-c", code)
    assert done.returncode == 0, done.stderr
    info = run_without(tmp_path, DEEP, "-m", "moekit", "info")
    assert info.returncode == 0 and "torch is not installed" in info.stdout
    assert run_without(tmp_path, DEEP, "-m", "moekit", "fit", "--help").returncode == 0


@pytest.mark.parametrize(("module", "needs"), [("moekit.layers", "torch"),
                                               ("moekit.train", "torch"),
                                               ("moekit.viz", "matplotlib")])
def test_deep_subpackages_say_what_to_install(tmp_path, module, needs):
    done = run_without(tmp_path, DEEP, "-c", f"import {module}")
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("moekit._deps.MissingDependencyError: ")
    assert f"{module} needs {needs}" in last and "pip install 'moekit[" in last


def test_plain_install_brings_no_torch_and_the_extra_brings_the_deep_side():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    plain = " ".join(project["dependencies"])
    for heavy in ("torch", "safetensors", "matplotlib", "transformers", "triton"):
        assert heavy not in plain
    extras = project["optional-dependencies"]
    deep = " ".join(extras["torch"])
    assert all(name in deep for name in ("torch", "safetensors", "matplotlib", "pyyaml"))
    assert "moekit[torch]" in extras["test"] and "moekit[torch]" in extras["hf"]
    # the README's quick start goes through quickstart.py, which installs the extra for the demo
    assert 'ensure_env("torch")' in (ROOT / "quickstart.py").read_text()


def test_the_wheel_holds_the_licence_and_no_torch_requirement(tmp_path):
    pytest.importorskip("setuptools")
    pytest.importorskip("wheel")
    import shutil
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                           "--no-build-isolation", "-q", str(source), "-w", str(tmp_path / "w")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    wheel, = (tmp_path / "w").glob("moekit-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        licence = next(n for n in zf.namelist() if n.endswith("LICENSE"))
        assert "Apache License" in zf.read(licence).decode()
        metadata = zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")))
    requires = [line for line in metadata.decode().splitlines() if line.startswith("Requires-Dist")]
    plain = [r for r in requires if "extra ==" not in r]
    assert plain and not any("torch" in r or "matplotlib" in r for r in plain)
    assert any(r.startswith("Requires-Dist: torch") and 'extra == "torch"' in r for r in requires)
