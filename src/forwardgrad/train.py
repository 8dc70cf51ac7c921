"""Training loop: one loop for every estimator, with evaluation, checkpoints and metric logs.

A run directory holds ``config.json`` (the full config, seed, data, versions and thread counts,
and one entry per resumed session), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt``
(the last good state, for ``--resume``) and ``summary.json``; with ``probe_every`` N > 0 also
``probes.jsonl`` (the gradient estimate against backprop on a fixed batch of the training set,
at epoch 0 and every N epochs), with ``tensorboard`` also ``tensorboard/``. Every file is
written atomically.

Before anything is written, the config is validated, the data loaded, the model and estimator
built, the memory of a step estimated and one step tried on a few examples (its random state
rewound), so a run that cannot start leaves no folder. While it trains, the folder is locked
(:mod:`forwardgrad.runfolder`). A run that stops before its first checkpoint (an error, Ctrl-C)
removes what it wrote; one that diverges keeps its ``summary.json`` saying where.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import TRAINING_KEYS, load_checkpoint, load_model_state, save_checkpoint
from .config import ConfigError, TrainConfig
from .data import Dataset, load_dataset
from .diagnostics import probe
from .environment import environment, torch_threads
from .estimator import Estimator, cross_entropy_per_example
from .io import read_jsonl, write_json, write_jsonl
from .models import mlp
from .optim import make_optimizer
from .resume import (
    ResumeRefused,
    check_checkpoint_config,
    check_same_data,
    config_from_saved,
    read_config,
    read_run_record,
    read_summary,
    refuse_diverged,
    resumed_config,
)
from .runfolder import (
    RunLock,
    check_out_dir,
    discard_run,
    refuse_busy,
    refuse_taken,
    remove_temp_files,
)

__all__ = [
    "RunInterrupted",
    "RunResult",
    "StepOutOfMemory",
    "TrainingDiverged",
    "build_estimator",
    "build_model",
    "estimate_step_bytes",
    "evaluate",
    "read_config",
    "train",
]


class TrainingDiverged(RuntimeError):
    """The loss or the gradient estimate became NaN or infinite."""

    def __init__(
        self, epoch: int, step: int, what: str, checkpoint_epoch: int | None = None
    ) -> None:
        kept = (
            f"the last good checkpoint (epoch {checkpoint_epoch}) is kept"
            if checkpoint_epoch
            else "no checkpoint is kept: the run diverged before its first one"
        )
        super().__init__(
            f"{what} is not finite at epoch {epoch}, step {step}; training stopped and {kept}. "
            "A lower --lr may help"
        )
        self.epoch, self.step, self.what = epoch, step, what
        self.checkpoint_epoch = checkpoint_epoch

    def __reduce__(self):  # crosses process boundaries (compare --jobs N)
        return type(self), (self.epoch, self.step, self.what, self.checkpoint_epoch)


class StepOutOfMemory(ConfigError):
    """A training step does not fit in memory (estimated up front, or failed to allocate)."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, through the command line) stopped a run; says what was kept."""

    def __init__(
        self, run_dir: Path, epoch: int, epochs: int, checkpoint_epoch: int | None, kept: bool
    ) -> None:
        self.run_dir, self.epoch, self.epochs = run_dir, epoch, epochs
        self.checkpoint_epoch, self.kept = checkpoint_epoch, kept
        if checkpoint_epoch:
            text = (
                f"interrupted in epoch {epoch} of {epochs}; the checkpoint of epoch "
                f"{checkpoint_epoch} is kept. Continue with: forwardgrad train --resume {run_dir}"
            )
        else:
            text = (
                f"interrupted in epoch {epoch} of {epochs}, before the first checkpoint; "
                f"nothing was kept ({run_dir} was cleaned up)"
            )
        super().__init__(text)

    def __reduce__(self):  # crosses process boundaries (compare --jobs N)
        args = (self.run_dir, self.epoch, self.epochs, self.checkpoint_epoch, self.kept)
        return type(self), args


@dataclass
class RunResult:
    out_dir: Path
    summary: dict
    epochs_trained: int = 0  # epochs this call trained (0: the run was already complete)


def build_model(cfg: TrainConfig, data: Dataset) -> nn.Sequential:
    model = mlp(
        data.num_features, data.num_classes, depth=cfg.depth, width=cfg.width, bias=cfg.bias
    )
    if len(data.input_shape) > 1:
        model = nn.Sequential(nn.Flatten(), *model)
    return model


