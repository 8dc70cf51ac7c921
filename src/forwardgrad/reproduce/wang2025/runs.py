"""Training runs that stop, resume and are measured on the way (nothing here is paper-specific).

A run lives in one folder (``forwardgrad train``'s layout, checkpoints included). :func:`train_to`
extends it to a given epoch, or reuses it where it already got there (``ensure_trained``'s
rules); :func:`measured_run`
trains in segments, measuring the checkpoint's model at chosen epochs, so the trajectory is that
of one uninterrupted run. Snapshots of the checkpoint at measured epochs let another experiment
sharing the run measure those epochs after the run has moved on.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from ...data import Dataset
from ...io import atomic_write, write_json
from ...training.config import TrainConfig
from ...training.ensure import ensure_trained
from ...training.train import checkpoint_model as load_checkpoint_model
from ...training.train import initial_model


def train_to(
    cfg: TrainConfig, path: Path, data: Dataset, epochs: int, progress: bool = False
) -> dict:
    """The summary of the run in ``path`` trained (or resumed, or reused) to ``epochs``."""
    return ensure_trained(cfg, path, epochs, progress, data=data)


def snapshot_path(path: Path, epoch: int) -> Path:
    """The copy of a run's checkpoint kept at a measured epoch (``checkpoint-epoch<E>.pt``)."""
    return path / f"checkpoint-epoch{epoch}.pt"


def keep_snapshot(path: Path, epoch: int) -> None:
    """Keep the run's current checkpoint (at ``epoch``) as a snapshot, so that another
    experiment sharing the run can measure that epoch after the run has moved on."""
    target = snapshot_path(path, epoch)
    if not target.exists():
        data = (path / "checkpoint.pt").read_bytes()
        atomic_write(target, lambda f: f.write(data))


def checkpoint_model(cfg: TrainConfig, path: Path, data: Dataset, epoch: int) -> nn.Module:
    """The run's model at ``epoch``: its snapshot there, else its checkpoint if at ``epoch``."""
    source = snapshot_path(path, epoch)
    if not source.exists():
        source = path / "checkpoint.pt"
    model, saved_epoch = load_checkpoint_model(cfg, data, source)
    if saved_epoch != epoch:
        raise RuntimeError(
            f"{path}: the checkpoint is at epoch {saved_epoch}, not {epoch}, and no snapshot "
            f"of epoch {epoch} was kept; remove the run to measure it"
        )
    return model


Measure = Callable[[nn.Module], dict]


def measured_run(
    cfg: TrainConfig,
    path: Path,
    data: Dataset,
    points: Sequence[int],
    tag: str,
    measure: Measure,
    progress: bool = False,
) -> tuple[dict, dict[int, dict]]:
    """Train ``cfg`` to its last epoch, measuring the model at every epoch in ``points``.

    Returns the run's summary and ``{epoch: measure(model)}`` (an epoch the run did not reach,
    because it diverged, is missing). Measurements are cached in ``measurements-<tag>.json``;
    the checkpoint at each measured epoch is kept (``checkpoint-epoch<E>.pt``), so experiments
    that share a run each measure it at their own epochs without retraining it.
    """
    cache = path / f"measurements-{tag}.json"
    done: dict[int, dict] = {}
    if cache.exists():
        done = {int(e): m for e, m in json.loads(cache.read_text()).items()}
    for epoch in sorted(p for p in points if p <= cfg.epochs):
        if epoch in done:
            continue
        if epoch == 0:
            model = initial_model(cfg, data)
        else:
            if not snapshot_path(path, epoch).exists():
                summary = train_to(cfg, path, data, epoch, progress)
                if summary["status"] != "completed":
                    break
                keep_snapshot(path, epoch)
            model = checkpoint_model(cfg, path, data, epoch)
        done[epoch] = measure(model)
        write_json(cache, {str(e): m for e, m in sorted(done.items())})
    return train_to(cfg, path, data, cfg.epochs, progress), done
