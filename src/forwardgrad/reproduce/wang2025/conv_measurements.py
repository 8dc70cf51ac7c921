"""Fig. 1's overlap curve at any site with a next layer (conv sites included), exactly, one
example at a time, and the overlap with the subspace a guess draws its tangents in.

At a conv site ``W̃_b`` maps the example's whole ``C x H x W`` activity to the next layer's
whole activity, so the exact solver's batch-wide dense ``(B, m, n)`` matrix is refused past
``DENSE_LIMIT``. One example's ``W̃_b`` alone is formed here, a block of unit vectors at a
time, through the next layer's own apply or adjoint (:class:`~forwardgrad.core.next_layer.
NextLayer`); its zero columns (the units that the ReLU or the pooling drop, which no singular
direction touches) are removed, and its SVD comes from the float64 eigendecomposition of the
smaller Gram matrix. Used by ``wperp-conv``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from ...core.next_layer import NextPath
from ...diagnostics import activity_gradients, site_contexts
from ...estimation import cross_entropy_per_example
from ...guesses.subspace import exact_jacobian_subspace
from ...training.config import TrainConfig
from ...training.train import build_estimator

if TYPE_CHECKING:  # pragma: no cover
    from ...core.context import SiteContext
    from ...guesses import Guess

FLOAT32_EPS = torch.finfo(torch.float32).eps
COLUMN_BLOCK = 512  # unit vectors pushed through W̃ (or its adjoint) at once


def _unit_images(
    linear_map: Callable[[Tensor], Tensor], shape: Sequence[int], dtype: torch.dtype
) -> Tensor:
    """``linear_map`` of every unit vector of ``shape`` (one example), a block at a time:
    ``(prod(shape), out)``, row j the image of unit vector j."""
    size = math.prod(shape)
    eye = torch.eye(size, dtype=dtype)
    blocks = []
    for start in range(0, size, COLUMN_BLOCK):
        units = eye[start : start + COLUMN_BLOCK]
        blocks.append(linear_map(units.reshape(len(units), 1, *shape)).reshape(len(units), -1))
    return torch.cat(blocks)


def example_jacobian(path: NextPath, preact: Tensor) -> Tensor:
    """One example's ``W̃_b`` as a dense ``(m, n)`` matrix; ``preact`` is its activity
    ``(1, *S)``. Built from whichever side is smaller: m adjoint applies (rows) or n applies
    (columns)."""
    layer = path.at(preact)
    if layer.out_features <= layer.in_features:
        return _unit_images(layer.adjoint, layer.out_shape, layer.dtype)
    return _unit_images(layer.apply, layer.in_shape, layer.dtype).t()


def exact_overlap_sq(jac: Tensor, grad: Tensor) -> tuple[Tensor, int]:
    """Fig. 1's curve for one example: ``||V_k V_k^T g||² / ||g||²`` for k = 1..r.

    ``jac`` is ``W̃_b`` (m, n), ``grad`` the true ``dl_b/ds_i`` (any shape with n entries).
    Zero columns of ``W̃_b`` are dropped first (no singular direction has weight there), so
    r = min(m, a) with a the remaining columns. Directions below ``svd_subspace``'s float32
    rank tolerance count as absent (the curve is flat past the numerical rank). Returns the
    curve (float64, clamped to 1; NaN where g = 0) and the numerical rank.
    """
    m, n = jac.shape
    alive = jac.abs().sum(0) > 0
    j = jac[:, alive].double()
    g = grad.reshape(-1).double()
    total = g.square().sum()
    if j.shape[1] == 0 or total == 0:
        return torch.full((1,), math.nan if total == 0 else 0.0, dtype=torch.float64), 0
    if j.shape[1] <= m:
        basis, svals = exact_jacobian_subspace(j.unsqueeze(0))
        coords = basis[0].t() @ g[alive]
    else:  # wide: left vectors from the (m, m) problem, v = W̃ᵀu / σ
        left, svals = exact_jacobian_subspace(j.t().unsqueeze(0))
        coords = (left[0].t() @ (j @ g[alive])) / svals[0].clamp_min(1e-300)
    svals = svals[0]
    keep = svals > max(m, n) * FLOAT32_EPS * svals[0]
    captured = (coords.square() * keep).cumsum(0) / total
    return captured.clamp(max=1.0), int(keep.sum())


def mean_padded(curves: Sequence[Tensor]) -> Tensor:
    """Mean of curves of different lengths, each extended by its last value (flat past its
    rank), over the curves that are not NaN; NaN when all are."""
    valid = [c for c in curves if not bool(torch.isnan(c).any())]
    if not valid:
        return torch.full((1,), math.nan, dtype=torch.float64)
    length = max(len(c) for c in valid)
    padded = [torch.cat([c, c[-1:].expand(length - len(c))]) for c in valid]
    return torch.stack(padded).mean(0)


def span_overlap_sq(tangents: Tensor, grad: Tensor) -> Tensor:
    """Per example, ``||Q Q^T g||² / ||g||²`` with Q an orthonormal basis of the span of the
    example's tangents ``(k, B, *S)``; NaN where g = 0."""
    k, b = tangents.shape[:2]
    basis = torch.linalg.qr(tangents.reshape(k, b, -1).permute(1, 2, 0).double()).Q
    g = grad.reshape(b, -1).double()
    total = g.square().sum(-1)
    captured = torch.einsum("bnk,bn->bk", basis, g).square().sum(-1)
    return torch.where(total > 0, captured / total.clamp_min(1e-300), math.nan).clamp(max=1.0)


