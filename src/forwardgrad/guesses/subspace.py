"""Per-example right singular subspaces of the upstream Jacobian ``W~_b = W_{i+1} diag(m_b)``.

(For conv and token-wise next layers, where ``W~_b`` is a linear operator and not a dense
matrix, :func:`operator_subspace` works from its Gram apply alone, and
:func:`exact_jacobian_subspace` is the dense reference for small layers.)

W~⊥ needs only the span of the top-k right singular vectors of W~_b (``V_k U_k^T eps`` and
``V_k z`` have the same distribution), i.e. the top-k eigenvectors of the masked Gram matrix
``diag(m_b) W^T W diag(m_b)``. Two ways to get them:

* ``svd``: exact, the reference: the float64 eigendecomposition of the masked Gram matrix,
  whose eigenvectors are the SVD's right singular vectors.
* ``randomized``: a randomized Nystrom approximation of the masked Gram matrix. ``W^T W`` is
  formed once per step and shared by the batch; the masks are applied per example as
  elementwise products, so the one apply costs a single ``(B p, d) x (d, d)`` matmul instead of
  B SVDs. When the next layer is narrow the exact answer comes cheaper from its small Gram
  matrix.
"""

from __future__ import annotations

from collections.abc import Callable

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


def _selected_first(units: Tensor, count: int) -> Tensor:
    """Indices ``(B, count)`` of each example's selected units (``units`` (B, d) bool) first,
    then the others, each in their original order."""
    return torch.argsort((~units).to(torch.uint8), dim=-1, stable=True)[:, :count]


def active_units(mask: Tensor) -> Tensor:
    """Indices ``(B, a)`` of each example's active units (``m_b != 0``) first, padded with
    inactive ones to the batch's largest active count ``a``."""
    active = mask != 0
    return _selected_first(active, max(int(active.sum(-1).max()), 1))


def compact_masked_jacobian(weight: Tensor, mask: Tensor, idx: Tensor) -> Tensor:
    """``W diag(m_b)`` restricted to the columns ``idx`` (B, a) of :func:`active_units`:
    (B, d2, a). The dropped columns are zero, so any product of the form ``A q(A^T A)`` of the
    full matrix is this one's, scattered back to ``idx`` (zeros elsewhere)."""
    cols = weight[:, idx].permute(1, 0, 2)  # (B, d2, a)
    return cols * mask.gather(1, idx).unsqueeze(1)


