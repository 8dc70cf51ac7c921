"""One training session: its state, the epochs, evaluation, checkpoints and metric logs.

:func:`forwardgrad.training.train.train` builds a :class:`Session`, checks it and locks its
folder; :func:`fit` trains it and its callbacks write its files (each atomically).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.state import untouched
from ..data import Dataset
from ..diagnostics import probe
from ..distributed import is_leader
from ..environment import environment
from ..estimation import Estimator, cross_entropy_per_example
from ..io import read_jsonl, write_json, write_jsonl
from ..memory import MEMORY_FLAGS, is_allocation_failure
from .checkpoint import load_model_state, save_checkpoint
from .config import ConfigError, TrainConfig
from .resume import ResumeRefused
from .run_errors import StepOutOfMemory, TrainingDiverged


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096, features=None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on (x, y); ``features`` maps raw rows to model inputs."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        out = model(features(xb) if features is not None else xb)
        yb = y[start : start + batch_size]
        total_loss += float(cross_entropy_per_example(out, yb).sum())
        correct += int((out.argmax(-1) == yb).sum())
    return total_loss / len(x), correct / len(x)


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


# ----------------------------------------------------------------------------- one run's state


@dataclass
class Session:
    """Everything one training session works on."""

    cfg: TrainConfig
    out: Path
    data: Dataset
    device: torch.device
    model: nn.Module
    estimator: Estimator
    optimizer: torch.optim.Optimizer
    shuffle: torch.Generator
    augment: torch.Generator
    probe_estimator: Estimator | None = None
    probe_data: tuple[Tensor, Tensor] | None = None
    rows: list[dict] = field(default_factory=list)
    probe_rows: list[dict] = field(default_factory=list)
    start_epoch: int = 0
    epoch: int = 0  # the epoch in progress (1-based) or last finished
    step: int = 0
    elapsed: float = 0.0
    checkpoint_epoch: int | None = None  # epoch of the newest checkpoint on disk
    tensorboard: Any = None
    progress: bool = True
    custom_guess: bool = False  # built by an estimator_factory
    callbacks: list = field(default_factory=list)  # a caller's, after the standard ones
    tensors: tuple[Tensor, Tensor, Tensor, Tensor] = ()  # x/y train, x/y test, on the device
    team: Any = None  # the run's processes (forwardgrad.distributed.Collectives), or None

    @property
    def writes(self) -> bool:
        """Whether this process keeps the run folder (the only one, or process 0)."""
        return is_leader(self.team)


def run_probe(run: Session, epoch: int) -> None:
    """Probe the model; its BatchNorm statistics and the global random state (dropout) are
    left as they were, so a run with probes trains exactly as one without."""
    x, y = run.probe_data
    with untouched(run.model, run.device):
        measured = probe(run.model, run.probe_estimator, x, y)
    row = {"epoch": epoch, "step": run.step, **measured}
    run.probe_rows.append(row)
    write_jsonl(run.out / "probes.jsonl", run.probe_rows)


def run_record(cfg: TrainConfig, data: Dataset, team: Any = None) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "data": data.summary(),
        "environment": environment(),
        "processes": processes_of(team, cfg),
        "resumed": [],
    }


def processes_of(team: Any, cfg: TrainConfig) -> dict[str, Any]:
    """How many processes share the run, and how (for ``config.json``)."""
    if team is None:
        return {"mode": cfg.parallel, "processes": 1, "data_shards": 1, "tangent_shares": 1}
    return team.grid.describe()


def fallback_sites(run: Session) -> list[str]:
    """The site calls where the guess uses activation perturbation (``fallback='activation'``
    at sites without a next layer), as the estimator found them on the trial step."""
    return list(getattr(getattr(run.estimator, "guess", None), "fallback_sites", []))


def start_fresh(run: Session) -> None:
    record = run_record(run.cfg, run.data, run.team)
    record["fallback_sites"] = fallback_sites(run)
    write_json(run.out / "config.json", record)
    if run.probe_estimator is not None:
        run_probe(run, 0)  # the starting point of the trajectory


def _read_rows(path: Path, up_to: int) -> list[dict]:
    try:
        return [r for r in read_jsonl(path) if r["epoch"] <= up_to]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is corrupt ({e}); cannot resume") from None


def restore(run: Session, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's states into the session, or say why they do not fit its config."""
    restore_state(run, state, path)
    run.rows = _read_rows(run.out / "metrics.jsonl", run.start_epoch)
    if run.probe_estimator is not None:
        run.probe_rows = _read_rows(run.out / "probes.jsonl", run.start_epoch)


