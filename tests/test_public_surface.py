"""Freeze the public surface: growth of the API or of the CLI's flags must be deliberate.

When you add to the surface on purpose, update the snapshots below (``python
tests/test_public_surface.py`` prints the current ones).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys

import pytest

import moekit
from moekit.cli.main import build_parser

MOEKIT_ALL = ["__version__", "data", "estimators", "integrations", "kernels", "layers", "models",
              "parallel", "showcases", "train", "viz"]

CLI_FLAGS_SNAPSHOT: dict[str, list[str]] = {
    "demo": ["--device", "--force", "--help", "--output", "--quick", "--seed", "--steps", "-h", "-o"],
    "fit": ["--classifier", "--criterion", "--decimal", "--delimiter", "--drop", "--dropna", "--encoding", "--expert", "--expert-alpha", "--experts", "--gate-alpha", "--help", "--hierarchical", "--max-experts", "--max-iter", "--n-init", "--no-target-check", "--output", "--quiet", "--se", "--seed", "--standardize", "--target", "--tol", "--verbose", "-h", "-k", "-o", "-q", "-v", "csv"],
    "info": ["--help", "--json", "-h"],
    "predict": ["--alpha", "--decimal", "--delimiter", "--dropna", "--encoding", "--help", "--keep", "--output", "-h", "-o", "csv", "model"],
    "report": ["--format", "--help", "--output", "-h", "-o", "run_dir"],
    "showcase": ["--device", "--eval-text", "--help", "--output", "--quick", "--seeds", "-h", "-o", "name"],
    "train": ["--data-parallel", "--device", "--help", "--nproc", "--output", "--resume", "--steps", "-h", "config"],
}

# capacity and capacity_keep stay public: the pure functions of the capacity rule
# (C = ceil(cf * T * K / E), which slots an over-full expert keeps), what a dispatcher of one's
# own (expert parallelism, a fused kernel) needs to apply the same rule.
LAYERS_ALL = ["CommStats", "DispatchConfig", "ExpertsConfig", "FeedForward", "GroupedExperts",
              "MoEConfig",
              "MoELayer", "ModuleExperts", "Router", "RouterConfig", "Routing", "RoutingStats",
              "SharedExpertsConfig", "SoftMoE", "SoftMoEConfig", "capacity", "capacity_keep",
              "cv_squared", "importance_load_loss", "register_router_bias_update",
              "router_z_loss", "switch_load_balancing_loss", "total_aux_loss",
              "update_router_biases"]

SUBPACKAGE_ALL: dict[str, list[str]] = {
    # save_model/load_model joined on purpose (issue 11: persistence from Python, S3-15).
    "moekit.estimators": [
        "HierarchicalMixtureOfExpertsRegressor", "MixtureOfExpertsClassifier",
        "MixtureOfExpertsRegressor", "NExpertsSelection", "PredictiveDistribution",
        "load_model", "make_moe_regression", "save_model", "select_n_experts"],
    # DenseMLP went on purpose: layers.FeedForward is the one dense FFN.
    "moekit.models": [
        "AudioClassifier", "AudioClassifierConfig", "ImageClassifier", "ImageClassifierConfig",
        "ParameterCount", "TransformerLM", "TransformerLMConfig", "count_parameters",
        "dense_twin", "dense_twin_config"],
    "moekit.train": [
        "ArrayBatches", "BatchSource", "CheckpointState", "StepEnd", "TokenBatches", "TrainConfig",
        "TrainResult", "build_optimizer", "build_scheduler", "evaluate", "latest_checkpoint",
        "list_checkpoints", "load_checkpoint", "lr_factor", "resolve_device", "resolve_precision",
        "save_checkpoint", "seed_everything", "train"],
    "moekit.viz": [
        "CHARACTER_KINDS", "Section", "Table", "build_report_from_run", "character_kinds",
        "count_routing_by_kind", "plot_estimator_fit", "plot_expert_load", "plot_gate_regions",
        "plot_routing_heatmap", "plot_training_curves", "write_report"],
    # kernels.BACKENDS went on purpose: layers.dispatch.BACKEND_NAMES is the one list of names.
    "moekit.kernels": ["available_backends", "choose_backend", "cpu_backend_reason", "fused_moe_cpu",
                       "grouped_mm", "grouped_mm_status"],
    "moekit.integrations.transformers": [
        "PatchReport", "RoutingReport", "SUPPORTED_BLOCKS", "TransformersMoE",
        "copy_experts_from_transformers", "copy_experts_to_transformers",
        "copy_mlp_from_transformers", "copy_mlp_to_transformers", "from_transformers",
        "layer_kwargs_from_transformers", "patch", "register", "routing_report",
        "to_transformers", "unpatch"],
    "moekit.parallel": [
        "AllToAllDispatcher", "CollectiveError", "ExpertParallelMetadata", "ExpertParallelPlan",
        "apply_expert_parallel", "full_optimizer_state_dict", "full_state_dict",
        "load_full_optimizer_state_dict", "load_full_state_dict", "plan_routes"],
    "moekit.runs": [
        "CHECKPOINTS_DIR", "CONFIG_FILE", "METRICS_FILE", "RESULTS_FILE", "ROUTING_FILE",
        "TOKENIZER_FILE",
        "read_json", "read_metrics"],
}


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


@pytest.mark.parametrize("module", sorted(SUBPACKAGE_ALL))
def test_subpackage_all(module):
    if module == "moekit.integrations.transformers":
        pytest.importorskip("transformers")
    assert sorted(importlib.import_module(module).__all__) == sorted(SUBPACKAGE_ALL[module])


def test_cli_flags_frozen():
    assert cli_flags() == CLI_FLAGS_SNAPSHOT


def test_import_moekit_and_estimators_do_not_import_torch():
    code = ("import sys, moekit, moekit.estimators; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.call([sys.executable, "-c", code]) == 0


if __name__ == "__main__":
    print(json.dumps(cli_flags(), indent=4, sort_keys=True))