def build_estimator(cfg: TrainConfig, model: nn.Module) -> Estimator:
    return Estimator(
        model,
        cfg.guess,
        tangents=cfg.tangents,
        aggregate=cfg.aggregate,
        scope=cfg.scope,
        jvp=cfg.jvp,
        seed=cfg.seed,
        chunk_size=cfg.chunk_size,
        low_memory=cfg.low_memory,
        **cfg.guess_options(),
    )


# Offsets from the run's seed for the probe's own random streams, so probing never draws from
# the training run's generators and a run with probes follows the same trajectory as one without.
PROBE_SEED_OFFSET = 3


def probe_batch(
    data: Dataset, size: int, seed: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """A fixed batch of ``size`` training examples (features, labels), chosen by ``seed``."""
    n = len(data.x_train)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed + PROBE_SEED_OFFSET))
    pick = pick[: min(size, n)]
    x = data.features(data.x_train[pick]).to(device)
    return x, data.y_train[pick].to(device)


EstimatorFactory = Callable[[TrainConfig, nn.Module], Estimator]
"""``factory(cfg, model) -> Estimator``; :func:`build_estimator` is the default."""


def build_probe_estimator(
    cfg: TrainConfig, model: nn.Module, factory: EstimatorFactory | None = None
) -> Estimator:
    """The run's estimator with its own tangent seed, for probes beside training."""
    probe_cfg = dataclasses.replace(cfg, seed=cfg.seed + PROBE_SEED_OFFSET)
    return (factory or build_estimator)(probe_cfg, model)


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


# ------------------------------------------------------------------------ checks before a run

# Peak memory of a step over the formula below, measured 1.5-2.0 on MLPs (activation, wt and
# W~perp guesses, 16-256 tangents, widths 128-512, batch 512): each site keeps its tangents and
# their JVPs until the update. 2 errs on the side of refusing a step that would not fit.
STEP_MEMORY_FACTOR = 2
_MEMORY_FLAGS = "--tangents, --batch-size, or push tangents in groups with --chunk-size N"


def estimate_step_bytes(cfg: TrainConfig, data: Dataset) -> int:
    """Bytes a training step needs at its peak, roughly: tangents pushed at once x batch x
    (input features + every layer's width) x 4 bytes (float32) x :data:`STEP_MEMORY_FACTOR`.

    ``chunk_size`` bounds the tangents pushed at once for sum and mean (projection keeps all).
    """
    tangents = cfg.tangents
    if cfg.chunk_size is not None and cfg.aggregate != "projection":
        tangents = min(tangents, cfg.chunk_size)
    batch = min(cfg.batch_size, len(data.x_train))
    units = data.num_features + cfg.depth * cfg.width + data.num_classes
    return STEP_MEMORY_FACTOR * tangents * batch * units * 4


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory where a step's tensors live: the GPU's, or MemAvailable of /proc/meminfo
    (None where neither can be read, and then nothing is checked)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _gb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**28 else f"{n / 2**20:.0f} MB"


def check_step_memory(cfg: TrainConfig, data: Dataset, device: torch.device) -> None:
    """Refuse a step whose estimated memory exceeds what is available, naming the flags."""
    need = estimate_step_bytes(cfg, data)
    free = available_memory_bytes(device)
    if free is not None and need > free:
        raise StepOutOfMemory(
            f"a training step needs about {_gb(need)} (tangents {cfg.tangents} x batch "
            f"{cfg.batch_size} x {data.num_features + cfg.depth * cfg.width + data.num_classes} "
            f"units x 4 bytes x {STEP_MEMORY_FACTOR}), but {_gb(free)} is available on "
            f"{device}; lower {_MEMORY_FLAGS}"
        )


def _is_allocation_failure(error: BaseException) -> bool:
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text
    )


def _out_of_memory(cfg: TrainConfig, error: BaseException) -> StepOutOfMemory:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return StepOutOfMemory(
        f"a training step ran out of memory (tangents {cfg.tangents}, batch {cfg.batch_size}, "
        f"width {cfg.width}; {first}); lower {_MEMORY_FLAGS}"
    )


