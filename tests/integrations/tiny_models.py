"""Tiny random models of every MoE family of the installed transformers, built from config classes.

Nothing is downloaded: each family's config class is instantiated with small sizes (``SMALL``,
applied where the config has the field, plus ``OVERRIDES`` per family), and its causal LM (or,
for families that ship only a multimodal wrapper, its text model) is built with random weights.
Router weights are drawn large enough that routing is decisive (no ties).
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
from typing import Any

import torch

transformers = __import__("transformers")
from transformers import PreTrainedModel  # noqa: E402

ROOT = pathlib.Path(transformers.__file__).parent / "models"

SMALL: dict[str, Any] = dict(
    hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
    shared_expert_intermediate_size=24, shared_intermediate_size=24, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=97,
    num_experts=8, num_local_experts=8, n_routed_experts=8, moe_num_experts=8,
    num_experts_per_tok=2, moe_topk=2, moe_k=2, n_shared_experts=1, max_position_embeddings=64,
    first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8,
    qk_nope_head_dim=8, v_head_dim=8, n_group=2, topk_group=1, moe_layer_freq=1,
    decoder_sparse_step=1, mlp_only_layers=[], num_dense_layers=0, pad_token_id=0,
    bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, sliding_window=32,
)

#: per-family corrections of SMALL (MLA attention needs kv heads = heads, hybrids need an
#: attention layer, ...).
OVERRIDES: dict[str, dict[str, Any]] = {
    "deepseek_v2": dict(num_key_value_heads=4),
    "deepseek_v3": dict(num_key_value_heads=4),
    "deepseek_v32": dict(num_key_value_heads=4),
    "axk1": dict(num_key_value_heads=4),
    "axk2": dict(num_key_value_heads=4),
    "glm4_moe_lite": dict(num_key_value_heads=4),
    "glm_moe_dsa": dict(num_key_value_heads=4),
    "mistral_large4": dict(num_key_value_heads=4),
    "qwen3_next": dict(layer_types=["linear_attention", "full_attention"]),
    "qwen3_5_moe": dict(layer_types=["linear_attention", "full_attention"]),
    "beam": dict(mlp_layer_types=["sparse", "sparse"]),
    "longcat_flash": dict(num_key_value_heads=4),
    "dbrx": dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=64,
                 attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                 ffn_config=dict(ffn_hidden_size=16, moe_num_experts=8, moe_top_k=2)),
    "jamba": dict(attn_layer_period=2, attn_layer_offset=1, expert_layer_period=1,
                  expert_layer_offset=0),
    "kimi_linear": dict(num_key_value_heads=4, layer_types=["linear_attention", "full_attention"]),
    "bailing_hybrid": dict(num_key_value_heads=4, layer_types=["linear_attention", "full_attention"]),
    "lfm2_moe": dict(layer_types=["conv", "full_attention"]),
    "deepseek_ocr2": dict(mlp_layer_types=["sparse", "sparse"]),
    "qwen4_exp": dict(layer_types=["linear_attention", "indexed_attention"], indexer_n_heads=2,
                      indexer_kv_heads=1, indexer_head_dim=8, indexer_budget=16,
                      indexer_compress_ratio=4),
    "granitemoehybrid": dict(mamba_n_heads=8, mamba_d_head=8, layer_types=["mamba", "attention"]),
    "mistral4": dict(num_key_value_heads=4, head_dim=16),
    "glm5_next": dict(num_key_value_heads=4, qk_rope_head_dim=0,
                      layer_types=["indexed_attention"] * 2, mlp_layer_types=["sparse"] * 2),
    "gemma4": dict(hidden_size=32, intermediate_size=48, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, global_head_dim=8, vocab_size_per_layer_input=97,
                   hidden_size_per_layer_input=8, enable_moe_block=True, num_experts=8,
                   top_k_experts=2, moe_intermediate_size=16),
    "zaya": dict(num_experts_per_tok=1),
    "inkling2": dict(unpadded_vocab_size=97),
    "inkling2_loop": dict(unpadded_vocab_size=97),
    "hy_v4_vl": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                      "mrope_section": [2, 1, 1]},
                     mlp_layer_types=["sparse", "sparse"]),
    "glm4v_moe": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                       "mrope_section": [1, 0, 1], "partial_rotary_factor": 0.5}),
}


def moe_families() -> list[str]:
    """Families whose modeling code uses transformers' ``@use_experts_implementation``."""
    return sorted({p.parent.name for p in ROOT.glob("*/modeling_*.py")
                   if "@use_experts_implementation" in p.read_text()})


#: MoE families whose experts are not decorated (patching applies, the registered
#: implementation does not), with a causal LM tiny enough to build here.
UNDECORATED = ("dbrx", "llama4", "jetmoe", "longcat_flash")


def model_class(family: str) -> type[PreTrainedModel] | None:
    """The family's causal LM class, else its text model; None if it has neither."""
    mods = sorted(ROOT.glob(f"{family}/modeling_*.py"))
    module = importlib.import_module(f"transformers.models.{family}.{mods[0].stem}")
    classes = {n: c for n, c in vars(module).items() if inspect.isclass(c)
               and issubclass(c, PreTrainedModel) and c.__module__ == module.__name__}
    for suffix in ("ForCausalLM", "TextModel", "Model"):
        for name, cls in classes.items():
            if name.endswith(suffix) and "Encoder" not in name and "PreTrained" not in name:
                return cls
    return None


def _has(config: Any, key: str) -> bool:
    try:
        return hasattr(config, key)
    except Exception:  # per-layer attributes (Gemma 4, dots3) refuse global reads
        return False


def tiny_config(cls: type[PreTrainedModel], family: str, **extra: Any) -> Any:
    cfg_cls = cls.config_class
    base = cfg_cls()
    kw = {k: v for k, v in SMALL.items() if _has(base, k)}
    kw.update(OVERRIDES.get(family, {}))
    kw.update(extra)
    return cfg_cls(**kw)


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.3) -> None:
    """Redraw every floating parameter and buffer of 1+ dims: routing is then decisive."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = std if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=gen) * scale + (1.0 if name.endswith("norm.weight") else 0.0))
        for name, b in model.named_buffers():
            if b.is_floating_point() and ("bias" in name.split(".")[-1]):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.05)


def tiny_model(family: str, seed: int = 0, **extra: Any) -> PreTrainedModel:
    cls = model_class(family)
    if cls is None:
        raise LookupError(f"{family} has no causal LM or text model class")
    torch.manual_seed(seed)
    model = cls(tiny_config(cls, family, **extra))
    randomize(model, seed)
    return model.eval()
