"""Train an MoE model described by a TOML or YAML file.

    moekit train examples/configs/lm_kjv.toml
    moekit train examples/configs/lm_kjv.toml --steps 50 --output runs/quick
    moekit train examples/configs/lm_kjv.toml --output runs/quick --resume   # after Ctrl-C

The file has sections [model] (kind = "lm" | "image" | "audio" and the model's options),
[data] (dataset = "kjv" | "text" | "digits" | "audio" and its options) and [train] (steps,
batch_size, lr, ...). The run folder receives metrics.jsonl, config.json, results.json and
checkpoints/; `moekit report RUN_DIR` turns it into a report.
"""

from __future__ import annotations

import argparse
import shlex
import sys

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
        hint = shlex.join(["moekit", "train", str(args.config), "--output",
                           spec.train.output_dir, "--resume"]
                          + (["--steps", str(args.steps)] if args.steps is not None else []))
        print(f"moekit train: {spec.kind} model on {spec.dataset}, {spec.train.steps} steps -> "
              f"{spec.train.output_dir}")
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
