"""Fit the Newton-Schulz step polynomials of the W-perp-NS guess and write their table.

    python tools/fit_newton_schulz.py [--output PATH] [--steps N] [--iterations N] [--seed N]

refits every threshold ``sigma_k`` in ``{0.1, ..., 0.9}`` and writes
``src/forwardgrad/guesses/ns_coefficients.json`` (coefficients, settings and quality figures),
the table that :mod:`forwardgrad.guesses.newton_schulz` reads at run time. The polynomial and its
iteration are described there; this file holds only the fit, which the library never runs.

Transition band. The composition of five degree-7 polynomials is a polynomial and cannot be an
exact step, so singular values within ``BAND_HALF_WIDTH = 0.05`` (absolute, in units of the
spectral norm) of the threshold are excluded from the fit and from the quality figures. An
absolute width is used rather than one relative to ``sigma_k`` because a relative band is either
vanishingly narrow at ``sigma_k = 0.1`` or swallows the whole region above the threshold at
``sigma_k = 0.9`` (``0.9 * 1.2 > 1.1``); 0.05 is half the spacing of the thresholds, so the bands
of neighbouring table entries just touch. Small thresholds are intrinsically hard: with 0
attracting (``|a0| < 1``) and ``|p| <= 1.1`` on ``[0, 1.1]`` the polynomial can only grow values
near ``sigma_k`` slowly (``p(x) / x ~ a0 + a1 x^2 + ...``), so five iterations cannot lift
``sigma_k + 0.05`` all the way to 1 when ``sigma_k`` is 0.1 or 0.2. The JSON records, besides the
errors outside the band, the interval on which ``p^N`` is more than 0.1 away from the step, which
is the honest description of where such a fit switches.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from forwardgrad.guesses.newton_schulz import (
    BAND_HALF_WIDTH,
    COEFFICIENTS_FILE,
    DEFAULT_ITERATIONS,
    DEGREE,
    N_COEFFS,
    scalar_polynomial,
)
from forwardgrad.io import write_json

THRESHOLDS: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(1, 10))
X_MAX = 1.1
"""Largest normalised singular value the polynomial must handle (power-iteration slack)."""
FIT_GRID_POINTS = 1101  # step 1e-3 on [0, 1.1]
EVAL_GRID_POINTS = 11001  # step 1e-4 on [0, 1.1], used for the quality figures
A0_BOUND = 0.99  # |a0| <= this: 0 is an attracting fixed point, with a margin
DP1_BOUND = 0.99  # |p'(1)| <= this: 1 is an attracting fixed point, with a margin
DEFAULT_STEPS = 1000
DEFAULT_RESTARTS = 8
DEFAULT_CANDIDATES = 2**16
SWITCH_TOLERANCE = 0.1  # for the recorded "switching interval" diagnostic
_MARGIN = 1e-3
_PENALTY_WEIGHT = 1e5
_LP_POWER = 16
_LP_WEIGHT = 10.0
_SCREEN_FACTOR = 32
_POLISH_ITERATIONS = 500


# ----------------------------------------------------------------------------------------------
# Fitting


def _batched_polynomial(x: Tensor, c: Tensor, iterations: int, clamp: float | None) -> Tensor:
    """``p^N(x)`` for R coefficient vectors at once: ``x`` (G,), ``c`` (R, 4) -> (R, G)."""
    y = x.expand(c.shape[0], -1)
    a0, a1, a2, a3 = (c[:, i : i + 1] for i in range(N_COEFFS))
    for _ in range(iterations):
        y2 = y * y
        y = y * (a0 + y2 * (a1 + y2 * (a2 + y2 * a3)))
        if clamp is not None:
            # Only reached by iterates that already left [-1.1, 1.1]; the boundedness penalty
            # pulls those back, the clamp just keeps the composition from overflowing meanwhile.
            y = y.clamp(-clamp, clamp)
    return y


def _full(theta: Tensor) -> Tensor:
    """(R, 3) free parameters -> (R, 4) coefficients with ``a3 = 1 - a0 - a1 - a2``: p(1) = 1."""
    return torch.cat([theta, 1 - theta.sum(1, keepdim=True)], 1)


def _derivative_at_one(c: Tensor) -> Tensor:
    return c[..., 0] + 3 * c[..., 1] + 5 * c[..., 2] + 7 * c[..., 3]


def _region_weights(x: Tensor, threshold: float, band: float) -> tuple[Tensor, Tensor]:
    """Weights of the zero side ``[0, t - band]`` and the one side ``[t + band, 1.1]``.

    Each side gets total weight 1/2 however long it is, so that e.g. the short one side of
    ``t = 0.9`` counts as much as its long zero side.
    """
    zero = (x <= threshold - band).to(x.dtype)
    one = (x >= threshold + band).to(x.dtype)
    w0 = zero * (0.5 / zero.sum()) if zero.sum() > 0 else zero
    w1 = one * (0.5 / one.sum()) if one.sum() > 0 else one
    return w0, w1


def _objective(y: Tensor, w0: Tensor, w1: Tensor) -> Tensor:
    """Weighted squared error to the step, plus 10 x the squared weighted L^16 norm of the error.

    The squared error alone lets the error pile up at the band edges (few grid points there);
    the L^16 term is a smooth stand-in for the max error, which is what the quality figures
    report, and balances the errors on the two sides of the band.
    """
    err2 = w0 * y * y + w1 * (y - 1) ** 2
    mse = err2.sum(-1)
    e = torch.where(w0 > 0, y, y - 1).abs()
    lp = ((w0 + w1) * e**_LP_POWER).sum(-1).clamp_min(1e-300) ** (2 / _LP_POWER)
    return mse + _LP_WEIGHT * lp


def _penalty(c: Tensor, xb: Tensor) -> Tensor:
    """Keep 0 and 1 attracting and ``|p| <= 1.1`` on ``[0, 1.1]`` (so ``p^N`` stays bounded)."""
    p1 = _batched_polynomial(xb, c, 1, None)
    # The margins make the penalised optimum satisfy the hard checks of _feasible exactly.
    # Summed, not averaged, over the grid: only a few points near the maximum ever violate it.
    bound = torch.relu(p1.abs() - (X_MAX - _MARGIN)).pow(2).sum(-1)
    a0 = torch.relu(c[:, 0].abs() - (A0_BOUND - _MARGIN)).pow(2)
    dp1 = torch.relu(_derivative_at_one(c).abs() - (DP1_BOUND - _MARGIN)).pow(2)
    return bound + a0 + dp1


def _feasible(c: Tensor, xb: Tensor) -> Tensor:
    p1 = _batched_polynomial(xb, c, 1, None)
    return (
        (p1.abs().amax(-1) <= X_MAX)
        & (c[:, 0].abs() <= A0_BOUND)
        & (_derivative_at_one(c).abs() <= DP1_BOUND)
    )


def fit_coefficients(
    threshold: float,
    iterations: int = DEFAULT_ITERATIONS,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    *,
    band: float = BAND_HALF_WIDTH,
    restarts: int = DEFAULT_RESTARTS,
    candidates: int = DEFAULT_CANDIDATES,
) -> list[float]:
    """Fit ``[a0, a1, a2, a3]`` so that ``p^iterations`` approximates the step at ``threshold``.

    Minimises the weighted squared error (plus a smooth max-error term, see ``_objective``)
    between ``p^N(x)`` and ``1[x > threshold]`` on a grid of ``[0, 1.1]`` without the band
    ``(threshold - band, threshold + band)``. ``p(1) = 1`` holds exactly (``a3`` is eliminated);
    penalties keep ``|a0| <= 0.99``, ``|p'(1)| <= 0.99`` and ``|p(x)| <= 1.1`` on ``[0, 1.1]``.

    Everything is float64 and deterministic given ``seed``. A scrambled Sobol search over
    ``candidates`` coefficient vectors (kept only if they satisfy the constraints) ranks starting
    points; the best ``32 * restarts`` get a short Adam run on a coarse grid, the best
    ``restarts`` of those ``steps`` Adam steps (cosine learning rate) on the full grid and then an
    L-BFGS polish each. Batched Adam restarts do not interact (Adam is elementwise and the loss a
    sum over restarts). The result with the smallest objective that satisfies the constraints
    exactly wins (the feasible starting points stay in the running as a fallback).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must lie in (0, 1), got {threshold}")
    dtype = torch.float64
    x = torch.linspace(0.0, X_MAX, FIT_GRID_POINTS, dtype=dtype)
    w0, w1 = _region_weights(x, threshold, band)

    # Stage 1: quasi-random search. The box holds every constraint-satisfying degree-7
    # polynomial found in a much wider scan (a1 in [-19, 10], a2 in [-13, 40]); about 1% of it
    # is feasible. Sobol points cover it evenly, so no basin is missed for lack of samples.
    lo = torch.tensor([-A0_BOUND, -20.0, -15.0], dtype=dtype)
    hi = torch.tensor([A0_BOUND, 12.0, 42.0], dtype=dtype)
    sobol = torch.quasirandom.SobolEngine(3, scramble=True, seed=seed)
    theta = lo + (hi - lo) * sobol.draw(candidates, dtype=dtype)
    coarse, c0, c1 = x[::5], w0[::5] * 5, w1[::5] * 5
    theta = theta[_feasible(_full(theta), coarse)]
    if theta.shape[0] == 0:
        raise RuntimeError("random search found no feasible starting point; raise candidates")
    with torch.no_grad():
        score = _objective(_batched_polynomial(coarse, _full(theta), iterations, 2.0), c0, c1)
    starts = theta[torch.argsort(score)[: _SCREEN_FACTOR * restarts]]

    # Stage 2: the landscape has many basins and the best raw candidates tend to share one, so
    # a short Adam run of _SCREEN_FACTOR x more starts, on the coarse grid, picks which
    # `restarts` are worth refining.
    screened = _refine(starts, coarse, c0, c1, iterations, max(steps // 4, 1))
    with torch.no_grad():
        score = _penalised(screened, x, w0, w1, iterations)
    # Stage 3: refine the survivors on the full grid. Adam gets close but stalls in the long,
    # narrow valleys of this objective (seeds then disagree by 2x in the objective); an L-BFGS
    # polish of each survivor converges them to the same minima.
    theta = _refine(screened[torch.argsort(score)[:restarts]], x, w0, w1, iterations, steps)
    theta = torch.cat([_polish(row[None], x, w0, w1, iterations) for row in theta])

    with torch.no_grad():
        # The (feasible) starting points stay in the running, so a restart that the penalties
        # could not keep feasible never leaves us without an answer.
        c = _full(torch.cat([theta, starts]))
        final = _objective(_batched_polynomial(x, c, iterations, None), w0, w1)
        final = torch.where(_feasible(c, x) & final.isfinite(), final, math.inf)
        best = int(torch.argmin(final))
        return c[best].tolist()


def _penalised(theta: Tensor, x: Tensor, w0: Tensor, w1: Tensor, iterations: int) -> Tensor:
    c = _full(theta)
    loss = _objective(_batched_polynomial(x, c, iterations, 2.0), w0, w1)
    return loss + _PENALTY_WEIGHT * _penalty(c, x)


def _polish(theta: Tensor, x: Tensor, w0: Tensor, w1: Tensor, iterations: int) -> Tensor:
    """L-BFGS (strong Wolfe line search) on one row ``theta`` (1, 3)."""
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [theta],
        lr=1.0,
        max_iter=_POLISH_ITERATIONS,
        tolerance_grad=1e-12,
        tolerance_change=1e-15,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        loss = _penalised(theta, x, w0, w1, iterations).sum()
        loss.backward()
        return loss

    start = theta.detach().clone()
    opt.step(closure)
    out = theta.detach()
    # A failed line search can leave NaNs behind; keep the Adam result then.
    return out if bool(out.isfinite().all()) else start


def _refine(
    theta: Tensor, x: Tensor, w0: Tensor, w1: Tensor, iterations: int, steps: int
) -> Tensor:
    """Adam with a cosine schedule on all rows of ``theta`` (R, 3) at once.

    Adam is elementwise and the loss is a sum over rows, so the rows are independent fits.
    """
    theta = theta.clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.02)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-5)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        _penalised(theta, x, w0, w1, iterations).sum().backward()
        opt.step()
        sched.step()
    return theta.detach()


