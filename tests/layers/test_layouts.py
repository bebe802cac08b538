"""GroupedExperts on other libraries' tensor layouts, the clamped GLUs and weights on the input.

Every adopted layout must compute what moekit's own layout computes with the same weights
rearranged (a copy made for the test), through both kernels, forward and backward, while holding
the source's tensors themselves (same objects, same storage, same names).
"""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch
from torch import nn

from moekit.layers import GroupedExperts, MoELayer
from moekit.layers.activations import GluOptions, glu
from moekit.layers.grouped import ExpertsLayout
from moekit.layers.reference import reference_moe_forward

E, D, F_ = 5, 8, 6


def native_twin(w_in_EDH: torch.Tensor, w_down_EFD: torch.Tensor, activation: str,
                b_in: torch.Tensor | None = None, b_down: torch.Tensor | None = None,
                gl: GluOptions | None = None) -> GroupedExperts:
    ex = GroupedExperts(D, F_, E, activation, bias=b_in is not None, glu=gl)
    with torch.no_grad():
        ex.w_in.copy_(w_in_EDH)
        ex.w_down.copy_(w_down_EFD)
        if b_in is not None and b_down is not None:
            ex.b_in.copy_(b_in)
            ex.b_down.copy_(b_down)
    return ex


def source_and_twin(kind: str, gen: torch.Generator) -> tuple[nn.Module, ExpertsLayout, str, GroupedExperts, GluOptions | None]:
    """A module holding expert tensors in layout ``kind`` and moekit's own layout of them."""
    src = nn.Module()
    gl = None

    def rnd(*shape: int) -> nn.Parameter:
        return nn.Parameter(torch.randn(*shape, generator=gen) * 0.5)

    if kind == "linear":  # transformers' default: gate_up_proj (E, 2F, D), down_proj (E, D, F)
        src.gate_up_proj, src.down_proj = rnd(E, 2 * F_, D), rnd(E, D, F_)
        layout = ExpertsLayout(in_proj=("gate_up_proj",), down_proj="down_proj", in_bias=None,
                               down_bias=None, in_linear=True, down_linear=True)
        twin = native_twin(src.gate_up_proj.transpose(1, 2), src.down_proj.transpose(1, 2), "swiglu")
        return src, layout, "swiglu", twin, gl
    if kind == "interleaved":  # GPT-OSS: (E, D, 2F) interleaved, biases, clamped SwiGLU
        src.gate_up_proj, src.down_proj = rnd(E, D, 2 * F_), rnd(E, F_, D)
        src.gate_up_proj_bias, src.down_proj_bias = rnd(E, 2 * F_), rnd(E, D)
        gl = GluOptions(swish_alpha=1.702, clamp=0.7, up_offset=1.0)
        layout = ExpertsLayout(in_proj=("gate_up_proj",), down_proj="down_proj",
                               in_bias="gate_up_proj_bias", down_bias="down_proj_bias",
                               gate_up="interleaved")
        w, b = src.gate_up_proj, src.gate_up_proj_bias
        twin = native_twin(torch.cat([w[..., ::2], w[..., 1::2]], -1), src.down_proj, "swiglu",
                           torch.cat([b[..., ::2], b[..., 1::2]], -1), src.down_proj_bias, gl)
        return src, layout, "swiglu", twin, gl
    if kind == "separate":  # DBRX: w1, v1 (E*F, D) and w2 (E*F, D) in a child module
        src.mlp = nn.Module()
        src.mlp.w1, src.mlp.v1, src.mlp.w2 = rnd(E * F_, D), rnd(E * F_, D), rnd(E * F_, D)
        layout = ExpertsLayout(in_proj=("mlp.w1", "mlp.v1"), down_proj="mlp.w2", in_bias=None,
                               down_bias=None, in_linear=True, gate_up="separate")
        gate = src.mlp.w1.view(E, F_, D).transpose(1, 2)
        up = src.mlp.v1.view(E, F_, D).transpose(1, 2)
        twin = native_twin(torch.cat([gate, up], -1), src.mlp.w2.view(E, F_, D), "geglu_tanh")
        return src, layout, "geglu_tanh", twin, gl
    # ungated (Nemotron-H): up_proj (E, F, D), down_proj (E, D, F), relu2
    src.up_proj, src.down_proj = rnd(E, F_, D), rnd(E, D, F_)
    layout = ExpertsLayout(in_proj=("up_proj",), down_proj="down_proj", in_bias=None,
                           down_bias=None, in_linear=True, down_linear=True)
    twin = native_twin(src.up_proj.transpose(1, 2), src.down_proj.transpose(1, 2), "relu2")
    return src, layout, "relu2", twin, gl


