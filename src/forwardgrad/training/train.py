"""Training: one entry point for every estimator, with evaluation, checkpoints and metric logs.

A run directory holds ``config.json`` (the full config, seed, data, versions and thread counts,
and one entry per resumed session), ``metrics.jsonl`` (one line per epoch), ``checkpoint.pt``
(the last good state, for ``--resume``) and ``summary.json``; with ``probe_every`` N > 0 also
``probes.jsonl`` (the gradient estimate against backprop on a fixed batch of the training set,
at epoch 0 and every N epochs), with ``tensorboard`` also ``tensorboard/``. Every file is
written atomically.

Before anything is written, the config is validated, the data loaded, the model and estimator
built, the memory of a step estimated and one step tried on a few examples (its random state
rewound), so a run that cannot start leaves no folder. While it trains, the folder is locked
(:mod:`forwardgrad.training.runfolder`). A run that stops before its first checkpoint (an error,
Ctrl-C) removes what it wrote; one that diverges keeps its ``summary.json`` saying where.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import models
from ..core.state import untouched
from ..core.strategies import call_seed
from ..data import Dataset, load_dataset
from ..distributed import CollectiveFailed, Collectives, LaunchError, is_leader
from ..environment import environment, torch_threads
from ..estimation import Estimator
from ..io import write_json
from ..memory import MEMORY_FLAGS, available_memory_bytes, format_bytes
from ..models import finetune
from .checkpoint import TRAINING_KEYS, load_checkpoint
from .config import ConfigError, TrainConfig
from .loop import (
    Callback,
    Session,
    evaluate,
    fit,
    processes_of,
    restore,
    restore_state,
    session_state,
    standard_callbacks,
    start_fresh,
    summary_of,
    write_summary,
)
from .optimizers import make_optimizer
from .processes import (
    ParameterChecksum,
    ProcessesDisagree,
    agree,
    agree_on_config,
    await_leader,
    check_identical,
    check_shards,
    joined,
    release_followers,
    stop_followers,
)
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
from .run_errors import RunInterrupted, StepOutOfMemory, TrainingDiverged
from .runfolder import (
    RunFolderTaken,
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


@dataclass
class RunResult:
    out_dir: Path
    summary: dict
    epochs_trained: int = 0  # epochs this call trained (0: the run was already complete)


def build_model(cfg: TrainConfig, data: Dataset, weights: bool = True) -> nn.Module:
    """``cfg.model`` for the data's examples (``forwardgrad.models.build_model``), then the
    fine-tuning settings in order: weights from ``init_from`` (unless ``weights`` is False:
    where a checkpoint replaces every weight, so a resumed run does not need the file), LoRA
    adapters, and the trainable subset (the ``trainable`` patterns plus the adapters and
    prompt tokens; all by default)."""
    model = models.build_model(
        cfg.model, data.input_shape, data.num_classes, **cfg.model_options()
    )
    added = ["embed.prompts"] if cfg.prompts else []
    if cfg.init_from is not None and weights:
        finetune.load_weights(model, cfg.init_from, new=added)
    finetune.tune_only(
        model, cfg.patterns("trainable"), cfg.patterns("lora"), cfg.lora_rank, cfg.lora_alpha, added
    )
    return model


def initial_model(cfg: TrainConfig, data: Dataset) -> nn.Module:
    """The model ``train(cfg)`` starts from (the same seed, the same builder)."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg, data)


def checkpoint_model(cfg: TrainConfig, data: Dataset, path: Path) -> tuple[nn.Module, int]:
    """The model saved in the checkpoint file ``path`` (in eval mode) and its epoch."""
    state = load_checkpoint(path, require=("model", "epoch"))
    model = build_model(cfg, data, weights=False)
    model.load_state_dict(state["model"])
    return model.eval(), int(state["epoch"])


def build_estimator(
    cfg: TrainConfig, model: nn.Module, parallel: Collectives | None = None
) -> Estimator:
    """The estimator ``cfg`` describes; ``parallel``: this process's share of a run over
    several processes."""
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
        sites=cfg.site_patterns(),
        parallel=parallel,
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


# ------------------------------------------------------------------------ checks before a run

# Peak memory of a step over the formula below, measured 1.5-2.0 on MLPs (activation, wt and
# W~perp guesses, 16-256 tangents, widths 128-512, batch 512): each site keeps its tangents and
# their JVPs until the update. 2 errs on the side of refusing a step that would not fit.
STEP_MEMORY_FACTOR = 2


