"""Freeze the public surface: growth of the API or of the CLI's flags must be deliberate.

When you add to the surface on purpose, update the snapshots below (``python
tests/test_public_surface.py`` prints the current ones).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import moekit
from moekit.cli.main import build_parser

MOEKIT_ALL = ["__version__", "data", "estimators", "integrations", "kernels", "layers", "models",
              "showcases", "train", "viz"]

CLI_FLAGS_SNAPSHOT: dict[str, list[str]] = {
    "bench": ["--balanced", "--device", "--dtype", "--help", "--json", "--no-memory", "--quick", "--repeats", "--scale", "--seed", "--shapes", "--threads", "--tokens", "--warmup", "-h"],
    "demo": ["--device", "--force", "--help", "--output", "--quick", "--seed", "--steps", "-h", "-o"],
    "fit": ["--classifier", "--criterion", "--decimal", "--delimiter", "--drop", "--dropna", "--encoding", "--expert", "--expert-alpha", "--experts", "--gate-alpha", "--help", "--hierarchical", "--max-experts", "--max-iter", "--n-init", "--no-target-check", "--output", "--quiet", "--se", "--seed", "--standardize", "--target", "--tol", "--verbose", "-h", "-k", "-o", "-q", "-v", "csv"],
    "info": ["--help", "--json", "-h"],
    "predict": ["--alpha", "--decimal", "--delimiter", "--dropna", "--encoding", "--help", "--keep", "--output", "-h", "-o", "csv", "model"],
    "report": ["--format", "--help", "--output", "-h", "-o", "run_dir"],
    "showcase": ["--device", "--eval-text", "--help", "--output", "--quick", "--seeds", "-h", "-o", "name"],
    "train": ["--device", "--help", "--output", "--resume", "--steps", "-h", "config"],
}

LAYERS_ALL = ["DispatchConfig", "ExpertsConfig", "FeedForward", "GroupedExperts", "MoEConfig",
              "MoELayer", "ModuleExperts", "Router", "RouterConfig", "Routing", "RoutingStats",
              "SharedExpertsConfig", "SoftMoE", "capacity", "capacity_keep", "cv_squared",
              "importance_load_loss", "register_router_bias_update", "router_z_loss",
              "switch_load_balancing_loss", "total_aux_loss", "update_router_biases"]


def cli_flags() -> dict[str, list[str]]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    flags: dict[str, list[str]] = {}
    for name, p in sub.choices.items():
        opts = []
        for action in p._actions:
            opts.extend(action.option_strings or [action.dest])
        flags[name] = sorted(opts)
    return flags


def test_moekit_all():
    assert sorted(moekit.__all__) == sorted(MOEKIT_ALL)


def test_layers_all():
    import moekit.layers

    assert sorted(moekit.layers.__all__) == sorted(LAYERS_ALL)


def test_cli_flags_frozen():
    assert cli_flags() == CLI_FLAGS_SNAPSHOT


def test_import_moekit_and_estimators_do_not_import_torch():
    code = ("import sys, moekit, moekit.estimators; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.call([sys.executable, "-c", code]) == 0


if __name__ == "__main__":
    print(json.dumps(cli_flags(), indent=4, sort_keys=True))
