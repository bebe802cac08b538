"""The speech showcase, top to bottom: an MoE audio classifier on digits in 32 languages.

eSpeak NG speaks the digits 0-9 in 42 accents of 32 languages (en-US to Scottish and Caribbean
English, Belgian French, Latin-American Spanish, ..., Mandarin, Swahili), 16 voices each. Every
digit class is 32 different words. A classifier is trained on 12 voices per accent and scored
on the 4 it never heard. The MoE model (32 experts of width 32, 2 per clip) is set beside its
dense twin (one MLP of width 64): each clip passes through the same number of weights in both.
Then the test on real human recordings (where Debian's packages are installed), and where the
router sends each language: its two most used experts, and how much of the language (and of
the digit) the expert choice tells.

    pip install 'moekit[showcases]'                 # brings espeakng-loader (the voices)
    python examples/showcases/speech.py             # about 2 minutes of CPU
    python examples/showcases/speech.py --seeds 1 --steps 200 --variants 6   # a quick run

`moekit showcase speech` runs the full comparison (3 seeds, a per-frame transformer too, linear
baselines and an oracle told the language) and writes an HTML report with the routing heatmaps.
"""

from __future__ import annotations

import argparse
import io
import tempfile

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from moekit.data.speech import (
    ACCENTS,
    RECORDED_DIGITS,
    VARIANTS,
    Accent,
    digit_features,
    load_recorded_digits,
    synthesize_digits,
)
from moekit.layers import MoEConfig
from moekit.models import AudioClassifier, AudioClassifierConfig, count_parameters, dense_twin
from moekit.train import ArrayBatches, TrainConfig, seed_everything, train
from moekit.viz import count_routing_by_kind

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--seeds", type=int, default=2, help="replicates: held-out voices and "
                    "weights drawn from seed r (default: 2)")
parser.add_argument("--steps", type=int, default=2000, help="training steps (default: 2000)")
parser.add_argument("--variants", type=int, default=16,
                    help=f"voices per accent, of {len(VARIANTS)} (default: all); 4 are held out")
args = parser.parse_args()
torch.set_num_threads(1)  # tiny matrices: one thread is fastest on a shared machine

EXTRA = ("nl", "sv", "da", "nb", "fi", "hu", "pl", "cs", "bg", "uk", "el", "ro", "ca", "tr", "id",
         "vi", "hi", "ar", "fa", "cmn", "ja", "ko", "sw", "ta", "th")
accents = ACCENTS + tuple(Accent(name=code, language=code, espeak=code) for code in EXTRA)
with threadpool_limits(limits=1):
    clips = synthesize_digits(accents, variants=VARIANTS[:args.variants], rates=(140, 200),
                              pitches=(40, 60))
    x = torch.from_numpy(digit_features(clips)).flatten(1)[:, None]  # (n, 1 token, 16 x 32)
print(f"{len(clips)} clips: {len(clips.languages)} languages, {len(clips.accents)} accents, "
      f"{len(clips.voices)} voices\n")
installed = []
for lang in RECORDED_DIGITS:  # one Debian package per language
    try:
        load_recorded_digits([lang])
        installed.append(lang)
    except ImportError as err:  # SourceNotFoundError, its message names the apt-get line
        print(f"real recordings of {lang!r} not tested: {err}\n")
real = load_recorded_digits(installed) if installed else None
x_real = torch.from_numpy(digit_features(real)).flatten(1)[:, None] if real else None

moe_config = AudioClassifierConfig(
    n_features=x.shape[-1], max_frames=1, num_classes=10, d_model=64, n_layers=1, n_heads=2,
    moe=MoEConfig.create(d_model=64, d_ff=32, num_experts=32, top_k=2, activation="gelu",
                         aux_loss_weight=0.01))
scores: dict[str, list[float]] = {"MoE, 32 experts, top-2": [], "dense twin": []}
real_scores: dict[str, list[float]] = {name: [] for name in scores}
for seed in range(args.seeds):
    rng = np.random.default_rng(seed)  # hold out 4 voices of every accent
    held_voices = np.concatenate([rng.choice(np.unique(clips.voice[clips.accent == a]), 4,
                                             replace=False) for a in range(len(accents))])
    valid = np.isin(clips.voice, held_voices)
    for name in scores:
        seed_everything(seed)  # same weights' draw, batches and split for both models
        model = AudioClassifier(moe_config) if name.startswith("MoE") else dense_twin(moe_config)
        config = TrainConfig(steps=args.steps, batch_size=128, lr=3e-3, weight_decay=0.05,
                             warmup_steps=100, min_lr_ratio=0.0, eval_every=0, seed=seed,
                             device="cpu", log_every=args.steps,
                             output_dir=tempfile.mkdtemp(prefix="speech-"))
        digits = torch.from_numpy(clips.digit)
        train(model, ArrayBatches(x[~valid], digits[~valid], batch_size=128, seed=seed), config,
              model_name=name, progress=io.StringIO())
        model.eval()
        with torch.no_grad():
            pred = model(x[valid]).argmax(dim=1).numpy()
            scores[name].append(float(np.mean(pred == clips.digit[valid])))
            if real is not None and x_real is not None:
                real_pred = model(x_real).argmax(dim=1).numpy()
                real_scores[name].append(float(np.mean(real_pred == real.digit)))
            if name.startswith("MoE") and seed == 0:  # routing of the held-out clips
                model(x[valid])
                routed = model.blocks[0].mlp.stats.indices  # (clips, 2) experts of each clip
                by_language = count_routing_by_kind(
                    routed, clips.language[valid], n_kinds=len(clips.languages), n_experts=32)
                by_digit = count_routing_by_kind(routed, clips.digit[valid], n_kinds=10,
                                                 n_experts=32)
        total, active = count_parameters(model)
        print(f"seed {seed}: {name:<24} held-out voices {scores[name][-1]:.4f}"
              f"{f', real recordings {real_scores[name][-1]:.2f}' if real is not None else ''}"
              f"   ({total} parameters, {active} active per clip)")

print("\ndigit accuracy on unheard voices (higher is better), mean +- sd over seeds")
for name, values in scores.items():
    sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
    print(f"  {name:<24} {np.mean(values):.4f} +- {sd:.4f}")
if real is not None:
    print(f"on real human recordings ({', '.join(real.languages)}, one speaker each):")
    for name, values in real_scores.items():
        print(f"  {name:<24} {np.mean(values):.2f}")

print("\nwhere the router sends each language (held-out clips, seed 0): its two most used "
      "experts")
share = by_language / by_language.sum(axis=1, keepdims=True)
for g, lang in enumerate(clips.languages):
    top = np.argsort(-share[g])[:2]
    print(f"  {lang:<4} " + "  ".join(f"expert {e:2d}: {100 * share[g, e]:4.1f}%" for e in top))


def information_share(counts: np.ndarray) -> float:
    """I(group; expert) / H(group) from the (group, expert) counts of token-slots."""
    p = counts / counts.sum()
    p_group, p_expert = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mi = np.sum(p[nz] * np.log(p[nz] / np.outer(p_group, p_expert)[nz]))
    return float(mi / -np.sum(p_group[p_group > 0] * np.log(p_group[p_group > 0])))


print(f"the expert choice tells {100 * information_share(by_language):.1f}% of the language's "
      f"entropy and {100 * information_share(by_digit):.1f}% of the digit's (100% would be one "
      "set of experts per language, or per digit)")
