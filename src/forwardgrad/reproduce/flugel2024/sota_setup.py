"""``tangents-sota`` (§4.5): the authors' learning rates (``data/sota_authors.json``), the
budgets with the step times they were sized from, and each run's config."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...training.config import TrainConfig
from .common import DATA_DIR, method_entries
from .network_runs import METHODS

LR_TABLE_PATH = DATA_DIR / "sota_authors.json"

# Tangents on the block outputs, as frog's node perturbation places them (module names checked
# with Estimator.describe()).
SITES = {
    "resnet18": "stem,layer1,layer2,layer3,layer4,head",
    "vit": "embed,blocks.*,norm,head",
}

# ---------------------------------------------------------------------------------------------
# The authors' learning rates


def load_lr_table(path: Path = LR_TABLE_PATH) -> dict[tuple[str, str, int | None], dict]:
    """``{(model, method, k): {"lr": ..., "search_val_loss": ..., ...}}`` from the JSON table
    (k is None for backprop)."""
    return method_entries(json.loads(Path(path).read_text(encoding="utf-8")), "models")


_AUTHORS = json.loads(LR_TABLE_PATH.read_text(encoding="utf-8"))
AUTHORS_SOTA = method_entries(_AUTHORS, "models")
LR_SOURCE: str = _AUTHORS["source"]
# frog's perturbed dimension n on MNIST (digest §2.4): the ResNet's six groups are ours; its
# ViT merges the patch embedding into the first block and the final norm into the head group.
FROG_PERTURBED_DIMENSION: dict[str, int] = _AUTHORS["frog_perturbed_dimension"]


def authors_lr(model: str, method: str, k: int | None) -> float:
    return float(AUTHORS_SOTA[(model, method, k)]["lr"])


# ---------------------------------------------------------------------------------------------
# Budgets


@dataclass(frozen=True)
class SotaBudget:
    dataset: str
    models: tuple[str, ...]
    methods: tuple[tuple[str, int | None], ...]
    epochs: int
    seeds: int
    batch_size: int
    model_options: Mapping[str, Mapping[str, Any]]
    train_examples: int | None = None  # the first N of the training split (None: all of it)
    test_examples: int | None = None
    threads: int | None = 2


PAPER_MODEL_OPTIONS = {
    "resnet18": {"norm": "group", "stem": "imagenet"},
    "vit": {"depth": 6, "width": 256, "heads": 4, "mlp_dim": 512, "patch_size": 4},
}

BUDGETS: dict[str, SotaBudget] = {
    # Sized from the measurements below to about an hour of training at one thread:
    # 24 steps of every method, as 3 epochs of the first 512 training images so that the
    # curves have more than one point; the first 500 test images.
    "paper": SotaBudget(
        dataset="mnist5k",
        models=("resnet18", "vit"),
        methods=METHODS,
        epochs=3,
        seeds=1,
        batch_size=64,
        model_options=PAPER_MODEL_OPTIONS,
        train_examples=512,
        test_examples=500,
        threads=1,  # one core per run: two runs share the 2-core machine
    ),
    "smoke": SotaBudget(
        dataset="digits",
        models=("resnet18", "vit"),
        methods=(("backprop", None), ("mean", 1), ("mean", 2), ("projection", 2)),
        epochs=1,
        seeds=1,
        batch_size=64,
        # The ResNet builder has no size options; the ViT shrinks to one narrow block.
        model_options={
            "resnet18": PAPER_MODEL_OPTIONS["resnet18"],
            "vit": {"depth": 1, "width": 32, "heads": 2, "mlp_dim": 64, "patch_size": 4},
        },
        train_examples=128,
        test_examples=64,
        threads=1,
    ),
}

# Measured before choosing the paper budget, with 2 torch threads on the 2-core CPU it was
# sized for while another engineer's jobs shared it (load average 4-5.7, so each run had about
# one core): the training seconds of one full mnist5k epoch (63 steps of 64) of the costliest
# runs (`forwardgrad train ... --threads 2 --epochs 1`), and the wall seconds per step of every
# method (batch 64, after one warm-up step; 3 steps for the ResNet, 2 for the ViT).
EPOCH_SECONDS_MEASURED = {("vit", "projection", 16): 1892.0, ("resnet18", "projection", 16): 544.0}
STEP_SECONDS_MEASURED: dict[str, dict[tuple[str, int | None], float]] = {
    "resnet18": {
        ("backprop", None): 3.68,
        ("mean", 1): 5.16,
        ("mean", 2): 5.96,
        ("mean", 4): 6.19,
        ("mean", 16): 7.93,
        ("projection", 2): 5.91,
        ("projection", 4): 6.33,
        ("projection", 16): 7.84,
    },
    "vit": {
        ("backprop", None): 4.12,
        ("mean", 1): 7.63,
        ("mean", 2): 8.15,
        ("mean", 4): 10.15,
        ("mean", 16): 26.52,
        ("projection", 2): 8.94,
        ("projection", 4): 10.01,
        ("projection", 16): 29.64,
    },
}
MNIST_TRAIN_EXAMPLES = 50_000  # the paper's training split (and 200 epochs at most, 3 seeds)


def estimated_hours(steps: int, models: tuple[str, ...] = ("resnet18", "vit")) -> float:
    """Training hours of ``steps`` steps of all eight methods of ``models``, from the measured
    step times (evaluation not included)."""
    return steps * sum(sum(STEP_SECONDS_MEASURED[m].values()) for m in models) / 3600


def sota_config(
    budget: SotaBudget, model: str, method: str, k: int | None, seed: int
) -> TrainConfig:
    """One run's config: the authors' SGD settings and learning rate, tangents on the blocks."""
    forward_gradient = method != "backprop"
    return TrainConfig(
        dataset=budget.dataset,
        model=model,
        **dict(budget.model_options[model]),
        sites=SITES[model] if forward_gradient else None,
        guess="activation" if forward_gradient else "backprop",
        tangents=k or 1,
        aggregate=method if forward_gradient else "mean",
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        optimizer="sgd",
        lr=authors_lr(model, method, k),
        weight_decay=0.0,
        momentum=0.0,
        seed=seed,
    ).validate()


MNIST5K_TRAIN_EXAMPLES = 4000


def steps_per_run(budget: SotaBudget) -> int:
    examples = budget.train_examples or MNIST5K_TRAIN_EXAMPLES
    return budget.epochs * math.ceil(examples / budget.batch_size)
