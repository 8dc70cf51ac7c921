"""Training networks for §4.4 (``tangents-mlp``) and §4.5 (``tangents-sota``): the paper's
grid of methods, runs reused or resumed from their folders, and one record per method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...io import read_jsonl
from ...stats import mean_and_se
from .common import k_label, short_number

# The paper's grid: backprop, the mean of k ∈ {1, 2, 4, 16} and the projection of k ∈ {2, 4, 16}.
METHODS: tuple[tuple[str, int | None], ...] = (
    ("backprop", None),
    ("mean", 1),
    ("mean", 2),
    ("mean", 4),
    ("mean", 16),
    ("projection", 2),
    ("projection", 4),
    ("projection", 16),
)


def effective_lr(method: str, k: int | None, n: int, lr: float) -> float:
    """lr_eff with E[step] = lr_eff · g for tangents independent of g.

    The mean of k Gaussian forward gradients is unbiased; the projection onto a random k-dim
    subspace has E[P_U g] = (k/n) g, so its expected step is k/n of its learning rate.
    """
    if method == "projection":
        assert k is not None
        return lr * min(k, n) / n
    return lr


def run_curve(run_dir: Path, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The ``keys`` of every epoch line of a run's ``metrics.jsonl``."""
    return [{key: row[key] for key in keys} for row in read_jsonl(run_dir / "metrics.jsonl")]


def value_summary(values: list[float]) -> dict[str, Any]:
    """The seeds' values with their mean and standard error (NaN and None without any)."""
    mean, se = mean_and_se(values)
    return {"values": values, "mean": mean, "se": se}


def method_record(
    where: dict[str, Any],
    n: int,
    method: str,
    k: int | None,
    lr: float,
    search_val_loss: float | None,
    runs: list[dict[str, Any]],
    metrics: Sequence[str],
) -> dict[str, Any]:
    """One method's runs (``{"summary", "curve"}`` per seed) with the authors' lr beside them;
    ``where`` names the network (width or model) and comes first."""
    record: dict[str, Any] = {
        **where,
        "n": n,
        "method": method,
        "tangents": k,
        "lr": lr,
        "effective_lr": effective_lr(method, k, n, lr),
        "authors_search_val_loss": search_val_loss,
        "diverged": sum(r["summary"]["status"] == "diverged" for r in runs),
        "train_seconds": [r["summary"].get("train_seconds") for r in runs],
        "curves": [r["curve"] for r in runs],
    }
    for metric in metrics:
        record[metric] = value_summary(
            [r["summary"]["final"][metric] for r in runs if r["summary"]["status"] == "completed"]
        )
    return record


def method_labels(where: dict[str, Any], record: dict[str, Any], metric: str) -> dict[str, Any]:
    """A table row's labels for one method's record; the test-loss rows also carry the best
    validation loss of the authors' learning-rate search."""
    labels: dict[str, Any] = {
        **where,
        "method": record["method"],
        "k": k_label(record["tangents"]),
        "lr (authors')": short_number(record["lr"]),
        "effective lr": short_number(record["effective_lr"]),
    }
    if metric == "test_loss":
        labels["authors' LR-search val. loss (MNIST)"] = short_number(
            record["authors_search_val_loss"]
        )
    if record["diverged"]:
        labels["diverged seeds"] = record["diverged"]
    return labels


def training_seconds(records: list[dict[str, Any]]) -> float:
    """All runs' training seconds together (runs that recorded none left out)."""
    return sum(t for r in records for t in r["train_seconds"] if t is not None)
