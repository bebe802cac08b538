"""Train a sparse MoE layer on a problem made of regimes, and watch the router specialise.

The target is a different function in each quarter of the input space. The script trains an MoE
MLP beside its dense twin (an FFN of the same *active* size, k * d_ff) with the same optimiser,
then prints both validation errors, the expert load and which expert each quarter of the input
is routed to. Which model wins depends on the budget: try --steps and --top-k.

    python examples/moe_layer_regression.py
    python examples/moe_layer_regression.py --router sigmoid_bias --steps 800 --capacity-factor 1.25
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from moekit.layers import FeedForward, MoELayer, total_aux_loss

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--router", default="topk",
                    choices=["topk", "switch", "noisy_topk", "sigmoid_bias", "expert_choice"],
                    help="routing rule (default: topk)")
parser.add_argument("--experts", type=int, default=4, help="number of experts (default: 4)")
parser.add_argument("--top-k", type=int, default=2, help="experts per token (default: 2)")
parser.add_argument("--capacity-factor", type=float, default=None,
                    help="cap each expert at ceil(cf*T*k/E) tokens (default: dropless)")
parser.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
args = parser.parse_args()
torch.manual_seed(args.seed)

# --- data: four regimes, one per quarter of the plane ---------------------------------------
def make_data(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 2) * 4 - 2
    quarter = (x[:, 0] > 0).long() * 2 + (x[:, 1] > 0).long()
    laws = [lambda v: torch.sin(3 * v[:, 0]), lambda v: v[:, 1] ** 2,
            lambda v: -v[:, 0] * v[:, 1], lambda v: torch.cos(2 * v[:, 1])]
    y = torch.stack([laws[q](x[i : i + 1])[0] for i, q in enumerate(quarter.tolist())])
    return x, y[:, None], quarter


x_train, y_train, _ = make_data(4096)
x_val, y_val, q_val = make_data(1024)

# --- models: embed -> (MoE | dense) -> head, with the same active FFN size -----------------
d_model, d_ff = 32, 32
k = 1 if args.router == "switch" else args.top_k


def model(mlp: nn.Module) -> nn.Sequential:
    return nn.Sequential(nn.Linear(2, d_model), nn.GELU(), mlp, nn.GELU(), nn.Linear(d_model, 1))


moe_layer = MoELayer(d_model, d_ff, args.experts, k, router=args.router,
                     capacity_factor=args.capacity_factor)
models = {"moe": model(moe_layer), "dense": model(FeedForward(d_model, k * d_ff))}

# --- training: the MoE adds its balancing loss; sigmoid_bias updates its own bias ------------
for name, net in models.items():
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    for _ in range(args.steps):
        idx = torch.randint(0, len(x_train), (256,))
        loss = nn.functional.mse_loss(net(x_train[idx]), y_train[idx]) + total_aux_loss(net)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        val = nn.functional.mse_loss(net(x_val), y_val).item()
    print(f"{name:5s} validation MSE {val:.4f}")

# --- what the router learned ------------------------------------------------------------------
stats = moe_layer.stats  # of the last forward: the validation set
assert stats is not None
print("expert load (fraction of token-slots):", [round(v, 3) for v in stats.load.tolist()])
print(f"balance (max/mean load): {stats.balance():.2f}, dropped: {stats.dropped_fraction.item():.1%}")
print("quarter -> share of its tokens per expert (first choice)")
first = stats.indices[:, 0]
for q in range(4):
    chosen = first[q_val == q]
    chosen = chosen[chosen >= 0]
    shares = torch.bincount(chosen, minlength=args.experts).float() / max(len(chosen), 1)
    print(f"  quarter {q}: " + " ".join(f"{s:.2f}" for s in shares.tolist()))