def step_units(estimator: Estimator, data: Dataset) -> int:
    """Numbers per example and tangent a step keeps: the input and every site call's activity
    (for a weight-space guess, the parameters, which its tangents span, over the batch)."""
    x = data.features(data.x_train[:2])
    engine = estimator.engine_for(x.to(_device_of(estimator)), data.y_train[:2].to(x.device))
    widths = engine.layout.widths
    if widths:
        return int(x[0].numel()) + sum(widths)
    params = sum(p.numel() for p in estimator.model.parameters() if p.requires_grad)
    return int(x[0].numel()) + data.num_classes + params // max(1, len(data.x_train))


def _device_of(estimator: Estimator) -> torch.device:
    p = next(estimator.model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def estimate_step_bytes(cfg: TrainConfig, data: Dataset, estimator: Estimator) -> int:
    """Bytes a training step needs at its peak, roughly: tangents pushed at once x batch x
    :func:`step_units` x 4 bytes (float32) x :data:`STEP_MEMORY_FACTOR`.

    ``chunk_size`` bounds the tangents pushed at once for sum and mean (projection keeps all).
    """
    tangents = cfg.tangents
    if cfg.chunk_size is not None and cfg.aggregate != "projection":
        tangents = min(tangents, cfg.chunk_size)
    batch = min(cfg.batch_size, len(data.x_train))
    return STEP_MEMORY_FACTOR * tangents * batch * step_units(estimator, data) * 4


def check_step_memory(run: Session) -> None:
    """Refuse a step whose estimated memory exceeds what is available, naming the flags."""
    cfg, data = run.cfg, run.data
    if not hasattr(run.estimator, "engine_for"):
        return
    need = estimate_step_bytes(cfg, data, run.estimator)
    free = available_memory_bytes(run.device)
    if free is not None and need > free:
        raise StepOutOfMemory(
            f"a training step needs about {format_bytes(need)} (tangents {cfg.tangents} x batch "
            f"{cfg.batch_size} x {step_units(run.estimator, data)} numbers per example x 4 "
            f"bytes x {STEP_MEMORY_FACTOR}), but {format_bytes(free)} is available on "
            f"{run.device}; lower {MEMORY_FLAGS}"
        )


def check_first_step(estimator: Estimator, data: Dataset, device: torch.device) -> None:
    """Estimate once on a few training examples, then rewind the estimator's random state (and
    the model's BatchNorm statistics and the global random state, which dropout draws from):
    errors that only a step meets (a sampler that cannot draw k tangents, a model a guess
    cannot read) come before any file is written, and the run's trajectory is unchanged."""
    if not hasattr(estimator, "state_dict") or not hasattr(estimator, "estimate"):
        return
    state = estimator.state_dict()
    x = data.features(data.x_train[:4]).to(device)
    try:
        with untouched(estimator.model, device):
            estimator.estimate(x, data.y_train[:4].to(device))
    finally:
        estimator.load_state_dict(state)


def load_data(cfg: TrainConfig, seed: int | None = None) -> Dataset:
    """The dataset ``cfg`` names, split and standardised by its seed (or ``seed``), in the
    layout its model takes (flat vectors for the MLP, ``(C, H, W)`` images for the others)."""
    options: dict = {"data_dir": cfg.data_dir} if cfg.data_dir else {}
    if cfg.augment:
        options["augment"] = True
    layout = models.MODELS[cfg.model].layout
    split_seed = cfg.seed if seed is None else seed
    return load_dataset(cfg.dataset, seed=split_seed, layout=layout, **options)


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


def _check_run(run: Session) -> None:
    check_step_memory(run)
    check_first_step(run.estimator, run.data, run.device)


def _build_run(
    cfg: TrainConfig,
    data: Dataset,
    out: Path,
    factory: EstimatorFactory | None,
    team: Collectives | None = None,
    fresh: bool = True,
) -> Session:
    device = _run_device(cfg, team)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data, weights=fresh).to(device)  # a resumed run: its checkpoint
    if team is not None and team.grid.data_rank > 0:
        # Each data shard draws its own dropout masks (the processes of one shard, the same).
        torch.manual_seed(call_seed(cfg.seed, f"data shard {team.grid.data_rank}"))
    if team is None:
        estimator = (factory or build_estimator)(cfg, model)
    elif factory is not None:
        raise LaunchError("an estimator_factory's estimator cannot be split over processes")
    else:
        check_shards(team, cfg, len(data.x_train))
        estimator = build_estimator(cfg, model, parallel=team)
    optimizer = make_optimizer(
        cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay, cfg.momentum
    )
    run = Session(
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
        team=team,
    )
    if cfg.probe_every and run.writes:
        run.probe_estimator = build_probe_estimator(cfg, model, factory)
        run.probe_data = probe_batch(data, cfg.batch_size, cfg.seed, device)
    return run


