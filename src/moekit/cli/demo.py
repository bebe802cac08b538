"""The tour of moekit: statistical MoE on tabular data, then a sparse MoE language model.

    moekit demo                      # a few minutes on 2 CPU cores; writes ./moekit-demo/
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
import json
import time
from pathlib import Path
from typing import Any

from moekit.cli.errors import CLIError

HELP = "tour of moekit: fit a statistical MoE, train an MoE language model, write a report"


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


def run(args: argparse.Namespace) -> int:
    steps = args.steps if args.steps is not None else (12 if args.quick else 600)
    if steps < 1:
        raise CLIError(f"--steps={steps} must be >= 1")
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
    from moekit.train.experiment import parse_experiment, run_experiment

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
    print(f"[2/2] sparse MoE language model vs its dense twin, {steps} steps each", flush=True)
    results = run_experiment(spec)
    from moekit.viz import (
        Section,
        Table,
        plot_expert_load,
        plot_routing_heatmap,
        plot_training_curves,
    )

    histories = {name: _read_metrics(out / "lm" / name / "metrics.jsonl") for name in results}
    curves_png = plot_training_curves(histories, plots / "lm_curves.png",
                                      title="Language model: MoE vs dense twin (same active parameters)")
    loads = [r["expert_load"] for r in histories["moe"]
             if r.get("split") == "train" and r.get("expert_load")]
    images = [curves_png]
    if loads:
        images.append(plot_expert_load(loads, plots / "lm_expert_load.png",
                                       steps=[r["step"] for r in histories["moe"]
                                              if r.get("split") == "train" and r.get("expert_load")],
                                       title="Expert load during training (first MoE layer)"))
    counts, kinds = _routing_by_character_kind(spec, out / "lm" / "moe")
    images.append(plot_routing_heatmap(counts, kinds, plots / "lm_routing.png",
                                       title="Which expert each kind of character goes to"))
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


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            records.append(json.loads(line))
    return records


def _routing_by_character_kind(spec: Any, run_dir: Path) -> tuple[Any, list[str]]:
    """Count, for each kind of input character, the expert slots of the first MoE layer."""
    import numpy as np
    import torch

    from moekit.data.text import CharTokenizer, load_kjv
    from moekit.layers import MoELayer
    from moekit.train.checkpoint import latest_checkpoint, load_checkpoint
    from moekit.train.experiment import build_models, prepare_data

    data = prepare_data(spec)
    model = build_models(spec, data.derived)["moe"]()
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise CLIError(f"no checkpoint was written under {run_dir}")
    load_checkpoint(ckpt, model=model, restore_rng=False)
    model.eval()
    tokenizer = CharTokenizer.load(run_dir / "tokenizer.json")
    text = load_kjv(max_chars=20_000)[-4_000:]
    text = "".join(ch for ch in text if ch in tokenizer.vocab)
    kinds = ["vowel", "consonant", "capital", "space", "punctuation", "other"]

    def kind_of(ch: str) -> int:
        if ch in "aeiou":
            return 0
        if ch.islower():
            return 1
        if ch.isupper():
            return 2
        if ch.isspace():
            return 3
        return 4 if ch in ".,;:!?'-()" else 5

    block = spec.model.get("block_size", 64)
    ids = torch.from_numpy(tokenizer.encode(text)).long()
    n = (len(ids) // block) * block
    layer = next(m for m in model.modules() if isinstance(m, MoELayer))
    counts = np.zeros((len(kinds), layer.num_experts))
    with torch.no_grad():
        model(ids[:n].view(-1, block))
    assert layer.stats is not None
    chosen = layer.stats.indices.cpu().numpy()  # (T, K), -1 = dropped
    char_kind = np.array([kind_of(ch) for ch in text[:n]])
    for k in range(chosen.shape[1]):
        valid = chosen[:, k] >= 0
        np.add.at(counts, (char_kind[valid], chosen[valid, k]), 1)
    keep = counts.sum(axis=1) > 0
    return counts[keep], [name for name, kept in zip(kinds, keep) if kept]
