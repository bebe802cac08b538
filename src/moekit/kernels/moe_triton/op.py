"""The whole expert FFN of an MoE layer on Triton kernels, as a torch custom op with autograd.

Legend: T tokens, K slots per token, S = T*K slots, D model dim, F expert hidden dim,
H = 2F ``[gate | up]`` for gated activations else F, E experts.

Forward (4 kernels after the device-side routing metadata): gather + input projection + activation,
down projection + routing weight, deterministic combine. Backward (5): the down projection's
backward with the activation recomputed and the router gradient in its epilogue; the input
gradient (per slot, then the same combine); the two weight gradients as grouped ``X^T Y``.
Only the input projection ``h`` (S, H) is kept between forward and backward.

``torch.library.custom_op`` makes each direction one opaque op for ``torch.compile`` (with fake
implementations for tracing); nothing here reads a device value on the host, so the op can be
captured in a CUDA graph.
"""

from __future__ import annotations

import typing

import torch

from moekit.kernels.moe_triton.config import (
    DTYPES,
    GATED_CODES,
    TileConfig,
    act_code,
    default_tiles,
    triton_status,
)
from moekit.kernels.moe_triton.routing import routing_meta


def _launch():  # type: ignore[no-untyped-def]
    """The launcher module; imported on first use so that importing moekit never imports Triton."""
    from moekit.kernels.moe_triton import launch

    return launch


def _tiles(x: torch.Tensor, indices: torch.Tensor, E: int, tiles: typing.Sequence[int] | None) -> TileConfig:
    if tiles is not None and len(tiles) > 0:
        return TileConfig.from_list(list(tiles))
    T, K = indices.shape
    return default_tiles(T * K, T, E, x.dtype, x.device)


