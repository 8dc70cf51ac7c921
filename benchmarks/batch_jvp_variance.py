"""Variance of the batch JVP mode against per-example JVPs, measured side by side.

Both modes estimate the same gradient of the same batch with activation perturbation (k = 1);
the mean squared error over many draws, relative to the gradient's squared norm, is printed for
each mode and batch size. Per-example JVPs give every example its own directional derivative;
the batch mode one number for the whole batch, so its variance grows about B-fold.

    python benchmarks/batch_jvp_variance.py [--draws 300] [--batches 8,32]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from forwardgrad import Estimator
from forwardgrad.diagnostics import weight_gradients
from forwardgrad.estimation import cross_entropy_per_example


def small_conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.GroupNorm(1, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 4),
    ).double()


def relative_mse(model, x, y, jvp: str, draws: int) -> float:
    _, true = weight_gradients(model, x, y, cross_entropy_per_example)
    norm = sum(float(t.pow(2).sum()) for t in true.values())
    est = Estimator(model, "activation", jvp=jvp, seed=5)
    total = 0.0
    for _ in range(draws):
        _, g = est.estimate(x, y)
        total += sum(float((g[p] - t).pow(2).sum()) for p, t in true.items())
    return total / draws / norm


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--batches", default="8,32")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = small_conv_net()
    print("| batch | relative MSE, per-example JVPs | relative MSE, batch JVP | ratio |")
    print("|---:|---:|---:|---:|")
    for b in (int(v) for v in args.batches.split(",")):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, 1, 6, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (b,), generator=g)
        per_example = relative_mse(model, x, y, "global", args.draws)
        batch = relative_mse(model, x, y, "batch", args.draws)
        print(f"| {b} | {per_example:.1f} | {batch:.1f} | {batch / per_example:.1f} |")


if __name__ == "__main__":
    main()
