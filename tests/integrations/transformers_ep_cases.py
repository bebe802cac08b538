"""What each rank runs in the expert-parallel test of patched transformers blocks (spawned).

Every rank builds the same tiny model, patches it and keeps a single-process copy of one patched
block; ``apply_expert_parallel`` then shards the block's experts (the transformers tensors, in
their own layout and names). Each rank passes its share of a global batch; outputs, the block's
gradients (under moekit's convention: rank r back-propagates (W/T) sum over its tokens, replicated
gradients are averaged) and the full state dict must equal the single-process block's.
"""

from __future__ import annotations

import copy
import traceback

import torch
import torch.distributed as dist
from torch import nn


def patched_blocks_match_one_process(rank: int, world: int, families: list[str]) -> list[str]:
    """One result ("ok" or the traceback) per family, all in one process group."""
    return [_one_family(rank, world, family) for family in families]


def _one_family(rank: int, world: int, family: str) -> str:
    try:
        from tiny_models import tiny_model

        import moekit.integrations.transformers as mt
        from moekit.parallel import apply_expert_parallel, full_state_dict

        model = tiny_model(family)
        report = mt.patch(model)
        assert report.patched, report
        block = next(m for m in model.modules() if isinstance(m, mt.TransformersMoE))
        reference = copy.deepcopy(block)
        holder = nn.ModuleDict({"moe": block})
        apply_expert_parallel(holder)
        gen = torch.Generator().manual_seed(5)
        T, D = 12, block.d_model
        x = torch.randn(T, D, generator=gen)
        g = torch.randn(T, D, generator=gen)
        y_ref = reference(x.clone()[None])
        y_ref = y_ref[0] if isinstance(y_ref, tuple) else y_ref
        (y_ref[0] * g / T).sum().backward()
        mine = slice(rank * T // world, (rank + 1) * T // world)
        y = block(x[mine].clone()[None])
        y = y[0] if isinstance(y, tuple) else y
        (y[0] * g[mine] * world / T).sum().backward()
        torch.testing.assert_close(y[0], y_ref[0][mine], rtol=1e-5, atol=1e-6)
        expert_names = {f"experts.{n}" for n, _ in block.experts.named_parameters()}
        ref_params = dict(reference.named_parameters())
        for name, p in block.named_parameters():
            if p.grad is None:
                continue
            grad = p.grad.clone()
            if name in expert_names:
                E, local = reference.num_experts, block.experts.num_experts
                want = ref_params[name].grad
                if want.dim() == 2 and want.shape[0] != E:
                    want = want.view(E, -1, want.shape[-1])[rank * local:(rank + 1) * local]
                    want = want.reshape(grad.shape)
                else:
                    want = want[rank * local:(rank + 1) * local]
            else:
                dist.all_reduce(grad)
                grad /= world
                want = ref_params[name].grad
            torch.testing.assert_close(grad, want, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        full = full_state_dict(holder)
        ref_state = {f"moe.{k}": v for k, v in reference.state_dict().items()}
        assert list(full) == list(ref_state), (list(full), list(ref_state))
        for k, v in ref_state.items():
            torch.testing.assert_close(full[k], v)
        return "ok"
    except Exception:
        return traceback.format_exc()


def transformers_own_ep_matches_moekit_ep(rank: int, world: int, folder: str) -> str:
    """transformers' own expert parallelism (``DistributedConfig(fsdp_size=W, ep_size=W)``) and
    moekit's (``patch`` + ``apply_expert_parallel``) on the same saved tiny Qwen3-MoE: each
    rank's logits and loss are the same, and so are the experts' gradients gathered over the
    ranks (both equal one process's on the whole batch)."""
    try:
        from transformers import AutoModelForCausalLM
        from transformers.distributed import DistributedConfig

        import moekit.integrations.transformers as mt
        from moekit.parallel import apply_expert_parallel

        ids = torch.randint(3, 90, (2 * world, 9), generator=torch.Generator().manual_seed(1))
        mine = ids[2 * rank:2 * (rank + 1)]
        config = DistributedConfig(fsdp_size=world, ep_size=world)
        theirs = AutoModelForCausalLM.from_pretrained(folder, distributed_config=config,
                                                      dtype=torch.float32)
        ours = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        report = mt.patch(ours)
        assert report.patched and not report.unsupported, report
        plan = apply_expert_parallel(ours)
        out_theirs = theirs(mine, labels=mine)
        out_ours = ours(mine, labels=mine)
        logits = out_theirs.logits
        logits = logits.full_tensor() if hasattr(logits, "full_tensor") else logits
        torch.testing.assert_close(out_ours.logits, logits, rtol=1e-5, atol=1e-6)
        out_theirs.loss.backward()
        out_ours.loss.backward()
        grads_theirs = {n: p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                        for n, p in theirs.named_parameters() if "experts" in n}
        checked = 0
        for name, p in ours.named_parameters():
            if name not in plan.expert_parameters:
                continue
            pieces = [torch.empty_like(p.grad) for _ in range(world)]
            dist.all_gather(pieces, p.grad.contiguous())
            torch.testing.assert_close(torch.cat(pieces), grads_theirs[name], rtol=1e-4,
                                       atol=1e-7, msg=name)
            checked += 1
        assert checked == len(grads_theirs) > 0, (checked, sorted(grads_theirs))
        return "ok"
    except Exception:  # reported to the test, which fails with it
        return traceback.format_exc()
