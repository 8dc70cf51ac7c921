"""The pure mathematics of the *How to Guess a Gradient* experiments: cosines in weight and
activity space, PCA and random subspaces, singular-value powers, the cosine-matched direction."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def per_example_weight_cosine(
    estimates: Sequence[Tensor],
    trues: Sequence[Tensor],
    inputs: Sequence[Tensor],
    bias: bool = True,
) -> Tensor:
    """Cosine between one example's weight-gradient estimate and its true weight gradient.

    Activity estimates ``e_i`` and true activity gradients ``g_i`` (B, d_i) of every site, and
    the site inputs ``x_i`` (B, d_in_i). One example's weight gradient at site i is ``g_i x_iᵀ``
    (and ``g_i`` for the bias), so ``<e_i x_iᵀ, g_i x_iᵀ> = (e_i · g_i) ||x_i||²``: the weight
    space cosine weighs every site by ``||x_i||² (+ 1 with a bias)`` and needs no outer
    product. Returns (B,) in float64.
    """
    dot = norm_e = norm_g = None
    for e, g, x in zip(estimates, trues, inputs, strict=True):
        weight = x.double().pow(2).sum(-1) + (1.0 if bias else 0.0)
        e, g = e.double(), g.double()
        terms = (weight * (e * g).sum(-1), weight * e.pow(2).sum(-1), weight * g.pow(2).sum(-1))
        if dot is None:
            dot, norm_e, norm_g = terms
        else:
            dot, norm_e, norm_g = dot + terms[0], norm_e + terms[1], norm_g + terms[2]
    if dot is None:
        raise ValueError("no sites given")
    return dot / (norm_e * norm_g).sqrt().clamp_min(1e-300)


def activity_cosine(estimates: Sequence[Tensor], trues: Sequence[Tensor]) -> Tensor:
    """Per-example cosine of the concatenated activity vectors (all sites): (B,)."""
    e = torch.cat([t.double() for t in estimates], -1)
    g = torch.cat([t.double() for t in trues], -1)
    return (e * g).sum(-1) / (e.norm(dim=-1) * g.norm(dim=-1)).clamp_min(1e-300)


def pca_basis(activations: Tensor, k: int, center: bool = True) -> Tensor:
    """The top-k principal directions (d, k) of the rows of ``activations`` (B, d).

    k is capped at min(B, d). Directions past the data's rank complete an orthonormal set.
    """
    a = activations.double()
    if center:
        a = a - a.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(a, full_matrices=False)
    return vh[: min(k, vh.shape[0])].T


def random_basis(d: int, k: int, generator: torch.Generator) -> Tensor:
    """An orthonormal basis (d, k) of a uniformly random k-dimensional subspace of R^d."""
    g = torch.randn(d, min(k, d), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # Haar, not biased by QR's signs


def subspace_cosine(vectors: Tensor, basis: Tensor) -> Tensor:
    """``cos(P v, v) = ||Bᵀ v|| / ||v||`` for each row v of ``vectors`` (B, d) and the projection
    P = B Bᵀ onto the span of an orthonormal ``basis`` (d, k); NaN for a zero vector."""
    v = vectors.double()
    captured = (v @ basis.double()).norm(dim=-1)
    total = v.norm(dim=-1)
    return torch.where(total > 0, captured / total.clamp_min(1e-300), math.nan)


def powered_matrix(matrix: Tensor, power: float) -> Tensor:
    """``U S^p Vᵀ`` for ``matrix = U S Vᵀ``, rescaled to the Frobenius norm of ``matrix``.

    Powers above 1 let the top singular values dominate, below 1 flatten the spectrum (p = 0
    leaves an equal-weight projection on the row space); the rescaling keeps the overall scale,
    so only the shape of the spectrum changes. Computed in float64, returned in the input dtype.
    """
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    keep = s > s.max() * max(matrix.shape) * torch.finfo(matrix.dtype).eps
    sp = torch.where(keep, s.clamp_min(1e-300) ** power, torch.zeros_like(s))
    sp = sp * (s.norm() / sp.norm().clamp_min(1e-300))
    return ((u * sp) @ vh).to(matrix.dtype)


def cosine_matched_direction(gradient: Tensor, noise: Tensor, cosine: float) -> Tensor:
    """A unit vector at exactly ``cosine`` to ``gradient``, its other part along ``noise``.

    The paper's construction (its A.2): split a random guess into its parts along and across
    the gradient, normalise both and interpolate, ``cos θ ĝ_∥ + sin θ ĝ_⊥``. The part along the
    gradient is taken with the gradient's sign: that sign cancels in the JVP-scaled step
    ``(g · d) d``, which is all that is ever used.
    """
    if not -1.0 <= cosine <= 1.0:
        raise ValueError(f"a cosine lies in [-1, 1]; got {cosine}")
    g = gradient.double().flatten()
    along = g / g.norm().clamp_min(1e-300)
    v = noise.double().flatten()
    across = v - (v @ along) * along
    across = across / across.norm().clamp_min(1e-300)
    return cosine * along + math.sqrt(1.0 - cosine**2) * across


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (no ties expected): +1 when y rises with x."""
    rx = np.argsort(np.argsort(np.asarray(x, dtype=float)))
    ry = np.argsort(np.argsort(np.asarray(y, dtype=float)))
    if len(rx) < 2:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
