"""Measuring core of the MoE layer benchmark (``benchmarks/bench_layer.py`` and ``moekit bench``).

Legend: T tokens, D model dim, F expert hidden dim, E experts, K experts per token.

For each shape it builds, with the same weights and the same input:

- ``dense``: a plain-PyTorch SwiGLU FFN of hidden size K*F on the same T tokens: the same *active*
  FLOPs as the experts (the router is extra work the MoE must pay for);
- ``moekit <backend>``: :class:`moekit.layers.MoELayer` with each dispatch backend;
- ``hf <impl>``: transformers' ``MixtralSparseMoeBlock`` with each experts implementation that runs
  (``config._experts_implementation``: ``eager``, ``grouped_mm``, ``batched_mm``, and on CUDA the
  hub-kernel ones, which are reported as skipped when they cannot load).

and measures forward time (under ``torch.no_grad``), forward+backward time (input and weights
require grad, weight grads reset untimed before each repeat) as the median of ``repeats`` after
``warmup`` runs (``perf_counter`` on CPU; CUDA events on CUDA), and the peak memory of one
forward+backward *above* what is resident before it (weights and input), gradients included:
``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak resident set (VmHWM, reset through
``/proc/self/clear_refs``) of a child process started with ``MALLOC_MMAP_THRESHOLD_`` fixed so that
freed tensors go back to the OS rather than hide in the heap.

Ratios are throughput ratios: ``dense time / implementation time`` (>= 1 is faster than dense)
and ``best transformers time / implementation time``.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from moekit import __version__
from moekit.layers import GroupedExperts, MoELayer
from moekit.layers.config import BACKEND_NAMES

# Full-size shapes (d_model, d_ff per expert, experts, top_k), scaled down by ``scale``.
SHAPES: dict[str, tuple[int, int, int, int]] = {
    "mixtral": (4096, 14336, 8, 2),
    "olmoe": (2048, 1024, 64, 8),
    "qwen3": (2048, 768, 128, 8),
}
HF_IMPLS_CPU: tuple[str, ...] = ("eager", "grouped_mm", "batched_mm")
HF_IMPLS_CUDA: tuple[str, ...] = HF_IMPLS_CPU + ("deepgemm", "sonicmoe")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                                  "float16": torch.float16}
MEMORY_HEADER = {
    "cuda": "peak MiB = max_memory_allocated during one fwd+bwd minus what was allocated before "
            "(weights, input); weight grads included",
    "cpu": "peak MiB = peak RSS (VmHWM) during one fwd+bwd minus RSS before it, in a child process "
           "with MALLOC_MMAP_THRESHOLD_=131072; weight grads included",
}


@dataclass(frozen=True, kw_only=True)
class BenchConfig:
    """What to run. ``scale`` divides d_model and d_ff (rounded down to a multiple of 8)."""

    shapes: tuple[str, ...] = tuple(SHAPES)
    scale: int = 8
    tokens: int = 2048
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    balanced: bool = False
    memory: bool = True
    threads: int | None = 2
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [s for s in self.shapes if s not in SHAPES]
        if unknown or not self.shapes:
            raise ValueError(f"shapes={list(self.shapes)} must be a non-empty subset of "
                             f"{list(SHAPES)}; e.g. --shapes mixtral,olmoe")
        for name in ("scale", "tokens", "repeats"):
            value = getattr(self, name)
            if value < 1:
                raise ValueError(f"{name}={value} must be >= 1")
        if self.warmup < 0:
            raise ValueError(f"warmup={self.warmup} must be >= 0")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {list(DTYPES)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r} must be 'cpu' or 'cuda' (resolve 'auto' first)")


def scaled_shape(name: str, scale: int) -> tuple[int, int, int, int]:
    """(D, F, E, K) of shape ``name`` with D and F divided by ``scale`` (multiples of 8, >= 8)."""
    D, F, E, K = SHAPES[name]
    return max(8, D // scale // 8 * 8), max(8, F // scale // 8 * 8), E, K


# --------------------------------------------------------------------------- generic helpers


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device: torch.device, *, repeats: int, warmup: int,
            setup: Callable[[], None] | None = None) -> float:
    """Median wall time of ``fn()`` in milliseconds; ``setup()`` runs untimed before each call."""
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    synchronize(device)
    times: list[float] = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _proc_status_kib(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field_name}")


def cpu_peak_reason() -> str | None:
    """Why the CPU peak-RSS measurement cannot run here, or None if it can."""
    if not sys.platform.startswith("linux"):
        return f"CPU peak memory needs Linux /proc (this is {sys.platform})"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _proc_status_kib("VmHWM")
    except OSError as err:
        return f"cannot reset the peak RSS through /proc/self/clear_refs: {err}"
    return None


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of ``fn()`` above what is resident before it, in MiB (see the module doc)."""
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    before_kib = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    fn()
    return (_proc_status_kib("VmHWM") - before_kib) / 1024


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and machine, for the JSON record."""
    info: dict[str, Any] = {
        "moekit": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    info["device_name"] = (torch.cuda.get_device_name(device) if device.type == "cuda"
                           else platform.processor() or platform.machine())
    return info


def format_table(title: str, header: list[str], rows: list[list[str]], note: str = "") -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [title, line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    if note:
        out.append(note)
    return "\n".join(out)


# --------------------------------------------------------------------------- the cases


@dataclass
class Case:
    """One implementation of one shape: a module mapping (1, T, D) -> (1, T, D)."""

    name: str
    kind: str  # "dense" | "moekit" | "transformers"
    module: nn.Module | None
    prepare: Callable[[], None] = field(default=lambda: None)  # e.g. pick the HF experts implementation; cheap
    skipped: str | None = None


class DenseSwiGLU(nn.Module):
    """The baseline: ``(silu(x @ w_gate) * (x @ w_up)) @ w_down`` with hidden size H = K*F."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Parameter(torch.randn(d_model, hidden) * d_model**-0.5)
        self.w_up = nn.Parameter(torch.randn(d_model, hidden) * d_model**-0.5)
        self.w_down = nn.Parameter(torch.randn(hidden, d_model) * hidden**-0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.silu(x @ self.w_gate) * (x @ self.w_up)) @ self.w_down


