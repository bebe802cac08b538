"""Each plot writes a valid PNG, accepts torch tensors, rejects bad input by name, and writes
atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib.figure
import matplotlib.image
import numpy as np
import pytest
import torch

from moekit.viz import (
    plot_estimator_fit,
    plot_expert_load,
    plot_gate_regions,
    plot_routing_heatmap,
    plot_training_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 0 and data[:8] == PNG_SIGNATURE
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert not list(path.parent.glob(".*.tmp")), "a temporary file was left behind"


def histories() -> dict[str, list[dict]]:
    h: dict[str, list[dict]] = {}
    for name, scale in (("moe", 1.0), ("dense", 1.2)):
        recs: list[dict] = [{"step": s, "loss": scale * 3 / (1 + s), "tokens_per_s": 100.0}
                            for s in range(0, 50, 5)]
        recs += [{"step": s, "split": "val", "loss": scale * 3.3 / (1 + s)} for s in (10, 40)]
        h[name] = recs
    return h


def test_training_curves(tmp_path: Path) -> None:
    out = plot_training_curves(histories(), tmp_path / "loss.png")
    assert out == tmp_path / "loss.png"
    assert_png(out)
    assert_png(plot_training_curves(histories(), tmp_path / "tps.png", metric="tokens_per_s"))
    with pytest.raises(ValueError, match="metric='accuracy'"):
        plot_training_curves(histories(), tmp_path / "x.png", metric="accuracy")
    with pytest.raises(ValueError, match="non-empty dict"):
        plot_training_curves({}, tmp_path / "x.png")


@pytest.mark.parametrize("kind", ["area", "lines"])
def test_expert_load_accepts_tensor(tmp_path: Path, kind: str) -> None:
    load = torch.rand(30, 4, requires_grad=True)  # counts; rows are normalised by the plot
    assert_png(plot_expert_load(load, tmp_path / "load.png", kind=kind,
                                steps=torch.arange(30) * 10))
    assert_png(plot_expert_load([[1.0, 3.0]], tmp_path / "one.png"))  # a single step


def test_expert_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="load_history must be 2-D"):
        plot_expert_load(np.ones(4), tmp_path / "x.png")
    with pytest.raises(ValueError, match="kind='pie'"):
        plot_expert_load(np.ones((3, 2)), tmp_path / "x.png", kind="pie")
    with pytest.raises(ValueError, match="steps has 2 entries"):
        plot_expert_load(np.ones((3, 2)), tmp_path / "x.png", steps=[0, 1])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_expert_load(np.ones((3, 2)), tmp_path / "missing" / "x.png")


def test_routing_heatmap(tmp_path: Path) -> None:
    counts = torch.tensor([[90, 10, 0], [5, 80, 15], [0, 0, 0]])
    assert_png(plot_routing_heatmap(counts, ["a", "b", "empty"], tmp_path / "h.png"))
    with pytest.raises(ValueError, match="kind_names has 2 names but counts has 3 rows"):
        plot_routing_heatmap(counts, ["a", "b"], tmp_path / "h.png")


def test_gate_regions(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.normal(size=(80, 2)))

    def gate_proba(g: np.ndarray) -> torch.Tensor:  # a torch "router" returning (m, 3)
        return torch.softmax(torch.as_tensor(g, dtype=torch.float32) @ torch.tensor([[1.0, -1.0, 0.0],
                                                                [0.0, 1.0, -1.0]]), dim=-1)

    labels = (X[:, 0] > 0).long()
    assert_png(plot_gate_regions(gate_proba, X, labels, tmp_path / "classes.png", grid_size=40))
    assert_png(plot_gate_regions(gate_proba, X, X[:, 1], tmp_path / "target.png", grid_size=40))
    assert_png(plot_gate_regions(lambda g: (g[:, 0] > 0).astype(int), X, None,
                                 tmp_path / "hard.png", grid_size=40))

    class Fitted:  # anything with gate_proba, like a fitted statistical MoE
        def gate_proba(self, g: np.ndarray) -> np.ndarray:
            return np.column_stack([g[:, 1] < 0, g[:, 1] >= 0]).astype(float)

    assert_png(plot_gate_regions(Fitted(), X, None, tmp_path / "est.png", grid_size=40))
    with pytest.raises(ValueError, match=r"X must have shape \(n_samples, 2\)"):
        plot_gate_regions(gate_proba, np.ones((5, 3)), None, tmp_path / "x.png")
    with pytest.raises(TypeError, match="gate must be a callable"):
        plot_gate_regions(42, X, None, tmp_path / "x.png")
    with pytest.raises(ValueError, match="one row per input point"):
        plot_gate_regions(lambda g: np.ones((3, 2)), X, None, tmp_path / "x.png")


def test_estimator_fit(tmp_path: Path) -> None:
    x = torch.linspace(-3, 3, 40)
    y = torch.where(x < 0, 1 - 1.5 * x, -1 + 2 * x)
    g = np.linspace(-3, 3, 60)[:, None]
    p = 1 / (1 + np.exp(-4 * g[:, 0]))
    experts = np.column_stack([1 - 1.5 * g[:, 0], -1 + 2 * g[:, 0]])
    gate = np.column_stack([1 - p, p])
    mean = (experts * gate).sum(axis=1)
    assert_png(plot_estimator_fit(x, y, tmp_path / "fit.png", x_grid=g, mean=mean,
                                  lower=mean - 1, upper=mean + 1, expert_means=experts,
                                  gate_proba=gate))
    assert_png(plot_estimator_fit(x, y, tmp_path / "plain.png", x_grid=g, mean=mean))
    with pytest.raises(ValueError, match="both lower and upper"):
        plot_estimator_fit(x, y, tmp_path / "x.png", x_grid=g, lower=mean)
    with pytest.raises(ValueError, match="x has 40 samples but y has 3"):
        plot_estimator_fit(x, y[:3], tmp_path / "x.png", x_grid=g)


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "load.png"
    plot_expert_load(np.ones((5, 2)), path)
    before = path.read_bytes()

    def broken_savefig(self: matplotlib.figure.Figure, fname, *args, **kwargs) -> None:
        fname.write(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_expert_load(np.ones((5, 3)), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["load.png"]
