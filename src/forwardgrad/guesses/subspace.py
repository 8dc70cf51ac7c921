"""Per-example right singular subspaces of the upstream Jacobian ``W~_b = W_{i+1} diag(m_b)``.

W~⊥ needs only the span of the top-k right singular vectors of W~_b (``V_k U_k^T eps`` and
``V_k z`` have the same distribution), i.e. the top-k eigenvectors of the masked Gram matrix
``diag(m_b) W^T W diag(m_b)``. Two ways to get them:

* ``svd``: exact, the reference: the float64 eigendecomposition of the masked Gram matrix,
  whose eigenvectors are the SVD's right singular vectors.
* ``randomized``: a block Krylov method on the masked Gram matrix. ``W^T W`` is formed once per
  step and shared by the batch; the masks are applied per example as elementwise products, so each
  apply costs one ``(d, d) x (d, B p)`` matmul instead of B SVDs. A Rayleigh-Ritz step on the
  Krylov space gives the top-k vectors and singular values. When the next layer is narrow the
  exact answer comes cheaper from its small Gram matrix.
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


def _row_space_subspace(weight: Tensor, mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Exact top-k right singular subspace when the next layer is narrow (``d2 <= k + few``).

    ``W~_b = W diag(m_b)`` has rank at most d2, so its right singular vectors come from the
    small ``(d2, d2)`` Gram matrix ``W~ W~^T = W diag(m_b^2) W^T`` (float64 eigh):
    ``V = W~^T U S^{-1}``. Directions with a numerically zero singular value get a zero column.
    """
    d2, d1 = weight.shape
    w64, m64 = weight.double(), mask.double()
    left = torch.einsum("ed,bd,fd->bef", w64, m64 * m64, w64)  # (B, d2, d2)
    evals, evecs = torch.linalg.eigh(left)
    kk = min(k, d2)
    evals, evecs = evals[..., -kk:].flip(-1), evecs[..., -kk:].flip(-1)  # descending
    svals = evals.clamp_min(0).sqrt()
    keep = _numerical_keep(svals, d2, d1)
    inv = torch.where(keep, 1.0 / svals.where(keep, torch.ones_like(svals)), 0.0)
    basis = torch.einsum("ed,bd,bek->bdk", w64, m64, evecs * inv.unsqueeze(1))
    return basis.to(weight.dtype), svals.to(weight.dtype)


# Subspace iterations on the unmasked Gram matrix for the start block (costs ~d1^2 p each).
_START_ITERATIONS = 10

# Shift of the Krylov blocks' Gram matrix, relative to its largest diagonal entry.
_KRYLOV_SHIFT = 1e-5


def _orthonormal_columns(v: Tensor) -> Tensor:
    """Orthonormalise the columns of v (B, d, k) in place of their span (float64 Cholesky-QR
    twice). Columns that are numerically zero (fewer active units than k) stay zero."""
    for _ in range(2):
        norms = v.norm(dim=-2, keepdim=True)
        alive = norms > 1e-8 * norms.amax(-1, keepdim=True)
        v = torch.where(alive, v / norms.clamp_min(1e-300), 0.0)
        gram = v.transpose(-1, -2) @ v
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        gram = gram + (~alive).to(gram.dtype).squeeze(-2).diag_embed()  # factor dead columns
        chol, info = torch.linalg.cholesky_ex(gram + 1e-14 * eye)
        if bool((info > 0).any()):
            return torch.linalg.qr(v)[0] * alive
        # v L^-T through the small explicit inverse: a batched triangular solve with a (k, d)
        # right-hand side per example is an order of magnitude slower than this matmul.
        inv = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
        v = v @ inv.transpose(-1, -2)
    return v


