"""Training with measurements at checkpoints, the runs every *How to Guess a Gradient*
experiment is made of: training in segments that resume one another (``ensure_trained``), a
measurement after each, and the readers of what a run left behind (checkpoint, metrics, summary).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ...data import Dataset
from ...io import read_jsonl, write_jsonl
from ...training.config import TrainConfig
from ...training.ensure import ensure_trained
from ...training.train import EstimatorFactory, initial_model
from ...training.train import checkpoint_model as load_checkpoint_model


def checkpoint_model(cfg: TrainConfig, data: Dataset, run_dir: Path) -> nn.Module:
    """The model saved in ``run_dir/checkpoint.pt`` (in eval mode)."""
    return load_checkpoint_model(cfg, data, run_dir / "checkpoint.pt")[0]


Measure = Callable[[nn.Module, int], dict[str, Any]]


def train_with_measurements(
    cfg: TrainConfig,
    run_dir: Path,
    data: Dataset,
    every: int,
    measure: Measure,
    progress: bool = False,
    at_start: bool = True,
    estimator_factory: EstimatorFactory | None = None,
) -> tuple[list[dict], list[dict]]:
    """Train ``cfg`` with ``train()``, stopping every ``every`` epochs to ``measure(model, epoch)``.

    ``train()`` runs in segments, each resuming the last one's checkpoint, so the trajectory is
    that of one uninterrupted run. Measurements go to ``run_dir/measurements.jsonl``; a rerun
    continues from the last checkpoint (or returns at once when the run is complete).
    Returns the measurements (``{"epoch", **measure(...)}``, epoch 0 first when ``at_start``)
    and the run's per-epoch metrics. ``estimator_factory`` goes to ``train()`` (estimators that
    are no registered guess: ``cosine-matched``, ``wt-power``).
    """
    path = run_dir / "measurements.jsonl"
    ckpt = run_dir / "checkpoint.pt"
    records = read_jsonl(path)
    metrics = read_jsonl(run_dir / "metrics.jsonl")
    if _diverged(run_dir):  # a rerun would only diverge again
        return records, metrics
    done = metrics[-1]["epoch"] if metrics and ckpt.exists() else 0
    if done == 0 and not ckpt.exists() and metrics:
        last = records[-1]["epoch"] if records else -1
        if last >= cfg.epochs:  # finished earlier, checkpoint since removed
            return records, metrics
        raise FileExistsError(f"{run_dir} holds an unfinished run without a checkpoint")
    records = [r for r in records if r["epoch"] <= done]
    if at_start and not records:
        records.append({"epoch": 0, **measure(initial_model(cfg, data).eval(), 0)})
        write_jsonl(path, records)
    while done < cfg.epochs:
        target = min(done + every, cfg.epochs)
        summary = ensure_trained(
            cfg, run_dir, target, progress, data=data, estimator_factory=estimator_factory
        )
        if summary["status"] == "diverged":  # summary.json says where; the epochs before stand
            break
        records.append({"epoch": target, **measure(checkpoint_model(cfg, data, run_dir), target)})
        write_jsonl(path, records)
        done = target
    return records, read_jsonl(run_dir / "metrics.jsonl")


def run_seconds(root: Path) -> float:
    """Seconds spent in the training loops of every run below ``root`` (their summary.json;
    evaluation and measurements not included), however many sessions they took."""
    total = sum(
        float(json.loads(path.read_text()).get("train_seconds") or 0.0)
        for path in root.rglob("summary.json")
    )
    return round(total, 1)


def _diverged(run_dir: Path) -> bool:
    path = run_dir / "summary.json"
    return path.exists() and json.loads(path.read_text()).get("status") == "diverged"


def final_metric(metrics: Sequence[dict], key: str) -> float:
    """The last epoch's ``key`` (NaN when a run diverged in its first epoch)."""
    return float(metrics[-1][key]) if metrics else math.nan


def train_once(
    cfg: TrainConfig,
    run_dir: Path,
    data: Dataset,
    progress: bool = False,
    estimator_factory: EstimatorFactory | None = None,
) -> list:
    """Train (or finish, or skip a finished) run; returns its per-epoch metrics."""
    ensure_trained(cfg, run_dir, progress=progress, data=data, estimator_factory=estimator_factory)
    return read_jsonl(run_dir / "metrics.jsonl")


def drop_checkpoints(root: Path) -> None:
    """Remove the checkpoints below ``root`` once an experiment is complete: metrics, probes,
    measurements and summaries stay (reruns skip finished runs), the bulky states go."""
    for ckpt in root.rglob("checkpoint.pt"):
        ckpt.unlink()
