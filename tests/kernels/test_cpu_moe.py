"""The fused CPU path (backend="cpu") against the loop reference, forward and backward.

Fresh random inputs at awkward sizes: experts with no token, one expert with every token, capacity
drops, no token at all, sizes that are multiples of nothing (d, f like 600, 100 scaled down),
biases, every activation, transposed and interleaved weight layouts, 1 to 3 threads, both GEMM
libraries and both per-expert loops (the C++ one when it can be built here: slow, it compiles).
"""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from moekit.kernels import available_backends, choose_backend, cpu_ext
from moekit.kernels.cpu_gemm import _onednn_unusable, cpu_gemm_choice
from moekit.kernels.cpu_moe import fused_moe_cpu
from moekit.kernels.cpu_plan import bucketed, deal, plan_rows
from moekit.kernels.cpu_threads import worker_team_sizes
from moekit.layers import MoELayer
from moekit.layers.reference import reference_moe_forward

GEMMS = ["torch"] + ([] if _onednn_unusable() else ["onednn"])


@pytest.fixture(scope="module")
def cpp_loop() -> None:
    reason = cpu_ext.build()
    if reason is not None:
        pytest.skip(f"the C++ loop cannot be built here: {reason}")


@pytest.fixture(params=["python", pytest.param("cpp", marks=pytest.mark.slow)])
def loop(request: pytest.FixtureRequest) -> str:
    if request.param == "cpp":
        request.getfixturevalue("cpp_loop")
    return str(request.param)


