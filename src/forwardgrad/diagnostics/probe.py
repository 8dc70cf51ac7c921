"""``probe``: an estimator against the backprop oracle on one batch, the cheap measurements
always and the expensive ones on request (what ``forwardgrad probe`` and ``--probe-every``
print and log)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from torch import Tensor, nn

from ..core.context import LossFn
from ..core.oracle import weight_gradients
from ..core.sites import ModelNotSupportedError
from .agreement import gradient_agreement
from .bias_variance import bias_variance
from .covariance import tangent_covariance
from .one_step import DEFAULT_STEP_SIZES, one_step_effectiveness
from .spectra import jacobian_spectra, overlap_curves, weight_effective_ranks

if TYPE_CHECKING:
    from ..estimation import Estimator

# Extra measurements probe() runs on request. The estimator ones depend on the guess; the model
# ones only on the model and the batch.
ESTIMATOR_EXTRAS: tuple[str, ...] = ("bias_variance", "covariance", "one_step")
MODEL_EXTRAS: tuple[str, ...] = ("overlap", "effective_rank", "jacobian")
PROBE_EXTRAS: tuple[str, ...] = ESTIMATOR_EXTRAS + MODEL_EXTRAS


def _check_extras(extras: Iterable[str]) -> list[str]:
    chosen = list(extras)
    if "all" in chosen:
        return list(PROBE_EXTRAS)
    bad = [e for e in chosen if e not in PROBE_EXTRAS]
    if bad:
        raise ValueError(f"unknown probe measurement(s) {bad}; choose from {list(PROBE_EXTRAS)}")
    return chosen


def probe_model(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    extras: Iterable[str] = MODEL_EXTRAS,
    *,
    max_examples: int | None = 64,
    jacobian_layers: Iterable[int] = (1, 2, 3, 4),
) -> dict:
    """The estimator-independent measurements among ``extras`` (overlap, effective_rank,
    jacobian). Measurements the model's structure does not allow are listed under
    ``"skipped"`` with the reason instead of failing the probe."""
    chosen = [e for e in _check_extras(extras) if e in MODEL_EXTRAS]
    out: dict = {}
    skipped: dict[str, str] = {}
    for name in chosen:
        try:
            if name == "overlap":
                out[name] = overlap_curves(model, x, targets, loss_fn, None, max_examples)
            elif name == "effective_rank":
                out[name] = weight_effective_ranks(model)
            elif name == "jacobian":
                out[name] = jacobian_spectra(model, x, jacobian_layers, None, max_examples)
        except ModelNotSupportedError as e:
            skipped[name] = str(e)
    if skipped:
        out["skipped"] = skipped
    return out


def probe(
    model: nn.Module,
    estimator: Estimator,
    x: Tensor,
    targets: Tensor,
    *,
    extras: Iterable[str] = (),
    draws: int = 1,
    variance_draws: int = 100,
    covariance_draws: int = 1000,
    max_examples: int | None = 64,
    step_sizes: Sequence[float] = DEFAULT_STEP_SIZES,
    jacobian_layers: Iterable[int] = (1, 2, 3, 4),
) -> dict:
    """Compare an estimator with the backprop oracle on one batch.

    Always (cheap: ``draws`` estimates and one backward pass): the batch's mean ``loss`` and
    :func:`gradient_agreement` of the weight-gradient estimate (``cosine``, ``rel_norm`` and
    ``layers``), averaged over ``draws`` estimates (with ``cosine_std`` when draws > 1).

    On request, ``extras`` names any of :data:`PROBE_EXTRAS` (or ``"all"``), each stored under
    its name: ``bias_variance`` (:func:`bias_variance`, ``variance_draws`` estimates),
    ``covariance`` (:func:`tangent_covariance`, ``covariance_draws`` tangents), ``one_step``
    (:func:`one_step_effectiveness`, ``draws`` estimates), and the model measurements of
    :func:`probe_model`. A measurement the guess or model does not allow is listed under
    ``"skipped"`` with the reason.

    The estimator's generator advances; give a training run's probe its own estimator so probing
    does not change the training trajectory.
    """
    if estimator.model is not model:
        raise ValueError("the estimator was built for a different model")
    if draws < 1:
        raise ValueError(f"draws must be >= 1; got {draws}")
    chosen = _check_extras(extras)
    loss, true = weight_gradients(model, x, targets, estimator.loss_fn)
    runs = []
    for _ in range(draws):
        _, est = estimator.estimate(x, targets)
        runs.append(gradient_agreement(model, est, true))
    out: dict = {
        "guess": estimator.guess_name,
        "tangents": estimator.num_tangents,
        "aggregate": estimator.aggregation,
        "examples": int(x.shape[0]),
        "loss": loss,
        **_mean_agreement(runs),
    }
    skipped: dict[str, str] = {}
    if "bias_variance" in chosen:
        out["bias_variance"] = bias_variance(estimator, x, targets, variance_draws)
    if "covariance" in chosen:
        if estimator.guess.space == "activity":
            out["covariance"] = tangent_covariance(
                estimator, x, targets, covariance_draws, max_examples
            )
        else:
            skipped["covariance"] = (
                f"guess {estimator.guess_name!r} has no per-site activity tangents"
            )
    if "one_step" in chosen:
        out["one_step"] = one_step_effectiveness(model, estimator, x, targets, step_sizes, draws)
    model_part = probe_model(
        model,
        x,
        targets,
        estimator.loss_fn,
        [e for e in chosen if e in MODEL_EXTRAS],
        max_examples=max_examples,
        jacobian_layers=jacobian_layers,
    )
    skipped.update(model_part.pop("skipped", {}))
    out.update(model_part)
    if skipped:
        out["skipped"] = skipped
    return out


def _mean_agreement(runs: list[dict]) -> dict:
    """Average the agreement dicts of several draws (per layer and parameter too)."""

    def mean(values: list) -> float | None:
        vals = [v for v in values if v is not None]
        return sum(vals) / len(vals) if vals else None

    first = runs[0]
    out: dict = {
        "cosine": mean([r["cosine"] for r in runs]),
        "rel_norm": mean([r["rel_norm"] for r in runs]),
    }
    if len(runs) > 1:
        c = [r["cosine"] for r in runs]
        m = out["cosine"]
        out["cosine_std"] = math.sqrt(sum((v - m) ** 2 for v in c) / (len(c) - 1))
    layers = []
    for j, layer in enumerate(first["layers"]):
        row = {"layer": layer["layer"], "name": layer["name"], "shape": layer["shape"]}
        for key in ("cosine", "rel_norm"):
            row[key] = mean([r["layers"][j][key] for r in runs])
        row["params"] = {
            kind: {
                key: mean([r["layers"][j]["params"][kind][key] for r in runs])
                for key in ("cosine", "rel_norm")
            }
            for kind in layer["params"]
        }
        layers.append(row)
    out["layers"] = layers
    return out