@pytest.mark.parametrize("kernel", ["loop", "grouped_mm"])
@pytest.mark.parametrize("kind", ["linear", "interleaved", "separate", "ungated"])
def test_adopted_layout_equals_moekits_own_layout_forward_and_backward(kind: str, kernel: str) -> None:
    gen = torch.Generator().manual_seed(["linear", "interleaved", "separate", "ungated"].index(kind))
    src, layout, act, twin, gl = source_and_twin(kind, gen)
    ptrs = {n: (p, p.data_ptr()) for n, p in src.named_parameters()}
    ex = GroupedExperts.adopt(src, layout, activation=act, glu=gl, kernel=kernel, num_experts=E)
    twin.kernel = kernel
    assert {n: (p, p.data_ptr()) for n, p in ex.named_parameters()} == ptrs  # shared, same names
    assert list(ex.state_dict()) == list(src.state_dict())
    counts = torch.tensor([3, 0, 4, 1, 2])
    x = torch.randn(12, D, generator=gen, requires_grad=True)  # two rows past the last expert
    x2 = x.detach().clone().requires_grad_()
    y, y2 = ex(x, counts), twin(x2, counts)
    torch.testing.assert_close(y, y2, rtol=1e-5, atol=1e-6)
    assert torch.all(y[10:] == 0)
    g = torch.randn(y.shape, generator=gen)
    (y * g).sum().backward()
    (y2 * g).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    # the adopted tensors' gradients are the native ones rearranged back
    w = ex.weights()
    assert w.w_down_EFD.shape == (E, F_, D)
    down_grad = twin.w_down.grad
    stored = layout.down_proj
    got = ex.get_parameter(stored).grad
    want = down_grad.transpose(1, 2) if layout.down_linear else down_grad.reshape(got.shape)
    torch.testing.assert_close(got, want.reshape(got.shape), rtol=1e-5, atol=1e-6)
    # gradients arrive in the storage's own layout (no strided accumulation into .grad)
    assert all(p.grad is not None and p.grad.is_contiguous() for p in ex.parameters())


def test_adopted_views_are_views_not_copies() -> None:
    src, layout, act, _, _ = source_and_twin("linear", torch.Generator().manual_seed(0))
    ex = GroupedExperts.adopt(src, layout, activation=act)
    assert ex.w_in.data_ptr() == src.gate_up_proj.data_ptr()
    assert ex.w_in.stride() == (2 * F_ * D, 1, D)  # the documented transposed strides
    with torch.no_grad():
        src.gate_up_proj[0, 0, 0] = 123.0
    assert ex.w_gate[0, 0, 0] == 123.0


def test_adopt_rejects_inconsistent_shapes_and_missing_tensors() -> None:
    src, layout, act, _, _ = source_and_twin("linear", torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="has no parameter 'nope'"):
        GroupedExperts.adopt(src, ExpertsLayout(in_proj=("nope",), down_proj="down_proj",
                                                in_bias=None, down_bias=None), activation=act)
    flipped = ExpertsLayout(in_proj=("gate_up_proj",), down_proj="down_proj", in_bias=None,
                            down_bias=None, in_linear=False, down_linear=True)
    with pytest.raises(ValueError, match="reads as .* in moekit's orientation; expected"):
        GroupedExperts.adopt(src, flipped, activation=act)
    with pytest.raises(ValueError, match="needs 2 name"):
        ExpertsLayout(in_proj=("a",), gate_up="separate")


def test_glu_options_follow_their_definitions() -> None:
    g = torch.linspace(-9, 9, 19)
    u = torch.linspace(-8, 8, 19)
    oai = glu(g, "swiglu", GluOptions(swish_alpha=1.702, clamp=7.0, up_offset=1.0), up_RF=u)
    gc, uc = g.clamp(max=7.0), u.clamp(-7.0, 7.0)
    torch.testing.assert_close(oai, (uc + 1) * gc * torch.sigmoid(gc * 1.702))
    after = glu(g, "swiglu", GluOptions(clamp=2.0, clamp_at="output"), up_RF=u)
    torch.testing.assert_close(after, torch.nn.functional.silu(g).clamp(max=2.0) * u.clamp(-2, 2))
    half = glu(g.half(), "swiglu", GluOptions(float32=True), up_RF=u.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half, (torch.nn.functional.silu(g) * u).half())
    with pytest.raises(ValueError, match="swish_alpha applies to activation='swiglu'"):
        glu(g, "geglu", GluOptions(swish_alpha=1.0), up_RF=u)


@pytest.mark.parametrize("backend", ["loop", "grouped_mm"])
def test_weights_on_the_input_compute_the_sum_of_experts_of_scaled_inputs(backend: str) -> None:
    from moekit.layers import DispatchConfig, MoEConfig

    torch.manual_seed(3)
    cfg = MoEConfig.create(d_model=D, d_ff=F_, num_experts=E, top_k=2, backend=backend)
    cfg = MoEConfig(router=cfg.router, experts=cfg.experts, aux_loss_weight=0.0,
                    dispatch=DispatchConfig(backend=backend, apply_weights="input"))
    moe = MoELayer.from_config(cfg)
    x = torch.randn(7, D)
    routing = moe.router(x)
    want = torch.stack([sum(moe.experts.forward_expert(int(e), (w * x[t])[None])[0]
                            for e, w in zip(routing.indices_TK[t], routing.weights_TK[t]))
                        for t in range(7)])
    torch.testing.assert_close(moe(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ["geglu_tanh", "gelu_tanh", "relu2"])
def test_new_activations_match_the_oracle(activation: str) -> None:
    torch.manual_seed(4)
    moe = MoELayer(D, F_, E, 2, activation=activation)
    x = torch.randn(9, D)
    torch.testing.assert_close(moe(x), reference_moe_forward(moe, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("module", ["moekit.layers.activations", "moekit.layers.grouped",
                                    "moekit.layers.experts"])
def test_docstring_examples_run(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
