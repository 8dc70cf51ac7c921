"""Measurements against the true gradient (the backprop oracle)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .jvp import LossFn
from .sites import SitePlan, find_sites


def activity_gradients(
    model: nn.Module, x: Tensor, targets: Tensor, loss_fn: LossFn, plan: SitePlan | None = None
) -> list[Tensor]:
    """True per-example gradients ``dl_b/ds_i`` (B, d_i) at every site, by backpropagation.

    This is the oracle: it is the one place here that runs a backward pass.
    """
    plan = plan or find_sites(model)
    preacts: list[Tensor] = []
    handles = [
        s.module.register_forward_hook(lambda m, i, o: preacts.append(o)) for s in plan.sites
    ]
    try:
        with torch.enable_grad():
            losses = loss_fn(model(x), targets)
            grads = torch.autograd.grad(losses.sum(), preacts)
    finally:
        for h in handles:
            h.remove()
    return [g.detach() for g in grads]


def cosine_similarity(a: Tensor, b: Tensor) -> float:
    """Cosine between two tensors viewed as flat vectors."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))
