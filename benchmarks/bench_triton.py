"""Time moekit's Triton MoE kernels beside a plain torch._grouped_mm layer and a dense matmul.

Needs a CUDA GPU (the kernels' correctness on CPU is tested under TRITON_INTERPRET=1 by
tests/kernels/test_moe_triton.py; timing the interpreter means nothing). The expert FFN only
(routing given, no router), SwiGLU, bfloat16 by default. Rows per shape:

- ``dense``: one SwiGLU FFN of hidden K*F on the same T tokens: the same useful FLOPs
  (``2 * T * K * D * 3F`` forward, three times that forward+backward); the ceiling.
- ``grouped_mm``: sort by expert, gather, ``torch._grouped_mm`` twice, weight, gather-sum combine
  (plain torch, autograd through torch's own formulas).
- ``triton``: :func:`moekit.kernels.moe_triton.moe_ffn_triton` (one row per ``--tiles`` given).

Columns: forward and forward+backward milliseconds (CUDA events around each call after warm-up,
median), TFLOP/s of useful expert FLOPs, throughput ratios (dense time / row time; grouped_mm time
/ row time), peak memory of one forward+backward above what was allocated before (MiB), and the
largest difference of the output from the grouped_mm row. Decode rows (T = 1, 8, 64, forward
under no_grad, the L2 cache flushed before each call; ``triton graph`` is the same call replayed
from a CUDA graph, i.e. without Python and launch overhead): bytes of the active experts' weights
(read once at least) over time, as GB/s and as a fraction of the device-to-device copy bandwidth
measured in the same run.

    python benchmarks/bench_triton.py --json bench_triton.json          # ~1-2 minutes on an H200
    python benchmarks/bench_triton.py --shapes qwen3 --tiles 64,128,64,8,4,3 --tiles 128,128,64,8,8,3
    python benchmarks/bench_triton.py --scale 8 --repeats 5             # a quick look
    python benchmarks/bench_triton.py --compile-only 90                 # no GPU needed

``--compile-only ARCH`` compiles every kernel variant the op launches for ``sm_ARCH`` (no GPU
needed, Triton's bundled ptxas) and prints registers, spills (stack bytes) and shared memory per
kernel: the pipelined matmul of Triton's tutorial at the same tile takes ~115 registers, no stack,
and 72 KiB of shared memory (3 stages) on sm_90 with Triton 3.9. A stack above zero means spills.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable

import torch
import torch.nn.functional as F

from _common import time_ms
from moekit._files import atomic_open

SHAPES: dict[str, tuple[int, int, int, int, int]] = {  # T, D, F, E, K (the issue's H200 shapes)
    "mixtral": (8192, 4096, 14336, 8, 2),
    "olmoe": (16384, 2048, 1024, 64, 8),
    "qwen3": (16384, 2048, 768, 128, 8),
}
DECODE_TOKENS = (1, 8, 64)


def _fail(msg: str) -> None:
    print(f"bench_triton.py: {msg}", file=sys.stderr)
    sys.exit(2)


def cuda_time_ms(fn: Callable[[], object], *, repeats: int, warmup: int,
                 setup: Callable[[], object] | None = None) -> float:
    """Median milliseconds of ``fn()`` between two CUDA events; ``setup()`` runs outside them."""
    return time_ms(fn, torch.device("cuda"), repeats=repeats, warmup=warmup, setup=setup)


def peak_mib(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def routing(T: int, K: int, E: int, balanced: bool, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if balanced:  # token t -> experts (t*K + j) % E
        idx = (torch.arange(T)[:, None] * K + torch.arange(K)[None, :]) % E
        return idx.cuda(), torch.full((T, K), 1.0 / K, device="cuda")
    logits = torch.randn(T, E, generator=g)
    w, idx = logits.softmax(-1).topk(K, dim=-1)
    return idx.cuda(), (w / w.sum(-1, keepdim=True)).cuda()


def grouped_mm_ffn(x, idx, w_TK, w_in, w_down):  # type: ignore[no-untyped-def]
    """The plain torch._grouped_mm layer (SwiGLU, dropless)."""
    T, K = idx.shape
    E, Fh = w_in.shape[0], w_down.shape[1]
    flat = idx.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(E, dtype=torch.int32, device=x.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)
    h = torch._grouped_mm(x[order // K], w_in, offs=offs)
    o = torch._grouped_mm(F.silu(h[:, :Fh]) * h[:, Fh:], w_down, offs=offs)
    o = o * w_TK.reshape(-1)[order, None].to(o.dtype)
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(T * K, device=x.device))
    return o[rank].view(T, K, -1).float().sum(1).to(x.dtype)


def dense_ffn(x, w_in, w_down):  # type: ignore[no-untyped-def]
    h = x @ w_in
    gate, up = h.chunk(2, dim=-1)
    return (F.silu(gate) * up) @ w_down


def parse_tiles(text: str):  # type: ignore[no-untyped-def]
    from moekit.kernels.moe_triton import TileConfig

    try:
        return TileConfig.from_list([int(v) for v in text.split(",")])
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--tiles {text!r}: six ints block_m,block_n,block_k,group_m,"
                                         f"num_warps,num_stages ({err})") from err


def copy_bandwidth() -> float:
    """Bytes per second of a 2 GiB device-to-device copy (read + write)."""
    src = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time_ms(lambda: dst.copy_(src), repeats=10, warmup=3)
    return 2 * src.numel() / (ms / 1e3)


def bench_shape(name: str, args: argparse.Namespace, dtype: torch.dtype, tiles_list: list) -> dict:  # type: ignore[type-arg]
    from moekit.kernels.moe_triton import moe_ffn_triton

    T, D, Fh, E, K = SHAPES[name]
    D, Fh = max(64, D // args.scale), max(64, Fh // args.scale)
    T = max(64, T // args.scale) if args.tokens is None else args.tokens
    g = torch.Generator().manual_seed(0)  # routing, on the host
    gd = torch.Generator(device="cuda").manual_seed(0)  # weights, drawn on the device (GBs at full size)

    def rnd(*shape: int, scale: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gd, device="cuda") * scale).to(dtype).requires_grad_()

    x = rnd(T, D, scale=0.5)
    w_in, w_down = rnd(E, D, 2 * Fh, scale=D**-0.5), rnd(E, Fh, D, scale=Fh**-0.5)
    idx, w_TK = routing(T, K, E, args.balanced, g)
    w_TK.requires_grad_()
    wd_in, wd_down = rnd(D, 2 * K * Fh, scale=D**-0.5), rnd(K * Fh, D, scale=(K * Fh) ** -0.5)
    flops_fwd = 2.0 * T * K * D * 3 * Fh
    grad_y = torch.randn(T, D, device="cuda", dtype=dtype)

    rows: dict[str, Callable[[], torch.Tensor]] = {"dense": lambda: dense_ffn(x, wd_in, wd_down)}
    params: dict[str, list[torch.Tensor]] = {"dense": [x, wd_in, wd_down]}
    rows["grouped_mm"] = lambda: grouped_mm_ffn(x, idx, w_TK, w_in, w_down)
    params["grouped_mm"] = [x, w_TK, w_in, w_down]
    for tiles in tiles_list:
        label = "triton" if tiles is None else "triton " + ",".join(map(str, tiles.as_list()))
        rows[label] = (lambda t=tiles: moe_ffn_triton(x, idx, w_TK, None, w_in, None, w_down, None,
                                                      "swiglu", tiles=t))
        params[label] = [x, w_TK, w_in, w_down]

    out: dict = {"name": name, "T": T, "D": D, "F": Fh, "E": E, "K": K, "rows": []}  # type: ignore[type-arg]
    ref_y = None
    for label, fn in rows.items():
        row: dict = {"name": label, "skipped": None}  # type: ignore[type-arg]
        try:
            with torch.no_grad():
                y = fn()
            if label == "grouped_mm":
                ref_y = y.float()
            elif label != "dense" and ref_y is not None:
                row["max_abs_diff_vs_grouped_mm"] = float((y.float() - ref_y).abs().max())

            def clear(ps=params[label]):  # type: ignore[no-untyped-def]
                for p in ps:
                    p.grad = None

            def fwd_bwd(fn=fn):  # type: ignore[no-untyped-def]
                fn().backward(grad_y)

            with torch.no_grad():
                row["fwd_ms"] = cuda_time_ms(fn, repeats=args.repeats, warmup=args.warmup)
            row["fwd_bwd_ms"] = cuda_time_ms(fwd_bwd, repeats=args.repeats, warmup=args.warmup, setup=clear)
            clear()
            row["peak_mib_fwd_bwd"] = peak_mib(fwd_bwd)
            clear()
            row["tflops_fwd"] = flops_fwd / row["fwd_ms"] / 1e9
            row["tflops_fwd_bwd"] = 3 * flops_fwd / row["fwd_bwd_ms"] / 1e9
        except (RuntimeError, NotImplementedError, ValueError, TypeError) as err:
            row["skipped"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        out["rows"].append(row)
    base = {r["name"]: r for r in out["rows"] if r["skipped"] is None}
    for r in out["rows"]:
        if r["skipped"] is None:
            for ref_name in ("dense", "grouped_mm"):
                if ref_name in base:
                    r[f"ratio_vs_{ref_name}_fwd"] = base[ref_name]["fwd_ms"] / r["fwd_ms"]
                    r[f"ratio_vs_{ref_name}_fwd_bwd"] = base[ref_name]["fwd_bwd_ms"] / r["fwd_bwd_ms"]
    out["decode"] = bench_decode(name, D, Fh, E, K, dtype, args, w_in, w_down, g)
    return out


def bench_decode(name: str, D: int, Fh: int, E: int, K: int, dtype: torch.dtype, args: argparse.Namespace,
                 w_in: torch.Tensor, w_down: torch.Tensor, g: torch.Generator) -> list[dict]:  # type: ignore[type-arg]
    from moekit.kernels.moe_triton import moe_ffn_triton

    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    rows = []
    w_in_, w_down_ = w_in.detach(), w_down.detach()
    for T in DECODE_TOKENS:
        x = torch.randn(T, D, device="cuda", dtype=dtype)
        idx, w_TK = routing(T, K, E, args.balanced, g)
        active = int(torch.unique(idx).numel())
        weight_bytes = active * (D * 2 * Fh + Fh * D) * w_in.element_size()
        row: dict = {"shape": name, "T": T, "active_experts": active, "weight_bytes": weight_bytes}  # type: ignore[type-arg]
        fns = {"triton": lambda x=x, idx=idx, w=w_TK: moe_ffn_triton(x, idx, w, None, w_in_, None, w_down_, None, "swiglu"),
               "grouped_mm": lambda x=x, idx=idx, w=w_TK: grouped_mm_ffn(x, idx, w, w_in_, w_down_)}
        fns["triton graph"] = _graphed(fns["triton"])
        for label, fn in fns.items():
            try:
                with torch.no_grad():
                    ms = cuda_time_ms(fn, repeats=args.repeats, warmup=args.warmup, setup=flush.zero_)
                row[f"{label}_ms"] = ms
                row[f"{label}_gbps"] = weight_bytes / (ms / 1e3) / 1e9
                row[f"{label}_frac_copy_bw"] = weight_bytes / (ms / 1e3) / args.copy_bw
            except (RuntimeError, NotImplementedError, ValueError, TypeError) as err:
                row[f"{label}_skipped"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        rows.append(row)
    return rows


def _graphed(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` captured in a CUDA graph (captured on first call, after a warm-up): kernel time
    without Python and launch overhead. Raises what the capture raises."""
    graph: list[torch.cuda.CUDAGraph] = []

    def run() -> object:
        if not graph:
            with torch.no_grad():
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    fn()
                torch.cuda.current_stream().wait_stream(stream)
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    fn()
            graph.append(g)
        graph[0].replay()
        return None

    return run


