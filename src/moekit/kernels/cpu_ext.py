"""The optional C++ per-expert loop of the CPU MoE path (``cpu_moe_ext.cpp``), built on demand.

The CPU fast path (:mod:`moekit.kernels.cpu_moe`) loops over the active experts; in Python that
loop costs ~0.1-0.25 ms of interpreter and dispatcher time per expert per forward+backward, which
is a third of the layer's time at 128 experts. The same loop in C++ (``at::parallel_for`` over
experts, ATen ops inside) removes it. It is compiled with the installed C++ compiler through
``torch.utils.cpp_extension`` (needs a compiler and ninja; ~30 s to a few minutes), only when asked:

- ``python -m moekit.kernels.cpu_ext`` builds it now and prints where it went;
- ``MOEKIT_BUILD_CPU_EXT=1`` in the environment builds it at the first use of the fast path;
- once built, it is found and loaded by every later process (same torch and source).

Builds go under ``$MOEKIT_CACHE_DIR`` (default ``~/.cache/moekit``), in a folder named after the
torch version and a hash of the source, so a new torch or moekit never loads a stale build. Without
it, the Python loop runs (same results); :func:`status` says which, and why.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import sys
from pathlib import Path

import torch

_log = logging.getLogger("moekit.kernels")

SOURCE = Path(__file__).with_name("cpu_moe_ext.cpp")
NAME = "moekit_cpu_ext"
BUILD_ENV = "MOEKIT_BUILD_CPU_EXT"


def build_dir() -> Path:
    """Where the extension of this torch and this source is built and looked for."""
    root = os.environ.get("MOEKIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "moekit")
    digest = hashlib.sha1(SOURCE.read_bytes()).hexdigest()[:12]
    tag = f"torch{torch.__version__}-py{sys.version_info[0]}{sys.version_info[1]}-{digest}"
    return Path(root) / "cpu_ext" / tag.replace("+", "_")


def _registered() -> bool:
    try:
        torch.ops.moekit_cpu.experts_forward  # noqa: B018 (raises if not registered)
    except (AttributeError, RuntimeError):
        return False
    return True


def build(verbose: bool = False) -> str | None:
    """Compile (if needed) and load the extension; None on success, else why it failed."""
    if _registered():
        return None
    from torch.utils import cpp_extension

    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    # ATen's parallel_for is parallel only where _OPENMP is defined: the loop must see OpenMP
    # (it then runs on torch's own OpenMP runtime, already loaded, same soname).
    omp = (["/openmp"] if sys.platform == "win32" else ["-fopenmp"]) \
        if torch.backends.openmp.is_available() else []
    try:
        cpp_extension.load(name=NAME, sources=[str(SOURCE)], extra_cflags=["-O3", *omp],
                           extra_ldflags=omp if sys.platform != "win32" else [],
                           build_directory=str(folder), is_python_module=False, verbose=verbose)
    except (RuntimeError, OSError, ImportError) as err:  # no compiler, no ninja, compile error
        reason = f"building the C++ loop failed: {str(err).strip().splitlines()[-1][:200]}"
        _log.warning("%s; the CPU fast path runs its Python loop", reason)
        return reason
    _loaded.cache_clear()
    return None if _registered() else "the C++ loop was built but its ops are not registered"


@functools.cache
def _loaded() -> str | None:
    if _registered():
        return None
    library = build_dir() / f"{NAME}.so"
    if library.is_file():
        try:
            torch.ops.load_library(str(library))
        except (OSError, RuntimeError) as err:
            return f"loading {library} failed: {str(err).splitlines()[0][:200]}"
        return None if _registered() else f"{library} registers no moekit_cpu ops"
    if os.environ.get(BUILD_ENV) == "1":
        _log.info("building the CPU fast path's C++ loop (%s=1) in %s", BUILD_ENV, build_dir())
        return build()
    return (f"the optional C++ loop is not built (python -m moekit.kernels.cpu_ext, or "
            f"{BUILD_ENV}=1; needs a C++ compiler)")


def status() -> str | None:
    """None if the C++ loop is loaded (loading a previous build), else why the Python loop runs."""
    reason = _loaded()
    if reason is not None:
        _log_once(reason)
    return reason


@functools.cache
def _log_once(reason: str) -> None:
    _log.info("CPU fast path: %s", reason)


if __name__ == "__main__":
    failure = build(verbose="-v" in sys.argv)
    print(failure or f"moekit CPU C++ loop built and loaded from {build_dir()}")
    sys.exit(1 if failure else 0)