def randomized_subspace(
    weight: Tensor,
    mask: Tensor,
    k: int,
    generator: torch.Generator,
    oversample: int = 2,
    iterations: int = 1,
) -> tuple[Tensor, Tensor]:
    """Top-k right singular subspace of every ``W diag(m_b)`` by a block Krylov method.

    Per example, the masked Gram matrix ``A_b = diag(m_b) G diag(m_b)`` (``G = W^T W``, formed
    once and shared by the batch) is applied ``iterations + 1`` times to a random block of
    ``p = k + oversample`` vectors; all the blocks together span the Krylov space
    ``[Z, A Z, ..., A^q Z]``, and a Rayleigh-Ritz step on it gives the top-k vectors. A Krylov
    space of dimension ``p (q + 1)`` captures far more of the top-k subspace than q steps of
    subspace iteration on a block of the same total cost, which matters on the flat spectra of
    freshly initialised layers. Every apply to the whole batch is one ``(d, d) x (d, B p)``
    matmul in the input precision; the small ``(B, P, P)`` Gram and projected matrices are
    formed and solved in float64 (the Krylov blocks are nearly parallel, so their Gram matrix
    is ill-conditioned in float32). Narrow next layers (``d2 <= p``) are solved exactly through
    the ``(d2, d2)`` Gram matrix instead.

    Returns ``basis (B, d1, k)`` (orthonormal columns) and the estimated singular values
    ``(B, k)`` (descending).
    """
    d2, d1 = weight.shape
    b = mask.shape[0]
    p = min(k + oversample, d1)
    if d2 <= p:
        return _row_space_subspace(weight, mask, k)
    if p * (iterations + 1) >= d1:  # the Krylov space would be the whole space: solve exactly
        basis, svals = exact_subspace(weight, mask)
        kk = min(k, basis.shape[-1])
        return basis[..., :kk], svals[..., :kk]
    gram = weight.t() @ weight  # (d1, d1), shared by every example
    mt = mask.t().unsqueeze(-1)  # (d1, B, 1): examples stay on the middle axis, no transposes

    def apply(z: Tensor) -> Tensor:  # A_b z_b for every b: (d1, B, c) -> (d1, B, c)
        c = z.shape[-1]
        return (gram @ (z * mt).reshape(d1, b * c)).reshape(d1, b, c) * mt

    def unit_columns(z: Tensor) -> Tensor:  # the span is unchanged; magnitudes stay bounded
        return z / z.norm(dim=0, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)

    # Start block: the top-p right singular directions of the unmasked W (a few cheap
    # iterations on the shared (d1, d1) Gram matrix), masked per example. Far better than a
    # random start: on initialised layers the Krylov step from it captures about as much of each
    # example's top-k subspace as two more iterations from a random start.
    start = torch.randn(d1, p, generator=generator, device=generator.device, dtype=weight.dtype)
    for _ in range(_START_ITERATIONS):
        start = torch.linalg.qr(gram @ start)[0]
    z = unit_columns(start.unsqueeze(1) * mt)
    blocks, applied = [z], []
    for step in range(iterations + 1):
        y = apply(blocks[-1])
        applied.append(y)  # A times the block just added
        if step < iterations:
            blocks.append(unit_columns(y))
    x = torch.cat(blocks, -1).permute(1, 0, 2)  # (B, d1, P)
    ax = torch.cat(applied, -1).permute(1, 0, 2)  # A_b x_b, (B, d1, P)
    # The (B, P, P) products in the input precision (their float32 rounding, ~sqrt(d1) eps32
    # relative, sits well below the shift below), the small solves in float64.
    xx = (x.transpose(-1, -2) @ x).double()
    xax = (x.transpose(-1, -2) @ ax).double()
    # Rayleigh-Ritz in the metric x^T x + delta: with its Cholesky factor L, the top
    # eigenvectors E of L^-1 x^T A x L^-T give Ritz vectors x L^-T E. Krylov blocks are nearly
    # parallel and A x carries float32 rounding, so the shift delta (relative to the float32
    # noise level) keeps L^-1 from amplifying that rounding into spurious Ritz values; it damps
    # only directions the blocks barely reach, and the k Ritz vectors are re-orthonormalised.
    # (clamped: an example whose units are all inactive has x = 0 and gets a zero basis)
    scale = xx.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-30).view(-1, 1, 1)
    eye = torch.eye(xx.shape[-1], dtype=xx.dtype, device=xx.device)
    chol = torch.linalg.cholesky(xx + _KRYLOV_SHIFT * scale * eye)
    half = torch.linalg.solve_triangular(chol, xax, upper=False)  # L^-1 x^T A x
    small = torch.linalg.solve_triangular(chol, half.transpose(-1, -2), upper=False)
    evals, evecs = torch.linalg.eigh(0.5 * (small + small.transpose(-1, -2)))
    kk = min(k, p, d2)
    top = evecs[..., -kk:].flip(-1)  # (B, P, k)
    coef = torch.linalg.solve_triangular(chol.transpose(-1, -2), top, upper=True)
    basis = _orthonormal_columns((x @ coef.to(x.dtype)).double())
    svals = evals[..., -kk:].flip(-1).clamp_min(0).sqrt()
    return basis.to(weight.dtype), svals.to(weight.dtype)