def _run_device(cfg: TrainConfig, team: Collectives | None) -> torch.device:
    """``cfg.device``; on CUDA with several processes, each process's own GPU."""
    device = torch.device(cfg.device)
    if team is not None and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


# --------------------------------------------------------------------------------- train()


def train(
    cfg: TrainConfig | None,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    epochs: int | None = None,
    estimator_factory: EstimatorFactory | None = None,
    callbacks: Sequence[Callback] = (),
) -> RunResult:
    """Train with ``cfg`` into ``out_dir`` (which must hold no other run).

    With ``resume``, continue the run saved in ``out_dir`` from its checkpoint. ``cfg`` may then
    be None (the saved config) or a config that differs from the saved one only in
    :data:`~forwardgrad.training.resume.RESUME_FIELDS`, which it changes; anything else is refused
    with :class:`~forwardgrad.training.resume.ResumeRefused`. ``epochs`` sets the epochs to train
    to (on resume: extends the run). ``estimator_factory`` builds the training (and probe) estimator
    instead of :func:`build_estimator`, for estimators that are no registered guess; such a run
    must be resumed with the same factory. ``callbacks`` run after the standard ones (divergence
    guard, metrics, probes, checkpoints) at every step and epoch, see :class:`~.loop.Callback`.

    In a ``torchrun`` launch every process calls ``train`` with the same arguments and
    ``cfg.parallel`` says how they share each step (:mod:`forwardgrad.distributed`); process 0
    keeps the folder and the others write nothing (:mod:`.processes`).

    Raises :class:`TrainingDiverged` (after writing ``summary.json``), :class:`RunInterrupted`
    on Ctrl-C, :class:`StepOutOfMemory`, and :class:`~forwardgrad.training.config.ConfigError`,
    :class:`~forwardgrad.training.checkpoint.CheckpointError` or a ``runfolder`` error for bad
    input; over several processes also :class:`~forwardgrad.distributed.LaunchError`,
    :class:`~forwardgrad.distributed.CollectiveFailed` (another process stopped or hung) and
    :class:`~.processes.ProcessesDisagree`.
    """
    out = Path(out_dir)
    custom = estimator_factory is not None
    if resume:
        check_out_dir(out)
        record, cfg = _resume_request(out, cfg, epochs, custom)
    else:
        if cfg is None:
            raise ConfigError("train() needs a config for a new run (cfg=None only on resume)")
        cfg = dataclasses.replace(cfg, epochs=epochs) if epochs is not None else cfg
        cfg.validate(custom)
        record = None
    with joined(cfg) as team:
        return _train_in_team(
            team, cfg, out, resume, record, progress, data, estimator_factory, callbacks
        )


def _train_in_team(
    team: Collectives | None,
    cfg: TrainConfig,
    out: Path,
    resume: bool,
    record: dict | None,
    progress: bool,
    data: Dataset | None,
    factory: EstimatorFactory | None,
    callbacks: Sequence[Callback],
) -> RunResult:
    """Agree with the other processes (if any) on the config and folder, build the run in
    each, then train it: the leader in its folder, the others following."""
    if team is not None:
        agree_on_config(team, cfg, resume)
    agree(team, _folder_problem(out, resume) if is_leader(team) else None, "the run folder")
    with torch_threads(cfg.threads):
        run = None
        try:
            data = data if data is not None else load_data(cfg)
            if record is not None:
                check_same_data(record, data.summary(), out)
            run = _build_run(cfg, data, out, factory, team, fresh=record is None)
            run.custom_guess = factory is not None
            run.callbacks = list(callbacks)
            run.progress = progress
            check_step_memory(run)
        except Exception as e:
            agree(team, e, "building the run")
        agree(team, None, "building the run")
        try:  # a step exchanges with the other processes: agreed on separately
            check_first_step(run.estimator, run.data, run.device)
        except Exception as e:
            agree(team, e, "the trial step")
        agree(team, None, "the trial step")
        if not run.writes:
            return _follow(run)
        return _train_in_folder(run, record, progress)


def _folder_problem(out: Path, resume: bool) -> Exception | None:
    """Why the run cannot use ``out`` (None: it can); checked by the process that keeps it."""
    try:
        check_out_dir(out)
        refuse_busy(out)
        if not resume:
            refuse_taken(out)
    except Exception as e:
        return e
    return None


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


