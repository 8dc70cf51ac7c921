"""Forward gradients over several processes, with PyTorch's own ``torch.distributed``.

Launch with ``torchrun``; ``--parallel tangents|data|both`` chooses how the processes share a
step (:mod:`.grid`), and :mod:`.comm` holds the collectives, each counting its payload.
"""

from .comm import (
    DEFAULT_TIMEOUT_S,
    CollectiveFailed,
    Collectives,
    collectives_for,
    init_process_group,
    is_leader,
    launched_world,
    leave,
    tensor_checksum,
)
from .grid import PARALLEL_MODES, LaunchError, ProcessGrid, make_grid

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "PARALLEL_MODES",
    "CollectiveFailed",
    "Collectives",
    "LaunchError",
    "ProcessGrid",
    "collectives_for",
    "init_process_group",
    "is_leader",
    "launched_world",
    "leave",
    "make_grid",
    "tensor_checksum",
]
