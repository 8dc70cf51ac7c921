"""Per-example right singular subspaces of the upstream Jacobian ``W~_b = W_{i+1} diag(m_b)``.

W~⊥ needs only the span of the top-k right singular vectors of W~_b (``V_k U_k^T eps`` and
``V_k z`` have the same distribution), i.e. the top-k eigenvectors of the masked Gram matrix
``diag(m_b) W^T W diag(m_b)``. Two ways to get them:

* ``svd``: exact, the reference: the float64 eigendecomposition of the masked Gram matrix,
  whose eigenvectors are the SVD's right singular vectors.
* ``randomized``: subspace iteration on the masked Gram matrix. ``W^T W`` is formed once per
  step and shared by the batch; the masks are applied per example as elementwise products, so each
  iteration costs one ``(d, d) x (d, B p)`` matmul instead of B SVDs. A Rayleigh-Ritz step on the
  ``p = k + oversample`` dimensional subspace gives the top-k vectors and singular values.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_jacobian(weight: Tensor, mask: Tensor) -> Tensor:
    """``W diag(m_b)`` for every example: weight (d2, d1), mask (B, d1) -> (B, d2, d1)."""
    return weight.unsqueeze(0) * mask.unsqueeze(1)


def _numerical_keep(svals: Tensor, d2: int, d1: int) -> Tensor:
    """Mask (B, r) of singular values above the float32 rank tolerance of each example."""
    tol = max(d1, d2) * torch.finfo(torch.float32).eps * svals[..., :1]
    return svals > tol


def masked_gram(weight: Tensor, mask: Tensor) -> Tensor:
    """``diag(m_b) W^T W diag(m_b)`` for every example: (B, d1, d1)."""
    gram = weight.t() @ weight
    return gram.unsqueeze(0) * mask.unsqueeze(1) * mask.unsqueeze(2)


def exact_subspace(weight: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """All right singular vectors and values of every ``W diag(m_b)``, descending.

    Computed as the float64 eigendecomposition of the masked Gram matrix: the same vectors as
    the SVD's, far faster than a batched SVD on the CPU and robust to the many zero singular
    values that masking creates. Returns ``basis (B, d1, r)`` and ``svals (B, r)`` with
    ``r = min(d2, d1)`` as a reduced SVD would give.
    """
    d2, d1 = weight.shape
    evals, evecs = torch.linalg.eigh(masked_gram(weight.double(), mask.double()))
    r = min(d2, d1)
    basis = evecs[..., -r:].flip(-1).to(weight.dtype)
    svals = evals[..., -r:].flip(-1).clamp_min(0).sqrt().to(weight.dtype)
    return basis, svals


def svd_subspace(
    weight: Tensor, mask: Tensor, k: int | None, bottom: bool = False
) -> tuple[Tensor, Tensor]:
    """Exact top-k (or bottom-k) right singular subspace of every ``W diag(m_b)``.

    Returns ``basis (B, d1, kk)`` (orthonormal columns) and ``weights (B, kk)``: 1 for directions
    kept, 0 for directions dropped as numerically zero (only when ``k`` is None: full rank).
    """
    d2, d1 = weight.shape
    basis, svals = exact_subspace(weight, mask)
    r = svals.shape[-1]
    if k is None:
        return basis, _numerical_keep(svals, d2, d1).to(weight.dtype)
    kk = min(k, r)
    sel = basis[..., r - kk :] if bottom else basis[..., :kk]
    return sel, torch.ones(sel.shape[0], kk, dtype=weight.dtype, device=weight.device)


def _masked_gram_apply(gram: Tensor, mask: Tensor, q: Tensor) -> Tensor:
    """``diag(m_b) G diag(m_b) q_b`` for all b: gram (d, d), mask (B, d), q (B, d, p)."""
    b, d, p = q.shape
    mq = (q * mask.unsqueeze(-1)).transpose(0, 1).reshape(d, b * p)  # (d, B p)
    y = (gram @ mq).reshape(d, b, p).transpose(0, 1)  # (B, d, p)
    return y * mask.unsqueeze(-1)


def _orthonormalize(q: Tensor) -> Tensor:
    """Orthonormal columns spanning q (B, d, p) by shifted Cholesky-QR in float64.

    Much cheaper than Householder QR for tall, thin blocks. Columns are first scaled to unit
    norm (power iterations spread their norms over many orders of magnitude) and the p x p Gram
    matrix is factored in float64 with a tiny shift, which keeps rank-deficient blocks (fewer
    active units than p) factorable; their surplus columns just shrink. Blocks that still fail
    are orthonormalised by Householder QR, which gives the same span.
    """
    q64 = q.double()
    q64 = q64 / q64.norm(dim=-2, keepdim=True).clamp_min(1e-300)
    gram = q64.transpose(-1, -2) @ q64
    p = gram.shape[-1]
    eye = torch.eye(p, dtype=gram.dtype, device=gram.device)
    chol, info = torch.linalg.cholesky_ex(gram + 1e-10 * eye)
    if bool((info > 0).any()):
        return torch.linalg.qr(q64)[0].to(q.dtype)
    out = torch.linalg.solve_triangular(chol, q64.transpose(-1, -2), upper=False).transpose(-1, -2)
    return out.to(q.dtype)


def randomized_subspace(
    weight: Tensor,
    mask: Tensor,
    k: int,
    generator: torch.Generator,
    oversample: int = 10,
    iterations: int = 4,
) -> tuple[Tensor, Tensor]:
    """Top-k right singular subspace by subspace iteration on the masked Gram matrix.

    Returns ``basis (B, d1, k)`` and the estimated singular values ``(B, k)`` (descending).
    """
    d2, d1 = weight.shape
    b = mask.shape[0]
    p = min(k + oversample, d1)
    if p >= d1:  # the subspace is the whole space: solve exactly
        basis, svals = exact_subspace(weight, mask)
        kk = min(k, basis.shape[-1])
        return basis[..., :kk], svals[..., :kk]
    gram = weight.t() @ weight  # formed once per step, shared by every example
    q = torch.randn(b, d1, p, generator=generator, device=generator.device, dtype=weight.dtype)
    q = _orthonormalize(q * mask.unsqueeze(-1))
    for _ in range(iterations):
        q = _orthonormalize(_masked_gram_apply(gram, mask, q))
    q = _orthonormalize(
        q
    )  # a second pass (Cholesky-QR2) restores orthonormality to float precision
    small = q.transpose(-1, -2) @ _masked_gram_apply(gram, mask, q)  # Rayleigh-Ritz, (B, p, p)
    evals, evecs = torch.linalg.eigh((0.5 * (small + small.transpose(-1, -2))).double())
    kk = min(k, p, d2)
    basis = q @ evecs[..., -kk:].flip(-1).to(weight.dtype)
    return basis, evals[..., -kk:].flip(-1).clamp_min(0).sqrt().to(weight.dtype)
