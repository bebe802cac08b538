"""Bad input gets an error that names the parameter, the value and the fix."""

from __future__ import annotations

import pytest
import torch

from moekit.layers import MoELayer, SoftMoE


@pytest.mark.parametrize(
    ("kwargs", "error", "pattern"),
    [
        ({"top_k": 9}, ValueError, r"top_k=9 must be <= num_experts=8; lower top_k or add experts"),
        ({"capacity_factor": 0.0}, ValueError, r"capacity_factor=0.0 must be > 0 \(or None"),
        ({"capacity_factor": -1.5}, ValueError, r"capacity_factor=-1.5 must be > 0"),
        ({"router": "hash"}, ValueError, r"router='hash' is not one of .*'topk'"),
        ({"activation": "tanh"}, ValueError, r"activation='tanh' is not one of .*'swiglu'"),
        ({"backend": "cuda"}, ValueError, r"backend='cuda' is not one of .*'grouped_mm'"),
        ({"drop_policy": "random"}, ValueError, r"drop_policy='random' is not one of"),
        ({"router": "sigmoid_bias", "n_group": 3, "topk_group": 1}, ValueError,
         r"n_group=3 must divide num_experts=8; use a divisor of 8 such as 2"),
        ({"router": "sigmoid_bias", "n_group": 4, "topk_group": 5}, ValueError,
         r"topk_group=5 must be <= n_group=4"),
        ({"router": "topk", "n_group": 2, "topk_group": 1}, ValueError,
         r"n_group/topk_group apply to router='sigmoid_bias' only"),
        ({"router": "switch", "top_k": 2}, ValueError, r"router='switch' routes each token to one expert"),
        ({"top_k": 0}, ValueError, r"top_k=0 must be >= 1"),
        ({"top_k": 2.0}, TypeError, r"top_k=2.0 must be an int"),
        ({"num_shared_experts": -1}, ValueError, r"num_shared_experts=-1 must be an int >= 0"),
    ],
)
def test_constructor_errors_name_parameter_value_and_fix(kwargs, error, pattern):
    base = {"d_model": 16, "d_ff": 32, "num_experts": 8, "top_k": 2}
    with pytest.raises(error, match=pattern):
        MoELayer(**{**base, **kwargs})


def test_wrong_last_dimension():
    moe = MoELayer(16, 32, 4, 2)
    with pytest.raises(ValueError, match=r"shape \(3, 12\); its last dimension must be d_model=16"):
        moe(torch.randn(3, 12))


def test_integer_input():
    moe = MoELayer(16, 32, 4, 2)
    with pytest.raises(TypeError, match=r"dtype torch.int64; it must be a floating dtype"):
        moe(torch.ones(3, 16, dtype=torch.long))


def test_not_a_tensor():
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list"):
        MoELayer(4, 8, 2, 1)([[1.0] * 4])


def test_module_experts_count_mismatch():
    with pytest.raises(ValueError, match="experts has 2 modules but num_experts=3"):
        MoELayer(4, 8, 3, 1, experts=[torch.nn.Identity(), torch.nn.Identity()])


def test_softmoe_needs_a_sequence_axis():
    with pytest.raises(ValueError, match=r"must be \(batch, tokens, d_model=8\)"):
        SoftMoE(8, 16, 2)(torch.randn(5, 8))


def test_inf_input_gives_nonfinite_rows_only():
    torch.manual_seed(0)
    moe = MoELayer(8, 16, 4, 2).eval()
    x = torch.randn(6, 8)
    x[1, 0] = float("inf")
    y = moe(x)
    assert torch.isfinite(y[[0, 2, 3, 4, 5]]).all()


def test_input_dtype_must_match_parameters_outside_autocast():
    moe = MoELayer(16, 32, 4, 2)
    with pytest.raises(TypeError, match=r"dtype torch.bfloat16 but the layer's parameters are "
                                        r"torch.float32; convert the layer"):
        moe(torch.randn(3, 16, dtype=torch.bfloat16))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_autocast_runs_both_backends_in_the_autocast_dtype(x_dtype):
    torch.manual_seed(0)
    moe = MoELayer(16, 32, 4, 2).eval()
    x = torch.randn(40, 16, dtype=x_dtype)
    outs = {}
    for backend in ("grouped_mm", "loop"):
        moe.backend = backend
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs[backend] = moe(x).float()
    torch.testing.assert_close(outs["grouped_mm"], outs["loop"], atol=3e-2, rtol=3e-2)
    with torch.no_grad():
        exact = moe(x.float())
    assert (outs["grouped_mm"] - exact).abs().max() > 0  # the matmuls really ran in bfloat16
