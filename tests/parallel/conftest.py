"""One spawned run per world size for the whole session: the layer cases of ep_cases.py and the
training runs of train_cases.py share it (starting process groups is what costs time on 2
cores). The single-process reference runs are made here first, in the test process."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from ep_cases import four_ranks_and_training, two_ranks_and_training
from ep_harness import run_ranks
from train_cases import run


@pytest.fixture(scope="session")
def train_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ep-train")
    paths = {name: root / name for name in ("one", "one_to_6", "two", "one_to_two", "two_to_four")}
    run(str(paths["one"]), 4)                              # one process, 4 steps
    shutil.copytree(paths["one"], paths["one_to_6"])
    shutil.copytree(paths["one"], paths["one_to_two"])
    run(str(paths["one_to_6"]), 6, resume=True)            # ... and 2 more steps
    return paths


@pytest.fixture(scope="session")
def two_rank_run(train_dirs) -> list[dict[str, Any]]:
    jobs = [(str(train_dirs["two"]), 4, False),            # 2 ranks from scratch
            (str(train_dirs["one_to_two"]), 6, True)]      # a one-process run resumed at 2
    return run_ranks(two_ranks_and_training, 2, jobs, deadline_s=300)


@pytest.fixture(scope="session")
def four_rank_run(train_dirs, two_rank_run) -> list[dict[str, Any]]:
    shutil.copytree(train_dirs["two"], train_dirs["two_to_four"])
    jobs = [(str(train_dirs["two_to_four"]), 6, True)]    # a 2-rank run resumed at 4
    return run_ranks(four_ranks_and_training, 4, jobs, deadline_s=300)