def check_first_step(estimator: Estimator, data: Dataset, device: torch.device) -> None:
    """Estimate once on a few training examples, then rewind the estimator's random state:
    errors that only a step meets (a sampler that cannot draw k tangents, a model a guess
    cannot read) come before any file is written, and the run's trajectory is unchanged."""
    if not hasattr(estimator, "state_dict") or not hasattr(estimator, "estimate"):
        return
    state = estimator.state_dict()
    x = data.features(data.x_train[:4]).to(device)
    try:
        estimator.estimate(x, data.y_train[:4].to(device))
    finally:
        estimator.load_state_dict(state)


def load_data(cfg: TrainConfig) -> Dataset:
    """The dataset ``cfg`` names, split and standardised by its seed."""
    options: dict = {"data_dir": cfg.data_dir} if cfg.data_dir else {}
    if cfg.augment:
        options["augment"] = True
    return load_dataset(cfg.dataset, seed=cfg.seed, **options)


def preflight(
    cfg: TrainConfig, data: Dataset | None = None, estimator_factory: EstimatorFactory | None = None
) -> Dataset:
    """Every check a run makes before it writes a file: the config, the data (loaded unless
    given; returned), the model and estimator, the memory of a step and one trial step."""
    cfg.validate(custom_guess=estimator_factory is not None)
    with torch_threads(cfg.threads):
        data = data if data is not None else load_data(cfg)
        _check_run(_build_run(cfg, data, Path("."), estimator_factory))
    return data


def _check_run(run: _Run) -> None:
    check_step_memory(run.cfg, run.data, run.device)
    check_first_step(run.estimator, run.data, run.device)


# ----------------------------------------------------------------------------- one run's state


@dataclass
class _Run:
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
    tensors: tuple[Tensor, Tensor, Tensor, Tensor] = ()  # x/y train, x/y test, on the device


def _build_run(
    cfg: TrainConfig, data: Dataset, out: Path, factory: EstimatorFactory | None
) -> _Run:
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data).to(device)
    estimator = (factory or build_estimator)(cfg, model)
    optimizer = make_optimizer(
        cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay, cfg.momentum
    )
    run = _Run(
        cfg=cfg,
        out=out,
        data=data,
        device=device,
        model=model,
        estimator=estimator,
        optimizer=optimizer,
        shuffle=torch.Generator().manual_seed(cfg.seed + 1),
        augment=torch.Generator().manual_seed(cfg.seed + 2),  # on-the-fly augmentation
        tensors=tuple(t.to(device) for t in (data.x_train, data.y_train, data.x_test, data.y_test)),
    )
    if cfg.probe_every:
        run.probe_estimator = build_probe_estimator(cfg, model, factory)
        run.probe_data = probe_batch(data, cfg.batch_size, cfg.seed, device)
    return run


def _run_probe(run: _Run, epoch: int) -> None:
    x, y = run.probe_data
    row = {"epoch": epoch, "step": run.step, **probe(run.model, run.probe_estimator, x, y)}
    run.probe_rows.append(row)
    write_jsonl(run.out / "probes.jsonl", run.probe_rows)


def _record(cfg: TrainConfig, data: Dataset) -> dict[str, Any]:
    return {
        "config": cfg.to_dict(),
        "seed": cfg.seed,
        "data": data.summary(),
        "environment": environment(),
        "resumed": [],
    }


def _start_fresh(run: _Run) -> None:
    write_json(run.out / "config.json", _record(run.cfg, run.data))
    if run.probe_estimator is not None:
        _run_probe(run, 0)  # the starting point of the trajectory


def _read_rows(path: Path, up_to: int) -> list[dict]:
    try:
        return [r for r in read_jsonl(path) if r["epoch"] <= up_to]
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{path} is corrupt ({e}); cannot resume") from None


