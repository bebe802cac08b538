"""The Triton MoE kernels against their torch twins and against independent layers, forward and
backward, at awkward sizes: experts with no rows, one expert with every token, every slot dropped,
T=0 and T=1, sizes that are multiples of no tile.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set by the test
command; set here too when it is missing) at small sizes; the ``gpu`` tests repeat the checks at
real sizes, in bfloat16, under CUDA graphs and ``torch.compile``.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (pip install 'moekit[triton]')")

from moekit.kernels.moe_triton import (
    GPT_OSS_CLAMP,
    TileConfig,
    moe_ffn_triton,
    routing_meta,
    triton_status,
)
from moekit.kernels.moe_triton import reference as ref
from moekit.kernels.moe_triton.config import ACT_CLAMPED_SWIGLU, ACT_CODES, act_code

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TILES = TileConfig(block_m=32, block_n=32, block_k=32, group_m=2, num_warps=4, num_stages=2)
ACTS = [("swiglu", None), ("geglu", None), ("gelu", None), ("relu", None), ("silu", None),
        ("swiglu", GPT_OSS_CLAMP)]

if triton_status(DEVICE, torch.float32) is not None:
    pytest.skip(f"Triton kernels cannot run here: {triton_status(DEVICE, torch.float32)}",
                allow_module_level=True)


def routing_case(case: str, T: int, K: int, E: int, g: torch.Generator):
    """(indices_TK, keep_TK or None) for a named routing pattern; distinct experts per token."""
    scores = torch.rand(T, E, generator=g)
    if case == "empty_experts":  # only experts 1 and E-2 (and E-1 when K > 2) get slots
        scores[:, [e for e in range(E) if e not in (1, E - 2, E - 1)]] -= 10
        scores[:, E - 1] -= 5
    if case == "one_expert":  # every token sends a slot to expert 2; experts 0 and 4 get none
        scores[:, 2] += 10
        scores[:, [0, 4]] -= 10
    idx = scores.topk(K, dim=-1).indices
    keep = None
    if case == "dropped":
        keep = torch.rand(T, K, generator=g) > 0.35
    if case == "all_dropped":
        keep = torch.zeros(T, K, dtype=torch.bool)
    return idx.to(DEVICE), None if keep is None else keep.to(DEVICE)


def layer_inputs(T: int, K: int, E: int, D: int, Fh: int, gated: bool, bias: bool, seed: int,
                 dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    H = 2 * Fh if gated else Fh

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(DEVICE, dtype).requires_grad_()

    x = rnd(T, D)
    weights = torch.rand(T, K, generator=g).to(DEVICE).requires_grad_()
    w_in, w_down = rnd(E, D, H, scale=D**-0.5), rnd(E, Fh, D, scale=Fh**-0.5)
    b_in = rnd(E, H, scale=0.5) if bias else None
    b_down = rnd(E, D, scale=0.5) if bias else None
    return g, x, weights, w_in, b_in, w_down, b_down


def grads(y, inputs, g_out):
    """Gradients of ``(y * g_out).sum()`` for each input (zeros where unused; None for None)."""
    live = [t for t in inputs if t is not None]
    out = iter(torch.autograd.grad(y, live, g_out, allow_unused=True, materialize_grads=True))
    return [None if t is None else next(out) for t in inputs]


def assert_close(a, b, tol=2e-4, what=""):
    scale = float(b.detach().abs().max()) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * max(scale, 1e-3), msg=lambda m: f"{what}: {m}")


# -------------------------------------------------------------------- the whole op


CASES = [  # (routing, T, K, E, D, F): D and F like 600 and 100 scaled down, never a tile multiple
    ("random", 37, 2, 6, 75, 13),
    ("dropped", 29, 3, 5, 48, 40),
    ("empty_experts", 21, 2, 7, 33, 24),
    ("one_expert", 40, 2, 6, 40, 17),
    ("all_dropped", 9, 2, 4, 24, 12),
    ("random", 1, 2, 4, 75, 13),
    ("random", 0, 2, 4, 24, 12),
]


@pytest.mark.parametrize("case,T,K,E,D,Fh", CASES)
@pytest.mark.parametrize("bias", [False, True])
def test_moe_ffn_matches_loop_reference_forward_and_backward(case, T, K, E, D, Fh, bias):
    acts = ACTS if (case, bias) == ("random", True) and T > 1 else [ACTS[0], ACTS[5]] if case == "dropped" else ACTS[:1]
    for i, (activation, clamp) in enumerate(acts):
        code = act_code(activation, clamp)
        gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(
            T, K, E, D, Fh, code in (0, 1, ACT_CLAMPED_SWIGLU), bias, seed=100 * T + 10 * E + i)
        idx, keep = routing_case(case, T, K, E, gen)
        if clamp is not None:  # make the clamps bite on both sides
            with torch.no_grad():
                w_in.mul_(12.0)
        inputs = [x, weights, w_in, b_in, w_down, b_down]
        _dirty_allocator(T * K * 4 * (D + 2 * Fh))
        y = moe_ffn_triton(x, idx, weights, keep, w_in, b_in, w_down, b_down, activation, clamp=clamp,
                           tiles=TILES)
        y_ref = ref.moe_ffn_reference(x, idx, weights, keep, w_in, b_in, w_down, b_down, code,
                                      *(clamp or (1.702, 7.0)))
        what = f"{case} {activation} clamp={clamp}"
        assert_close(y, y_ref, what=what)
        if case == "all_dropped":
            assert torch.equal(y, torch.zeros_like(y))
        g_out = torch.randn(y.shape, generator=gen).to(DEVICE)
        for name, got, want in zip(("x", "weights", "w_in", "b_in", "w_down", "b_down"),
                                   grads(y, inputs, g_out), grads(y_ref, inputs, g_out)):
            if want is not None:
                assert_close(got, want, tol=5e-4, what=f"{what} grad {name}")


def _dirty_allocator(numel: int) -> None:
    """Leave NaNs in memory the allocator is likely to hand out next (unwritten rows must never
    be read)."""
    buf = torch.full((max(numel, 1),), float("nan"), device=DEVICE)
    del buf


def test_matches_moekit_grouped_experts_per_expert_path():
    """Tie the semantics to moekit's own experts: GroupedExperts.forward_expert slot by slot."""
    from moekit.layers.experts import GroupedExperts

    torch.manual_seed(3)
    T, K, E, D, Fh = 23, 2, 5, 40, 20
    for activation in ("swiglu", "geglu", "relu"):
        experts = GroupedExperts(D, Fh, E, activation=activation, bias=True).to(DEVICE)
        with torch.no_grad():
            experts.b_in.normal_()
            experts.b_down.normal_()
        x = torch.randn(T, D, device=DEVICE)
        idx, keep = routing_case("dropped", T, K, E, torch.Generator().manual_seed(1))
        weights = torch.rand(T, K, device=DEVICE)
        want = torch.zeros(T, D, device=DEVICE)
        for t in range(T):
            for k in range(K):
                if keep[t, k]:
                    want[t] += weights[t, k] * experts.forward_expert(int(idx[t, k]), x[t : t + 1])[0]
        got = moe_ffn_triton(x, idx, weights, keep, experts.w_in, experts.b_in, experts.w_down,
                             experts.b_down, activation, tiles=TILES)
        assert_close(got, want.detach(), what=activation)


