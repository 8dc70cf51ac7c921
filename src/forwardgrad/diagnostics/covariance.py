"""The second moment ``E[u u^T]`` of a guess's tangents per site call, drawn and in closed form,
and the bias ``(E[u u^T] - I) g`` it implies."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..core.samplers import SAMPLERS
from .contexts import SiteContext, flat, site_contexts

if TYPE_CHECKING:
    from ..core.chain import SitePlan
    from ..estimation import Estimator
    from ..guesses.options import GuessOptions

# Sites wider than this (per example) get no d x d second moment: it would not fit in memory
# for a conv net's activities; their rows say so.
MAX_COVARIANCE_WIDTH = 4096


def _identity_factor(ctx: SiteContext) -> Tensor:
    b, d = flat(ctx.preact).shape
    return torch.eye(d, dtype=torch.float64, device=ctx.preact.device).expand(b, d, d)


def _width(ctx: SiteContext) -> int:
    return int(ctx.preact[0].numel())


# Samplers whose tangents have second moment I (activation guesses).
_ISOTROPIC_SAMPLERS = ("normal", "rademacher", "orthonormal", "angle")

# Next-layer guesses that are isotropic at the last site (it has no next layer).
_ISOTROPIC_AT_LAST_SITE = ("wt", "wperp", "preconditioned", "mixing", "downstream")


def _activation_factor(
    ctx: SiteContext, name: str, options: GuessOptions, total_width: int
) -> Tensor | None:
    """``I`` (masked for ``activation-masked``, scaled for ``normalize``), where the sampler's
    law is known."""
    if options.sampler not in _ISOTROPIC_SAMPLERS:
        return None
    factor = _identity_factor(ctx)
    mask = ctx.act_grad if name == "activation-masked" else None
    if mask is not None:
        factor = factor * (flat(mask) != 0).double().unsqueeze(-1)
    if options.normalize:
        factor = factor / math.sqrt(total_width)
    return factor


def _next_layer_factor(
    ctx: SiteContext, name: str, options: GuessOptions, plan: SitePlan
) -> Tensor | None:
    """The factor of a next-layer guess at a site that has a next layer, where it is known."""
    from ..guesses.subspace import masked_jacobian, svd_subspace

    weight = plan.next_site(ctx.index).weight.detach().double()
    mask = ctx.act_grad.double()
    if name == "wt":
        return masked_jacobian(weight, mask)
    if name == "wperp" and options.solver == "svd":
        basis, keep = svd_subspace(weight, mask, options.rank, bottom=options.bottom)
        return (basis * keep.unsqueeze(1)).transpose(1, 2)
    if name == "preconditioned" and weight.shape[0] >= weight.shape[1]:
        return _identity_factor(ctx)
    return None


def _site_factor(
    ctx: SiteContext, name: str, options: GuessOptions, plan: SitePlan | None, total_width: int
) -> Tensor | None:
    """One site call's factor, or None where the law is not known in closed form."""
    if _width(ctx) > MAX_COVARIANCE_WIDTH:
        return None
    if name in ("activation", "activation-masked"):
        return _activation_factor(ctx, name, options, total_width)
    if ctx.is_last:
        return _identity_factor(ctx) if name in _ISOTROPIC_AT_LAST_SITE else None
    if plan is None:
        return None
    return _next_layer_factor(ctx, name, options, plan)


def closed_form_covariance_factor(
    estimator: Estimator, x: Tensor, targets: Tensor
) -> list[Tensor | None]:
    """Factors ``F_b`` with ``E[u_b u_b^T] = F_b^T F_b`` per site call, where the law is known.

    Known in closed form (None elsewhere, e.g. mixing, downstream, randomized or Newton-Schulz
    W̃⊥, where only :func:`tangent_covariance`'s draws tell, and at sites wider than
    :data:`MAX_COVARIANCE_WIDTH`):

    * ``activation`` (samplers normal, rademacher, orthonormal, angle): ``I``;
      ``activation-masked``: ``diag([phi'(s_i) != 0])`` (``I`` at sites without a mask);
    * ``wt``: ``W~_b`` (so ``E[uu^T] = W~_b^T W~_b``);
    * ``wperp`` with ``solver="svd"``: ``V_k^T`` (so ``E[uu^T] = V_k V_k^T``, top or bottom k);
    * ``preconditioned`` when the next layer is at least as wide: ``I``;
    * the last site of every next-layer guess except self-sharpening: ``I`` (isotropic there).

    Returns one float64 tensor ``(B, r, d_i)`` or None per site call. Isotropic guesses with
    ``normalize=True`` have ``E[uu^T] = I / n`` with n the whole activity dimension.
    """
    name, o = estimator.guess_name, estimator.guess.options
    engine = estimator.engine_for(x, targets)
    contexts = site_contexts(engine, x, targets, estimator.loss_fn)
    total_width = sum(engine.layout.widths)
    plan = estimator.plan
    return [_site_factor(ctx, name, o, plan, total_width) for ctx in contexts]


