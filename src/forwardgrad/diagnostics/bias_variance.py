"""Bias and variance of an estimator on one batch, as the W̃⊥ paper defines them (Eqs. 17-18)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..core.oracle import activity_gradients, weight_gradients
from .agreement import parameter_groups
from .contexts import flat
from .covariance import closed_form_covariance_factor, covariance_bias

if TYPE_CHECKING:
    from ..estimation import Estimator


class _Moments:
    """Streaming sums over draws of an error ``e_j = ĝ_j - g`` (any fixed shape)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None

    def add(self, e: Tensor) -> None:
        e = e.double()
        self.n += 1
        self.sum = e.clone() if self.sum is None else self.sum + e
        self.sumsq = e * e if self.sumsq is None else self.sumsq + e * e

    @property
    def mean(self) -> Tensor:
        return self.sum / self.n

    @property
    def var(self) -> Tensor:
        """Unbiased variance over draws, elementwise."""
        return (self.sumsq - self.n * self.mean**2).clamp_min(0) / max(self.n - 1, 1)


def _bias_stats(batch_error: _Moments, sq_error: Tensor, draws: int) -> dict[str, float]:
    """Eqs. 17-18 from the draws: bias vector beta = E[error], mse vector m; the vectors are
    over units (activity) or parameter entries (weight)."""
    beta = batch_error.mean
    mse = sq_error / draws
    return {
        "bias": float(beta.norm()),
        "variance": float((mse - beta**2).norm()),
        "bias_se": float((batch_error.var.sum() / draws).sqrt()),
        "mse": float(mse.sum()),
    }


def _combine(rows: list[dict]) -> dict[str, float]:
    """Global numbers from per-layer ones: the vectors concatenate, so norms add in squares."""
    return {
        "bias": math.sqrt(sum(r["bias"] ** 2 for r in rows)),
        "variance": math.sqrt(sum(r["variance"] ** 2 for r in rows)),
        "bias_se": math.sqrt(sum(r["bias_se"] ** 2 for r in rows)),
        "mse": sum(r["mse"] for r in rows),
    }


def bias_variance(
    estimator: Estimator, x: Tensor, targets: Tensor, draws: int = 100, space: str = "auto"
) -> dict:
    """Bias and variance of an estimator on one batch, from ``draws`` independent estimates.

    Each draw is one call of the estimator (``estimate_activity`` in activity space, ``estimate``
    in weight space), so a k-tangent estimator is measured as it trains. Advances its generator.

    Activity space (the W̃⊥ paper's definition, per site i, g_b the true ``dl_b/ds_i`` of
    example b's own loss; the authors' code divides each example's loss by B, so its bias and
    its variance come out B and B^2 times smaller than these):

    * ``bias`` (Eq. 17) ``= ||beta||_2`` with ``beta = (1/B) sum_b (E[ĝ_b] - g_b)``, a vector
      over the units, **averaged over the examples before the norm**; E is the mean over draws
      (the paper uses the closed form ``(Cov - I) g_b``, reported as ``bias_closed_form`` where
      known);
    * ``variance`` (Eq. 18) ``= ||m - beta^2||_2`` with ``m = (1/B) sum_b E[(ĝ_b - g_b)^2]``, the
      elementwise MSE averaged over the examples, and ``beta^2`` elementwise;
    * ``bias_se``: the standard error of the measured ``beta`` (its Monte-Carlo noise floor,
      shrinking like 1/sqrt(draws)); a bias well above it is real;
    * ``mse``: ``sum(m)``; per example (not batch-averaged before the norm):
      ``bias_per_example = mean_b ||E[ĝ_b] - g_b||`` and
      ``variance_per_example = mean_b sum_units Var(ĝ_b)``; ``grad_norm = ||(1/B) sum_b g_b||``.

    Weight space (any guess; per parameter tensor under ``params``, per layer with the weight and
    bias entries together): the same formulas without the example axis, over the entries of the
    batch's gradient g: ``bias = ||E[ĝ] - g||``, ``variance = ||E[(ĝ - g)^2] - (E[ĝ] - g)^2||``,
    ``grad_norm = ||g||``.

    Args:
        space: ``activity``, ``weight`` or ``auto`` (activity for activity-space guesses).

    Returns:
        ``{"space", "draws", "bias", "variance", "bias_se", "mse", "layers": [per layer]}``.
    """
    if draws < 2:
        raise ValueError(f"bias_variance needs draws >= 2 to measure a variance; got {draws}")
    spaces = ("auto", "activity", "weight")
    if space not in spaces:
        raise ValueError(f"unknown space {space!r}; choose one of {list(spaces)}")
    if space == "auto":
        space = "activity" if estimator.guess.space == "activity" else "weight"
    if space == "activity":
        if estimator.guess.space != "activity":
            raise ValueError(
                f"guess {estimator.guess_name!r} is not an activity-space guess; use space='weight'"
            )
        return _activity_bias_variance(estimator, x, targets, draws)
    return _weight_bias_variance(estimator, x, targets, draws)


