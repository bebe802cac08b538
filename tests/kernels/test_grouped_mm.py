"""The grouped matmul op against plain per-group matmuls, forward and backward."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moekit.kernels import available_backends, grouped_mm
from moekit.kernels.grouped_mm import native_reason


def per_group_reference(x, w, sizes):
    outs, start = [], 0
    for e, n in enumerate(sizes):
        outs.append(x[start : start + n] @ w[e])
        start += n
    tail = x.new_zeros(x.shape[0] - start, w.shape[-1])
    return torch.cat([*outs, tail])


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 9), min_size=1, max_size=6),
    tail=st.integers(0, 4),
    d=st.sampled_from([4, 8, 6, 3]),
    f=st.sampled_from([4, 12, 5]),
    seed=st.integers(0, 2**16),
)
def test_grouped_mm_matches_per_group_matmuls(sizes, tail, d, f, seed):
    g = torch.Generator().manual_seed(seed)
    rows = sum(sizes) + tail
    x = torch.randn(rows, d, generator=g, requires_grad=True)
    w = torch.randn(len(sizes), d, f, generator=g, requires_grad=True)
    offsets = torch.tensor(sizes).cumsum(0).to(torch.int32)
    out = grouped_mm(x, w, offsets)
    ref = per_group_reference(x, w, sizes)
    torch.testing.assert_close(out, ref)
    assert torch.all(out[sum(sizes):] == 0), "rows past the last offset must be zero"
    grad = torch.randn(rows, f, generator=g)
    gx, gw = torch.autograd.grad(out, (x, w), grad)
    rx, rw = torch.autograd.grad(ref, (x, w), grad)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)


def test_grouped_mm_gradcheck_float64():
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 3, 2, dtype=torch.float64, requires_grad=True)
    offsets = torch.tensor([2, 2, 6], dtype=torch.int32)
    assert torch.autograd.gradcheck(lambda a, b: grouped_mm(a, b, offsets), (x, w))


def test_native_path_runs_on_cpu_float32_when_aligned():
    x, w = torch.randn(8, 8), torch.randn(2, 8, 4)
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no torch._grouped_mm")
    assert native_reason(x, w) is None
    reason = native_reason(torch.randn(8, 6), torch.randn(2, 6, 4))
    assert reason is not None and "aligned" in reason


def test_available_backends_reports_every_backend():
    status = available_backends()
    assert status["loop"] is None
    assert set(status) >= {"loop", "grouped_mm", "triton"}
    assert status["triton"] is not None  # no Triton kernels: the reason says so
    assert all(v is None or isinstance(v, str) and v for v in status.values())
