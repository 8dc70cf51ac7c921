"""The plots of ``tangents-sota``: final numbers against k, and training curves per model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .multitangent_training import _style
from .report import ExperimentResult, draw_methods_against_k, new_figure
from .tangents_sota_claims import MODEL_NAMES


def _find(records: Sequence[dict[str, Any]], model: str, method: str, k: int | None):
    for r in records:
        if (r["model"], r["method"], r["tangents"]) == (model, method, k):
            return r
    return None


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


def _mean_curve(curves: list[list[dict[str, Any]]], metric: str):
    """Epochs and the mean over seeds of ``metric``, up to the shortest seed's curve."""
    curves = [c for c in curves if c]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    epochs = [row["epoch"] for row in curves[0][:length]]
    return epochs, np.mean([[row[metric] for row in c[:length]] for c in curves], axis=0)


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
                curve = _mean_curve(r["curves"], metric) if r else None
                if curve is not None:
                    ax.plot(*curve, **{**_style(method, k, ks), "markersize": 3})
            if metric == "train_loss":
                ax.set_yscale("log")
            ax.set_xlabel("epoch")
            ax.set_title(f"{MODEL_NAMES.get(model, model)}: {title} (mean over seeds)", fontsize=9)
            ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    return fig