@pytest.fixture
def threads(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Sets torch's thread count for one test (the fast path deals experts to that many)."""
    saved = torch.get_num_threads()

    def set_threads(n: int) -> None:
        torch.set_num_threads(n)

    yield set_threads
    torch.set_num_threads(saved)


def all_grads(moe: MoELayer, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in moe.parameters() if p.requires_grad]
    return list(torch.autograd.grad(y, [x, *params], g, allow_unused=True, materialize_grads=True))


def check_layer(moe: MoELayer, x: torch.Tensor, gemm: str, loop: str, seed: int = 0) -> None:
    """backend="cpu" (through fused_moe_cpu with this gemm/loop) == backend="loop" == oracle."""
    moe.eval()
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    moe.backend = "loop"
    ref = moe(x)
    ref_grads = all_grads(moe, x, ref, g)
    routing = moe.router(x)
    keep, _ = moe._keep(routing)
    ex = moe.experts
    out = fused_moe_cpu(x, routing.indices_TK, routing.weights_TK, keep, ex.w_in, ex.w_down,
                        ex.b_in, ex.b_down, activation=ex.activation, gemm=gemm, loop=loop)  # type: ignore[arg-type]
    if moe.shared_experts is not None:
        out = out + moe.shared_experts(x)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    for a, b in zip(all_grads(moe, x, out, g), ref_grads):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)
    if x.shape[0] <= 12:  # the token-by-token oracle is slow
        torch.testing.assert_close(reference_moe_forward(moe, x), ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("gemm", GEMMS)
@pytest.mark.parametrize("case", [
    dict(T=37, d=24, f=10, E=6, k=2, activation="swiglu"),
    dict(T=29, d=60, f=10, E=5, k=2, activation="geglu", bias=True),       # 600/100, scaled down
    dict(T=33, d=20, f=12, E=7, k=3, activation="gelu", capacity_factor=0.6),  # drops
    dict(T=25, d=16, f=9, E=4, k=1, activation="relu", bias=True, capacity_factor=1.3),
    dict(T=18, d=8, f=8, E=9, k=2, activation="silu", router="sigmoid_bias"),  # idle experts
    dict(T=40, d=12, f=6, E=3, k=2, activation="swiglu", router="expert_choice", capacity_factor=1.0),
    dict(T=11, d=10, f=4, E=3, k=2, activation="swiglu", shared=True),
    # big enough for oneDNN: rows padded to multiples of 16 (pad rows must add nothing)
    dict(T=61, d=256, f=136, E=3, k=2, activation="swiglu", bias=True, capacity_factor=1.1),
])
def test_fused_equals_loop_reference(case, gemm, loop, threads):
    T, d, f, E, k = (case[n] for n in ("T", "d", "f", "E", "k"))
    for seed, n_threads in enumerate((1, 2)):
        threads(n_threads)
        torch.manual_seed(1000 * T + seed)
        moe = MoELayer(d, f, E, k, activation=case["activation"],
                       expert_bias=case.get("bias", False),
                       capacity_factor=case.get("capacity_factor"), router=case.get("router", "topk"),
                       num_shared_experts=1 if case.get("shared") else 0)
        if case.get("bias"):
            with torch.no_grad():
                moe.experts.b_in.normal_()
                moe.experts.b_down.normal_()
        check_layer(moe, torch.randn(T, d, requires_grad=True), gemm, loop)


@pytest.mark.parametrize("gemm", GEMMS)
def test_one_expert_takes_every_token_and_others_none(gemm, loop, threads):
    threads(2)
    torch.manual_seed(3)
    moe = MoELayer(12, 7, 5, 1, router="switch")
    with torch.no_grad():  # the router reads feature 0 only: every token goes to expert 2
        moe.router.weight.zero_()
        moe.router.weight[2, 0] = 50.0
    x = torch.randn(19, 12)
    x[:, 0] = 1.0
    check_layer(moe, x.requires_grad_(), gemm, loop)


@pytest.mark.parametrize("gemm", GEMMS)
def test_no_tokens(gemm, loop):
    moe = MoELayer(8, 6, 4, 2)
    check_layer(moe, torch.randn(0, 8, requires_grad=True), gemm, loop)


def test_every_slot_dropped_gives_zero_and_zero_gradients(loop):
    x = torch.randn(6, 8, requires_grad=True)
    w_in = torch.randn(3, 8, 12, requires_grad=True)
    w_down = torch.randn(3, 6, 8, requires_grad=True)
    weights = torch.rand(6, 2, requires_grad=True)
    y = fused_moe_cpu(x, torch.zeros(6, 2, dtype=torch.int64), weights,
                      torch.zeros(6, 2, dtype=torch.bool), w_in, w_down, loop=loop)  # type: ignore[arg-type]
    assert torch.equal(y, torch.zeros(6, 8))
    for grad in torch.autograd.grad(y.sum(), (x, weights, w_in, w_down)):  # expanded gradient
        assert torch.equal(grad, torch.zeros_like(grad))


def reference_ffn(x, idx, wts, keep, w_in, w_down, act, layout):  # type: ignore[no-untyped-def]
    """Slot by slot, with plain autograd: the meaning of fused_moe_cpu."""
    y = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(idx.shape[1]):
            if keep is not None and not keep[t, j]:
                continue
            h = x[t] @ w_in[idx[t, j]]
            g, u = (h.chunk(2) if layout == "halves" else (h[0::2], h[1::2]))
            a = (F.silu(g) if act == "swiglu" else F.gelu(g)) * u
            y = y.index_add(0, torch.tensor([t]), (wts[t, j] * (a @ w_down[idx[t, j]]))[None])
    return y


@pytest.mark.parametrize("layout", ["halves", "interleaved"])
@pytest.mark.parametrize("gemm", GEMMS)
def test_transposed_and_interleaved_weight_layouts(layout, gemm, loop, threads):
    """transformers keeps (E, 2F, D) / (E, D, F) and interleaves gate and up in some models."""
    threads(2)
    g = torch.Generator().manual_seed(5)
    T, D, Fh, E, K = 21, 20, 6, 4, 2
    x = torch.randn(T, D, generator=g, requires_grad=True)
    gate_up_EHD = torch.randn(E, 2 * Fh, D, generator=g, requires_grad=True)
    down_EDF = torch.randn(E, D, Fh, generator=g, requires_grad=True)
    w_in, w_down = gate_up_EHD.transpose(1, 2), down_EDF.transpose(1, 2)  # views, not copies
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    wts = torch.rand(T, K, generator=g, requires_grad=True)
    keep = torch.rand(T, K, generator=g) > 0.2
    for act in ("swiglu", "geglu"):
        out = fused_moe_cpu(x, idx, wts, keep, w_in, w_down, activation=act, gate_layout=layout,  # type: ignore[arg-type]
                            gemm=gemm, loop=loop)  # type: ignore[arg-type]
        ref = reference_ffn(x, idx, wts, keep, w_in, w_down, act, layout)
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
        cot = torch.randn(T, D, generator=g)
        leaves = (x, wts, gate_up_EHD, down_EDF)
        for a, b in zip(torch.autograd.grad(out, leaves, cot), torch.autograd.grad(ref, leaves, cot)):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_weights_without_a_unit_stride(loop):
    g = torch.Generator().manual_seed(6)
    x = torch.randn(9, 8, generator=g)
    w_in = torch.randn(3, 8, 24, generator=g)[:, :, ::2]  # strides (192, 24, 2)
    w_down = torch.randn(3, 6, 16, generator=g)[:, :, ::2]
    idx, wts = torch.randint(0, 3, (9, 2), generator=g), torch.rand(9, 2, generator=g)
    out = fused_moe_cpu(x, idx, wts, None, w_in, w_down, loop=loop)  # type: ignore[arg-type]
    ref = fused_moe_cpu(x, idx, wts, None, w_in.contiguous(), w_down.contiguous(), loop=loop)  # type: ignore[arg-type]
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(out, reference_ffn(x, idx, wts, None, w_in, w_down, "swiglu", "halves"),
                               atol=2e-5, rtol=1e-4)


def test_results_do_not_depend_on_the_thread_count(threads):
    """Each expert writes its own rows and the combine sums them per token: bit-identical."""
    g = torch.Generator().manual_seed(7)
    T, D, Fh, E, K = 64, 16, 8, 8, 2
    x = torch.randn(T, D, generator=g, requires_grad=True)
    w_in = torch.randn(E, D, 2 * Fh, generator=g, requires_grad=True)
    w_down = torch.randn(E, Fh, D, generator=g, requires_grad=True)
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    wts = torch.rand(T, K, generator=g, requires_grad=True)
    results = []
    for n in (1, 2, 3, 2):
        threads(n)
        y = fused_moe_cpu(x, idx, wts, None, w_in, w_down, loop="python")
        results.append([y, *torch.autograd.grad(y.square().sum(), (x, wts, w_in, w_down))])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


def test_gradcheck_float64(loop):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    w_in = torch.randn(3, 5, 8, dtype=torch.float64, generator=g, requires_grad=True)
    w_down = torch.randn(3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b_in = torch.randn(3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    b_down = torch.randn(3, 5, dtype=torch.float64, generator=g, requires_grad=True)
    wts = torch.rand(7, 2, dtype=torch.float64, generator=g, requires_grad=True)
    idx = torch.tensor([[0, 1], [1, 2], [0, 2], [1, 0], [2, 1], [1, 2], [1, 0]])
    keep = torch.ones(7, 2, dtype=torch.bool)
    keep[3, 1] = False

    def f(*a):  # type: ignore[no-untyped-def]
        return fused_moe_cpu(a[0], idx, a[1], keep, a[2], a[3], a[4], a[5], loop=loop)  # type: ignore[arg-type]

    assert torch.autograd.gradcheck(f, (x, wts, w_in, w_down, b_in, b_down))


def test_plan_buckets_rows_and_deals_experts_evenly():
    g = torch.Generator().manual_seed(9)
    T, E, K = 200, 16, 4
    idx = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
    keep = torch.rand(T, K, generator=g) > 0.1
    plan = plan_rows(idx, keep, E, bucket=True, workers=2)
    assert plan.padded == [bucketed(n) for n in plan.counts]
    assert any(p > n for p, n in zip(plan.padded, plan.counts))
    sizes = [bucketed(n) for n in range(1, 2049)]
    assert all(n <= b < n + max(1, n // 8) for n, b in zip(range(1, 2049), sizes))  # < 1/8 more
    assert sizes[:15] == list(range(1, 16)) and len(set(sizes)) <= 100  # few distinct sizes
    assert int(plan.valid_P.sum()) == int(keep.sum()) == sum(plan.counts)
    kept_slots = plan.slot_P[plan.valid_P].sort().values
    assert torch.equal(kept_slots, keep.reshape(-1).nonzero().squeeze(1))
    # a pad row repeats a slot of its own expert
    expert_P = idx.reshape(-1)[plan.slot_P]
    for i, e in enumerate(plan.experts):
        assert (expert_P[plan.starts[i]:plan.starts[i] + plan.padded[i]] == e).all()
    loads = [sum(plan.padded[i] for i in part) for part in plan.parts]
    assert max(loads) - min(loads) <= max(plan.padded)
    assert sorted(i for part in deal([5, 1, 4, 4, 2], 2) for i in part) == [0, 1, 2, 3, 4]


def test_worker_threads_run_single_threaded_teams(threads):
    threads(2)
    assert worker_team_sizes(2) == [1]
    assert worker_team_sizes(3) == [1, 1]
    assert torch.get_num_threads() == 2  # restored


def test_bad_inputs_name_the_parameter():
    x, w_in, w_down = torch.randn(4, 8), torch.randn(2, 8, 6), torch.randn(2, 3, 8)
    idx, wts = torch.zeros(4, 1, dtype=torch.int64), torch.ones(4, 1)
    with pytest.raises(ValueError, match=r"w_down_EFD has shape \(2, 3, 8\); expected \(2, 6, 8\)"):
        fused_moe_cpu(x, idx, wts, None, w_in, w_down, activation="gelu")
    with pytest.raises(ValueError, match="gate_layout='rows' must be"):
        fused_moe_cpu(x, idx, wts, None, w_in, w_down, gate_layout="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="float32 and float64 only"):
        fused_moe_cpu(x.bfloat16(), idx, wts, None, w_in.bfloat16(), w_down.bfloat16())
    with pytest.raises(ValueError, match="indices_TK .* must both be"):
        fused_moe_cpu(x, idx[:3], wts, None, w_in, w_down)
    with pytest.raises(ValueError, match="loop='fast' must be"):
        fused_moe_cpu(x, idx, wts, None, w_in, w_down, loop="fast")  # type: ignore[arg-type]


def test_layer_falls_back_to_grouped_mm_where_it_cannot_run(caplog):
    torch.manual_seed(10)
    moe = MoELayer(16, 8, 4, 2, backend="cpu").to(torch.bfloat16).eval()
    x = torch.randn(9, 16, dtype=torch.bfloat16)
    with caplog.at_level(logging.INFO, logger="moekit.kernels"):
        fused = moe(x)
        moe(x)
    assert sum("bfloat16" in r.getMessage() for r in caplog.records) <= 1  # logged once at most
    moe.backend = "grouped_mm"
    assert torch.equal(fused, moe(x))
    with pytest.raises(ValueError, match="backend='cpu' needs grouped FFN experts"):
        MoELayer(4, 4, 2, 1, backend="cpu", experts=[torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])


def test_backend_status_and_automatic_choice():
    status = available_backends()
    assert "cpu" in status
    assert available_backends("cpu", torch.bfloat16)["cpu"].startswith("runs grouped_mm instead")
    name, why = choose_backend()
    assert name == ("cpu" if cpu_gemm_choice().library == "onednn" else "grouped_mm") and why
    assert choose_backend("meta")[0] == "grouped_mm"
    assert MoELayer(8, 8, 2, 1).backend == name


@pytest.mark.parametrize("module", ["moekit.kernels", "moekit.kernels.cpu_moe",
                                    "moekit.kernels.cpu_gemm"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0

