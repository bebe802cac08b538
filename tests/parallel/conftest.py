"""One spawned run per world size for the whole test session: the layer cases of ep_cases.py
and the training runs of train_cases.py share it (starting process groups is what costs time on
2 cores). The single-process reference runs are made first, in the test process.

Under pytest-xdist the tests of this folder may land on several workers; the runs are made once
(by the first worker to take a file lock) and the others read the stored results.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from ep_cases import four_ranks_and_training, two_ranks_and_training
from ep_harness import run_ranks
from train_cases import run

RUNS = ("one", "one_to_6", "two", "one_to_two", "two_to_four")


def _make_runs(root: Path) -> dict[str, Any]:
    paths = {name: root / name for name in RUNS}
    run(str(paths["one"]), 4)                              # one process, 4 steps
    shutil.copytree(paths["one"], paths["one_to_6"])
    shutil.copytree(paths["one"], paths["one_to_two"])
    run(str(paths["one_to_6"]), 6, resume=True)            # ... and 2 more steps
    two = run_ranks(two_ranks_and_training, 2, [
        (str(paths["two"]), 4, False),                     # 2 ranks from scratch
        (str(paths["one_to_two"]), 6, True),               # a one-process run resumed at 2
    ], deadline_s=300)
    shutil.copytree(paths["two"], paths["two_to_four"])
    four = run_ranks(four_ranks_and_training, 4, [
        (str(paths["two_to_four"]), 6, True),              # a 2-rank run resumed at 4
    ], deadline_s=300)
    return {"two": two, "four": four, "dirs": {k: str(v) for k, v in paths.items()}}


@pytest.fixture(scope="session")
def ep_session(tmp_path_factory) -> dict[str, Any]:
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    folder = root / "moekit-expert-parallel"
    done = root / "moekit-expert-parallel.json"
    with open(root / "moekit-expert-parallel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.exists():
            return json.loads(done.read_text())
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        results = _make_runs(folder)
        done.write_text(json.dumps(results))
        return results


@pytest.fixture(scope="session")
def train_dirs(ep_session) -> dict[str, Path]:
    return {k: Path(v) for k, v in ep_session["dirs"].items()}


@pytest.fixture(scope="session")
def two_rank_run(ep_session) -> list[dict[str, Any]]:
    return ep_session["two"]


@pytest.fixture(scope="session")
def four_rank_run(ep_session) -> list[dict[str, Any]]:
    return ep_session["four"]
