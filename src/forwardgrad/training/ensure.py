"""Ensure a run folder holds a run of a config trained to its epochs: reuse, extend or start it.

One policy for every caller that trains runs it may already have (``compare`` and every
reproduction): a finished run of the same settings is reused as is, an interrupted or shorter
one is resumed from its checkpoint, a diverged one is returned as it ended (a rerun would only
diverge again), a folder that never finished an epoch is cleared and started afresh, and a run
of other settings, or of more epochs than asked, is refused before anything trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import Dataset
from .config import ConfigError, TrainConfig, field_names
from .resume import RESUME_FIELDS, config_from_saved, read_config, read_summary
from .runfolder import RunLock, discard_run, run_files
from .train import EstimatorFactory, TrainingDiverged, train


@dataclass
class RunPlan:
    """What :func:`carry_out` does with one folder: ``reuse`` (``summary`` is the run's),
    ``resume`` it from its checkpoint, or ``start`` it (clearing what a run that never
    finished an epoch left)."""

    cfg: TrainConfig
    run_dir: Path
    action: str
    summary: dict[str, Any] | None = None


def _different_settings(
    saved: dict[str, Any], cfg: TrainConfig, where: Path, custom_guess: bool
) -> list[str]:
    """The keys (not counting those a resume may change) where a saved run differs."""
    have = config_from_saved(saved, where, custom_guess)
    return [
        k for k in field_names() if k not in RESUME_FIELDS and getattr(have, k) != getattr(cfg, k)
    ]


def _refuse(run_dir: Path, what: str) -> ConfigError:
    return ConfigError(f"{run_dir} holds {what}; remove it or choose another --out")


def plan_run(cfg: TrainConfig, run_dir: str | Path, custom_guess: bool = False) -> RunPlan:
    """Decide what to do with ``run_dir`` for ``cfg`` (trained to ``cfg.epochs``); refuses,
    with :class:`ConfigError`, a folder that holds another run or more epochs than asked."""
    run_dir = Path(run_dir)
    held = run_files(run_dir)
    if not held:
        return RunPlan(cfg, run_dir, "start")
    summary = read_summary(run_dir)
    saved = (summary or {}).get("config") or (
        read_config(run_dir) if "config.json" in held else None
    )
    if saved is None:
        raise ConfigError(f"{run_dir} holds files of a run without its config; remove it")
    differ = _different_settings(saved, cfg, run_dir / "config.json", custom_guess)
    if differ:
        raise _refuse(run_dir, f"a run with other settings ({', '.join(differ)})")
    status = (summary or {}).get("status")
    done = (summary or {}).get("epochs_completed", 0)
    if status == "diverged" or (status == "completed" and done == cfg.epochs):
        return RunPlan(cfg, run_dir, "reuse", summary)
    if status == "completed" and "checkpoint.pt" not in held:
        what = f"a finished run of {done} epochs and no checkpoint to continue it to {cfg.epochs}"
        raise _refuse(run_dir, what)
    if done > cfg.epochs:
        raise _refuse(run_dir, f"a run of {done} epochs, past the {cfg.epochs} asked for")
    if "checkpoint.pt" in held:
        return RunPlan(cfg, run_dir, "resume")
    return RunPlan(cfg, run_dir, "start")


def carry_out(
    plan: RunPlan,
    progress: bool = False,
    data: Dataset | None = None,
    estimator_factory: EstimatorFactory | None = None,
) -> dict[str, Any]:
    """Do what ``plan`` says; returns the run's summary (a diverged run's too)."""
    if plan.action == "reuse":
        assert plan.summary is not None
        return plan.summary
    if plan.action == "start" and run_files(plan.run_dir):
        # A run of these settings that never finished an epoch: nothing in it to keep.
        with RunLock(plan.run_dir):
            discard_run(plan.run_dir, created=False)
    resume = plan.action == "resume"
    try:
        return train(
            plan.cfg,
            plan.run_dir,
            resume=resume,
            progress=progress,
            data=data,
            epochs=plan.cfg.epochs if resume else None,
            estimator_factory=estimator_factory,
        ).summary
    except TrainingDiverged:
        summary = read_summary(plan.run_dir)
        assert summary is not None  # train() writes it before raising
        return summary


def ensure_trained(
    cfg: TrainConfig,
    run_dir: str | Path,
    epochs: int | None = None,
    progress: bool = False,
    data: Dataset | None = None,
    estimator_factory: EstimatorFactory | None = None,
) -> dict[str, Any]:
    """The summary of ``run_dir``'s run of ``cfg`` trained to ``epochs`` (default
    ``cfg.epochs``): reused, extended, resumed or started, by :func:`plan_run`'s rules."""
    if epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=epochs)
    plan = plan_run(cfg, run_dir, custom_guess=estimator_factory is not None)
    return carry_out(plan, progress, data, estimator_factory)
