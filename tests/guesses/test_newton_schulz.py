"""The shipped Newton-Schulz step polynomials: quality per threshold, matrix form, table lookup.

The fit and its quality figures live in tools/fit_newton_schulz.py (a script outside the
package), so that folder is put on the import path here.
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from forwardgrad.guesses.newton_schulz import (
    BAND_HALF_WIDTH,
    COEFFICIENTS_FILE,
    DEFAULT_ITERATIONS,
    DEGREE,
    coefficients_for,
    load_coefficients,
    matrix_polynomial,
    scalar_polynomial,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))
from fit_newton_schulz import THRESHOLDS, X_MAX, fit_coefficients, measure_quality

# Max |p^N(x) - 1| on [t + 0.05, 1.1] and max |p^N(x)| on [0, t - 0.05], as measured on a grid of
# step 1e-4 for the shipped table, rounded up a little. They are what the fit achieves, not a
# target: small thresholds are intrinsically poor with five iterations (see the module docstring).
TOLERANCES = {  # threshold: (one side, zero side); measured values in the comments
    0.1: (0.78, 0.05),  # 0.7695, 0.0494
    0.2: (0.16, 0.15),  # 0.1586, 0.1436
    0.3: (0.075, 0.07),  # 0.0722, 0.0660
    0.4: (0.011, 0.011),  # 0.0101, 0.0099
    0.5: (2e-4, 2e-4),  # 1.7e-4, 1.6e-4
    0.6: (3e-4, 5e-4),  # 2.4e-4, 4.0e-4
    0.7: (2e-3, 2.5e-3),  # 1.5e-3, 2.2e-3
    0.8: (1e-3, 1e-3),  # 5.8e-4, 9.1e-4
    0.9: (0.01, 0.015),  # 9.5e-3, 1.3e-2
}


def _grid(t: float) -> torch.Tensor:
    x = torch.linspace(0.0, X_MAX, 11001, dtype=torch.float64)
    edges = torch.tensor([t - BAND_HALF_WIDTH, t + BAND_HALF_WIDTH], dtype=torch.float64)
    return torch.cat([x, edges]).sort().values


def _svd_reference(a: torch.Tensor, coeffs, iterations: int) -> torch.Tensor:
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    return u @ torch.diag_embed(scalar_polynomial(s, coeffs, iterations)) @ vh


def _orthogonal(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


def test_table_matches_thresholds_and_metadata():
    table = load_coefficients()
    assert sorted(table) == list(THRESHOLDS) == sorted(TOLERANCES)
    assert all(len(c) == (DEGREE + 1) // 2 for c in table.values())
    data = json.loads(COEFFICIENTS_FILE.read_text())
    assert data["iterations"] == DEFAULT_ITERATIONS
    assert data["degree"] == DEGREE
    assert data["transition_band"]["half_width"] == BAND_HALF_WIDTH
    table[0.5][0] = 123.0  # callers get copies
    assert load_coefficients()[0.5][0] != 123.0


@pytest.mark.parametrize("t", THRESHOLDS)
def test_step_quality_and_boundedness(t):
    coeffs = load_coefficients()[t]
    tol_one, tol_zero = TOLERANCES[t]
    x = _grid(t)
    y = scalar_polynomial(x, coeffs, DEFAULT_ITERATIONS)
    one = x >= t + BAND_HALF_WIDTH - 1e-12
    zero = x <= t - BAND_HALF_WIDTH + 1e-12
    assert (y[one] - 1).abs().max() <= tol_one
    assert y[zero].abs().max() <= tol_zero
    # Bounded everywhere, and for any number of iterations: one step maps [0, 1.1] into
    # [-1.1, 1.1], which (p being odd) makes [-1.1, 1.1] invariant.
    assert y.abs().max() <= X_MAX
    assert scalar_polynomial(x, coeffs, 1).abs().max() <= X_MAX
    assert scalar_polynomial(x, coeffs, 50).abs().max() <= X_MAX
    # Fixed-point structure: p(1) = 1 with |p'(1)| < 1, and 0 attracting (|p'(0)| = |a0| < 1).
    a0, a1, a2, a3 = coeffs
    assert math.isclose(a0 + a1 + a2 + a3, 1.0, abs_tol=1e-12)
    assert abs(a0 + 3 * a1 + 5 * a2 + 7 * a3) < 1
    assert abs(a0) < 1


@pytest.mark.parametrize("t", THRESHOLDS)
def test_recorded_quality_matches_recomputation(t):
    entry = next(
        e for e in json.loads(COEFFICIENTS_FILE.read_text())["entries"] if e["threshold"] == t
    )
    q = measure_quality(entry["coefficients"], t)
    for key in ("max_err_one", "max_err_zero", "max_abs"):
        assert q[key] == pytest.approx(entry["quality"][key], rel=1e-9, abs=1e-12)


def test_scalar_polynomial_is_repeated_composition():
    coeffs = [0.3, 5.2, -7.6, 3.1]
    x = torch.linspace(-1.1, 1.1, 101, dtype=torch.float64)
    y = x
    for _ in range(3):
        y = sum(c * y ** (2 * i + 1) for i, c in enumerate(coeffs))
    torch.testing.assert_close(scalar_polynomial(x, coeffs, 3), y, rtol=1e-12, atol=1e-12)
    assert torch.equal(scalar_polynomial(x, coeffs, 0), x)


@pytest.mark.parametrize("shape", [(3, 5), (7, 4), (6, 6), (2, 3, 6, 4), (4, 5, 9), (2, 1, 1)])
@pytest.mark.parametrize("t", [0.2, 0.5, 0.9])
def test_matrix_polynomial_equals_svd_form(shape, t):
    g = torch.Generator().manual_seed(hash((shape, t)) % 2**31)
    a = torch.randn(*shape, generator=g, dtype=torch.float64)
    # Spectral norm 1.05: includes singular values above 1 (an underestimated norm).
    a = a / torch.linalg.matrix_norm(a, ord=2)[..., None, None] * 1.05
    coeffs = load_coefficients()[t]
    got = matrix_polynomial(a, coeffs, DEFAULT_ITERATIONS)
    assert got.shape == a.shape and got.dtype == torch.float64
    torch.testing.assert_close(
        got, _svd_reference(a, coeffs, DEFAULT_ITERATIONS), rtol=0, atol=1e-10
    )


def test_matrix_polynomial_float32_and_errors():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    a = a / torch.linalg.matrix_norm(a, ord=2)[..., None, None]
    coeffs = load_coefficients()[0.5]
    ref = matrix_polynomial(a, coeffs)
    got = matrix_polynomial(a.float(), coeffs)
    assert got.dtype == torch.float32
    # The map expands near the threshold, so float32 round-off grows; still small here.
    assert (got.double() - ref).abs().max() < 1e-3
    with pytest.raises(ValueError):
        matrix_polynomial(torch.ones(4), coeffs)
    with pytest.raises(ValueError):
        matrix_polynomial(a, coeffs[:3])


@pytest.mark.parametrize(
    ("sigma", "expected"),
    [
        (0.3, 0.3),
        (0.34, 0.3),
        (0.36, 0.4),
        (0.66, 0.7),
        (0.9, 0.9),
        (0.12, 0.1),
        (0.05, 0.1),
        (0.0, 0.1),
        (-2.0, 0.1),
        (0.95, 0.9),
        (1.0, 0.9),
        (7.0, 0.9),
    ],
)
def test_coefficients_for_nearest_and_clamped(sigma, expected):
    t, coeffs = coefficients_for(sigma)
    assert t == expected
    assert coeffs == load_coefficients()[expected]


@pytest.mark.parametrize("t", THRESHOLDS)
@pytest.mark.parametrize("transpose", [False, True])
def test_known_spectrum_gives_projection_onto_top_singular_vectors(t, transpose):
    g = torch.Generator().manual_seed(int(t * 10))
    m, n = 7, 11
    # Singular values outside the band: some in [t + band, 1.1], the rest in [0, t - band].
    hi = torch.linspace(t + BAND_HALF_WIDTH, X_MAX, 4, dtype=torch.float64)
    lo = torch.linspace(0.0, max(t - BAND_HALF_WIDTH, 0.0), 3, dtype=torch.float64)
    s = torch.cat([hi, lo])
    u, v = _orthogonal(m, m, g), _orthogonal(n, m, g)
    a = u @ torch.diag(s) @ v.T
    target = u[:, :4] @ v[:, :4].T  # U_k V_k^T
    if transpose:
        a, target = a.T, target.T
    got = matrix_polynomial(a, coefficients_for(t)[1], DEFAULT_ITERATIONS)
    # p^N(A) - U_k V_k^T = U (p^N(S) - step(S)) V^T, so its spectral norm is the worst
    # singular-value error, bounded by the per-threshold tolerances.
    err = torch.linalg.matrix_norm(got - target, ord=2)
    assert err <= max(TOLERANCES[t]) + 1e-12


@pytest.mark.slow
def test_fit_reproduces_shipped_entry():
    """A full default fit of one threshold (a few seconds) reproduces the shipped coefficients."""
    coeffs = fit_coefficients(0.5)
    assert coeffs == pytest.approx(load_coefficients()[0.5], rel=1e-6, abs=1e-8)
    q = measure_quality(coeffs, 0.5)
    assert max(q["max_err_one"], q["max_err_zero"]) <= max(TOLERANCES[0.5])
