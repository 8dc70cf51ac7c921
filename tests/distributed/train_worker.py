"""One process of a two-process training test, through the Python API, with a fault to
inject (``FAULT`` in the environment, on the process ``FAULT_RANK``)."""

from __future__ import annotations

import json
import os
import sys
import time

import torch

from forwardgrad.training.config import TrainConfig
from forwardgrad.training.loop import Callback
from forwardgrad.training.train import train


class Fault(Callback):
    """At the first step of the second epoch (after the first checkpoint): die, hang, or
    nudge a parameter."""

    def __init__(self, kind: str) -> None:
        self.kind, self.fired = kind, False

    def after_step(self, run, loss) -> None:
        if run.epoch != 2 or self.fired:
            return
        self.fired = True
        if self.kind == "die":
            os._exit(7)
        if self.kind == "hang":
            time.sleep(120)
        if self.kind == "nudge":
            with torch.no_grad():
                next(run.model.parameters()).view(-1)[0] += 1e-3


def main(out: str, settings: str) -> None:
    rank = int(os.environ["RANK"])
    cfg = TrainConfig(**json.loads(settings))
    if os.environ.get("LR_ON_RANK1") and rank == 1:
        cfg.lr = float(os.environ["LR_ON_RANK1"])
    fault = os.environ.get("FAULT") if str(rank) == os.environ.get("FAULT_RANK") else None
    train(cfg, out, progress=False, callbacks=[Fault(fault)] if fault else ())


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
