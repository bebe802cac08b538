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
    "showcases/health.py": (["--seeds", "2", "--n-init", "1"],
                            ["held-out log-likelihood per patient", "what the gate learned",
                             "std err"]),
    "showcases/finance.py": (["--seeds", "1", "--n-init", "1", "--max-experts", "2"],
                             ["GARCH-t", "P(turbulent)", "2008"]),
    "showcases/speech.py": (["--seeds", "1", "--steps", "100", "--variants", "5"],
                            ["digit accuracy on unheard voices", "where the router sends each "
                             "language", "of the language's entropy"]),
    "showcases/vision.py": (["--per-source", "300", "--steps", "50"],
                            ["test accuracy", "dense twin of the ViT",
                             "where the MLP-MoE's first router sends each source"]),
    "showcases/language.py": (["--steps", "3", "--seeds", "1", "--verses", "20"],
                              ["validation nats per byte", "routing by language, layer 4",
                               "I(language; expert)"]),
}


def test_every_example_is_covered():
    assert {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*.py")} == set(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs(name):
    args, expected = CASES[name]
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for text in expected:
        assert text in done.stdout
