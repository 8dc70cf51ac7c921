"""One of the two processes of ``forwardgrad bench --preset distributed`` (see
:mod:`.distributed`): each case's step times and bytes sent; process 0 writes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from ..distributed import collectives_for, init_process_group
from ..io import write_json
from .distributed import Setup, build_case, timed_steps


def main(out: Path, setup: Setup) -> None:
    torch.set_num_threads(1)
    init_process_group("cpu", timeout_s=600)
    results = {}
    for case in setup.cases():
        comm = collectives_for(case.mode)
        model, x, y, est = build_case(setup, case, parallel=comm)
        lo, hi = comm.grid.data_slice(len(x))
        x, y = x[lo:hi], y[lo:hi]

        def start_together(r: int, sent=comm.sent) -> None:
            dist.barrier()  # not counted: both processes start each step together
            if r == setup.warmup:
                sent.clear()

        seconds = timed_steps(model, est, x, y, setup, before_each=start_together)
        results[case.label] = {
            "median_ms": 1000 * float(torch.tensor(seconds).median()),
            "bytes_per_step": sum(comm.sent.values()) // setup.repeats,
            "bytes_by_exchange": {k: v // setup.repeats for k, v in comm.sent.items()},
        }
    if comm.grid.rank == 0:
        write_json(out, results)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Setup(**json.loads(sys.argv[2])))
