"""``tangents-functions`` (Fig. 4): the paper's qualitative claims checked cell by cell on the
best f — more tangents improve optimisation, the projection (FROG) combines them better than the
mean — and whether any forward gradient beat backprop."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...closedform import get_function
from ...stats import mean_and_se
from .fig4_budget import FunctionsBudget, method_plan
from .fig4_cells import cell_record


def significantly_lower(a: dict[str, Any], b: dict[str, Any]) -> int:
    """+1 if a's mean best f is lower than b's, -1 if higher, 0 if not distinguishable.

    Distinguishable: the difference exceeds 2 standard errors of the difference and 1e-6 of the
    initial optimality gap (so float noise near a reached minimum is a tie).
    """
    fa, fb = a["mean_best"], b["mean_best"]
    if not (math.isfinite(fa) and math.isfinite(fb)):
        return 0 if math.isfinite(fa) == math.isfinite(fb) else (1 if math.isfinite(fa) else -1)
    se = math.sqrt((a["se_best"] or 0.0) ** 2 + (b["se_best"] or 0.0) ** 2)
    gap = a["start_value"] - a["minimum"]
    if abs(fa - fb) <= max(2.0 * se, 1e-6 * gap):
        return 0
    return 1 if fa < fb else -1


def _log_lower(a: dict[str, Any], b: dict[str, Any]) -> int | None:
    """Like :func:`significantly_lower` on the seeds' log10 best f (functions with f* = 0).

    None where a seed reached exactly 0 (no logarithm). Separates runs that both converged
    (far below 1e-6 of the start) but at different rates.
    """
    va, vb = np.asarray(a["best_values"], float), np.asarray(b["best_values"], float)
    if va.size == 0 or vb.size == 0 or (va <= 0).any() or (vb <= 0).any():
        return None
    (ma, sa), (mb, sb) = mean_and_se(np.log10(va)), mean_and_se(np.log10(vb))
    if abs(ma - mb) <= 2.0 * math.hypot(sa or 0.0, sb or 0.0):
        return 0
    return 1 if ma < mb else -1


def _tally(outcomes: list[int]) -> dict[str, int]:
    return {
        "better": outcomes.count(1),
        "tie": outcomes.count(0),
        "worse": outcomes.count(-1),
    }


def _tally_text(what: str, tally: dict[str, int]) -> str:
    return f"{what}: {tally['better']} better, {tally['tie']} tied, {tally['worse']} worse"


Pairs = list[tuple[int, dict[str, Any], dict[str, Any]]]


def _pairs(
    records: list[dict[str, Any]],
    function: str,
    dims: list[int],
    a: tuple[str, int | None],
    b: tuple[str, int | None],
) -> Pairs:
    """(n, record of a, record of b) for every n of ``dims`` where both methods ran."""
    found = [
        (n, cell_record(records, function, n, *a), cell_record(records, function, n, *b))
        for n in dims
    ]
    return [(n, ra, rb) for n, ra, rb in found if ra is not None and rb is not None]


def _claim_dims(records: list[dict[str, Any]], budget: FunctionsBudget, function: str) -> list[int]:
    """The n of a function that ran; Rosenbrock with n = 1 is the empty sum (f = 0 everywhere),
    with nothing to compare."""
    return [
        n
        for n in budget.dims
        if not (function == "rosenbrock" and n == 1)
        and cell_record(records, function, n, "backprop", None) is not None
    ]


def _projection_vs_mean(
    records: list[dict[str, Any]], function: str, dims: list[int], ks: list[int]
) -> tuple[dict[str, dict[str, int]], list[str], list[str]]:
    """Tallies per k, and the (n, k) where the projection was lower / higher than the mean."""
    per_k: dict[str, dict[str, int]] = {}
    strong: list[str] = []
    weak: list[str] = []
    for k in ks:
        outcomes = []
        for n, proj, mean in _pairs(records, function, dims, ("projection", k), ("mean", k)):
            outcome = significantly_lower(proj, mean)
            outcomes.append(outcome)
            if outcome == 1:
                strong.append(f"({n}, {k})")
            elif outcome == -1:
                weak.append(f"({n}, {k})")
        per_k[str(k)] = _tally(outcomes)
    return per_k, strong, weak


def _projection_vs_mean_log10(
    records: list[dict[str, Any]], function: str, dims: list[int], ks: list[int]
) -> dict[str, dict[str, int]]:
    """The same in log10 f, for functions whose f is positive (minimum 0)."""
    if get_function(function).minimum(1) != 0.0:
        return {}
    log_k: dict[str, dict[str, int]] = {}
    for k in ks:
        pairs = _pairs(records, function, dims, ("projection", k), ("mean", k))
        logs = [_log_lower(a, b) for _, a, b in pairs]
        log_k[str(k)] = _tally([o for o in logs if o is not None])
    return log_k


def _more_tangents(
    records: list[dict[str, Any]], budget: FunctionsBudget, function: str, dims: list[int]
) -> dict[str, dict[str, int]]:
    """The largest k against the smallest, for the mean and for the projection."""
    more: dict[str, dict[str, int]] = {}
    for method, ks in (("mean", budget.mean_tangents), ("projection", budget.projection_tangents)):
        if len(ks) < 2:
            continue
        low, high = min(ks), max(ks)
        pairs = _pairs(records, function, dims, (method, high), (method, low))
        more[f"{method}: k = {high} vs k = {low}"] = _tally(
            [significantly_lower(a, b) for _, a, b in pairs]
        )
    return more


def _backprop_beaten_by(
    records: list[dict[str, Any]], budget: FunctionsBudget, function: str, dims: list[int]
) -> list[str]:
    """The cells where a forward gradient's best f was lower than backprop's."""
    beaten = []
    for n in dims:
        bp = cell_record(records, function, n, "backprop", None)
        for method, k in method_plan(budget)[1:]:
            fg = cell_record(records, function, n, method, k)
            if bp is not None and fg is not None and significantly_lower(fg, bp) == 1:
                beaten.append(f"n = {n}, {method} k = {k}")
    return beaten


def _claim_line(
    function: str, dims: int, claim: dict[str, Any], strong: list[str], weak: list[str]
) -> str:
    """The note of one function's claim checks."""
    per_k, log_k = claim["projection_vs_mean"], claim["projection_vs_mean_log10"]
    beaten = claim["backprop_beaten_by"]
    proj_text = "; ".join(_tally_text(f"k = {k}", t) for k, t in per_k.items())
    more_text = "; ".join(_tally_text(what, t) for what, t in claim["more_tangents"].items())
    line = f"**{function}** ({dims} dimensions): projection against mean at equal k — "
    line += proj_text or "no shared k"
    if strong or weak:
        where = [f"lower at (n, k) = {', '.join(strong)}"] if strong else []
        where += [f"higher at (n, k) = {', '.join(weak)}"] if weak else []
        line += f" (projection {'; '.join(where)})"
    if log_k:
        line += ". In log10 f (cells where no seed reached exactly 0), projection against "
        line += "mean — " + "; ".join(_tally_text(f"k = {k}", t) for k, t in log_k.items())
    line += f". More tangents — {more_text or 'one k only'}. "
    line += (
        f"Backprop's best f was beaten at {', '.join(beaten)}."
        if beaten
        else "No forward gradient beat backprop."
    )
    return line


def function_claims(
    records: list[dict[str, Any]], budget: FunctionsBudget
) -> tuple[dict[str, Any], list[str]]:
    """Check the paper's qualitative claims cell by cell; returns raw tallies and note lines."""
    claims: dict[str, Any] = {}
    notes = []
    shared_ks = [k for k in budget.projection_tangents if k in budget.mean_tangents]
    for function in budget.functions:
        dims = _claim_dims(records, budget, function)
        per_k, strong, weak = _projection_vs_mean(records, function, dims, shared_ks)
        claims[function] = {
            "projection_vs_mean": per_k,
            "projection_vs_mean_log10": _projection_vs_mean_log10(
                records, function, dims, shared_ks
            ),
            "more_tangents": _more_tangents(records, budget, function, dims),
            "backprop_beaten_by": _backprop_beaten_by(records, budget, function, dims),
        }
        notes.append(_claim_line(function, len(dims), claims[function], strong, weak))
    return claims, notes