def balanced_routing_(x_TD: torch.Tensor, router_weight_ED: torch.Tensor, top_k: int) -> None:
    """Force round-robin top-k: token t goes to experts ``(t*K + j) % E``, j < K, weight 1/K each.

    Overwrites the first E features of ``x_TD`` with a 0/1 pattern and makes the router read only
    them (``W[e, e] = 20``, else 0), so every expert gets T*K/E slots whatever the implementation.
    """
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


def _hf_block(D: int, F: int, E: int, K: int) -> Any:
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    options: dict[str, Any] = dict(
        hidden_size=D, intermediate_size=F, num_local_experts=E, num_experts_per_tok=K,
        hidden_act="silu", router_jitter_noise=0.0, experts_implementation="eager")
    config = MixtralConfig(**options)
    block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        block.gate.weight.normal_(0.0, D**-0.5)
        block.experts.gate_up_proj.normal_(0.0, D**-0.5)  # (E, 2F, D): [gate; up]
        block.experts.down_proj.normal_(0.0, F**-0.5)  # (E, D, F)
    return block


def moekit_from_hf(block: Any, backend: str) -> tuple[MoELayer, str]:
    """A MoELayer with ``block``'s weights; says which loader it used."""
    D = block.gate.weight.shape[1]
    E, twoF, _ = block.experts.gate_up_proj.shape
    layer = MoELayer(D, twoF // 2, E, block.top_k, router="topk", normalize=True,
                     aux_loss_weight=0.0, backend=backend)  # type: ignore[arg-type]
    if importlib.util.find_spec("moekit.integrations.transformers") is not None:
        from moekit.integrations.transformers import from_transformers

        layer.load_state_dict(from_transformers(block).state_dict())
        return layer, "moekit.integrations.transformers.from_transformers"
    F = twoF // 2
    gate_up = block.experts.gate_up_proj.detach()
    experts = layer.experts
    assert isinstance(experts, GroupedExperts) and experts.w_gate is not None  # swiglu: gated
    with torch.no_grad():
        layer.router.weight.copy_(block.gate.weight)
        experts.w_gate.copy_(gate_up[:, :F].transpose(1, 2))
        experts.w_up.copy_(gate_up[:, F:].transpose(1, 2))
        experts.w_down.copy_(block.experts.down_proj.detach().transpose(1, 2))
    return layer, "copied by moekit.bench (gate_up_proj -> w_gate, w_up; down_proj -> w_down)"


