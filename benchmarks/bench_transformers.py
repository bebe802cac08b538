"""transformers MoE models on moekit: throughput and peak memory beside transformers' own paths.

For small random models of three families (Mixtral: 8 wide experts; Qwen3-MoE: 32 narrow
experts, top-4; GPT-OSS: biased, interleaved, transposed experts with a clamped SwiGLU), the same
weights and the same batch run as:

- ``hf eager``, ``hf grouped_mm`` (and with ``--rows``, ``hf batched_mm``): transformers' experts
  implementations;
- ``moekit``: ``experts_implementation="moekit"`` (moekit's dispatch and grouped experts,
  transformers' routers);
- ``moekit patched``: ``moekit.integrations.transformers.patch(model)`` (moekit layers sharing
  the model's tensors).

Per row: forward tokens/s (``torch.no_grad``), forward+backward tokens/s (causal-LM loss), peak
memory of one forward+backward above the resident model, and ``best HF/x`` ratios (the fastest
transformers row over this row: >= 1 means moekit is at least as fast; the goal) measured in the
same run. ``max|dlogit|`` checks every row computes the same logits as ``hf eager``.

    python benchmarks/bench_transformers.py                    # CPU, 1 thread, CPU-time clock
    python benchmarks/bench_transformers.py --quick            # seconds: a smoke test
    python benchmarks/bench_transformers.py --device cuda      # bf16, larger models, CUDA events

CPU timings use ``time.process_time`` of a 1-thread process (robust to other load on a shared
machine); ``--clock wall`` uses ``time.perf_counter``. CPU peak memory is the peak RSS of one
forward+backward in a child process (``MALLOC_MMAP_THRESHOLD_`` set so freed tensors return to
the OS); CUDA uses ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

from _common import time_ms

warnings.filterwarnings("ignore")

ROWS = ("hf eager", "hf batched_mm", "hf grouped_mm", "moekit", "moekit patched")
DEFAULT_ROWS = ("hf eager", "hf grouped_mm", "moekit", "moekit patched")
FAMILIES = ("mixtral", "qwen3_moe", "gpt_oss")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="device (default: cpu)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES,
                   help="model families to run (default: all three)")
    p.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=ROWS,
                   help="rows to run (default: all but 'hf batched_mm', which gathers a copy of "
                        "the expert weights for every token-slot: GBs at these sizes)")
    p.add_argument("--batch", type=int, default=None, help="sequences per batch (default: 4 CPU, 8 CUDA)")
    p.add_argument("--seq", type=int, default=None, help="tokens per sequence (default: 128 CPU, 1024 CUDA)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per row (median; default: 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed runs before timing (default: 2)")
    p.add_argument("--clock", default="process", choices=["process", "wall"],
                   help="CPU clock: process CPU time (default) or wall time")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--quick", action="store_true", help="tiny models and batch (smoke test)")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--memory-child", nargs=2, metavar=("FAMILY", "ROW"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def sizes(family: str, device: str, quick: bool) -> dict[str, Any]:
    """Config fields of a small model of ``family`` (CUDA: 4x wider)."""
    w = 1 if device == "cpu" else 4
    if quick:
        w = 0.25  # type: ignore[assignment]
    h = int(512 * w)
    common = dict(hidden_size=h, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                  head_dim=h // 8, vocab_size=2048, max_position_embeddings=4096,
                  tie_word_embeddings=False)
    if family == "mixtral":
        return dict(common, intermediate_size=2 * h, num_local_experts=8, num_experts_per_tok=2)
    if family == "qwen3_moe":
        return dict(common, moe_intermediate_size=h // 2, num_experts=32, num_experts_per_tok=4,
                    norm_topk_prob=True)
    return dict(common, intermediate_size=h, num_local_experts=16, num_experts_per_tok=4,
                sliding_window=4096)


def build(family: str, device: torch.device, dtype: torch.dtype, quick: bool) -> Any:
    import transformers

    cls = {"mixtral": transformers.MixtralForCausalLM, "qwen3_moe": transformers.Qwen3MoeForCausalLM,
           "gpt_oss": transformers.GptOssForCausalLM}[family]
    cfg = cls.config_class(**sizes(family, device.type, quick))
    torch.manual_seed(0)
    model = cls(cfg)
    with torch.no_grad():
        for p in model.parameters():  # decisive routing: no ties between experts
            p.normal_(0, 0.02 if p.dim() > 1 else 0.01)
    return model.to(device=device, dtype=dtype)


def prepare(model: Any, row: str) -> None:
    import moekit.integrations.transformers as mt

    if row == "moekit patched":
        report = mt.patch(model)
        if not report.patched or report.unsupported:
            raise RuntimeError(f"patch did not replace every block: {report}")
    else:
        model.set_experts_implementation(row.removeprefix("hf ") if row.startswith("hf ") else "moekit")


def workload(model: Any, ids: torch.Tensor) -> tuple[Callable[[], object], Callable[[], object]]:
    def forward() -> object:
        with torch.no_grad():
            return model(input_ids=ids).logits

    def forward_backward() -> object:
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        return loss

    return forward, forward_backward


def peak_memory_mib(family: str, row: str, args: argparse.Namespace) -> float | None:
    """One forward+backward's peak above the resident model (CPU: in a child process)."""
    if args.no_memory:
        return None
    if args.device == "cuda":
        device = torch.device("cuda")
        model = build(family, device, torch.bfloat16, args.quick)
        prepare(model, row)
        ids = batch(args, device)
        _, fwd_bwd = workload(model, ids)
        fwd_bwd()
        model.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fwd_bwd()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--memory-child", family, row, "--device", "cpu",
           "--threads", str(args.threads)]
    cmd += ["--quick"] if args.quick else []
    cmd += [f"--batch={args.batch}"] if args.batch else []
    cmd += [f"--seq={args.seq}"] if args.seq else []
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
    if done.returncode != 0:
        print(f"  memory of {family}/{row} not measured: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return float(done.stdout.strip().splitlines()[-1])


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def memory_child(family: str, row: str, args: argparse.Namespace) -> None:
    device = torch.device("cpu")
    model = build(family, device, torch.float32, args.quick)
    prepare(model, row)
    _, fwd_bwd = workload(model, batch(args, device))
    fwd_bwd()  # first run: lazy allocations (grads) happen here
    gc.collect()
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS
    fwd_bwd()
    print((_rss_kib("VmHWM") - before) / 1024)


def batch(args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    b = args.batch or (2 if args.quick else (4 if device.type == "cpu" else 8))
    s = args.seq or (32 if args.quick else (128 if device.type == "cpu" else 1024))
    return torch.randint(3, 2048, (b, s), generator=torch.Generator().manual_seed(1)).to(device)


def run_family(family: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    ids = batch(args, device)
    tokens = ids.numel()
    ref_logits = None
    results = []
    for row in args.rows:
        model = build(family, device, dtype, args.quick)
        try:
            prepare(model, row)
        except Exception as err:  # a row that cannot run here is listed with the reason
            results.append({"family": family, "row": row, "skipped": f"{type(err).__name__}: {err}"})
            continue
        fwd, fwd_bwd = workload(model, ids)
        logits = fwd()
        assert isinstance(logits, torch.Tensor)
        if ref_logits is None:
            ref_logits = logits.float()
        delta = float((logits.float() - ref_logits).abs().max())
        t_fwd = time_ms(fwd, device, repeats=args.repeats, warmup=args.warmup, clock=args.clock)
        t_bwd = time_ms(fwd_bwd, device, repeats=args.repeats, warmup=args.warmup,
                        clock=args.clock)
        del model
        gc.collect()
        results.append({"family": family, "row": row, "tokens": tokens, "fwd_ms": t_fwd,
                        "fwd_bwd_ms": t_bwd, "fwd_tok_s": tokens / t_fwd * 1e3,
                        "fwd_bwd_tok_s": tokens / t_bwd * 1e3, "max_dlogit": delta,
                        "peak_mib": peak_memory_mib(family, row, args)})
    timed = [r for r in results if "skipped" not in r and r["row"].startswith("hf ")]
    best_fwd = min(r["fwd_ms"] for r in timed)
    best_bwd = min(r["fwd_bwd_ms"] for r in timed)
    mems = [r["peak_mib"] for r in timed if r["peak_mib"] is not None]
    for r in results:
        if "skipped" in r:
            continue
        r["best_hf_over_fwd"] = best_fwd / r["fwd_ms"]
        r["best_hf_over_fwd_bwd"] = best_bwd / r["fwd_bwd_ms"]
        r["peak_over_best_hf"] = (r["peak_mib"] / min(mems)) if mems and r["peak_mib"] else None
    return results


def table(results: list[dict[str, Any]]) -> str:
    head = (f"{'family':<10} {'row':<16} {'fwd tok/s':>10} {'f+b tok/s':>10} {'best HF/x fwd':>13} "
            f"{'best HF/x f+b':>13} {'peak MiB':>9} {'peak/best HF':>12} {'max|dlogit|':>11}")
    lines = [head, "-" * len(head)]
    for r in results:
        if "skipped" in r:
            lines.append(f"{r['family']:<10} {r['row']:<16} skipped: {r['skipped']}")
            continue
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        ratio = "-" if r["peak_over_best_hf"] is None else f"{r['peak_over_best_hf']:.2f}"
        lines.append(f"{r['family']:<10} {r['row']:<16} {r['fwd_tok_s']:>10.0f} "
                     f"{r['fwd_bwd_tok_s']:>10.0f} {r['best_hf_over_fwd']:>13.2f} "
                     f"{r['best_hf_over_fwd_bwd']:>13.2f} {peak:>9} {ratio:>12} "
                     f"{r['max_dlogit']:>11.1e}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child, args)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here; run on a GPU machine or use --device cpu")
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, device "
          f"{args.device}, threads {args.threads}, clock "
          f"{'cuda events' if args.device == 'cuda' else args.clock}")
    results: list[dict[str, Any]] = []
    for family in args.families:
        results += run_family(family, args)
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
