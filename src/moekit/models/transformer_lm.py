"""A decoder-only transformer language model whose MLPs are mixtures of experts.

Read top to bottom: the config, the model (embeddings -> blocks -> final norm -> tied head), then
:func:`dense_twin`, the same model with dense MLPs of the same *active* parameter count, the
baseline an MoE model should be compared with (same compute per token, fewer parameters).

Example
-------
>>> import torch
>>> from moekit.models.transformer_lm import TransformerLM, TransformerLMConfig, dense_twin
>>> config = TransformerLMConfig(vocab_size=65, block_size=32, d_model=32, n_layers=2, n_heads=2,
...                              d_ff=32, num_experts=4, top_k=2)
>>> model = TransformerLM(config)
>>> model(torch.zeros(3, 16, dtype=torch.long)).shape
torch.Size([3, 16, 65])
>>> dense = dense_twin(config)   # one dense MLP of hidden size top_k * d_ff per block
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from moekit.models.blocks import (
    ACTIVATIONS,
    ROUTERS,
    Activation,
    Block,
    RouterName,
    SelfAttention,
    check_choice,
    check_positive,
    make_mlp,
)


@dataclass(frozen=True, kw_only=True)
class TransformerLMConfig:
    """Shape of a :class:`TransformerLM`.

    Parameters
    ----------
    vocab_size : int
        Number of token ids.
    block_size : int
        Longest sequence the model reads (context length).
    d_model, n_layers, n_heads : int
        Width, depth and number of attention heads (``d_model % n_heads == 0``).
    d_ff : int
        Hidden size of each expert (or of the dense MLP when ``mlp="dense"``).
    num_experts, top_k : int
        Experts per MoE layer and experts each token uses.
    router : {"topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice"}
        Routing rule of :class:`moekit.layers.MoELayer`.
    activation : {"swiglu", "geglu", "gelu", "relu", "silu"}
        Activation of the experts and of the dense MLP.
    capacity_factor : float or None
        None = dropless; otherwise each expert takes at most ``ceil(cf * T * k / E)`` slots.
    num_shared_experts : int
        Experts every token passes through (DeepSeek-style), each of hidden size ``d_ff``.
    aux_loss_weight, z_loss_weight : float
        Weights of the load-balancing loss and the router z-loss.
    mlp : {"moe", "dense"}
        ``"dense"`` builds plain MLPs of hidden size ``d_ff`` (see :func:`dense_twin_config`).
    moe_every : int
        Every ``moe_every``-th block (counting from the last) has an MoE MLP, the rest dense MLPs
        of hidden size ``d_ff``; 1 = every block.
    position : {"rope", "learned"}
        Rotary embeddings in attention, or a learned position table added to the tokens.
    dropout : float
        Dropout after attention and MLP (0 for the small models of the examples).
    tie_weights : bool
        Share the token embedding with the output head (fewer parameters, usually better).
    """

    vocab_size: int
    block_size: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 256
    num_experts: int = 8
    top_k: int = 2
    router: RouterName = "topk"
    activation: Activation = "swiglu"
    capacity_factor: float | None = None
    num_shared_experts: int = 0
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 0.0
    mlp: Literal["moe", "dense"] = "moe"
    moe_every: int = 1
    position: Literal["rope", "learned"] = "rope"
    dropout: float = 0.0
    tie_weights: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "d_model", "n_layers", "n_heads", "d_ff",
                     "num_experts", "top_k", "moe_every"):
            check_positive(name, getattr(self, name))
        check_choice("router", self.router, ROUTERS)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("mlp", self.mlp, ("moe", "dense"))
        check_choice("position", self.position, ("rope", "learned"))
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}; "
                             "change one of them")
        if self.position == "rope" and (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(f"position='rope' needs an even head size, got d_model // n_heads = "
                             f"{self.d_model // self.n_heads}; change d_model or n_heads")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} must be <= num_experts={self.num_experts}; "
                             "lower top_k or add experts")
        if self.router == "switch" and self.top_k != 1:
            raise ValueError(f"router='switch' routes each token to one expert, got top_k={self.top_k}; "
                             "set top_k=1 or use router='topk'")
        if self.num_shared_experts < 0:
            raise ValueError(f"num_shared_experts={self.num_shared_experts} must be >= 0")
        if self.capacity_factor is not None and not self.capacity_factor > 0:
            raise ValueError(f"capacity_factor={self.capacity_factor} must be > 0, or None for dropless")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")


class TransformerLM(nn.Module):
    """Decoder-only language model: ``(B, N)`` token ids -> ``(B, N, vocab_size)`` logits.

    The aux losses of its MoE layers are collected with
    :func:`moekit.layers.total_aux_loss` after each forward.
    """

    def __init__(self, config: TransformerLMConfig) -> None:
        super().__init__()
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model) if c.position == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList()
        for i in range(c.n_layers):
            sparse = c.mlp == "moe" and (c.n_layers - 1 - i) % c.moe_every == 0
            attention = SelfAttention(c.d_model, c.n_heads, causal=True, dropout=c.dropout,
                                      rope_positions=c.block_size if c.position == "rope" else 0)
            mlp = make_mlp(
                kind="moe" if sparse else "dense", d_model=c.d_model, d_ff=c.d_ff,
                num_experts=c.num_experts, top_k=c.top_k, router=c.router,
                activation=c.activation, capacity_factor=c.capacity_factor,
                num_shared_experts=c.num_shared_experts, aux_loss_weight=c.aux_loss_weight,
                z_loss_weight=c.z_loss_weight,
            )
            self.blocks.append(Block(c.d_model, attention, mlp, c.dropout))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(_init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layers) so depth does not blow up.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("w_down.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layers))
        if c.tie_weights:
            self.lm_head.weight = self.tok_emb.weight

    def forward(self, idx_BN: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, N, vocab_size)`` of the next token at each position."""
        n = idx_BN.shape[1]
        if n > self.config.block_size:
            raise ValueError(f"sequence length {n} exceeds block_size={self.config.block_size}; "
                             "crop the input or build the model with a larger block_size")
        x_BND = self.tok_emb(idx_BN)
        if self.pos_emb is not None:
            x_BND = x_BND + self.pos_emb(torch.arange(n, device=idx_BN.device))
        x_BND = self.drop(x_BND)
        for block in self.blocks:
            x_BND = block(x_BND)
        return self.lm_head(self.ln_f(x_BND))

    @torch.no_grad()
    def generate(self, idx_BN: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens to ``idx_BN`` (call under ``model.eval()``)."""
        for _ in range(max_new_tokens):
            logits = self(idx_BN[:, -self.config.block_size:])[:, -1, :] / max(temperature, 1e-6)
            next_B1 = torch.multinomial(logits.float().softmax(-1), 1, generator=generator)
            idx_BN = torch.cat((idx_BN, next_B1), dim=1)
        return idx_BN


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)


def dense_twin_config(config: TransformerLMConfig) -> TransformerLMConfig:
    """The config of the dense model with the same active parameters as ``config``.

    Each MoE MLP becomes one dense MLP of hidden size ``top_k * d_ff + num_shared_experts * d_ff``:
    a token of the MoE model passes through ``top_k`` experts and the shared experts, so both
    models spend the same parameters (and FLOPs) per token; the MoE model holds more in total.
    Only possible when every block is MoE (``moe_every=1``).
    """
    if config.mlp == "dense":
        return config
    if config.moe_every != 1:
        raise ValueError(f"dense_twin needs moe_every=1, got moe_every={config.moe_every}: blocks "
                         "with dense and MoE MLPs would need two hidden sizes; set moe_every=1")
    d_ff_dense = (config.top_k + config.num_shared_experts) * config.d_ff
    return dataclasses.replace(config, mlp="dense", d_ff=d_ff_dense, num_experts=1, top_k=1,
                               router="topk", num_shared_experts=0, capacity_factor=None)


def dense_twin(config: TransformerLMConfig) -> TransformerLM:
    """The dense language model with the same active parameter count as ``TransformerLM(config)``."""
    return TransformerLM(dense_twin_config(config))
