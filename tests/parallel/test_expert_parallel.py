"""Expert parallelism on gloo (CPU) against the single-process layer: 2 and 4 processes.

One spawned run per world size executes every case (conftest.py; process groups are costly to
start on 2 cores); each case reports "ok" or its traceback, and the tests below assert per case. What is
compared, and the loss convention, is in ep_cases.py.
"""

from __future__ import annotations

import pytest
from ep_cases import ROUTERS
from ep_harness import run_ranks

pytestmark = pytest.mark.distributed

TWO_RANK_CASES = [f"{r} uneven" for r in ROUTERS] + [f"{r} idle rank" for r in ROUTERS] + [
    "topk capacity per source rank", "switch capacity per source rank",
    "loop backend, shared expert", "float32", "steps topk", "steps sigmoid_bias",
    "all_to_all adjoint", "faults", "state dicts", "FSDP2 for the replicated parameters",
    "dispatch and combine equal the call", "triton backend (sorted fallback off GPU)"]
FOUR_RANK_CASES = ["topk 4 ranks", "sigmoid_bias 4 ranks", "noisy_topk 4 ranks",
                   "2-D mesh dp x ep", "2-D mesh sigmoid_bias", "all_to_all adjoint"]


@pytest.fixture(scope="module")
def two(two_rank_run) -> list[dict[str, str]]:
    return [r["cases"] for r in two_rank_run]


@pytest.fixture(scope="module")
def four(four_rank_run) -> list[dict[str, str]]:
    return [r["cases"] for r in four_rank_run]


def _check(results: list[dict[str, str]], case: str) -> None:
    for rank, cases in enumerate(results):
        assert case in cases, f"case {case!r} did not run (known: {sorted(cases)})"
        if cases[case].startswith("skipped: "):
            pytest.skip(cases[case].removeprefix("skipped: "))
        assert cases[case] == "ok", f"rank {rank}, case {case!r}:\n{cases[case]}"


@pytest.mark.parametrize("case", TWO_RANK_CASES)
def test_two_ranks_match_one_process(two, case):
    _check(two, case)


@pytest.mark.parametrize("case", FOUR_RANK_CASES)
def test_four_ranks_match_one_process(four, case):
    _check(four, case)


def test_every_case_is_asserted(two, four):
    assert sorted(two[0]) == sorted(TWO_RANK_CASES)
    assert sorted(four[0]) == sorted(FOUR_RANK_CASES)


def test_a_rank_dying_mid_step_stops_the_others_with_a_message():
    from ep_cases import dead_rank

    timeout_s = 20.0
    results = run_ranks(dead_rank, 2, collective_timeout_s=timeout_s, deadline_s=90,
                        allow_exit=frozenset({1}))
    survivor = results[0]
    assert "expert parallelism: count exchange (all_reduce) failed in MoE layer" in \
        survivor["message"], survivor["message"]
    assert "on rank 0 of a group of 2" in survivor["message"]
    assert survivor["seconds"] < timeout_s + 10
