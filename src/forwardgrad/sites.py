"""Find the perturbation sites of a model.

A *site* is the output of a linear layer (its pre-activation ``s_i = W_i x_i + b_i``); this is
where activity-space tangents are injected. A model is read as

    prefix modules  ->  site 0, its followers  ->  site 1, its followers  ->  ...

where the *followers* of a site are the modules between it and the next site (usually one
elementwise activation). ``Conv2d`` sites can be added by giving them a tangent rule in ``jvp.py``
and a weight-gradient rule in ``estimator.py``; nothing else here depends on the site type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

SITE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)

# Modules whose Jacobian is diagonal: their JVP is phi'(s) * t, so phi'(s) can be computed once
# per step and reused for all k tangents, and guesses may treat it as the mask M_i.
ELEMENTWISE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Identity,
)

# Modules that mix examples or draw random numbers break per-example JVPs or make the k tangent
# passes see different functions; refuse them rather than return wrong derivatives.
UNSUPPORTED_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._BatchNorm,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
)


class ModelNotSupportedError(ValueError):
    """The model's structure does not fit what an engine or a guess needs."""


@dataclass
class Site:
    """One perturbation site: a linear layer and the modules that follow it."""

    index: int
    module: nn.Linear
    followers: list[nn.Module] = field(default_factory=list)

    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.module.bias

    @property
    def in_features(self) -> int:
        return self.module.in_features

    @property
    def out_features(self) -> int:
        return self.module.out_features

    @property
    def elementwise_followers(self) -> bool:
        """True when every follower has a diagonal Jacobian (so M_i = diag(phi'(s_i)) exists)."""
        return all(isinstance(m, ELEMENTWISE_TYPES) for m in self.followers)


@dataclass
class SitePlan:
    """The model as prefix modules followed by a chain of sites."""

    prefix: list[nn.Module]
    sites: list[Site]

    def __len__(self) -> int:
        return len(self.sites)

    @property
    def widths(self) -> list[int]:
        """Output width of every site (the activity-space dimension per example)."""
        return [s.out_features for s in self.sites]

    def next_site(self, index: int) -> Site | None:
        return self.sites[index + 1] if index + 1 < len(self.sites) else None

    def parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) of every site, in site order: ``"{i}.weight"``, ``"{i}.bias"``."""
        out = []
        for s in self.sites:
            out.append((f"{s.index}.weight", s.module.weight))
            if s.module.bias is not None:
                out.append((f"{s.index}.bias", s.module.bias))
        return out

    def require_next_layer(self, guess: str) -> None:
        """Raise unless every site but the last feeds the next site through elementwise modules.

        Guesses built from the next layer's Jacobian ``W_{i+1} diag(phi'(s_i))`` need exactly
        that structure.
        """
        for s in self.sites[:-1]:
            if not s.elementwise_followers:
                bad = [
                    type(m).__name__ for m in s.followers if not isinstance(m, ELEMENTWISE_TYPES)
                ]
                raise ModelNotSupportedError(
                    f"guess {guess!r} needs each linear layer to reach the next one through "
                    f"elementwise activations only; site {s.index} is followed by {bad}. "
                    "Use an isotropic guess (weight, activation, activation-masked) for this model."
                )


def _flatten(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            out.extend(_flatten(child))
        return out
    return [module]


def find_sites(model: nn.Module) -> SitePlan:
    """Read an ``nn.Sequential`` (nested ones are flattened) into a :class:`SitePlan`.

    Raises :class:`ModelNotSupportedError` naming the offending module when the model is not a
    sequential chain, has no linear layer, or contains a module that mixes examples or is random.
    """
    if not isinstance(model, nn.Sequential):
        raise ModelNotSupportedError(
            f"forwardgrad reads models given as nn.Sequential; got {type(model).__name__}. "
            "Wrap the layers in nn.Sequential (Linear layers and elementwise activations)."
        )
    modules = _flatten(model)
    prefix: list[nn.Module] = []
    sites: list[Site] = []
    for m in modules:
        if isinstance(m, UNSUPPORTED_TYPES):
            raise ModelNotSupportedError(
                f"{type(m).__name__} is not supported: it mixes examples of a batch or is random, "
                "so per-example JVPs along k tangents would not be derivatives of one function."
            )
        if isinstance(m, SITE_TYPES):
            sites.append(Site(index=len(sites), module=m))
            continue
        if any(p.requires_grad for p in m.parameters()):
            raise ModelNotSupportedError(
                f"{type(m).__name__} has trainable parameters, but only nn.Linear layers are "
                "perturbation sites; freeze it (requires_grad_(False)) or remove it."
            )
        if sites:
            sites[-1].followers.append(m)
        else:
            prefix.append(m)
    if not sites:
        raise ModelNotSupportedError("the model has no nn.Linear layer to perturb")
    return SitePlan(prefix=prefix, sites=sites)
