"""Train an MoE model described by a TOML or YAML file.

    moekit train examples/configs/lm_kjv.toml
    moekit train examples/configs/lm_kjv.toml --steps 50 --output runs/quick
    moekit train examples/configs/lm_kjv.toml --output runs/quick --resume   # after Ctrl-C
    moekit train examples/configs/lm_kjv.toml --nproc 2                      # 2 processes
    torchrun --nproc-per-node 2 -m moekit train examples/configs/lm_kjv.toml # the same
    moekit train examples/configs/lm_kjv.toml --nproc 2 --data-parallel fsdp # FSDP2, not DDP

The file has sections [model] (kind = "lm" | "image" | "audio" and the model's options),
[data] (dataset = "kjv" | "text" | "digits" | "audio" and its options) and [train] (steps,
batch_size, lr, ...). The run folder receives metrics.jsonl, config.json, results.json and
checkpoints/; `moekit report RUN_DIR` turns it into a report.

With several processes (``--nproc N``, or under torchrun) every MoE layer's experts are split
over the N ranks (expert parallelism) and the rest is data-parallel (DDP, or FSDP2 with
``--data-parallel fsdp``: sharded over the ranks where this torch runs it); each step still
trains on the same global batch ([train] batch_size, a multiple of N), and checkpoints keep the
single-process layout, so a run can be resumed or evaluated with any number of processes that
divides num_experts (see moekit.train.distributed).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Any

from moekit.cli.errors import CLIError

HELP = "train an MoE model from a TOML/YAML config (language model, images, audio)"
NEEDS = ("torch", "safetensors", *(("tomli",) if sys.version_info < (3, 11) else ()))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", metavar="CONFIG",
                        help="experiment file (.toml, .yaml or .yml); see examples/configs/")
    parser.add_argument("--output", metavar="DIR", default=None,
                        help="run folder (default: [train] output_dir, else runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in the output folder from its latest checkpoint")
    parser.add_argument("--steps", type=int, metavar="N", default=None,
                        help="override [train] steps (total steps, counting resumed ones)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="override [train] device (default from the file, else auto)")
    parser.add_argument("--nproc", type=int, metavar="N", default=1,
                        help="train on N local processes (gloo on CPU; NCCL with one GPU each): "
                             "experts split over them, the rest data-parallel; default 1. Under "
                             "torchrun leave it out")
    parser.add_argument("--data-parallel", choices=("ddp", "fsdp"), default="ddp",
                        help="with several processes, how the parameters outside the experts "
                             "are kept: ddp (replicated, gradients all-reduced; default) or fsdp "
                             "(FSDP2: sharded over the processes, 1/N of their memory each)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from moekit.train.experiment import (
        ExperimentError,
        load_config_file,
        parse_experiment,
        run_experiment,
    )

    try:
        raw = load_config_file(args.config)
        spec = parse_experiment(raw, source=str(args.config))
        if args.steps is not None and args.steps < 1:
            raise CLIError(f"--steps {args.steps} must be >= 1")
        train_config = dataclasses.replace(
            spec.train,
            output_dir=args.output if args.output is not None else spec.train.output_dir,
            steps=args.steps if args.steps is not None else spec.train.steps,
            device=args.device if args.device is not None else spec.train.device,
        )
        spec = dataclasses.replace(spec, train=train_config)
        nproc = _check_nproc(args.nproc, spec.train.batch_size)
        hint = shlex.join(["moekit", "train", str(args.config), "--output",
                           spec.train.output_dir, "--resume"]
                          + (["--steps", str(args.steps)] if args.steps is not None else [])
                          + (["--nproc", str(nproc)] if nproc > 1 else [])
                          + (["--data-parallel", args.data_parallel]
                             if args.data_parallel != "ddp" else []))
        if args.data_parallel != "ddp" and nproc == 1 and not _torchrun_world():
            raise CLIError(f"--data-parallel {args.data_parallel} needs several processes; add "
                           "--nproc N (N >= 2) or run under torchrun")
        if _torchrun_world():
            from moekit.train.distributed import init_from_env

            init_from_env()
            return _rank_main(spec, args.resume, hint, args.data_parallel)
        print(f"moekit train: {spec.kind} model on {spec.dataset}, {spec.train.steps} steps -> "
              f"{spec.train.output_dir}" + (f" on {nproc} processes" if nproc > 1 else ""))
        if nproc > 1:
            _spawn(nproc, spec, args.resume, hint, args.data_parallel)
            print(f"run folder: {spec.train.output_dir}  (report: moekit report "
                  f"{spec.train.output_dir})")
            return 0
        results = run_experiment(spec, resume=args.resume, resume_hint=hint)
    except ExperimentError as err:
        raise CLIError(str(err)) from None
    except (FileExistsError, FileNotFoundError, MemoryError) as err:
        raise CLIError(str(err)) from None
    except ValueError as err:  # e.g. device='cuda' without a GPU, fp16 on CPU
        raise CLIError(str(err)) from None
    for name, result in results.items():
        if result.already_done:
            print(f"{name}: already finished at step {result.step} (of {spec.train.steps}); "
                  "nothing to do, its files are unchanged")
            continue
        val = f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "n/a"
        acc = (f", val accuracy {result.final_val_accuracy:.1%}"
               if result.final_val_accuracy is not None and spec.kind != "lm" else "")
        print(f"{name}: {result.step} steps in {result.elapsed_s:.1f} s, val loss {val}{acc}")
    print(f"run folder: {spec.train.output_dir}  (report: moekit report {spec.train.output_dir})")
    return 0


def _torchrun_world() -> int:
    """The world size when torchrun started this process with more than one rank, else 0."""
    from moekit.train.distributed import under_torchrun

    world = int(os.environ.get("WORLD_SIZE", "1")) if under_torchrun() else 1
    return world if world > 1 else 0


def _check_nproc(nproc: int, batch_size: int) -> int:
    if nproc < 1:
        raise CLIError(f"--nproc {nproc} must be >= 1")
    world = _torchrun_world() or nproc
    if batch_size % world:
        raise CLIError(f"[train] batch_size = {batch_size} is not divisible by the {world} "
                       f"processes; use a batch_size that is a multiple of {world}")
    return nproc


def _spawn(nproc: int, spec: Any, resume: bool, hint: str, data_parallel: str) -> None:
    import torch.multiprocessing as mp

    from moekit.train.distributed import spawn

    try:
        spawn(nproc, _rank_main, spec, resume, hint, data_parallel)
    except mp.ProcessRaisedException as err:
        lines = [line for line in str(err).strip().splitlines() if line.strip()]
        raise CLIError(f"rank {err.error_index} of {nproc} failed: {lines[-1].strip()}") from None
    except mp.ProcessExitedException as err:
        raise CLIError(f"rank {err.error_index} of {nproc} exited with code {err.exit_code} "
                       "(killed, or out of memory?)") from None


def _rank_main(spec: Any, resume: bool, hint: str, data_parallel: str = "ddp") -> int:
    """One rank of a multi-process run: the experiment with this rank's share of every batch."""
    import dataclasses
    import sys

    import torch.distributed as dist

    from moekit.train.distributed import DistributedTraining
    from moekit.train.experiment import run_experiment

    if dist.get_backend() == "gloo":
        if spec.train.device == "cuda":
            raise CLIError("--device cuda needs one GPU per process (NCCL); this run uses gloo "
                           "on the CPU: use --device cpu or fewer processes")
        spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, device="cpu"))
    import contextlib

    try:
        distributed = DistributedTraining(data_parallel)
    except ValueError as err:
        raise CLIError(str(err)) from None
    with open(os.devnull, "w") as quiet, contextlib.ExitStack() as stack:
        if not distributed.is_main:  # one voice; a failing rank's traceback reaches the launcher
            stack.enter_context(contextlib.redirect_stdout(quiet))
            stack.enter_context(contextlib.redirect_stderr(quiet))
        results = run_experiment(spec, resume=resume, resume_hint=hint, progress=sys.stderr,
                                 distributed=distributed)
    if distributed.is_main:
        for name, result in results.items():
            val = f"{result.final_val_loss:.4f}" if result.final_val_loss is not None else "n/a"
            print(f"{name}: {result.step} steps in {result.elapsed_s:.1f} s on "
                  f"{distributed.world_size} processes, val loss {val}", flush=True)
    return 0
