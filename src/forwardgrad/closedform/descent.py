"""Plain gradient descent on closed-form functions with forward gradients (multi-tangent Fig. 4).

Each step is ``x <- x - lr * g`` with a fixed learning rate, where g is the exact gradient
(``backprop``, the baseline) or a k-tangent forward gradient (``mean`` / ``sum`` /
``projection``; see :mod:`forwardgrad.closedform.gradients`), tangents drawn with
:func:`forwardgrad.core.samplers.sample_tangents`. The settings and the paper's values are in
:mod:`forwardgrad.closedform.settings`.

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

from ..core.aggregate import DependentTangentsWarning
from ..core.samplers import sample_tangents
from .functions import FunctionSpec, get_function
from .gradients import ValueFn, exact_gradient, forward_gradient
from .settings import (
    PAPER_PATIENCE,
    check_common,
    check_lr,
    check_method,
    check_positive_int,
    is_int,
)

DirectionFn = Callable[[Tensor, list[int]], tuple[Tensor, Tensor]]
"""(points (R', n), their run indices) -> (values (R',), descent directions (R', n))."""


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
        d = finite_or_none(asdict(self))
        config = {k: d.pop(k) for k in self.config()}
        d["diverged"] = self.diverged
        return {"config": config, "result": d}


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (JSON has no nan or inf)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    return obj


@dataclass
class _Lockstep:
    """R runs in one batch: their points, learning rates and records so far.

    ``active`` holds the indices of the runs still descending; a run that stops leaves it.
    """

    x: Tensor  # (R, n)
    lr: Tensor  # (R, 1)
    values: Tensor  # (steps + 1, R): f after t updates, nan where a run had stopped
    best: Tensor  # (R,)
    best_step: Tensor  # (R,)
    stale: Tensor  # (R,): evaluations since a new best
    active: Tensor  # indices of the running runs
    steps_run: list[int]
    stop_reason: list[str]

    @classmethod
    def start(cls, start: Tensor, lrs: Sequence[float], steps: int) -> _Lockstep:
        """Every run at ``start`` (n,), in its dtype and on its device."""
        runs, dtype, device = len(lrs), start.dtype, start.device
        return cls(
            x=start.expand(runs, start.shape[0]).clone(),
            lr=torch.tensor(list(lrs), dtype=dtype, device=device).unsqueeze(-1),
            values=torch.full((steps + 1, runs), math.nan, dtype=dtype, device=device),
            best=torch.full((runs,), math.inf, dtype=dtype, device=device),
            best_step=torch.zeros(runs, dtype=torch.long, device=device),
            stale=torch.zeros(runs, dtype=torch.long, device=device),
            active=torch.arange(runs, device=device),
            steps_run=[steps] * runs,
            stop_reason=["steps"] * runs,
        )

    def record(self, t: int, value: Tensor) -> None:
        """Store the active runs' values after t updates and track their best."""
        active = self.active
        self.values[t, active] = value
        improved = value < self.best[active]  # False for nan
        self.best[active] = torch.where(improved, value, self.best[active])
        self.best_step[active] = torch.where(improved, t, self.best_step[active])
        self.stale[active] = torch.where(improved, 0, self.stale[active] + 1)

    def stopping(
        self,
        t: int,
        value: Tensor,
        direction: Tensor | None,
        patience: int | None,
        rows: list[int],
    ) -> Tensor:
        """Which active runs (run indices ``rows``) stop after t updates; records why.

        A run stops when it diverged (non-finite value or step) or, with ``patience``, after
        that many evaluations without a new best.
        """
        diverged = ~torch.isfinite(value)
        if direction is not None:
            # A non-finite step would turn x into nan at the next evaluation anyway.
            diverged |= ~torch.isfinite(direction).all(-1)
        stop = diverged.clone()
        if patience is not None and direction is not None:
            stop |= self.stale[self.active] >= patience
        for i in stop.nonzero().flatten().tolist():
            r = rows[i]
            self.steps_run[r] = t
            self.stop_reason[r] = "diverged" if bool(diverged[i]) else "no improvement"
        return stop

    def descend(
        self, fn: ValueFn, direction_of: DirectionFn, steps: int, patience: int | None
    ) -> None:
        """Up to ``steps`` updates ``x <- x - lr * direction``, then a last evaluation."""
        for t in range(steps + 1):
            rows = self.active.tolist()
            points = self.x[self.active]
            if t == steps:
                value, direction = fn(points), None
            else:
                value, direction = direction_of(points, rows)
            self.record(t, value)
            stop = self.stopping(t, value, direction, patience, rows)
            if direction is None:
                break
            keep = ~stop
            self.active, points, direction = self.active[keep], points[keep], direction[keep]
            if self.active.numel() == 0:
                break
            self.x[self.active] = points - self.lr[self.active] * direction

    def result(self, r: int, lr: float, seed: int, common: dict[str, Any]) -> OptimizeResult:
        """Run r as an :class:`OptimizeResult`; ``common`` holds the fields all runs share."""
        trace = self.values[: self.steps_run[r] + 1, r].tolist()
        best = float(self.best[r])
        return OptimizeResult(
            **common,
            lr=float(lr),
            seed=int(seed),
            start_value=trace[0],
            final_value=trace[-1],
            best_value=best if math.isfinite(best) else math.nan,
            best_step=int(self.best_step[r]),
            steps_run=self.steps_run[r],
            stop_reason=self.stop_reason[r],
            values=trace,
            final_point=self.x[r].tolist(),
        )


def _direction_fn(
    fn: ValueFn,
    method: str,
    k: int,
    n: int,
    sampler: str,
    options: dict[str, float],
    generators: list[torch.Generator],
    dtype: torch.dtype,
) -> DirectionFn:
    """The descent direction of ``method``; run r draws its k tangents from ``generators[r]``."""

    def direction_of(points: Tensor, rows: list[int]) -> tuple[Tensor, Tensor]:
        if method == "backprop":
            return exact_gradient(fn, points)
        per_run = [
            sample_tangents(sampler, k, (), n, generators[r], **options).to(dtype) for r in rows
        ]
        return forward_gradient(fn, points, torch.stack(per_run, 1), method)  # (k, R, n)

    return direction_of


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
    The arguments are not validated here; :func:`optimize` and
    :func:`~forwardgrad.closedform.lr_sweep.sweep` check them.
    """
    if len(lrs) != len(seeds) or not lrs:
        raise ValueError(f"need one seed per learning rate; got {len(lrs)} and {len(seeds)}")
    steps = spec.steps if steps is None else steps
    options = dict(sampler_options or {})
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    direction_of = _direction_fn(spec.fn, method, k, n, sampler, options, generators, dtype)
    state = _Lockstep.start(spec.start(n, dtype, device), lrs, steps)
    with warnings.catch_warnings():
        # k > n Gaussian tangents span R^n, so the projection is the exact gradient: expected.
        warnings.simplefilter("ignore", DependentTangentsWarning)
        state.descend(spec.fn, direction_of, steps, patience)
    common = dict(
        function=spec.name,
        dim=n,
        method=method,
        tangents=None if method == "backprop" else k,
        steps=steps,
        patience=patience,
        sampler=sampler,
        sampler_options=options,
        dtype=str(dtype).removeprefix("torch."),
        minimum=spec.minimum(n),
    )
    return [state.result(r, lr, seed, common) for r, (lr, seed) in enumerate(zip(lrs, seeds))]


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
        function: a name in :data:`forwardgrad.closedform.functions.FUNCTIONS`.
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
    check_positive_int("the dimension", n)
    check_method(method)
    check_positive_int("the number of tangents", k)
    check_lr(lr)
    check_common(steps, patience, sampler, dtype)
    if not is_int(seed):
        raise ValueError(f"the seed must be an integer; got {seed!r}")
    start = time.perf_counter()
    (result,) = run_lockstep(
        spec, n, method, k, [lr], [seed], steps, patience, sampler, sampler_options, dtype, device
    )
    result.seconds = time.perf_counter() - start
    return result
