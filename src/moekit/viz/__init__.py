"""Plots of what a mixture of experts did, and per-run reports.

All plots use matplotlib's object API (``matplotlib.figure.Figure`` rendered by Agg; pyplot's
global state is never touched), write PNG files atomically (a temporary file in the same folder,
then ``os.replace``), accept NumPy arrays or torch tensors, and return the path written.

- :func:`plot_training_curves`, :func:`plot_expert_load` (:mod:`moekit.viz.training`)
- :func:`plot_routing_heatmap`, :func:`plot_gate_regions`, and the counter behind the heatmap,
  :func:`count_routing_by_kind` (with :func:`character_kinds` for text) (:mod:`moekit.viz.routing`)
- :func:`plot_estimator_fit` (:mod:`moekit.viz.estimators`)
- :func:`write_report`, :func:`build_report_from_run` (:mod:`moekit.viz.report`)
"""

from moekit._deps import require

require("matplotlib", feature="moekit.viz")

from moekit.viz.estimators import plot_estimator_fit
from moekit.viz.report import Section, Table, build_report_from_run, write_report
from moekit.viz.routing import (
    CHARACTER_KINDS,
    character_kinds,
    count_routing_by_kind,
    plot_gate_regions,
    plot_routing_heatmap,
)
from moekit.viz.training import plot_expert_load, plot_training_curves

__all__ = [
    "CHARACTER_KINDS",
    "Section",
    "Table",
    "build_report_from_run",
    "character_kinds",
    "count_routing_by_kind",
    "plot_estimator_fit",
    "plot_expert_load",
    "plot_gate_regions",
    "plot_routing_heatmap",
    "plot_training_curves",
    "write_report",
]
