"""The closed-form test functions: known minima, start values, batching (multi-tangent §4.2)."""

import pytest
import torch

from forwardgrad.closedform.functions import FUNCTIONS, STYBLINSKI_TANG_MIN_PER_DIM, get_function

NAMES = sorted(FUNCTIONS)


def _autograd_gradient(fn, x):
    """Reference gradients (*batch, n) by ordinary reverse mode."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 7])
def test_minimiser_has_known_value_and_zero_gradient(name, n):
    spec = get_function(name)
    x = spec.minimiser(n)
    assert x.shape == (n,)
    assert spec(x).item() == pytest.approx(spec.minimum(n), abs=1e-12 * max(1, n))
    assert _autograd_gradient(spec.fn, x).abs().max().item() < 1e-9


def test_known_values_at_start_points():
    for n in (1, 2, 5, 64):
        assert FUNCTIONS["sphere"](FUNCTIONS["sphere"].start(n)).item() == n
        assert FUNCTIONS["styblinski-tang"](FUNCTIONS["styblinski-tang"].start(n)).item() == 0
        # (-1, 0, ..., 0): the first term is 100 + 4, every later one (1 - 0)^2; n = 1 is empty.
        expected = 0.0 if n == 1 else 104.0 + (n - 2)
        assert FUNCTIONS["rosenbrock"](FUNCTIONS["rosenbrock"].start(n)).item() == expected


def test_styblinski_tang_minimum_is_the_global_one():
    # A dense 1-D grid (the function is separable) finds the same minimum, not the local one.
    grid = torch.linspace(-5, 5, 200_001, dtype=torch.float64).unsqueeze(-1)
    values = FUNCTIONS["styblinski-tang"](grid)
    assert values.min().item() == pytest.approx(STYBLINSKI_TANG_MIN_PER_DIM, abs=1e-6)
    assert grid[values.argmin()].item() == pytest.approx(-2.903534, abs=1e-4)
    assert STYBLINSKI_TANG_MIN_PER_DIM == pytest.approx(-39.166, abs=1e-3)  # the paper's -39.17n


def test_functions_are_batched_over_leading_axes():
    x = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for spec in FUNCTIONS.values():
        out = spec(x)
        assert out.shape == (2, 3)
        torch.testing.assert_close(out[1, 2], spec(x[1, 2]))


def test_unknown_function_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'spere'.*rosenbrock.*sphere.*styblinski-tang"):
        get_function("spere")
    with pytest.raises(ValueError, match="dimension"):
        FUNCTIONS["sphere"].start(0)
