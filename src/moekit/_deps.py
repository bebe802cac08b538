"""Optional dependencies: which extra brings each one, and the error that says how to install it.

A plain ``pip install moekit`` holds the statistical side (NumPy, SciPy, scikit-learn). The
deep-learning side needs the ``torch`` extra, plots alone the ``plots`` extra. A subpackage or
command that needs one of them calls :func:`require` first, so a missing package is one sentence
with the command that installs it, not a ``ModuleNotFoundError`` from deep inside an import.
Torch-free: importing this module imports nothing optional.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

#: import name -> (pip name, the moekit extra that brings it)
OPTIONAL: dict[str, tuple[str, str]] = {
    "torch": ("torch", "torch"),
    "safetensors": ("safetensors", "torch"),
    "yaml": ("pyyaml", "torch"),
    "tomli": ("tomli", "torch"),
    "matplotlib": ("matplotlib", "plots"),
    "transformers": ("transformers", "hf"),
    "triton": ("triton", "triton"),
}
CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message gives the command that installs it."""


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install, or a finder that refuses the name
        return False


def missing(modules: Iterable[str]) -> list[str]:
    """The modules of ``modules`` that are not installed, in order."""
    return [m for m in modules if not is_installed(m)]


def install_hint(modules: Iterable[str]) -> str:
    """The pip command that installs ``modules`` through moekit's extras (one extra if one does)."""
    extras = sorted({OPTIONAL[m][1] if m in OPTIONAL else "torch" for m in modules})
    if extras == ["plots", "torch"]:  # the torch extra includes matplotlib
        extras = ["torch"]
    command = f"pip install 'moekit[{','.join(extras)}]'"
    if "torch" in modules:
        command += (f" (on a machine without an NVIDIA GPU, first `{CPU_TORCH}` for the much "
                    "smaller CPU build)")
    return command


def require(*modules: str, feature: str) -> None:
    """Raise :class:`MissingDependencyError` naming ``feature`` unless every module is installed.

    Examples
    --------
    >>> require("numpy", feature="moekit.estimators")  # installed: nothing happens
    """
    absent = missing(modules)
    if not absent:
        return
    pip_names = [OPTIONAL.get(m, (m, ""))[0] for m in absent]
    names = " and ".join([", ".join(pip_names[:-1]), pip_names[-1]] if len(pip_names) > 1
                         else pip_names)
    verb = "is" if len(absent) == 1 else "are"
    raise MissingDependencyError(f"{feature} needs {names}, which {verb} not installed: "
                                 f"{install_hint(absent)}")