def covariance_distance(cov: Tensor) -> Tensor:
    """``||C_b - I||_F`` for second-moment matrices ``cov (..., d, d)`` -> ``(...)``."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return (cov - eye).flatten(-2).norm(dim=-1)


def factor_covariance_distance(factor: Tensor) -> Tensor:
    """``||F_b^T F_b - I||_F`` from factors ``(B, r, d)`` -> ``(B,)``, without forming d x d.

    ``||F^T F - I||^2 = ||F F^T||^2 - 2 ||F||^2 + d`` (the r x r Gram has the same Frobenius
    norm as the d x d one).
    """
    f = factor.double()
    gram = f @ f.transpose(-1, -2)
    sq = gram.flatten(-2).pow(2).sum(-1) - 2 * f.flatten(-2).pow(2).sum(-1) + f.shape[-1]
    return sq.clamp_min(0).sqrt()


def covariance_bias(factor: Tensor, grad: Tensor) -> float:
    """The W̃⊥ paper's bias magnitude (Eq. 17) from a closed-form second moment.

    ``|| (1/B) sum_b (F_b^T F_b - I) g_b ||_2`` with ``factor (B, r, d)``, ``grad (B, d)`` the
    true per-example ``dl_b/ds_i``.
    """
    f, g = factor.double(), flat(grad).double()
    expected = torch.einsum("brd,br->bd", f, torch.einsum("brd,bd->br", f, g))
    return float((expected - g).mean(0).norm())


def _draws_are_independent(estimator: Estimator) -> bool:
    """True when the k tangents of one engine pass are i.i.d., so many can be drawn at once.

    Only isotropic guesses with a sampler that couples its k tangents (orthonormal, angle,
    varying-length) are not: their tangents are drawn in groups of the estimator's k.
    """
    guess = estimator.guess
    if not guess.isotropic:
        return True
    spec = SAMPLERS.get(guess.options.sampler)
    return spec is not None and spec.elementwise


def tangent_second_moments(
    estimator: Estimator, x: Tensor, targets: Tensor, draws: int, max_examples: int | None = None
) -> tuple[list[Tensor | None], int]:
    """Monte-Carlo ``E[u_b u_b^T]`` per site call from the estimator's own guess.

    Tangents are drawn by the guess exactly as the engine asks for them (``begin_step`` then
    ``site_tangents`` per call, with the primal pass's contexts), without JVPs. Advances the
    estimator's generator.

    Returns a list of float64 ``(B', d_i, d_i)`` (B' = min(B, max_examples); None at calls the
    guess leaves unperturbed or wider than :data:`MAX_COVARIANCE_WIDTH`) and the number of
    tangents actually drawn (>= draws).
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1; got {draws}")
    guess, gen = estimator.guess, estimator.generator
    if guess.space != "activity":
        raise ValueError(
            f"guess {estimator.guess_name!r} draws weight-space tangents over all parameters; "
            "the tangent covariance is defined per site for activity-space guesses"
        )
    engine = estimator.engine_for(x, targets)
    contexts = site_contexts(engine, x, targets, estimator.loss_fn)
    batch = x.shape[0]
    n = batch if max_examples is None else min(batch, max_examples)
    acc: list[Tensor | None] = [None] * len(contexts)
    # i.i.d. tangents are drawn many at a time; coupled ones exactly as the estimator groups them
    independent = _draws_are_independent(estimator)
    done = 0
    with torch.no_grad():
        while done < draws:
            k = min(256, draws - done) if independent else estimator.num_tangents
            guess.begin_step(engine.layout, batch, k, gen)
            for i, ctx in enumerate(contexts):
                u = guess.site_tangents(ctx, k, gen)
                if u is None or _width(ctx) > MAX_COVARIANCE_WIDTH:
                    continue
                u = u[:, :n].reshape(k, n, -1).double()
                moment = torch.einsum("kbi,kbj->bij", u, u)
                acc[i] = moment if acc[i] is None else acc[i] + moment
            done += k
    return [None if a is None else a / done for a in acc], done


def tangent_covariance(
    estimator: Estimator,
    x: Tensor,
    targets: Tensor,
    draws: int = 1000,
    max_examples: int | None = 64,
) -> dict:
    """``||E[u u^T] - I||_F`` of the guess's tangents at every site call, averaged over examples.

    "Covariance" is the second moment ``E[u u^T]``, the matrix in the bias formula
    ``E[ĝ] - g = (E[u u^T] - I) g``; it equals the covariance for zero-mean guesses.

    Returns ``{"draws", "examples", "layers": [{"layer", "name", "width", "frobenius",
    "frobenius_over_d", "closed_form", "closed_form_over_d"}]}``. ``frobenius`` is the mean over
    examples of the per-example norm from ``draws`` tangents (Monte-Carlo noise about
    ``d / sqrt(draws)`` for isotropic tangents); ``frobenius_over_d`` divides by the width, the
    normalisation of the W̃⊥ paper's Table 2 (its code's ``sqrt(mean((Cov - I)^2))``).
    ``closed_form`` is the exact value where :func:`closed_form_covariance_factor` knows the law,
    else None. Sites wider than :data:`MAX_COVARIANCE_WIDTH` have None throughout.
    """
    moments, done = tangent_second_moments(estimator, x, targets, draws, max_examples)
    factors = closed_form_covariance_factor(estimator, x, targets)
    layout = estimator.engine_for(x, targets).layout
    n = x.shape[0] if max_examples is None else min(x.shape[0], max_examples)
    layers = []
    for i, (moment, factor) in enumerate(zip(moments, factors)):
        d = layout.widths[i]
        emp = None
        if d <= MAX_COVARIANCE_WIDTH:
            if moment is None:
                moment = torch.zeros(n, d, d, dtype=torch.float64)
            emp = float(covariance_distance(moment).mean())
        exact = None if factor is None else float(factor_covariance_distance(factor[:n]).mean())
        layers.append(
            {
                "layer": i,
                "name": layout.keys[i],
                "width": d,
                "frobenius": emp,
                "frobenius_over_d": None if emp is None else emp / d,
                "closed_form": exact,
                "closed_form_over_d": None if exact is None else exact / d,
            }
        )
    return {"draws": done, "examples": n, "layers": layers}