def restore_state(run: Session, state: dict[str, Any], path: Path) -> None:
    """The states of :func:`session_state` (read from ``path``) into the session's objects."""
    load_model_state(run.model, state, path)
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        run.estimator.load_state_dict(state["estimator"])
        run.shuffle.set_state(state["shuffle"])
        if "augment" in state:  # checkpoints from before augmentation existed lack it
            run.augment.set_state(state["augment"])
        if run.probe_estimator is not None and "probe_estimator" in state:
            run.probe_estimator.load_state_dict(state["probe_estimator"])
    except (KeyError, ValueError, RuntimeError, TypeError) as e:
        raise ResumeRefused(
            f"{path} does not fit the run's config.json (optimizer {run.cfg.optimizer!r}, guess "
            f"{run.cfg.guess!r}): {type(e).__name__}: {e}. Was config.json edited?"
        ) from None
    run.start_epoch = run.epoch = run.checkpoint_epoch = int(state["epoch"])
    run.step, run.elapsed = int(state["step"]), float(state["elapsed"])


def session_state(run: Session, epoch: int) -> dict[str, Any]:
    """Everything a checkpoint holds: the states to continue the run from ``epoch``."""
    state = {
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "estimator": run.estimator.state_dict(),
        "shuffle": run.shuffle.get_state(),
        "augment": run.augment.get_state(),
        "epoch": epoch,
        "step": run.step,
        "elapsed": run.elapsed,
        "config": run.cfg.to_dict(),  # lets a resume check config.json against it
    }
    if run.probe_estimator is not None:
        state["probe_estimator"] = run.probe_estimator.state_dict()
    return state


def save_state(run: Session, epoch: int) -> None:
    if run.writes:
        save_checkpoint(run.out / "checkpoint.pt", session_state(run, epoch))
    run.checkpoint_epoch = epoch


# -------------------------------------------------------------------------- the callbacks


class Callback:
    """Something the loop calls after every step and at the end of every epoch.

    ``after_step`` sees the step's loss before the optimizer applies its ``.grad``;
    ``after_epoch`` sees the epoch's metrics row (``run.rows[-1]`` once :class:`MetricsLog`
    has run). Callbacks run in the order given; any of them may stop the run by raising.
    """

    def after_step(self, run: Session, loss: Tensor) -> None:
        pass

    def after_epoch(self, run: Session, row: dict[str, Any]) -> None:
        pass


class DivergenceGuard(Callback):
    """Stop at the first non-finite loss or gradient estimate, naming the step."""

    def after_step(self, run: Session, loss: Tensor) -> None:
        if not math.isfinite(float(loss)):
            raise TrainingDiverged(run.epoch, run.step, "the loss", run.checkpoint_epoch)
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        if not _all_finite(grads):
            what = "the gradient estimate"
            raise TrainingDiverged(run.epoch, run.step, what, run.checkpoint_epoch)

    def after_epoch(self, run: Session, row: dict[str, Any]) -> None:
        if not math.isfinite(row["train_loss"]):
            raise TrainingDiverged(run.epoch, run.step, "the training loss", run.checkpoint_epoch)


class MetricsLog(Callback):
    """The epoch's row into ``metrics.jsonl`` (and TensorBoard, when the run logs there)."""

    def after_epoch(self, run: Session, row: dict[str, Any]) -> None:
        run.rows.append(row)
        if not run.writes:
            return
        write_jsonl(run.out / "metrics.jsonl", run.rows)
        if run.tensorboard is not None:
            run.tensorboard.log(row)


class Probes(Callback):
    """A gradient probe every ``probe_every`` epochs, before the checkpoint (which saves the
    probe estimator's generator)."""

    def after_epoch(self, run: Session, row: dict[str, Any]) -> None:
        if not run.writes:
            return
        if run.probe_estimator is not None and run.epoch % run.cfg.probe_every == 0:
            run_probe(run, run.epoch)