def _train_in_folder(run: Session, record: dict | None, progress: bool) -> RunResult:
    """Lock the folder, start or restore the run, train it; clean up what a run that never
    reached its first checkpoint wrote."""
    fresh = record is None
    discarded = False
    run.progress = progress
    with RunLock(run.out) as lock:
        remove_temp_files(run.out)
        try:
            done = _start_in_folder(run, record)
            return done if done is not None else _train_and_finish(run)
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
            if isinstance(e, (CollectiveFailed, ProcessesDisagree)):
                raise type(e)(f"{e}. {_what_was_kept(run, discarded)}") from None
            raise
        finally:
            if run.tensorboard is not None:
                run.tensorboard.close()
            if discarded and lock.created:
                lock.release()
                discard_run(run.out, created=True)


def _start_in_folder(run: Session, record: dict | None) -> RunResult | None:
    """Start the run (no ``record``) or restore it; tell the other processes, if any, what to
    continue from. A RunResult when there is nothing left to train."""
    try:
        if record is None:
            refuse_taken(run.out)  # again, now that no other process can start here
            start_fresh(run)
        else:
            done = _resume_in_folder(run, record)
            if done is not None:
                release_followers(run, session_state(run, run.start_epoch), done=True)
                return done
    except BaseException as e:
        stop_followers(run, e)
        raise
    release_followers(run, None if record is None else session_state(run, run.start_epoch))
    return None


def _what_was_kept(run: Session, discarded: bool) -> str:
    if run.checkpoint_epoch:
        return (
            f"The checkpoint of epoch {run.checkpoint_epoch} is kept; continue with "
            f"forwardgrad train --resume {run.out} (with any number of processes)"
        )
    return f"No checkpoint was written{f'; {run.out} was cleaned up' if discarded else ''}"


def _foreign_files(error: BaseException) -> bool:
    # A folder found taken under the lock holds another run's files: never remove them.
    return isinstance(error, RunFolderTaken)


def _resume_in_folder(run: Session, record: dict) -> RunResult | None:
    """Restore the checkpoint; a RunResult when there is nothing left to train."""
    path = run.out / "checkpoint.pt"
    state = load_checkpoint(path, map_location=run.device, require=TRAINING_KEYS)
    saved = config_from_saved(record["config"], run.out / "config.json", run.custom_guess)
    check_checkpoint_config(state, saved, run.out)
    restore(run, state, path)
    cfg = run.cfg
    if run.start_epoch > cfg.epochs:
        raise ResumeRefused(
            f"{run.out} is at epoch {run.start_epoch}; epochs = {cfg.epochs} would not extend "
            f"it. Pass --epochs above {run.start_epoch} to train it further"
        )
    if run.start_epoch == cfg.epochs:
        summary = read_summary(run.out)
        if summary is None or summary.get("status") != "completed":
            summary = write_summary(run, "completed", None)
        return RunResult(run.out, summary, epochs_trained=0)
    changes = {k: v for k, v in cfg.to_dict().items() if saved.to_dict().get(k) != v}
    record = {**record, "config": cfg.to_dict()}
    entry = {
        "epoch": run.start_epoch,
        "changed": changes,
        "environment": environment(),
        "processes": processes_of(run.team, run.cfg),
    }
    record["resumed"] = [*record.get("resumed", []), entry]
    write_json(run.out / "config.json", record)
    (run.out / "summary.json").unlink(missing_ok=True)  # stale until this session ends
    return None


def _follow(run: Session) -> RunResult:
    """A process that does not keep the folder: the leader's state, then the same training."""
    state, done = await_leader(run)
    if state is not None:
        restore_state(run, state, run.out / "checkpoint.pt")
    if not done:
        _fit(run)
    trained = 0 if done else run.cfg.epochs - run.start_epoch
    return RunResult(run.out, summary_of(run, "completed", None), epochs_trained=trained)


def _fit(run: Session) -> None:
    guards = []
    if run.team is not None:
        check_identical(run, "the start")
        guards.append(ParameterChecksum(run.cfg.checksum_every))
    fit(run, [*standard_callbacks(guards), *run.callbacks])


def _train_and_finish(run: Session) -> RunResult:
    if run.cfg.tensorboard:
        from .tblog import TensorBoardLog

        run.tensorboard = TensorBoardLog(run.out, run.start_epoch)
    try:
        _fit(run)
    except TrainingDiverged as e:
        failure = {"epoch": e.epoch, "step": e.step, "what": e.what, "message": str(e)}
        write_summary(run, "diverged", failure)
        raise
    summary = write_summary(run, "completed", None)
    return RunResult(run.out, summary, epochs_trained=run.cfg.epochs - run.start_epoch)
