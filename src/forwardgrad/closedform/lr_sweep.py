"""Learning-rate grid search for gradient descent on closed-form functions (Fig. 4).

For every (function, dimension, method, k) cell every lr of a log grid runs with every seed, all
of them in lockstep as one batch (:func:`~forwardgrad.closedform.descent.run_lockstep`); the
cell keeps the lr with the lowest mean value over the seeds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .descent import OptimizeResult, finite_or_none, run_lockstep
from .functions import FunctionSpec, get_function
from .settings import (
    PAPER_DIMS,
    PAPER_METHODS,
    PAPER_PATIENCE,
    PAPER_SEEDS,
    PAPER_TANGENTS,
    SELECT_BY,
    check_common,
    check_lr,
    check_method,
    check_positive_int,
    default_lr_grid,
    is_int,
)


@dataclass
class LrOutcome:
    """All seeds of one learning rate in one cell (lists are per seed, in seed order)."""

    lr: float
    final_values: list[float]
    best_values: list[float]
    steps_run: list[int]
    diverged: int  # seeds whose run diverged

    @property
    def mean_final(self) -> float:
        return _mean(self.final_values) if not self.diverged else math.inf

    @property
    def std_final(self) -> float:
        return _std(self.final_values) if not self.diverged else math.nan

    @property
    def mean_best(self) -> float:
        return _mean(self.best_values) if not self.diverged else math.inf

    def score(self, select_by: str) -> float:
        """What the sweep minimises; inf when any seed diverged, so such an lr never wins."""
        return self.mean_final if select_by == "final" else self.mean_best


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(sum((v - m) ** 2 for v in xs) / (len(xs) - 1))


def pick_lr(grid: Sequence[LrOutcome], select_by: str = "final") -> LrOutcome | None:
    """The outcome with the lowest score; None when every lr diverged.

    Exact ties (several lrs reach the same value, e.g. f = 0 on the sphere) go to the middle of
    the tied lrs in grid order: the choice farthest from both too-slow and too-fast.
    """
    scores = [o.score(select_by) for o in grid]
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        return None
    best = min(finite)
    tied = [o for o, s in zip(grid, scores) if s == best]
    return tied[len(tied) // 2]


@dataclass
class SweepCell:
    """One (function, dimension, method, k) with every learning rate of the grid."""

    function: str
    dim: int
    method: str
    tangents: int | None
    minimum: float
    grid: list[LrOutcome]
    best_lr: float | None
    seconds: float

    @property
    def winner(self) -> LrOutcome | None:
        return next((o for o in self.grid if o.lr == self.best_lr), None)

    def to_dict(self) -> dict[str, Any]:
        win = self.winner
        return finite_or_none(
            {
                "function": self.function,
                "dim": self.dim,
                "method": self.method,
                "tangents": self.tangents,
                "minimum": self.minimum,
                "best_lr": self.best_lr,
                "mean_final": win.mean_final if win else None,
                "std_final": win.std_final if win else None,
                "mean_best": win.mean_best if win else None,
                "diverged_lrs": sum(1 for o in self.grid if o.diverged),
                "seconds": self.seconds,
                "grid": [
                    {**asdict(o), "mean_final": o.mean_final, "mean_best": o.mean_best}
                    for o in self.grid
                ],
            }
        )


@dataclass
class SweepResult:
    """Every cell of a sweep and the settings it ran with (written as sweep.json / sweep.md)."""

    config: dict[str, Any]
    cells: list[SweepCell]

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "cells": [c.to_dict() for c in self.cells]}

    def to_markdown(self) -> str:
        """One table row per cell: the winning lr and its value over the seeds."""
        cfg = self.config
        patience = cfg["patience"]
        stop = f"stop after {patience} steps without a new best" if patience else "no early stop"
        lines = [
            "# Gradient descent on closed-form functions",
            "",
            f"- steps: {cfg['steps'] or 'each function default'}; {stop}; dtype {cfg['dtype']}",
            f"- seeds: {', '.join(map(str, cfg['seeds']))}; tangents: {cfg['sampler']}",
            f"- learning rate: the grid value with the lowest mean {cfg['select_by']} f over the "
            "seeds; an lr under which any seed diverged is never chosen",
            f"- lr grid: {', '.join(f'{lr:.3g}' for lr in cfg['lrs'])}",
            "",
            "| function | n | method | k | best lr | final f (mean ± std) | final f / n "
            "| best f (mean) | f* | diverged lrs |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in self.cells:
            win = c.winner
            k = "–" if c.tangents is None else str(c.tangents)
            diverged = f"{sum(1 for o in c.grid if o.diverged)}/{len(c.grid)}"
            if win is None:
                cols = ["all diverged", "–", "–", "–"]
            else:
                cols = [
                    f"{win.lr:.3g}",
                    f"{win.mean_final:.4g} ± {win.std_final:.2g}",
                    f"{win.mean_final / c.dim:.4g}",
                    f"{win.mean_best:.4g}",
                ]
            row = [c.function, str(c.dim), c.method, k, *cols, f"{c.minimum:.6g}", diverged]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines) + "\n"


def sweep(
    function: str | Sequence[str],
    dims: Sequence[int] = PAPER_DIMS,
    tangents: Sequence[int] = PAPER_TANGENTS,
    methods: Sequence[str] = PAPER_METHODS,
    lrs: Sequence[float] | None = None,
    seeds: Sequence[int] = PAPER_SEEDS,
    steps: int | None = None,
    *,
    patience: int | None = PAPER_PATIENCE,
    sampler: str = "normal",
    sampler_options: dict[str, float] | None = None,
    select_by: str = "final",
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    progress: Callable[[str], None] | None = None,
) -> SweepResult:
    """Grid-search the learning rate for every (function, dimension, method, k) cell.

    Every lr of the grid (default :func:`~forwardgrad.closedform.settings.default_lr_grid`)
    runs with every seed; the cell's winner is the lr with the lowest mean ``select_by`` value
    over the seeds (``final``, the default, or ``best``, the quantity the paper's Fig. 4
    plots). Diverged runs are recorded and disqualify their lr. Backprop ignores k and gets one
    cell per dimension.

    Args:
        function: a function name or several.
        dims, tangents, methods, seeds: the grid (defaults: the paper's; see
            :mod:`forwardgrad.closedform.settings`).
        lrs: learning rates to try (default: 19 values, 1e-6 .. 1).
        steps: the step budget (default: each function's, as in the paper).
        progress: called with one line per finished cell.
    """
    names = [function] if isinstance(function, str) else list(function)
    specs = [get_function(name) for name in names]
    lrs = default_lr_grid() if lrs is None else [float(lr) for lr in lrs]
    _check_grid(specs, dims, methods, lrs, seeds)
    _check_values(methods, tangents, lrs, seeds, select_by)
    check_common(steps, patience, sampler, dtype)

    plan = _plan(specs, dims, methods, tangents)
    run_options = dict(
        steps=steps,
        patience=patience,
        sampler=sampler,
        sampler_options=sampler_options,
        dtype=dtype,
        device=device,
    )
    cells = []
    for i, (spec, n, method, k) in enumerate(plan, 1):
        cell, win = _sweep_cell(spec, n, method, k, lrs, seeds, select_by, run_options)
        cells.append(cell)
        if progress is not None:
            progress(f"[{i}/{len(plan)}] " + _progress_line(cell, win, select_by))

    config = {
        "functions": [s.name for s in specs],
        "dims": list(dims),
        "tangents": list(tangents),
        "methods": list(methods),
        "lrs": lrs,
        "seeds": list(seeds),
        "steps": steps,
        "steps_per_function": {s.name: steps or s.steps for s in specs},
        "patience": patience,
        "sampler": sampler,
        "sampler_options": dict(sampler_options or {}),
        "select_by": select_by,
        "dtype": str(dtype).removeprefix("torch."),
    }
    return SweepResult(config=config, cells=cells)


def _plan(
    specs: Sequence[FunctionSpec],
    dims: Sequence[int],
    methods: Sequence[str],
    tangents: Sequence[int],
) -> list[tuple[FunctionSpec, int, str, int | None]]:
    """The cells in order: function, then dimension, method and k (None for backprop)."""
    return [
        (spec, n, method, k)
        for spec in specs
        for n in dims
        for method in methods
        for k in ([None] if method == "backprop" else tangents)
    ]


def _check_grid(
    specs: Sequence[FunctionSpec],
    dims: Sequence[int],
    methods: Sequence[str],
    lrs: Sequence[float],
    seeds: Sequence[int],
) -> None:
    """Every axis of the grid is non-empty; every dimension and method is valid."""
    for what, seq in (("functions", specs), ("dims", dims), ("methods", methods)):
        if not seq:
            raise ValueError(f"the sweep needs at least one of {what}")
    if not lrs or not seeds:
        raise ValueError("the sweep needs at least one learning rate and one seed")
    for n in dims:
        check_positive_int("every dimension", n)
    for method in methods:
        check_method(method)


def _check_values(
    methods: Sequence[str],
    tangents: Sequence[int],
    lrs: Sequence[float],
    seeds: Sequence[int],
    select_by: str,
) -> None:
    """Every k (where a method uses it), lr and seed is valid, and so is ``select_by``."""
    if any(m != "backprop" for m in methods):
        if not tangents:
            raise ValueError("forward-gradient methods need at least one number of tangents")
        for k in tangents:
            check_positive_int("every number of tangents", k)
    for lr in lrs:
        check_lr(lr)
    for s in seeds:
        if not is_int(s):
            raise ValueError(f"every seed must be an integer; got {s!r}")
    if select_by not in SELECT_BY:
        raise ValueError(f"unknown select_by {select_by!r}; choose one of {list(SELECT_BY)}")


def _sweep_cell(
    spec: FunctionSpec,
    n: int,
    method: str,
    k: int | None,
    lrs: Sequence[float],
    seeds: Sequence[int],
    select_by: str,
    run_options: dict[str, Any],
) -> tuple[SweepCell, LrOutcome | None]:
    """Every lr x seed of one cell as one lockstep batch; the cell and its winning outcome."""
    start = time.perf_counter()
    run_lrs = [lr for lr in lrs for _ in seeds]
    run_seeds = [s for _ in lrs for s in seeds]
    runs = run_lockstep(spec, n, method, k or 1, run_lrs, run_seeds, **run_options)
    grid = [
        _lr_outcome(lr, runs[j * len(seeds) : (j + 1) * len(seeds)]) for j, lr in enumerate(lrs)
    ]
    win = pick_lr(grid, select_by)
    cell = SweepCell(
        function=spec.name,
        dim=n,
        method=method,
        tangents=k,
        minimum=spec.minimum(n),
        grid=grid,
        best_lr=win.lr if win else None,
        seconds=time.perf_counter() - start,
    )
    return cell, win


def _lr_outcome(lr: float, group: Sequence[OptimizeResult]) -> LrOutcome:
    """The runs of every seed at one lr, in seed order."""
    return LrOutcome(
        lr=lr,
        final_values=[r.final_value for r in group],
        best_values=[r.best_value for r in group],
        steps_run=[r.steps_run for r in group],
        diverged=sum(r.diverged for r in group),
    )


def _progress_line(cell: SweepCell, win: LrOutcome | None, select_by: str) -> str:
    label = cell.method if cell.tangents is None else f"{cell.method} k={cell.tangents}"
    found = (
        f"best lr {win.lr:.3g}, mean {select_by} f {win.score(select_by):.4g}"
        if win
        else "every lr diverged"
    )
    return (
        f"{cell.function} n={cell.dim} {label}: {found} "
        f"(f* = {cell.minimum:.4g}; {cell.seconds:.1f} s)"
    )
