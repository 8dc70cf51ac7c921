"""forwardgrad: train neural networks without backpropagation, from forward-mode JVPs alone."""

from .aggregate import AGGREGATIONS, aggregate
from .estimator import Estimator, cross_entropy_per_example
from .guesses import GUESSES, GuessOptions, make_guess
from .jvp import forward_jvp
from .models import mlp
from .samplers import SAMPLERS, sample_tangents
from .sites import ModelNotSupportedError, find_sites

__version__ = "0.1.0"

__all__ = [
    "AGGREGATIONS",
    "Estimator",
    "GUESSES",
    "GuessOptions",
    "ModelNotSupportedError",
    "SAMPLERS",
    "aggregate",
    "cross_entropy_per_example",
    "find_sites",
    "forward_jvp",
    "make_guess",
    "mlp",
    "sample_tangents",
]
