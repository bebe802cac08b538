"""The tour of moekit: statistical MoE on tabular data, then a sparse MoE language model.

    moekit demo                      # about a minute on 2 CPU cores; writes ./moekit-demo/
    moekit demo --output /tmp/tour   # somewhere else
    moekit demo --quick              # a smoke run in well under a minute

1. Statistical MoE (EM, scikit-learn style): two regimes on a line, the gate's regions on a
   2-D problem, and the health table (scikit-learn's diabetes data) with the number of experts
   chosen by BIC and held-out error beside ordinary least squares.
2. Sparse MoE: a small transformer language model with MoE MLPs trained on the bundled King
   James Bible text beside its dense twin (same active parameters), with the expert load over
   training and which expert each kind of character goes to.
3. A self-contained HTML report (and Markdown) with the plots and tables, in the output folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from moekit.cli.errors import CLIError

HELP = "tour of moekit: fit a statistical MoE, train an MoE language model, write a report"
NEEDS = ("torch", "safetensors", "matplotlib")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", default="moekit-demo", metavar="DIR",
                        help="folder for the report, plots and runs (default: ./moekit-demo)")
    parser.add_argument("--steps", type=int, default=None, metavar="N",
                        help="training steps of each language model (default: 600; 12 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke run (well under a minute)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the language models train (default: auto = cuda if available)")
    parser.add_argument("--force", action="store_true",
                        help="reuse an output folder that already holds a demo (its runs are replaced)")


def check_device(device: str) -> None:
    """Refuse ``--device cuda`` up front on a machine where torch sees no CUDA GPU."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA (a CPU build)"
        raise CLIError(f"--device cuda: torch {torch.__version__} sees no CUDA GPU on this "
                       f"machine (built with {build}); use --device cpu or --device auto")


def run(args: argparse.Namespace) -> int:
    steps = args.steps if args.steps is not None else (12 if args.quick else 600)
    if steps < 1:
        raise CLIError(f"--steps={steps} must be >= 1")
    check_device(args.device)
    out = Path(args.output).resolve()
    if (out / "lm").exists():
        if not args.force:
            raise CLIError(f"{out} already holds a demo run; pass --force to replace it or "
                           "--output DIR for a new folder")
        import shutil

        shutil.rmtree(out / "lm")
    out.mkdir(parents=True, exist_ok=True)
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    started = time.perf_counter()
    print(f"moekit demo: writing to {out}", flush=True)

    sections = [_statistical_part(plots, args.seed, args.quick)]
    sections.append(_language_model_part(out, plots, steps, args))

    from moekit.viz import Section, write_report

    overview = Section(
        title="What this demo did",
        text=(f"Ran in {time.perf_counter() - started:.0f} s. Part 1 fits statistical mixtures of "
              "experts by EM; part 2 trains a sparse MoE language model beside its dense twin. "
              "Re-run with `moekit demo`; train your own with `moekit train CONFIG` "
              "(examples/configs) and `moekit fit data.csv --target COLUMN`."),
    )
    paths = write_report(out, "moekit demo", [overview, *sections], fmt="both")
    print(f"moekit demo: report written to {paths[0]}", flush=True)
    return 0


# --- part 1: statistical mixtures of experts ------------------------------------------------------

