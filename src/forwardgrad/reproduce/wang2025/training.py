"""The paper's training runs (§4.1): the data, the config of one contender's run, where the run
lives, and training a set of them.

Every run is a plain :func:`forwardgrad.training.train.train` run under
``OUT/runs/width<W>/<guess spec>/seed<s>`` (``runs/`` is git-ignored); a finished run is reused
when an experiment runs again and an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ...data import Dataset, load_dataset
from ...io import read_jsonl
from ...training.config import TrainConfig
from ...training.ensure import ensure_trained
from ...training.guess_specs import parse_guess_spec
from .common import Budget, Contender


@lru_cache(maxsize=1)
def _mnist1d() -> Dataset:
    return load_dataset("mnist1d")


def dataset(budget: Budget) -> Dataset:
    """MNIST-1D (4000/1000), or its first examples of each split for smoke runs."""
    data = _mnist1d()
    n, m = budget.train_subset, budget.test_subset
    return dataclasses.replace(
        data,
        x_train=data.x_train[:n],
        y_train=data.y_train[:n],
        x_test=data.x_test[:m],
        y_test=data.y_test[:m],
    )


def config(contender: Contender, width: int, epochs: int, seed: int) -> TrainConfig:
    """The paper's training setting (§4.1) for one contender, width and seed."""
    guess, options = parse_guess_spec(contender.spec)
    return TrainConfig(
        dataset="mnist1d",
        depth=3,
        width=width,
        bias=False,
        guess=guess,
        epochs=epochs,
        batch_size=512,
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.01,
        seed=seed,
        **options,
    ).validate()


def run_dir(
    out_dir: Path, contender: Contender, width: int, seed: int, timing: bool = False
) -> Path:
    """``OUT/runs/[timing-]width<W>/<guess spec>/seed<s>`` (``runs/`` is git-ignored)."""
    folder = f"{'timing-' if timing else ''}width{width}"
    return out_dir / "runs" / folder / slug(contender.spec) / f"seed{seed}"


def slug(text: str) -> str:
    """``text`` as a folder or file name: runs of other characters become ``_``."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text)


def run_record(
    contender: Contender, width: int, seed: int, summary: dict, path: Path, curve: bool = False
) -> dict:
    """What the README, plots and tables need from one finished run (with ``curve``, its train
    accuracy after every epoch)."""
    final = summary.get("final") or {}
    epochs = summary.get("epochs_completed", 0)
    seconds = summary.get("train_seconds")
    record: dict[str, Any] = {
        "method": contender.key,
        "spec": contender.spec,
        "width": width,
        "seed": seed,
        "status": summary["status"],
        "epochs": epochs,
        "train_acc": final.get("train_acc"),
        "test_acc": final.get("test_acc"),
        "train_loss": final.get("train_loss"),
        "train_seconds": seconds,
        "seconds_per_epoch": seconds / epochs if seconds is not None and epochs else None,
        "run_dir": str(path),
    }
    if curve:
        record["train_acc_curve"] = [r["train_acc"] for r in read_jsonl(path / "metrics.jsonl")]
    return record


def train_all(
    contenders: Sequence[Contender],
    widths: Sequence[int],
    seeds: Sequence[int],
    budget: Budget,
    out_dir: Path,
    progress: bool,
    curves: bool = False,
) -> list[dict]:
    """Train every (contender, width, seed) for the budget's epochs; one record per run."""
    data = dataset(budget)
    records = []
    for width in widths:
        for contender in contenders:
            for seed in seeds:
                cfg = config(contender, width, budget.epochs, seed)
                path = run_dir(out_dir, contender, width, seed)
                summary = ensure_trained(cfg, path, budget.epochs, progress, data=data)
                records.append(run_record(contender, width, seed, summary, path, curves))
    return records
