"""Measurements along a training trajectory (Table 2, Table 5, Fig. 1), and their rows.

A trajectory trains in segments (:func:`~forwardgrad.training.measured.measured_run`): the run's
model is measured at each of the budget's epochs, and the measurements are cached beside the run
(``measurements-*.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ...data import Dataset
from ...diagnostics import (
    bias_variance,
    closed_form_covariance_factor,
    factor_covariance_distance,
    overlap_curves,
)
from ...estimation import cross_entropy_per_example
from ...stats import finite_mean_and_se
from ...training.config import TrainConfig
from ...training.measured import measured_run
from ...training.train import build_estimator, probe_batch
from ..report import Row
from .common import Budget, Contender, count, labels_and_order, paper_scale, specs
from .training import config, dataset, run_dir, run_record, slug

BIAS_LAYER = 1  # Table 5 names layer 1; Table 2 names none

MEASUREMENT_NOTES = [
    "Each method is measured on its own training trajectory (the paper ascribes W̃⊥'s lower "
    "bias to the gradients along its trajectory), at the epochs `measured_epochs`, on one fixed "
    "batch of `examples` training examples; the rows take the last epoch (the paper does not "
    "say when it measured; the plot shows the whole trajectory).",
    "Bias is Eq. 17 in closed form, ‖mean_b (C_b − I) g_b‖ with C_b the tangent law's second "
    "moment, as the paper computes it (its Monte-Carlo estimate from the draws, far noisier, is "
    "in results.json). Variance is Eq. 18 from `draws` estimates on that batch: ‖mean over "
    "draws and examples of (ĝ_b − g_b)² − β²‖, β the measured mean error.",
    "Normalisation: the paper's code divides each example's loss by the batch size B, so its "
    "gradients are B times smaller than per-example ones; the rows are in its convention "
    "(bias / B, variance / B², with B the measured batch). ‖Cov − I‖_F / d is its code's "
    "d-normalised norm, averaged over the batch.",
]


def shared_trajectory(
    cfg: TrainConfig,
    path: Path,
    data: Dataset,
    points: Sequence[int],
    tag: str,
    measure: Callable[[nn.Module], dict],
    progress: bool,
) -> tuple[dict, dict[int, dict]]:
    """The run measured at ``points`` (cached as ``measurements-<tag>.json``), its measured
    epochs' checkpoints kept, so that every experiment sharing the run measures its own."""
    return measured_run(
        cfg,
        path,
        data,
        points,
        lambda model, epoch: measure(model),
        cache=f"measurements-{tag}.json",
        keep_snapshots=True,
        progress=progress,
    )


def measure_estimator(
    model: nn.Module,
    contender: Contender,
    width: int,
    x: Tensor,
    y: Tensor,
    draws: int,
    seed: int,
) -> dict:
    """Eqs. 17-18 and the covariance norm of ``contender``'s estimator at every site of ``model``.

    Per site: ``bias_eq17`` (the closed form ``||mean_b (C_b - I) g_b||`` where the tangent law
    is known, as the paper computes it; else the Monte-Carlo bias), ``variance`` (Eq. 18 from
    ``draws`` estimates on the batch), both per example's own loss, and ``cov_norm`` =
    ``mean_b ||C_b - I||_F / d`` (the paper's Table 2 normalisation).
    """
    cfg = config(contender, width, 1, seed)
    estimator = build_estimator(cfg, model)
    stats = bias_variance(estimator, x, y, draws)
    factors = closed_form_covariance_factor(estimator, x, y)
    layers = []
    for row, factor in zip(stats["layers"], factors):
        d = row["width"]
        closed = row["bias_closed_form"]
        cov = None if factor is None else float(factor_covariance_distance(factor).mean()) / d
        layers.append(
            {
                "layer": row["layer"] + 1,  # the paper counts layers from 1
                "width": d,
                "bias_eq17": closed if closed is not None else row["bias"],
                "bias_closed_form": closed is not None,
                "bias_monte_carlo": row["bias"],
                "bias_monte_carlo_se": row["bias_se"],
                "variance": row["variance"],
                "cov_norm": cov,
                "grad_norm": row["grad_norm"],
            }
        )
    return {"draws": draws, "examples": int(x.shape[0]), "layers": layers}


def measure_overlap(model: nn.Module, x: Tensor, y: Tensor) -> dict:
    """Fig. 1's curves: overlap of ``dl_b/ds_i`` with the top-k right singular subspace."""
    curves = overlap_curves(model, x, y, cross_entropy_per_example)
    return {"layers": [{**c, "layer": c["layer"] + 1} for c in curves]}


def layer_row(measurement: dict, layer: int) -> dict:
    """One layer's entry of a measurement (layers counted from 1, as the paper does)."""
    return next(m for m in measurement["layers"] if m["layer"] == layer)