# ----------------------------------------------------------------------------------------------
# Quality


def _fixed_points(coeffs: Sequence[float]) -> list[float]:
    """Fixed points of ``p`` strictly inside (0, 1), by sign changes of ``p(x) - x`` + bisection."""
    x = torch.linspace(1e-4, 1 - 1e-4, 10000, dtype=torch.float64)
    f = scalar_polynomial(x, coeffs, 1) - x
    out = []
    for i in torch.nonzero(torch.sign(f[:-1]) * torch.sign(f[1:]) < 0).flatten().tolist():
        lo, hi = float(x[i]), float(x[i + 1])
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            fm = float(scalar_polynomial(torch.tensor(mid, dtype=torch.float64), coeffs, 1)) - mid
            flo = float(scalar_polynomial(torch.tensor(lo, dtype=torch.float64), coeffs, 1)) - lo
            lo, hi = (mid, hi) if (fm < 0) == (flo < 0) else (lo, mid)
        out.append(0.5 * (lo + hi))
    return out


def measure_quality(
    coeffs: Sequence[float],
    threshold: float,
    iterations: int = DEFAULT_ITERATIONS,
    band: float = BAND_HALF_WIDTH,
) -> dict[str, Any]:
    """Errors of ``p^N`` against the step on a fine grid (step 1e-4) of ``[0, 1.1]``.

    ``max_err_one``: max ``|p^N(x) - 1|`` for ``x`` in ``[threshold + band, 1.1]``;
    ``max_err_zero``: max ``|p^N(x)|`` for ``x`` in ``[0, threshold - band]``;
    ``max_abs``: max ``|p^N(x)|`` on all of ``[0, 1.1]``; ``switch_interval``: the smallest
    interval outside which ``p^N`` is within 0.1 of the step.
    """
    x = torch.linspace(0.0, X_MAX, EVAL_GRID_POINTS, dtype=torch.float64)
    # Make sure the band edges themselves are on the grid.
    edges = torch.tensor([threshold - band, threshold + band], dtype=torch.float64)
    x = torch.cat([x, edges.clamp(0.0, X_MAX)]).sort().values
    y = scalar_polynomial(x, coeffs, iterations)
    zero = x <= threshold - band + 1e-12
    one = x >= threshold + band - 1e-12
    bad = torch.where(x < threshold, y.abs(), (y - 1).abs()) > SWITCH_TOLERANCE
    bad_x = x[bad]
    c = torch.tensor(coeffs, dtype=torch.float64)
    return {
        "max_err_one": float((y[one] - 1).abs().max()),
        "max_err_zero": float(y[zero].abs().max()) if zero.any() else 0.0,
        "max_abs": float(y.abs().max()),
        "max_abs_single_step": float(scalar_polynomial(x, coeffs, 1).abs().max()),
        "a0": float(c[0]),
        "p_prime_at_1": float(_derivative_at_one(c)),
        "fixed_points_in_0_1": _fixed_points(coeffs),
        "switch_interval": [float(bad_x.min()), float(bad_x.max())] if bad.any() else None,
    }


