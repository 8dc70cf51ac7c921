"""Optimizers by name. Estimators only fill ``.grad``, so any torch.optim optimizer works."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

OPTIMIZERS = {
    "adamw": "torch.optim.AdamW",
    "adam": "torch.optim.Adam",
    "sgd": "torch.optim.SGD (momentum option)",
    "stable-adamw": "StableAdamW (Wortsman et al. 2023) from torch-optimi",
}


def make_optimizer(
    name: str,
    params: Iterable[nn.Parameter],
    lr: float,
    weight_decay: float = 0.01,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "stable-adamw":
        from optimi import StableAdamW

        # decouple_lr=False scales the decoupled weight decay by lr, as torch.optim.AdamW does.
        return StableAdamW(params, lr=lr, weight_decay=weight_decay, decouple_lr=False)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}")
