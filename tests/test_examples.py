"""Every script in examples/ runs (with small settings) and prints what its docstring promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CASES = {
    "moe_layer_regression.py": (["--steps", "30"], ["moe   validation MSE", "expert load"]),
    "fit_health_table.py": (["--max-experts", "2", "--n-init", "1"], ["BIC"]),
    "finetune_transformers.py": (["--steps", "3", "--batch", "4", "--seq", "32"],
                                 ["patched 2 block(s)", "routing after fine-tuning",
                                  "reloaded in plain transformers"]),
}


def test_every_example_is_covered():
    assert {p.name for p in EXAMPLES.glob("*.py")} == set(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name):
    args, expected = CASES[name]
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for text in expected:
        assert text in done.stdout
