"""A run shared by the processes of a ``torchrun`` launch: who keeps the folder, and how the
processes agree.

Process 0 (the *leader*) owns the run folder: it locks it, writes every file and reads the
checkpoint. The others (the *followers*) write nothing; they receive the leader's state on a
resume. Every process trains: the estimator shares each step's work (:mod:`forwardgrad.
distributed`), so all of them hold the same parameters, which :class:`ParameterChecksum`
checks (bit patterns, every ``checksum_every`` steps and before every checkpoint).

Wherever one process could fail alone (a folder check, a build, a lock), the processes agree
before going on (:func:`agree`): every one learns of the failure and stops with its message,
instead of waiting for a partner that has gone. Failures during training surface as
:class:`~forwardgrad.distributed.CollectiveFailed` within ``parallel_timeout`` seconds.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor

from ..distributed import (
    CollectiveFailed,
    Collectives,
    LaunchError,
    collectives_for,
    init_process_group,
    launched_world,
    leave,
)
from .config import TrainConfig
from .loop import Callback, Session


class ProcessesDisagree(RuntimeError):
    """The processes of one run hold different parameters (or configs): stop, not guess."""


@contextmanager
def joined(cfg: TrainConfig) -> Iterator[Collectives | None]:
    """This process's collectives for ``cfg.parallel`` (None for a run of one process, which
    trains exactly as without ``--parallel``); a process group made here ends here."""
    _, world = launched_world()
    if world == 1:
        yield None
        return
    created = init_process_group(cfg.device, cfg.parallel_timeout)
    try:
        yield collectives_for(cfg.parallel, cfg.tangent_procs, cfg.parallel_timeout)
    finally:
        if created:
            leave()


def agree_on_config(team: Collectives, cfg: TrainConfig, resume: bool) -> None:
    """Every process must run the same config (the same command); name what differs."""
    mine = {"resume": resume, **cfg.to_dict()}
    everyone = team.gather_objects(mine, "the processes' configs")
    for rank, theirs in enumerate(everyone):
        diff = sorted(k for k in mine if theirs.get(k) != everyone[0].get(k))
        if diff:
            shown = ", ".join(f"{k} = {everyone[0].get(k)!r} vs {theirs.get(k)!r}" for k in diff)
            raise LaunchError(
                f"process {rank} was started with another config than process 0 ({shown}); "
                "launch every process with the same command"
            )


def agree(team: Collectives | None, error: BaseException | None, what: str) -> None:
    """Every process tells the others whether ``what`` worked for it. A process that failed
    re-raises its own error; the others raise :class:`LaunchError` naming the failed one."""
    if team is None:
        if error is not None:
            raise error
        return
    mine = None if error is None else _one_line(error)
    everyone = team.gather_objects(mine, f"whether {what} worked")
    if error is not None:
        raise error
    failed = [(rank, message) for rank, message in enumerate(everyone) if message is not None]
    if failed:
        rank, message = failed[0]
        raise LaunchError(f"process {rank} failed in {what}, so this process stops: {message}")


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return (
        text
        if isinstance(error, (ValueError, OSError, RuntimeError))
        else ("".join(traceback.format_exception_only(error)).strip())
    )


def check_shards(team: Collectives, cfg: TrainConfig, train_examples: int) -> None:
    """Every data shard of every batch, the last one included, must hold an example."""
    shards = team.grid.data_size
    if shards == 1:
        return
    last = train_examples % cfg.batch_size or cfg.batch_size
    smallest = min(cfg.batch_size, train_examples, last)
    if smallest < shards:
        raise LaunchError(
            f"--parallel {cfg.parallel} splits every batch over {shards} processes, but a batch "
            f"of {smallest} examples occurs (batch size {cfg.batch_size}, {train_examples} "
            "training examples): choose a batch size whose last batch has at least "
            f"{shards} examples"
        )


# ------------------------------------------------------------------ leader and followers


def release_followers(run: Session, state: dict[str, Any] | None, done: bool = False) -> None:
    """The leader's word to start training: the state to continue from (None: a fresh run),
    or that the run is already complete."""
    if run.team is not None:
        run.team.broadcast_object(("go", state, done), "the leader's go")


def stop_followers(run: Session, error: BaseException) -> None:
    """The leader could not start: tell the followers why (they raise :class:`LaunchError`)."""
    if run.team is not None:
        try:
            run.team.broadcast_object(("stop", _one_line(error), False), "the leader's stop")
        except CollectiveFailed:
            pass  # they have gone already


def await_leader(run: Session) -> tuple[dict[str, Any] | None, bool]:
    """A follower waits for the leader's go: (state to continue from or None, done)."""
    word, payload, done = run.team.broadcast_object(None, "the leader's go")
    if word == "stop":
        raise LaunchError(f"process 0 could not start the run, so this process stops: {payload}")
    return payload, done


class ParameterChecksum(Callback):
    """Every ``checksum_every`` steps and before each epoch's checkpoint: the processes'
    parameters and buffers must be bit-identical, or the run stops naming the step."""

    def __init__(self, every: int) -> None:
        self.every = every

    def after_step(self, run: Session, loss: Tensor) -> None:
        if run.step % self.every == 0:
            check_identical(run, f"step {run.step}")

    def after_epoch(self, run: Session, row: dict[str, Any]) -> None:
        check_identical(run, f"the end of epoch {run.epoch}")


def check_identical(run: Session, when: str) -> None:
    if run.team is None:
        return
    tensors = [*run.model.parameters(), *run.model.buffers()]
    sums = run.team.parameter_checksums(tensors)
    differ = [rank for rank, s in enumerate(sums) if s != sums[0]]
    if differ:
        raise ProcessesDisagree(
            f"at {when} the parameters of process(es) {differ} differ from process 0's; the "
            "processes no longer train one model, so the run stops (the last checkpoint is "
            "kept). Their PyTorch builds, devices or thread counts may differ"
        )