def _implementation_setter(block: Any, impl: str) -> Callable[[], None]:
    """Selects transformers' experts implementation of ``block`` (read at each forward)."""

    def prepare() -> None:
        block.experts.config._experts_implementation = impl

    return prepare


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 2**62


def build_cases(name: str, cfg: BenchConfig, device: torch.device
                ) -> tuple[list[Case], torch.Tensor, dict[str, Any]]:
    """The cases of shape ``name``, the shared input (1, T, D) and facts about the shape."""
    D, F, E, K = scaled_shape(name, cfg.scale)
    dtype, T = DTYPES[cfg.dtype], cfg.tokens
    torch.manual_seed(cfg.seed)
    x_TD = torch.randn(T, D)
    block = _hf_block(D, F, E, K)
    if cfg.balanced:
        balanced_routing_(x_TD, block.gate.weight.data, K)
    dense = DenseSwiGLU(D, K * F)
    cases = [Case("dense SwiGLU (hidden K*F)", "dense", dense)]
    loader = ""
    for backend in BACKEND_NAMES:
        if backend == "triton" and device.type != "cuda":
            continue  # off CUDA only Triton's interpreter runs it: a test tool, not a speed
        layer, loader = moekit_from_hf(block, backend)
        cases.append(Case(f"moekit {backend}", "moekit", layer))
    impls = HF_IMPLS_CUDA if device.type == "cuda" else HF_IMPLS_CPU
    elem = torch.finfo(dtype).bits // 8
    for impl in impls:
        case = Case(f"hf {impl}", "transformers", block, prepare=_implementation_setter(block, impl))
        if impl == "batched_mm":  # gathers a (D, 3F) weight copy per token-slot, kept for backward
            need = 3 * T * K * 3 * D * F * elem
            if need > _available_bytes(device) // 2:
                case.skipped = (f"needs ~{need / 2**30:.0f} GiB (a weight copy per token-slot); "
                                "more than half the free memory")
        cases.append(case)
    for case in cases:
        if case.module is not None:
            case.module.to(device=device, dtype=dtype)
    facts = {"name": name, "d_model": D, "d_ff": F, "num_experts": E, "top_k": K, "tokens": T,
             "scale": cfg.scale, "full_size": dict(zip(("d_model", "d_ff", "num_experts", "top_k"),
                                                       SHAPES[name])),
             "active_gflop_fwd": 2 * T * K * 3 * D * F / 1e9, "weights_loaded_by": loader}
    return cases, x_TD.to(device=device, dtype=dtype)[None], facts


def _fwd_bwd_fns(case: Case, x: torch.Tensor) -> tuple[Callable[[], object], Callable[[], object],
                                                       Callable[[], None]]:
    module = case.module
    assert module is not None
    x_req = x.detach().clone().requires_grad_(True)
    grad_out = torch.randn_like(x)

    def fwd() -> object:
        case.prepare()
        with torch.no_grad():
            return module(x)

    def fwd_bwd() -> object:
        case.prepare()
        module(x_req).backward(grad_out)
        return None

    def reset() -> None:
        x_req.grad = None
        for p in module.parameters():
            p.grad = None

    return fwd, fwd_bwd, reset


