"""The health and finance showcases' --quick paths, end to end on the real data, through the CLI.

These check what the showcases claim and that a wrong pipeline would break: the mixture beats
plain linear regression by a wide margin, the gate separates the two procedures, the regimes
follow realised volatility out of sample; not the exact numbers (the estimators change).
"""

from __future__ import annotations

import json

import pytest

from moekit.cli.main import main


@pytest.fixture(scope="module")
def health(tmp_path_factory):
    out = tmp_path_factory.mktemp("health")
    assert main(["showcase", "health", "--quick", "--output", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def finance(tmp_path_factory):
    out = tmp_path_factory.mktemp("finance")
    assert main(["showcase", "finance", "--quick", "--output", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def _models(record, i=0):
    return {m["name"]: m for m in record["evaluations"][i]["models"]}


def test_health_quick_scores_every_model_on_the_same_splits(health):
    out, record = health
    (ev,) = record["evaluations"]  # --quick: the second table is skipped, and says so
    assert any("NMES1988" in n for n in record["notes"])
    assert ev["metric"]["direction"] == "higher" and len(ev["replicates"]) == 2
    models = _models(record)
    assert set(models) == {"linear regression (Gaussian)",
                           "heteroscedastic linear (log sd linear)",
                           "gradient boosting (+ Gaussian)",
                           "stratified by cardiac procedure (told the groups)",
                           "MoE, 2 experts", "MoE, K by BIC (1-3)"}
    for m in models.values():
        assert len(m["per_seed"]) == 2 and len(m["other"]["rmse"]["per_seed"]) == 2
        assert m["parameters_total"] > 0 and m["train_time_s"] >= 0
    moe, linear = models["MoE, 2 experts"], models["linear regression (Gaussian)"]
    assert moe["kind"] == "moe" and linear["kind"] == "baseline"
    assert moe["mean"] > linear["mean"] + 0.05  # measured: -0.73 vs -0.83 nats per patient
    assert set(models["MoE, K by BIC (1-3)"]["details"]["n_experts_by_bic"]) <= {1, 2, 3}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "std err" in html


def test_health_gate_separates_the_procedures(health):
    _, record = health
    routing = record["routing"]
    share = routing["gate_share_by_group"]
    cabg, ptca = share["CABG (bypass surgery)"], share["PTCA (angioplasty)"]
    assert max(abs(a - b) for a, b in zip(cabg, ptca)) > 0.5
    assert routing["adjusted_rand_index"] > 0.3
    cabg_expert = max(range(2), key=lambda e: cabg[e])
    assert routing["expert_scale"][cabg_expert] < routing["expert_scale"][1 - cabg_expert]
    terms = {(r["block"], r["term"]) for r in routing["coefficients"]}
    assert ("gate child 1", "cabg") in terms and ("expert 0", "urgent_admission") in terms
    assert all(r["std_err"] is None or r["std_err"] > 0 for r in routing["coefficients"])
    assert routing["procedure_hidden"]["features"] == ["male", "urgent_admission",
                                                       "age_over_75"]


def test_finance_quick_compares_against_garch_and_markov_switching(finance):
    out, record = finance
    (ev,) = record["evaluations"]
    assert ev["dataset"].startswith("S&P 500, daily 1999-2018")
    assert ev["replicates"][0].startswith("test 2015-2016")
    models = _models(record)
    linear = models["linear regression (Gaussian)"]["mean"]
    for name in ("GARCH(1,1), Gaussian (arch)", "GARCH(1,1), Student-t (arch)",
                 "Markov switching, 2 regimes (statsmodels)", "MoE, K by BIC (1-3)"):
        assert models[name]["mean"] > linear + 0.1, name  # volatility matters, the mean not
    rmse = [m["other"]["rmse"]["mean"] for m in models.values()]
    assert max(rmse) - min(rmse) < 0.05  # daily returns are unpredictable in the mean
    verdict = ev["verdict"]
    assert verdict["best_moe"] == "MoE, K by BIC (1-3)"
    assert ("does NOT beat" in verdict["text"]) == (verdict["margin"] <= 0)
    assert (out / "plots" / "regimes_0.png").is_file()


def test_finance_regimes_follow_realised_volatility(finance):
    _, record = finance
    (reading,) = record["routing"]["regimes"]
    experts = reading["experts"]
    sds = [e["sd_percent"] for e in experts]
    assert sds == sorted(sds) and sds[-1] > 2 * sds[0]
    assert reading["n_experts"] == len(experts) >= 2
    assert reading["out_of_sample_correlation"] > 0.5
    years = {r["year"]: r for r in reading["yearly"]}
    assert years[2008]["mean_gate_most_turbulent"] > years[2006]["mean_gate_most_turbulent"]
