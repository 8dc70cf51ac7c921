"""The orderings the multi-tangent paper states for its §4.5 networks, checked on our runs.

The paper publishes no accuracy for ResNet-18 or the ViT; it states three orderings, which are
checked per model on the final training loss (the claims are about optimisation):

* the projection (FROG) is at least as good as the mean at equal k, for every k > 1 run;
* more tangents are better, for the mean and for the projection separately (every step from one
  k to the next larger one);
* backprop is above every forward gradient.

A comparison "A above B" is *held* when A's final training loss (the mean over seeds) is at
most B's. With several seeds it is also called *clear* when the gap exceeds
:data:`CLEAR_STANDARD_ERRORS` standard errors of the difference. A run that diverged counts as
the worst loss. An ordering is held when every one of its comparisons is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..report import Row
from .common import find_record

CLEAR_STANDARD_ERRORS = 2.0

PROJECTION_VS_MEAN = "projection ≥ mean at equal k"
MORE_TANGENTS = "{method}: better with more tangents"
BACKPROP_FIRST = "backprop above all forward gradients"

MODEL_NAMES = {"resnet18": "ResNet-18", "vit": "ViT"}


def held_criterion() -> str:
    return (
        "Criterion for the orderings: 'A above B' is held when A's final training loss (mean "
        "over seeds) is at most B's; with several seeds a gap beyond "
        f"{CLEAR_STANDARD_ERRORS:g} standard errors of the difference is called clear, a smaller "
        "one within seed noise. A diverged run counts as the worst loss. An ordering is held "
        "when all its comparisons are (projection ≥ mean: at every k > 1 run; more tangents: "
        "at every step to the next larger k; backprop: against every forward gradient)."
    )


def claim_label(method: str, k: int | None) -> str:
    """``mean k=4``: how a comparison names a method."""
    return method if k is None else f"{method} k={k}"


def claim_loss(record: dict[str, Any]) -> tuple[float, float | None]:
    """The final training loss a claim compares, and its standard error (None: one seed)."""
    if record["diverged"]:
        return math.inf, None
    return record["train_loss"]["mean"], record["train_loss"]["se"]


def compare(better: dict[str, Any], worse: dict[str, Any]) -> dict[str, Any]:
    """Whether ``better`` is at least as good as ``worse`` in final training loss."""
    a, se_a = claim_loss(better)
    b, se_b = claim_loss(worse)
    if math.isinf(a) or math.isinf(b) or math.isnan(a) or math.isnan(b):
        # Only a finite loss beats a diverged (or missing) run.
        held = math.isfinite(a) and not math.isfinite(b)
        difference, se = math.nan, None
    else:
        difference = a - b
        held = difference <= 0.0
        se = math.hypot(se_a, se_b) if se_a is not None and se_b is not None else None
    clear = None if se is None else abs(difference) > CLEAR_STANDARD_ERRORS * se
    return {
        "better": claim_label(better["method"], better["tangents"]),
        "worse": claim_label(worse["method"], worse["tangents"]),
        "difference": difference,
        "se": se,
        "held": held,
        "clear": clear,
        "test_acc_difference": better["test_acc"]["mean"] - worse["test_acc"]["mean"],
    }


def _ks(methods: Sequence[tuple[str, int | None]], method: str) -> list[int]:
    return sorted(k for m, k in methods if m == method and k is not None)


def _claim(model: str, name: str, comparisons: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "model": model,
        "claim": name,
        "comparisons": comparisons,
        "held": all(c["held"] for c in comparisons),
    }


def _orderings(
    records: Sequence[dict[str, Any]], model: str, methods: Sequence[tuple[str, int | None]]
) -> list[tuple[str, list[tuple[dict, dict]]]]:
    """(ordering, [(better, worse), ...]) pairs of records for one model."""

    def find(method: str, k: int | None):
        return find_record(records, model=model, method=method, tangents=k)

    mean_ks, projection_ks = _ks(methods, "mean"), _ks(methods, "projection")
    orderings = [
        (
            PROJECTION_VS_MEAN,
            [(find("projection", k), find("mean", k)) for k in projection_ks if k in mean_ks],
        )
    ]
    for method, ks in (("mean", mean_ks), ("projection", projection_ks)):
        steps = [(find(method, b), find(method, a)) for a, b in zip(ks, ks[1:])]
        orderings.append((MORE_TANGENTS.format(method=method), steps))
    backprop = find("backprop", None)
    if backprop is not None:
        others = [find(m, k) for m, k in methods if m != "backprop"]
        orderings.append((BACKPROP_FIRST, [(backprop, r) for r in others]))
    return orderings


def paper_claims(
    records: Sequence[dict[str, Any]],
    models: Sequence[str],
    methods: Sequence[tuple[str, int | None]],
) -> list[dict[str, Any]]:
    """Every ordering the paper states, per model, with its comparisons and whether it held.

    Orderings with nothing to compare in ``methods`` (e.g. a single k) are left out.
    """
    claims = []
    for model in models:
        for name, pairs in _orderings(records, model, methods):
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
            if pairs:
                claims.append(_claim(model, name, [compare(a, b) for a, b in pairs]))
    return claims


def _clear_text(comparison: dict[str, Any]) -> str:
    if comparison["clear"] is None:
        return "one seed" if math.isfinite(comparison["difference"]) else "diverged"
    return "clear" if comparison["clear"] else "within seed noise"


def claim_rows(claims: Sequence[dict[str, Any]]) -> list[Row]:
    """One table row per comparison: A's final training loss minus B's (< 0: A ahead)."""
    group = (
        "Orderings the paper states: final training loss of A − B (held when ≤ 0; criterion "
        "in the notes)"
    )
    rows = []
    for claim in claims:
        for c in claim["comparisons"]:
            labels = {
                "model": MODEL_NAMES.get(claim["model"], claim["model"]),
                "ordering": claim["claim"],
                "A": c["better"],
                "B": c["worse"],
                "held": "yes" if c["held"] else "no",
                "gap": _clear_text(c),
                "test acc. A − B": f"{c['test_acc_difference']:+.3f}",
            }
            rows.append(Row(group=group, labels=labels, ours=c["difference"], ours_se=c["se"]))
    return rows


def summary_lines(claims: Sequence[dict[str, Any]]) -> list[str]:
    """One line per (model, ordering): held or not, and each comparison's loss gap."""
    lines = []
    for claim in claims:
        parts = ", ".join(
            f"{c['better']} vs {c['worse']}: {c['difference']:+.4f}"
            + ("" if c["held"] else " (not held)")
            for c in claim["comparisons"]
        )
        verdict = "**held**" if claim["held"] else "**not held**"
        name = MODEL_NAMES.get(claim["model"], claim["model"])
        lines.append(f"Ordering, {name}: {claim['claim']}: {verdict} ({parts}).")
    return lines
