"""The problems the two-process tests share with their one-process references."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from forwardgrad import Estimator


def mlp(dtype) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.ReLU(), nn.Linear(5, 3)
    ).to(dtype)


class SmallConv(nn.Module):
    """Not a chain: the general engine's path (conv, pooling, flatten)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Linear(3 * 2 * 2, 3)

    def forward(self, x):
        h = torch.nn.functional.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.head(h.flatten(1))


def conv(dtype) -> nn.Module:
    torch.manual_seed(2)
    return SmallConv().to(dtype)


@dataclass
class Case:
    mode: str  # how the two processes share the step
    model: str  # "mlp" | "conv"
    guess: str
    tangents: int
    aggregate: str
    dtype: torch.dtype = torch.float64
    options: dict = field(default_factory=dict)

    def problem(self):
        g = torch.Generator().manual_seed(3)
        if self.model == "mlp":
            model, x = mlp(self.dtype), torch.randn(10, 6, generator=g, dtype=self.dtype)
        else:
            model, x = conv(self.dtype), torch.randn(10, 1, 4, 4, generator=g, dtype=self.dtype)
        return model, x, torch.randint(0, 3, (10,), generator=g)

    def estimator(self, model, parallel=None) -> Estimator:
        return Estimator(
            model,
            self.guess,
            tangents=self.tangents,
            aggregate=self.aggregate,
            seed=5,
            parallel=parallel,
            **self.options,
        )


# Exact against one process: every tangent split, and data splits of weight-space guesses.
EXACT = {
    "tangents-activation-mean": Case("tangents", "mlp", "activation", 4, "mean"),
    "tangents-activation-projection": Case("tangents", "mlp", "activation", 4, "projection"),
    "tangents-activation-projection-f32": Case(
        "tangents", "mlp", "activation", 4, "projection", torch.float32
    ),
    "tangents-wt-projection": Case("tangents", "mlp", "wt", 6, "projection"),
    "tangents-wperp-mean": Case("tangents", "mlp", "wperp", 4, "mean", options={"rank": 2}),
    "tangents-weight-projection": Case("tangents", "mlp", "weight", 4, "projection"),
    "tangents-conv-activation-projection": Case("tangents", "conv", "activation", 4, "projection"),
    "tangents-conv-weight-sum": Case("tangents", "conv", "weight", 2, "sum"),
    "data-weight-projection": Case("data", "mlp", "weight", 4, "projection"),
    "data-conv-weight-mean": Case("data", "conv", "weight", 4, "mean"),
    "data-backprop": Case("data", "mlp", "backprop", 1, "mean"),
}
# Per-example tangents: each data shard draws its own stream; exact against the shards' sum.
PER_SHARD = {
    "data-activation-mean": Case("data", "mlp", "activation", 3, "mean"),
    "data-wt-projection": Case("data", "mlp", "wt", 3, "projection"),
    "data-conv-activation-projection": Case("data", "conv", "activation", 3, "projection"),
}
CASES = {**EXACT, **PER_SHARD}
# Four processes on a 2 x 2 grid (two shards, two tangent shares each).
BOTH = {
    "both-weight-projection": Case("both", "mlp", "weight", 4, "projection"),
    "both-conv-weight-mean": Case("both", "conv", "weight", 4, "mean"),
    "both-activation-projection": Case("both", "mlp", "activation", 4, "projection"),
    "both-wt-mean": Case("both", "mlp", "wt", 4, "mean"),
}
STEPS = 2  # two estimates in a row: the generators must advance alike too