def trajectory_runs(
    contenders: Sequence[Contender],
    width: int,
    seeds: Sequence[int],
    budget: Budget,
    out_dir: Path,
    progress: bool,
    measured_as: dict[str, Contender] | None = None,
) -> tuple[list[dict], list[dict]]:
    """Train every contender with its estimator's bias and variance measured along the way.

    ``measured_as`` maps a contender key to the estimator measured on its trajectory where that is
    not the trained one (W̃⊥ trained with the randomized solver is measured with exact SVD).
    Returns the run records and one measurement record per (contender, seed, epoch).
    """
    data = dataset(budget)
    records, measurements = [], []
    for contender in contenders:
        measured = (measured_as or {}).get(contender.key, contender)
        tag = slug(f"{measured.spec}-d{budget.draws}-n{budget.examples}")
        for seed in seeds:
            cfg = config(contender, width, budget.epochs, seed)
            path = run_dir(out_dir, contender, width, seed)
            x, y = probe_batch(data, budget.examples, seed)

            def measure(
                model: nn.Module,
                measured: Contender = measured,
                x: Tensor = x,
                y: Tensor = y,
                seed: int = seed,
            ) -> dict:
                return measure_estimator(model, measured, width, x, y, budget.draws, seed + 1000)

            summary, points = shared_trajectory(
                cfg, path, data, budget.points, tag, measure, progress
            )
            records.append(run_record(contender, width, seed, summary, path))
            for epoch, m in points.items():
                measurements.append(
                    {
                        "method": contender.key,
                        "measured_as": measured.spec,
                        "seed": seed,
                        "epoch": epoch,
                        **m,
                    }
                )
    return records, measurements


def measurement_rows(
    group: str,
    contender: Contender,
    measurements: Sequence[dict],
    layer: int,
    epoch: int,
    paper: dict[str, float] | None,
    quantities: Sequence[str] = ("variance", "bias", "cov_norm"),
    theory: dict[str, float | None] | None = None,
) -> list[Row]:
    """One row per quantity for ``contender`` at ``layer`` and ``epoch``, mean over seeds, in
    the paper's normalisation (bias / B, variance / B²; the covariance norm as it is)."""
    values: dict[str, list[float | None]] = {q: [] for q in quantities}
    for m in measurements:
        if m["method"] != contender.key or m["epoch"] != epoch:
            continue
        row = layer_row(m, layer)
        bias, variance = paper_scale(row["bias_eq17"], row["variance"], m["examples"])
        scaled = {"bias": bias, "variance": variance, "cov_norm": row["cov_norm"]}
        for q in quantities:
            values[q].append(scaled[q])
    names = {
        "variance": "variance (Eq. 18)",
        "bias": "bias (Eq. 17)",
        "cov_norm": "‖Cov − I‖_F / d",
    }
    rows = []
    for q in quantities:
        mean, se = finite_mean_and_se(values[q])
        rows.append(
            Row(
                group,
                {"method": contender.label, "quantity": names[q]},
                ours=mean,
                ours_se=se,
                paper=None if paper is None else paper.get(q),
                theory=None if theory is None else theory.get(q),
            )
        )
    return rows


def final_point(budget: Budget) -> int:
    """The last measured epoch the budget trains to: the epoch the rows report."""
    return max(p for p in budget.points if p <= budget.epochs)


def trajectory_series(
    measurements: Sequence[dict], key: str, layer: int, quantity: str
) -> tuple[list[int], list[float]]:
    """Mean over seeds of one quantity (paper's normalisation) at every measured epoch of the
    contender ``key``."""
    by_epoch: dict[int, list[float]] = {}
    for m in measurements:
        if m["method"] != key:
            continue
        row = layer_row(m, layer)
        bias, variance = paper_scale(row["bias_eq17"], row["variance"], m["examples"])
        by_epoch.setdefault(m["epoch"], []).append(bias if quantity == "bias" else variance)
    epochs = sorted(by_epoch)
    return epochs, [finite_mean_and_se(by_epoch[e])[0] for e in epochs]


def trajectory_settings(
    budget: Budget, width: int, final: int, contenders: Sequence[Contender]
) -> dict[str, Any]:
    """The settings of an experiment measured along trajectories (Tables 2 and 5)."""
    return {
        "width": width,
        "measured_layer": BIAS_LAYER,
        "measured_epochs": list(budget.points),
        "final_epoch": final,
        "draws": budget.draws,
        "examples": budget.examples,
        "methods": specs(contenders),
    }


def trajectory_raw(
    records: list[dict], measurements: list[dict], contenders: Sequence[Contender]
) -> dict[str, Any]:
    """The raw numbers of such an experiment: runs, measurements, labels and order."""
    return {"runs": records, "measurements": measurements, **labels_and_order(contenders)}


def trajectory_scale(budget: Budget, width: int) -> str:
    """What such an experiment ran, for the smoke note."""
    return (
        f"width {width}, {count(budget.epochs, 'epoch')}, "
        f"{budget.draws} draws on {budget.examples} examples"
    )
