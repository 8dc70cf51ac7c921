"""A run measured at chosen epochs: trained in segments, the model measured after each.

Each segment is :func:`~.ensure.ensure_trained` to the next chosen epoch, so the trajectory is
that of one uninterrupted run (resuming is bit-identical at one thread), and an interrupted
experiment picks up where it stopped. Measurements are cached in the run folder; with
``keep_snapshots`` the checkpoint of every measured epoch is kept too
(``checkpoint-epoch<E>.pt``), so experiments that share a run each measure their own epochs of
it without retraining it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..data import Dataset
from ..io import atomic_write, write_json
from .config import TrainConfig
from .ensure import ensure_trained
from .train import EstimatorFactory, checkpoint_model, initial_model

Measure = Callable[[nn.Module, int], dict[str, Any]]
"""``measure(model, epoch)``: the numbers to keep for the model (in eval mode) at ``epoch``."""


def snapshot_path(run_dir: Path, epoch: int) -> Path:
    """The copy of a run's checkpoint kept at a measured epoch (``checkpoint-epoch<E>.pt``)."""
    return run_dir / f"checkpoint-epoch{epoch}.pt"


def keep_snapshot(run_dir: Path, epoch: int) -> None:
    """Keep the run's current checkpoint (at ``epoch``) as a snapshot, so that another
    experiment sharing the run can measure that epoch after the run has moved on."""
    target = snapshot_path(run_dir, epoch)
    if not target.exists():
        data = (run_dir / "checkpoint.pt").read_bytes()
        atomic_write(target, lambda f: f.write(data))


def model_at(cfg: TrainConfig, run_dir: Path, data: Dataset, epoch: int) -> nn.Module:
    """The run's model at ``epoch``: its snapshot there, else its checkpoint if at ``epoch``."""
    source = snapshot_path(run_dir, epoch)
    if not source.exists():
        source = run_dir / "checkpoint.pt"
    model, saved_epoch = checkpoint_model(cfg, data, source)
    if saved_epoch != epoch:
        raise RuntimeError(
            f"{run_dir}: the checkpoint is at epoch {saved_epoch}, not {epoch}, and no snapshot "
            f"of epoch {epoch} was kept; remove the run to measure it"
        )
    return model


def measured_run(
    cfg: TrainConfig,
    run_dir: Path,
    data: Dataset,
    epochs: Sequence[int],
    measure: Measure,
    cache: str = "measurements.json",
    keep_snapshots: bool = False,
    progress: bool = False,
    estimator_factory: EstimatorFactory | None = None,
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Train ``cfg`` to its last epoch, measuring the model at every epoch in ``epochs``.

    Epoch 0 is the model training starts from. Returns the run's summary and
    ``{epoch: measure(model, epoch)}``; an epoch the run did not reach (it diverged) is missing.
    Measurements are cached in ``run_dir/<cache>``: a rerun measures only what is missing.
    """
    path = run_dir / cache
    done: dict[int, dict[str, Any]] = {}
    if path.exists():
        done = {int(e): m for e, m in json.loads(path.read_text()).items()}
    for epoch in sorted(e for e in set(epochs) if e <= cfg.epochs):
        if epoch in done:
            continue
        if epoch == 0:
            model = initial_model(cfg, data).eval()
        else:
            if not snapshot_path(run_dir, epoch).exists():
                summary = ensure_trained(
                    cfg, run_dir, epoch, progress, data=data, estimator_factory=estimator_factory
                )
                if summary["status"] != "completed":
                    break
                if keep_snapshots:
                    keep_snapshot(run_dir, epoch)
            model = model_at(cfg, run_dir, data, epoch)
        done[epoch] = measure(model, epoch)
        write_json(path, {str(e): m for e, m in sorted(done.items())})
    summary = ensure_trained(
        cfg, run_dir, progress=progress, data=data, estimator_factory=estimator_factory
    )
    return summary, done
