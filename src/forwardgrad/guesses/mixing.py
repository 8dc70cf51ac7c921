"""Activation mixing: guesses built from random mixtures of the batch's activations."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.context import SiteContext
from .base import Guess, isotropic_site_tangents


class ActivationMixing(Guess):
    """``u^b = M_i^b sum_c alpha^b_c x_{i+1}^c`` with ``alpha ~ N(0, 1)`` over the batch.

    Gradients and activations lie close to the same subspace (Singhal et al. 2023, Sec. 3.3).
    Each guess is rescaled so ``||u^b||^2`` equals the number of active units, the expected
    squared norm of a masked Gaussian guess, which keeps the per-site scale of the JVP comparable
    to the other guesses. Biased: ``(Cov(u) - I) g``. The last site is isotropic.
    """

    name = "mixing"
    summary = (
        "activation mixing: u = M_i * (random mixture of the batch's activations x_{i+1}); biased"
    )
    paper = "Singhal et al. 2023"
    option_names: tuple[str, ...] = ("fallback",)
    needs_mask = True  # M_i, which only an elementwise activation consuming s_i gives
    builds_from = "needs the mask M_i = phi'(s_i) of an elementwise activation consuming s_i"

    def whole_batch_dependence(self) -> str | None:
        return "its tangents mix the activations of the whole batch (a shard would mix its own)"

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if self.falls_back(ctx):
            return isotropic_site_tangents(ctx, k, generator)
        b = ctx.batch_size
        alpha = torch.randn(
            k, b, b, generator=generator, device=generator.device, dtype=ctx.preact.dtype
        )
        # conv and token-wise sites mix whole activities, one vector (B, n) per example
        mask = (ctx.act_grad != 0).to(ctx.preact.dtype).reshape(b, -1)
        u = torch.matmul(alpha, ctx.outputs.reshape(b, -1)) * mask  # (k, B, n)
        active = mask.sum(-1).unsqueeze(0)  # (1, B)
        norm = u.norm(dim=-1)
        scale = torch.where(norm > 0, active.sqrt() / norm.clamp_min(1e-30), torch.zeros_like(norm))
        return (u * scale.unsqueeze(-1)).view(k, *ctx.preact.shape)
