"""Run a function on N local processes joined by a gloo process group (CPU), with a deadline.

``run_ranks(fn, n, *args)`` starts N spawned processes; process r calls ``fn(rank, n, *args)``
after ``init_process_group("gloo")`` (a FileStore in a temporary folder: no ports to pick) and
writes what ``fn`` returns (JSON) to a file that the parent reads. A process that raises, exits
with an error or outlives the deadline fails the calling test with its traceback; every process
is ended before returning.
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _child(fn: Callable[..., Any], rank: int, n: int, args: tuple[Any, ...], folder: str,
           timeout_s: float) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    out = Path(folder) / f"rank{rank}.json"
    try:
        dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank,
                                world_size=n, timeout=datetime.timedelta(seconds=timeout_s))
        result = fn(rank, n, *args)
        out.write_text(json.dumps({"ok": True, "result": result}))
    except BaseException:
        out.write_text(json.dumps({"ok": False, "error": traceback.format_exc()}))
        raise SystemExit(1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], n: int, *args: Any, deadline_s: float = 150.0,
              collective_timeout_s: float = 60.0, allow_exit: frozenset[int] = frozenset(),
              ) -> list[Any]:
    """``[fn(0, n, *args), ..., fn(n-1, n, *args)]`` from N processes (see the module docstring).

    ``allow_exit``: ranks allowed to end without a result (a test that kills a rank on purpose);
    their entry is None.
    """
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="moekit-ep-") as folder:
        procs = [ctx.Process(target=_child, args=(fn, r, n, args, folder, collective_timeout_s),
                             daemon=True) for r in range(n)]
        for p in procs:
            p.start()
        end = time.monotonic() + deadline_s
        for p in procs:
            p.join(max(0.0, end - time.monotonic()))
        late = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        results: list[Any] = []
        errors: list[str] = []
        for r in range(n):
            path = Path(folder) / f"rank{r}.json"
            if not path.exists():
                if r in allow_exit:
                    results.append(None)
                    continue
                errors.append(f"rank {r}: no result (exit code {procs[r].exitcode})")
                results.append(None)
                continue
            got = json.loads(path.read_text())
            if got["ok"]:
                results.append(got["result"])
            else:
                errors.append(f"rank {r} raised:\n{got['error']}")
                results.append(None)
        if late:
            errors.insert(0, f"ranks {late} still running after {deadline_s:.0f} s (a hang)")
        if errors:
            raise AssertionError("\n".join(errors))
        return results
