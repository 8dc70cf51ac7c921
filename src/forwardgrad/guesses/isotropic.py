"""Isotropic guesses: weight perturbation, activation perturbation and its masked variant."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.context import SiteContext
from ..core.samplers import sample_tangents
from .base import Guess, IsotropicActivityGuess


class WeightPerturbation(Guess):
    """Directional descent: ``V ~ N(0, I)`` over all parameters, shared by the batch (unbiased)."""

    name = "weight"
    summary = "weight perturbation (directional descent): V ~ N(0, I) on all parameters; unbiased"
    paper = "Baydin et al. 2022; Singhal et al. 2023"
    option_names: tuple[str, ...] = ("sampler", "normalize", "angle", "max_length")
    space = "weight"
    isotropic = True

    def weight_tangents(
        self, params: list[tuple[str, Tensor]], k: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        sizes = [p.numel() for _, p in params]
        o = self.options
        flat = sample_tangents(
            o.sampler,
            k,
            (),
            sum(sizes),
            generator,
            normalize=o.normalize,
            angle=o.angle,
            max_length=o.max_length,
        )
        out = {}
        for (name, p), chunk in zip(params, flat.split(sizes, dim=-1)):
            out[name] = chunk.reshape(k, *p.shape).to(p.dtype)
        return out


class ActivationPerturbation(IsotropicActivityGuess):
    """``u ~ N(0, I)`` on every pre-activation, per example (unbiased)."""

    name = "activation"
    summary = "activation perturbation: u ~ N(0, I) per example at every pre-activation; unbiased"
    paper = "Ren et al. 2022; Singhal et al. 2023"
    option_names: tuple[str, ...] = ("sampler", "normalize", "angle", "max_length")

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        return self._slice(ctx, k, generator)


class MaskedActivationPerturbation(IsotropicActivityGuess):
    """``u = M_i eps`` with M_i the units whose activation derivative is non-zero (unbiased:
    the true gradient is already zero where the mask is).

    The mask exists where a site's output is consumed by an elementwise activation alone (every
    site of an MLP; on other models the sites that :meth:`Estimator.describe` lists with
    ``masked_by``). Sites without one get the unmasked tangent, which is unbiased too."""

    name = "activation-masked"
    summary = "masked activation perturbation: u = M_i eps, M_i = [phi'(s_i) != 0]; unbiased"
    paper = "Singhal et al. 2023"
    option_names: tuple[str, ...] = ("sampler", "normalize", "angle", "max_length")

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        u = self._slice(ctx, k, generator)
        act_grad = ctx.act_grad
        if act_grad is None:
            return u
        return u * (act_grad != 0).to(ctx.preact.dtype)
