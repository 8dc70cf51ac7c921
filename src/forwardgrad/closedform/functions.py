"""Closed-form test functions for forward-gradient optimisation (the multi-tangent paper's §4.2).

Every function maps points ``x`` of shape ``(*batch, n)`` to values of shape ``(*batch,)``, for
any dimension n >= 1, so many independent runs can be evaluated in one call. Each spec carries
the known minimum, a minimiser, the paper's starting point and its step budget:

=================  =================================================  ===============  =========
name               f(x)                                               start            steps
=================  =================================================  ===============  =========
sphere             sum_i x_i^2                                        (-1, ..., -1)    1000
rosenbrock         sum_{i<n} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2    (-1, 0, ..., 0)  25000
styblinski-tang    1/2 sum_i (x_i^4 - 16 x_i^2 + 5 x_i)               0                1000
=================  =================================================  ===============  =========

Minima: sphere 0 at 0; Rosenbrock 0 at (1, ..., 1) (for n = 1 the sum is empty, f = 0
everywhere); Styblinski-Tang -39.1661657...·n at x_i = -2.9035340... (the smallest root of
f' = 0, computed below in closed form rather than typed in).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def sphere(x: Tensor) -> Tensor:
    """sum_i x_i^2: (*batch, n) -> (*batch,)."""
    return (x * x).sum(-1)


def rosenbrock(x: Tensor) -> Tensor:
    """sum_{i<n} 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2: (*batch, n) -> (*batch,); 0 for n = 1."""
    head, tail = x[..., :-1], x[..., 1:]
    return (100.0 * (tail - head * head) ** 2 + (1.0 - head) ** 2).sum(-1)


def styblinski_tang(x: Tensor) -> Tensor:
    """1/2 sum_i (x_i^4 - 16 x_i^2 + 5 x_i): (*batch, n) -> (*batch,)."""
    x2 = x * x
    return 0.5 * (x2 * x2 - 16.0 * x2 + 5.0 * x).sum(-1)


def _styblinski_tang_argmin() -> float:
    """Smallest root of x^3 - 8x + 5/4 = 0 (f'(x) = 0 per coordinate), by the cubic's cosine form.

    The cubic has three real roots: the global minimiser (about -2.9035), a local maximum
    (about 0.157) and a local minimum (about 2.7468).
    """
    p, q = -8.0, 1.25
    radius = 2.0 * math.sqrt(-p / 3.0)
    theta = math.acos(3.0 * q / (2.0 * p) * math.sqrt(-3.0 / p)) / 3.0
    return min(radius * math.cos(theta - 2.0 * math.pi * j / 3.0) for j in range(3))


STYBLINSKI_TANG_ARGMIN = _styblinski_tang_argmin()
STYBLINSKI_TANG_MIN_PER_DIM = 0.5 * (
    STYBLINSKI_TANG_ARGMIN**4 - 16.0 * STYBLINSKI_TANG_ARGMIN**2 + 5.0 * STYBLINSKI_TANG_ARGMIN
)


@dataclass(frozen=True)
class FunctionSpec:
    """A test function with its known optimum and the paper's start point and step budget."""

    name: str
    summary: str
    fn: Callable[[Tensor], Tensor]  # (*batch, n) -> (*batch,)
    _start: Callable[[int], list[float]]
    _minimiser: Callable[[int], list[float]]
    _minimum: Callable[[int], float]
    steps: int  # the paper's step budget for plain gradient descent

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def start(
        self, n: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
    ) -> Tensor:
        """The paper's starting point, shape (n,)."""
        _check_dim(n)
        return torch.tensor(self._start(n), dtype=dtype, device=device)

    def minimiser(
        self, n: int, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu"
    ) -> Tensor:
        """A global minimiser, shape (n,)."""
        _check_dim(n)
        return torch.tensor(self._minimiser(n), dtype=dtype, device=device)

    def minimum(self, n: int) -> float:
        """The global minimum value in dimension n."""
        _check_dim(n)
        return self._minimum(n)


def _check_dim(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"the dimension must be an integer >= 1; got {n!r}")


FUNCTIONS: dict[str, FunctionSpec] = {
    s.name: s
    for s in [
        FunctionSpec(
            "sphere",
            "sum x_i^2; min 0 at 0; start (-1,...,-1); 1000 steps",
            sphere,
            _start=lambda n: [-1.0] * n,
            _minimiser=lambda n: [0.0] * n,
            _minimum=lambda n: 0.0,
            steps=1000,
        ),
        FunctionSpec(
            "rosenbrock",
            "sum 100(x_{i+1}-x_i^2)^2+(1-x_i)^2; min 0 at 1; start (-1,0,...,0); 25000 steps",
            rosenbrock,
            _start=lambda n: [-1.0] + [0.0] * (n - 1),
            _minimiser=lambda n: [1.0] * n,
            _minimum=lambda n: 0.0,
            steps=25000,
        ),
        FunctionSpec(
            "styblinski-tang",
            "1/2 sum x_i^4-16x_i^2+5x_i; min -39.166n at x_i=-2.9035; start 0; 1000 steps",
            styblinski_tang,
            _start=lambda n: [0.0] * n,
            _minimiser=lambda n: [STYBLINSKI_TANG_ARGMIN] * n,
            _minimum=lambda n: STYBLINSKI_TANG_MIN_PER_DIM * n,
            steps=1000,
        ),
    ]
}


def get_function(name: str) -> FunctionSpec:
    """The spec registered under ``name``; a ValueError names the allowed ones otherwise."""
    spec = FUNCTIONS.get(name)
    if spec is None:
        raise ValueError(f"unknown function {name!r}; choose one of {sorted(FUNCTIONS)}")
    return spec