def _active_subspace(weight: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Like :func:`exact_subspace`, from the eigendecomposition of each masked Gram matrix
    restricted to the example's active units (``m_b != 0``), padded to the batch's largest
    active count a. Inactive units add only zero rows and columns, so this is exact, and costs
    ``(a / d1)^3`` of the full problem (about 1/8 with ReLU's half-active units). Returns
    ``basis (B, d1, a)``, ``svals (B, a)``, descending; the directions past an example's own
    active count have zero singular values and lie on inactive units.
    """
    d1 = weight.shape[1]
    b = mask.shape[0]
    idx = active_units(mask)
    a = idx.shape[1]
    w64 = weight.double()
    gram = w64.t() @ w64
    mv = mask.double().gather(1, idx)  # 0 on the padding (inactive units)
    sub = gram[idx.unsqueeze(-1), idx.unsqueeze(-2)] * mv.unsqueeze(-1) * mv.unsqueeze(-2)
    evals, evecs = torch.linalg.eigh(sub)
    evals, evecs = evals.flip(-1), evecs.flip(-1)
    basis = torch.zeros(b, d1, a, dtype=evecs.dtype, device=evecs.device)
    basis.scatter_(1, idx.unsqueeze(-1).expand(b, a, a), evecs)
    return basis.to(weight.dtype), evals.clamp_min(0).sqrt().to(weight.dtype)


def _rows_span_active_units(weight: Tensor, mask: Tensor) -> bool:
    """True when every ``W diag(m_b)`` has exactly the active units' coordinates as its row
    space above the rank tolerance: 0/1 masks and a W of full column rank, well conditioned
    (dropping columns never lowers the smallest singular value below W's own)."""
    d2, d1 = weight.shape
    if d2 < d1 or not bool(((mask == 0) | (mask == 1)).all()):
        return False
    svals = torch.linalg.svdvals(weight.double())
    return bool(svals[-1] > 10 * max(d1, d2) * torch.finfo(torch.float32).eps * svals[0])


def _unit_basis(units: Tensor, r: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Unit vectors on each example's first r selected units (``units`` (B, d1) bool): basis
    ``(B, d1, r)`` and keep weights ``(B, r)``, 1 for as many columns as the example has
    selected units and 0 (a zero column) after."""
    b, d1 = units.shape
    idx = _selected_first(units, r)
    basis = torch.zeros(b, d1, r, dtype=dtype, device=units.device)
    basis.scatter_(1, idx.unsqueeze(1), 1.0)
    keep = torch.arange(r, device=units.device) < units.sum(-1, keepdim=True)
    return basis * keep.unsqueeze(1), keep.to(dtype)


def svd_subspace(
    weight: Tensor, mask: Tensor, k: int | None, bottom: bool = False, ordered: bool = True
) -> tuple[Tensor, Tensor]:
    """Exact top-k (or bottom-k) right singular subspace of every ``W diag(m_b)``.

    Returns ``basis (B, d1, kk)`` (orthonormal columns) and ``weights (B, kk)``: 1 for directions
    kept, 0 for directions dropped as numerically zero (only when ``k`` is None: full rank).
    Columns come in descending order of singular value. With ``ordered=False`` and ``k`` None
    the caller takes any orthonormal basis of the kept span (W̃⊥ at full rank draws
    ``V_r z``, whose law does not depend on the basis).

    The same answer comes cheaper where the structure allows: from the small ``(d2, d2)``
    problem when the next layer is narrow, from the eigenproblems restricted to each example's
    active units when those are clearly fewer than d1, and with no eigendecomposition where the
    answer is known: (unordered, full rank) when the row space is exactly the active units
    (square, well-conditioned W); bottom-k when the k smallest singular values are all zero.
    """
    d2, d1 = weight.shape
    r = min(d2, d1)
    if k is None and not ordered and not bottom and _rows_span_active_units(weight, mask):
        # The full numerical row space is exactly the active units: no eigendecomposition.
        return _unit_basis(mask != 0, r, weight.dtype)
    most_active = int((mask != 0).sum(-1).max())
    if bottom and k is not None and most_active <= r - min(k, r):
        # rank(W diag(m_b)) <= active units <= r - k: the k smallest singular values are all
        # zero, so any k orthonormal null directions are the bottom-k subspace of a reduced
        # SVD. Inactive units' unit vectors are such (their columns are zero), with no
        # eigendecomposition.
        basis, _ = _unit_basis(mask == 0, min(k, r), weight.dtype)
        return basis, torch.ones(basis.shape[::2], dtype=weight.dtype, device=weight.device)
    if not bottom and d2 <= 0.8 * most_active and (k is None or k <= d2):
        # A narrow next layer: every nonzero direction comes from the small (d2, d2) problem.
        # (An explicit k must be k orthonormal columns: if some example has fewer nonzero
        # directions, the other paths below complete its basis with null directions.)
        basis, svals = _row_space_subspace(weight, mask, d2 if k is None else k)
        keep = _numerical_keep(svals, d2, d1)
        if k is None:
            return basis, keep.to(weight.dtype)
        if bool(keep.all()):
            return basis, torch.ones_like(svals)
    compact = not bottom and most_active <= 0.8 * d1 and (k is None or k <= most_active)
    if compact:
        basis, svals = _active_subspace(weight, mask)
        if basis.shape[-1] < r:  # pad to r columns: dropped (zero-weight) directions
            pad = r - basis.shape[-1]
            basis = torch.nn.functional.pad(basis, (0, pad))
            svals = torch.nn.functional.pad(svals, (0, pad))
        basis, svals = basis[..., :r], svals[..., :r]
    else:
        basis, svals = exact_subspace(weight, mask)
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
    Both batch-wide products are single matmuls over the flattened batch.
    """
    d2, d1 = weight.shape
    b = mask.shape[0]
    w64, m64 = weight.double(), mask.double()
    # W diag(m^2) W^T for every example: (B, d1) x (d1, d2 d2) over the outer products W_e W_f
    outer = (w64.unsqueeze(1) * w64.unsqueeze(0)).reshape(d2 * d2, d1)
    left = ((m64 * m64) @ outer.t()).view(b, d2, d2)
    evals, evecs = torch.linalg.eigh(left)
    kk = min(k, d2)
    evals, evecs = evals[..., -kk:].flip(-1), evecs[..., -kk:].flip(-1)  # descending
    svals = evals.clamp_min(0).sqrt()
    keep = _numerical_keep(svals, d2, d1)
    inv = torch.where(keep, 1.0 / svals.where(keep, torch.ones_like(svals)), 0.0)
    coef = (evecs * inv.unsqueeze(1)).to(weight.dtype)  # U S^-1, (B, d2, kk)
    # W^T U_b S_b^-1 for every example as one (d1, d2) x (d2, B kk) matmul, then the masks
    basis = (weight.t() @ coef.transpose(0, 1).reshape(d2, b * kk)).view(d1, b, kk)
    basis = basis.permute(1, 0, 2) * mask.unsqueeze(-1)
    return basis, svals.to(weight.dtype)


# Subspace iterations on the unmasked Gram matrix for the start block (costs ~d1^2 p each).
_START_ITERATIONS = 10

# Shift of the Nystrom core matrix Z^T A Z, relative to its largest diagonal entry: it keeps
# L^-1 from amplifying the float32 rounding of nearly dependent masked start vectors.
_NYSTROM_SHIFT = 1e-5


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
        v = v @ _lower_inverse(chol).transpose(-1, -2)
    return v


def _lower_inverse(chol: Tensor) -> Tensor:
    """``L^-1`` of a batch of small lower-triangular factors. Multiplying a tall block by this
    explicit inverse is an order of magnitude faster on the CPU than a batched triangular solve
    with a (k, d) right-hand side per example."""
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype, device=chol.device)
    return torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)


def _orthonormal_rows(v: Tensor) -> Tensor:
    """Orthonormalise the rows of v (B, k, d) in the input precision by Cholesky-QR (the small
    (B, k, k) Gram matrices factored in float64), repeated once when the rows start far from
    orthonormal. When some example's rows are numerically dependent, the float64 path that
    zeroes dead rows takes over."""
    for attempt in range(2):
        gram = (v @ v.transpose(-1, -2)).double()
        chol, info = torch.linalg.cholesky_ex(gram)
        if bool((info > 0).any()):
            cols = _orthonormal_columns(v.transpose(-1, -2).double())
            return cols.transpose(-1, -2).to(v.dtype)
        v = _lower_inverse(chol).to(v.dtype) @ v
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        # Cholesky-QR leaves an orthogonality error of about cond(v)^2 eps; rows that were
        # already nearly orthonormal (cond ~ 1) need no second pass.
        if attempt == 0 and float((gram - eye).abs().amax()) < 1e-2:
            break
    return v


def _masked_gram_apply(
    gram: Tensor, mask: Tensor, p: int, gram_dtype: torch.dtype | None
) -> Callable[[Tensor], Tensor]:
    """``z -> A_b z_b`` for every example b, blocks of p vectors as rows (B, p, d1), with
    ``A_b = diag(m_b) G diag(m_b)``: one ``(B p, d1) x (d1, d1)`` matmul, in ``gram_dtype``
    when that differs from the input precision."""
    b, d1 = mask.shape
    dtype = gram.dtype
    m = mask.unsqueeze(1)  # (B, 1, d1)
    low = gram_dtype is not None and gram_dtype != dtype
    gram_low = gram.to(gram_dtype) if low else gram
    # Every block applied is already masked (start * m, or rows of A z); a 0/1 mask (ReLU) is
    # idempotent, so those need no second mask.
    binary = bool(((mask == 0) | (mask == 1)).all())

    def apply(z: Tensor) -> Tensor:
        zm = z if binary else z * m
        if low:
            y = (zm.view(b * p, d1).to(gram_dtype) @ gram_low).to(dtype)
        else:
            y = zm.view(b * p, d1) @ gram
        return y.view(b, p, d1).mul_(m)

    return apply


def _start_block(gram: Tensor, p: int, generator: torch.Generator) -> Tensor:
    """Orthonormal columns (d1, p) near the top-p eigenvectors of the shared Gram matrix, from a
    random block and a few subspace iterations."""
    start = torch.randn(
        gram.shape[0], p, generator=generator, device=generator.device, dtype=gram.dtype
    )
    for _ in range(_START_ITERATIONS):
        start = torch.linalg.qr(gram @ start)[0]
    return start


def _nystrom_top(z: Tensor, y: Tensor, kk: int) -> tuple[Tensor, Tensor]:
    """Top-kk eigenvectors as rows (B, kk, d1) and their eigenvalues' square roots (B, kk) of
    the Nystrom approximation from blocks ``z`` and ``y = A z`` (B, p, d1)."""
    # Nystrom: with C = Z^T A Z = L L^T (shifted: Z's masked rows can be nearly dependent),
    # A ~ F F^T for F = Y L^-T, whose top left singular vectors are F E S^-1, E and S^2 the top
    # eigenpairs of F^T F = L^-1 Y^T Y L^-T. So the basis is Y (L^-T E S^-1): one tall product.
    p = z.shape[1]
    c = (z @ y.transpose(-1, -2)).double()
    c = 0.5 * (c + c.transpose(-1, -2))
    scale = c.diagonal(dim1=-2, dim2=-1).amax(-1).clamp_min(1e-30).view(-1, 1, 1)
    eye = torch.eye(p, dtype=c.dtype, device=c.device)
    inv = _lower_inverse(torch.linalg.cholesky(c + _NYSTROM_SHIFT * scale * eye))
    ftf = inv @ (y @ y.transpose(-1, -2)).double() @ inv.transpose(-1, -2)
    evals, evecs = torch.linalg.eigh(0.5 * (ftf + ftf.transpose(-1, -2)))
    evals, evecs = evals[..., -kk:].flip(-1).clamp_min(0), evecs[..., -kk:].flip(-1)
    # (examples with fewer than kk active units have zero eigenvalues: their rows come out 0)
    inv_s = torch.where(evals > 0, evals.clamp_min(1e-300).rsqrt(), 0.0)
    coef = (evecs * inv_s.unsqueeze(-2)).transpose(-1, -2) @ inv  # (B, kk, p)
    rows = _orthonormal_rows(coef.to(y.dtype) @ y)
    return rows, evals.sqrt().to(y.dtype)


def randomized_subspace(
    weight: Tensor,
    mask: Tensor,
    k: int,
    generator: torch.Generator,
    oversample: int = 6,
    iterations: int = 0,
    gram_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Top-k right singular subspace of every ``W diag(m_b)`` by a randomized Nystrom method.

    Per example, the masked Gram matrix ``A_b = diag(m_b) G diag(m_b)`` (``G = W^T W``, formed
    once and shared by the batch) is applied to a block ``Z_b`` of ``p = k + oversample``
    vectors, and the top-k eigenvectors of the Nystrom approximation
    ``A_b Z_b (Z_b^T A_b Z_b)^-1 Z_b^T A_b`` are returned. The start block is the top-p right
    singular directions of the unmasked W (a few cheap iterations on the shared ``(d1, d1)``
    Gram matrix), masked per example, which is far better than a random one; ``iterations``
    subspace iterations may refine it first (each one more apply). From the same single apply,
    Nystrom captures as much of each example's top-k energy as a two-block Krylov space of
    the same width that costs two applies, and with one extra block width it captures more.

    Every apply to the whole batch is one ``(B p, d1) x (d1, d1)`` matmul in the input
    precision, vectors kept as rows so no large block is transposed or copied; the small
    ``(B, p, p)`` problems are solved in float64. ``gram_dtype=torch.bfloat16`` makes the
    applies ~3x faster where the hardware has bf16 matmuls (and far slower where it has not);
    their ~0.4% rounding changes the captured top-k energy by less than 0.001 on 512-wide
    layers (see the tests). Narrow next layers (``d2 <= p``) are solved
    exactly through the ``(d2, d2)`` Gram matrix instead.

    Returns ``basis (B, d1, k)`` (orthonormal columns) and the estimated singular values
    ``(B, k)`` (descending; Nystrom's never exceed the exact ones).
    """
    d2, d1 = weight.shape
    p = min(k + oversample, d1)
    if d2 <= p:
        return _row_space_subspace(weight, mask, k)
    if p >= d1:  # the block would span the whole space: solve exactly
        basis, svals = exact_subspace(weight, mask)
        kk = min(k, basis.shape[-1])
        return basis[..., :kk], svals[..., :kk]
    gram = weight.t() @ weight  # (d1, d1), symmetric, shared by every example
    apply = _masked_gram_apply(gram, mask, p, gram_dtype)
    z = _start_block(gram, p, generator).t().unsqueeze(0) * mask.unsqueeze(1)  # (B, p, d1)
    for _ in range(iterations):
        z = _orthonormal_rows(apply(z))
    rows, svals = _nystrom_top(z, apply(z), min(k, p, d2))
    return rows.transpose(-1, -2), svals


def exact_jacobian_subspace(jac: Tensor) -> tuple[Tensor, Tensor]:
    """All right singular vectors and values of every dense ``W~_b`` (B, m, n), descending:
    the float64 eigendecomposition of ``W~_b^T W~_b``. Returns ``basis (B, n, r)`` and
    ``svals (B, r)``, ``r = min(m, n)``."""
    m, n = jac.shape[-2:]
    j64 = jac.double()
    evals, evecs = torch.linalg.eigh(j64.transpose(-1, -2) @ j64)
    r = min(m, n)
    basis = evecs[..., -r:].flip(-1).to(jac.dtype)
    return basis, evals[..., -r:].flip(-1).clamp_min(0).sqrt().to(jac.dtype)


def jacobian_subspace(
    jac: Tensor, k: int | None, bottom: bool = False
) -> tuple[Tensor, Tensor]:
    """Exact top-k (or bottom-k) right singular subspace of every dense ``W~_b`` (B, m, n),
    as :func:`svd_subspace` returns it: ``basis (B, n, kk)`` and weights ``(B, kk)`` (with
    ``k`` None, every direction of the reduced SVD, weighted 1 above the float32 rank
    tolerance and 0 below)."""
    m, n = jac.shape[-2:]
    basis, svals = exact_jacobian_subspace(jac)
    if k is None:
        return basis, _numerical_keep(svals, m, n).to(jac.dtype)
    r = basis.shape[-1]
    kk = min(k, r)
    sel = basis[..., r - kk :] if bottom else basis[..., :kk]
    return sel, torch.ones(sel.shape[0], kk, dtype=jac.dtype, device=jac.device)


# Subspace iterations from the Gaussian start block of the matrix-free solver: without the
# dense solver's shared Gram matrix there is no cheap start near the top directions, so the
# block is first pulled towards them by applies of each example's own operator.
OPERATOR_START_ITERATIONS = 2


def operator_subspace(
    gram_rows: Callable[[Tensor], Tensor],
    size: tuple[int, int],
    k: int,
    generator: torch.Generator,
    dtype: torch.dtype,
    oversample: int = 6,
    iterations: int = 0,
) -> tuple[Tensor, Tensor]:
    """Top-k right singular subspace of every ``W~_b`` known only as an operator (matrix-free).

    ``gram_rows(z)`` applies ``A_b = W~_b^T W~_b`` to blocks of vectors as rows ``(B, p, n)``;
    ``size`` is ``(B, n)``. A Gaussian block of ``p = k + oversample`` vectors (one, shared
    by the batch) takes :data:`OPERATOR_START_ITERATIONS` + ``iterations`` subspace
    iterations (one apply and an orthonormalisation each), then one more apply gives the
    Nystrom approximation whose top k are returned, as in :func:`randomized_subspace`.
    Returns ``basis (B, n, k)`` and the estimated singular values ``(B, k)`` (descending).
    """
    b, n = size
    p = min(k + oversample, n)
    # One Gaussian block shared by the batch (the first apply makes it each example's own):
    # drawing B blocks of activation-sized normals would cost more than an apply.
    z = torch.randn(1, p, n, generator=generator, device=generator.device, dtype=dtype)
    z = _orthonormal_rows(z).expand(b, -1, -1)
    for _ in range(OPERATOR_START_ITERATIONS + iterations):
        z = _orthonormal_rows(gram_rows(z))
    rows, svals = _nystrom_top(z, gram_rows(z), min(k, p))
    return rows.transpose(-1, -2), svals
