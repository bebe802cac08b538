"""Activations as Triton device functions, forward and derivative, on float32 blocks.

Codes (``ACT``, a constexpr): 0 swiglu ``silu(g) * u``, 1 geglu ``gelu(g) * u`` (exact erf GELU,
torch's default), 2 gelu, 3 relu, 4 silu, 5 GPT-OSS's clamped SwiGLU
``(clamp(u, -limit, limit) + 1) * gc * sigmoid(alpha * gc)`` with ``gc = min(g, limit)``.
For the ungated codes ``u`` is ignored. The derivatives follow torch's autograd exactly: a clamp
passes the gradient where its input lies within the bounds (inclusive), relu where ``g > 0``.
Their torch twins are :func:`moekit.kernels.moe_triton.reference.activation` and
:func:`~moekit.kernels.moe_triton.reference.activation_backward`.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def act_fwd(g, u, alpha, limit, ACT: tl.constexpr):
    if ACT == 0:
        out = g * tl.sigmoid(g) * u
    elif ACT == 1:
        out = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476)) * u
    elif ACT == 2:
        out = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476))
    elif ACT == 3:
        out = tl.where(g > 0, g, 0.0)
    elif ACT == 4:
        out = g * tl.sigmoid(g)
    else:
        gc = tl.minimum(g, limit)
        uc = tl.minimum(tl.maximum(u, -limit), limit)
        out = (uc + 1.0) * gc * tl.sigmoid(alpha * gc)
    return out


@triton.jit
def act_bwd(da, g, u, alpha, limit, ACT: tl.constexpr):
    """(d gate, d up) for the gated codes; (d input, 0) for the others."""
    if ACT == 0:
        s = tl.sigmoid(g)
        dg = da * u * (s * (1.0 + g * (1.0 - s)))
        du = da * g * s
    elif ACT == 1:
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        pdf = tl.exp(-0.5 * g * g) * 0.3989422804014327
        dg = da * u * (cdf + g * pdf)
        du = da * g * cdf
    elif ACT == 2:
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        pdf = tl.exp(-0.5 * g * g) * 0.3989422804014327
        dg = da * (cdf + g * pdf)
        du = 0.0 * da
    elif ACT == 3:
        dg = tl.where(g > 0, da, 0.0)
        du = 0.0 * da
    elif ACT == 4:
        s = tl.sigmoid(g)
        dg = da * (s * (1.0 + g * (1.0 - s)))
        du = 0.0 * da
    else:
        gc = tl.minimum(g, limit)
        uc = tl.minimum(tl.maximum(u, -limit), limit)
        s = tl.sigmoid(alpha * gc)
        dg = tl.where(g <= limit, da * (uc + 1.0) * (s + alpha * gc * s * (1.0 - s)), 0.0)
        du = tl.where((u >= -limit) & (u <= limit), da * gc * s, 0.0)
    return dg, du
