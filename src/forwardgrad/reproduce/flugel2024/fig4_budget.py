"""``tangents-functions`` (Fig. 4): the budgets, the methods each cell runs, and the authors'
learning rates and search results per cell (``data/functions_authors.json``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...closedform import PAPER_DIMS, PAPER_PATIENCE, default_lr_grid
from .common import method_entries, read_data

FUNCTION_NAMES = ("sphere", "rosenbrock", "styblinski-tang")


@dataclass(frozen=True)
class FunctionsBudget:
    functions: tuple[str, ...]
    dims: tuple[int, ...]
    mean_tangents: tuple[int, ...]  # k = 1 is the single-tangent forward gradient
    projection_tangents: tuple[int, ...]  # k = 1 would only rescale the mean's step
    seeds: int
    lrs: tuple[float, ...]
    steps: int | None  # None: each function's own budget (the paper's 1000 / 25 000 / 1000)
    patience: int | None
    # The sweep's tensors are small: on a busy 2-core machine two torch threads spin-wait on each
    # other and ran about 12x slower than one.
    threads: int | None = 1


FUNCTIONS_BUDGETS: dict[str, FunctionsBudget] = {
    "paper": FunctionsBudget(
        functions=FUNCTION_NAMES,
        dims=PAPER_DIMS,
        mean_tangents=(1, 2, 4, 16),
        projection_tangents=(2, 4, 16),
        seeds=5,
        lrs=tuple(default_lr_grid()),
        steps=None,
        patience=PAPER_PATIENCE,
    ),
    "smoke": FunctionsBudget(
        functions=FUNCTION_NAMES,
        dims=(2, 16),
        mean_tangents=(1, 4),
        projection_tangents=(4,),
        seeds=2,
        lrs=tuple(default_lr_grid(-4, 0, 1)),
        steps=30,
        patience=PAPER_PATIENCE,
    ),
}

# The authors' per-cell learning rates (lrs/math.csv) and the final f of the one run of their
# learning-rate search at that rate (first-commit math.csv), n = 2^0 … 2^10. These are not
# Fig. 4 (which averages 5 seeds); they are the only numbers published for this setting.
_AUTHORS = read_data("functions_authors.json")
AUTHORS_TABLE = method_entries(_AUTHORS, "functions")
AUTHORS_SOURCE: str = _AUTHORS["source"]
AUTHORS_DIMS: tuple[int, ...] = tuple(_AUTHORS["dims"])


def _authors_value(field: str, function: str, method: str, k: int | None, n: int) -> float | None:
    """The authors' number for one cell, None where they have none (n not a power of 2 ≤ 1024)."""
    entry = AUTHORS_TABLE.get((function, method, k))
    if entry is None or n not in AUTHORS_DIMS:
        return None
    return float(entry[field][AUTHORS_DIMS.index(n)])


def authors_lr(function: str, method: str, k: int | None, n: int) -> float | None:
    """The learning rate the authors' search chose for one cell."""
    return _authors_value("lr", function, method, k, n)


def authors_search_loss(function: str, method: str, k: int | None, n: int) -> float | None:
    """The final f of the authors' single learning-rate-search run at that rate."""
    return _authors_value("search_final", function, method, k, n)


def method_plan(budget: FunctionsBudget) -> list[tuple[str, int | None]]:
    """The (method, k) every (function, n) cell runs: backprop, then the mean and projection."""
    return [
        ("backprop", None),
        *(("mean", k) for k in budget.mean_tangents),
        *(("projection", k) for k in budget.projection_tangents),
    ]


def all_ks(budget: FunctionsBudget) -> list[int]:
    """Every k the budget runs, sorted."""
    return sorted(set(budget.mean_tangents) | set(budget.projection_tangents))


def budget_from_settings(settings: dict[str, Any]) -> FunctionsBudget:
    """The budget a result ran, from its settings (for the plots)."""
    return FunctionsBudget(
        functions=tuple(settings["functions"]),
        dims=tuple(settings["dims"]),
        mean_tangents=tuple(settings["mean_tangents"]),
        projection_tangents=tuple(settings["projection_tangents"]),
        seeds=len(settings["seeds"]),
        lrs=tuple(settings["lrs"]),
        steps=settings["steps"],
        patience=settings["patience"],
    )
