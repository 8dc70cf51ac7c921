"""The run's collectives, over ``torch.distributed`` process groups, with their payloads counted.

Forward gradients need little on the wire: the tangents are regenerated from a shared seed, so
processes exchange directional derivatives (``(k, B)`` numbers a step for a tangent split, ``k``
for a data split with weight-space tangents) and, only for activity-space guesses split by data,
the parameter gradients. Every collective here counts the bytes this process contributes (its
payload), so the cost of each mode is measured, not assumed.

A collective that fails (another process died: its connection closes at once; or it hangs:
the process group's timeout) raises :class:`CollectiveFailed` naming the exchange, so no
process waits forever and none goes on with a wrong number.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from .grid import PARALLEL_MODES, LaunchError, ProcessGrid, make_grid

DEFAULT_TIMEOUT_S = 300.0


class CollectiveFailed(RuntimeError):
    """An exchange with the other processes failed: one of them stopped or hangs."""


def launched_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process as ``torchrun`` launched it (``(0, 1)`` when it
    was not launched by ``torchrun`` and no process group is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise LaunchError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are "
            "not integers; launch with torchrun"
        ) from None


def init_process_group(device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
    """Join the processes ``torchrun`` launched (gloo on CPU, nccl on CUDA), once; nothing for
    one process. ``timeout_s`` bounds every collective: a process that hangs longer makes the
    others stop with :class:`CollectiveFailed`. True when this call created the group (its
    caller then ends it with :func:`leave`)."""
    if dist.is_initialized() or launched_world()[1] == 1:
        return False
    if not dist.is_available():
        raise LaunchError("this PyTorch build has no torch.distributed")
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def leave() -> None:
    """End the process group (a process that exits with one open may abort in its teardown)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class Collectives:
    """This process's grid and the collectives of its tangent group, its data group and the
    whole world, each counting its payload (bytes this process contributes) in :attr:`sent`.

    ``alone=True`` makes every collective return this process's own contribution, as if it
    were the only process in its groups: a data shard's estimate computed on its own, to
    check it against a full run (a tangent share alone has only its own JVPs, so it cannot
    form an estimate).
    """

    def __init__(self, grid: ProcessGrid, *, alone: bool = False, timeout_s: float | None = None):
        self.grid = grid
        self.alone = alone or grid.is_single
        self.timeout_s = timeout_s
        self.sent: Counter[str] = Counter()
        self._tangent_group = self._data_group = None
        if not self.alone:
            self._tangent_group = self._own_group(grid.tangent_group_ranks())
            self._data_group = self._own_group(grid.data_group_ranks())

    def _own_group(self, partition: list[list[int]]):
        """This process's group of ``partition`` (None: the whole world). Every process must
        create every group, in the same order; each waits at most the run's timeout."""
        if len(partition) == 1:
            return None
        timeout = timedelta(seconds=self.timeout_s) if self.timeout_s else None
        mine = None
        for ranks in partition:
            group = dist.new_group(ranks, timeout=timeout)
            if self.grid.rank in ranks:
                mine = group
        return mine

    # ------------------------------------------------------------------ tensors

    def gather_tangent_jvps(self, jvps: Tensor) -> Tensor:
        """This process's JVPs ``(k_local, ...)`` -> everyone's in its tangent group, in tangent
        order ``(k, ...)``."""
        if self.alone or self.grid.tangent_size == 1:
            return jvps
        jvps = jvps.contiguous()
        parts = [torch.empty_like(jvps) for _ in range(self.grid.tangent_size)]
        self._count("tangent JVPs", jvps)
        self._call("tangent JVPs", dist.all_gather, parts, jvps, group=self._tangent_group)
        return torch.cat(parts, 0)

    def sum_over_shards(self, flat: Tensor) -> Tensor:
        """Sum a tensor over the processes holding the other data shards (in place)."""
        if self.alone or self.grid.data_size == 1:
            return flat
        self._count("shard sums", flat)
        self._call("shard sums", dist.all_reduce, flat, group=self._data_group)
        return flat

    def parameter_checksums(self, tensors: list[Tensor]) -> list[int]:
        """Every process's checksum of ``tensors`` (bit patterns hashed), in rank order."""
        mine = tensor_checksum(tensors)
        if self.alone:
            return [mine]
        value = torch.tensor([mine], dtype=torch.int64, device=self._device())
        parts = [torch.empty_like(value) for _ in range(self.grid.world)]
        self._count("checksums", value)
        self._call("parameter checksums", dist.all_gather, parts, value)
        return [int(p) for p in parts]

    # ------------------------------------------------------------------ objects

    def gather_objects(self, obj: object, what: str) -> list:
        """Every process's ``obj`` (picklable), in rank order."""
        if self.alone:
            return [obj]
        out: list = [None] * self.grid.world
        self._call(what, dist.all_gather_object, out, obj)
        return out

    def broadcast_object(self, obj: object, what: str, src: int = 0) -> object:
        """Process ``src``'s ``obj`` on every process."""
        if self.alone:
            return obj
        box = [obj]
        self._call(what, dist.broadcast_object_list, box, src=src)
        return box[0]

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _device() -> torch.device:
        """Where this backend's tensors live: NCCL takes CUDA tensors only."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _count(self, what: str, t: Tensor) -> None:
        self.sent[what] += t.numel() * t.element_size()

    def _call(self, what: str, op, *args, **kwargs) -> None:
        try:
            op(*args, **kwargs)
        except RuntimeError as e:
            first = _first_sentence(e)
            bound = f" (timeout {self.timeout_s:g} s)" if self.timeout_s else ""
            raise CollectiveFailed(
                f"process {self.grid.rank} of {self.grid.world}: the exchange of {what} with the "
                f"other processes failed{bound}; one of them has stopped or hangs ({first})"
            ) from None


def _first_sentence(error: BaseException) -> str:
    """The backend's message without its source location: 'Connection reset by peer', ..."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.sub(r"^\[[^\]]*\.(cpp|cc|h):\d+\]\s*", "", text)
    return text.split(". ")[0].rstrip(".")


def is_leader(collectives: Collectives | None) -> bool:
    """Whether this process is process 0 of its run (or the only one): the one that keeps the
    run's files."""
    return collectives is None or collectives.grid.rank == 0


def tensor_checksum(tensors: list[Tensor]) -> int:
    """A 63-bit hash of the tensors' bytes: equal exactly when they are bit-identical (up to
    hash collisions)."""
    h = hashlib.blake2b(digest_size=8)
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def collectives_for(
    mode: str, tangent_procs: int | None = None, timeout_s: float | None = None
) -> Collectives:
    """The collectives of this process for ``mode``, in the world ``torchrun`` launched (the
    process group must be initialised when there is more than one process)."""
    if mode not in PARALLEL_MODES:
        raise LaunchError(f"unknown parallel mode {mode!r}; choose one of {list(PARALLEL_MODES)}")
    rank, world = launched_world()
    if world > 1 and not dist.is_initialized():
        raise LaunchError(
            f"{world} processes were launched but the process group is not initialised; call "
            "forwardgrad.distributed.init_process_group first"
        )
    return Collectives(make_grid(mode, world, rank, tangent_procs), timeout_s=timeout_s)
