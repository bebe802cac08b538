"""Argument checks shared by the layers: each error names the parameter, the value and the fix."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def check_positive_int(name: str, value: object, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} must be an int; pass a whole number such as {name}=8")
    if value < 1:
        raise ValueError(f"{name}={value} must be >= 1{'; ' + hint if hint else ''}")
    return value


def check_choice(name: str, value: object, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        raise ValueError(f"{name}={value!r} is not one of the supported values; use one of {options}")
    return value  # type: ignore[return-value]


def check_input(x: torch.Tensor, d_model: int, layer: str) -> None:
    """Validate a layer input `(..., d_model)` of a floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer} input x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{layer} input x has dtype {x.dtype}; it must be a floating dtype "
            "(float32, bfloat16, float16 or float64): convert with x.float()"
        )
    if x.dim() == 0 or x.shape[-1] != d_model:
        raise ValueError(
            f"{layer} input x has shape {tuple(x.shape)}; its last dimension must be "
            f"d_model={d_model}: reshape the input or build the layer with d_model={x.shape[-1] if x.dim() else '?'}"
        )


def router_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of router maths and of the combine: float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_dtype_matches(x: torch.Tensor, param: torch.Tensor, layer: str) -> None:
    """Outside autocast, the input must have the parameters' dtype (else matmuls fail deep inside)."""
    if x.dtype == param.dtype:
        return
    from moekit.kernels.grouped_mm import _autocast_dtype

    if _autocast_dtype(x.device.type) is not None:
        return
    raise TypeError(
        f"{layer} input x has dtype {x.dtype} but the layer's parameters are {param.dtype}; "
        f"convert the layer with layer.to({x.dtype}), the input with x.to({param.dtype}), "
        "or run under torch.autocast"
    )


def count_values(values: torch.Tensor, n: int) -> torch.Tensor:
    """How often each of ``0 .. n-1`` occurs in ``values`` (int64, shape (n,)).

    ``torch.bincount`` would do, but on CUDA it reads the maximum back to the host (a sync);
    a scatter-add into a fixed-size buffer does not. Values outside ``[0, n)`` must not occur.
    """
    flat = values.reshape(-1)
    return torch.zeros(n, dtype=torch.int64, device=values.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int64))
