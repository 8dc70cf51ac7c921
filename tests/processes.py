"""The tests' launcher: :func:`forwardgrad.distributed.local.launch_local` with this folder
on the processes' ``PYTHONPATH`` (so their scripts import the tests' helpers)."""

from __future__ import annotations

import os
from pathlib import Path

from forwardgrad.distributed.local import Finished, failures, launch_local

TESTS = Path(__file__).resolve().parent


def launch(
    args: list[str], world: int = 2, timeout: float = 90.0, extra_env: dict | None = None
) -> list[Finished]:
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {rank: {"PYTHONPATH": path, **(extra_env or {}).get(rank, {})} for rank in range(world)}
    return launch_local(args, world=world, timeout=timeout, extra_env=env)


def check_all_succeeded(finished: list[Finished]) -> None:
    problem = failures(finished)
    assert problem is None, problem
