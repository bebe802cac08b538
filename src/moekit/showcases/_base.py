"""The records a showcase returns, and the protocol it implements (see the package docstring)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from moekit.viz import Section

__all__ = ["Evaluation", "Metric", "ModelResult", "Showcase", "ShowcaseNotImplementedError",
           "ShowcaseResult", "spread"]

Direction = Literal["higher", "lower"]
ModelKind = Literal["moe", "baseline", "oracle"]


class ShowcaseNotImplementedError(NotImplementedError):
    """A registered showcase whose module is not written yet (it never fakes a result)."""


def spread(values: Sequence[float]) -> float:
    """Seed-to-seed spread: the sample standard deviation (ddof=1); 0 for a single value."""
    vals = [float(v) for v in values]
    if len(vals) < 2:
        return 0.0
    mean = sum(vals) / len(vals)
    return math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


@dataclass(frozen=True, kw_only=True)
class Metric:
    """What an evaluation measures.

    Attributes
    ----------
    name : str
        Short key, e.g. ``"heldout_loglik_per_obs"``.
    direction : {"higher", "lower"}
        Which way is better.
    description : str
        One line a reader understands, with the unit.
    """

    name: str
    direction: Direction
    description: str

    def __post_init__(self) -> None:
        if self.direction not in ("higher", "lower"):
            raise ValueError(f"direction={self.direction!r} must be 'higher' or 'lower'")

    def better(self, a: float, b: float) -> bool:
        """Whether value ``a`` is strictly better than ``b``."""
        return a > b if self.direction == "higher" else a < b


@dataclass(frozen=True, kw_only=True)
class ModelResult:
    """One model's scores over the replicates (seeds or splits) of an evaluation.

    Attributes
    ----------
    name : str
    kind : {"moe", "baseline", "oracle"}
        ``"oracle"``: a reference told something the others are not (e.g. the true group);
        shown, but not a baseline the mixture must beat.
    values : tuple of float
        The evaluation's metric, one value per replicate.
    other : mapping of str to tuple of float
        Secondary metrics (e.g. ``"rmse"``), one value per replicate each.
    parameters_total, parameters_active : int or None
        Free parameters, and those used per input (equal for a soft mixture, where every
        expert is evaluated; fewer for a sparse top-k layer). ``None`` where not defined.
    train_time_s : float
        Mean fitting/training time per replicate, in seconds (wall clock).
    details : mapping
        Anything else worth keeping (JSON-able), e.g. the number of experts chosen per seed.
    """

    name: str
    kind: ModelKind
    values: tuple[float, ...]
    other: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    parameters_total: int | None = None
    parameters_active: int | None = None
    train_time_s: float = 0.0
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in ("moe", "baseline", "oracle"):
            raise ValueError(f"kind={self.kind!r} must be 'moe', 'baseline' or 'oracle'")
        if not self.values:
            raise ValueError(f"model {self.name!r} has no values; give one per replicate")
        for key, vals in self.other.items():
            if len(vals) != len(self.values):
                raise ValueError(f"model {self.name!r}: metric {key!r} has {len(vals)} values "
                                 f"but the main metric has {len(self.values)}")

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)

    @property
    def spread(self) -> float:
        return spread(self.values)


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """One data set, one metric, every model scored on the same replicates.

    Attributes
    ----------
    dataset : str
    metric : Metric
    replicates : tuple of str
        What each replicate is, e.g. ``("seed 0 / split 0", ...)`` or ``("test 2011-2012", ...)``.
    models : tuple of ModelResult
    other_metrics : mapping of str to Metric
        The secondary metrics that models' ``other`` hold.
    """

    dataset: str
    metric: Metric
    replicates: tuple[str, ...]
    models: tuple[ModelResult, ...]
    other_metrics: Mapping[str, Metric] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError(f"evaluation on {self.dataset!r} has no models")
        for m in self.models:
            if len(m.values) != len(self.replicates):
                raise ValueError(f"model {m.name!r} has {len(m.values)} values for "
                                 f"{len(self.replicates)} replicates")
            unknown = set(m.other) - set(self.other_metrics)
            if unknown:
                raise ValueError(f"model {m.name!r} reports metrics {sorted(unknown)} that "
                                 "other_metrics does not describe")

    def verdict(self) -> dict[str, Any]:
        """Does the best mixture beat every baseline by more than the spread? Plainly said.

        Compares the best ``"moe"`` model with the best ``"baseline"`` (by mean): a win needs
        a margin larger than the larger of their two spreads. The paired differences per
        replicate (same split, same seed) are given beside it, since split-to-split variation
        that all models share inflates the spreads.
        """
        moes = [m for m in self.models if m.kind == "moe"]
        bases = [m for m in self.models if m.kind == "baseline"]
        if not moes or not bases:
            return {"moe_beats_every_baseline": None, "text": "no MoE or no baseline to compare"}
        pick = max if self.metric.direction == "higher" else min
        moe = pick(moes, key=lambda m: m.mean)
        base = pick(bases, key=lambda m: m.mean)
        sign = 1.0 if self.metric.direction == "higher" else -1.0
        margin = sign * (moe.mean - base.mean)
        noise = max(moe.spread, base.spread)
        paired = [sign * (a - b) for a, b in zip(moe.values, base.values)]
        n_ahead = sum(d > 0 for d in paired)
        paired_text = (f"paired over the {len(paired)} replicates: ahead on {n_ahead}, mean "
                       f"difference {sum(paired) / len(paired):+.4g} +- {spread(paired):.2g}")
        wins = margin > noise
        if wins:
            text = (f"{moe.name} beats every baseline: by {margin:.4g} over the best, "
                    f"{base.name} (spread {noise:.2g}; {paired_text})")
        elif margin > 0:
            text = (f"{moe.name} is ahead of the best baseline, {base.name}, by {margin:.4g}, "
                    f"within the seed-to-seed spread {noise:.2g}: not a clear win "
                    f"({paired_text})")
        else:
            text = (f"{moe.name} does NOT beat the best baseline, {base.name}: behind by "
                    f"{-margin:.4g} (spread {noise:.2g}; {paired_text})")
        return {"moe_beats_every_baseline": bool(wins), "best_moe": moe.name,
                "best_baseline": base.name, "margin": margin, "spread": noise,
                "paired_differences": paired, "replicates_ahead": n_ahead, "text": text}

@dataclass(frozen=True, kw_only=True)
class ShowcaseResult:
    """What a showcase's ``run`` returns; the runner writes it as results.json and a report.

    Attributes
    ----------
    showcase : str
    evaluations : tuple of Evaluation
        The first is the headline.
    routing : mapping
        JSON-able summary of what the gate learned (per showcase; documented in its module).
    sections : tuple of moekit.viz.Section
        The report's body: text, tables and plots (PNG files under the output folder).
    config : mapping
        The settings used (JSON-able), so a run can be repeated.
    notes : tuple of str
        Caveats a reader must see (left-out sources, settings that had no effect).
    """

    showcase: str
    evaluations: tuple[Evaluation, ...]
    routing: Mapping[str, Any]
    sections: tuple[Section, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.evaluations:
            raise ValueError(f"showcase {self.showcase!r} returned no evaluation")


@runtime_checkable
class Showcase(Protocol):
    """The protocol every showcase module's ``SHOWCASE`` object implements."""

    name: str
    description: str
    sources: tuple[str, ...]

    def run(self, *, quick: bool, seeds: int | None, device: str,
            output: Path) -> ShowcaseResult:
        """Run the showcase; write plots under ``output``; return the record."""
        ...