def _statistical_part(plots: Path, seed: int, quick: bool) -> Any:
    import numpy as np
    from sklearn.linear_model import LinearRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from moekit.data.synthetic import make_piecewise_1d, make_piecewise_regression
    from moekit.data.tabular import load_health_table
    from moekit.estimators import MixtureOfExpertsRegressor, select_n_experts
    from moekit.viz import Section, Table, plot_estimator_fit, plot_gate_regions

    n_init = 2 if quick else 5
    print("[1/2] statistical MoE: two regimes on a line", flush=True)
    line = make_piecewise_1d(n_samples=300, seed=seed)
    m1 = MixtureOfExpertsRegressor(n_experts=2, n_init=n_init, random_state=seed).fit(line.X, line.y)
    grid = np.linspace(line.X.min(), line.X.max(), 200)[:, None]
    dist = m1.predict_distribution(grid)
    lower, upper = m1.predict_interval(grid, alpha=0.1)
    fit_png = plot_estimator_fit(line.X[:, 0], line.y, plots / "estimator_fit.png", x_grid=grid[:, 0],
                                 mean=m1.predict(grid), lower=lower, upper=upper,
                                 expert_means=dist.means, gate_proba=dist.weights,
                                 interval_label="90% predictive interval",
                                 title="Two experts and their gate on 1-D data")

    print("[1/2] statistical MoE: gate regions on a 2-D problem", flush=True)
    plane = make_piecewise_regression(n_samples=400 if quick else 800, n_regions=3, seed=seed)
    m2 = MixtureOfExpertsRegressor(n_experts=3, n_init=n_init, random_state=seed).fit(plane.X, plane.y)
    regions_png = plot_gate_regions(m2, plane.X, plane.region, plots / "gate_regions.png",
                                    title="Where the gate sends each input (true regions as colours)")

    print("[1/2] statistical MoE: the health table (diabetes progression)", flush=True)
    table = load_health_table()
    X_tr, X_te, y_tr, y_te = train_test_split(table.X, table.y, test_size=0.25, random_state=seed)
    scaler = StandardScaler().fit(X_tr)
    Z_tr, Z_te = scaler.transform(X_tr), scaler.transform(X_te)
    template = MixtureOfExpertsRegressor(n_init=n_init, random_state=seed, gate_alpha=1.0)
    selection = select_n_experts(Z_tr, y_tr, range(1, 3 if quick else 4), criterion="bic",
                                 estimator=template)
    best = selection.best_estimator
    ols = make_pipeline(StandardScaler(), LinearRegression()).fit(X_tr, y_tr)
    rmse_moe = float(np.sqrt(np.mean((best.predict(Z_te) - y_te) ** 2)))
    rmse_ols = float(np.sqrt(np.mean((ols.predict(X_te) - y_te) ** 2)))
    lo, hi = best.predict_interval(Z_te, alpha=0.1)
    coverage = float(np.mean((y_te >= lo) & (y_te <= hi)))
    plural = "s" if best.n_experts_ != 1 else ""
    bic_rows = [{"experts": k, "BIC": v} for k, v in sorted(selection.scores.items())]
    result_rows = [
        {"model": f"MoE, {best.n_experts_} expert{plural} (BIC's choice)", "held-out RMSE": rmse_moe,
         "90% interval coverage": coverage},
        {"model": "ordinary least squares", "held-out RMSE": rmse_ols, "90% interval coverage": None},
    ]
    summary = best.summary(feature_names=list(table.feature_names))
    print(summary, flush=True)
    return Section(
        title="Part 1: statistical mixtures of experts (EM)",
        text=("A softmax gate decides which linear expert explains each row. On the line, two "
              "experts split the input at the regime change and the predictive interval widens "
              "where the gate is unsure. On the plane, the gate's regions match the true ones. "
              f"On the health table ({len(table.y)} patients, {len(table.feature_names)} features, "
              "target: disease progression after one year) BIC chooses the number of experts; "
              "the summary of its choice, with standard errors, follows."),
        preformatted=summary,
        tables=[Table(rows=bic_rows, caption="BIC by number of experts (health table, lower is better)"),
                Table(rows=result_rows, caption=f"Held-out error on {len(y_te)} patients")],
        images=[fit_png, regions_png],
    )


# --- part 2: a sparse MoE language model and its dense twin --------------------------------------

