"""Triton kernels for the expert FFN of an MoE layer (the ``triton`` backend).

Legend: T tokens, K slots per token, S = T*K token-slots, R rows sorted by expert, D model dim,
F expert hidden dim, H = 2F ``[gate | up]`` (gated activations) or F, E experts, G tiles.

The pipeline, each step a kernel with a torch twin in :mod:`.reference`:

1. :func:`~.routing.routing_meta` (torch ops on the device, no host sync): slots sorted by
   expert (stable), per-expert offsets, and a tile -> expert map sized by the host-computable
   bound ``S // block_m + min(E, S)``.
2. ``gate_up``: the gather of each row's token is the GEMM's A load (no permuted copy of x);
   gate and up come from one pass over x; the activation (SwiGLU, GeGLU, GPT-OSS's clamped
   SwiGLU, GELU, ReLU, SiLU) is the epilogue.
3. ``rows_gemm``: the down projection, with the bias and the routing weight in the epilogue,
   scattered back to slot order.
4. ``combine``: each token sums its K slots in float32, in a fixed order (no atomics).

The backward recomputes the activation from the saved input projection, puts the router
gradient in the epilogue of the down projection's backward, and computes the weight gradients as
grouped ``X^T Y`` per expert. :func:`moe_ffn_triton` is the public entry (a custom op with a
registered autograd, so ``torch.compile`` keeps it whole); with T <= 64 (decode) the tiles are
chosen so that every active expert's weights are read once.

Importing this package does not import Triton; the first call does (and with
``TRITON_INTERPRET=1`` set at that moment, the kernels run on the CPU under Triton's interpreter:
slow, for tests). :func:`triton_status` says whether they can run on a device.
"""

from moekit.kernels.moe_triton.config import GPT_OSS_CLAMP, TileConfig, triton_status
from moekit.kernels.moe_triton.op import moe_ffn_triton
from moekit.kernels.moe_triton.routing import RoutingMeta, num_tiles_bound, routing_meta

__all__ = ["GPT_OSS_CLAMP", "RoutingMeta", "TileConfig", "moe_ffn_triton", "num_tiles_bound",
           "routing_meta", "triton_status"]
