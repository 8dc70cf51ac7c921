"""Forward gradients and exact gradients of the closed-form functions against autograd."""

import math

import pytest
import torch

from forwardgrad.closedform.functions import FUNCTIONS
from forwardgrad.closedform.gradients import (
    directional_derivatives,
    exact_gradient,
    forward_gradient,
)

NAMES = sorted(FUNCTIONS)


def _autograd_gradient(fn, x):
    """Reference gradients (*batch, n) by ordinary reverse mode."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


def _random_points(n, batch=(3,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, n, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_jvps_and_exact_gradient_match_autograd(name):
    fn = FUNCTIONS[name].fn
    x = _random_points(6)
    tangents = torch.randn(5, 3, 6, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    grad = _autograd_gradient(fn, x)
    values, jvps = directional_derivatives(fn, x, tangents)
    assert values.shape == (3,) and jvps.shape == (5, 3)
    torch.testing.assert_close(values, fn(x))
    torch.testing.assert_close(jvps, (tangents * grad).sum(-1))
    values, exact = exact_gradient(fn, x)
    torch.testing.assert_close(exact, grad)
    torch.testing.assert_close(values, fn(x))
    # No autograd graph is left behind: the estimates are plain tensors.
    _, estimate = forward_gradient(fn, x, tangents, "mean")
    assert not estimate.requires_grad and estimate.grad_fn is None


def test_mismatched_tangents_are_rejected():
    with pytest.raises(ValueError, match=r"expected tangents \(k, \*batch, n\)"):
        directional_derivatives(FUNCTIONS["sphere"].fn, _random_points(4), torch.randn(2, 3, 5))


@pytest.mark.parametrize("name", NAMES)
def test_projection_with_k_equal_n_is_the_exact_gradient(name):
    fn = FUNCTIONS[name].fn
    x = _random_points(6)
    tangents = torch.randn(6, 3, 6, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    _, estimate = forward_gradient(fn, x, tangents, "projection")
    torch.testing.assert_close(estimate, _autograd_gradient(fn, x), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "method,factor",
    # E[g_mean] = g for Gaussian tangents; the sum is k times that; the projection onto a
    # uniformly random k-dimensional subspace has E[P_U] = (k / n) I.
    [("mean", lambda k, n: 1.0), ("sum", lambda k, n: k), ("projection", lambda k, n: k / n)],
)
def test_forward_gradient_expectation(method, factor):
    n, k, samples = 5, 2, 20_000
    fn = FUNCTIONS["rosenbrock"].fn
    x = _random_points(n, batch=(), seed=3) * 0.5
    grad = _autograd_gradient(fn, x)
    g = torch.Generator().manual_seed(4)
    tangents = torch.randn(k, samples, n, generator=g, dtype=x.dtype)
    _, estimates = forward_gradient(fn, x.expand(samples, n), tangents, method)
    mean = estimates.mean(0)
    stderr = estimates.std(0) / math.sqrt(samples)
    # Five standard errors per coordinate: a false alarm has probability ~ 3e-6 per coordinate.
    assert ((mean - factor(k, n) * grad).abs() <= 5 * stderr).all(), (mean, grad, stderr)
