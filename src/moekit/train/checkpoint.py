"""Checkpoints: safetensors weights + a small JSON, written atomically, resumable exactly.

Layout of ``<run>/checkpoints/``::

    latest                       # one line: the name of the newest complete checkpoint
    step_000100/
        model.safetensors        # model.state_dict() (tied weights stored once)
        optimizer.safetensors    # every tensor of optimizer.state_dict()["state"]
        state.json               # step, config, RNG states (torch/numpy/python), optimizer
                                 # param_groups and non-tensor state, scheduler and scaler state

Atomicity: a checkpoint is written into a hidden temporary folder next to its final place, every
file and the folder are fsync'ed, then the folder is renamed into place (``os.replace``) and only
then ``latest`` is replaced (temp file + fsync + ``os.replace``). A crash at any moment leaves
``latest`` naming a complete earlier checkpoint; the temporary folder is removed on error.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import safetensors.torch
import torch
from torch import nn

from moekit._files import atomic_write_text, fsync_path

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
LATEST_FILE = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass(frozen=True)
class CheckpointState:
    """What :func:`load_checkpoint` read besides the tensors it loaded in place.

    Attributes
    ----------
    path : Path
        The checkpoint folder.
    step : int
        Optimiser steps completed when it was saved.
    config : dict
        The run configuration stored with it.
    extra : dict
        Free-form JSON the caller stored (e.g. the model name).
    """

    path: Path
    step: int
    config: dict[str, Any]
    extra: dict[str, Any]


# --- RNG state -------------------------------------------------------------------------------

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode("ascii")


def _from_b64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def capture_rng_state() -> dict[str, Any]:
    """The state of torch's (CPU and CUDA), NumPy's and Python's global RNGs, as JSON values."""
    np_state = cast(tuple[Any, ...], np.random.get_state(legacy=True))
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": _b64(torch.get_rng_state()),
        "numpy": [np_state[0], np.asarray(np_state[1]).tolist(), *[x.item() if hasattr(x, "item")
                                                                  else x for x in np_state[2:]]],
        "python": [py_version, list(py_internal), py_gauss],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNGs from :func:`capture_rng_state`'s output."""
    torch.set_rng_state(_from_b64(state["torch"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_from_b64(s) for s in state["cuda"]])


# --- optimizer state -------------------------------------------------------------------------

def _split_optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors of ``optimizer.state_dict()`` keyed ``state.<param>.<name>``; the rest as JSON."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for param_id, param_state in sd["state"].items():
        plain[str(param_id)] = {}
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value.detach().cpu().contiguous()
            else:
                plain[str(param_id)][key] = value
    return tensors, {"state": plain, "param_groups": sd["param_groups"]}


def _join_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in meta["state"].items()}
    for name, value in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = value
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


# --- atomic file helpers ---------------------------------------------------------------------



def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    safetensors.torch.save_file(tensors, str(path))
    fsync_path(path)


def _save_model(path: Path, model: nn.Module) -> None:
    # save_model drops the duplicate names of tied weights, which save_file refuses.
    safetensors.torch.save_model(model, str(path))
    fsync_path(path)


