"""CUDA checks (skipped without a GPU): the fast path against the loop reference on the device."""

from __future__ import annotations

import pytest
import torch

from moekit.kernels import available_backends
from moekit.layers import MoELayer

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("capacity_factor", [None, 1.0])
def test_grouped_matches_loop_on_cuda(dtype, capacity_factor):
    torch.manual_seed(0)
    moe = MoELayer(256, 512, 8, 2, capacity_factor=capacity_factor).cuda().to(dtype)
    x = torch.randn(4, 300, 256, device="cuda", dtype=dtype, requires_grad=True)
    y = moe(x)
    gx, gw = torch.autograd.grad(y.float().pow(2).sum(), (x, moe.experts.w_in))
    moe.backend = "loop"
    y_ref = moe(x)
    gx_ref, gw_ref = torch.autograd.grad(y_ref.float().pow(2).sum(), (x, moe.experts.w_in))
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(y.float(), y_ref.float(), atol=tol, rtol=tol)
    torch.testing.assert_close(gx.float(), gx_ref.float(), atol=tol * 10, rtol=tol * 10)
    torch.testing.assert_close(gw.float(), gw_ref.float(), atol=tol * 10, rtol=tol * 10)


def test_grouped_path_is_deterministic_on_cuda():
    torch.manual_seed(0)
    moe = MoELayer(128, 256, 16, 4).cuda()
    x = torch.randn(1024, 128, device="cuda", requires_grad=True)
    runs = []
    for _ in range(2):
        y = moe(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        runs.append((y.detach(), g))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_native_grouped_mm_status_on_cuda_bf16():
    status = available_backends("cuda", torch.bfloat16)
    # Informational on older GPUs; on Hopper (sm90) torch._grouped_mm runs natively.
    if torch.cuda.get_device_capability() >= (9, 0):
        assert status["grouped_mm"] is None, status


def test_grouped_path_has_no_host_sync_on_cuda():
    if available_backends("cuda", torch.bfloat16)["grouped_mm"] is not None:
        pytest.skip("native grouped_mm unavailable on this GPU: the fallback syncs by design")
    torch.manual_seed(0)
    moe = MoELayer(256, 512, 8, 2, capacity_factor=1.25).cuda().to(torch.bfloat16)
    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    moe(x)  # warm-up (the availability probe may sync once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = moe(x)
        y.float().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
