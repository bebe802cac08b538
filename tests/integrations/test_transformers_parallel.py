"""Expert parallelism applies to patched transformers blocks (2 processes, gloo, CPU).

The experts of a patched block are transformers' own tensors in their own layout (stacked,
transposed, biased, flat); ``moekit.parallel.apply_expert_parallel`` shards them and the
2-process block must equal the single-process one (see ``transformers_ep_cases.py``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
if int(transformers.__version__.split(".")[0]) < 5:
    pytest.skip("needs transformers >= 5", allow_module_level=True)
dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "parallel"))
from ep_harness import run_ranks  # noqa: E402
from transformers_ep_cases import patched_blocks_match_one_process  # noqa: E402

#: a choice bias (DeepSeek-V3), transposed biased interleaved experts under a child named
#: ``router`` (GPT-OSS), flat separate gate/up tensors in a child module (DBRX)
FAMILIES = ["deepseek_v3", "gpt_oss", "dbrx"]


@pytest.mark.distributed
def test_two_ranks_match_one_process_on_patched_blocks() -> None:
    results = run_ranks(patched_blocks_match_one_process, 2, FAMILIES, deadline_s=300)
    for rank, per_family in enumerate(results):
        for family, result in zip(FAMILIES, per_family):
            assert result == "ok", f"rank {rank}, {family}:\n{result}"


@pytest.mark.distributed
def test_transformers_own_expert_parallelism_is_a_second_reference(tmp_path) -> None:
    """transformers 5.x shards experts itself (``DistributedConfig(ep_size=...)``, needs
    accelerate); on gloo it matches one process, which makes it an independent check of moekit's
    expert parallelism on the same checkpoint."""
    pytest.importorskip("accelerate")
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM
    from transformers_ep_cases import transformers_own_ep_matches_moekit_ep

    torch.manual_seed(0)
    config = Qwen3MoeConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                            moe_intermediate_size=16, num_hidden_layers=2, num_attention_heads=4,
                            num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                            norm_topk_prob=True, max_position_embeddings=64)
    Qwen3MoeForCausalLM(config).save_pretrained(tmp_path / "tiny")
    results = run_ranks(transformers_own_ep_matches_moekit_ep, 2, str(tmp_path / "tiny"),
                        deadline_s=300)
    for rank, result in enumerate(results):
        assert result == "ok", f"rank {rank}:\n{result}"
