"""Run an experiment file: load the data, build the model(s), check memory, train, summarise.

What ``moekit train CONFIG`` and ``moekit demo`` run. The file itself is read and checked by
:mod:`moekit.train.experiment_file`, the data loaded by :mod:`moekit.train.datasets`, the memory
estimated by :mod:`moekit.train.memory`; this module puts them together:
:func:`build_models` then :func:`run_experiment`, which returns the trained models.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from moekit import runs
from moekit._files import atomic_write_json
from moekit.models import (
    AudioClassifier,
    ImageClassifier,
    TransformerLM,
    dense_twin_config,
)
from moekit.train.checkpoint import latest_checkpoint
from moekit.train.datasets import DatasetError, PreparedData, prepare_data
from moekit.train.device import resolve_device, seed_everything
from moekit.train.distributed import DistributedTraining
from moekit.train.experiment_file import (
    ExperimentError,
    ExperimentSpec,
    block_size,
    load_config_file,
    model_config,
    parse_experiment,
)
from moekit.train.loop import TrainResult, train
from moekit.train.memory import check_fits, estimate_memory

# The file and data halves stay importable from here, where they lived before the split.
__all__ = ["ExperimentError", "ExperimentSpec", "PreparedData", "build_models", "load_config_file",
           "load_data", "parse_experiment", "run_experiment"]

_MODELS: dict[str, type[nn.Module]] = {"lm": TransformerLM, "image": ImageClassifier,
                                       "audio": AudioClassifier}


def load_data(spec: ExperimentSpec) -> PreparedData:
    """The data of ``spec``, loaded (errors become :class:`ExperimentError`)."""
    try:
        return prepare_data(spec.dataset, spec.data, batch_size=spec.train.batch_size,
                            seed=spec.train.seed, block_size=block_size(spec))
    except DatasetError as err:
        raise ExperimentError(str(err)) from None


def build_models(spec: ExperimentSpec, derived: dict[str, int]) -> dict[str, Callable[[], nn.Module]]:
    """Name -> factory of the models to train: ``moe``, and ``dense`` (the dense twin, same
    compute per token) with ``dense_baseline``."""
    config = model_config(spec, derived)
    cls = _MODELS[spec.kind]
    factories: dict[str, Callable[[], nn.Module]] = {"moe": lambda: cls(config)}
    if spec.dense_baseline:
        try:
            dense = dense_twin_config(config)
        except ValueError as err:
            raise ExperimentError(f"[model] dense_baseline = true: {err}") from None
        factories["dense"] = lambda: cls(dense)
    return factories


def run_experiment(spec: ExperimentSpec, *, data: PreparedData | None = None,
                   resume: bool = False, progress: IO[str] | None = None,
                   resume_hint: str | None = None,
                   available_memory: int | None = None,
                   distributed: DistributedTraining | None = None) -> dict[str, TrainResult]:
    """Load the data (unless given), check memory, build and train the model(s) of ``spec``.

    With ``dense_baseline`` the run folder holds ``moe/`` and ``dense/`` (one run each) plus a
    ``results.json`` comparing them; otherwise the run folder is the ``moe`` run itself. Each
    :class:`TrainResult` carries its trained model (``result.model``). Resuming a run that has
    finished changes nothing on disk (its results have ``already_done=True``). With
    ``distributed`` this process is one rank of a run (:mod:`moekit.train.distributed`); only
    rank 0 writes files.
    """
    main = distributed is None or distributed.is_main
    out = Path(spec.train.output_dir)
    device = resolve_device(spec.train.device)
    data = data if data is not None else load_data(spec)
    factories = build_models(spec, data.derived)
    config = model_config(spec, data.derived)
    for name, factory in factories.items():
        check_fits(estimate_memory(config, batch_size=spec.train.batch_size, factory=factory),
                   device, available=available_memory,
                   hint=f"lower [model] d_model, d_ff, num_experts or n_layers, or [train] "
                        f"batch_size (the {name} model)")
    stream = progress if progress is not None else sys.stderr
    results: dict[str, TrainResult] = {}
    for name, factory in factories.items():
        run_dir = out / name if spec.dense_baseline else out
        train_config = dataclasses.replace(spec.train, output_dir=str(run_dir))
        resume_this = resume and latest_checkpoint(run_dir / runs.CHECKPOINTS_DIR) is not None
        if resume and not resume_this:
            # Nothing of this model was checkpointed: its metrics (if any) are from lost steps.
            (run_dir / runs.METRICS_FILE).unlink(missing_ok=True)
        seed_everything(spec.train.seed)
        model = factory()
        built = getattr(model, "config", None)
        run_config = {"kind": spec.kind,
                      "model": dataclasses.asdict(built) if dataclasses.is_dataclass(built)
                      and not isinstance(built, type) else spec.model,
                      "dataset": spec.dataset, "data": spec.data, "data_info": data.info,
                      "source": spec.source}
        tokenizer_path = run_dir / runs.TOKENIZER_FILE
        if data.tokenizer is not None and main and not (resume_this and tokenizer_path.is_file()):
            run_dir.mkdir(parents=True, exist_ok=True)
            data.tokenizer.save(tokenizer_path)
        results[name] = result = train(model, data.train, train_config, val_data=data.val,
                                       resume=resume_this, model_name=name, run_config=run_config,
                                       progress=stream, resume_hint=resume_hint,
                                       distributed=distributed)
        if data.tokenizer is not None and not result.already_done:
            _print_sample(model, data.tokenizer, stream, name)
    if spec.dense_baseline and main and not all(r.already_done for r in results.values()):
        summary = {name: runs.read_json(out / name / runs.RESULTS_FILE) for name in results}
        atomic_write_json(out / runs.RESULTS_FILE, summary)
        atomic_write_json(out / runs.CONFIG_FILE, {
            "kind": spec.kind, "model": spec.model, "dense_baseline": True,
            "dataset": spec.dataset, "data": spec.data, "train": dataclasses.asdict(spec.train),
            "source": spec.source})
    return results


def _print_sample(model: nn.Module, tokenizer: Any, stream: IO[str], name: str) -> None:
    if not isinstance(model, TransformerLM):
        return
    model.eval()
    device = next(model.parameters()).device
    start = "In the beginning"
    if all(ch in tokenizer.vocab for ch in start):
        prompt = torch.from_numpy(tokenizer.encode(start))[None].to(device)
    else:
        prompt = torch.zeros((1, 1), dtype=torch.long, device=device)
    ids = model.generate(prompt, max_new_tokens=80, generator=torch.Generator(device).manual_seed(0))
    text = tokenizer.decode(ids[0].tolist()).replace("\n", " ")
    stream.write(f"[{name}] sample: {text}\n")
    stream.flush()