def _save_state(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """A state dict, keeping one name per shared tensor (as save_model does; load_model fills
    the other names of tied weights)."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for key in sorted(state):
        t = state[key]
        ident = (t.data_ptr(), tuple(t.shape))
        if t.numel() and ident in seen:
            continue
        seen.add(ident)
        kept[key] = t.detach().contiguous()
    _save_tensors(path, kept)


# --- public API --------------------------------------------------------------------------------

def step_dir_name(step: int) -> str:
    """``step_000123``: the folder name of the checkpoint after ``step`` steps."""
    return f"step_{step:06d}"


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(root: str | os.PathLike[str]) -> Path | None:
    """The checkpoint ``root/latest`` names, or the newest complete one; None when there is none."""
    root = Path(root)
    pointer = root / LATEST_FILE
    if pointer.is_file():
        candidate = root / pointer.read_text(encoding="utf-8").strip()
        if (candidate / STATE_FILE).is_file():
            return candidate
    found = list_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(
    root: str | os.PathLike[str],
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    config: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
    keep: int | None = None,
    model_state: Mapping[str, torch.Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of ``step`` under ``root`` atomically and point ``latest`` at it.

    Parameters
    ----------
    root : path
        The checkpoints folder (created if needed).
    step : int
        Optimiser steps completed.
    model, optimizer, scheduler, scaler
        Objects whose state is saved; the last three are optional.
    config, extra : dict, optional
        JSON-serialisable run configuration and free-form information stored in ``state.json``.
    keep : int, optional
        Keep only the ``keep`` newest checkpoints (older ones are deleted after ``latest`` moved).
    model_state, optimizer_state : optional
        What to write instead of ``model.state_dict()`` / ``optimizer.state_dict()`` (expert
        parallelism passes the gathered single-process state, :mod:`moekit.train.distributed`).

    Returns
    -------
    Path
        The checkpoint folder, ``root/step_<step>``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{final.name}-"))
    try:
        if model_state is None:
            _save_model(tmp / MODEL_FILE, model)
        else:
            _save_state(tmp / MODEL_FILE, model_state)
        state: dict[str, Any] = {
            "format": "moekit-checkpoint-1",
            "step": step,
            "config": config or {},
            "extra": extra or {},
            "rng": capture_rng_state(),
        }
        if optimizer is not None:
            tensors, meta = _split_optimizer_state(optimizer_state or optimizer.state_dict())
            _save_tensors(tmp / OPTIMIZER_FILE, tensors)
            state["optimizer"] = meta
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        if scaler is not None and scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        _write_json(tmp / STATE_FILE, state)
        fsync_path(tmp)
        if final.exists():  # a stale checkpoint of the same step (e.g. from a run resumed earlier)
            trash = Path(tempfile.mkdtemp(dir=root, prefix=f".old-{final.name}-"))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST_FILE, final.name + "\n")
    if keep is not None:
        for old in list_checkpoints(root)[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it is a checkpoint folder, else the latest checkpoint of the
    checkpoints root ``path``; a FileNotFoundError that says what was expected otherwise."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"no checkpoint at {path}: expected a folder with {STATE_FILE} "
                                f"or a checkpoints folder with a '{LATEST_FILE}' file")
    return latest


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    scaler: torch.amp.GradScaler | None = None,
    restore_rng: bool = True,
) -> CheckpointState:
    """Load a checkpoint folder into ``model`` (and optimizer/scheduler/scaler) in place.

    ``path`` may also be a checkpoints root, in which case its latest checkpoint is loaded.
    With ``restore_rng`` the global RNGs continue exactly where the saved run was.
    """
    path = resolve_checkpoint(path)
    with open(path / STATE_FILE, encoding="utf-8") as f:
        state = json.load(f)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    missing, unexpected = safetensors.torch.load_model(model, str(path / MODEL_FILE), strict=False,
                                                       device=str(device))
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not match the model: missing {sorted(missing)}, "
                         f"unexpected {sorted(unexpected)}; build the model with the config "
                         "stored in the checkpoint")
    if optimizer is not None:
        if "optimizer" not in state:
            raise ValueError(f"checkpoint {path} holds no optimizer state")
        tensors = safetensors.torch.load_file(str(path / OPTIMIZER_FILE), device=str(device))
        optimizer.load_state_dict(_join_optimizer_state(tensors, state["optimizer"]))
    if scheduler is not None and "scheduler" in state:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    if restore_rng:
        restore_rng_state(state["rng"])
    return CheckpointState(path=path, step=int(state["step"]), config=state.get("config", {}),
                           extra=state.get("extra", {}))


@dataclass(frozen=True)
class CheckpointContents:
    """A checkpoint read into memory, loaded into nothing (:func:`read_checkpoint`).

    Attributes
    ----------
    path : the checkpoint folder.
    state : the parsed ``state.json``.
    model : the model tensors (one name per tied tensor).
    optimizer : ``optimizer.state_dict()`` as saved, or None.
    """

    path: Path
    state: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None


def read_checkpoint(path: str | os.PathLike[str], *,
                    device: str | torch.device = "cpu") -> CheckpointContents:
    """Read a checkpoint folder (or a checkpoints root's latest) without loading it anywhere.

    For code that loads the tensors its own way (expert parallelism slices them per rank).
    """
    path = resolve_checkpoint(path)
    with open(path / STATE_FILE, encoding="utf-8") as f:
        state = json.load(f)
    model = safetensors.torch.load_file(str(path / MODEL_FILE), device=str(device))
    optimizer = None
    if "optimizer" in state:
        tensors = safetensors.torch.load_file(str(path / OPTIMIZER_FILE), device=str(device))
        optimizer = _join_optimizer_state(tensors, state["optimizer"])
    return CheckpointContents(path=path, state=state, model=model, optimizer=optimizer)
