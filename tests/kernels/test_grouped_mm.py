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


# --- hygiene around torch._grouped_mm: nothing it leaves unwritten may reach a result ----------


def dirty_allocator(numel: int) -> None:
    """Leave freed memory full of NaN, so an unwritten output row would come back as NaN."""
    junk = torch.full((numel,), float("nan"))
    del junk


def _check_hygiene(sizes: list[int], tail: int, d: int = 16, f: int = 8, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    rows, used = sum(sizes) + tail, sum(sizes)
    x = torch.randn(rows, d, generator=g, requires_grad=True)
    w = torch.randn(len(sizes), d, f, generator=g, requires_grad=True)
    offsets = torch.tensor(sizes).cumsum(0).to(torch.int32)
    dirty_allocator(4 * rows * max(d, f) + len(sizes) * d * f)
    out = grouped_mm(x, w, offsets)
    assert torch.isfinite(out).all(), "uninitialised rows reached the output"
    assert torch.equal(out[used:], torch.zeros(tail, f))
    torch.testing.assert_close(out, per_group_reference(x, w, sizes))
    dirty_allocator(4 * rows * max(d, f) + len(sizes) * d * f)
    out.sum().backward()  # an expanded (stride 0) gradient
    assert torch.isfinite(x.grad).all() and torch.isfinite(w.grad).all()
    assert torch.equal(x.grad[used:], torch.zeros(tail, d)), "input gradient of unused rows"
    for e, n in enumerate(sizes):
        if n == 0:
            assert torch.equal(w.grad[e], torch.zeros(d, f)), f"weight gradient of empty group {e}"
    rx, rw = torch.autograd.grad(per_group_reference(x, w, sizes).sum(), (x, w))
    torch.testing.assert_close(x.grad, rx)
    torch.testing.assert_close(w.grad, rw)


@pytest.mark.parametrize("sizes, tail", [
    ([0, 0, 0], 16),          # every group empty, rows present
    ([5, 0, 11], 0),          # an empty group in the middle, full buffer
    ([0, 16, 0, 0], 8),       # one group takes every used row, rows past the end
    ([3, 0, 2, 0], 11),       # awkward sizes and a long tail
])
def test_dirty_allocator_never_leaks_into_results(sizes, tail):
    _check_hygiene(sizes, tail)


def test_all_empty_groups_without_rows():
    x = torch.randn(0, 8, requires_grad=True)
    w = torch.randn(3, 8, 4, requires_grad=True)
    out = grouped_mm(x, w, torch.zeros(3, dtype=torch.int32))
    assert out.shape == (0, 4)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros(3, 8, 4)) and x.grad.shape == (0, 8)


@pytest.mark.parametrize("layout", ["transposed", "strided", "noncontiguous_x", "int64_offsets"])
def test_any_operand_strides_and_offset_dtype(layout):
    g = torch.Generator().manual_seed(1)
    sizes = [6, 0, 10]
    x = torch.randn(20, 16, generator=g)
    w = torch.randn(3, 16, 8, generator=g)
    offsets = torch.tensor(sizes).cumsum(0).to(torch.int32)
    if layout == "transposed":  # transformers keeps (E, F, D) and multiplies by its transpose
        w = w.transpose(1, 2).contiguous().transpose(1, 2)
    elif layout == "strided":  # no unit stride at all: torch._grouped_mm rejects it
        w = torch.randn(3, 16, 32, generator=g)[:, :, ::4]
    elif layout == "noncontiguous_x":
        x = torch.randn(16, 20, generator=g).t()
    else:
        offsets = offsets.to(torch.int64)
    x.requires_grad_(True)
    w.requires_grad_(True)
    out = grouped_mm(x, w, offsets)
    ref = per_group_reference(x, w, sizes)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(out.shape, generator=g)
    for a, b in zip(torch.autograd.grad(out, (x, w), grad), torch.autograd.grad(ref, (x, w), grad)):
        torch.testing.assert_close(a, b)
