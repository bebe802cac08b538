"""Showcases: does a mixture of experts earn its keep on real data, and what did its gate learn?

One showcase per domain, each a module of this package, run by ``moekit showcase NAME``
(``--quick``, ``--seeds N``, ``--output DIR``, ``--device cpu|cuda``), by
``examples/showcases/NAME.py`` and by ``benchmarks/quality.py``:

==========  ===========================================================  ==================
name        what                                                         status
==========  ===========================================================  ==================
language    MoE transformer on a parallel six-language Bible              ready
speech      MoE audio classifier on digits in 32 languages, 42 accents    ready
vision      image MoE on digits, clothing and animal silhouettes          ready
health      statistical MoE on length of stay after CABG vs PTCA          ready
finance     statistical MoE on daily index returns, regimes by BIC        ready
==========  ===========================================================  ==================

The protocol (how to write a showcase)
--------------------------------------
A showcase is one module ``moekit/showcases/NAME.py`` registered in :data:`SHOWCASES` that
defines ``SHOWCASE``, an object with

- ``name: str`` (the registry key), ``description: str`` (one or two sentences for a reader),
  ``sources: tuple[str, ...]`` (keys of :data:`moekit.data._sources.DATA_SOURCES` it reads, so
  ``moekit showcase list`` can say what is installed), ``implemented: bool`` (``False`` only
  for a placeholder);
- ``run(*, quick, seeds, device, output) -> ShowcaseResult``:

  * ``quick``: tiny slices of the real data that finish in under a minute on 2 CPU cores (what
    the tests run); the default settings must finish in under 15 minutes there;
    ``device == "cuda"`` may run a larger configuration.
  * ``seeds``: the number of replicates (seeds, or splits with their own seeds); ``None`` means
    the showcase's default (at least 3 outside ``quick``).
  * ``output``: an existing folder; write plots (PNG, through :mod:`moekit.viz`, atomically)
    under it, e.g. ``output / "plots"``; never write results.json or the report yourself.
  * data come from :mod:`moekit.data` loaders only; a missing source raises their
    ``SourceNotFoundError`` (its message names the install command) and the run stops.
  * control BLAS/torch threads for the numerical work (``threadpoolctl``,
    ``torch.set_num_threads``).

The :class:`ShowcaseResult` holds one or more :class:`Evaluation` (a data set, a
:class:`Metric` with its direction, the replicates, and one :class:`ModelResult` per model with
a value per replicate, secondary metrics, parameters total/active and training time), a
JSON-able ``routing`` summary of what the gate learned, the report's :class:`~moekit.viz.Section`
list, the ``config`` used and ``notes``. Every model of an evaluation is scored on the same
replicates. ``kind="moe"`` marks mixtures, ``"baseline"`` what they must beat, ``"oracle"``
references told something the others are not. :meth:`Evaluation.verdict` says in words whether
the best mixture beats the best baseline by more than the seed-to-seed spread, and says so
plainly when it does not.

:func:`run_showcase` calls ``run``, then writes ``output/report.html`` (and ``report.md``) and
last ``output/results.json`` (schema :data:`RESULTS_SCHEMA`), each atomically, so a results.json
on disk always belongs to a finished run. results.json holds: ``schema``, ``showcase``,
``description``, ``moekit`` (version), ``written``, ``machine``, ``quick``, ``seeds``, ``device``,
``elapsed_s``, ``config``, ``evaluations`` (each: ``dataset``, ``metric`` {name, direction,
description}, ``other_metrics``, ``replicates``, ``models`` [{name, kind, mean, spread,
per_seed, other, parameters_total, parameters_active, train_time_s, details}], ``verdict``),
``routing``, ``notes`` and ``report`` (the HTML file's name).

A showcase registered before its module is written sets ``implemented = False``:
:func:`run_showcase` then raises :class:`ShowcaseNotImplementedError` before writing anything,
and ``moekit showcase list`` says so (all five are implemented today).
"""

from moekit.showcases._base import (
    Evaluation,
    Metric,
    ModelResult,
    Showcase,
    ShowcaseNotImplementedError,
    ShowcaseResult,
)
from moekit.showcases._runner import (
    RESULTS_SCHEMA,
    SHOWCASES,
    ShowcaseRun,
    get_showcase,
    is_implemented,
    run_showcase,
)

__all__ = [
    "RESULTS_SCHEMA",
    "SHOWCASES",
    "Evaluation",
    "Metric",
    "ModelResult",
    "Showcase",
    "ShowcaseNotImplementedError",
    "ShowcaseResult",
    "ShowcaseRun",
    "get_showcase",
    "is_implemented",
    "run_showcase",
]
