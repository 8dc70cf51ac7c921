"""The runs every *How to Guess a Gradient* experiment is made of: measured every few epochs
(:mod:`forwardgrad.training.measured`) or trained once (``ensure_trained``), and the readers of
what a run left behind (metrics, summaries)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from ...data import Dataset
from ...io import read_jsonl
from ...training.config import TrainConfig
from ...training.ensure import ensure_trained
from ...training.measured import Measure, measured_run
from ...training.train import EstimatorFactory


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
    """Train ``cfg``, measuring ``measure(model, epoch)`` every ``every`` epochs and at the end
    (and at epoch 0 with ``at_start``): :func:`~forwardgrad.training.measured.measured_run`.

    Returns the measurements as ``{"epoch", **measure(...)}`` rows and the run's per-epoch
    metrics. ``estimator_factory`` builds estimators that are no registered guess
    (``cosine-matched``, ``wt-power``).
    """
    epochs = [*([0] if at_start else []), *range(every, cfg.epochs, every), cfg.epochs]
    _, done = measured_run(
        cfg, run_dir, data, epochs, measure, progress=progress, estimator_factory=estimator_factory
    )
    records = [{"epoch": epoch, **m} for epoch, m in sorted(done.items())]
    return records, read_jsonl(run_dir / "metrics.jsonl")


def run_seconds(root: Path) -> float:
    """Seconds spent in the training loops of every run below ``root`` (their summary.json;
    evaluation and measurements not included), however many sessions they took."""
    total = sum(
        float(json.loads(path.read_text()).get("train_seconds") or 0.0)
        for path in root.rglob("summary.json")
    )
    return round(total, 1)


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
