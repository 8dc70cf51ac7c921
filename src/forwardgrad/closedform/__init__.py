"""Gradient descent with forward gradients on closed-form test functions (multi-tangent Fig. 4).

``functions`` holds the test functions (sphere, Rosenbrock, Styblinski-Tang) with their known
optima; ``gradients`` the forward and exact gradients; ``settings`` the paper's defaults and the
checks of every argument; ``descent`` one run (:func:`optimize`) and the batched runs it is made
of; ``lr_sweep`` the learning-rate grid search (:func:`sweep`). The names below are the public
ones of those modules.
"""

from .descent import OptimizeResult, finite_or_none, optimize, run_lockstep
from .functions import (
    FUNCTIONS,
    STYBLINSKI_TANG_ARGMIN,
    STYBLINSKI_TANG_MIN_PER_DIM,
    FunctionSpec,
    get_function,
    rosenbrock,
    sphere,
    styblinski_tang,
)
from .gradients import ValueFn, directional_derivatives, exact_gradient, forward_gradient
from .lr_sweep import LrOutcome, SweepCell, SweepResult, pick_lr, sweep
from .settings import (
    DTYPES,
    METHODS,
    PAPER_DIMS,
    PAPER_METHODS,
    PAPER_PATIENCE,
    PAPER_SEEDS,
    PAPER_TANGENTS,
    SELECT_BY,
    check_method,
    default_lr_grid,
)

__all__ = [
    "DTYPES",
    "FUNCTIONS",
    "METHODS",
    "PAPER_DIMS",
    "PAPER_METHODS",
    "PAPER_PATIENCE",
    "PAPER_SEEDS",
    "PAPER_TANGENTS",
    "SELECT_BY",
    "STYBLINSKI_TANG_ARGMIN",
    "STYBLINSKI_TANG_MIN_PER_DIM",
    "FunctionSpec",
    "LrOutcome",
    "OptimizeResult",
    "SweepCell",
    "SweepResult",
    "ValueFn",
    "check_method",
    "default_lr_grid",
    "directional_derivatives",
    "exact_gradient",
    "finite_or_none",
    "forward_gradient",
    "get_function",
    "optimize",
    "pick_lr",
    "rosenbrock",
    "run_lockstep",
    "sphere",
    "styblinski_tang",
    "sweep",
]
