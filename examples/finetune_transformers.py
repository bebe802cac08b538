"""Fine-tune a Hugging Face MoE model on moekit, then load the result in plain transformers.

The script builds a small DeepSeek-V3-style model from its config (or loads one from a local
folder with --model), patches it (``moekit.integrations.transformers.patch``: every MoE block
becomes a moekit layer on the model's own tensors), fine-tunes a few steps on the bundled King
James text with moekit's balancing (aux-loss-free bias updates where the model has a choice
bias, else moekit's Switch loss; a router z-loss), prints the routing report before and after,
saves the model with ``save_pretrained`` and reloads it in vanilla transformers, checking that
the reloaded model computes the same logits.

    python examples/finetune_transformers.py
    python examples/finetune_transformers.py --family qwen3_moe --steps 30
    python examples/finetune_transformers.py --model path/to/local/moe --steps 10 --output out/
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
import transformers

import moekit.integrations.transformers as mt
from moekit.data.text import load_kjv
from moekit.layers import total_aux_loss, update_router_biases

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--family", default="deepseek_v3", choices=["deepseek_v3", "qwen3_moe", "mixtral"],
                    help="model built from its config when no --model is given (default: deepseek_v3)")
parser.add_argument("--model", default=None,
                    help="a local folder saved by save_pretrained (nothing is downloaded)")
parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps (default: 20)")
parser.add_argument("--batch", type=int, default=8, help="sequences per step (default: 8)")
parser.add_argument("--seq", type=int, default=64, help="tokens per sequence (default: 64)")
parser.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default: 3e-3)")
parser.add_argument("--bias-rate", type=float, default=1e-2,
                    help="aux-loss-free bias step per optimizer step (default: 1e-2)")
parser.add_argument("--output", default=None, help="folder to save to (default: a temporary one)")
parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
args = parser.parse_args()
torch.manual_seed(args.seed)
torch.set_num_threads(min(torch.get_num_threads(), 4))

# --- the model: from a local folder, or a small one from its config --------------------------
if args.model is not None:
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model)
else:
    small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 vocab_size=256, max_position_embeddings=256, tie_word_embeddings=False)
    config = {
        "deepseek_v3": transformers.DeepseekV3Config(
            **small, intermediate_size=128, moe_intermediate_size=32, n_routed_experts=8,
            num_experts_per_tok=2, n_group=2, topk_group=1, first_k_dense_replace=0,
            kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16),
        "qwen3_moe": transformers.Qwen3MoeConfig(**small, moe_intermediate_size=32, num_experts=8,
                                                 num_experts_per_tok=2, norm_topk_prob=True),
        "mixtral": transformers.MixtralConfig(**small, intermediate_size=64, num_local_experts=8,
                                              num_experts_per_tok=2),
    }[args.family]
    model = transformers.AutoModelForCausalLM.from_config(config)
vocab = model.config.vocab_size

# --- data: the bundled text as bytes (a random model has no tokenizer to respect) -------------
data = torch.tensor(list(load_kjv(max_chars=200_000).encode("ascii")), dtype=torch.long) % vocab


def batch(step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(args.seed * 10_000 + step)
    starts = torch.randint(0, data.numel() - args.seq - 1, (args.batch,), generator=gen)
    return torch.stack([data[s : s + args.seq] for s in starts.tolist()])


# --- patch: moekit layers on the model's tensors, with moekit's balancing -----------------------
optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)  # built before patching: it still trains
report = mt.patch(model, bias_update_rate=args.bias_rate, aux_loss_weight=0.01, z_loss_weight=1e-3)
print(report)
balanced_by_bias = not any("have none" in note for note in report.notes)

model.eval()
with torch.no_grad():
    model(input_ids=batch(-1))
print("\nrouting before fine-tuning:")
print(mt.routing_report(model))

# --- fine-tune --------------------------------------------------------------------------------
model.train()
for step in range(args.steps):
    ids = batch(step)
    out = model(input_ids=ids, labels=ids)
    loss = out.loss + total_aux_loss(model)  # moekit's balancing losses, weighted per layer
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if balanced_by_bias:
        update_router_biases(model)  # the bias transformers saves is the one that moves
    if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
        print(f"step {step:3d}  lm loss {out.loss.item():.3f}")

model.eval()
probe = batch(10_000)
with torch.no_grad():
    logits = model(input_ids=probe).logits
print("\nrouting after fine-tuning:")
report_after = mt.routing_report(model)
print(report_after)

# --- save, reload in plain transformers, compare ----------------------------------------------
out_dir = Path(args.output) if args.output else Path(tempfile.mkdtemp(prefix="moekit-ft-"))
model.save_pretrained(out_dir)
report_after.plot(out_dir / "routing.png")
vanilla = transformers.AutoModelForCausalLM.from_pretrained(out_dir).eval()
with torch.no_grad():
    delta = (vanilla(input_ids=probe).logits - logits).abs().max().item()
print(f"\nsaved to {out_dir} (routing plot: routing.png)")
print(f"reloaded in plain transformers ({type(vanilla).__name__}): max |delta logit| = {delta:.2e}")
if delta > 1e-4:
    raise SystemExit("the reloaded model differs from the fine-tuned one")
