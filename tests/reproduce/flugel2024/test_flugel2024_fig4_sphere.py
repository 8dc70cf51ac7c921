"""The exact sphere theory of ``tangents-functions`` (reproduce/flugel2024/fig4_sphere.py)."""

import math

import numpy as np
import pytest

from forwardgrad.closedform import sweep
from forwardgrad.reproduce.flugel2024 import fig4_sphere as sphere


@pytest.mark.parametrize("n", [1, 7, 64, 1024])
@pytest.mark.parametrize("k", [1, 4, 16])
def test_sphere_contraction_closed_forms(n, k):
    # Mean: E c = 1 - 4η + 4η²(n+k+1)/k is smallest at η* = k/(2(n+k+1)), where it is
    # 1 - k/(n+k+1).
    best = sphere.sphere_optimal_lr("mean", k, n)
    assert best == pytest.approx(k / (2 * (n + k + 1)))
    at_best = sphere.sphere_contraction("mean", k, n, best)
    assert at_best == pytest.approx(1 - k / (n + k + 1))
    for factor in (0.9, 1.1):
        assert sphere.sphere_contraction("mean", k, n, factor * best) > at_best
    # Projection: η* = 1/2 for every n and k, E c = 1 - k/n; the exact gradient for k >= n.
    assert sphere.sphere_optimal_lr("projection", k, n) == 0.5
    assert sphere.sphere_contraction("projection", k, n, 0.5) == pytest.approx(max(0.0, 1 - k / n))
    assert sphere.sphere_contraction("projection", k, n, 0.45) > sphere.sphere_contraction(
        "projection", k, n, 0.5
    )
    assert sphere.sphere_contraction("backprop", None, n, 0.3) == pytest.approx(0.16)
    assert sphere.sphere_expected_value("mean", k, n, best, 10) == pytest.approx(n * at_best**10)


@pytest.mark.parametrize(
    ("method", "k", "n", "lr"),
    [("mean", 1, 1, 0.2), ("mean", 3, 10, 0.05), ("mean", 16, 64, 0.09), ("projection", 2, 9, 0.3)],
)
def test_contraction_draws_reduce_to_the_closed_form(method, k, n, lr):
    """The scalar reduction of c (Beta / chi-square variables) has the closed-form mean."""
    draws = sphere.sphere_contraction_draws(method, k, n, lr, 400_000, np.random.default_rng(1))
    se = draws.std() / math.sqrt(draws.size)
    assert abs(draws.mean() - sphere.sphere_contraction(method, k, n, lr)) < 5 * se
    # Jensen: E[log c] < log E[c].
    mean_log, mc_se = sphere.sphere_log_contraction(method, k, n, lr)
    assert mean_log < math.log(sphere.sphere_contraction(method, k, n, lr))
    assert 0 < mc_se < 1e-2


def test_exact_steps_have_an_exact_log_contraction():
    exact = (pytest.approx(math.log(0.64)), 0.0)
    assert sphere.sphere_log_contraction("backprop", None, 5, 0.1) == exact
    # k >= n: the projection is the exact gradient.
    assert sphere.sphere_log_contraction("projection", 8, 8, 0.1) == exact
    assert sphere.sphere_log_contraction("backprop", None, 5, 0.5)[0] == -math.inf
    with pytest.raises(ValueError, match="exact gradient"):
        sphere.sphere_contraction_draws("projection", 8, 8, 0.1, 10, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("method", "k", "lr"), [("mean", 1, 0.04), ("mean", 4, 0.1), ("projection", 3, 0.4)]
)
def test_expected_log_value_matches_gradient_descent(method, k, lr):
    """Seed means of log10 f_T from the real optimiser against log10 n + T E[log10 c]."""
    n, steps, seeds = 12, 25, 150
    result = sweep(
        "sphere",
        dims=[n],
        tangents=[k],
        methods=[method],
        lrs=[lr],
        seeds=list(range(seeds)),
        steps=steps,
        patience=None,
    )
    log_final = np.log10(result.cells[0].grid[0].final_values)
    se = log_final.std(ddof=1) / math.sqrt(seeds)
    expected = sphere.sphere_expected_log10(method, k, n, lr, steps)
    assert abs(log_final.mean() - expected) < 4 * se + 0.01
