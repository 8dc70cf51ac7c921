"""Guesses from a local VJP through the next l layers: l-layer downstream and self-sharpening.

``u = J^T eps`` with J the Jacobian of ``s_i -> x_{i+l+1}`` (the next l layers, ending after
their activations; at the end of the network, the outputs). This is the only place besides the
``backprop`` oracle where a reverse-mode product is taken, and it is local: l layers deep, with a
random cotangent that carries no information about the loss.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vjp, vmap

from ..core.context import SiteContext
from ..core.sites import ModelNotSupportedError
from .base import Guess, isotropic_site_tangents


class Downstream(Guess):
    """l-layer downstream: ``u = J_{s_i -> x_{i+l+1}}^T eps``, ``eps ~ N(0, I)``. Biased,
    increasingly with l (Singhal et al. 2023, Sec. 5). The last site is isotropic."""

    name = "downstream"
    summary = "l-layer downstream: u = J^T eps through the next l layers (local VJP); biased"
    paper = "Singhal et al. 2023"
    option_names: tuple[str, ...] = ("layers", "fallback")
    needs_next_layer = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if self.options.layers < 1:
            raise ValueError(f"downstream layers must be >= 1; got {self.options.layers}")

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator, dtype) -> Tensor:
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)

    def _last_site(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        return isotropic_site_tangents(ctx, k, generator)

    builds_from = "is a VJP through the next layers, needed"

    def site_problem(self, path, site, engine) -> str | None:
        why = super().site_problem(path, site, engine)
        if why is None:
            try:
                path.layers(self.options.layers)
            except ValueError as e:
                why = str(e)
        return why

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if ctx.is_last:
            return self._last_site(ctx, k, generator)
        if self.falls_back(ctx):
            return isotropic_site_tangents(ctx, k, generator)
        out, pullback = vjp(ctx.path.downstream(self.options.layers), ctx.preact)
        eps = self._noise((k, *out.shape), generator, out.dtype)
        (u,) = vmap(pullback)(eps)
        return u


class SelfSharpening(Downstream):
    """1-layer downstream with uniform noise ``eps ~ U[0, 1)``; the last site's tangent is the
    true local error ``dl_b/dz`` (``softmax - onehot`` for cross-entropy), which needs no
    backpropagation. Biased; its guesses sharpen over training (Singhal et al. 2023, Sec. 4.1)."""

    name = "self-sharpening"
    summary = "self-sharpening: 1-layer downstream with U[0,1) noise; last site = true local error"
    paper = "Singhal et al. 2023"
    option_names: tuple[str, ...] = ("layers", "fallback")

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if self.options.layers != 1:
            raise ValueError("self-sharpening is defined with layers=1")

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator, dtype) -> Tensor:
        return torch.rand(shape, generator=generator, device=generator.device, dtype=dtype)

    def bind(self, engine) -> None:
        super().bind(engine)
        reach = getattr(engine, "reach", None) or []
        heads = [c.key for c, losses in zip(engine.layout.calls, reach) if 0 not in losses]
        heads = [key for key in heads if key in self.output_sites]  # a local loss's own head
        if heads and self.options.fallback != "activation":
            raise ModelNotSupportedError(
                f"self-sharpening's output-site tangent is the true local error of the "
                f"model's loss; sites {heads[:4]} are the heads of local losses, for which it "
                "is not defined. fallback='activation' (--fallback activation) gives them "
                "isotropic tangents"
            )
        self.fallback_sites.extend(heads)
        last = engine.paths[-1] if engine.paths else None
        # dl/dz at the site's output, or after the one activation whose output ctx.outputs is
        # (the chain engine's outputs follow all of the last site's followers)
        through = getattr(last, "between", [])
        if last is None or not engine.layout.keys:
            return
        if not isinstance(last, str) and not last.reaches_layer:
            if engine.plan is not None or len(through) == 1:
                return
            last = f"its output goes through {[type(m).__name__ for m in through]}"
        key = engine.layout.keys[-1]
        if self.options.fallback != "activation":
            raise ModelNotSupportedError(
                f"self-sharpening's last-site tangent is the true local error dl/dz of the "
                f"model's output z, so the last site must produce the output; site {key!r} "
                f"does not: {last}. fallback='activation' (--fallback activation) gives it "
                "isotropic tangents instead"
            )
        self.fallback_sites.append(key)

    def _last_site(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if ctx.key in self.fallback_sites:
            return isotropic_site_tangents(ctx, k, generator)
        if ctx.targets is None or ctx.loss_fn is None:
            raise ValueError("self-sharpening needs the targets and the loss at the last site")
        loss_fn, targets = ctx.loss_fn, ctx.targets
        local_error = grad(lambda z: loss_fn(z, targets).sum())(ctx.outputs)
        return local_error.unsqueeze(0).expand(k, *local_error.shape).clone()
