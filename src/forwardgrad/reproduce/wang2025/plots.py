"""Plot panels more than one of the paper's tables draws: bars of ours against the paper's
values, and a measured quantity along each contender's training trajectory."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..report import ExperimentResult, Row
from .common import STYLE
from .measurements import trajectory_series

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes


def draw_paper_markers(ax: Axes, xs: Sequence[float], values: Sequence[float | None]) -> None:
    """The paper's values as black dashes over bars at ``xs`` (where it gives one)."""
    pts = [(x, v) for x, v in zip(xs, values) if v is not None]
    if pts:
        ax.scatter(*zip(*pts), marker="_", s=400, color="black", zorder=3, label="paper")


def draw_row_bars(
    ax: Axes,
    rows: Sequence[Row],
    color: Any,
    tick_labels: Sequence[str],
    label: str | None = None,
    log: bool = False,
    **tick_style: Any,
) -> None:
    """One bar of ours per row (95% CI), the paper's value over it, its name below."""
    xs = np.arange(len(rows))
    ax.bar(
        xs,
        [r.ours for r in rows],
        yerr=[1.96 * (r.ours_se or 0) for r in rows],
        color=color,
        alpha=0.8,
        **({} if label is None else {"label": label}),
    )
    draw_paper_markers(ax, xs, [r.paper for r in rows])
    ax.set_xticks(xs, tick_labels, **tick_style)
    if log:
        ax.set_yscale("log")
    ax.grid(True, axis="y", alpha=0.3)


def draw_trajectories(
    ax_var: Axes, ax_bias: Axes, result: ExperimentResult, paper: dict[str, dict[str, float]]
) -> None:
    """Variance and bias of the measured layer along each contender's own trajectory (the
    order of ``raw["order"]``), with the paper's values as crosses after the last epoch."""
    from matplotlib.ticker import NullLocator

    layer = result.settings["measured_layer"]
    labels = result.raw["labels"]
    for quantity, ax in (("variance", ax_var), ("bias", ax_bias)):
        for key in result.raw["order"]:
            epochs, y = trajectory_series(result.raw["measurements"], key, layer, quantity)
            if not epochs:
                continue
            ax.plot(epochs, y, label=labels[key], **{**STYLE[key], "markersize": 5})
        # symlog keeps epoch 0 on a log-like axis
        ticks = sorted({m["epoch"] for m in result.raw["measurements"]})
        ax.set_xscale("symlog", linthresh=max(1, min((t for t in ticks if t > 0), default=1)))
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(f"layer {layer}: {quantity} (paper's normalisation)", fontsize=10)
        ax.grid(True, alpha=0.3)
    ax_var.legend(fontsize=8)
    x = result.settings["final_epoch"] * 1.3
    for key, values in paper.items():
        for q, ax in (("variance", ax_var), ("bias", ax_bias)):
            ax.scatter([x], [values[q]], marker="x", s=60, color=STYLE[key]["color"], zorder=3)
            ax.annotate(
                "paper", (x, values[q]), fontsize=6, xytext=(4, 2), textcoords="offset points"
            )
