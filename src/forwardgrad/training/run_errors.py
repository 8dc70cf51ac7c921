"""How a training run can stop short, as exceptions that say what happened and what was kept."""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError


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
