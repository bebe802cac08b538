"""Choices the Triton MoE kernels take from the host: activation codes, tile sizes, availability.

Nothing here imports Triton, so ``moekit.kernels`` can report on the backend without loading it.

Legend: T tokens, K slots per token, S = T*K token-slots, D model dim, F expert hidden dim,
E experts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Literal, get_args

import torch

Activation = Literal["swiglu", "geglu", "gelu", "relu", "silu"]
ACTIVATIONS: tuple[str, ...] = get_args(Activation)
GATED: frozenset[str] = frozenset({"swiglu", "geglu"})

#: GPT-OSS's clamped SwiGLU: ``clamp=(alpha, limit)`` with these values reproduces
#: transformers' ``GptOssExperts`` (``swiglu_alpha=1.702``, ``swiglu_limit=7.0``).
GPT_OSS_CLAMP: tuple[float, float] = (1.702, 7.0)

# Activation codes shared with the kernels (a tl.constexpr there). 5 is GPT-OSS's clamped SwiGLU.
ACT_CODES: dict[str, int] = {"swiglu": 0, "geglu": 1, "gelu": 2, "relu": 3, "silu": 4}
ACT_CLAMPED_SWIGLU = 5
GATED_CODES: frozenset[int] = frozenset({0, 1, ACT_CLAMPED_SWIGLU})

# Dtypes the kernels take: the operands of ``tl.dot`` on every CUDA GPU Triton supports.
DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16)


def act_code(activation: str, clamp: tuple[float, float] | None) -> int:
    """The kernels' code for ``activation`` (with GPT-OSS's clamp when ``clamp`` is given)."""
    if activation not in ACT_CODES:
        options = ", ".join(repr(a) for a in ACTIVATIONS)
        raise ValueError(f"activation={activation!r} is not one of the supported values; use one of {options}")
    if clamp is None:
        return ACT_CODES[activation]
    if activation != "swiglu":
        raise ValueError(f"clamp={clamp!r} applies to activation='swiglu' only (GPT-OSS's clamped "
                         f"SwiGLU), got activation={activation!r}; pass clamp=None")
    if (not isinstance(clamp, tuple) or len(clamp) != 2
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in clamp)):
        raise TypeError(f"clamp={clamp!r} must be a tuple (alpha, limit) of two floats, "
                        f"e.g. clamp={GPT_OSS_CLAMP} for GPT-OSS")
    alpha, limit = float(clamp[0]), float(clamp[1])
    if not (limit > 0 and alpha > 0):
        raise ValueError(f"clamp={clamp!r} needs alpha > 0 and limit > 0, e.g. clamp={GPT_OSS_CLAMP}")
    return ACT_CLAMPED_SWIGLU


@dataclasses.dataclass(frozen=True, kw_only=True)
class TileConfig:
    """Tile sizes of the grouped GEMMs.

    Parameters
    ----------
    block_m : rows of the expert buffer per tile (one tile never spans two experts).
    block_n : output columns per program (the kernels that hold gate and up side by side take
        ``block_n // 2`` of each from ``block_n = 64`` up).
    block_k : reduction step (the weight-gradient kernel steps ``block_k // 2`` rows from 64 up).
    group_m : tiles that walk the output columns together (L2 reuse of the weights).
    num_warps, num_stages : passed to the Triton launch (ignored by the interpreter).

    Examples
    --------
    >>> TileConfig(block_m=32, block_n=32, block_k=32).block_m
    32
    """

    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 16 or v & (v - 1):
                raise ValueError(f"{name}={v!r} must be a power of two >= 16 (tl.dot needs at least 16); "
                                 f"e.g. {name}=32")
        for name in ("group_m", "num_warps", "num_stages"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}={v!r} must be an int >= 1")

    def as_list(self) -> list[int]:
        return [self.block_m, self.block_n, self.block_k, self.group_m, self.num_warps, self.num_stages]

    @classmethod
    def from_list(cls, values: list[int]) -> TileConfig:
        bm, bn, bk, gm, nw, ns = values
        return cls(block_m=bm, block_n=bn, block_k=bk, group_m=gm, num_warps=nw, num_stages=ns)


def interpreting() -> bool:
    """Whether ``TRITON_INTERPRET`` asks Triton to run kernels on the CPU (read as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def _next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def decode_block_m(num_tokens: int) -> int:
    """Tile rows for T <= 64 tokens: ``>= T`` (and >= 16 for ``tl.dot``), so that each expert's
    rows (at most T when a token's K experts are distinct) fit one tile and every active expert's
    weights are read once."""
    return min(64, max(16, _next_pow2(num_tokens)))


def default_tiles(num_slots: int, num_tokens: int, num_experts: int, dtype: torch.dtype,
                  device: torch.device) -> TileConfig:
    """Tile sizes from host-known shapes only (so a CUDA graph or a compiled graph stays static).

    Under the interpreter: 32 everywhere (the interpreter's cost grows with programs x ops, and
    smaller blocks only add programs). Decode (T <= 64): ``block_m >= T`` so that every active
    expert fits one tile and its weights are read once. Otherwise: untuned defaults sized for
    Ampere/Hopper shared memory; :class:`TileConfig` overrides them.
    """
    if device.type != "cuda":
        return TileConfig(block_m=32, block_n=32, block_k=32, group_m=4, num_warps=1, num_stages=1)
    stages = 3 if _shared_memory(device) >= 160 * 1024 else 2
    if num_tokens <= 64:
        return TileConfig(block_m=decode_block_m(num_tokens), block_n=64, block_k=128 if dtype != torch.float32 else 64,
                          group_m=1, num_warps=4, num_stages=stages)
    if dtype == torch.float32:
        return TileConfig(block_m=64, block_n=64, block_k=32, group_m=8, num_warps=4, num_stages=stages)
    rows_per_expert = num_slots / max(1, num_experts)
    bm = 128 if rows_per_expert >= 512 else 64
    return TileConfig(block_m=bm, block_n=128, block_k=64, group_m=8,
                      num_warps=8 if bm == 128 else 4, num_stages=stages)


def _shared_memory(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "shared_memory_per_block_optin", 0) or 99 * 1024)


def triton_status(device: str | torch.device = "cuda", dtype: torch.dtype = torch.bfloat16) -> str | None:
    """Why the Triton MoE kernels cannot run for ``device`` and ``dtype``; None when they can.

    Examples
    --------
    >>> reason = triton_status("cpu")
    >>> reason is None or isinstance(reason, str)
    True
    """
    device = torch.device(device)
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'moekit[triton]')"
    if dtype not in DTYPES:
        return f"dtype {dtype} is not supported by the Triton kernels (use float32, bfloat16 or float16)"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available to torch on this machine"
        return None
    if device.type == "cpu":
        if interpreting():
            if importlib.util.find_spec("numpy") is None:
                return "TRITON_INTERPRET=1 needs numpy (pip install numpy)"
            return None
        return ("Triton kernels need a CUDA GPU; on CPU they run only under the interpreter "
                "(set TRITON_INTERPRET=1 before Python starts; slow, for tests)")
    return f"device {device} is not supported by the Triton kernels (use a CUDA GPU)"
