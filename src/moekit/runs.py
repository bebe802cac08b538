"""The run folder: what a training run writes, under which names, and how to read it back.

Torch-free, so reports (:mod:`moekit.viz`) and other readers need no deep-learning install. The
writers are :mod:`moekit.train.loop` (metrics, config, results, checkpoints of one model) and
:mod:`moekit.train.experiment` (a tokenizer, and with a dense baseline one sub-run per model plus
a summary)::

    RUN_DIR/
      metrics.jsonl     one JSON object per line, appended as training goes (format below)
      config.json       what the run was built from (model, data, train settings)
      results.json      the outcome: steps, final losses (and accuracy), parameters, time
      tokenizer.json    language models: the character tokenizer
      routing.json      classifiers with MoE layers: token-slots of each class sent to each
                        expert by the first MoE layer, at the final evaluation
                        ({"counts": [[...], ...], "model": ..., "step": ...})
      checkpoints/      step_000100/ ... and ``latest`` (see moekit.train.checkpoint)
      moe/, dense/      with a dense baseline: one such folder per model; the top folder then
                        holds config.json and a results.json keyed by model name

A ``metrics.jsonl`` record::

    {"step": 120, "split": "train" | "val", "loss": 2.31, "lr": 0.00093,
     "tokens_per_s": 10450.0, "expert_load": [0.26, 0.24, ...], "model": "moe",
     "aux_loss": 0.0101, "balance": 1.08, "time_s": 12.3}

Validation records also carry ``"accuracy"`` (top-1, of the next token for a language model).
``time_s`` counts from the start of the run, across resumed segments.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINTS_DIR", "CONFIG_FILE", "METRICS_FILE", "RESULTS_FILE", "ROUTING_FILE",
           "TOKENIZER_FILE", "read_json", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
TOKENIZER_FILE = "tokenizer.json"
ROUTING_FILE = "routing.json"
CHECKPOINTS_DIR = "checkpoints"
_MAX_NOTED_LINES = 5


def read_metrics(path: str | os.PathLike[str],
                 notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in file order.

    Lines that are not JSON objects (a last line cut off by a crash) are skipped; when ``notes``
    is given, a sentence saying which is appended to it.

    Examples
    --------
    >>> import json, os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "metrics.jsonl")
    >>> with open(path, "w") as fh:
    ...     print(json.dumps({"step": 1, "loss": 2.5}), file=fh)
    ...     fh.write('{"step": 2, "lo')  # cut off
    15
    >>> read_metrics(path)
    [{'step': 1, 'loss': 2.5}]
    """
    records: list[dict[str, Any]] = []
    bad: list[int] = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                bad.append(lineno)
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad.append(lineno)
    if bad and notes is not None:
        shown = ", ".join(str(n) for n in bad[:_MAX_NOTED_LINES])
        more = f" and {len(bad) - _MAX_NOTED_LINES} more" if len(bad) > _MAX_NOTED_LINES else ""
        notes.append(f"{path}: skipped {len(bad)} line(s) that are not JSON objects "
                     f"(line {shown}{more}); a run stopped mid-write leaves a partial last line")
    return records


def read_json(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path`` (``config.json``, ``results.json``)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))
