"""1-step effectiveness (Singhal et al. 2023): the loss decrease of one step along an estimate,
relative to backprop's, each at its best step size, without modifying the model."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..core.context import LossFn
from ..core.oracle import weight_gradients

if TYPE_CHECKING:
    from ..estimation import Estimator

# The step sizes of Singhal et al.'s 1-step effectiveness search.
DEFAULT_STEP_SIZES: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


def _losses_after_step(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    direction: dict[nn.Parameter, Tensor],
    step_sizes: Sequence[float],
) -> list[float]:
    """Mean loss at ``theta - lr * direction`` for every lr, evaluated functionally: the model's
    own parameters are never written."""
    named = list(model.named_parameters())
    out = []
    with torch.no_grad():
        for lr in step_sizes:
            params = {name: p - lr * direction[p] if p in direction else p for name, p in named}
            out.append(float(loss_fn(functional_call(model, params, (x,)), targets).mean()))
    return out


def one_step_effectiveness(
    model: nn.Module,
    estimator: Estimator,
    x: Tensor,
    targets: Tensor,
    step_sizes: Sequence[float] = DEFAULT_STEP_SIZES,
    draws: int = 1,
) -> dict:
    """Loss decrease of one plain SGD step along the estimate, relative to backprop's.

    For each of ``draws`` estimates ĝ and for the true gradient g, the step ``theta - lr * ĝ`` is
    tried at every step size and the largest decrease of the batch's mean loss is kept (Singhal
    et al. 2023: "the ratio of loss reduction due to the method's guess compared to backprop's",
    each at its best step size). The effectiveness is ``best decrease(ĝ) / best decrease(g)``:
    1 for backprop, negative when every step along the estimate raises the loss, and above 1
    when an estimate longer than the gradient gains from the grid's coarseness. The model is
    evaluated functionally, so its parameters and ``.grad`` are untouched.

    Returns ``{"step_sizes", "loss", "backprop_decrease", "backprop_step", "decrease",
    "effectiveness", "effectiveness_std", "best_steps", "draws"}`` (``effectiveness`` None when
    backprop itself cannot lower the loss on this grid).
    """
    if not step_sizes or any(not (lr > 0) for lr in step_sizes):
        raise ValueError(f"step sizes must be positive numbers, at least one; got {step_sizes}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1; got {draws}")
    if estimator.model is not model:
        raise ValueError("the estimator was built for a different model")
    loss_fn = estimator.loss_fn
    loss0, true = weight_gradients(model, x, targets, loss_fn)
    bp = [loss0 - v for v in _losses_after_step(model, x, targets, loss_fn, true, step_sizes)]
    bp_best = max(bp)
    decreases, steps = [], []
    for _ in range(draws):
        _, est = estimator.estimate(x, targets)
        dec = [loss0 - v for v in _losses_after_step(model, x, targets, loss_fn, est, step_sizes)]
        best = max(range(len(dec)), key=dec.__getitem__)
        decreases.append(dec[best])
        steps.append(step_sizes[best])
    ratios = [d / bp_best for d in decreases] if bp_best > 0 else None
    mean_ratio = sum(ratios) / len(ratios) if ratios else None
    std = (
        math.sqrt(sum((r - mean_ratio) ** 2 for r in ratios) / (len(ratios) - 1))
        if ratios and len(ratios) > 1
        else None
    )
    return {
        "step_sizes": list(step_sizes),
        "loss": loss0,
        "backprop_decrease": bp_best,
        "backprop_step": step_sizes[bp.index(bp_best)],
        "decrease": sum(decreases) / len(decreases),
        "effectiveness": mean_ratio,
        "effectiveness_std": std,
        "best_steps": steps,
        "draws": draws,
    }
