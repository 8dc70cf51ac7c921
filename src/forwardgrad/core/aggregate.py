"""Combine k directional derivatives into one gradient estimate.

All functions take tangents ``V`` of shape ``(k, *batch, n)`` and JVPs ``d`` of shape
``(k, *batch)`` with ``d_j = <g, v_j>``, and return an estimate of g of shape ``(*batch, n)``.

* ``sum``:        sum_j d_j v_j
* ``mean``:       sum / k (unbiased for standard Gaussian tangents)
* ``projection``: the orthogonal projection of g onto span(v_1..v_k), which is the minimum-norm
  w with V w = d. It is computed as ``V^T G^+ d`` with the k x k Gram matrix ``G = V V^T`` in
  float64 (formed in float64 from tangents of any precision, so k = n is exact in float32 too)
  and its pseudo-inverse from an eigendecomposition, so linearly dependent tangents and k > n
  give the projection onto the span actually reached (with a warning) instead of a crash or
  garbage. No explicit inverse is formed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor


class DependentTangentsWarning(UserWarning):
    """Projection tangents were linearly dependent (or k > n); the span they reach was used."""


def aggregate_sum(tangents: Tensor, jvps: Tensor) -> Tensor:
    if tangents.shape[0] == 1:  # one tangent: a plain scaling (bmm loops over the batch)
        return tangents[0] * jvps[0].to(tangents.dtype).reshape(*jvps.shape[1:], 1)
    if tangents.dim() == 3:  # (k, B, n): one batched matmul, no copies (einsum permutes)
        coef = jvps.t().unsqueeze(1).to(tangents.dtype)  # (B, 1, k)
        return torch.bmm(coef, tangents.transpose(0, 1)).squeeze(1)
    return torch.einsum("k...n,k...->...n", tangents, jvps.to(tangents.dtype))


def aggregate_mean(tangents: Tensor, jvps: Tensor) -> Tensor:
    k = tangents.shape[0]
    return aggregate_sum(tangents, jvps / k if k > 1 else jvps)  # scale the (k, B) factors


def projection_coefficients(gram: Tensor, jvps: Tensor, n: int, eps: float) -> Tensor:
    """Coefficients ``c = G^+ d`` of the projection ``sum_j c_j v_j``.

    Args:
        gram: the tangents' Gram matrices ``G = V V^T``, (*batch, k, k), any float dtype.
        jvps: d, (k, *batch).
        n: the dimension the tangents live in (only for the rank tolerance and the warning).
        eps: machine epsilon of the tangents' dtype (rank tolerance).

    Returns:
        c, (k, *batch), float64. The Gram matrix can be accumulated site by site, so the
        low-memory mode never needs all tangents at once.
    """
    k = gram.shape[-1]
    # Forming G sums n products, so its eigenvalues carry rounding of up to n * eps of the
    # precision it was formed in, relative to the largest: below that they are noise.
    gram_noise = n * torch.finfo(gram.dtype).eps
    gram = gram.to(torch.float64)
    d = jvps.movedim(0, -1).to(torch.float64).unsqueeze(-1)  # (*batch, k, 1)
    evals, evecs = torch.linalg.eigh(gram)
    # Directions whose singular value is below k * eps (the tangents' precision) of the largest
    # are numerically dependent: their coefficients would amplify the JVPs' rounding. (The
    # tolerance is on the k x k problem: numpy's max(k, n) * eps would drop every direction of
    # k tangents in millions of float32 dimensions.)
    tol = max((k * eps) ** 2, gram_noise) * evals[..., -1:].clamp_min(0)
    keep = evals > tol
    inv = torch.where(
        keep, 1.0 / evals.where(keep, torch.ones_like(evals)), torch.zeros_like(evals)
    )
    coef = evecs @ (inv.unsqueeze(-1) * (evecs.transpose(-1, -2) @ d))  # G^+ d, (*batch, k, 1)
    rank = int(keep.sum(-1).min())
    if rank < k:
        warnings.warn(
            f"projection: the {k} tangents span only {rank} dimensions (n = {n}"
            + (", k > n" if k > n else ", tangents linearly dependent")
            + "); projecting onto the span they reach",
            DependentTangentsWarning,
            stacklevel=4,
        )
    return coef.squeeze(-1).movedim(-1, 0)


def tangent_gram(tangents: Tensor) -> Tensor:
    """``G = V V^T`` per batch index in float64: tangents (k, *batch, n) -> (*batch, k, k).

    Formed in float64 whatever the tangents' precision: a float32 Gram matrix squares the
    condition number in float32, and at k = n its smallest eigenvalues are rounding noise, so the
    projection would drop real directions."""
    v = tangents.movedim(0, -2).to(torch.float64)
    return v @ v.transpose(-1, -2)


# A Gram matrix formed in float32 is exact enough while its smallest eigenvalue stays well above
# its rounding, about n * eps32 of the largest; below this many times that, it is formed again in
# float64 (k = n and other ill-conditioned cases; random tangents in n >> k dimensions never are).
_GRAM_SAFETY = 100.0


def _own_precision_gram(flat: Tensor) -> Tensor:
    v = flat.movedim(0, -2)
    return (v @ v.transpose(-1, -2)).to(torch.float64)


def projection_grams(tangents: list[Tensor], scope: str) -> list[Tensor]:
    """Per-site Gram matrices ``(B, k, k)``, float64, for the projection of several sites.

    ``tangents``: per site ``(k, B, ...)``. Each Gram matrix is formed in the tangents' own
    precision (fast), and formed again in float64 for the examples whose system (the sum over
    sites for ``scope="global"``, each site's for ``"site"``) is too ill-conditioned for that
    precision, so the projection is exact at k = n in float32 as well.
    """
    flats = [t.reshape(t.shape[0], t.shape[1], -1) for t in tangents]
    if flats[0].dtype == torch.float64:
        return [tangent_gram(f) for f in flats]
    grams = [_own_precision_gram(f) for f in flats]
    eps = torch.finfo(flats[0].dtype).eps
    if scope == "global":
        systems, widths = [sum(grams)], [sum(f.shape[-1] for f in flats)]
    else:
        systems, widths = grams, [f.shape[-1] for f in flats]
    bad = torch.zeros(grams[0].shape[0], dtype=torch.bool, device=grams[0].device)
    for gram, n in zip(systems, widths):
        evals = torch.linalg.eigvalsh(gram)
        bad |= evals[..., 0] < _GRAM_SAFETY * n * eps * evals[..., -1].clamp_min(0)
    if bool(bad.any()):
        rows = bad.nonzero().squeeze(1)
        for gram, f in zip(grams, flats):
            gram[rows] = tangent_gram(f[:, rows])
    return grams


def aggregate_projection(tangents: Tensor, jvps: Tensor) -> Tensor:
    eps = torch.finfo(tangents.dtype).eps
    coef = projection_coefficients(tangent_gram(tangents), jvps, tangents.shape[-1], eps)
    return aggregate_sum(tangents.to(torch.float64), coef).to(tangents.dtype)


AGGREGATIONS: dict[str, tuple[Callable[[Tensor, Tensor], Tensor], str]] = {
    "sum": (aggregate_sum, "sum_j d_j v_j"),
    "mean": (aggregate_mean, "(1/k) sum_j d_j v_j; unbiased for Gaussian tangents"),
    "projection": (
        aggregate_projection,
        "orthogonal projection of the gradient onto span(tangents)",
    ),
}


def aggregate(method: str, tangents: Tensor, jvps: Tensor) -> Tensor:
    """Combine ``tangents (k, *batch, n)`` and ``jvps (k, *batch)`` by ``method``."""
    entry = AGGREGATIONS.get(method)
    if entry is None:
        raise ValueError(f"unknown aggregation {method!r}; choose one of {sorted(AGGREGATIONS)}")
    if tangents.shape[:-1] != jvps.shape:
        raise ValueError(
            f"tangents {tuple(tangents.shape)} and jvps {tuple(jvps.shape)} disagree: "
            "expected tangents (k, *batch, n) and jvps (k, *batch)"
        )
    return entry[0](tangents, jvps)
