"""The settings of descent on closed-form functions: the paper's defaults and their checks.

Settings and where they come from (the paper's values are those of the digest of Flügel et al.,
which documents the authors' code; marked *ours* where the digest gives none):

================  ==============================  ============================================
setting           default here                    paper
================  ==============================  ============================================
dimensions        2^0 .. 2^10                     same
tangents k        1, 2, 4, 16                     FG-mean k = 1, 2, 4, 16; projection 2, 4, 16
methods           backprop, mean, projection      same (every k for each; *ours*: adds
                                                  projection k = 1, a rescaled mean)
steps             the function's budget           same: 1000 / 25000 (Rosenbrock) / 1000
early stopping    50 steps without a new best     same (also stops on nan)
seeds             0 .. 4 (tangent generator)      same
tangents          i.i.d. N(0, 1), not normalised  same
learning rate     log grid 1e-6 .. 1, 3 per       Propulate evolutionary search over
                  decade (19 values), best mean   log10 lr in [-6, 0], one run per candidate
                  final f over the seeds          (*ours*: a fixed grid, averaged over seeds)
dtype             float64                         not stated (torch's float32 default)
================  ==============================  ============================================

The checks raise ``ValueError`` naming the bad value (and the allowed ones where there is a list),
so :func:`~forwardgrad.closedform.descent.optimize` and
:func:`~forwardgrad.closedform.lr_sweep.sweep` reject bad input before any run starts.
"""

from __future__ import annotations

import math

import torch

from ..core.aggregate import AGGREGATIONS
from ..core.samplers import SAMPLERS

METHODS: dict[str, str] = {
    "backprop": "the exact gradient (reverse mode; the baseline)",
    **{name: f"forward gradient, {text}" for name, (_, text) in AGGREGATIONS.items()},
}

PAPER_DIMS: tuple[int, ...] = tuple(2**i for i in range(11))
PAPER_TANGENTS: tuple[int, ...] = (1, 2, 4, 16)
PAPER_METHODS: tuple[str, ...] = ("backprop", "mean", "projection")
PAPER_SEEDS: tuple[int, ...] = (0, 1, 2, 3, 4)
PAPER_PATIENCE = 50
SELECT_BY = ("final", "best")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}


def default_lr_grid(low_exp: int = -6, high_exp: int = 0, per_decade: int = 3) -> list[float]:
    """Learning rates ``10**e`` for e from ``low_exp`` to ``high_exp`` in ``1/per_decade`` steps.

    The default, 19 values from 1e-6 to 1, spans the paper's search range log10 lr in [-6, 0].
    """
    if per_decade < 1 or high_exp < low_exp:
        raise ValueError(
            f"need per_decade >= 1 and high_exp >= low_exp; got per_decade={per_decade}, "
            f"low_exp={low_exp}, high_exp={high_exp}"
        )
    count = (high_exp - low_exp) * per_decade
    return [float(10.0 ** (low_exp + i / per_decade)) for i in range(count + 1)]


def is_int(value: object) -> bool:
    """An int that is not a bool (``True`` is no dimension or seed)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")


def check_positive_int(what: str, value: object, minimum: int = 1) -> None:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}; got {value!r}")


def check_lr(lr: object) -> None:
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not (0 < lr < math.inf):
        raise ValueError(f"the learning rate must be a finite number > 0; got {lr!r}")


def check_common(steps: int | None, patience: int | None, sampler: str, dtype: torch.dtype) -> None:
    """The settings that one run and a sweep share."""
    if steps is not None:
        check_positive_int("steps", steps)
    if patience is not None:
        check_positive_int("patience", patience)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")
