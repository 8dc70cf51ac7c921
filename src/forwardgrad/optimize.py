"""Plain gradient descent on closed-form functions with forward gradients (multi-tangent Fig. 4).

Each step is ``x <- x - lr * g`` with a fixed learning rate, where g is one of

* ``backprop``: the exact gradient (``torch.func.grad``), the baseline;
* ``mean`` / ``sum`` / ``projection``: k tangents drawn with :func:`forwardgrad.samplers.
  sample_tangents`, their k JVPs from ``torch.func.jvp`` under ``torch.func.vmap`` over the
  tangent axis (one call for all k, primal computed once, no autograd graph, no backward pass),
  combined by :func:`forwardgrad.aggregate.aggregate`.

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

Runs that share a function, dimension, method and k run in lockstep as one batch of shape
``(R, n)`` (R = learning rates x seeds), each with its own tangent generator seeded by its
seed, so a run in a sweep follows the same trajectory as :func:`optimize` with that seed and
learning rate (up to float rounding of batched kernels).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from .core.aggregate import AGGREGATIONS, DependentTangentsWarning, aggregate
from .core.samplers import SAMPLERS, sample_tangents
from .functions import FunctionSpec, get_function

ValueFn = Callable[[Tensor], Tensor]
"""A test function: points ``(*batch, n)`` -> values ``(*batch,)``."""

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


# ---------------------------------------------------------------------------------------------
# Gradients


def directional_derivatives(fn: ValueFn, x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
    """Values and JVPs of ``fn`` at ``x`` along every tangent, in one batched forward-mode call.

    Args:
        fn: points (*batch, n) -> values (*batch,).
        x: points, (*batch, n).
        tangents: (k, *batch, n); tangent j of batch index b is ``tangents[j, b]``.

    Returns:
        ``values`` (*batch,) (the primal, computed once) and ``jvps`` (k, *batch) with
        ``jvps[j, b] = <grad f(x[b]), tangents[j, b]>``.
    """
    if tangents.shape[1:] != x.shape:
        raise ValueError(
            f"tangents {tuple(tangents.shape)} do not match points {tuple(x.shape)}: "
            "expected tangents (k, *batch, n) for points (*batch, n)"
        )

    x = x.contiguous()  # forward AD cannot attach tangents to broadcast (expanded) points

    def push(tangent: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(fn, (x,), (tangent,))

    # x is not batched by vmap, so the primal output is shared (out_dims None) and computed once.
    values, jvps = torch.func.vmap(push, in_dims=0, out_dims=(None, 0))(tangents)
    return values, jvps


def forward_gradient(
    fn: ValueFn, x: Tensor, tangents: Tensor, method: str
) -> tuple[Tensor, Tensor]:
    """Values (*batch,) and the k-tangent forward gradient (*batch, n) of ``fn`` at ``x``.

    ``tangents`` is (k, *batch, n); ``method`` is an aggregation (sum, mean, projection).
    """
    values, jvps = directional_derivatives(fn, x, tangents)
    return values, aggregate(method, tangents, jvps)


def exact_gradient(fn: ValueFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """Values (*batch,) and exact gradients (*batch, n) of ``fn`` at ``x``.

    Batch entries are independent, so the gradient of the summed values is every gradient.
    """

    def total(points: Tensor) -> tuple[Tensor, Tensor]:
        values = fn(points)
        return values.sum(), values

    grads, values = torch.func.grad(total, has_aux=True)(x)
    return values, grads


# ---------------------------------------------------------------------------------------------
# Validation


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHODS)}")


def _check_positive_int(what: str, value: object, minimum: int = 1) -> None:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}; got {value!r}")


def _check_lr(lr: object) -> None:
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not (0 < lr < math.inf):
        raise ValueError(f"the learning rate must be a finite number > 0; got {lr!r}")


def _check_common(
    steps: int | None, patience: int | None, sampler: str, dtype: torch.dtype
) -> None:
    if steps is not None:
        _check_positive_int("steps", steps)
    if patience is not None:
        _check_positive_int("patience", patience)
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}; got {dtype!r}")


# ---------------------------------------------------------------------------------------------
# Runs


@dataclass
class OptimizeResult:
    """One gradient-descent run.

    ``values[t]`` is f after t updates (``values[0]`` at the start point), for t up to
    ``steps_run``. Non-finite numbers (a diverged run) are written to JSON as null.
    """

    function: str
    dim: int
    method: str
    tangents: int | None  # None for backprop
    lr: float
    steps: int  # the budget
    seed: int
    patience: int | None
    sampler: str
    sampler_options: dict[str, float]
    dtype: str
    minimum: float  # the function's known minimum in this dimension
    start_value: float
    final_value: float  # f at the last point reached (non-finite when diverged)
    best_value: float  # the lowest finite f seen (what the paper's Fig. 4 plots)
    best_step: int
    steps_run: int  # updates taken
    stop_reason: str  # "steps" | "no improvement" | "diverged"
    values: list[float] = field(repr=False)
    final_point: list[float] = field(repr=False)
    seconds: float | None = None

    @property
    def diverged(self) -> bool:
        return self.stop_reason == "diverged"

    def config(self) -> dict[str, Any]:
        """The arguments that reproduce this run."""
        keys = ("function", "dim", "method", "tangents", "lr", "steps", "seed", "patience")
        cfg = {k: getattr(self, k) for k in keys}
        cfg.update(sampler=self.sampler, sampler_options=self.sampler_options, dtype=self.dtype)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"config": ..., "result": ...}`` with non-finite numbers as null."""
        d = _finite_or_none(asdict(self))
        config = {k: d.pop(k) for k in self.config()}
        d["diverged"] = self.diverged
        return {"config": config, "result": d}


