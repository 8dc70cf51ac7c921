"""``forwardgrad reproduce``: rerun a paper's table or figure and set ours beside theirs.

Each experiment is an :class:`Experiment` in :data:`EXPERIMENTS`; :func:`run_experiment` runs one
at a budget (``smoke`` for tests, ``paper`` for the paper's settings) and writes its results
folder (results.json, README.md, plots). Adding an experiment: write a ``run(budget, seeds,
out_dir, progress)`` that returns an :class:`ExperimentResult` (rows of ours / paper / theory,
tolerances, plot functions) and ``register`` it in a module imported below.
"""

from .registry import (
    BUDGETS,
    EXPERIMENTS,
    Experiment,
    default_out_dir,
    get_experiment,
    register,
    run_experiment,
)
from .report import ExperimentResult, Plot, Row, Tolerance

# Experiment modules register themselves on import.
from .flugel2024 import fig3_quality, fig5_angle  # noqa: E402, F401  isort: skip
from . import wang2025  # noqa: E402, F401  isort: skip
from . import singhal2023  # noqa: E402, F401  isort: skip
from .flugel2024 import fig4_functions, mlp, sota  # noqa: E402, F401  isort: skip

__all__ = [
    "BUDGETS",
    "EXPERIMENTS",
    "Experiment",
    "ExperimentResult",
    "Plot",
    "Row",
    "Tolerance",
    "default_out_dir",
    "get_experiment",
    "register",
    "run_experiment",
]
