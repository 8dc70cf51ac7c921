"""Metrics to TensorBoard, for users who watch runs there (the ``tensorboard`` extra).

Event files are appended to as the run trains, so unlike every other run file they are not
written atomically; ``metrics.jsonl`` stays the record. A resumed run purges the events past its
checkpoint, so epochs trained again after an interruption are not drawn twice.
"""

from __future__ import annotations

from pathlib import Path

from .runfolder import TENSORBOARD_DIR

_SCALARS = {
    "train_acc": "accuracy/train",
    "test_acc": "accuracy/test",
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "seconds": "time/epoch_seconds",
}


class TensorBoardLog:
    """One scalar per metric and epoch under ``RUN_DIR/tensorboard``."""

    def __init__(self, run_dir: str | Path, start_epoch: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = start_epoch + 1 if start_epoch else None
        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=purge)

    def log(self, row: dict) -> None:
        for key, tag in _SCALARS.items():
            if key in row:
                self.writer.add_scalar(tag, row[key], row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
