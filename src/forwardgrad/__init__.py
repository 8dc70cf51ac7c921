"""forwardgrad: train neural networks without backpropagation, from forward-mode JVPs alone."""

from .core.aggregate import AGGREGATIONS, aggregate
from .core.chain import chain_plan, forward_jvp
from .core.samplers import SAMPLERS, sample_tangents
from .core.sites import ModelNotSupportedError, select_sites
from .core.trace import BatchCouplingError
from .estimation import Estimator, cross_entropy_per_example
from .guesses import GUESSES, Guess, GuessOptions, make_guess
from .models import mlp

__version__ = "0.1.0"

__all__ = [
    "AGGREGATIONS",
    "BatchCouplingError",
    "Estimator",
    "GUESSES",
    "Guess",
    "GuessOptions",
    "ModelNotSupportedError",
    "SAMPLERS",
    "aggregate",
    "chain_plan",
    "cross_entropy_per_example",
    "forward_jvp",
    "make_guess",
    "mlp",
    "sample_tangents",
    "select_sites",
]
