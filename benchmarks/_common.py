"""Helpers shared by the scripts in benchmarks/: interleaved timing with a contention guard, peak
memory, the environment record, tables, JSON.

Timing on a shared machine (``interleave``): the variants run in rounds, A B C A B C ..., so that
drift hits them all alike; each round reads the machine's busy time from ``/proc/stat``, subtracts
this process's own CPU time, and is thrown away (after a short sleep) when other processes used
more than ``max_other`` of the machine during it. After ``max_tries`` rounds it stops whatever
happened and says so: the least contended rounds are kept and the record is marked contended.
Each variant's wall time and CPU time (``time.process_time``: all of this process's threads) are
kept per round; ratios are taken per round and reported as median and range over rounds.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["Timing", "busy_seconds", "cpu_peak_reason", "environment", "format_table",
           "interleave", "peak_mib", "ratio_stats", "synchronize", "time_ms", "write_json"]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int,
            setup: Callable[[], object] | None = None, clock: str = "wall") -> float:
    """Median time of ``fn()`` in milliseconds; ``setup()`` runs untimed before each call.

    CUDA: CUDA events after a synchronize; CPU: ``perf_counter`` (``clock="wall"``) or this
    process's CPU time (``clock="process"``). (No contention guard: see :func:`interleave`.)
    """
    tick = time.process_time if clock == "process" else time.perf_counter
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    synchronize(device)
    times: list[float] = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = tick()
            fn()
            times.append((tick() - t0) * 1e3)
    return statistics.median(times)


def busy_seconds() -> float | None:
    """Seconds all CPUs of the machine spent busy since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # minus idle and iowait


@dataclass
class Timing:
    """Per-variant times of the kept rounds, and how the rounds went."""

    wall_ms: dict[str, list[float]]
    cpu_ms: dict[str, list[float]]
    other_load: list[float]  # share of the machine other processes used, per kept round
    tries: int
    contended: bool
    guard: str
    notes: list[str] = field(default_factory=list)

    def median(self, name: str, kind: str = "wall") -> float:
        return statistics.median((self.wall_ms if kind == "wall" else self.cpu_ms)[name])

    def summary(self) -> dict[str, Any]:
        return {"rounds_kept": len(self.other_load), "rounds_tried": self.tries,
                "contended": self.contended, "guard": self.guard,
                "other_load_per_round": [round(x, 3) for x in self.other_load]}


def interleave(fns: dict[str, Callable[[], object]], device: torch.device, *, rounds: int,
               max_tries: int, setup: dict[str, Callable[[], None]] | None = None,
               max_other: float = 0.08, warmup: int = 1) -> Timing:
    """Time each ``fns[name]()`` once per round, interleaved, with the contention guard above.

    ``setup[name]()`` runs untimed before each call (e.g. resetting gradients).
    """
    setup = setup or {}
    for _ in range(warmup):
        for name, fn in fns.items():
            setup.get(name, lambda: None)()
            fn()
    synchronize(device)
    guard_on = busy_seconds() is not None and device.type == "cpu"
    guard = (f"rounds where other processes used > {max_other:.0%} of the machine "
             f"(/proc/stat) are discarded" if guard_on else "no contention guard (no /proc/stat "
             "or not on CPU)")
    kept: list[tuple[float, dict[str, float], dict[str, float]]] = []
    dropped: list[tuple[float, dict[str, float], dict[str, float]]] = []
    tries = 0
    while len(kept) < rounds and tries < max_tries:
        tries += 1
        b0, c0, w0 = busy_seconds(), time.process_time(), time.perf_counter()
        wall: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for name, fn in fns.items():
            setup.get(name, lambda: None)()
            synchronize(device)
            t0, p0 = time.perf_counter(), time.process_time()
            fn()
            synchronize(device)
            wall[name] = (time.perf_counter() - t0) * 1e3
            cpu[name] = (time.process_time() - p0) * 1e3
        other = 0.0
        if guard_on:
            b1 = busy_seconds()
            span = (time.perf_counter() - w0) * (os.cpu_count() or 1)
            if b0 is not None and b1 is not None:
                other = max(0.0, ((b1 - b0) - (time.process_time() - c0)) / max(span, 1e-9))
        if other > max_other:
            dropped.append((other, wall, cpu))
            time.sleep(min(0.5, sum(wall.values()) / 1e3))
            continue
        kept.append((other, wall, cpu))
    passed = len(kept)
    contended = passed < rounds
    notes = []
    if contended:
        dropped.sort(key=lambda r: r[0])
        kept += dropped[: rounds - passed]
        notes.append(f"machine busy: {passed} of {tries} rounds passed the guard (cap "
                     f"{max_tries}); the least contended rounds were kept (other processes used "
                     f"up to {max(r[0] for r in kept):.0%} of the machine in them)")
    return Timing(wall_ms={n: [r[1][n] for r in kept] for n in fns},
                  cpu_ms={n: [r[2][n] for r in kept] for n in fns},
                  other_load=[r[0] for r in kept], tries=tries, contended=contended, guard=guard,
                  notes=notes)


def ratio_stats(num: list[float], den: list[float]) -> dict[str, float] | None:
    """Median, min and max over rounds of ``num[i] / den[i]`` (None if either is missing)."""
    if not num or not den:
        return None
    r = [a / b for a, b in zip(num, den) if b > 0]
    return {"median": statistics.median(r), "min": min(r), "max": max(r)} if r else None


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def cpu_peak_reason() -> str | None:
    """Why the CPU peak-RSS measurement cannot run here, or None if it can."""
    if not sys.platform.startswith("linux"):
        return f"CPU peak memory needs Linux /proc (this is {sys.platform})"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_kib("VmHWM")
    except OSError as err:
        return f"cannot reset the peak RSS through /proc/self/clear_refs: {err}"
    return None


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of ``fn()`` above what is resident before it, in MiB.

    CUDA: ``max_memory_allocated`` minus ``memory_allocated`` before. CPU: peak RSS (VmHWM, reset
    through ``/proc/self/clear_refs``) minus RSS before; run it in a process started with
    ``MALLOC_MMAP_THRESHOLD_`` small, so freed tensors go back to the OS instead of hiding in the heap.
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before_kib = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    fn()
    return (_proc_status_kib("VmHWM") - before_kib) / 1024


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, machine and the knobs that move CPU timings, for the JSON record."""
    import moekit

    info: dict[str, Any] = {
        "moekit": moekit.__version__, "torch": torch.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_capability": (torch.backends.cpu.get_cpu_capability()
                           if hasattr(torch.backends, "cpu") else None),
        "env": {k: os.environ.get(k) for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                                               "GOMP_SPINCOUNT", "OMP_NUM_THREADS")},
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    info["device_name"] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else _cpu_model() or platform.machine())
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def format_table(title: str, header: list[str], rows: list[list[str]], note: str = "") -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [title, line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    if note:
        out.append(note)
    return "\n".join(out)


def write_json(record: dict[str, Any], path: str) -> None:
    """Write ``record`` as indented JSON to ``path`` (atomically) and say so."""
    from moekit._files import atomic_write_json

    atomic_write_json(path, record, indent=2)
    print(f"wrote {path}")