def _probe(case: Case, x: torch.Tensor) -> torch.Tensor | None:
    """Run the case once; mark it skipped (with the reason) if it cannot run here."""
    if case.skipped is not None or case.module is None:
        return None
    try:
        fwd, _, _ = _fwd_bwd_fns(case, x)
        out = fwd()
        assert isinstance(out, torch.Tensor)
        return out
    except Exception as err:  # a peer's optional kernel that cannot load: report, keep going
        case.skipped = f"does not run here: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        return None


def measure_memory(cfg: BenchConfig, device: torch.device) -> dict[str, dict[str, float | None]]:
    """{shape: {case: peak MiB}} for one fwd+bwd of each case (see the module docstring)."""
    result: dict[str, dict[str, float | None]] = {}
    for name in cfg.shapes:
        cases, x, _ = build_cases(name, cfg, device)
        result[name] = {}
        for case in cases:
            if _probe(case, x) is None:
                result[name][case.name] = None
                continue
            _, fwd_bwd, reset = _fwd_bwd_fns(case, x)
            reset()
            fwd_bwd()  # warm-up: lazy initialisation is not the layer's working memory
            reset()
            result[name][case.name] = peak_mib(fwd_bwd, device)
            reset()
        del cases, x
        gc.collect()
    return result


def _memory_in_child(cfg: BenchConfig) -> tuple[dict[str, dict[str, float | None]], str | None]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "moekit.bench", json.dumps(asdict(cfg))],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return {}, f"memory child process failed (exit {proc.returncode}): {tail}"
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every case of every shape; returns the JSON-ready record (see the module docstring)."""
    device = torch.device(cfg.device)
    if cfg.threads is not None and device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    memory_note: str | None = None
    memory: dict[str, dict[str, float | None]] = {}
    if cfg.memory and device.type == "cpu":
        memory_note = cpu_peak_reason()
        if memory_note is None:
            log("measuring peak memory in a child process ...")
            memory, memory_note = _memory_in_child(cfg)
    record: dict[str, Any] = {
        "benchmark": "bench_layer", "config": asdict(cfg), "device": str(device),
        "dtype": cfg.dtype, "environment": environment(device),
        "routing": ("balanced: round-robin top-k forced through the router weights and the first "
                    "E input features" if cfg.balanced else
                    "natural: top-k of a random (N(0, 1/D)) router on N(0, 1) inputs"),
        "memory_method": MEMORY_HEADER[device.type] if cfg.memory else None,
        "memory_not_measured": memory_note, "shapes": [],
    }
    for name in cfg.shapes:
        cases, x, facts = build_cases(name, cfg, device)
        if cfg.memory and device.type == "cuda":
            memory[name] = measure_memory(replace(cfg, shapes=(name,)), device)[name]
        log(f"{name}: d={facts['d_model']} f={facts['d_ff']} E={facts['num_experts']} "
            f"k={facts['top_k']} T={facts['tokens']}")
        reference: torch.Tensor | None = None
        rows: list[dict[str, Any]] = []
        for case in cases:
            out = _probe(case, x)
            row: dict[str, Any] = {"name": case.name, "kind": case.kind, "skipped": case.skipped,
                                   "fwd_ms": None, "fwd_bwd_ms": None,
                                   "peak_mib": memory.get(name, {}).get(case.name)}
            if case.name == "hf eager":
                reference = out
            rows.append(row)
            if out is None:
                log(f"  {case.name}: skipped ({case.skipped})")
                continue
            row["_out"] = out
            fwd, fwd_bwd, reset = _fwd_bwd_fns(case, x)
            row["fwd_ms"] = time_ms(fwd, device, repeats=cfg.repeats, warmup=cfg.warmup)
            row["fwd_bwd_ms"] = time_ms(fwd_bwd, device, repeats=cfg.repeats, warmup=cfg.warmup,
                                        setup=reset)
            reset()
            log(f"  {case.name}: fwd {row['fwd_ms']:.1f} ms, fwd+bwd {row['fwd_bwd_ms']:.1f} ms")
        dense = rows[0]
        hf_rows = [r for r in rows if r["kind"] == "transformers" and r["fwd_bwd_ms"] is not None]
        best_hf = min(hf_rows, key=lambda r: r["fwd_bwd_ms"]) if hf_rows else None
        for row in rows:
            out = row.pop("_out", None)
            if row["kind"] != "dense" and out is not None and reference is not None:
                row["max_abs_diff_vs_hf_eager"] = float((out.float() - reference.float()).abs().max())
            row["ratio_vs_dense_fwd"] = _ratio(dense["fwd_ms"], row["fwd_ms"])
            row["ratio_vs_dense_fwd_bwd"] = _ratio(dense["fwd_bwd_ms"], row["fwd_bwd_ms"])
            row["ratio_vs_best_hf_fwd_bwd"] = _ratio(best_hf["fwd_bwd_ms"] if best_hf else None,
                                                     row["fwd_bwd_ms"])
        facts["best_hf"] = best_hf["name"] if best_hf else None
        facts["rows"] = rows
        record["shapes"].append(facts)
        del cases, x
        gc.collect()
    return record


def format_record(record: dict[str, Any]) -> str:
    """One table per shape, as printed by the benchmark."""

    def num(v: float | None, fmt: str) -> str:
        return "-" if v is None else format(v, fmt)

    env = record["environment"]
    parts = [f"moekit {env['moekit']}, torch {env['torch']}, transformers {env['transformers']}, "
             f"{record['device']} ({env['device_name']}), {record['dtype']}, "
             f"{env['torch_threads']} threads; routing {record['routing']}"]
    for shape in record["shapes"]:
        title = (f"\n{shape['name']}-like: T={shape['tokens']} d={shape['d_model']} "
                 f"f={shape['d_ff']} E={shape['num_experts']} k={shape['top_k']} (full size / "
                 f"{shape['scale']}), {shape['active_gflop_fwd']:.1f} active GFLOP fwd")
        header = ["implementation", "fwd ms", "fwd+bwd ms", "peak MiB", "dense/x f+b",
                  "best HF/x f+b", "max|x-hf eager|"]
        rows, skipped = [], []
        for r in shape["rows"]:
            if r["skipped"]:
                skipped.append(f"  {r['name']}: skipped, {r['skipped']}")
                continue
            rows.append([r["name"], num(r["fwd_ms"], ".1f"), num(r["fwd_bwd_ms"], ".1f"),
                         num(r["peak_mib"], ".0f"), num(r["ratio_vs_dense_fwd_bwd"], ".2f"),
                         num(r["ratio_vs_best_hf_fwd_bwd"], ".2f"),
                         num(r.get("max_abs_diff_vs_hf_eager"), ".1e")])
        parts.append(format_table(title, header, rows, "\n".join(skipped)))
    note = record["memory_method"] or "peak memory not measured"
    if record["memory_not_measured"]:
        note += f" (not measured: {record['memory_not_measured']})"
    parts.append("\nratios: time of dense (or of the best transformers implementation) / time "
                 "of the row, fwd+bwd; > 1 means the row is faster.\n" + note)
    return "\n".join(parts)


if __name__ == "__main__":  # the memory child process: python -m moekit.bench '<config json>'
    _cfg = json.loads(sys.argv[1])
    _cfg["shapes"] = tuple(_cfg["shapes"])
    _config = BenchConfig(**_cfg)
    if _config.threads is not None:
        torch.set_num_threads(_config.threads)
    print(json.dumps(measure_memory(_config, torch.device(_config.device))))
