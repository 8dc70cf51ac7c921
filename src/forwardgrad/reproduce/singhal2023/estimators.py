"""Methods that exist only as probes in these experiments, so are no registered guesses: Wᵀ with
powered singular values, the cosine-matched directional descent (it reads the true gradient),
and the unit-norm scaling of a guess that the paper's 1-step effectiveness uses."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...core.context import SiteContext
from ...diagnostics import weight_gradients
from ...estimation import Estimator
from ...guesses import Guess
from ...guesses.base import isotropic_site_tangents
from .maths import cosine_matched_direction, powered_matrix


class PoweredWTranspose(Guess):
    """Wᵀ with the next layer's singular values raised to a power (Singhal et al. Sec. 4.1):
    ``u = M_i (U S^p Vᵀ)ᵀ eps``, ``eps ~ N(0, I)``, rescaled to keep ``||W_{i+1}||_F``
    (:func:`powered_matrix`). p = 1 is Wᵀ. The last site is isotropic."""

    name = "wt-power"
    summary = "Wᵀ with the singular values of W_{i+1} raised to a power p (p = 1: Wᵀ)"
    paper = "Singhal et al. 2023"
    needs_next_layer = True

    def __init__(self, power: float) -> None:
        super().__init__()
        self.power = float(power)

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if ctx.is_last:
            return isotropic_site_tangents(ctx, k, generator)
        nxt = ctx.plan.next_site(ctx.index)
        assert nxt is not None
        w = powered_matrix(nxt.weight.detach(), self.power)
        eps = torch.randn(
            k, ctx.batch_size, w.shape[0], generator=generator, device=generator.device
        ).to(w.dtype)
        return (eps @ w) * ctx.act_grad


def powered_wt_estimator(model: nn.Module, power: float, seed: int) -> Estimator:
    """An :class:`Estimator` whose guess is :class:`PoweredWTranspose` (the engine, aggregation
    and bookkeeping are the library's own; only the tangent law is replaced)."""
    return Estimator(model, PoweredWTranspose(power), seed=seed)


class CosineMatchedEstimator(Estimator):
    """Directional descent whose cosine to the true gradient is fixed (Singhal et al. A.2).

    Each step draws ``v ~ N(0, I)`` over all parameters and returns
    ``relative_norm * ||g|| * d`` with ``d`` = :func:`cosine_matched_direction` (g, v, cosine):
    unbiased up to a scale (the part across g has a symmetric law), every draw exactly at the
    given cosine, and as long as ``relative_norm`` times the gradient. That is the JVP-scaled
    guess ``(g · d') d'`` with ``||d'||² = relative_norm / cosine``. It reads the true gradient
    by construction: a probe of bias against variance, not a backprop-free method.
    """

    def __init__(
        self, model: nn.Module, cosine: float, relative_norm: float = 1.0, seed: int = 0
    ) -> None:
        super().__init__(model, "backprop", seed=seed)
        if not 0.0 < cosine <= 1.0:
            raise ValueError(f"the matched cosine must be in (0, 1]; got {cosine}")
        if not relative_norm > 0:
            raise ValueError(f"relative_norm must be > 0; got {relative_norm}")
        self.guess_name = "cosine-matched"
        self.cosine = float(cosine)
        self.relative_norm = float(relative_norm)

    def estimate(
        self, x: Tensor, targets: Tensor, loss_fn=None
    ) -> tuple[Tensor, dict[nn.Parameter, Tensor]]:
        loss, true = super().estimate(x, targets, loss_fn)  # the oracle: guess "backprop"
        params = list(true)
        g = torch.cat([true[p].flatten() for p in params])
        noise = torch.randn(g.shape, generator=self.generator, device=self.generator.device)
        direction = cosine_matched_direction(g, noise, self.cosine)
        flat = (direction * (self.relative_norm * g.double().norm())).to(g.dtype)
        pieces = flat.split([p.numel() for p in params])
        return loss, {p: piece.view_as(p) for p, piece in zip(params, pieces)}


class UnitGuess:
    """An estimator's guess as the paper scales directional descent: its direction u made a
    unit vector, times the JVP, ``(g · u) u``.

    ``g · u`` is exactly the directional derivative a JVP along u returns; it is read here from
    the backprop oracle, which gives the same number without a second engine pass. Only for
    :func:`~forwardgrad.diagnostics.one_step_effectiveness`, which needs ``model``,
    ``loss_fn`` and ``estimate``.
    """

    def __init__(self, estimator: Estimator) -> None:
        self.estimator = estimator
        self.model, self.loss_fn = estimator.model, estimator.loss_fn

    def estimate(self, x: Tensor, targets: Tensor) -> tuple[Tensor, dict[nn.Parameter, Tensor]]:
        loss, est = self.estimator.estimate(x, targets)
        _, true = weight_gradients(self.model, x, targets, self.loss_fn)
        params = list(est)
        u = torch.cat([est[p].flatten().double() for p in params])
        u = u / u.norm().clamp_min(1e-300)
        g = torch.cat([true[p].flatten().double() for p in params])
        pieces = ((g @ u) * u).split([p.numel() for p in params])
        return loss, {p: piece.view_as(p).to(p.dtype) for p, piece in zip(params, pieces)}
