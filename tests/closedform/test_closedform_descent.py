"""Gradient descent on the closed-form functions with forward gradients (multi-tangent Fig. 4)."""

import json
import math
import warnings

import pytest

from forwardgrad.closedform.descent import optimize


def test_backprop_descent_on_sphere_contracts_at_the_known_rate():
    # x <- x - lr * 2x = (1 - 2 lr) x, so f_t = (1 - 2 lr)^(2t) f_0.
    n, lr, steps = 6, 0.1, 40
    result = optimize("sphere", n, "backprop", 1, lr, steps, patience=None)
    expected = [n * (1 - 2 * lr) ** (2 * t) for t in range(steps + 1)]
    assert result.steps_run == steps and result.stop_reason == "steps"
    assert result.values == pytest.approx(expected, rel=1e-12)
    assert result.final_point == pytest.approx([-((1 - 2 * lr) ** steps)] * n, rel=1e-12)
    assert result.tangents is None


def test_forward_gradient_descent_is_reproducible_and_reaches_the_minimum():
    a = optimize("sphere", 8, "projection", 4, 0.3, 300, seed=7)
    b = optimize("sphere", 8, "projection", 4, 0.3, 300, seed=7)
    c = optimize("sphere", 8, "projection", 4, 0.3, 300, seed=8)
    assert a.values == b.values and a.values != c.values
    assert a.final_value < 1e-20 and a.best_value == min(a.values)


def test_projection_with_more_tangents_than_dimensions_follows_backprop():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the expected rank warning must not leak out
        fg = optimize("rosenbrock", 2, "projection", 4, 1e-3, 200, patience=None)
    bp = optimize("rosenbrock", 2, "backprop", 1, 1e-3, 200, patience=None)
    assert fg.values == pytest.approx(bp.values, rel=1e-9)


def test_rosenbrock_in_one_dimension_is_flat():
    result = optimize("rosenbrock", 1, "mean", 2, 0.1, 100, patience=5)
    assert result.final_value == 0.0 and result.final_point == [-1.0]
    assert result.stop_reason == "no improvement" and result.steps_run == 5


def test_early_stopping_after_patience_steps_without_a_new_best():
    # lr = 1 on the sphere flips x to -x: f never improves on its start value.
    result = optimize("sphere", 3, "backprop", 1, 1.0, 1000, patience=10)
    assert result.stop_reason == "no improvement"
    assert result.steps_run == 10 and result.best_step == 0 and len(result.values) == 11


def test_divergence_is_recorded_not_raised():
    result = optimize("styblinski-tang", 8, "mean", 1, 5.0, 1000)
    assert result.diverged and not math.isfinite(result.final_value)
    assert result.steps_run < 1000 and math.isfinite(result.best_value)
    d = result.to_dict()
    assert d["result"]["final_value"] is None and d["result"]["diverged"] is True
    json.dumps(d, allow_nan=False)  # valid JSON: non-finite numbers are null


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(function="nope"), "unknown function 'nope'"),
        (dict(method="adam"), r"unknown method 'adam'.*backprop.*projection"),
        (dict(k=0), "number of tangents must be an integer >= 1; got 0"),
        (dict(n=0), "dimension must be an integer >= 1; got 0"),
        (dict(lr=-0.1), "learning rate must be a finite number > 0; got -0.1"),
        (dict(lr=math.nan), "learning rate"),
        (dict(steps=0), "steps must be an integer >= 1; got 0"),
        (dict(sampler="uniform"), r"unknown sampler 'uniform'.*normal"),
    ],
)
def test_bad_arguments_name_the_bad_value(kwargs, match):
    args = dict(function="sphere", n=4, method="mean", k=2, lr=0.1, steps=10) | kwargs
    with pytest.raises(ValueError, match=match):
        optimize(**args)
