"""The cosine of the mean of K guesses (Singhal et al. Fig. 4, left): how far averaging more
draws of a guess brings it to the true gradient, per example, in weight and activity space."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ...core.chain import chain_plan
from ...diagnostics import activity_gradients
from ...estimation import Estimator, cross_entropy_per_example
from .common import seed_of
from .maths import activity_cosine, per_example_weight_cosine


def guess_counts(max_guesses: int) -> list[int]:
    """2, 4, 8, ..., up to ``max_guesses`` (the paper's 2 ... 8192)."""
    counts, k = [], 2
    while k <= max_guesses:
        counts.append(k)
        k *= 2
    return counts


def cosine_against_guess_count(
    model: nn.Module,
    method: str,
    x: Tensor,
    y: Tensor,
    counts: Sequence[int],
    chunk: int,
    seed: int,
) -> dict[str, list[list[float]]]:
    """Per-example cosine of the mean of the first K guesses, for every K in ``counts``.

    Guesses are drawn in calls of at most ``chunk`` tangents (independent draws, summed), so
    the K-guess mean for every K comes from one growing sample. Returns, per K, the cosines of
    the examples in weight space (:func:`per_example_weight_cosine`) and in activity space.
    """
    true = activity_gradients(model, x, y, cross_entropy_per_example, chain_plan(model))
    estimators: dict[int, Estimator] = {}
    sums: list[Tensor] | None = None
    inputs: list[Tensor] = []
    drawn = 0
    weight_cos, activity_cos = [], []
    for target in sorted(counts):
        while drawn < target:
            k = min(chunk, target - drawn)
            if k not in estimators:
                estimators[k] = Estimator(
                    model, method, tangents=k, aggregate="sum", seed=seed_of(seed, k)
                )
            _, estimates, inputs = estimators[k].estimate_activity(x, y)
            sums = (
                [e.double() for e in estimates]
                if sums is None
                else [s + e.double() for s, e in zip(sums, estimates)]
            )
            drawn += k
        assert sums is not None
        weight_cos.append(per_example_weight_cosine(sums, true, inputs).tolist())
        activity_cos.append(activity_cosine(sums, true).tolist())
    return {"weight": weight_cos, "activity": activity_cos}
