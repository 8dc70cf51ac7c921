"""The closed-form simulation behind ``tangents-quality`` (Fig. 3) and ``tangents-angle``
(Fig. 5).

A fixed "true gradient" g in R^n, k tangents per draw, the k directional derivatives
d_j = <g, v_j> computed exactly (as the paper does, no network), the estimate from
:func:`forwardgrad.core.aggregate.aggregate`, and its cosine similarity to g and relative norm
||g_hat|| / ||g|| per draw, pooled over seeds.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...core.aggregate import DependentTangentsWarning, aggregate
from ...core.samplers import sample_tangents
from ..report import ExperimentResult, Plot, Row, Tolerance, describe_sample

# Sum and mean of the same tangents differ by the factor k, so they share one cosine; the
# projection depends only on span(V), so it is the same for raw and unit tangents.
VARIANTS = ("projection", "sum/raw", "mean/raw", "sum/unit", "mean/unit")
METRICS = ("cosine", "relative_norm")

# Draws are simulated in chunks of at most this many tangent entries (k * draws * n floats).
CHUNK_ELEMENTS = 1 << 21

# MC means against exact expectations: many rows are checked, so 4 standard errors keep the
# chance of a false 'no' across a whole table below a few percent; 1e-5 covers float32 rounding
# where the estimate is exact (projection with k >= n).
THEORY_TOLERANCE = Tolerance(
    absolute=1e-5,
    standard_errors=4.0,
    why="Monte-Carlo mean against an exact expectation; 1e-5 for float32 rounding",
)


def _generator(seed: int, *cell: int) -> torch.Generator:
    """A generator for one (seed, cell): a cell's draws do not depend on the rest of the grid."""
    state = np.random.SeedSequence([seed, *cell]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _metrics(estimate: Tensor, gradient: Tensor) -> tuple[Tensor, Tensor]:
    est, g = estimate.double(), gradient.double()
    norm = est.norm(dim=-1)
    return (est @ g) / (norm * g.norm()), norm / g.norm()


def _project(tangents: Tensor, jvps: Tensor) -> tuple[Tensor, bool]:
    """The projection estimate, and whether the aggregation flagged dependent tangents."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DependentTangentsWarning)
        estimate = aggregate("projection", tangents, jvps)
    dependent = False
    for w in caught:
        if issubclass(w.category, DependentTangentsWarning):
            dependent = True
        else:  # not ours to swallow
            warnings.warn(w.message, w.category, stacklevel=2)
    return estimate, dependent


@dataclass
class CellDraws:
    """Per-draw metrics of one cell, and what the projection's rank test did."""

    values: dict[str, dict[str, np.ndarray]]  # variant -> metric -> (draws,)
    dependent_chunks: int  # chunks in which the projection warned of dependent tangents
    # k >= n only: cosines of the draws whose projection missed g, solved again with float64
    # tangents (the same float32 JVPs), so that no direction is dropped.
    resolved_cosines: list[float]


def simulate_cell(
    sampler: str,
    k: int,
    n: int,
    draws: int,
    gradient: Tensor,
    generator: torch.Generator,
    **sampler_options: float,
) -> CellDraws:
    """Per-draw cosine and relative norm of every variant for k tangents in R^n.

    All variants see the same tangents. The projection with k > n uses the first n tangents
    (they span R^n almost surely, so the estimate is g; the paper's code does the same).
    """
    values: dict[str, dict[str, list[Tensor]]] = {v: {m: [] for m in METRICS} for v in VARIANTS}
    dependent_chunks = 0
    resolved: list[float] = []
    chunk = max(1, min(draws, CHUNK_ELEMENTS // (k * n)))
    for start in range(0, draws, chunk):
        size = min(chunk, draws - start)
        raw = sample_tangents(sampler, k, (size,), n, generator, **sampler_options)
        unit = raw / raw.norm(dim=-1, keepdim=True)
        basis = raw[:n] if k > n else raw
        basis_jvps = basis @ gradient
        projection, dependent = _project(basis, basis_jvps)
        dependent_chunks += dependent
        estimates = {
            "projection": projection,
            "sum/raw": aggregate("sum", raw, raw @ gradient),
            "mean/raw": aggregate("mean", raw, raw @ gradient),
            "sum/unit": aggregate("sum", unit, unit @ gradient),
            "mean/unit": aggregate("mean", unit, unit @ gradient),
        }
        for variant, estimate in estimates.items():
            cosine, relative_norm = _metrics(estimate, gradient)
            values[variant]["cosine"].append(cosine)
            values[variant]["relative_norm"].append(relative_norm)
        missed = values["projection"]["cosine"][-1] < 1 - 1e-6
        if k >= n and bool(missed.any()):
            # float64 tangents give the rank test float64's tolerance, so nothing is dropped.
            again, _ = _project(basis[:, missed].double(), basis_jvps[:, missed].double())
            resolved += _metrics(again, gradient)[0].tolist()
    arrays = {
        v: {m: torch.cat(parts).numpy() for m, parts in per.items()} for v, per in values.items()
    }
    return CellDraws(arrays, dependent_chunks, resolved)


def run_grid(
    sampler: str,
    cells: Sequence[dict[str, Any]],
    n: int,
    draws: int,
    seeds: Sequence[int],
    progress: bool,
) -> list[dict[str, Any]]:
    """Simulate every cell (``{"k": .., **sampler options}``) for every seed; pooled summaries.

    Returns one record per (cell, variant, metric) with the pooled summary over all seeds'
    draws and each seed's own mean.
    """
    from tqdm import tqdm

    gradient = torch.ones(n)
    bar = tqdm(total=len(cells) * len(seeds), disable=not progress, desc=sampler, leave=False)
    records = []
    for cell in cells:
        options = {key: value for key, value in cell.items() if key != "k"}
        cell_ints = [cell["k"], *(round(1000 * float(v)) for v in options.values())]
        per_seed = []
        for seed in seeds:
            generator = _generator(seed, *cell_ints)
            per_seed.append(
                simulate_cell(sampler, cell["k"], n, draws, gradient, generator, **options)
            )
            bar.update()
        for variant in VARIANTS:
            for metric in METRICS:
                pooled = np.concatenate([s.values[variant][metric] for s in per_seed])
                record = {
                    **cell,
                    "variant": variant,
                    "metric": metric,
                    **describe_sample(pooled),
                    "per_seed_mean": [float(s.values[variant][metric].mean()) for s in per_seed],
                }
                if variant == "projection" and metric == "cosine":
                    record["dependent_warning_chunks"] = sum(s.dependent_chunks for s in per_seed)
                    if cell["k"] >= n:
                        # The projection should return g itself here; count the draws where not.
                        record["draws_below_one"] = int((pooled < 1 - 1e-6).sum())
                        record["below_one_resolved_in_float64"] = [
                            c for s in per_seed for c in s.resolved_cosines
                        ]
                records.append(record)
    bar.close()
    return records


def find_cell(records: Iterable[dict[str, Any]], **match: Any) -> dict[str, Any]:
    """The first record whose fields equal ``match`` (a KeyError when none does)."""
    for record in records:
        if all(record.get(key) == value for key, value in match.items()):
            return record
    raise KeyError(match)


def exactness_notes(records: list[dict[str, Any]], n: int, draws: int) -> list[str]:
    """Say how often the projection with k >= n failed to return g, and why."""
    if not records:
        return []
    below = sum(r["draws_below_one"] for r in records)
    worst = min(r["min"] for r in records)
    total = draws * len(records)
    if not below:
        return [
            f"Projection with k ≥ n: all {total} draws returned g (smallest cosine {worst:.8f})."
        ]
    resolved = [c for r in records for c in r["below_one_resolved_in_float64"]]
    return [
        f"Projection with k ≥ n: {below} of {total} draws did not return g (smallest cosine "
        f"{worst:.4f}; the largest shift of a mean is "
        f"{max(1 - r['mean'] for r in records):.1e}). Their tangent sets are full-rank but badly "
        f"conditioned: σ_min/σ_max fell below the rank tolerance max(k, n) · ε_float32 ≈ "
        f"{n * torch.finfo(torch.float32).eps:.1e} (numpy's matrix_rank rule) that "
        "`aggregate.py` applies to float32 tangents, so the projection dropped the weakest "
        "direction (with a DependentTangentsWarning). Solved again with float64 tangents and the "
        f"same float32 JVPs, those draws give cosines {min(resolved):.6f} to "
        f"{max(resolved):.6f}: the tolerance is conservative for well-scaled exact JVPs. These "
        "numbers are the library's behaviour as it stands."
    ]


def paper_seeds(seeds: int | None) -> list[int]:
    """Seeds 0 … seeds - 1; one by default, as the paper draws all samples from one generator
    seeded 0."""
    return list(range(seeds if seeds is not None else 1))


def closed_form_result(
    budget: str,
    seeds: list[int],
    settings: dict[str, Any],
    records: list[dict[str, Any]],
    rows: list[Row],
    scaling: str | None,
    theory: list[str],
    notes: list[str],
    plots: list[Plot],
) -> ExperimentResult:
    """A simulated experiment's result: the paper prints no numbers, and every row with an
    exact expectation is checked against it."""
    return ExperimentResult(
        budget=budget,
        seeds=seeds,
        settings=settings,
        rows=rows,
        raw={"cells": records},
        paper_tolerance=None,
        theory_tolerance=THEORY_TOLERANCE,
        scaling=scaling,
        theory=theory,
        notes=notes,
        plots=plots,
    )
