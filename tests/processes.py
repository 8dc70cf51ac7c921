"""Launch a few Python processes on 127.0.0.1 as ``torchrun`` would, bounded in time.

Each process runs ``python -c <code>`` with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT`` set; :func:`launch` waits for all of them
(killing every one still running after ``timeout`` seconds) and returns their exit codes and
output. Nothing here outlives the test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

TESTS = Path(__file__).resolve().parent


@dataclass
class Finished:
    rank: int
    returncode: int
    output: str
    seconds: float = 0.0  # from the launch to this process's end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(rank: int, world: int, port: int, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]),
    )
    env.update(extra or {})
    return env


def launch(
    args: list[str],
    world: int = 2,
    timeout: float = 90.0,
    extra_env: dict | None = None,
    cwd=None,
    grace: float = 5.0,
) -> list[Finished]:
    """Run ``python *args`` as ``world`` processes. As ``torchrun`` does, once one fails the
    others get ``grace`` seconds before they are killed; every one is killed after
    ``timeout`` seconds. Each :class:`Finished` says when its process ended."""
    port = free_port()
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(world)]
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env=environment(rank, world, port, (extra_env or {}).get(rank)),
            stdout=logs[rank],
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )
        for rank in range(world)
    ]
    ended: dict[int, float] = {}
    deadline = start + timeout
    try:
        while len(ended) < world and time.monotonic() < deadline:
            for rank, p in enumerate(procs):
                if rank not in ended and p.poll() is not None:
                    ended[rank] = time.monotonic() - start
                    if p.returncode != 0:
                        deadline = min(deadline, time.monotonic() + grace)
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    finished = []
    for rank, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        seconds = ended.get(rank, time.monotonic() - start)
        finished.append(Finished(rank, p.returncode, log.read(), seconds))
        log.close()
    return finished


def check_all_succeeded(finished: list[Finished]) -> None:
    bad = [f for f in finished if f.returncode != 0]
    assert not bad, "\n\n".join(f"rank {f.rank} exited {f.returncode}:\n{f.output}" for f in bad)
