"""Memory: what is free where a step runs, and telling an allocation failure from other errors."""

from __future__ import annotations

import torch

MEMORY_FLAGS = "--tangents, --batch-size, or push tangents in groups with --chunk-size N"
"""What to lower when a step does not fit, as every memory message says it."""


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory where a step's tensors live: the GPU's, or MemAvailable of /proc/meminfo
    (None where neither can be read, and then nothing is checked)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def format_bytes(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**28 else f"{n / 2**20:.0f} MB"


def is_allocation_failure(error: BaseException) -> bool:
    """Whether ``error`` is a failed allocation (CPU or GPU), whatever its type."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "out of memory" in text
    )