@torch.library.custom_op("moekit::moe_ffn_triton_fwd", mutates_args=())
def moe_ffn_triton_fwd(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
                       keep: torch.Tensor | None, w_in: torch.Tensor, b_in: torch.Tensor | None,
                       w_down: torch.Tensor, b_down: torch.Tensor | None, code: int, alpha: float,
                       limit: float, store_h: bool, tiles: typing.Sequence[int] | None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(y_TD, h_SH): the layer's output and, with ``store_h``, the saved input projection
    (else an empty (0, H) tensor)."""
    L = _launch()
    T, K = indices.shape
    E, H = w_in.shape[0], w_in.shape[2]
    S = T * K
    cfg = _tiles(x, indices, E, tiles)
    if S == 0:
        return x.new_zeros(T, x.shape[1]), x.new_empty(0, H)
    meta = routing_meta(indices, keep, E, cfg.block_m)
    a, h = L.gate_up(x, meta, K, w_in, b_in, code, alpha, limit, store_h, cfg)
    y_SD = L.rows_gemm(a, meta, K, w_down, b_down, weights.reshape(-1), cfg)
    keep_S = None if keep is None else keep.reshape(-1)
    y = L.combine(y_SD, keep_S, T, K, x.dtype)
    return y, (h if h is not None else x.new_empty(0, H))


@moe_ffn_triton_fwd.register_fake
def _fwd_fake(x, indices, weights, keep, w_in, b_in, w_down, b_down, code, alpha, limit, store_h,  # type: ignore[no-untyped-def]
              tiles):
    S, H = indices.shape[0] * indices.shape[1], w_in.shape[2]
    return x.new_empty(x.shape[0], x.shape[1]), x.new_empty(S if store_h and S > 0 else 0, H)


@torch.library.custom_op("moekit::moe_ffn_triton_bwd", mutates_args=())
def moe_ffn_triton_bwd(grad_y: torch.Tensor, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
                       keep: torch.Tensor | None, w_in: torch.Tensor, b_in: torch.Tensor | None,
                       w_down: torch.Tensor, b_down: torch.Tensor | None, h: torch.Tensor, code: int,
                       alpha: float, limit: float, tiles: typing.Sequence[int] | None,
                       need_dx: bool = True, need_dw: bool = True,
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                  torch.Tensor]:
    """(dx, dweights, dw_in, db_in, dw_down, db_down); a missing bias, or a gradient not asked
    for (``need_dx``: x; ``need_dw``: weights and biases), comes back empty."""
    L = _launch()
    T, K = indices.shape
    E = w_in.shape[0]
    S = T * K
    cfg = _tiles(x, indices, E, tiles)
    g = grad_y.contiguous()
    if S == 0:
        zeros = torch.zeros_like
        return (zeros(x) if need_dx else x.new_empty(0), zeros(weights),
                zeros(w_in) if need_dw else x.new_empty(0),
                zeros(b_in) if need_dw and b_in is not None else x.new_empty(0),
                zeros(w_down) if need_dw else x.new_empty(0),
                zeros(b_down) if need_dw and b_down is not None else x.new_empty(0))
    meta = routing_meta(indices, keep, E, cfg.block_m)
    weights_S = weights.reshape(-1).contiguous()
    # dweights of dropped slots come back zero: no program writes their rows of the partial sums.
    dh, dweights_S = L.down_backward(g, meta, K, w_down, b_down, h, weights_S, code, alpha, limit, cfg)
    dx = dw_in = db_in = dw_down = db_down = None
    if need_dx:
        dx_SD = L.rows_gemm(dh, meta, K, w_in.transpose(1, 2), None, None, cfg)
        dx = L.combine(dx_SD, None if keep is None else keep.reshape(-1), T, K, x.dtype)
    if need_dw:
        dw_in, db_in = L.weight_grad(x, dh, meta, K, E, True, False, None, None, w_in.dtype, cfg,
                                     with_bias=b_in is not None)
        dw_down, db_down = L.weight_grad(h, g, meta, K, E, False, True, weights_S, (code, alpha, limit),
                                         w_down.dtype, cfg, with_bias=b_down is not None)
    # Each missing gradient gets its own empty tensor (a custom op's outputs may not alias).
    return tuple(x.new_empty(0) if t is None else t for t in  # type: ignore[return-value]
                 (dx, dweights_S.view(T, K).to(weights.dtype), dw_in, db_in, dw_down, db_down))


@moe_ffn_triton_bwd.register_fake
def _bwd_fake(grad_y, x, indices, weights, keep, w_in, b_in, w_down, b_down, h, code, alpha, limit,  # type: ignore[no-untyped-def]
              tiles, need_dx=True, need_dw=True):
    like = torch.empty_like
    return (like(x) if need_dx else x.new_empty(0), like(weights),
            like(w_in) if need_dw else x.new_empty(0),
            like(b_in) if need_dw and b_in is not None else x.new_empty(0),
            like(w_down) if need_dw else x.new_empty(0),
            like(b_down) if need_dw and b_down is not None else x.new_empty(0))


def _setup_context(ctx, inputs, output) -> None:  # type: ignore[no-untyped-def]
    x, indices, weights, keep, w_in, b_in, w_down, b_down, code, alpha, limit, store_h, tiles = inputs
    ctx.save_for_backward(x, indices, weights, keep, w_in, b_in, w_down, b_down, output[1])
    ctx.args = (code, alpha, limit, tiles)
    ctx.store_h = store_h


def _backward(ctx, grad_y, grad_h):  # type: ignore[no-untyped-def]
    x, indices, weights, keep, w_in, b_in, w_down, b_down, h = ctx.saved_tensors
    if not ctx.store_h:
        raise RuntimeError("moe_ffn_triton_fwd ran with store_h=False, so it kept nothing for a "
                           "backward; call moe_ffn_triton (which sets it when a gradient is needed)")
    need = ctx.needs_input_grad
    need_dx, need_dw = need[0], any(need[i] for i in (4, 5, 6, 7))
    dx, dweights, dw_in, db_in, dw_down, db_down = moe_ffn_triton_bwd(
        grad_y, x, indices, weights, keep, w_in, b_in, w_down, b_down, h, *ctx.args, need_dx, need_dw)
    return (dx if need_dx else None, None, dweights, None, dw_in if need_dw else None,
            db_in if need_dw and b_in is not None else None, dw_down if need_dw else None,
            db_down if need_dw and b_down is not None else None, None, None, None, None, None)


moe_ffn_triton_fwd.register_autograd(_backward, setup_context=_setup_context)


def _check_tensor(name: str, t: object, ndim: int, shape: tuple[int | None, ...]) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != ndim or any(s is not None and s != n for s, n in zip(shape, t.shape)):
        want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} has shape {tuple(t.shape)}; expected {want}")
    return t


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    from moekit.kernels.grouped_mm import _autocast_dtype as dtype_of

    return dtype_of(device_type)


def moe_ffn_triton(x_TD: torch.Tensor, indices_TK: torch.Tensor, weights_TK: torch.Tensor,
                   keep_TK: torch.Tensor | None, w_in: torch.Tensor, b_in: torch.Tensor | None,
                   w_down: torch.Tensor, b_down: torch.Tensor | None, activation: str = "swiglu", *,
                   clamp: tuple[float, float] | None = None, tiles: TileConfig | None = None,
                   ) -> torch.Tensor:
    """Run E feed-forward experts on the routed slots of T tokens and combine them: Triton kernels.

    ``y_TD[t] = sum_k keep[t,k] * weights[t,k] * (act(x[t] @ w_in[e] + b_in[e]) @ w_down[e] + b_down[e])``
    with ``e = indices[t,k]``; differentiable in ``x_TD``, ``weights_TK`` (the router gradient),
    ``w_in``, ``w_down`` and the biases. Deterministic (no atomics), no host sync.

    Parameters
    ----------
    x_TD : (T, D) float32, bfloat16 or float16, on a CUDA GPU (or CPU under ``TRITON_INTERPRET=1``).
    indices_TK : (T, K) int64 expert of each slot, in ``[0, E)``.
    weights_TK : (T, K) float32 combine weight of each slot.
    keep_TK : (T, K) bool, False for dropped slots (they contribute zero); None keeps every slot.
    w_in : (E, D, H) with H = 2F ``[gate | up]`` for ``swiglu``/``geglu``, else F.
    b_in : (E, H) or None.
    w_down : (E, F, D).
    b_down : (E, D) or None.
    activation : ``"swiglu"`` ``silu(gate) * up``, ``"geglu"`` ``gelu(gate) * up``, ``"gelu"``,
        ``"relu"``, ``"silu"``.
    clamp : ``(alpha, limit)`` turns ``swiglu`` into GPT-OSS's clamped variant
        ``(up.clamp(-limit, limit) + 1) * g * sigmoid(alpha * g)`` with ``g = gate.clamp(max=limit)``;
        :data:`~moekit.kernels.moe_triton.config.GPT_OSS_CLAMP` is GPT-OSS's ``(1.702, 7.0)``.
        Unlike transformers' ``gate_up_proj`` (gate and up interleaved), ``w_in`` holds
        ``[gate | up]``.
    tiles : tile sizes; None picks them from the shapes.

    Returns
    -------
    y_TD : (T, D) in ``x_TD``'s dtype (summed over slots in float32).

    Examples
    --------
    >>> import torch
    >>> from moekit.kernels.moe_triton import moe_ffn_triton, triton_status
    >>> device = "cuda" if triton_status("cuda") is None else "cpu"
    >>> if triton_status(device) is None:
    ...     x = torch.randn(5, 32, device=device)
    ...     idx = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1], [3, 2]], device=device)
    ...     w = torch.full((5, 2), 0.5, device=device)
    ...     w_in, w_down = torch.randn(4, 32, 64, device=device), torch.randn(4, 32, 32, device=device)
    ...     y = moe_ffn_triton(x, idx, w, None, w_in, None, w_down, None, "swiglu")
    ...     assert y.shape == (5, 32)
    """
    code = act_code(activation, clamp)
    _check_tensor("x_TD", x_TD, 2, (None, None))
    T, D = x_TD.shape
    _check_tensor("indices_TK", indices_TK, 2, (T, None))
    K = indices_TK.shape[1]
    _check_tensor("weights_TK", weights_TK, 2, (T, K))
    _check_tensor("w_in", w_in, 3, (None, D, None))
    E, H = w_in.shape[0], w_in.shape[2]
    gated = code in GATED_CODES
    if gated and H % 2:
        raise ValueError(f"w_in has H={H} columns; activation={activation!r} needs an even H = 2F "
                         "holding [gate | up]")
    Fh = H // 2 if gated else H
    _check_tensor("w_down", w_down, 3, (E, Fh, D))
    if b_in is not None:
        _check_tensor("b_in", b_in, 2, (E, H))
    if b_down is not None:
        _check_tensor("b_down", b_down, 2, (E, D))
    if keep_TK is not None:
        _check_tensor("keep_TK", keep_TK, 2, (T, K))
        if keep_TK.dtype != torch.bool:
            raise TypeError(f"keep_TK has dtype {keep_TK.dtype}; it must be torch.bool (or None to keep every slot)")
    if indices_TK.dtype != torch.int64:
        raise TypeError(f"indices_TK has dtype {indices_TK.dtype}; it must be torch.int64: pass indices_TK.long()")
    if not weights_TK.is_floating_point():
        raise TypeError(f"weights_TK has dtype {weights_TK.dtype}; it must be floating (float32): pass weights_TK.float()")
    if tiles is not None and not isinstance(tiles, TileConfig):
        raise TypeError(f"tiles must be a TileConfig or None, got {type(tiles).__name__}")
    cast = _autocast_dtype(x_TD.device.type)
    if cast is not None:
        x_TD, w_in, w_down = x_TD.to(cast), w_in.to(cast), w_down.to(cast)
        b_in = None if b_in is None else b_in.to(cast)
        b_down = None if b_down is None else b_down.to(cast)
    for name, t in (("w_in", w_in), ("b_in", b_in), ("w_down", w_down), ("b_down", b_down)):
        if t is not None and t.dtype != x_TD.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x_TD is {x_TD.dtype}; convert one to the other "
                            "(or run under torch.autocast)")
    if x_TD.dtype not in DTYPES:
        raise TypeError(f"x_TD has dtype {x_TD.dtype}; the Triton kernels take float32, bfloat16 or "
                        "float16: convert it, or use backend 'loop' or 'grouped_mm'")
    for name, t in (("indices_TK", indices_TK), ("weights_TK", weights_TK), ("keep_TK", keep_TK),
                    ("w_in", w_in), ("b_in", b_in), ("w_down", w_down), ("b_down", b_down)):
        if t is not None and t.device != x_TD.device:
            raise ValueError(f"{name} is on {t.device} but x_TD is on {x_TD.device}; move them to one device")
    reason = triton_status(x_TD.device, x_TD.dtype)
    if reason is not None:
        raise ValueError(f"moe_ffn_triton cannot run on {x_TD.device}: {reason}")
    _check_indices(indices_TK, E)
    alpha, limit = (float(clamp[0]), float(clamp[1])) if clamp is not None else (1.702, 7.0)
    need_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x_TD, weights_TK, w_in, b_in, w_down, b_down))
    y, _ = moe_ffn_triton_fwd(
        x_TD.contiguous(), indices_TK.contiguous(), weights_TK.float().contiguous(),
        None if keep_TK is None else keep_TK.contiguous(), w_in, b_in, w_down, b_down,
        code, alpha, limit, need_grad, None if tiles is None else tiles.as_list())
    return y


def _check_indices(indices_TK: torch.Tensor, E: int) -> None:
    """Out-of-range expert indices would read other experts' weights: refuse them.

    On CPU the check is exact and raises a ValueError; on CUDA it is an asynchronous device
    assert (no host sync), so a bad index fails the next synchronising call instead.
    """
    if indices_TK.numel() == 0 or torch.compiler.is_compiling():
        return
    if indices_TK.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # a CUDA graph replays with new indices anyway: the check would guard one capture
    ok = (indices_TK >= 0).all() & (indices_TK < E).all()
    if indices_TK.device.type == "cpu":
        if not bool(ok):
            lo, hi = int(indices_TK.min()), int(indices_TK.max())
            raise ValueError(f"indices_TK holds values in [{lo}, {hi}]; every index must lie in [0, {E}) "
                             f"for E={E} experts")
    else:
        torch._assert_async(ok, f"moe_ffn_triton: indices_TK must lie in [0, {E})")