def _f(v: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def print_tables(record: dict) -> None:  # type: ignore[type-arg]
    for shape in record["shapes"]:
        print(f"\n{shape['name']}-like: T={shape['T']} D={shape['D']} F={shape['F']} E={shape['E']} "
              f"K={shape['K']} ({record['dtype']})")
        head = ["row", "fwd ms", "f+b ms", "TFLOP/s f+b", "dense/x f+b", "gmm/x f+b", "dense/x fwd",
                "peak MiB", "max|dy|"]
        print("  ".join(f"{h:>12}" for h in head))
        for r in shape["rows"]:
            if r["skipped"]:
                print(f"{r['name']:>12}  skipped: {r['skipped']}")
                continue
            vals = [r["name"], _f(r["fwd_ms"]), _f(r["fwd_bwd_ms"]), _f(r["tflops_fwd_bwd"], "{:.0f}"),
                    _f(r.get("ratio_vs_dense_fwd_bwd")), _f(r.get("ratio_vs_grouped_mm_fwd_bwd")),
                    _f(r.get("ratio_vs_dense_fwd")), _f(r["peak_mib_fwd_bwd"], "{:.0f}"),
                    _f(r.get("max_abs_diff_vs_grouped_mm"), "{:.1e}")]
            print("  ".join(f"{v:>12}" for v in vals))
        print(f"  decode (forward, no_grad, L2 flushed; copy bandwidth {record['copy_bw_gbps']:.0f} GB/s):")
        for d in shape["decode"]:
            parts = [f"T={d['T']:>3} experts={d['active_experts']:>4}"]
            for label in ("triton", "triton graph", "grouped_mm"):
                if f"{label}_ms" in d:
                    parts.append(f"{label} {d[f'{label}_ms'] * 1e3:8.1f} us {d[f'{label}_gbps']:7.0f} GB/s "
                                 f"({d[f'{label}_frac_copy_bw']:.2f} of copy)")
                else:
                    parts.append(f"{label} skipped: {d.get(f'{label}_skipped')}")
            print("    " + "  |  ".join(parts))


def compile_only(arch: int) -> int:
    """Compile every kernel variant for ``sm_{arch}`` without a GPU; print resources per kernel.

    Integer arguments that are multiples of 16 at real sizes get Triton's divisibility hint and
    unit strides are constants, as the JIT specializes them at run time."""
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from moekit.kernels.moe_triton import jit_bwd, jit_fwd
    from moekit.kernels.moe_triton.config import TileConfig
    from moekit.kernels.moe_triton.launch import gated_block_n, wgrad_block_k

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    index_ptrs = {"slot_ptr", "offsets_ptr", "tile_expert_ptr", "tile_row_ptr"}

    def arg_type(name: str, dt: str) -> str:
        if name.endswith("_ptr"):
            return "*i32" if name in index_ptrs else "*fp32" if name in ("rw_ptr", "part_ptr") else \
                "*u8" if name == "keep_ptr" else f"*{dt}"
        return "fp32" if name in ("alpha", "limit") else "i32"

    def build(fn, dt: str, consts: dict, ones: tuple, tiles: TileConfig) -> str:  # type: ignore[type-arg]
        consts = {**consts, **dict.fromkeys(ones, 1)}
        sig = {n: "constexpr" if n in consts else arg_type(n, dt) for n in fn.arg_names}
        attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(sig)
                 if sig[n].startswith("*") or n.startswith("stride") or n in ("D", "F", "N", "KD", "M")}
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                           target=GPUTarget("cuda", arch, 32),
                           options={"num_warps": tiles.num_warps, "num_stages": tiles.num_stages})
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(k.asm["cubin"])
            f.flush()
            out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+)", out)
        regs = f"{m.group(1):>4} regs {m.group(2):>5} B stack" if m else "(cuobjdump gave no usage)"
        return f"{regs} {k.metadata.shared / 1024:6.1f} KiB shared"

    configs = {"bf16 prefill bm64": ("bf16", TileConfig(block_m=64, block_n=128, block_k=64, num_warps=4, num_stages=3)),
               "bf16 prefill bm128": ("bf16", TileConfig(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)),
               "bf16 decode bm16": ("bf16", TileConfig(block_m=16, block_n=64, block_k=128, group_m=1, num_stages=3)),
               "fp32 bm64": ("fp32", TileConfig(block_m=64, block_n=64, block_k=32, num_stages=3))}
    failed = 0
    for cname, (dt, t) in configs.items():
        prec = "ieee" if dt == "fp32" else "tf32"
        full = {"PRECISION": prec, "BM": t.block_m, "BN": t.block_n, "BK": t.block_k, "GROUP_M": t.group_m}
        half = {**full, "BN": gated_block_n(t)}
        wg = {"PRECISION": prec, "BM": t.block_m, "BN": t.block_n, "BK": wgrad_block_k(t)}
        variants = [
            ("gate_up swiglu+h", jit_fwd.gate_up_kernel, {**half, "ACT": 0, "GATED": True, "HAS_BIAS": False, "STORE_H": True}, ("stride_wh",)),
            ("gate_up gpt-oss+bias", jit_fwd.gate_up_kernel, {**half, "ACT": 5, "GATED": True, "HAS_BIAS": True, "STORE_H": False}, ("stride_wh",)),
            ("down (rows_gemm)", jit_fwd.rows_gemm_kernel, {**full, "HAS_BIAS": True, "HAS_WEIGHT": True}, ("stride_wn",)),
            ("dx (rows_gemm)", jit_fwd.rows_gemm_kernel, {**full, "HAS_BIAS": False, "HAS_WEIGHT": False}, ("stride_wk",)),
            ("down_bwd swiglu+bias", jit_bwd.down_bwd_kernel, {**half, "ACT": 0, "GATED": True, "HAS_BIAS": True}, ("stride_wd",)),
            ("dW_in (wgrad)", jit_bwd.wgrad_kernel, {**wg, "LEFT_GATHER": True, "LEFT_ACT": -1, "GATED": False, "RIGHT_GATHER": False, "RIGHT_SCALE": False, "HAS_BIAS": True}, ()),
            ("dW_down (wgrad)", jit_bwd.wgrad_kernel, {**wg, "LEFT_GATHER": False, "LEFT_ACT": 0, "GATED": True, "RIGHT_GATHER": True, "RIGHT_SCALE": True, "HAS_BIAS": True}, ()),
        ]
        for label, fn, consts, ones in variants:
            try:
                print(f"sm_{arch} {cname:20s} {label:22s} {build(fn, dt, consts, ones, t)}", flush=True)
            except Exception as err:  # report every variant, then fail
                failed += 1
                print(f"sm_{arch} {cname:20s} {label:22s} FAILED: {type(err).__name__}: {str(err)[:300]}")
    t = TileConfig()
    print(f"sm_{arch} {'combine':43s} {build(jit_fwd.combine_kernel, 'bf16', {'HAS_KEEP': True, 'BT': 8, 'BN': 256}, (), t)}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="mixtral,olmoe,qwen3", help="comma list of mixtral, olmoe, qwen3")
    parser.add_argument("--tokens", type=int, default=None, help="tokens T (default: the issue's, divided by --scale)")
    parser.add_argument("--scale", type=int, default=1, help="divide T, D and F by this (default 1: full size)")
    parser.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16", help="operand dtype")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per row (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls first (includes Triton compiles)")
    parser.add_argument("--balanced", action="store_true", help="round-robin routing instead of a random router's")
    parser.add_argument("--tiles", type=parse_tiles, action="append", default=None,
                        help="extra triton row with these tiles: block_m,block_n,block_k,group_m,num_warps,num_stages")
    parser.add_argument("--json", default=None, help="write the record here")
    parser.add_argument("--compile-only", type=int, default=None, metavar="ARCH",
                        help="compile the kernels for sm_ARCH (e.g. 80, 90) and print their resources; no GPU needed")
    args = parser.parse_args(argv)
    if args.compile_only is not None:
        return compile_only(args.compile_only)
    if not torch.cuda.is_available():
        _fail("needs a CUDA GPU (torch.cuda.is_available() is False here); the Triton kernels' "
              "correctness on CPU is covered by `TRITON_INTERPRET=1 pytest tests/kernels/test_moe_triton.py`")
    try:
        import triton
    except ImportError:
        _fail("needs triton (pip install 'moekit[triton]')")
    names = [s.strip() for s in args.shapes.split(",") if s.strip()]
    for n in names:
        if n not in SHAPES:
            parser.error(f"--shapes: {n!r} is not one of {', '.join(SHAPES)}")
    if args.scale < 1 or args.repeats < 1 or args.warmup < 1:
        parser.error("--scale, --repeats and --warmup must be >= 1")
    dtype = getattr(torch, args.dtype)
    args.copy_bw = copy_bandwidth()
    record = {"dtype": args.dtype, "balanced": args.balanced, "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "triton": triton.__version__, "cuda": torch.version.cuda,
              "copy_bw_gbps": args.copy_bw / 1e9, "shapes": []}
    tiles_list = [None, *(args.tiles or [])]
    for n in names:
        record["shapes"].append(bench_shape(n, args, dtype, tiles_list))
        torch.cuda.empty_cache()
    print_tables(record)
    if args.json:
        with atomic_open(args.json, "w") as f:
            json.dump(record, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
