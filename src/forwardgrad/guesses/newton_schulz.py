"""Newton-Schulz-style odd matrix polynomials that turn a spectrum into a step function.

The W-perp-NS gradient guess (Wang, Markou & Campbell 2025, "Towards Scalable
Backpropagation-Free Gradient Estimation", section 3.2) needs, for a matrix ``A`` normalised to
spectral norm 1, the projection ``U_k V_k^T`` onto the singular directions whose singular value
exceeds a threshold ``sigma_k``. It gets there with an odd polynomial

    p(A) = a0 A + a1 A (A^T A) + a2 A (A^T A)^2 + a3 A (A^T A)^3,

applied ``N`` times. For ``A = U S V^T`` we have ``p(A) = U p(S) V^T`` with ``p`` acting on each
singular value as ``p(x) = a0 x + a1 x^3 + a2 x^5 + a3 x^7``, so the coefficients are chosen such
that ``p^N`` sends ``[0, sigma_k)`` to 0 and ``(sigma_k, 1.1]`` to 1 (values slightly above 1
appear because spectral norms come from a few power iterations and may be underestimated).

The paper fits the coefficients by gradient descent for ``sigma_k`` in ``{0.1, ..., 0.9}`` with
``N = 5`` but does not publish them. This module applies the iteration and reads our own fitted
table, ``ns_coefficients.json``; the fit itself (and why small thresholds fit poorly) is in
``tools/fit_newton_schulz.py`` at the repository root, which writes that table. Each entry
switches within ``BAND_HALF_WIDTH`` of its threshold (absolute, in units of the spectral norm):
a composition of five degree-7 polynomials cannot be an exact step.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor

DEFAULT_ITERATIONS = 5
DEGREE = 7
N_COEFFS = (DEGREE + 1) // 2

BAND_HALF_WIDTH = 0.05
"""Half-width of the transition band ``(sigma_k - w, sigma_k + w)`` of every table entry."""

COEFFICIENTS_FILE = Path(__file__).with_name("ns_coefficients.json")


def _coeff_tensor(coeffs: Sequence[float] | Tensor, like: Tensor) -> Tensor:
    c = torch.as_tensor(coeffs, dtype=like.dtype, device=like.device)
    if c.shape != (N_COEFFS,):
        raise ValueError(f"expected {N_COEFFS} coefficients (a0..a3), got shape {tuple(c.shape)}")
    return c


def scalar_polynomial(
    x: Tensor, coeffs: Sequence[float] | Tensor, iterations: int = DEFAULT_ITERATIONS
) -> Tensor:
    """Apply ``p^N`` elementwise, ``p(x) = a0 x + a1 x^3 + a2 x^5 + a3 x^7``.

    ``coeffs`` may be a tensor that requires grad; the result is then differentiable in it.
    """
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    a0, a1, a2, a3 = _coeff_tensor(coeffs, x).unbind()
    y = x
    for _ in range(iterations):
        y2 = y * y
        y = y * (a0 + y2 * (a1 + y2 * (a2 + y2 * a3)))  # Horner in x^2
    return y


def matrix_polynomial(
    a: Tensor, coeffs: Sequence[float] | Tensor, iterations: int = DEFAULT_ITERATIONS
) -> Tensor:
    """Apply ``p^N`` to each matrix of a batch ``(..., m, n)``: ``U p^N(S) V^T`` for ``U S V^T``.

    Each iteration forms the Gram matrix on the smaller side (``Y Y^T`` if ``m <= n``, else
    ``Y^T Y``, size ``r = min(m, n)``), evaluates ``a0 I + a1 G + a2 G^2 + a3 G^3`` by Horner in
    ``G`` (two ``r x r`` products) and multiplies it onto ``Y`` once, so no product involves the
    larger dimension more than once on each side.
    """
    if a.ndim < 2:
        raise ValueError(f"expected a batch of matrices (..., m, n), got shape {tuple(a.shape)}")
    if not a.is_floating_point():
        raise TypeError(f"expected a floating-point tensor, got {a.dtype}")
    a0, a1, a2, a3 = _coeff_tensor(coeffs, a).unbind()
    m, n = a.shape[-2:]
    left = m <= n
    eye = torch.eye(min(m, n), dtype=a.dtype, device=a.device)
    y = a
    for _ in range(iterations):
        g = y @ y.mT if left else y.mT @ y
        h = a3 * g + a2 * eye
        h = g @ h + a1 * eye
        h = g @ h + a0 * eye
        # h is a polynomial in Y Y^T (resp. Y^T Y): h Y == Y h' with the other Gram matrix.
        y = h @ y if left else y @ h
    return y


# ----------------------------------------------------------------------------------------------
# Shipped table


@lru_cache(maxsize=1)
def _read_table(path: str) -> tuple[tuple[float, tuple[float, ...]], ...]:
    data = json.loads(Path(path).read_text())
    return tuple(
        (float(e["threshold"]), tuple(float(v) for v in e["coefficients"])) for e in data["entries"]
    )


def load_coefficients() -> dict[float, list[float]]:
    """The shipped table ``{threshold: [a0, a1, a2, a3]}`` (fresh lists, safe to modify)."""
    return {t: list(c) for t, c in _read_table(str(COEFFICIENTS_FILE))}


def coefficients_for(sigma_k: float) -> tuple[float, list[float]]:
    """The table entry whose threshold is nearest to ``sigma_k``: ``(threshold, coeffs)``.

    ``sigma_k`` outside the table's range gets the nearest end (0.1 or 0.9). Ties go to the
    smaller threshold.
    """
    table = load_coefficients()
    best = min(table, key=lambda t: (abs(t - sigma_k), t))
    return best, table[best]


def coefficients_keeping(sigma_ratio: float) -> tuple[float, list[float]]:
    """The entry whose step keeps every singular value >= ``sigma_ratio``: ``(threshold, coeffs)``.

    Each polynomial switches within ``+-BAND_HALF_WIDTH`` of its threshold, so this takes the
    largest threshold whose band lies entirely below ``sigma_ratio`` (the smallest threshold if
    none does). :func:`coefficients_for`'s nearest entry could drop or half-keep a singular
    value at ``sigma_ratio`` itself.
    """
    table = load_coefficients()
    below = [t for t in table if t + BAND_HALF_WIDTH <= sigma_ratio]
    best = max(below) if below else min(table)
    return best, table[best]