def _route(path: NextPath) -> str:
    return " → ".join(type(m).__name__ for m in [*path.between, path.target])


def site_overlaps(
    ctx: SiteContext, grad: Tensor, guess: Guess, generator: torch.Generator
) -> dict[str, Any]:
    """One site's exact overlap curve (mean over the batch), its numerical ranks, and the
    overlap with the span of the ``guess``'s tangents there (W̃⊥: the subspace it trains with,
    from its own solver)."""
    layer = ctx.next_layer
    curves, ranks = [], []
    for b in range(ctx.batch_size):
        curve, rank = exact_overlap_sq(example_jacobian(ctx.path, ctx.preact[b : b + 1]), grad[b])
        curves.append(curve)
        ranks.append(rank)
    trained = span_overlap_sq(guess.site_tangents(ctx, guess.options.rank, generator), grad)
    m, n = layer.out_features, layer.in_features
    return {
        "site": ctx.key,
        "module": type(ctx.site.module).__name__,
        "route": _route(ctx.path),
        "in_shape": list(layer.in_shape),
        "out_shape": list(layer.out_shape),
        "dense_entries": n * max(m, n),
        "rank": float(np.mean(ranks)),
        # 6 decimals: far below the spread over examples, and it keeps results.json small
        "overlap_sq": [round(v, 6) for v in mean_padded(curves).tolist()],
        "solver_overlap_sq": float(trained.nanmean()),
    }


def measure_conv_overlap(
    model: nn.Module, cfg: TrainConfig, x: Tensor, y: Tensor, seed: int
) -> dict[str, Any]:
    """Fig. 1's curves at every site of ``model`` with a next layer, on the batch ``x``, from
    the primal pass of the estimator ``cfg`` trains with (its sites, routes and guess)."""
    estimator = build_estimator(cfg, model)
    engine = estimator.engine_for(x, y)
    contexts = site_contexts(engine, x, y, cross_entropy_per_example)
    grads = activity_gradients(model, x, y, cross_entropy_per_example, engine.sites)
    if [tuple(c.preact.shape) for c in contexts] != [tuple(g.shape) for g in grads]:
        raise RuntimeError("site contexts and true gradients are not the same site calls")
    generator = torch.Generator().manual_seed(seed)
    sites = [
        site_overlaps(ctx, grad, estimator.guess, generator)
        for ctx, grad in zip(contexts, grads)
        if ctx.next_layer is not None
    ]
    return {"examples": int(x.shape[0]), "sites": sites}