def _finite_or_none(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    return obj


def run_lockstep(
    spec: FunctionSpec,
    n: int,
    method: str,
    k: int,
    lrs: Sequence[float],
    seeds: Sequence[int],
    steps: int | None = None,
    patience: int | None = PAPER_PATIENCE,
    sampler: str = "normal",
    sampler_options: dict[str, float] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> list[OptimizeResult]:
    """Run ``len(lrs)`` independent descents (run r: ``lrs[r]``, ``seeds[r]``) as one batch.

    Points are (R, n) and tangents (k, R, n); runs that stop (early stopping, divergence) drop
    out of the batch. Each run draws its tangents from its own generator, seeded by its seed.
    The arguments are not validated here; :func:`optimize` and :func:`sweep` check them.
    """
    if len(lrs) != len(seeds) or not lrs:
        raise ValueError(f"need one seed per learning rate; got {len(lrs)} and {len(seeds)}")
    steps = spec.steps if steps is None else steps
    options = dict(sampler_options or {})
    fn = spec.fn
    runs = len(lrs)
    x = spec.start(n, dtype, device).expand(runs, n).clone()
    lr = torch.tensor(list(lrs), dtype=dtype, device=device).unsqueeze(-1)  # (R, 1)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    values = torch.full((steps + 1, runs), math.nan, dtype=dtype, device=device)
    best = torch.full((runs,), math.inf, dtype=dtype, device=device)
    best_step = torch.zeros(runs, dtype=torch.long, device=device)
    stale = torch.zeros(runs, dtype=torch.long, device=device)  # evaluations since a new best
    steps_run = [steps] * runs
    stop_reason = ["steps"] * runs
    active = torch.arange(runs, device=device)

    def step_direction(points: Tensor, rows: list[int]) -> tuple[Tensor, Tensor]:
        if method == "backprop":
            return exact_gradient(fn, points)
        per_run = [
            sample_tangents(sampler, k, (), n, generators[r], **options).to(dtype) for r in rows
        ]
        return forward_gradient(fn, points, torch.stack(per_run, 1), method)  # (k, R, n)

    with warnings.catch_warnings():
        # k > n Gaussian tangents span R^n, so the projection is the exact gradient: expected.
        warnings.simplefilter("ignore", DependentTangentsWarning)
        for t in range(steps + 1):
            rows = active.tolist()
            points = x[active]
            if t == steps:
                value, direction = fn(points), None
            else:
                value, direction = step_direction(points, rows)
            values[t, active] = value
            improved = value < best[active]  # False for nan
            best[active] = torch.where(improved, value, best[active])
            best_step[active] = torch.where(improved, t, best_step[active])
            stale[active] = torch.where(improved, 0, stale[active] + 1)
            diverged = ~torch.isfinite(value)
            if direction is not None:
                # A non-finite step would turn x into nan at the next evaluation anyway.
                diverged |= ~torch.isfinite(direction).all(-1)
            stop = diverged.clone()
            if patience is not None and direction is not None:
                stop |= stale[active] >= patience
            for i in stop.nonzero().flatten().tolist():
                r = rows[i]
                steps_run[r] = t
                stop_reason[r] = "diverged" if bool(diverged[i]) else "no improvement"
            if direction is None:
                break
            keep = ~stop
            active, points, direction = active[keep], points[keep], direction[keep]
            if active.numel() == 0:
                break
            x[active] = points - lr[active] * direction

    spec_min = spec.minimum(n)
    results = []
    for r in range(runs):
        trace = values[: steps_run[r] + 1, r].tolist()
        best_r = float(best[r])
        results.append(
            OptimizeResult(
                function=spec.name,
                dim=n,
                method=method,
                tangents=None if method == "backprop" else k,
                lr=float(lrs[r]),
                steps=steps,
                seed=int(seeds[r]),
                patience=patience,
                sampler=sampler,
                sampler_options=options,
                dtype=str(dtype).removeprefix("torch."),
                minimum=spec_min,
                start_value=trace[0],
                final_value=trace[-1],
                best_value=best_r if math.isfinite(best_r) else math.nan,
                best_step=int(best_step[r]),
                steps_run=steps_run[r],
                stop_reason=stop_reason[r],
                values=trace,
                final_point=x[r].tolist(),
            )
        )
    return results


def optimize(
    function: str,
    n: int,
    method: str,
    k: int,
    lr: float,
    steps: int | None = None,
    seed: int = 0,
    *,
    patience: int | None = PAPER_PATIENCE,
    sampler: str = "normal",
    sampler_options: dict[str, float] | None = None,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> OptimizeResult:
    """Minimise ``function`` in dimension ``n`` by gradient descent from the paper's start point.

    Args:
        function: a name in :data:`forwardgrad.functions.FUNCTIONS`.
        n: dimension (>= 1).
        method: ``backprop`` or an aggregation (``mean``, ``sum``, ``projection``).
        k: tangents per step (ignored by backprop).
        lr: the fixed learning rate.
        steps: the step budget (default: the function's, as in the paper).
        seed: seeds the tangent generator.
        patience: stop after this many steps without a new best value (the paper's 50);
            None runs the whole budget. A non-finite value always stops the run (diverged).
        sampler, sampler_options: tangent distribution (see ``forwardgrad list``); the paper's
            Fig. 4 uses ``normal``.
        dtype: float64 (default) or float32.

    Returns:
        The run: trajectory of values, final and best value, why it stopped, the final point.
    """
    spec = get_function(function)
    _check_positive_int("the dimension", n)
    check_method(method)
    _check_positive_int("the number of tangents", k)
    _check_lr(lr)
    _check_common(steps, patience, sampler, dtype)
    if not _is_int(seed):
        raise ValueError(f"the seed must be an integer; got {seed!r}")
    start = time.perf_counter()
    (result,) = run_lockstep(
        spec, n, method, k, [lr], [seed], steps, patience, sampler, sampler_options, dtype, device
    )
    result.seconds = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------
# Learning-rate sweeps


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
        return _finite_or_none(
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

    Every lr of the grid (default :func:`default_lr_grid`) runs with every seed; the cell's
    winner is the lr with the lowest mean ``select_by`` value over the seeds (``final``, the
    default, or ``best``, the quantity the paper's Fig. 4 plots). Diverged runs are recorded and
    disqualify their lr. Backprop ignores k and gets one cell per dimension.

    Args:
        function: a function name or several.
        dims, tangents, methods, seeds: the grid (defaults: the paper's; see the module doc).
        lrs: learning rates to try (default: 19 values, 1e-6 .. 1).
        steps: the step budget (default: each function's, as in the paper).
        progress: called with one line per finished cell.
    """
    names = [function] if isinstance(function, str) else list(function)
    specs = [get_function(name) for name in names]
    lrs = default_lr_grid() if lrs is None else [float(lr) for lr in lrs]
    for what, seq in (("functions", specs), ("dims", dims), ("methods", methods)):
        if not seq:
            raise ValueError(f"the sweep needs at least one of {what}")
    if not lrs or not seeds:
        raise ValueError("the sweep needs at least one learning rate and one seed")
    for n in dims:
        _check_positive_int("every dimension", n)
    for method in methods:
        check_method(method)
    if any(m != "backprop" for m in methods):
        if not tangents:
            raise ValueError("forward-gradient methods need at least one number of tangents")
        for k in tangents:
            _check_positive_int("every number of tangents", k)
    for lr in lrs:
        _check_lr(lr)
    for s in seeds:
        if not _is_int(s):
            raise ValueError(f"every seed must be an integer; got {s!r}")
    if select_by not in SELECT_BY:
        raise ValueError(f"unknown select_by {select_by!r}; choose one of {list(SELECT_BY)}")
    _check_common(steps, patience, sampler, dtype)

    plan = [
        (spec, n, method, k)
        for spec in specs
        for n in dims
        for method in methods
        for k in ([None] if method == "backprop" else tangents)
    ]
    run_lrs = [lr for lr in lrs for _ in seeds]
    run_seeds = [s for _ in lrs for s in seeds]
    cells = []
    for i, (spec, n, method, k) in enumerate(plan, 1):
        start = time.perf_counter()
        runs = run_lockstep(
            spec,
            n,
            method,
            k or 1,
            run_lrs,
            run_seeds,
            steps=steps,
            patience=patience,
            sampler=sampler,
            sampler_options=sampler_options,
            dtype=dtype,
            device=device,
        )
        grid = []
        for j, lr in enumerate(lrs):
            group = runs[j * len(seeds) : (j + 1) * len(seeds)]
            grid.append(
                LrOutcome(
                    lr=lr,
                    final_values=[r.final_value for r in group],
                    best_values=[r.best_value for r in group],
                    steps_run=[r.steps_run for r in group],
                    diverged=sum(r.diverged for r in group),
                )
            )
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
        cells.append(cell)
        if progress is not None:
            label = method if k is None else f"{method} k={k}"
            found = (
                f"best lr {win.lr:.3g}, mean {select_by} f {win.score(select_by):.4g}"
                if win
                else "every lr diverged"
            )
            progress(
                f"[{i}/{len(plan)}] {spec.name} n={n} {label}: {found} "
                f"(f* = {cell.minimum:.4g}; {cell.seconds:.1f} s)"
            )

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
