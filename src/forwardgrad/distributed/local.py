"""Launch a few processes of one job on this machine (127.0.0.1), as ``torchrun`` would.

For the distributed benchmark and the tests: each process runs ``python *args`` with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR=127.0.0.1`` and a free ``MASTER_PORT``.
As ``torchrun`` does, once one process fails the others get ``grace`` seconds before they are
killed, and every one is killed after ``timeout`` seconds: nothing outlives the call.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass


@dataclass
class Finished:
    rank: int
    returncode: int
    output: str  # stdout and stderr together
    seconds: float  # from the launch to this process's end


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_environment(
    rank: int, world: int, port: int, threads: int = 1, extra: dict | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        GLOO_SOCKET_IFNAME="lo",
        OMP_NUM_THREADS=str(threads),
    )
    env.update(extra or {})
    return env


def launch_local(
    args: list[str],
    world: int = 2,
    timeout: float = 90.0,
    extra_env: dict[int, dict[str, str]] | None = None,
    grace: float = 5.0,
    threads: int = 1,
    cwd: str | None = None,
) -> list[Finished]:
    """Run ``python *args`` as ``world`` processes on 127.0.0.1; ``extra_env[rank]`` adds to
    one process's environment."""
    port = free_port()
    logs = [tempfile.TemporaryFile(mode="w+") for _ in range(world)]
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env=process_environment(rank, world, port, threads, (extra_env or {}).get(rank)),
            stdout=logs[rank],
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
        )
        for rank in range(world)
    ]
    ended = _wait(procs, start, timeout, grace)
    finished = []
    for rank, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        seconds = ended.get(rank, time.monotonic() - start)
        finished.append(Finished(rank, p.returncode, log.read(), seconds))
        log.close()
    return finished


def _wait(procs: list, start: float, timeout: float, grace: float) -> dict[int, float]:
    ended: dict[int, float] = {}
    deadline = start + timeout
    try:
        while len(ended) < len(procs) and time.monotonic() < deadline:
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
    return ended


def failures(finished: list[Finished]) -> str | None:
    """Every failed process's exit code and output, or None when all succeeded."""
    bad = [f for f in finished if f.returncode != 0]
    if not bad:
        return None
    return "\n\n".join(f"process {f.rank} exited {f.returncode}:\n{f.output}" for f in bad)
