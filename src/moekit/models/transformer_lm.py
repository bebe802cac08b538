"""A decoder-only transformer language model whose MLPs are mixtures of experts.

Read top to bottom: the config (which nests the layer's own :class:`moekit.layers.MoEConfig`),
then the model (embeddings -> blocks -> final norm -> tied head). The dense baseline with the same
*active* parameter count is :func:`moekit.models.dense_twin`.

A decoder LM must be causal: the logits at position t may depend on tokens 0..t only. Routers
that decide per token (``topk``, ``switch``, ``noisy_topk``, ``sigmoid_bias``) keep that; two
things break it and are refused: ``expert_choice`` (each expert picks its tokens among the whole
batch) and a token-choice ``capacity_factor`` (experts fill up over the whole batch, so a later
token can push out an earlier token's slot). Measured on a small model before they were refused:
changing only the tokens after position 40 moved the logits before it by up to 0.21 and 0.27.

Example
-------
>>> import torch
>>> from moekit.layers import MoEConfig
>>> from moekit.models import TransformerLM, TransformerLMConfig, dense_twin
>>> moe = MoEConfig.create(d_model=32, d_ff=32, num_experts=4, top_k=2, aux_loss_weight=0.01)
>>> config = TransformerLMConfig(vocab_size=65, block_size=32, d_model=32, n_layers=2,
...                              n_heads=2, moe=moe, d_ff=32)
>>> model = TransformerLM(config)
>>> model(torch.zeros(3, 16, dtype=torch.long)).shape
torch.Size([3, 16, 65])
>>> TransformerLMConfig.create(vocab_size=65, block_size=32, d_model=32, n_layers=2, n_heads=2,
...                            d_ff=32, num_experts=4, top_k=2) == config   # the flat keywords
True
>>> dense = dense_twin(model)   # one dense MLP of hidden size top_k * d_ff per block
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from moekit.layers import FeedForward, MoEConfig
from moekit.layers._checks import check_choice, check_positive_int
from moekit.layers.experts import ACTIVATIONS, Activation
from moekit.layers.routing import RouterKind
from moekit.models.blocks import (
    Block,
    SelfAttention,
    check_dropout,
    check_mlp_config,
    config_from_dict,
    flat_moe_config,
    make_mlp,
)

#: Routers a decoder LM accepts: each decides per token, so the model stays causal.
CAUSAL_ROUTERS: tuple[str, ...] = ("topk", "switch", "noisy_topk", "sigmoid_bias")


def check_causal_routing(moe: MoEConfig) -> None:
    """Refuse routing that lets later tokens change earlier tokens' outputs in a decoder LM."""
    use = ", ".join(repr(r) for r in CAUSAL_ROUTERS)
    if moe.router.kind not in CAUSAL_ROUTERS:
        raise ValueError(
            f"router={moe.router.kind!r} is not causal: each expert picks its tokens among the "
            "whole batch, so later tokens change earlier tokens' logits and the validation loss "
            f"looks better than it is; a decoder language model needs a per-token router: use "
            f"one of {use}")
    if moe.dispatch.capacity_factor is not None:
        raise ValueError(
            f"capacity_factor={moe.dispatch.capacity_factor} is not causal in a decoder language "
            "model: experts fill up over the whole batch, so a later token can push out an "
            "earlier token's slot (and generation, with other batches, routes differently); use "
            "capacity_factor=None (dropless routing)")


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
    moe : moekit.layers.MoEConfig or None
        The MoE MLP of the MoE blocks (its ``d_model`` must be the model's); None builds a dense
        model. Its router must be causal (see the module docstring).
    moe_every : int
        Every ``moe_every``-th block (counting from the last) has the MoE MLP, the others a dense
        MLP; 1 = every block.
    d_ff, activation : int, str
        Hidden size and activation of the dense MLPs (every block when ``moe`` is None).
    position : {"rope", "learned"}
        Rotary embeddings in attention, or a learned position table added to the tokens.
    dropout : float
        Dropout after attention and MLP (0 for the small models of the examples).
    tie_weights : bool
        Share the token embedding with the output head (fewer parameters, usually better).

    :meth:`create` builds the config from the flat keywords of experiment files (``num_experts``,
    ``top_k``, ``router``, ...).
    """

    vocab_size: int
    block_size: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    moe: MoEConfig | None = None
    moe_every: int = 1
    d_ff: int = 256
    activation: Activation = "swiglu"
    position: Literal["rope", "learned"] = "rope"
    dropout: float = 0.0
    tie_weights: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "d_model", "n_layers", "n_heads", "d_ff",
                     "moe_every"):
            check_positive_int(name, getattr(self, name))
        check_choice("activation", self.activation, ACTIVATIONS)
        check_choice("position", self.position, ("rope", "learned"))
        check_dropout(self.dropout)
        if self.d_model % self.n_heads != 0:
            raise ValueError(f"d_model={self.d_model} must be divisible by n_heads={self.n_heads}; "
                             "change one of them")
        if self.position == "rope" and (self.d_model // self.n_heads) % 2 != 0:
            raise ValueError(f"position='rope' needs an even head size, got d_model // n_heads = "
                             f"{self.d_model // self.n_heads}; change d_model or n_heads")
        if self.moe is not None and not isinstance(self.moe, MoEConfig):
            kind = type(self.moe).__name__
            raise TypeError(f"TransformerLM moe={kind}(...) must be a moekit.layers.MoEConfig or "
                            "None" + ("; Soft MoE mixes the tokens of a sequence, so a decoder "
                                      "language model cannot use it" if kind == "SoftMoEConfig"
                                      else ""))
        check_mlp_config(self.moe, self.d_model, allow_soft=False, model="TransformerLM")
        if self.moe is not None:
            check_causal_routing(self.moe)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransformerLMConfig:
        """The config from a dict: ``dataclasses.asdict(config)`` (a run's ``config.json``
        ``model`` entry, which round-trips) or the flat keywords of :meth:`create`."""
        return config_from_dict(cls, data)  # type: ignore[no-any-return]

    @classmethod
    def create(
        cls,
        *,
        vocab_size: int,
        block_size: int = 128,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        d_ff: int = 256,
        num_experts: int = 8,
        top_k: int = 2,
        router: RouterKind = "topk",
        activation: Activation = "swiglu",
        capacity_factor: float | None = None,
        num_shared_experts: int = 0,
        aux_loss_weight: float = 0.01,
        z_loss_weight: float = 0.0,
        mlp: Literal["moe", "dense"] = "moe",
        moe_every: int = 1,
        position: Literal["rope", "learned"] = "rope",
        dropout: float = 0.0,
        tie_weights: bool = True,
    ) -> TransformerLMConfig:
        """The config from flat keywords, as experiment files write them.

        ``d_ff`` and ``activation`` are those of the experts and of the dense MLPs alike;
        ``num_shared_experts`` experts of hidden size ``d_ff`` see every token; ``mlp="dense"``
        builds a dense model (the MoE keywords are then ignored).
        """
        moe = flat_moe_config(mlp=mlp, router=router, d_model=d_model, d_ff=d_ff,
                              num_experts=num_experts, top_k=top_k, activation=activation,
                              capacity_factor=capacity_factor,
                              num_shared_experts=num_shared_experts,
                              aux_loss_weight=aux_loss_weight, z_loss_weight=z_loss_weight,
                              slots_per_expert=1)
        return cls(vocab_size=vocab_size, block_size=block_size, d_model=d_model,
                   n_layers=n_layers, n_heads=n_heads, moe=moe,  # type: ignore[arg-type]
                   moe_every=moe_every, d_ff=d_ff, activation=activation, position=position,
                   dropout=dropout, tie_weights=tie_weights)

    def block_is_moe(self, i: int) -> bool:
        """Whether block ``i`` (0 = first) has the MoE MLP."""
        return self.moe is not None and (self.n_layers - 1 - i) % self.moe_every == 0


class TransformerLM(nn.Module):
    """Decoder-only language model: ``(B, N)`` token ids -> ``(B, N, vocab_size)`` logits.

    The aux losses of its MoE layers are collected with
    :func:`moekit.layers.total_aux_loss` after each forward.
    """

    def __init__(self, config: TransformerLMConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerLMConfig):
            raise TypeError(f"config is a {type(config).__name__}; pass a TransformerLMConfig")
        self.config = c = config
        self.tok_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.block_size, c.d_model) if c.position == "learned" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList()
        for i in range(c.n_layers):
            attention = SelfAttention(c.d_model, c.n_heads, causal=True, dropout=c.dropout,
                                      rope_positions=c.block_size if c.position == "rope" else 0)
            mlp = make_mlp(c.moe if c.block_is_moe(i) else None, d_model=c.d_model, d_ff=c.d_ff,
                           activation=c.activation)
            self.blocks.append(Block(c.d_model, attention, mlp, c.dropout))
        self.ln_f = nn.LayerNorm(c.d_model)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)
        self.apply(_init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layers) so depth does not blow up.
        residual_std = 0.02 / math.sqrt(2 * c.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=residual_std)
        for block in self.blocks:
            if isinstance(block.mlp, FeedForward):  # the dense MLPs: GPT-2 init, like attention
                nn.init.normal_(block.mlp.w_in, mean=0.0, std=0.02)
                nn.init.normal_(block.mlp.w_down, mean=0.0, std=residual_std)
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