class Checkpoints(Callback):
    """A checkpoint every ``checkpoint_every`` epochs and at the last one."""

    def after_epoch(self, run: Session, row: dict[str, Any]) -> None:
        if run.epoch % run.cfg.checkpoint_every == 0 or run.epoch == run.cfg.epochs:
            save_state(run, run.epoch)


def standard_callbacks(guards: Sequence[Callback] = ()) -> list[Callback]:
    """What every run does, in order: guard (and the other ``guards``), log, probe,
    checkpoint."""
    return [DivergenceGuard(), *guards, MetricsLog(), Probes(), Checkpoints()]


# ------------------------------------------------------------------------------- the loop


def fit(run: Session, callbacks: list[Callback]) -> None:
    """Train ``run`` from ``run.start_epoch`` to ``cfg.epochs``: each epoch, one estimator step
    per minibatch, then the evaluation row, handed to every callback."""
    cfg = run.cfg
    bar = _progress(
        range(run.start_epoch, cfg.epochs),
        run.progress,
        desc=f"{cfg.guess} seed {cfg.seed}",
        initial=run.start_epoch,
        total=cfg.epochs,
    )
    for index in bar:
        run.epoch = index + 1
        t0 = time.perf_counter()
        for x, y in _batches(run):
            loss = _step(run, x, y)
            run.step += 1
            for callback in callbacks:
                callback.after_step(run, loss)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        run.elapsed += seconds
        row = _evaluation_row(run, seconds)
        for callback in callbacks:
            callback.after_epoch(run, row)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}",
                train=f"{row['train_acc']:.3f}",
                test=f"{row['test_acc']:.3f}",
            )


def _batches(run: Session):
    """One epoch's shuffled minibatches, as model inputs (augmented when the run augments);
    with the batch split over processes, this process's shard of each. Every process draws
    the whole batch's order and augmentation, so their generators stay alike."""
    x_train, y_train = run.tensors[:2]
    order = torch.randperm(len(x_train), generator=run.shuffle).to(run.device)
    grid = run.team.grid if run.team is not None else None
    run.model.train()
    for start in range(0, len(x_train), run.cfg.batch_size):
        idx = order[start : start + run.cfg.batch_size]
        x, y = run.data.features(x_train[idx], True, run.augment), y_train[idx]
        if grid is not None and grid.data_size > 1:
            lo, hi = grid.data_slice(len(idx))
            x, y = x[lo:hi], y[lo:hi]
        yield x, y


def _step(run: Session, x: Tensor, y: Tensor) -> Tensor:
    """One estimator step (fills ``.grad``); an allocation failure says what to lower."""
    try:
        return run.estimator.step(x, y)
    except (RuntimeError, MemoryError) as e:
        if is_allocation_failure(e):
            raise _out_of_memory(run.cfg, e) from None
        raise


def _evaluation_row(run: Session, seconds: float) -> dict[str, Any]:
    run.model.eval()
    x_train, y_train, x_test, y_test = run.tensors
    train_loss, train_acc = evaluate(run.model, x_train, y_train, features=run.data.features)
    test_loss, test_acc = evaluate(run.model, x_test, y_test, features=run.data.features)
    return {
        "epoch": run.epoch,
        "step": run.step,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "seconds": seconds,
    }


def write_summary(run: Session, status: str, failure: dict | None) -> dict:
    summary = summary_of(run, status, failure)
    if run.writes:
        write_json(run.out / "summary.json", summary)
    return summary


def summary_of(run: Session, status: str, failure: dict | None) -> dict:
    rows = run.rows
    return {
        "status": status,
        "guess": run.cfg.guess,
        "seed": run.cfg.seed,
        "epochs_completed": rows[-1]["epoch"] if rows else 0,
        "steps": run.step,
        "train_seconds": run.elapsed,
        "final": rows[-1] if rows else None,
        "failure": failure,
        "checkpoint_epoch": run.checkpoint_epoch,
        "fallback_sites": fallback_sites(run),
        "config": run.cfg.to_dict(),
    }


def _out_of_memory(cfg: TrainConfig, error: BaseException) -> StepOutOfMemory:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return StepOutOfMemory(
        f"a training step ran out of memory (tangents {cfg.tangents}, batch {cfg.batch_size}, "
        f"model {cfg.model}; {first}); lower {MEMORY_FLAGS}"
    )


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
