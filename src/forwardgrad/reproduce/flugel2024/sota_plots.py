"""The plots of ``tangents-sota``: final numbers against k, and training curves per model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..report import ExperimentResult, draw_methods_against_k, new_figure
from .common import find_record, mean_curve, method_style
from .sota_claims import MODEL_NAMES


def _find(records: Sequence[dict[str, Any]], model: str, method: str, k: int | None):
    return find_record(records, model=model, method=method, tangents=k)


def _all_ks(result: ExperimentResult) -> list[int]:
    return sorted({k for _, k in result.settings["methods"] if k is not None})


def _draw_against_k(ax, records, model: str, metric: str, ks: list[int]) -> None:
    draw_methods_against_k(ax, lambda method, k: _find(records, model, method, k), metric, ks)


def draw_final(result: ExperimentResult):
    """Final training loss (log scale) and test accuracy against k, one column per model."""
    records, models, ks = result.raw["runs"], result.settings["models"], _all_ks(result)
    fig, axes = new_figure(ncols=len(models), nrows=2, panel_size=(4.8, 3.6))
    for col, model in enumerate(models):
        for row, (metric, title) in enumerate(
            (("train_loss", "final training loss"), ("test_acc", "final test accuracy"))
        ):
            ax = axes[row][col]
            _draw_against_k(ax, records, model, metric, ks)
            if metric == "train_loss":
                ax.set_yscale("log")
            ax.set_title(f"{MODEL_NAMES.get(model, model)}: {title}", fontsize=9)
    axes[0][0].legend(fontsize=8)
    return fig


def draw_curves(result: ExperimentResult):
    """Training loss and test accuracy per epoch of every method, one column per model."""
    records, models, ks = result.raw["runs"], result.settings["models"], _all_ks(result)
    fig, axes = new_figure(ncols=len(models), nrows=2, panel_size=(4.8, 3.6))
    for col, model in enumerate(models):
        for row, (metric, title) in enumerate(
            (("train_loss", "training loss"), ("test_acc", "test accuracy"))
        ):
            ax = axes[row][col]
            for method, k in result.settings["methods"]:
                r = _find(records, model, method, k)
                curve = mean_curve(r["curves"], metric) if r else None
                if curve is not None:
                    ax.plot(*curve, **{**method_style(method, k, ks), "markersize": 3})
            if metric == "train_loss":
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(f"{MODEL_NAMES.get(model, model)}: {title} (mean over seeds)", fontsize=9)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return fig
