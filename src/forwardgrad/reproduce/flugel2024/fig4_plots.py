"""The plots of ``tangents-functions``: Fig. 4's best f against n per function, and every
cell's learning rate beside the authors'."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ...closedform import get_function
from ..report import ExperimentResult, draw_curve, new_figure
from .common import method_style
from .fig4_budget import FunctionsBudget, all_ks, budget_from_settings, method_plan
from .fig4_cells import cell_record
from .fig4_sphere import sphere_optimal_lr

# Fig. 4's log panels draw values below this (reached minima, 0 included) at this floor.
LOG_PANEL_FLOOR = 1e-30


def _per_function_figure(result: ExperimentResult) -> tuple[FunctionsBudget, Any, Any]:
    """The budget a ``tangents-functions`` result ran, and a figure of one panel per function."""
    budget = budget_from_settings(result.settings)
    fig, axes = new_figure(ncols=len(budget.functions), panel_size=(5.2, 4.2))
    return budget, fig, axes


def _records_along_n(
    records: list[dict[str, Any]],
    budget: FunctionsBudget,
    function: str,
    method: str,
    k: int | None,
) -> list[dict[str, Any]]:
    """The cells of one (function, method, k) that ran, in the order of the budget's dims."""
    return [
        r for n in budget.dims if (r := cell_record(records, function, n, method, k)) is not None
    ]


def _legend_below(fig: Any, ax: Any) -> None:
    """One legend for all panels (they share the methods' styles), below them."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4), fontsize=8)


def draw_fig4(result: ExperimentResult):
    budget, fig, axes = _per_function_figure(result)
    records, ks = result.raw["cells"], all_ks(budget)
    for ax, function in zip(axes[0], budget.functions):
        per_n = function == "styblinski-tang"
        for method, k in method_plan(budget):
            found = [
                r
                for r in _records_along_n(records, budget, function, method, k)
                if math.isfinite(r["mean_best"])
            ]
            if not found:
                continue
            xs = [r["dim"] for r in found]
            if per_n:
                ys = [r["mean_best"] / r["dim"] for r in found]
                ses = [(r["se_best"] or 0.0) / r["dim"] for r in found]
                draw_curve(ax, xs, ys, ses, **method_style(method, k, ks))
            else:  # log scale: a ±1.96 SE band would cross zero, so the means only
                ys = [max(r["mean_best"], LOG_PANEL_FLOOR) for r in found]
                ax.plot(xs, ys, **{**method_style(method, k, ks), "markersize": 3.5})
        ax.set_xscale("log", base=2)
        ax.set_xlabel("dimension n")
        ax.grid(True, alpha=0.3)
        if per_n:
            minimum = get_function(function).minimum(1)
            ax.axhline(minimum, color="0.4", linestyle=":", linewidth=1)
            ax.set_ylabel("best f / n  (dotted: global minimum / n)")
            # The axis ends just above the highest curve, so the start value 0 is cut off (as in
            # the paper) unless some method never left it.
            curves = [float(np.max(line.get_ydata())) for line in ax.lines[:-1]]
            if curves:  # nothing to draw when no cell of this function has run yet
                ax.set_ylim(minimum - 1.0, max(curves) + 1.0)
        else:
            ax.set_yscale("log")
            ax.set_ylabel(f"best f (values ≤ {LOG_PANEL_FLOOR:g} drawn at {LOG_PANEL_FLOOR:g})")
        ax.set_title(f"{function}, mean over {len(result.seeds)} seeds", fontsize=10)
    _legend_below(fig, axes[0][0])
    return fig


def draw_learning_rates(result: ExperimentResult):
    budget, fig, axes = _per_function_figure(result)
    records, ks = result.raw["cells"], all_ks(budget)
    for ax, function in zip(axes[0], budget.functions):
        for method, k in method_plan(budget):
            style = method_style(method, k, ks)
            found = _records_along_n(records, budget, function, method, k)
            ours = [(r["dim"], r["best_lr"]) for r in found if r["best_lr"] is not None]
            if ours:
                ax.plot(*zip(*ours), **{**style, "markersize": 3.5})
            authors = [(r["dim"], r["authors_lr"]) for r in found if r["authors_lr"] is not None]
            if authors:
                ax.plot(*zip(*authors), color=style["color"], linestyle=":", linewidth=1)
        if function == "sphere":
            dims = np.asarray(budget.dims, dtype=float)
            for k in budget.mean_tangents:
                best = [sphere_optimal_lr("mean", k, int(n)) for n in dims]
                ax.plot(dims, best, color="0.6", linewidth=0.8, alpha=0.8)
            ax.axhline(0.5, color="0.6", linewidth=0.8, alpha=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("dimension n")
        ax.set_ylabel("learning rate")
        ax.set_title(f"{function}: ours (markers), authors' (dotted)", fontsize=10)
        ax.grid(True, alpha=0.3)
    _legend_below(fig, axes[0][0])
    return fig
