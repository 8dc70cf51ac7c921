"""How the processes of a run share its work: the process grid of ``--parallel``.

* ``tangents``: every process holds the same model and the same batch; the k tangents of a
  step are split into equal shares, one per process.
* ``data``: the batch is split into one shard per process; every process uses all k tangents.
* ``both``: a 2-D grid of ``data_size x tangent_size`` processes; process ``r`` holds data shard
  ``r // tangent_size`` and tangent share ``r % tangent_size``.

A :class:`ProcessGrid` is pure bookkeeping (ranks and sizes); :mod:`.comm` turns it into
process groups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PARALLEL_MODES = ("none", "tangents", "data", "both")


class LaunchError(ValueError):
    """Launch settings that cannot work (wrong process count, k not divisible, ...)."""


@dataclass(frozen=True)
class ProcessGrid:
    """This process's place in the run: ``rank`` of ``world`` = (data shard, tangent share)."""

    mode: str
    world: int
    rank: int
    data_size: int
    tangent_size: int

    @property
    def data_rank(self) -> int:
        """Which shard of the batch this process holds."""
        return self.rank // self.tangent_size

    @property
    def tangent_rank(self) -> int:
        """Which share of the k tangents this process pushes."""
        return self.rank % self.tangent_size

    @property
    def is_single(self) -> bool:
        return self.world == 1

    def tangent_group_ranks(self) -> list[list[int]]:
        """Ranks that share one data shard and split its tangents (one list per shard)."""
        t = self.tangent_size
        return [list(range(d * t, (d + 1) * t)) for d in range(self.data_size)]

    def data_group_ranks(self) -> list[list[int]]:
        """Ranks that hold the same tangent share of different shards (one list per share)."""
        t = self.tangent_size
        return [list(range(j, self.world, t)) for j in range(t)]

    def tangent_slice(self, k: int) -> tuple[int, int]:
        """``[start, stop)`` of the step's k tangents this process pushes."""
        share = self.tangent_share(k)
        return self.tangent_rank * share, (self.tangent_rank + 1) * share

    def tangent_share(self, k: int) -> int:
        if k % self.tangent_size:
            raise LaunchError(
                f"--tangents {k} cannot be split evenly over {self.tangent_size} processes "
                f"(--parallel {self.mode}); choose a multiple of {self.tangent_size}"
            )
        return k // self.tangent_size

    def data_slice(self, batch: int) -> tuple[int, int]:
        """``[start, stop)`` of a batch of ``batch`` examples this process holds (contiguous
        shards whose sizes differ by at most one, as ``torch.tensor_split`` makes them)."""
        base, extra = divmod(batch, self.data_size)
        r = self.data_rank
        start = r * base + min(r, extra)
        return start, start + base + (1 if r < extra else 0)

    def describe(self) -> dict:
        return {
            "mode": self.mode,
            "processes": self.world,
            "data_shards": self.data_size,
            "tangent_shares": self.tangent_size,
        }


def make_grid(mode: str, world: int, rank: int, tangent_procs: int | None = None) -> ProcessGrid:
    """The grid of ``world`` processes for ``mode``; raises :class:`LaunchError` for settings
    that do not fit (``tangent_procs``: the tangent shares of ``both``, a divisor of
    ``world``; by default the largest divisor at most ``sqrt(world)``)."""
    if mode not in PARALLEL_MODES:
        raise LaunchError(f"unknown parallel mode {mode!r}; choose one of {list(PARALLEL_MODES)}")
    if world < 1 or not 0 <= rank < world:
        raise LaunchError(f"rank {rank} of {world} processes is not a valid place")
    if tangent_procs is not None and mode != "both":
        raise LaunchError(
            f"--tangent-procs {tangent_procs} is read only by --parallel both; here it is {mode!r}"
        )
    if mode == "none":
        if world > 1:
            raise LaunchError(
                f"{world} processes were launched but --parallel is 'none'; pass --parallel "
                "tangents, data or both (or launch one process)"
            )
        return ProcessGrid(mode, 1, 0, 1, 1)
    if mode == "tangents":
        return ProcessGrid(mode, world, rank, 1, world)
    if mode == "data":
        return ProcessGrid(mode, world, rank, world, 1)
    t = tangent_procs if tangent_procs is not None else _largest_divisor_up_to_root(world)
    if t < 1 or world % t:
        raise LaunchError(
            f"--tangent-procs {t} must divide the {world} processes of --parallel both"
        )
    return ProcessGrid(mode, world, rank, world // t, t)


def _largest_divisor_up_to_root(n: int) -> int:
    return max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
