"""One process of the two-process estimate test: every case's estimates, saved to a file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from parallel_cases import BOTH, CASES, STEPS

from forwardgrad.distributed import collectives_for, init_process_group


def main(out: Path) -> None:
    torch.set_num_threads(1)
    init_process_group("cpu", timeout_s=60)
    results = {}
    cases = BOTH if int(os.environ["WORLD_SIZE"]) == 4 else CASES
    for name, case in cases.items():
        comm = collectives_for(case.mode, tangent_procs=2 if case.mode == "both" else None)
        model, x, y = case.problem()
        estimator = case.estimator(model, parallel=comm)
        lo, hi = comm.grid.data_slice(len(x))
        steps = []
        for _ in range(STEPS):
            loss, grads = estimator.estimate(x[lo:hi], y[lo:hi])
            steps.append((loss, [grads.get(p) for p in model.parameters()]))
        results[name] = {"steps": steps, "sent": dict(comm.sent), "grid": comm.grid}
    torch.save(results, out / f"rank{comm.grid.rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