def _activity_bias_variance(estimator: Estimator, x: Tensor, targets: Tensor, draws: int) -> dict:
    engine = estimator.engine_for(x, targets)
    true = [
        flat(g).double()
        for g in activity_gradients(estimator.model, x, targets, estimator.loss_fn, engine.sites)
    ]
    batch_error = [_Moments() for _ in true]
    example_error = [_Moments() for _ in true]
    sq_error = [torch.zeros(g.shape[-1], dtype=torch.float64) for g in true]
    for _ in range(draws):
        _, estimates, _ = estimator.estimate_activity(x, targets)
        for i, (est, g) in enumerate(zip(estimates, true)):
            err = flat(est).double() - g  # (B, d)
            batch_error[i].add(err.mean(0))
            example_error[i].add(err)
            sq_error[i] += (err**2).mean(0)
    factors = closed_form_covariance_factor(estimator, x, targets)
    layers = []
    for i, g in enumerate(true):
        row: dict = {"layer": i, "name": engine.layout.keys[i], "width": engine.layout.widths[i]}
        row.update(_bias_stats(batch_error[i], sq_error[i], draws))
        ex = example_error[i]
        row["bias_closed_form"] = None if factors[i] is None else covariance_bias(factors[i], g)
        row["bias_per_example"] = float(ex.mean.norm(dim=-1).mean())
        row["variance_per_example"] = float(ex.var.sum(-1).mean())
        row["grad_norm"] = float(g.mean(0).norm())
        layers.append(row)
    return {"space": "activity", "draws": draws, **_combine(layers), "layers": layers}


def _weight_bias_variance(estimator: Estimator, x: Tensor, targets: Tensor, draws: int) -> dict:
    _, true = weight_gradients(estimator.model, x, targets, estimator.loss_fn)
    params = list(true)
    error = {p: _Moments() for p in params}
    sq_error = {p: torch.zeros_like(true[p], dtype=torch.float64) for p in params}
    for _ in range(draws):
        _, est = estimator.estimate(x, targets)
        for p in params:
            err = est[p].double() - true[p].double()
            error[p].add(err)
            sq_error[p] += err**2
    layers = []
    for group in parameter_groups(estimator.model, true):
        kinds = list(group["params"].items())
        per_param = {kind: _bias_stats(error[p], sq_error[p], draws) for kind, p in kinds}
        row: dict = {"layer": group["layer"], "name": group["name"], "shape": group["shape"]}
        row.update(_combine(list(per_param.values())))
        row["grad_norm"] = float(torch.cat([true[p].double().flatten() for _, p in kinds]).norm())
        row["params"] = per_param
        layers.append(row)
    return {"space": "weight", "draws": draws, **_combine(layers), "layers": layers}