def test_clamped_swiglu_matches_transformers_gpt_oss_experts():
    """GPT-OSS's experts from transformers (gate and up interleaved) against clamp=(1.702, 7)."""
    tfm = pytest.importorskip("transformers")
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    T, K, E, D, Fh = 19, 2, 4, 36, 20
    cfg = tfm.GptOssConfig(hidden_size=D, intermediate_size=Fh, num_local_experts=E, num_experts_per_tok=K,
                           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    torch.manual_seed(0)
    hf = GptOssExperts(cfg).to(DEVICE)
    with torch.no_grad():
        hf.gate_up_proj.normal_(0, 1.0)  # large enough that both clamps bite
        hf.gate_up_proj_bias.normal_()
        hf.down_proj.normal_(0, Fh**-0.5)
        hf.down_proj_bias.normal_()
    x = torch.randn(T, D, device=DEVICE, requires_grad=True)
    idx, _ = routing_case("random", T, K, E, torch.Generator().manual_seed(2))
    weights = torch.rand(T, K, device=DEVICE).softmax(-1)
    y_hf = hf(x, router_indices=idx, routing_weights=weights)
    gu, gub = hf.gate_up_proj, hf.gate_up_proj_bias
    w_in = torch.cat([gu[..., ::2], gu[..., 1::2]], dim=-1)
    b_in = torch.cat([gub[..., ::2], gub[..., 1::2]], dim=-1)
    y = moe_ffn_triton(x, idx, weights, None, w_in, b_in, hf.down_proj, hf.down_proj_bias, "swiglu",
                       clamp=(cfg.swiglu_alpha, cfg.swiglu_limit), tiles=TILES)
    h = x.detach() @ w_in.detach()[0]
    assert (h[:, :Fh] > 7).any() and (h[:, Fh:].abs() > 7).any(), "the test must exercise both clamps"
    assert_close(y, y_hf, what="gpt-oss forward")
    g_out = torch.randn_like(y)
    params = (x, hf.gate_up_proj, hf.gate_up_proj_bias, hf.down_proj, hf.down_proj_bias)
    for name, got, want in zip(("x", "gate_up", "gate_up_bias", "down", "down_bias"),
                               torch.autograd.grad(y, params, g_out), torch.autograd.grad(y_hf, params, g_out)):
        assert_close(got, want, tol=5e-4, what=f"gpt-oss grad {name}")


def test_forward_and_backward_are_bitwise_deterministic():
    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(45, 4, 6, 40, 24, True, True, seed=5)
    idx, keep = routing_case("dropped", 45, 4, 6, gen)
    runs = []
    for _ in range(2):
        y = moe_ffn_triton(x, idx, weights, keep, w_in, b_in, w_down, b_down, "swiglu", tiles=TILES)
        runs.append([y, *grads(y, [x, weights, w_in, b_in, w_down, b_down], torch.ones_like(y))])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_inference_keeps_nothing_for_backward_and_matches():
    gen, x, weights, w_in, _, w_down, _ = layer_inputs(30, 2, 5, 40, 24, True, False, seed=6)
    idx, _ = routing_case("random", 30, 2, 5, gen)
    with torch.no_grad():
        y0 = moe_ffn_triton(x, idx, weights, None, w_in, None, w_down, None, "swiglu", tiles=TILES)
    y1 = moe_ffn_triton(x, idx, weights, None, w_in, None, w_down, None, "swiglu", tiles=TILES)
    assert y0.grad_fn is None and y1.grad_fn is not None
    assert torch.equal(y0, y1.detach())


def test_frozen_experts_give_the_router_gradient_alone():
    """Only weights_TK requires a gradient (router fine-tuning): the op skips dx and dW."""
    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(33, 2, 5, 40, 24, True, True, seed=7)
    idx, keep = routing_case("dropped", 33, 2, 5, gen)
    frozen = [t.detach() for t in (x, w_in, b_in, w_down, b_down)]
    y = moe_ffn_triton(frozen[0], idx, weights, keep, *frozen[1:3], *frozen[3:], "swiglu", tiles=TILES)
    y_ref = ref.moe_ffn_reference(frozen[0], idx, weights, keep, *frozen[1:3], *frozen[3:], 0)
    g_out = torch.randn(y.shape, generator=gen).to(DEVICE)
    (got,) = torch.autograd.grad(y, weights, g_out)
    (want,) = torch.autograd.grad(y_ref, weights, g_out)
    assert_close(got, want, what="router grad")


def test_default_tiles_and_other_tile_shapes_agree():
    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(50, 2, 4, 40, 40, True, True, seed=8)
    idx, keep = routing_case("dropped", 50, 2, 4, gen)
    outs = []
    for tiles in (None, TileConfig(block_m=16, block_n=64, block_k=16, group_m=1),
                  TileConfig(block_m=64, block_n=32, block_k=64, group_m=3)):
        y = moe_ffn_triton(x, idx, weights, keep, w_in, b_in, w_down, b_down, "geglu", tiles=tiles)
        outs.append([y, *grads(y, [x, weights, w_in], torch.ones_like(y))])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert_close(a, b)


# -------------------------------------------------------------------- each kernel against its twin


def _meta_case(case, T=37, K=3, E=6, block_m=32):
    idx, keep = routing_case(case, T, K, E, torch.Generator().manual_seed(T + E))
    return idx, keep, routing_meta(idx, keep, E, block_m), ref.routing_meta(idx, keep, E, block_m)


@pytest.mark.parametrize("case", ["random", "dropped", "one_expert", "empty_experts", "all_dropped"])
@pytest.mark.parametrize("block_m", [16, 32])
def test_routing_meta_matches_loop(case, block_m):
    idx, keep, meta, want = _meta_case(case, T=70, block_m=block_m)
    assert torch.equal(meta.slot_R, want.slot_R)
    assert torch.equal(meta.offsets_E1, want.offsets_E1)
    assert torch.equal(meta.tile_expert_G, want.tile_expert_G)
    used = want.tile_expert_G < 6
    assert torch.equal(meta.tile_row_G[used], want.tile_row_G[used])


def test_routing_meta_bound_is_tight_for_one_row_per_expert():
    idx = torch.arange(8, device=DEVICE).view(8, 1)  # 8 experts, one row each: 8 tiles needed
    meta = routing_meta(idx, None, 8, 32)
    assert meta.tile_expert_G.shape[0] == 8 and torch.equal(meta.tile_expert_G.cpu(), torch.arange(8, dtype=torch.int32))


@pytest.mark.parametrize("T", [1, 3, 8, 17, 64])
def test_decode_tiles_read_each_active_expert_once(T):
    """With the decode tile rows, every active expert owns exactly one tile (its weights are read
    by one row of programs), whatever the routing."""
    from moekit.kernels.moe_triton.config import decode_block_m

    for case in ("random", "one_expert", "empty_experts"):
        idx, _ = routing_case(case, T, 4, 16, torch.Generator().manual_seed(T))
        meta = routing_meta(idx, None, 16, decode_block_m(T))
        used = meta.tile_expert_G[meta.tile_expert_G < 16]
        assert torch.equal(used.cpu(), torch.unique(idx).cpu().to(torch.int32)), case


def _launch():
    from moekit.kernels.moe_triton import launch

    return launch


@pytest.mark.parametrize("case", ["random", "one_expert", "dropped"])
@pytest.mark.parametrize("activation,clamp", ACTS)
def test_gate_up_kernel_matches_twin(case, activation, clamp):
    code = act_code(activation, clamp)
    gated = code in (0, 1, ACT_CLAMPED_SWIGLU)
    idx, keep, meta, _ = _meta_case(case)
    gen, x, _, w_in, b_in, *_ = layer_inputs(37, 3, 6, 50, 40, gated, True, seed=11)
    alpha, limit = clamp or (1.702, 7.0)
    with torch.no_grad():
        w_in.mul_(8.0 if clamp else 1.0)
        a, h = _launch().gate_up(x, meta, 3, w_in, b_in, code, alpha, limit, True, TILES)
        a_ref, h_ref = ref.gate_up(x, meta, 3, w_in, b_in, code, alpha, limit, True)
    rows = int(meta.offsets_E1[-1])  # rows of dropped slots are left unwritten
    assert_close(h[:rows], h_ref[:rows], what="h")
    assert_close(a[:rows], a_ref[:rows], what="a")


@pytest.mark.parametrize("case", ["random", "empty_experts", "dropped"])
def test_rows_gemm_and_combine_match_twins(case):
    idx, keep, meta, _ = _meta_case(case)
    g = torch.Generator().manual_seed(12)
    S, E, Fh, D = 37 * 3, 6, 45, 70
    a = torch.randn(S, Fh, generator=g).to(DEVICE)
    w, b = torch.randn(E, Fh, D, generator=g).to(DEVICE), torch.randn(E, D, generator=g).to(DEVICE)
    weights = torch.rand(S, generator=g).to(DEVICE)
    L = _launch()
    out = L.rows_gemm(a, meta, 3, w, b, weights, TILES)
    want = ref.rows_gemm(a, meta, 3, w, b, weights)
    kept = torch.ones(S, dtype=torch.bool, device=DEVICE) if keep is None else keep.reshape(-1)
    assert_close(out[kept], want[kept], what="rows_gemm")
    wt = w.transpose(1, 2).contiguous().transpose(1, 2)  # a strided view, as the input gradient uses
    assert_close(L.rows_gemm(a, meta, 3, wt, None, None, TILES)[kept],
                 ref.rows_gemm(a, meta, 3, wt, None, None)[kept], what="rows_gemm strided")
    keep_S = None if keep is None else keep.reshape(-1)
    assert_close(L.combine(out, keep_S, 37, 3, torch.float32), ref.combine(want, keep_S, 37, 3, torch.float32),
                 what="combine")


@pytest.mark.parametrize("case", ["random", "one_expert", "dropped"])
@pytest.mark.parametrize("activation,clamp", [ACTS[0], ACTS[1], ACTS[3], ACTS[5]])
def test_backward_kernels_match_twins(case, activation, clamp):
    code = act_code(activation, clamp)
    gated = code in (0, 1, ACT_CLAMPED_SWIGLU)
    idx, keep, meta, _ = _meta_case(case)
    gen, x, _, w_in, b_in, w_down, b_down = layer_inputs(37, 3, 6, 50, 40, gated, True, seed=13)
    alpha, limit = clamp or (1.702, 7.0)
    S, D = 37 * 3, 50
    weights = torch.rand(S, generator=gen).to(DEVICE)
    g_TD = torch.randn(37, D, generator=gen).to(DEVICE)
    L = _launch()
    with torch.no_grad():
        w_in.mul_(8.0 if clamp else 1.0)
        _, h = ref.gate_up(x, meta, 3, w_in, b_in, code, alpha, limit, True)
        dh, dw = L.down_backward(g_TD, meta, 3, w_down, b_down, h, weights, code, alpha, limit, TILES)
        dh_ref, dw_ref = ref.down_backward(g_TD, meta, 3, w_down, b_down, h, weights, code, alpha, limit)
        rows = int(meta.offsets_E1[-1])
        kept = meta.slot_R[:rows].long()
        assert_close(dh[:rows], dh_ref[:rows], what="dh")
        assert_close(dw[kept], dw_ref[kept], what="router grad")
        for args in ((x, dh_ref, True, False, None, None), (h, g_TD, False, True, weights, (code, alpha, limit))):
            dW, db = L.weight_grad(*args[:2], meta, 3, 6, *args[2:5], args[5], torch.float32, TILES)
            dW_ref, db_ref = ref.weight_grad(*args[:2], meta, 3, 6, *args[2:5], args[5], torch.float32)
            assert_close(dW, dW_ref, what="dW")
            assert_close(db, db_ref, what="db")


def test_activation_twin_derivative_matches_autograd():
    h = (torch.randn(64, 40, dtype=torch.float64) * 6).requires_grad_()
    da = torch.randn(64, 20, dtype=torch.float64)
    for code in (*ACT_CODES.values(), ACT_CLAMPED_SWIGLU):
        H = h if code in (0, 1, ACT_CLAMPED_SWIGLU) else h[:, :20]
        (want,) = torch.autograd.grad(ref.activation(H, code), H, da)
        torch.testing.assert_close(ref.activation_backward(da, H.detach(), code).double(), want,
                                   rtol=1e-6, atol=1e-6)


# -------------------------------------------------------------------- torch.compile and custom op


def test_custom_op_passes_opcheck():
    from moekit.kernels.moe_triton.op import moe_ffn_triton_fwd

    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(20, 2, 4, 40, 24, True, True, seed=9)
    idx, keep = routing_case("dropped", 20, 2, 4, gen)
    args = (x, idx, weights, keep, w_in, b_in, w_down, b_down, 0, 1.702, 7.0, True, TILES.as_list())
    torch.library.opcheck(moe_ffn_triton_fwd, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


def test_torch_compile_keeps_the_op_whole_and_matches_eager():
    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(26, 2, 5, 40, 24, True, True, seed=10)
    idx, keep = routing_case("dropped", 26, 2, 5, gen)

    def layer(x, weights):
        return moe_ffn_triton(x, idx, weights, keep, w_in, b_in, w_down, b_down, "swiglu", tiles=TILES)

    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y, y_eager = compiled(x, weights), layer(x, weights)
    assert torch.equal(y, y_eager)
    inputs = [x, weights, w_in, b_in, w_down, b_down]
    for a, b in zip(grads(y, inputs, torch.ones_like(y)), grads(y_eager, inputs, torch.ones_like(y))):
        assert torch.equal(a, b)


# -------------------------------------------------------------------- the layer's backend="triton"


LAYER_CASES = [  # keywords of MoELayer; d_model 40 and d_ff 24 multiples of no tile
    {"activation": "swiglu"},
    {"activation": "geglu", "capacity_factor": 0.6, "expert_bias": True},
    {"activation": "relu", "router": "expert_choice", "top_k": 2},
    {"activation": "silu", "num_shared_experts": 1, "router": "sigmoid_bias", "top_k": 3},
]


@pytest.mark.parametrize("kw", LAYER_CASES)
def test_moe_layer_triton_backend_equals_loop(kw):
    from moekit.layers import MoELayer

    torch.manual_seed(4)
    layer = MoELayer(40, 24, 6, **{"top_k": 2, **kw}, backend="triton").to(DEVICE)
    if layer.experts.b_in is not None:
        with torch.no_grad():
            layer.experts.b_in.normal_()
            layer.experts.b_down.normal_()
    assert layer.dispatcher.name == "triton"
    x = torch.randn(3, 11, 40, device=DEVICE, requires_grad=True)
    params = [x, layer.router.weight, layer.experts.w_in, layer.experts.w_down]
    runs = {}
    for backend in ("triton", "loop"):
        layer.backend = backend
        y = layer(x)
        runs[backend] = [y, *torch.autograd.grad(y, params, torch.ones_like(y) / y.numel() ** 0.5)]
    for name, a, b in zip(("y", "x", "router", "w_in", "w_down"), runs["triton"], runs["loop"]):
        assert_close(a, b, tol=5e-4, what=f"{kw} {name}")


def test_triton_backend_needs_grouped_experts_and_is_never_automatic():
    from moekit.kernels import available_backends
    from moekit.layers import MoELayer

    assert MoELayer(16, 32, 4).backend != "triton"  # automatic: cpu or grouped_mm, never triton
    with pytest.raises(ValueError, match="backend='triton' needs grouped FFN experts"):
        MoELayer(16, 32, 2, 1, experts=[torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)], backend="triton")
    status = available_backends(DEVICE)["triton"]
    assert status is not None and ("not chosen automatically" in status or "interpreter" in status)


def test_triton_backend_falls_back_to_grouped_mm_where_kernels_cannot_run():
    from moekit.kernels import available_backends
    from moekit.layers import MoELayer

    torch.manual_seed(5)
    layer = MoELayer(16, 24, 4, backend="triton").double()  # float64: not a Triton dtype
    x = torch.randn(7, 16, dtype=torch.float64)
    y = layer(x)
    layer.backend = "loop"
    torch.testing.assert_close(y, layer(x))
    assert available_backends("cpu", torch.float64)["triton"].startswith("falls back to grouped_mm: dtype")


# -------------------------------------------------------------------- bad input


def _args(**over):
    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(6, 2, 3, 32, 16, True, True, seed=1)
    idx, _ = routing_case("random", 6, 2, 3, gen)
    a = {"x_TD": x, "indices_TK": idx, "weights_TK": weights, "keep_TK": None, "w_in": w_in, "b_in": b_in,
         "w_down": w_down, "b_down": b_down, "activation": "swiglu"}
    a.update(over)
    return a


@pytest.mark.parametrize("over,exc,match", [
    ({"activation": "tanh"}, ValueError, "activation='tanh' is not one of"),
    ({"activation": "geglu", "clamp": (1.702, 7.0)}, ValueError, "applies to activation='swiglu' only"),
    ({"clamp": 7.0}, TypeError, r"must be a tuple \(alpha, limit\)"),
    ({"clamp": (1.702, -1.0)}, ValueError, "limit > 0"),
    ({"indices_TK": torch.zeros(5, 2, dtype=torch.int64)}, ValueError, r"indices_TK has shape \(5, 2\); expected \(6, \?\)"),
    ({"indices_TK": torch.zeros(6, 2, dtype=torch.int32)}, TypeError, "must be torch.int64"),
    ({"w_down": torch.zeros(3, 15, 32)}, ValueError, r"w_down has shape \(3, 15, 32\); expected \(3, 16, 32\)"),
    ({"w_in": torch.zeros(3, 32, 31)}, ValueError, "needs an even H"),
    ({"keep_TK": torch.ones(6, 2)}, TypeError, "keep_TK has dtype torch.float32; it must be torch.bool"),
    ({"b_in": torch.zeros(3, 31)}, ValueError, r"b_in has shape \(3, 31\)"),
    ({"x_TD": torch.zeros(6, 32, dtype=torch.float64)}, TypeError, "w_in has dtype torch.float32 but x_TD is torch.float64"),
    ({"tiles": (32, 32, 32)}, TypeError, "tiles must be a TileConfig"),
])
def test_bad_input_names_the_parameter(over, exc, match):
    a = _args()
    for k, v in over.items():
        a[k] = v.to(DEVICE) if isinstance(v, torch.Tensor) else v
    with pytest.raises(exc, match=match):
        moe_ffn_triton(**a)


@pytest.mark.skipif(DEVICE != "cpu", reason="the exact index check runs on CPU (CUDA asserts on the device)")
def test_out_of_range_expert_index_is_refused():
    with pytest.raises(ValueError, match=r"holds values in \[0, 3\]; every index must lie in \[0, 3\)"):
        moe_ffn_triton(**_args(indices_TK=torch.tensor([[0, 1], [2, 3], [0, 1], [0, 1], [0, 1], [0, 1]])))


def test_tile_config_and_status_messages(monkeypatch):
    with pytest.raises(ValueError, match="block_m=24 must be a power of two >= 16"):
        TileConfig(block_m=24)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "set TRITON_INTERPRET=1" in triton_status("cpu", torch.float32)
    assert "float64" in triton_status("cuda", torch.float64)


# -------------------------------------------------------------------- GPU, real sizes


GPU_CASES = [  # (routing, T, K, E, D, F)
    ("random", 4096, 8, 64, 1024, 512),
    ("dropped", 2048, 2, 8, 2048, 1408),
    ("one_expert", 1000, 4, 16, 600, 100),
    ("random", 7, 8, 128, 2048, 768),  # decode
]


@pytest.mark.gpu
@pytest.mark.parametrize("case,T,K,E,D,Fh", GPU_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_real_sizes_match_reference(case, T, K, E, D, Fh, dtype):
    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(T, K, E, D, Fh, True, True, seed=T, dtype=dtype)
    idx, keep = routing_case(case, T, K, E, gen)
    inputs = [x, weights, w_in, b_in, w_down, b_down]
    y = moe_ffn_triton(x, idx, weights, keep, w_in, b_in, w_down, b_down, "swiglu")
    # the reference in float32 from the same (rounded) parameters
    f32 = [t.detach().float().requires_grad_() for t in inputs]
    y_ref = ref.moe_ffn_reference(f32[0], idx, f32[1], keep, f32[2], f32[3], f32[4], f32[5], 0)
    tol = 2e-4 if dtype == torch.float32 else 3e-2
    assert_close(y.float(), y_ref, tol=tol, what="forward")
    g_out = torch.randn(y.shape, generator=gen).to(DEVICE)
    for name, got, want in zip(("x", "weights", "w_in", "b_in", "w_down", "b_down"),
                               grads(y, inputs, g_out.to(dtype)), grads(y_ref, f32, g_out)):
        assert_close(got.float(), want, tol=tol * 2, what=f"grad {name}")


@pytest.mark.gpu
def test_gpu_cuda_graph_capture_replays_forward_and_backward():
    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(512, 4, 16, 512, 256, True, True, seed=1,
                                                               dtype=torch.bfloat16)
    idx, keep = routing_case("dropped", 512, 4, 16, gen)
    inputs = [x, weights, w_in, b_in, w_down, b_down]

    def step():
        y = moe_ffn_triton(x, idx, weights, keep, w_in, b_in, w_down, b_down, "swiglu")
        return [y, *torch.autograd.grad(y, inputs, torch.ones_like(y))]

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        eager = step()  # warm-up (compiles the kernels) outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static = step()
    new_idx, new_keep = routing_case("random", 512, 4, 16, gen)
    idx.copy_(new_idx)
    keep.fill_(True)
    graph.replay()
    want = step()
    for a, b in zip(static, want):
        assert torch.equal(a, b)
    assert not torch.equal(static[0], eager[0])


@pytest.mark.gpu
@pytest.mark.parametrize("T", [5, 700])
def test_gpu_forward_and_backward_never_sync_with_the_host(T):
    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(T, 4, 16, 256, 128, True, True, seed=3,
                                                               dtype=torch.bfloat16)
    idx, keep = routing_case("dropped", T, 4, 16, gen)
    inputs = [x, weights, w_in, b_in, w_down, b_down]

    def step():
        y = moe_ffn_triton(x, idx, weights, keep, w_in, b_in, w_down, b_down, "swiglu")
        return torch.autograd.grad(y, inputs, torch.ones_like(y))

    step()  # compiles the kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_gpu_torch_compile_inductor_matches_eager():
    gen, x, weights, w_in, b_in, w_down, b_down = layer_inputs(300, 2, 8, 256, 128, True, True, seed=2,
                                                               dtype=torch.bfloat16)
    idx, keep = routing_case("random", 300, 2, 8, gen)

    def layer(x, weights):
        return moe_ffn_triton(x, idx, weights, keep, w_in, b_in, w_down, b_down, "swiglu") * 2

    y = torch.compile(layer, fullgraph=True)(x, weights)
    assert torch.equal(y, layer(x, weights))


@pytest.mark.gpu
@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_gpu_moe_layer_triton_backend_equals_loop(capacity_factor):
    from moekit.layers import MoELayer

    torch.manual_seed(0)
    layer = MoELayer(512, 768, 16, 4, capacity_factor=capacity_factor, backend="triton").cuda().to(torch.bfloat16)
    x = torch.randn(2, 300, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    params = [x, layer.router.weight, layer.experts.w_in, layer.experts.w_down]
    runs = {}
    for backend in ("triton", "loop"):
        layer.backend = backend
        y = layer(x)
        runs[backend] = [y, *torch.autograd.grad(y.float().pow(2).sum(), params)]
    for name, a, b in zip(("y", "x", "router", "w_in", "w_down"), runs["triton"], runs["loop"]):
        assert_close(a.float(), b.float(), tol=3e-2, what=name)