def _restore(run: _Run, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint's states into the session, or say why they do not fit its config."""
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
    run.rows = _read_rows(run.out / "metrics.jsonl", run.start_epoch)
    if run.probe_estimator is not None:
        run.probe_rows = _read_rows(run.out / "probes.jsonl", run.start_epoch)


def _save(run: _Run, epoch: int) -> None:
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
    save_checkpoint(run.out / "checkpoint.pt", state)
    run.checkpoint_epoch = epoch


# ------------------------------------------------------------------------------- the loop


def _train_epoch(run: _Run, epoch: int) -> None:
    cfg, data = run.cfg, run.data
    x_train, y_train = run.tensors[:2]
    order = torch.randperm(len(x_train), generator=run.shuffle).to(run.device)
    run.model.train()
    for start in range(0, len(x_train), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        try:
            loss = run.estimator.step(data.features(x_train[idx], True, run.augment), y_train[idx])
        except (RuntimeError, MemoryError) as e:
            if _is_allocation_failure(e):
                raise _out_of_memory(cfg, e) from None
            raise
        run.step += 1
        grads = [p.grad for p in run.model.parameters() if p.grad is not None]
        if not math.isfinite(float(loss)):
            raise TrainingDiverged(epoch, run.step, "the loss", run.checkpoint_epoch)
        if not _all_finite(grads):
            raise TrainingDiverged(epoch, run.step, "the gradient estimate", run.checkpoint_epoch)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)


def _end_epoch(run: _Run, epoch: int, seconds: float) -> dict:
    cfg, data, model = run.cfg, run.data, run.model
    run.elapsed += seconds
    model.eval()
    x_train, y_train, x_test, y_test = run.tensors
    train_loss, train_acc = evaluate(model, x_train, y_train, features=data.features)
    test_loss, test_acc = evaluate(model, x_test, y_test, features=data.features)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(epoch, run.step, "the training loss", run.checkpoint_epoch)
    row = {
        "epoch": epoch,
        "step": run.step,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "seconds": seconds,
    }
    run.rows.append(row)
    write_jsonl(run.out / "metrics.jsonl", run.rows)
    if run.tensorboard is not None:
        run.tensorboard.log(row)
    if run.probe_estimator is not None and epoch % cfg.probe_every == 0:
        _run_probe(run, epoch)  # before the checkpoint, which saves its generator
    if epoch % cfg.checkpoint_every == 0 or epoch == cfg.epochs:
        _save(run, epoch)
    return row


def _run_epochs(run: _Run) -> None:
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
        _train_epoch(run, run.epoch)
        row = _end_epoch(run, run.epoch, time.perf_counter() - t0)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(
                loss=f"{row['train_loss']:.3f}",
                train=f"{row['train_acc']:.3f}",
                test=f"{row['test_acc']:.3f}",
            )


def _summary(run: _Run, status: str, failure: dict | None) -> dict:
    rows = run.rows
    summary = {
        "status": status,
        "guess": run.cfg.guess,
        "seed": run.cfg.seed,
        "epochs_completed": rows[-1]["epoch"] if rows else 0,
        "steps": run.step,
        "train_seconds": run.elapsed,
        "final": rows[-1] if rows else None,
        "failure": failure,
        "checkpoint_epoch": run.checkpoint_epoch,
        "config": run.cfg.to_dict(),
    }
    write_json(run.out / "summary.json", summary)
    return summary


# --------------------------------------------------------------------------------- train()


def train(
    cfg: TrainConfig | None,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    epochs: int | None = None,
    estimator_factory: EstimatorFactory | None = None,
) -> RunResult:
    """Train with ``cfg`` into ``out_dir`` (which must hold no other run).

    With ``resume``, continue the run saved in ``out_dir`` from its checkpoint. ``cfg`` may then
    be None (the saved config) or a config that differs from the saved one only in
    :data:`~forwardgrad.resume.RESUME_FIELDS`, which it changes; anything else is refused with
    :class:`~forwardgrad.resume.ResumeRefused`. ``epochs`` sets the epochs to train to (on
    resume: extends the run). ``estimator_factory`` builds the training (and probe) estimator
    instead of :func:`build_estimator`, for estimators that are no registered guess; such a run
    must be resumed with the same factory.

    Raises :class:`TrainingDiverged` (after writing ``summary.json``), :class:`RunInterrupted`
    on Ctrl-C, :class:`StepOutOfMemory`, and :class:`~forwardgrad.config.ConfigError`,
    :class:`~forwardgrad.checkpoint.CheckpointError` or a ``runfolder`` error for bad input.
    """
    out = Path(out_dir)
    check_out_dir(out)
    refuse_busy(out)
    custom = estimator_factory is not None
    if resume:
        record, cfg = _resume_request(out, cfg, epochs, custom)
    else:
        if cfg is None:
            raise ConfigError("train() needs a config for a new run (cfg=None only on resume)")
        cfg = dataclasses.replace(cfg, epochs=epochs) if epochs is not None else cfg
        cfg.validate(custom)
        refuse_taken(out)
        record = None
    with torch_threads(cfg.threads):
        data = data if data is not None else load_data(cfg)
        if record is not None:
            check_same_data(record, data.summary(), out)
        run = _build_run(cfg, data, out, estimator_factory)
        run.custom_guess = custom
        _check_run(run)
        return _train_in_folder(run, record, progress)


def _resume_request(
    out: Path, requested: TrainConfig | None, epochs: int | None, custom_guess: bool
) -> tuple[dict[str, Any], TrainConfig]:
    """The saved record and the config to continue with; refuses what cannot resume."""
    if not (out / "checkpoint.pt").exists():
        why = (
            "the folder does not exist"
            if not out.exists()
            else "the run never finished an epoch"
            if (out / "config.json").exists()
            else "it is not a forwardgrad run folder"
        )
        raise FileNotFoundError(f"cannot resume: no checkpoint at {out / 'checkpoint.pt'} ({why})")
    record = read_run_record(out)
    saved = config_from_saved(record["config"], out / "config.json", custom_guess)
    refuse_diverged(read_summary(out), out)
    cfg, _ = resumed_config(saved, requested, epochs, out, custom_guess)
    return record, cfg


def _train_in_folder(run: _Run, record: dict | None, progress: bool) -> RunResult:
    """Lock the folder, start or restore the run, train it; clean up what a run that never
    reached its first checkpoint wrote."""
    fresh = record is None
    discarded = False
    run.progress = progress
    with RunLock(run.out) as lock:
        remove_temp_files(run.out)
        try:
            if fresh:
                refuse_taken(run.out)  # again, now that no other process can start here
                _start_fresh(run)
            else:
                done = _resume_in_folder(run, record)
                if done is not None:
                    return done
            return _train_and_finish(run)
        except TrainingDiverged:
            raise
        except BaseException as e:
            discarded = fresh and run.checkpoint_epoch is None and not _foreign_files(e)
            if discarded:
                discard_run(run.out, created=False)
            if isinstance(e, KeyboardInterrupt) and not isinstance(e, RunInterrupted):
                raise RunInterrupted(
                    run.out, max(run.epoch, 1), run.cfg.epochs, run.checkpoint_epoch, not discarded
                ) from None
            raise
        finally:
            if run.tensorboard is not None:
                run.tensorboard.close()
            if discarded and lock.created:
                lock.release()
                discard_run(run.out, created=True)


def _foreign_files(error: BaseException) -> bool:
    # A folder found taken under the lock holds another run's files: never remove them.
    from .runfolder import RunFolderTaken

    return isinstance(error, RunFolderTaken)


def _resume_in_folder(run: _Run, record: dict) -> RunResult | None:
    """Restore the checkpoint; a RunResult when there is nothing left to train."""
    path = run.out / "checkpoint.pt"
    state = load_checkpoint(path, map_location=run.device, require=TRAINING_KEYS)
    saved = config_from_saved(record["config"], run.out / "config.json", run.custom_guess)
    check_checkpoint_config(state, saved, run.out)
    _restore(run, state, path)
    cfg = run.cfg
    if run.start_epoch > cfg.epochs:
        raise ResumeRefused(
            f"{run.out} is at epoch {run.start_epoch}; epochs = {cfg.epochs} would not extend "
            f"it. Pass --epochs above {run.start_epoch} to train it further"
        )
    if run.start_epoch == cfg.epochs:
        summary = read_summary(run.out)
        if summary is None or summary.get("status") != "completed":
            summary = _summary(run, "completed", None)
        return RunResult(run.out, summary, epochs_trained=0)
    changes = {k: v for k, v in cfg.to_dict().items() if saved.to_dict().get(k) != v}
    record = {**record, "config": cfg.to_dict()}
    entry = {"epoch": run.start_epoch, "changed": changes, "environment": environment()}
    record["resumed"] = [*record.get("resumed", []), entry]
    write_json(run.out / "config.json", record)
    (run.out / "summary.json").unlink(missing_ok=True)  # stale until this session ends
    return None


def _train_and_finish(run: _Run) -> RunResult:
    if run.cfg.tensorboard:
        from .tblog import TensorBoardLog

        run.tensorboard = TensorBoardLog(run.out, run.start_epoch)
    try:
        _run_epochs(run)
    except TrainingDiverged as e:
        failure = {"epoch": e.epoch, "step": e.step, "what": e.what, "message": str(e)}
        _summary(run, "diverged", failure)
        raise
    summary = _summary(run, "completed", None)
    return RunResult(run.out, summary, epochs_trained=run.cfg.epochs - run.start_epoch)


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
