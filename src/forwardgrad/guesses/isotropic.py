"""Isotropic guesses: weight perturbation, activation perturbation and its masked variant."""

from __future__ import annotations

import torch
from torch import Tensor

from ..jvp import SiteContext
from ..samplers import sample_tangents
from ..sites import ModelNotSupportedError, SitePlan
from .base import Guess, IsotropicActivityGuess


class WeightPerturbation(Guess):
    """Directional descent: ``V ~ N(0, I)`` over all parameters, shared by the batch (unbiased)."""

    name = "weight"
    summary = "weight perturbation (directional descent): V ~ N(0, I) on all parameters; unbiased"
    paper = "Baydin et al. 2022; Singhal et al. 2023"
    options: tuple[str, ...] = ("sampler", "normalize", "angle", "max_length")
    space = "weight"
    isotropic = True

    def weight_tangents(
        self, plan: SitePlan, k: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        params = plan.parameters()
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
    options: tuple[str, ...] = ("sampler", "normalize", "angle", "max_length")

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        return self._slice(ctx, k, generator)


class MaskedActivationPerturbation(IsotropicActivityGuess):
    """``u = M_i eps`` with M_i the units whose activation derivative is non-zero (unbiased:
    the true gradient is already zero where the mask is)."""

    name = "activation-masked"
    summary = "masked activation perturbation: u = M_i eps, M_i = [phi'(s_i) != 0]; unbiased"
    paper = "Singhal et al. 2023"
    options: tuple[str, ...] = ("sampler", "normalize", "angle", "max_length")

    def bind(self, plan: SitePlan) -> None:
        for s in plan.sites:
            if not s.elementwise_followers:
                raise ModelNotSupportedError(
                    f"guess {self.name!r} masks by phi'(s_i), which needs elementwise activations "
                    f"after every linear layer; site {s.index} is followed by "
                    f"{[type(m).__name__ for m in s.followers]}"
                )

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        mask = (ctx.act_grad != 0).to(ctx.preact.dtype)
        return self._slice(ctx, k, generator) * mask
