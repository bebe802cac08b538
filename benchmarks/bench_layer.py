"""Forward and forward+backward time, peak memory and decode speed of moekit's MoE layer, beside a
dense FFN on each GEMM library and transformers' MoE block, all measured in one run.

Rows, all with the same weights and input (legend: T tokens, D model dim, F expert hidden dim,
E experts, K experts per token):

- ``dense (x @ w)``: a plain SwiGLU FFN of hidden size K*F on the same tokens, the same *active*
  FLOPs as the experts (the router is extra work the MoE pays for); torch's ``mm``, i.e. its BLAS
  (MKL on x86 wheels);
- ``dense (oneDNN)`` (CPU, float32): the same FFN with every GEMM on oneDNN
  (``torch.ops.mkldnn._linear_pointwise``), which runs AVX-512 where MKL may not;
- ``moekit <backend>`` for each backend but ``loop`` (``grouped_mm``, ``cpu`` on CPU, ``triton``
  on CUDA): ``from_transformers(block)`` with the backend set, weights shared;
- ``hf eager``, ``hf grouped_mm``, ``hf batched_mm`` (CUDA: also the hub kernels): transformers'
  ``MixtralSparseMoeBlock`` built with ``MixtralConfig(experts_implementation=...)``, weights shared.

A row that cannot run here (transformers not installed, oneDNN missing, a backend for another
device, not enough memory) is listed under its table as skipped, with the reason.

Method. Timing runs in a child process with a fixed environment (large tensors from the heap,
not fresh mmaps: ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``; ``GOMP_SPINCOUNT=10000``
so idle OpenMP threads do not keep other threads off the cores). The rows run interleaved, one
call each per round, and a round in which other processes used more than 8 % of the machine
(``/proc/stat``) is discarded; after ``--max-tries`` rounds it stops and says how many passed.
Times are medians over rounds with the range in brackets; ratios are taken per round (dense time
/ row time: > 1 means the row is faster). CPU time (all threads of the process) is reported too:
on a busy machine it moves less than wall time, but it counts work, not waiting. Peak memory: one
forward+backward above what was resident before (CPU: peak RSS in a child started with
``MALLOC_MMAP_THRESHOLD_=131072``; CUDA: ``max_memory_allocated``). Decode: forward of T = 1, 8,
64 tokens under ``torch.no_grad``, cycling through enough copies of the layer that the weights
come from DRAM, as a fraction of the read bandwidth measured in the same run (a ``sum`` over a
large tensor); bytes = distinct experts hit x 3 D F x element size.

Run from the repository root (about 5 minutes on 2 idle CPU cores; on a CUDA GPU the defaults
become full size, bfloat16):

    python benchmarks/bench_layer.py --json bench_layer.json
    python benchmarks/bench_layer.py --balanced --shapes olmoe,qwen3
    python benchmarks/bench_layer.py --quick          # seconds, for smoke tests
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SHAPES: dict[str, tuple[int, int, int, int]] = {  # full size (D, F, E, K), scaled by --scale
    "mixtral": (4096, 14336, 8, 2),
    "olmoe": (2048, 1024, 64, 8),
    "qwen3": (2048, 768, 128, 8),
}
#: Same-library dense ratio goals of issue 12 (fwd+bwd, moekit's best row).
DENSE_GOALS = {"mixtral": 0.95, "olmoe": 0.9, "qwen3": 0.8}
HF_GOAL = 1.5
HF_IMPLS_CPU: tuple[str, ...] = ("eager", "grouped_mm", "batched_mm")
HF_IMPLS_CUDA: tuple[str, ...] = HF_IMPLS_CPU + ("deepgemm", "sonicmoe")
DTYPES = ("float32", "bfloat16", "float16")
TIMING_ENV = {"MALLOC_MMAP_THRESHOLD_": "4294967296", "MALLOC_TRIM_THRESHOLD_": "68719476736",
              "GOMP_SPINCOUNT": "10000", "PYTHONUNBUFFERED": "1"}
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "PYTHONUNBUFFERED": "1"}
DECODE_COLD_BYTES = 256 * 2**20  # layer copies cycled through: more than any L3


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to run. ``scale`` divides D and F (rounded down to multiples of 8)."""

    shapes: tuple[str, ...] = tuple(SHAPES)
    scale: int = 8
    tokens: int = 2048
    rounds: int = 5
    max_tries: int = 15
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    balanced: bool = False
    memory: bool = True
    decode_tokens: tuple[int, ...] = (1, 8, 64)
    decode_cold_bytes: int = DECODE_COLD_BYTES
    threads: int | None = 2
    seed: int = 0
    clock: str = "wall"

    def __post_init__(self) -> None:
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown or not self.shapes:
            raise ValueError(f"shapes={list(self.shapes)} must be a non-empty subset of "
                             f"{list(SHAPES)}; e.g. --shapes mixtral,olmoe")
        for name in ("scale", "tokens", "rounds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_tries < self.rounds:
            raise ValueError(f"max_tries={self.max_tries} must be >= rounds={self.rounds}")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {list(DTYPES)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r} must be 'cpu' or 'cuda'")
        if self.clock not in ("wall", "cpu"):
            raise ValueError(f"clock={self.clock!r} must be 'wall' or 'cpu'")
        if any(t < 1 for t in self.decode_tokens):
            raise ValueError(f"decode_tokens={self.decode_tokens} must be >= 1 each")

    @classmethod
    def from_json(cls, text: str) -> BenchConfig:
        raw = json.loads(text)
        raw["shapes"], raw["decode_tokens"] = tuple(raw["shapes"]), tuple(raw["decode_tokens"])
        return cls(**raw)


def scaled_shape(name: str, scale: int) -> tuple[int, int, int, int]:
    """(D, F, E, K) of shape ``name`` with D and F divided by ``scale`` (multiples of 8, >= 8)."""
    D, F, E, K = SHAPES[name]
    return max(8, D // scale // 8 * 8), max(8, F // scale // 8 * 8), E, K


# --------------------------------------------------------------------------- the cases


def balanced_routing_(x_TD: Any, router_weight_ED: Any, top_k: int) -> None:
    """Force round-robin top-k: token t goes to experts ``(t*K + j) % E``, j < K, weight 1/K each.

    Overwrites the first E features of ``x_TD`` with a 0/1 pattern and makes the router read only
    them (``W[e, e] = 20``, else 0), so every expert gets T*K/E slots whatever the implementation.
    """
    import torch

    T, D = x_TD.shape
    E = router_weight_ED.shape[0]
    if D < E:
        raise ValueError(f"--balanced needs d_model >= num_experts, got d_model={D} < E={E}; "
                         "lower --scale")
    slots_TK = (torch.arange(T)[:, None] * top_k + torch.arange(top_k)[None, :]) % E
    pattern_TE = torch.zeros(T, E).scatter_(1, slots_TK, 1.0)
    with torch.no_grad():
        x_TD[:, :E] = pattern_TE.to(x_TD)
        router_weight_ED.zero_()
        router_weight_ED[:, :E] = 20.0 * torch.eye(E).to(router_weight_ED)


@dataclass
class Case:
    """One implementation of one shape: a module mapping (1, T, D) -> (1, T, D), or a skip."""

    name: str
    kind: str  # "dense" | "moekit" | "transformers"
    module: Any = None
    skipped: str | None = None


def _dense_modules() -> tuple[type, type]:
    import torch
    from torch import nn

    lp = torch.ops.mkldnn._linear_pointwise

    class DenseSwiGLU(nn.Module):
        """The baseline: ``(silu(x @ w_gate) * (x @ w_up)) @ w_down`` with hidden size K*F."""

        def __init__(self, d_model: int, hidden: int) -> None:
            super().__init__()
            self.w_gate = nn.Parameter(torch.randn(d_model, hidden) * d_model**-0.5)
            self.w_up = nn.Parameter(torch.randn(d_model, hidden) * d_model**-0.5)
            self.w_down = nn.Parameter(torch.randn(hidden, d_model) * hidden**-0.5)

        def mm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return x @ w

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            hid = torch.nn.functional.silu(self.mm(x, self.w_gate)) * self.mm(x, self.w_up)
            return self.mm(hid, self.w_down)

    class _OneDNNMatmul(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w_KN):  # type: ignore[no-untyped-def, override]
            ctx.save_for_backward(x, w_KN)
            return lp(x, w_KN.t(), None, "none", [], "")

        @staticmethod
        def backward(ctx, g):  # type: ignore[no-untyped-def, override]
            x, w_KN = ctx.saved_tensors
            g = g.contiguous()
            return lp(g, w_KN, None, "none", [], ""), lp(x.t(), g.t(), None, "none", [], "")

    class DenseSwiGLUOneDNN(DenseSwiGLU):
        """The same FFN with every GEMM (forward and backward) on oneDNN."""

        def mm(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return _OneDNNMatmul.apply(x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], -1)

    return DenseSwiGLU, DenseSwiGLUOneDNN


def _hf_blocks(D: int, F: int, E: int, K: int, impls: tuple[str, ...]) -> dict[str, Any]:
    """One transformers block per experts implementation, all sharing the first one's weights."""
    import torch
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    blocks: dict[str, Any] = {}
    for impl in impls:
        config = MixtralConfig(hidden_size=D, intermediate_size=F, num_local_experts=E,
                               num_experts_per_tok=K, hidden_act="silu", router_jitter_noise=0.0,
                               experts_implementation=impl)
        block = MixtralSparseMoeBlock(config)
        if not blocks:
            with torch.no_grad():
                block.gate.weight.normal_(0.0, D**-0.5)
                block.experts.gate_up_proj.normal_(0.0, D**-0.5)  # (E, 2F, D): [gate; up]
                block.experts.down_proj.normal_(0.0, F**-0.5)  # (E, D, F)
        else:
            block.load_state_dict(next(iter(blocks.values())).state_dict(), assign=True)
        blocks[impl] = block
    return blocks


def build_cases(name: str, cfg: BenchConfig, device: Any) -> tuple[list[Case], Any, dict[str, Any]]:
    """The cases of shape ``name``, the shared input (1, T, D) and facts about the shape."""
    import torch

    from moekit.kernels import cpu_backend_reason
    from moekit.kernels.cpu_gemm import _onednn_unusable
    from moekit.kernels.moe_triton import triton_status
    from moekit.layers import MoELayer
    from moekit.layers.config import BACKEND_NAMES

    D, F, E, K = scaled_shape(name, cfg.scale)
    dtype, T = getattr(torch, cfg.dtype), cfg.tokens
    torch.manual_seed(cfg.seed)
    x_TD = torch.randn(T, D)
    DenseSwiGLU, DenseSwiGLUOneDNN = _dense_modules()
    dense = DenseSwiGLU(D, K * F)
    cases = [Case("dense (x @ w)", "dense", dense)]
    onednn = DenseSwiGLUOneDNN(D, K * F)
    onednn.load_state_dict(dense.state_dict(), assign=True)
    no_onednn = (_onednn_unusable() if device.type == "cpu" and dtype == torch.float32 else
                 "oneDNN's linear is the CPU float32 comparison only")
    cases.append(Case("dense (oneDNN)", "dense", onednn, skipped=no_onednn))
    impls = HF_IMPLS_CUDA if device.type == "cuda" else HF_IMPLS_CPU
    no_hf = _transformers_missing()
    if no_hf is None:
        from moekit.integrations.transformers import from_transformers

        blocks = _hf_blocks(D, F, E, K, impls)
        first = next(iter(blocks.values()))
        if cfg.balanced:
            balanced_routing_(x_TD, first.gate.weight.data, K)
        source = from_transformers(first, aux_loss_weight=0.0)
    else:
        source = MoELayer(D, F, E, K, router="topk", normalize=True, aux_loss_weight=0.0)
        with torch.no_grad():
            source.router.weight.normal_(0.0, D**-0.5)
        if cfg.balanced:
            balanced_routing_(x_TD, source.router.weight.data, K)
    layers = {}
    for b in (b for b in BACKEND_NAMES if b != "loop"):  # same config, weights shared with `source`
        layers[b] = MoELayer.from_config(dataclasses.replace(
            source.config, dispatch=dataclasses.replace(source.config.dispatch, backend=b)))
        layers[b].load_state_dict(source.state_dict(), assign=True)
        layers[b].train(source.training)
    for b, layer in layers.items():
        skip = None
        if b == "cpu" and cpu_backend_reason(device.type, dtype):
            skip = f"runs grouped_mm here: {cpu_backend_reason(device.type, dtype)}"
        elif b == "triton" and device.type != "cuda":
            skip = "off CUDA only Triton's interpreter runs it: a test tool, not a speed"
        elif b == "triton" and triton_status(device, dtype):
            skip = f"runs grouped_mm here: {triton_status(device, dtype)}"
        cases.append(Case(f"moekit {b}", "moekit", layer, skipped=skip))
    elem = torch.finfo(dtype).bits // 8
    for impl in impls:
        case = Case(f"hf {impl}", "transformers", None if no_hf else blocks[impl], skipped=no_hf)
        need = 3 * T * K * 3 * D * F * elem  # batched_mm gathers a weight copy per token-slot
        if impl == "batched_mm" and not no_hf and need > _available_bytes(device) // 2:
            case.skipped = (f"needs ~{need / 2**30:.0f} GiB (a weight copy per token-slot); "
                            "more than half the free memory")
        cases.append(case)
    for case in cases:
        if case.module is not None:
            case.module.to(device=device, dtype=dtype)
    facts = {"name": name, "d_model": D, "d_ff": F, "num_experts": E, "top_k": K, "tokens": T,
             "scale": cfg.scale, "active_gflop_fwd": 2 * T * K * 3 * D * F / 1e9,
             "full_size": dict(zip(("d_model", "d_ff", "num_experts", "top_k"), SHAPES[name])),
             "weights_loaded_by": ("moekit.integrations.transformers.from_transformers"
                                   if no_hf is None else "random (transformers not installed)")}
    return cases, x_TD.to(device=device, dtype=dtype)[None], facts


def _transformers_missing() -> str | None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return "transformers is not installed (pip install 'moekit[hf]')"
    return None


def _available_bytes(device: Any) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62


def _fns(case: Case, x: Any) -> tuple[Callable[[], object], Callable[[], object], Callable[[], None]]:
    import torch

    module = case.module
    x_req = x.detach().clone().requires_grad_(True)
    grad_out = torch.randn_like(x)

    def fwd() -> object:
        with torch.no_grad():
            return module(x)

    def fwd_bwd() -> object:
        module(x_req).backward(grad_out)
        return None

    def reset() -> None:
        x_req.grad = None
        for p in module.parameters():
            p.grad = None

    return fwd, fwd_bwd, reset


def _probe(case: Case, x: Any) -> Any:
    """Run the case once; mark it skipped (with the reason) if it cannot run here."""
    if case.skipped is not None or case.module is None:
        return None
    try:
        return _fns(case, x)[0]()
    except Exception as err:  # a peer's optional kernel that cannot load: report, keep going
        case.skipped = f"does not run here: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        return None


# --------------------------------------------------------------------------- children


def measure_memory(cfg: BenchConfig) -> dict[str, dict[str, float | None]]:
    """{shape: {case: peak MiB}} for one fwd+bwd of each case (run in the memory child)."""
    import torch

    from _common import peak_mib

    device = torch.device(cfg.device)
    result: dict[str, dict[str, float | None]] = {}
    for name in cfg.shapes:
        cases, x, _ = build_cases(name, cfg, device)
        result[name] = {}
        for case in cases:
            if _probe(case, x) is None:
                result[name][case.name] = None
                continue
            _, fwd_bwd, reset = _fns(case, x)
            reset()
            fwd_bwd()  # warm-up: lazy initialisation is not the layer's working memory
            reset()
            result[name][case.name] = peak_mib(fwd_bwd, device)
            reset()
        del cases, x
        gc.collect()
    return result


def read_bandwidth_gbs(cfg: BenchConfig, device: Any) -> float:
    """Read bandwidth (GB/s): best of 3 ``sum`` passes over a tensor larger than any cache."""
    import time

    import torch

    from _common import synchronize

    t = torch.ones(max(cfg.decode_cold_bytes, 2**24) // 4, device=device)
    t.sum()
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        t0 = time.perf_counter()
        t.sum()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return t.numel() * 4 / best / 1e9


def _decode(name: str, cfg: BenchConfig, device: Any, cases: list[Case], bandwidth: float,
            ) -> list[dict[str, Any]]:
    """Forward-only steps of T in ``cfg.decode_tokens``, cold weights, as % of bandwidth."""
    import copy

    import torch

    from _common import interleave, ratio_stats

    D, F, E, K = scaled_shape(name, cfg.scale)
    dtype = getattr(torch, cfg.dtype)
    elem = torch.finfo(dtype).bits // 8
    layer_bytes = E * 3 * D * F * elem
    n_copies = max(2, -(-cfg.decode_cold_bytes // layer_bytes))
    runnable = [c for c in cases if c.kind != "dense" and c.skipped is None]
    modules = [c.module for c in runnable]
    # one deepcopy of all modules per copy: weights shared between rows stay shared
    clones = [modules] + [copy.deepcopy(modules) for _ in range(n_copies - 1)]
    copies = {c.name: [clone[i] for clone in clones] for i, c in enumerate(runnable)}
    rows = []
    for T in cfg.decode_tokens:
        g = torch.Generator().manual_seed(cfg.seed + T)
        x = torch.randn(1, T, D, generator=g).to(device=device, dtype=dtype)
        moekit = next((c for c in runnable if c.kind == "moekit"), None)
        hit = E
        if moekit is not None:
            with torch.no_grad():
                hit = int(moekit.module.router(x.view(T, D)).indices_TK.unique().numel())

        def step(mods: list[Any], x: Any = x) -> Callable[[], object]:
            def run() -> object:
                with torch.no_grad():
                    for m in mods:
                        m(x)
                return None
            return run

        timing = interleave({c.name: step(copies[c.name]) for c in runnable}, device,
                            rounds=cfg.rounds, max_tries=cfg.max_tries, warmup=cfg.warmup)
        times = timing.wall_ms if cfg.clock == "wall" else timing.cpu_ms
        per_step = {n: [t / n_copies for t in ts] for n, ts in times.items()}
        hf = [n for n in per_step if n.startswith("hf ")]
        best_hf = min(hf, key=lambda n: sorted(per_step[n])[len(per_step[n]) // 2]) if hf else None
        bytes_read = hit * 3 * D * F * elem
        for n, ts in per_step.items():
            med = sorted(ts)[len(ts) // 2]
            rows.append({"tokens": T, "name": n, "ms_per_step": med, "ms_min": min(ts),
                         "ms_max": max(ts), "experts_hit": hit, "bytes": bytes_read,
                         "bandwidth_fraction": bytes_read / (med / 1e3) / (bandwidth * 1e9),
                         "ratio_vs_best_hf": ratio_stats(per_step[best_hf], ts) if best_hf else None,
                         "timing": timing.summary()})
    return rows


def run_timing(cfg: BenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """Every case of every shape, interleaved with the contention guard (the timing child)."""
    import torch

    from _common import environment, interleave, ratio_stats

    device = torch.device(cfg.device)
    if cfg.threads is not None and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    from moekit.kernels import available_backends, choose_backend

    record: dict[str, Any] = {
        "benchmark": "bench_layer", "config": asdict(cfg), "device": str(device),
        "dtype": cfg.dtype, "environment": environment(device),
        "backends": available_backends(device, getattr(torch, cfg.dtype)),
        "automatic_backend": list(choose_backend(device, getattr(torch, cfg.dtype))),
        "routing": ("balanced: round-robin top-k forced through the router weights and the first "
                    "E input features" if cfg.balanced else
                    "natural: top-k of a random (N(0, 1/D)) router on N(0, 1) inputs"),
        "shapes": [],
    }
    if cfg.decode_tokens:
        record["read_bandwidth_gbs"] = read_bandwidth_gbs(cfg, device)
    for name in cfg.shapes:
        cases, x, facts = build_cases(name, cfg, device)
        log(f"{name}: d={facts['d_model']} f={facts['d_ff']} E={facts['num_experts']} "
            f"k={facts['top_k']} T={facts['tokens']}")
        outs = {c.name: _probe(c, x) for c in cases}
        ref_name = "hf eager" if outs.get("hf eager") is not None else "moekit grouped_mm"
        runnable = [c for c in cases if c.skipped is None]
        fns = {c.name: _fns(c, x) for c in runnable}
        fwd = interleave({n: f[0] for n, f in fns.items()}, device, rounds=cfg.rounds,
                         max_tries=cfg.max_tries, warmup=cfg.warmup)
        fb = interleave({n: f[1] for n, f in fns.items()}, device, rounds=cfg.rounds,
                        max_tries=cfg.max_tries, warmup=cfg.warmup,
                        setup={n: f[2] for n, f in fns.items()})
        for f in fns.values():
            f[2]()
        hf = [c.name for c in runnable if c.kind == "transformers"]
        best_hf = min(hf, key=lambda n: fb.median(n, cfg.clock)) if hf else None
        dense_names = [n for n in ("dense (x @ w)", "dense (oneDNN)") if n in fns]
        best_dense = min(dense_names, key=lambda n: fb.median(n, cfg.clock))
        rows = []
        for c in cases:
            row: dict[str, Any] = {"name": c.name, "kind": c.kind, "skipped": c.skipped}
            if c.skipped is None:
                out, ref = outs[c.name], outs.get(ref_name)
                row.update({
                    "fwd_ms": fwd.wall_ms[c.name], "fwd_bwd_ms": fb.wall_ms[c.name],
                    "fwd_cpu_ms": fwd.cpu_ms[c.name], "fwd_bwd_cpu_ms": fb.cpu_ms[c.name],
                    "max_abs_diff_vs_ref": (float((out.float() - ref.float()).abs().max())
                                            if c.kind != "dense" and ref is not None else None),
                })
                for clock, times in (("wall", fb.wall_ms), ("cpu", fb.cpu_ms)):
                    sfx = "" if clock == "wall" else "_cpu"
                    mine = times[c.name]
                    row[f"ratio_vs_dense_mkl{sfx}"] = ratio_stats(times["dense (x @ w)"], mine)
                    row[f"ratio_vs_dense_onednn{sfx}"] = ratio_stats(
                        times.get("dense (oneDNN)", []), mine)
                    row[f"ratio_vs_best_dense{sfx}"] = ratio_stats(times[best_dense], mine)
                    row[f"ratio_vs_best_hf{sfx}"] = (ratio_stats(times[best_hf], mine)
                                                     if best_hf else None)
                row["ratio_vs_dense_mkl_fwd"] = ratio_stats(fwd.wall_ms["dense (x @ w)"],
                                                            fwd.wall_ms[c.name])
            rows.append(row)
            msg = (f"  {c.name}: skipped ({c.skipped})" if c.skipped else
                   f"  {c.name}: fwd {fwd.median(c.name):.1f} ms, fwd+bwd {fb.median(c.name):.1f} ms")
            log(msg)
        facts.update({"rows": rows, "best_hf": best_hf, "best_dense": best_dense,
                      "reference": ref_name, "timing_fwd": fwd.summary(),
                      "timing_fwd_bwd": fb.summary(), "notes": fwd.notes + fb.notes})
        if cfg.decode_tokens:
            facts["decode"] = _decode(name, cfg, device, cases, record["read_bandwidth_gbs"])
        record["shapes"].append(facts)
        del cases, x, fns
        gc.collect()
    return record


def _child(kind: str, cfg: BenchConfig, env: dict[str, str]) -> tuple[dict[str, Any], str | None]:
    """Run ``bench_layer.py --<kind>-child CONFIG`` with ``env``; its last stdout line is JSON."""
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), f"--{kind}-child",
                           json.dumps(asdict(cfg))], env=dict(os.environ, **env),
                          stdout=subprocess.PIPE, stderr=None if kind == "timing" else subprocess.PIPE,
                          text=True, check=False)
    if proc.returncode != 0:
        tail = ((proc.stderr or "").strip().splitlines() or ["(see the output above)"])[-1]
        return {}, f"{kind} child process failed (exit {proc.returncode}): {tail}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


# --------------------------------------------------------------------------- report


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ms(ts: list[float] | None) -> str:
    if not ts:
        return "-"
    med = sorted(ts)[len(ts) // 2]
    return f"{med:.1f} [{min(ts):.1f}-{max(ts):.1f}]"


def _ratio(r: dict[str, float] | None) -> str:
    return "-" if r is None else f"{r['median']:.2f} [{r['min']:.2f}-{r['max']:.2f}]"


def format_record(record: dict[str, Any]) -> str:
    """One table per shape (and a decode table), as printed by the benchmark."""
    from _common import format_table

    env = record["environment"]
    parts = [f"moekit {env['moekit']}, torch {env['torch']}, transformers {env['transformers']}, "
             f"{record['device']} ({env['device_name']}, {env['cpu_capability']}), "
             f"{record['dtype']}, {env['torch_threads']} threads, load average at start "
             f"{_num(env['load_average'][0] if env['load_average'] else None, '.1f')}; routing "
             f"{record['routing']}",
             f"automatic moekit backend here: {record['automatic_backend'][0]} "
             f"({record['automatic_backend'][1]})"]
    if "read_bandwidth_gbs" in record:
        parts.append(f"read bandwidth measured in this run: {record['read_bandwidth_gbs']:.1f} GB/s")
    sfx = "" if record["config"].get("clock", "wall") == "wall" else "_cpu"
    for shape in record["shapes"]:
        t = shape["timing_fwd_bwd"]
        title = (f"\n{shape['name']}-like: T={shape['tokens']} d={shape['d_model']} "
                 f"f={shape['d_ff']} E={shape['num_experts']} k={shape['top_k']} (full size / "
                 f"{shape['scale']}), {shape['active_gflop_fwd']:.1f} active GFLOP fwd; "
                 f"{t['rounds_kept']} rounds kept of {t['rounds_tried']} tried (fwd+bwd)")
        on = "" if not sfx else " (CPU)"
        header = ["implementation", "fwd ms", "fwd+bwd ms", "f+b CPU ms", "peak MiB",
                  f"MKL dense/x{on}", f"oneDNN dense/x{on}", f"best HF/x{on}",
                  f"max|x-{shape['reference']}|"]
        rows, skipped = [], []
        for r in shape["rows"]:
            if r["skipped"]:
                skipped.append(f"  {r['name']}: skipped, {r['skipped']}")
                continue
            rows.append([r["name"], _ms(r["fwd_ms"]), _ms(r["fwd_bwd_ms"]), _ms(r["fwd_bwd_cpu_ms"]),
                         _num(r.get("peak_mib"), ".0f"), _ratio(r[f"ratio_vs_dense_mkl{sfx}"]),
                         _ratio(r[f"ratio_vs_dense_onednn{sfx}"]), _ratio(r[f"ratio_vs_best_hf{sfx}"]),
                         _num(r.get("max_abs_diff_vs_ref"), ".1e")])
        notes = skipped + [f"  note: {n}" for n in shape.get("notes", [])] + _goals(shape, sfx)
        parts.append(format_table(title, header, rows, "\n".join(notes)))
        if shape.get("decode"):
            dh = ["decode", "T", "ms/step", "experts hit", "% of read BW", "best HF/x"]
            drows = [[d["name"], str(d["tokens"]),
                      f"{d['ms_per_step']:.2f} [{d['ms_min']:.2f}-{d['ms_max']:.2f}]",
                      str(d["experts_hit"]), f"{100 * d['bandwidth_fraction']:.0f}",
                      _ratio(d["ratio_vs_best_hf"])] for d in shape["decode"]]
            parts.append(format_table(f"{shape['name']}-like decode (forward, cold weights, "
                                      f"{'CPU' if sfx else 'wall'} time)", dh, drows))
    note = record.get("memory_method") or "peak memory not measured"
    if record.get("memory_not_measured"):
        note += f" (not measured: {record['memory_not_measured']})"
    clock = "CPU time (all threads)" if sfx else "wall time"
    parts.append(f"\nratios: {clock} of the baseline / {clock} of the row, fwd+bwd, per round; "
                 "median [min-max] over rounds; > 1 means the row is faster.\n" + note)
    return "\n".join(parts)


def _goals(shape: dict[str, Any], sfx: str) -> list[str]:
    moekit = [r for r in shape["rows"] if r["kind"] == "moekit" and not r["skipped"]]
    if not moekit:
        return []
    best = max(moekit, key=lambda r: r[f"ratio_vs_best_dense{sfx}"]["median"])
    clock = "CPU time" if sfx else "wall time"
    out = [f"  goal (issue 12, {clock}): {best['name']} vs {shape['best_dense']} (the faster "
           f"dense) {best[f'ratio_vs_best_dense{sfx}']['median']:.2f}, goal "
           f"{DENSE_GOALS[shape['name']]}"]
    if best[f"ratio_vs_best_hf{sfx}"]:
        out[0] += (f"; vs {shape['best_hf']} {best[f'ratio_vs_best_hf{sfx}']['median']:.2f}, "
                   f"goal {HF_GOAL}")
    return out


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="comma-separated shapes from mixtral (d 4096, f 14336, E 8, k 2), "
                             "olmoe (2048, 1024, 64, 8), qwen3 (2048, 768, 128, 8) (default: all)")
    parser.add_argument("--scale", type=int, default=None,
                        help="divide d and f by this (default: 8 on CPU, 1 on CUDA; 16 with --quick)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens per batch T (default: 2048; 32 with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="timed rounds kept per table (default: 5; 2 with --quick)")
    parser.add_argument("--max-tries", type=int, default=None,
                        help="rounds tried at most before giving up on the contention guard "
                             "(default: 3 x rounds)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default: 1)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run; auto = cuda if available (default: auto)")
    parser.add_argument("--dtype", choices=("auto", *DTYPES), default="auto",
                        help="dtype of weights and inputs (default: float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads, ignored on CUDA (default: 2; 1 with --quick)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="clock of the ratio columns: wall time (default; what counts on an "
                             "idle machine) or CPU time of all threads (moves less on a busy "
                             "machine, but counts work, not speed; use with --threads 1)")
    parser.add_argument("--balanced", action="store_true",
                        help="force round-robin top-k routing (every expert gets T*k/E slots)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory child")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode rows")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes, few rounds, for smoke tests (seconds)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (default: 0)")
    parser.add_argument("--json", metavar="PATH", default=None,
                        help="also write every number, versions, device and shapes to PATH")
    parser.add_argument("--timing-child", metavar="CONFIG", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-child", metavar="CONFIG", default=None, help=argparse.SUPPRESS)


def resolve(args: argparse.Namespace) -> BenchConfig:
    """Parsed flags -> :class:`BenchConfig` (device ``auto`` needs torch)."""
    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"

    def pick(value: int | None, quick: int, cpu: int, gpu: int) -> int:
        if value is not None:
            return value
        return quick if args.quick else (gpu if cuda else cpu)

    rounds = pick(args.rounds, 2, 5, 5)
    return BenchConfig(
        shapes=tuple(s.strip() for s in args.shapes.split(",") if s.strip()),
        scale=pick(args.scale, 16, 8, 1), tokens=pick(args.tokens, 32, 2048, 2048),
        rounds=rounds, max_tries=args.max_tries if args.max_tries is not None else 3 * rounds,
        warmup=args.warmup, device=device,
        dtype=args.dtype if args.dtype != "auto" else ("bfloat16" if cuda else "float32"),
        balanced=args.balanced, memory=not args.no_memory,
        decode_tokens=() if args.no_decode else ((1, 8) if args.quick else (1, 8, 64)),
        decode_cold_bytes=16 * 2**20 if args.quick else DECODE_COLD_BYTES,
        threads=pick(args.threads, 1, 2, 2), seed=args.seed, clock=args.clock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    if args.timing_child or args.memory_child:
        cfg = BenchConfig.from_json(args.timing_child or args.memory_child)
        if args.memory_child:
            import torch

            if cfg.threads is not None:
                torch.set_num_threads(cfg.threads)
            print(json.dumps(measure_memory(cfg)))
        else:
            print(json.dumps(run_timing(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))))
        return 0
    try:
        cfg = resolve(args)
    except ValueError as err:
        parser.error(str(err))
    record, failure = _child("timing", cfg, TIMING_ENV)
    if failure:
        print(f"bench_layer: {failure}", file=sys.stderr)
        return 1
    record["timing_env"] = TIMING_ENV
    record["memory_method"] = None
    record["memory_not_measured"] = None
    if cfg.memory:
        record["memory_method"] = (
            "peak MiB = max_memory_allocated during one fwd+bwd minus what was allocated before"
            if cfg.device == "cuda" else
            "peak MiB = peak RSS (VmHWM) during one fwd+bwd minus RSS before it, in a child "
            "process with MALLOC_MMAP_THRESHOLD_=131072; weight grads included")
        from _common import cpu_peak_reason

        reason = cpu_peak_reason() if cfg.device == "cpu" else None
        memory: dict[str, Any] = {}
        if reason is None:
            print("measuring peak memory in a child process ...", flush=True)
            memory, reason = _child("memory", dataclasses.replace(cfg, decode_tokens=()), MEMORY_ENV)
        record["memory_not_measured"] = reason
        for shape in record["shapes"]:
            for row in shape["rows"]:
                row["peak_mib"] = memory.get(shape["name"], {}).get(row["name"])
    print(format_record(record))
    if args.json:
        from _common import write_json

        write_json(record, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
