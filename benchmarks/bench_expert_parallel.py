"""Expert parallelism: step time, all-to-all time and bytes, memory per rank, for 1, 2, 4 ranks.

    python benchmarks/bench_expert_parallel.py                    # CPU, gloo: 1, 2, 4 processes
    python benchmarks/bench_expert_parallel.py --quick            # seconds, smoke test
    python benchmarks/bench_expert_parallel.py --ranks 1 2 4 8 --tokens 8192 --json ep.json

One MoE layer (d 256, f 512, E 8, k 2 on CPU; Mixtral-like on GPU) and a fixed *global* batch of
``--tokens`` tokens; R processes each take T/R of them and run forward+backward of the layer
with :func:`moekit.parallel.apply_expert_parallel` (R = 1 included: the all-to-all machinery on a
group of one). Beside it, in its own process, the same layer without expert parallelism on all
T tokens: the baseline every ratio is against. The same script runs unchanged on GPUs (NCCL, one
GPU per rank, CUDA-event timing) when there are at least R of them; otherwise that R is listed
as skipped, with the reason.

Columns (per rank, the slowest rank for times):

- ``step ms``: median wall time of one forward+backward (a barrier before each).
- ``x vs 1 proc``: baseline step time / this step time (R ranks share the work: ideal R).
- ``a2a ms``: the collectives of one step replayed alone with the same sizes (the count
  all-reduce, token, metadata and partial-sum all-to-alls, forward and backward).
- ``sent MiB``: token bytes this rank sends per step (dispatch + combine, forward + backward).
- ``= pairs``: whether the reported bytes equal distinct (token, rank) pairs x D x element size
  counted from the routing here, independently of the dispatcher.
- ``experts MiB``: this rank's expert parameters (1/R of the model's).
- ``peak MiB``: peak resident memory of the process (CPU: VmHWM; GPU: max allocated).

Timings on a shared machine are noisy; with R processes on fewer than R cores they cannot scale.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, format_table, synchronize, time_ms, write_json


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _layer(args: argparse.Namespace, device: torch.device) -> Any:
    from moekit.layers import MoELayer

    torch.manual_seed(0)
    return MoELayer(args.d_model, args.d_ff, args.experts, args.top_k).to(device, args.dtype)


def _inputs(args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(args.tokens, args.d_model, generator=g).to(device, args.dtype)


def _replay(comm: Any, K: int, D: int, device: torch.device, dtype: torch.dtype) -> Any:
    """The collectives of one forward+backward with the sizes of ``comm`` (a closure)."""
    import torch.distributed as dist

    r, R = comm.rank, comm.pairs.shape[0]
    send, recv = comm.pairs[r].tolist(), comm.pairs[:, r].tolist()
    x_P = torch.zeros(sum(send), D, device=device, dtype=dtype)
    x_Q = torch.zeros(sum(recv), D, device=device, dtype=dtype)
    m_P = torch.zeros(sum(send), 2 * K, device=device)
    m_Q = torch.zeros(sum(recv), 2 * K, device=device)
    table = torch.zeros(R, 2 * R + 1, dtype=torch.int64, device=device)

    def run() -> None:
        dist.all_reduce(table)
        dist.all_to_all_single(x_Q, x_P, recv, send)   # dispatch
        dist.all_to_all_single(m_Q, m_P, recv, send)   # metadata
        dist.all_to_all_single(x_P, x_Q, send, recv)   # partial sums home
        dist.all_to_all_single(x_Q, x_P, recv, send)   # backward of the combine
        dist.all_to_all_single(x_P, x_Q, send, recv)   # backward of the dispatch
        dist.all_to_all_single(m_P, m_Q, send, recv)   # backward of the metadata

    return run


def _distinct_pairs(indices_TK: torch.Tensor, experts_per_rank: int, ranks: int) -> torch.Tensor:
    """(R,) distinct (token, rank) pairs per destination, counted from the routing alone."""
    dest = indices_TK.clamp_min(0) // experts_per_rank
    hit = torch.zeros(indices_TK.shape[0], ranks, dtype=torch.bool)
    hit.scatter_(1, dest.cpu(), (indices_TK >= 0).cpu())
    return hit.sum(0)


def _rank(rank: int, world: int, args: argparse.Namespace, folder: str, plain: bool) -> None:
    import torch.distributed as dist

    torch.set_num_threads(args.threads)
    use_cuda = args.device == "cuda"
    if use_cuda:
        torch.cuda.set_device(rank)
    device = torch.device("cuda", rank) if use_cuda else torch.device("cpu")
    if not plain:
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method=f"file://{folder}/store",
                                rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=300))
    layer = _layer(args, device)
    x_all = _inputs(args, device)
    T = args.tokens // world
    x = x_all[rank * T:(rank + 1) * T].clone().requires_grad_()
    del x_all
    if not plain:
        from moekit.parallel import apply_expert_parallel

        apply_expert_parallel(layer)

    def step() -> None:
        y = layer(x)
        (y.float().square().mean() + layer.aux_loss).backward()

    def zero() -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        if not plain:
            dist.barrier()

    ms = time_ms(step, device, repeats=args.repeats, warmup=args.warmup, setup=zero)
    record: dict[str, Any] = {
        "rank": rank, "world": world, "tokens": T, "step_ms": ms,
        "expert_mib": sum(p.numel() * p.element_size() for p in layer.experts.parameters()) / 2**20,
        "peak_mib": _peak_mib(device),
    }
    if not plain:
        comm = layer.stats.comm
        K = layer.top_k
        pairs = _distinct_pairs(layer.stats.indices, args.experts // world, world)
        record["pairs_row"] = comm.pairs[rank].tolist()
        record["pairs_match"] = bool(torch.equal(comm.pairs[rank], pairs))
        sent = int(comm.bytes_sent[rank]) + int(comm.bytes_received[rank])  # dispatch + combine
        record["sent_bytes_per_step"] = 2 * sent  # forward and backward
        expected = 2 * int((pairs.sum() - pairs[rank]) + (comm.pairs[:, rank].sum()
                                                          - comm.pairs[rank, rank]))
        record["expected_bytes_per_step"] = expected * args.d_model * x.element_size()
        replay = _replay(comm, K, args.d_model, device, args.dtype)
        record["a2a_ms"] = time_ms(replay, device, repeats=args.repeats, warmup=args.warmup,
                                   setup=dist.barrier)
        record["imbalance"] = comm.imbalance()
        synchronize(device)
        dist.destroy_process_group()
    torch.save(record, Path(folder) / f"rank{rank}.pt")


def _run(world: int, args: argparse.Namespace, plain: bool) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="moekit-bench-ep-") as folder:
        mp.spawn(_rank, args=(world, args, folder, plain), nprocs=world, join=True)
        return [torch.load(Path(folder) / f"rank{r}.pt") for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4],
                        help="process counts to measure (default 1 2 4)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="global batch in tokens (default 2048 on CPU, 16384 on GPU)")
    parser.add_argument("--d-model", type=int, default=None, help="D (default 256 CPU, 4096 GPU)")
    parser.add_argument("--d-ff", type=int, default=None, help="F (default 512 CPU, 14336 GPU)")
    parser.add_argument("--experts", type=int, default=8, help="E (default 8)")
    parser.add_argument("--top-k", type=int, default=2, help="K (default 2)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda: NCCL, one GPU per rank; cpu: gloo (default auto)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median; 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats: a smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write every number as JSON")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = args.device == "cuda"
    args.dtype = torch.bfloat16 if gpu else torch.float32
    args.tokens = args.tokens or (512 if args.quick else 16384 if gpu else 2048)
    args.d_model = args.d_model or (32 if args.quick else 4096 if gpu else 256)
    args.d_ff = args.d_ff or (64 if args.quick else 14336 if gpu else 512)
    if args.quick:
        args.repeats, args.warmup = 2, 1
    started = time.perf_counter()
    baseline = _run(1, args, plain=True)[0]
    rows, records, skipped = [], {"baseline": baseline, "runs": {}}, []
    rows.append(["1 process, no EP", str(args.tokens), f"{baseline['step_ms']:.1f}", "1.00", "-",
                 "-", "-", f"{baseline['expert_mib']:.2f}", f"{baseline['peak_mib']:.0f}"])
    for world in args.ranks:
        if args.experts % world or args.tokens % world:
            skipped.append(f"{world} ranks: E={args.experts} and T={args.tokens} must divide by it")
            continue
        if gpu and torch.cuda.device_count() < world:
            skipped.append(f"{world} ranks: needs {world} GPUs, this machine has "
                           f"{torch.cuda.device_count()}")
            continue
        got = _run(world, args, plain=False)
        records["runs"][str(world)] = got
        step = max(r["step_ms"] for r in got)
        sent = max(r["sent_bytes_per_step"] for r in got)
        match = all(r["pairs_match"] and r["sent_bytes_per_step"] == r["expected_bytes_per_step"]
                    for r in got)
        rows.append([f"{world} ranks, EP", str(args.tokens // world), f"{step:.1f}",
                     f"{baseline['step_ms'] / step:.2f}",
                     f"{max(r['a2a_ms'] for r in got):.1f}", f"{sent / 2**20:.2f}",
                     "yes" if match else "NO", f"{max(r['expert_mib'] for r in got):.2f}",
                     f"{max(r['peak_mib'] for r in got):.0f}"])
    backend = "NCCL, bf16" if gpu else f"gloo, fp32, {args.threads} thread(s) per process"
    title = (f"expert parallelism: d {args.d_model}, f {args.d_ff}, E {args.experts}, "
             f"k {args.top_k}, global batch {args.tokens} tokens ({backend})")
    note = "\n".join(f"skipped: {s}" for s in skipped)
    print(format_table(title, ["run", "tokens/rank", "step ms", "x vs 1 proc", "a2a ms",
                               "sent MiB", "= pairs", "experts MiB", "peak MiB"], rows, note))
    print(f"({time.perf_counter() - started:.0f} s; {os.cpu_count()} CPUs)")
    if args.json:
        records["environment"] = environment(torch.device(args.device))
        records["config"] = {k: str(v) for k, v in vars(args).items()}
        write_json(records, args.json)


if __name__ == "__main__":
    main()
