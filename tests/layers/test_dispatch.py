"""The dispatch/combine seam: hand-worked permutations, identity experts, both dispatchers."""

from __future__ import annotations

import pytest
import torch

from moekit.kernels import choose_backend
from moekit.layers import MoELayer
from moekit.layers.dispatch import LoopDispatcher, SortedDispatcher, capacity_keep
from moekit.layers.routing import Routing

DISPATCHERS = [SortedDispatcher, LoopDispatcher]


def _routing(indices_TK: torch.Tensor, weights_TK: torch.Tensor, num_experts: int) -> Routing:
    T = indices_TK.shape[0]
    logits = torch.zeros(T, num_experts)
    return Routing(indices_TK, weights_TK, logits, logits.softmax(-1))


@pytest.mark.parametrize("cls", DISPATCHERS)
def test_hand_worked_dispatch_sorts_rows_by_expert(cls):
    # 3 tokens, 2 slots, 3 experts: token 0 -> (2, 0), token 1 -> (0, 1), token 2 -> (2, 1)
    indices = torch.tensor([[2, 0], [0, 1], [2, 1]])
    weights = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5]])
    x = torch.tensor([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])
    x_RD, tokens_E, meta = cls().dispatch(x, _routing(indices, weights, 3), None)
    assert tokens_E.tolist() == [2, 2, 2]
    # expert 0: tokens 0, 1; expert 1: tokens 1, 2; expert 2: tokens 0, 2 (stable: token order)
    assert meta.token_R.tolist() == [0, 1, 1, 2, 0, 2]
    torch.testing.assert_close(x_RD, x[[0, 1, 1, 2, 0, 2]])
    torch.testing.assert_close(meta.weight_R, torch.tensor([0.4, 0.7, 0.3, 0.5, 0.6, 0.5]))


@pytest.mark.parametrize("cls", DISPATCHERS)
def test_dispatch_identity_experts_combine_is_x_times_kept_weight(cls):
    """With identity experts, combine(dispatch(x)) = x * (sum of kept weights), and so is the
    gradient: the backward of dispatch is a combine and vice versa."""
    torch.manual_seed(0)
    T, K, E, D = 9, 2, 4, 3
    indices = torch.stack([torch.randperm(E)[:K] for _ in range(T)])
    weights = torch.rand(T, K)
    x = torch.randn(T, D, requires_grad=True)
    for keep in (None, capacity_keep(indices, weights, E, cap=3)):
        x_RD, tokens_E, meta = cls().dispatch(x, _routing(indices, weights, E), keep, capacity=3)
        y = cls().combine(x_RD, meta)
        kept = weights if keep is None else weights * keep
        expected = x * kept.sum(-1, keepdim=True)
        torch.testing.assert_close(y, expected)
        g = torch.randn(T, D)
        (grad,) = torch.autograd.grad(y, x, g)
        torch.testing.assert_close(grad, g * kept.sum(-1, keepdim=True))
        assert int(tokens_E.sum()) == int(kept.gt(0).sum())


def test_capacity_bound_sizes_the_buffer_and_drops_never_reach_tokens():
    indices = torch.tensor([[0], [0], [0], [1]])
    weights = torch.ones(4, 1)
    keep = capacity_keep(indices, weights, 2, cap=2)
    assert keep[:, 0].tolist() == [True, True, False, True]
    x = torch.arange(4.0).unsqueeze(-1)
    x_RD, tokens_E, meta = SortedDispatcher().dispatch(x, _routing(indices, weights, 2), keep,
                                                       capacity=2)
    assert x_RD.shape[0] == 4 and tokens_E.tolist() == [2, 1] and not meta.full
    garbage = torch.full_like(x_RD, float("nan"))
    garbage[:3] = x_RD[:3]  # rows past the experts' rows: never read by combine
    torch.testing.assert_close(SortedDispatcher().combine(garbage, meta),
                               torch.tensor([[0.0], [1.0], [0.0], [3.0]]))


@pytest.mark.parametrize("cls", DISPATCHERS)
def test_no_tokens(cls):
    x = torch.zeros(0, 5, requires_grad=True)
    routing = _routing(torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, 2), 3)
    x_RD, tokens_E, meta = cls().dispatch(x, routing, None)
    assert x_RD.shape == (0, 5) and tokens_E.tolist() == [0, 0, 0]
    y = cls().combine(x_RD, meta)
    assert y.shape == (0, 5) and y.requires_grad


def test_backend_switch_keeps_weights_and_config_in_step():
    moe = MoELayer(8, 16, 4, 2)
    # automatic: "cpu" where its oneDNN GEMMs measured faster here, else "grouped_mm"
    assert moe.backend == choose_backend()[0] and isinstance(moe.dispatcher, SortedDispatcher)
    moe.backend = "loop"
    assert isinstance(moe.dispatcher, LoopDispatcher) and moe.experts.kernel == "loop"
    assert moe.config.dispatch.backend == "loop"
    with pytest.raises(ValueError, match="backend='fast' is not one of"):
        moe.backend = "fast"  # type: ignore[assignment]
