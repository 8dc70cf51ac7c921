"""Activation mixing: guesses built from random mixtures of the batch's activations."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.chain import elementwise_derivative
from ..core.context import SiteContext
from ..core.next_layer import NORM_TYPES, NormJacobian
from ..core.sites import ELEMENTWISE_TYPES
from .base import Guess, isotropic_site_tangents


class ActivationMixing(Guess):
    """``u^b = M_i^b sum_c alpha^b_c x_{i+1}^c`` with ``alpha ~ N(0, 1)`` over the batch.

    Where a layer norm sits between the site and its activation (``s -> z = norm(s) ->
    phi(z)``), the mixture is formed at z and carried to s by the norm's transpose:
    ``u = J_norm^T (M(z) sum_c alpha_c phi(z^c))``.

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
    builds_from = (
        "needs the mask M_i = phi'(s_i) of an elementwise activation consuming s_i (or a "
        "layer norm followed by one)"
    )

    def whole_batch_dependence(self) -> str | None:
        return "its tangents mix the activations of the whole batch (a shard would mix its own)"

    def site_problem(self, path, site, engine) -> str | None:
        if _norm_then_activation(path) is not None:
            return None
        return super().site_problem(path, site, engine)

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if self.falls_back(ctx):
            return isotropic_site_tangents(ctx, k, generator)
        b = ctx.batch_size
        alpha = torch.randn(
            k, b, b, generator=generator, device=generator.device, dtype=ctx.preact.dtype
        )
        route = _norm_then_activation(ctx.path) if ctx.act_grad is None else None
        if route is None:
            outputs, mask, norm = ctx.outputs, ctx.act_grad, None
        else:  # s -> z = norm(s) -> phi(z): mix phi(z) at z, then back to s by J_norm^T
            norm = NormJacobian(route[0], ctx.preact)
            outputs, mask = elementwise_derivative([route[1]], route[0](ctx.preact))
        # conv and token-wise sites mix whole activities, one vector (B, n) per example
        mask = (mask != 0).to(ctx.preact.dtype).reshape(b, -1)
        u = torch.matmul(alpha, outputs.reshape(b, -1)) * mask  # (k, B, n)
        if norm is not None:
            u = norm.adjoint(u.view(k, *ctx.preact.shape)).reshape(k, b, -1)
        active = mask.sum(-1).unsqueeze(0)  # (1, B)
        size = u.norm(dim=-1)
        scale = torch.where(size > 0, active.sqrt() / size.clamp_min(1e-30), torch.zeros_like(size))
        return (u * scale.unsqueeze(-1)).view(k, *ctx.preact.shape)


def _norm_then_activation(path) -> tuple | None:
    """``(norm, activation)`` when a site's route starts with a layer norm and then an
    elementwise activation (LocalMixer's layers), else None."""
    between = getattr(path, "between", None) or []
    if len(between) >= 2 and type(between[0]) in NORM_TYPES:
        if type(between[1]) in ELEMENTWISE_TYPES:
            return between[0], between[1]
    return None
