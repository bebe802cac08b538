"""Time and memory of moekit's MoE layer beside transformers' MoE blocks and a dense FFN.

Runs the layer benchmark (the same as ``python benchmarks/bench_layer.py``): forward and
forward+backward time and peak memory of each moekit backend, each transformers experts
implementation that runs here, and a dense SwiGLU FFN of the same active FLOPs, at Mixtral-,
OLMoE- and Qwen3-like shapes scaled down by ``--scale``. A few minutes on 2 CPU cores:

    moekit bench
    moekit bench --quick                       # seconds: tiny sizes, for a smoke test
    moekit bench --balanced --json bench.json  # forced round-robin routing, numbers to a file
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from moekit.cli.errors import CLIError

if TYPE_CHECKING:
    from moekit.bench import BenchConfig

HELP = "benchmark the MoE layer against transformers' blocks and a dense FFN"

SHAPE_NAMES = ("mixtral", "olmoe", "qwen3")  # kept in step with moekit.bench.SHAPES (tested)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's flags (shared by ``moekit bench`` and ``benchmarks/bench_layer.py``)."""
    parser.add_argument("--shapes", default=",".join(SHAPE_NAMES),
                        help="comma-separated shapes from mixtral (d 4096, f 14336, E 8, k 2), "
                             "olmoe (2048, 1024, 64, 8), qwen3 (2048, 768, 128, 8) "
                             "(default: all three)")
    parser.add_argument("--scale", type=int, default=None,
                        help="divide d and f by this (rounded down to multiples of 8) "
                             "(default: 8 on CPU, 1 on CUDA; 16 with --quick)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens per batch T (default: 2048; 32 with --quick)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per case; the median is reported "
                             "(default: 5 on CPU, 20 on CUDA; 2 with --quick)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed runs before timing (default: 1 on CPU, 3 on CUDA)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run; auto = cuda if available (default: auto)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"),
                        default="auto", help="dtype of weights and inputs "
                                             "(default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, ignored on CUDA (default: 2; 1 with --quick)")
    parser.add_argument("--balanced", action="store_true",
                        help="force round-robin top-k routing (every expert gets T*k/E slots) "
                             "instead of the natural routing of a random router")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the peak-memory measurement (on CPU it runs in a child process)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repeats, for smoke tests (seconds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default: 0)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write every number, versions, device and shapes to PATH")


def resolve(args: argparse.Namespace) -> BenchConfig:
    """Turn parsed flags into a :class:`moekit.bench.BenchConfig` (imports torch)."""
    import torch

    from moekit.bench import BenchConfig

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda but torch.cuda.is_available() is False; use --device cpu")
    cuda = device == "cuda"
    dtype = args.dtype if args.dtype != "auto" else ("bfloat16" if cuda else "float32")

    def pick(value: int | None, quick: int, cpu: int, gpu: int) -> int:
        if value is not None:
            return value
        return quick if args.quick else (gpu if cuda else cpu)

    shapes = tuple(s.strip() for s in args.shapes.split(",") if s.strip())
    try:
        return BenchConfig(shapes=shapes, scale=pick(args.scale, 16, 8, 1),
                           tokens=pick(args.tokens, 32, 2048, 2048),
                           repeats=pick(args.repeats, 2, 5, 20),
                           warmup=pick(args.warmup, 1, 1, 3), device=device, dtype=dtype,
                           balanced=args.balanced, memory=not args.no_memory,
                           threads=pick(args.threads, 1, 2, 2), seed=args.seed)
    except ValueError as err:
        raise CLIError(str(err)) from None


def run(args: argparse.Namespace) -> int:

    from moekit.bench import format_record, run_benchmark

    config = resolve(args)
    try:
        record = run_benchmark(config, log=lambda msg: print(msg, flush=True))
    except ValueError as err:  # e.g. --balanced with d_model < num_experts
        raise CLIError(str(err)) from None
    print(format_record(record))
    if args.json:
        from moekit._files import atomic_write_json

        atomic_write_json(args.json, record, indent=2)
        print(f"wrote {args.json}")
    return 0
