"""Forward and forward+backward time and peak memory of moekit's MoE layer, beside baselines.

Rows, all with the same weights and input: a dense SwiGLU FFN of hidden size k*f on the same
tokens (the same *active* FLOPs; the baseline of the issue's goal), each moekit backend
(``MoELayer(..., backend="loop" | "grouped_mm")``), and transformers' ``MixtralSparseMoeBlock`` with
each experts implementation that runs here (``eager``, ``grouped_mm``, ``batched_mm``; on CUDA also
the hub-kernel ones, reported as skipped when they cannot load). Shapes: Mixtral-like
(d 4096, f 14336, E 8, k 2), OLMoE-like (2048, 1024, 64, 8), Qwen3-like (2048, 768, 128, 8),
d and f divided by ``--scale``. Ratios are throughput ratios, dense time / row time (and best
transformers time / row time), on forward+backward. Peak memory: see the table's footnote
(CPU: peak RSS of a child process above what was resident; CUDA: max_memory_allocated).

Routing is the natural routing of a random router unless ``--balanced`` forces round-robin top-k.

Run from the repository root (about 3 minutes on 2 CPU cores; unchanged on a CUDA GPU, where the
defaults become full size, bfloat16, 20 repeats):

    python benchmarks/bench_layer.py --json bench_layer.json
    python benchmarks/bench_layer.py --balanced --shapes olmoe,qwen3
    python benchmarks/bench_layer.py --quick          # seconds, for smoke tests

The same benchmark runs as ``moekit bench``; the measuring core is :mod:`moekit.bench`.
"""

from __future__ import annotations

import argparse
import sys

from _common import write_json
from moekit.bench import format_record, run_benchmark
from moekit.cli.bench import add_arguments, resolve
from moekit.cli.errors import CLIError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        config = resolve(args)
        record = run_benchmark(config, log=lambda msg: print(msg, flush=True))
    except (CLIError, ValueError) as err:
        parser.error(str(err))
    print(format_record(record))
    if args.json:
        write_json(record, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