def _language_model_part(out: Path, plots: Path, steps: int, args: argparse.Namespace) -> Any:
    import torch

    from moekit import runs
    from moekit.layers import MoELayer
    from moekit.models import TransformerLM
    from moekit.train.batches import TokenBatches
    from moekit.train.experiment import load_data, parse_experiment, run_experiment
    from moekit.viz import (
        CHARACTER_KINDS,
        Section,
        Table,
        character_kinds,
        count_routing_by_kind,
        plot_expert_load,
        plot_routing_heatmap,
        plot_training_curves,
    )

    quick = args.quick
    raw = {
        "model": {"kind": "lm", "router": "topk", "num_experts": 4, "top_k": 2,
                  "d_model": 32 if quick else 64, "n_layers": 1 if quick else 2, "n_heads": 4,
                  "d_ff": 32 if quick else 64, "block_size": 32 if quick else 64,
                  "dense_baseline": True},
        "data": {"dataset": "kjv", "max_chars": 20_000 if quick else "none"},
        "train": {"steps": steps, "batch_size": 8 if quick else 32, "lr": 3e-3,
                  "warmup_steps": max(1, steps // 10), "eval_every": max(1, steps // 3),
                  "eval_batches": 2 if quick else 4, "checkpoint_every": steps,
                  "log_every": max(1, steps // 10), "seed": args.seed, "device": args.device,
                  "output_dir": str(out / "lm")},
    }
    spec = parse_experiment(raw, source="moekit demo")
    data = load_data(spec)
    print(f"[2/2] sparse MoE language model vs its dense twin, {steps} steps each", flush=True)
    # The demo's models are small: on a CPU one thread runs them fastest, and more threads spin
    # against each other (and anything else on the machine) for no gain.
    threads = torch.get_num_threads()
    if spec.train.device != "cuda":
        torch.set_num_threads(1)
    try:
        results = run_experiment(spec, data=data)
    finally:
        torch.set_num_threads(threads)

    histories = {name: runs.read_metrics(out / "lm" / name / runs.METRICS_FILE) for name in results}
    curves_png = plot_training_curves(histories, plots / "lm_curves.png",
                                      title="Language model: MoE vs dense twin (same active parameters)")
    train_loads = [r for r in histories["moe"] if r.get("split") == "train" and r.get("expert_load")]
    images = [curves_png]
    if train_loads:
        images.append(plot_expert_load([r["expert_load"] for r in train_loads],
                                       plots / "lm_expert_load.png",
                                       steps=[r["step"] for r in train_loads],
                                       title="Expert load during training (mean over MoE layers)"))

    # Which expert each kind of character goes to, on held-out text, in the trained model.
    model = results["moe"].model
    if not isinstance(model, TransformerLM) or not isinstance(data.val, TokenBatches):
        raise CLIError("the language model run returned no model")  # not reached: train() sets it
    layer = next(m for m in model.modules() if isinstance(m, MoELayer))
    block = model.config.block_size
    ids = data.val.tokens[: (min(4096, len(data.val.tokens)) // block) * block]
    model.eval()
    with torch.no_grad():
        model(ids.view(-1, block).to(next(model.parameters()).device))
    if layer.stats is None:
        raise CLIError("the MoE layer recorded no routing")  # not reached: forward sets it
    kinds = character_kinds(data.tokenizer.decode(ids.tolist()))
    counts = count_routing_by_kind(layer.stats.indices.cpu(), kinds,
                                   n_kinds=len(CHARACTER_KINDS), n_experts=layer.num_experts)
    seen = counts.sum(axis=1) > 0
    images.append(plot_routing_heatmap(counts[seen], [k for k, s in zip(CHARACTER_KINDS, seen) if s],
                                       plots / "lm_routing.png",
                                       title="Which expert each kind of character goes to "
                                             "(first MoE layer, held-out text)"))
    rows = [{"model": name, "steps": r.step, "final val loss": r.final_val_loss,
             "train time s": r.elapsed_s} for name, r in results.items()]
    return Section(
        title="Part 2: a sparse MoE language model",
        text=("A character-level transformer whose MLPs are MoE layers (4 experts, top-2) and its "
              "dense twin, whose MLP has the hidden size of the 2 active experts, trained on the "
              "bundled King James Bible text with the same data order and optimiser."),
        tables=[Table(rows=rows, caption="Validation loss (nats per character) at the end")],
        images=images,
    )