def build_table(
    thresholds: Sequence[float] = THRESHOLDS,
    iterations: int = DEFAULT_ITERATIONS,
    steps: int = DEFAULT_STEPS,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Fit every threshold and return the JSON payload (coefficients, settings and quality)."""
    entries = []
    start = time.perf_counter()
    for t in thresholds:
        t0 = time.perf_counter()
        coeffs = fit_coefficients(t, iterations=iterations, steps=steps, seed=seed)
        quality = measure_quality(coeffs, t, iterations)
        entries.append(
            {
                "threshold": t,
                "coefficients": coeffs,
                "quality": quality,
                "fit_seconds": round(time.perf_counter() - t0, 2),
            }
        )
        if verbose:
            print(
                f"sigma_k={t:.1f}  coeffs={[round(v, 5) for v in coeffs]}  "
                f"err_one={quality['max_err_one']:.4g}  err_zero={quality['max_err_zero']:.4g}  "
                f"({time.perf_counter() - t0:.1f}s)",
                flush=True,
            )
    return {
        **_table_settings(iterations, steps, seed, time.perf_counter() - start),
        "entries": entries,
    }


def _table_settings(iterations: int, steps: int, seed: int, seconds: float) -> dict[str, Any]:
    """Everything in the JSON payload but the entries: what the table means and how it was fit."""
    return {
        "description": (
            "Coefficients [a0, a1, a2, a3] of p(x) = a0 x + a1 x^3 + a2 x^5 + a3 x^7 such that "
            "p applied `iterations` times maps normalised singular values below the threshold "
            "to 0 and above it to 1 (W-perp-NS guess, Wang, Markou & Campbell 2025, sec. 3.2). "
            "Regenerate with `python tools/fit_newton_schulz.py`."
        ),
        "iterations": iterations,
        "degree": DEGREE,
        "grid": {
            "fit": {"start": 0.0, "stop": X_MAX, "points": FIT_GRID_POINTS},
            "evaluation": {"start": 0.0, "stop": X_MAX, "points": EVAL_GRID_POINTS},
        },
        "transition_band": {
            "kind": "absolute",
            "half_width": BAND_HALF_WIDTH,
            "definition": (
                "x in (threshold - half_width, threshold + half_width) is excluded; the zero "
                "side is [0, threshold - half_width], the one side [threshold + half_width, 1.1]"
            ),
        },
        "fitting": {
            "method": (
                "parameters (a0, a1, a2) with a3 = 1 - a0 - a1 - a2 (so p(1) = 1); a scrambled "
                "Sobol search over `candidates` points of a box, keeping only constraint-"
                "satisfying ones; the best screen_factor * restarts get steps // 4 Adam steps on "
                "a coarse grid (every 5th point); the best `restarts` get `steps` Adam steps "
                "(float64, cosine learning rate from 0.02) on the fit grid, then an L-BFGS polish "
                "(strong Wolfe, up to polish_iterations); the feasible result with the smallest "
                "objective is kept. Constraints enter as quadratic penalties (weight 1e5, "
                "margin 1e-3) and are checked exactly on the fit grid at the end."
            ),
            "objective": (
                "sum_x w(x) (p^N(x) - step(x))^2 + 10 * (sum_x w(x) |p^N(x) - step(x)|^16)^(2/16)"
                " over the fit grid without the band; each side of the band carries total "
                "weight 1/2"
            ),
            "constraints": {
                "p(1)": 1.0,
                "max_abs_a0": A0_BOUND,
                "max_abs_p_prime_at_1": DP1_BOUND,
                "max_abs_p_on_[0,1.1]": X_MAX,
            },
            "steps": steps,
            "restarts": DEFAULT_RESTARTS,
            "screen_factor": _SCREEN_FACTOR,
            "polish_iterations": _POLISH_ITERATIONS,
            "candidates": DEFAULT_CANDIDATES,
            "seed": seed,
            "switch_tolerance": SWITCH_TOLERANCE,
            "total_seconds": round(seconds, 2),
        },
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Refit every threshold and write the coefficient table (atomically)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--output", type=Path, default=COEFFICIENTS_FILE)
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    payload = build_table(iterations=args.iterations, steps=args.steps, seed=args.seed)
    write_json(args.output, payload)
    print(f"wrote {args.output} in {payload['fitting']['total_seconds']:.1f}s")


if __name__ == "__main__":
    main()
