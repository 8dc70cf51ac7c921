"""Checkpoints: written atomically, read safely.

A forwardgrad checkpoint holds only tensors, numbers, strings, lists and dicts: the model's and
the optimizer's state dicts, random-generator states (uint8 tensors), counters and the run's
config. So it is read with ``torch.load(weights_only=True)``, which unpickles nothing else: a
file that holds any other Python object (a crafted ``checkpoint.pt`` whose unpickling would run
code) is refused with :class:`CheckpointError` and nothing in it runs. Every other way a file can
fail to be a checkpoint (empty, truncated, random bytes, a folder, a dict without the keys a
caller needs) is a :class:`CheckpointError` too, naming the file and, where the run folder keeps
snapshots of earlier epochs (``checkpoint-epoch<E>.pt``), naming them.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from ..io import save_torch

# Anything torch.load can raise on a file that is not a readable checkpoint: a zip archive cut
# short or of random bytes (RuntimeError), an empty file (EOFError), a refused global
# (UnpicklingError), a folder or unreadable file (OSError), a malformed pickle (the rest).
_READ_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    RuntimeError,
    OSError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    ImportError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
)

TRAINING_KEYS = ("model", "optimizer", "estimator", "shuffle", "epoch", "step", "elapsed")
"""The keys a checkpoint must hold for ``train(resume=True)``."""


class CheckpointError(ValueError):
    """A checkpoint cannot be read, is not a forwardgrad checkpoint, or does not fit its run."""


def snapshots(run_dir: str | Path) -> list[tuple[int, Path]]:
    """The run folder's ``checkpoint-epoch<E>.pt`` snapshots as (epoch, path), oldest first."""
    found = []
    for path in Path(run_dir).glob("checkpoint-epoch*.pt"):
        match = re.fullmatch(r"checkpoint-epoch(\d+)\.pt", path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _snapshot_hint(path: Path) -> str:
    earlier = [(e, p) for e, p in snapshots(path.parent) if p != path]
    if not earlier:
        return ""
    epoch, latest = earlier[-1]
    names = ", ".join(p.name for _, p in earlier)
    return (
        f" Snapshots of earlier epochs exist in {path.parent}: {names}; to resume from epoch "
        f"{epoch}, copy {latest.name} over {path.name}."
    )


def _reason(error: BaseException) -> str:
    full = str(error)
    text = full.strip().splitlines()[0] if full.strip() else type(error).__name__
    # torch names a refused global in two wordings: "Unsupported global: GLOBAL m.f ..." and
    # "unsupported GLOBAL m.f whose module m is blocked".
    refused = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", full)
    if refused:
        return (
            f"it holds a Python object ({refused.group(1)}) other than tensors and plain data, "
            "which forwardgrad checkpoints never do; unpickling it could run code, so it was "
            "not loaded"
        )
    if isinstance(error, EOFError):
        return "it is empty or cut short"
    if isinstance(error, IsADirectoryError):
        return "it is a folder"
    if isinstance(error, OSError):
        return f"{error.strerror or text}"
    if isinstance(error, RuntimeError) and "zip" in text.lower():
        return f"it is truncated or not a torch file ({text})"
    detail = re.search(r"WeightsUnpickler error: \s*(.+)", full)
    what = detail.group(1).strip() if detail else f"{type(error).__name__}: {text}"
    return f"its bytes are not a torch checkpoint (corrupt, or not written by torch.save: {what})"


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    require: Iterable[str] = ("model",),
) -> dict[str, Any]:
    """Read the checkpoint at ``path`` safely; it must be a dict holding the keys ``require``.

    Raises :class:`CheckpointError` (naming the file, and any earlier snapshots) when the file is
    missing, unreadable, not a torch file, holds objects other than tensors and plain data, or
    lacks a required key.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p}.{_snapshot_hint(p)}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except _READ_ERRORS as e:
        raise CheckpointError(
            f"{p} cannot be read as a checkpoint: {_reason(e)}.{_snapshot_hint(p)}"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{p} is not a forwardgrad checkpoint: it holds a {type(state).__name__}, "
            f"not a dict of states.{_snapshot_hint(p)}"
        )
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(
            f"{p} is not a forwardgrad training checkpoint: it lacks {', '.join(missing)}."
            f"{_snapshot_hint(p)}"
        )
    return state


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a reader sees the old file or the new one)."""
    save_torch(path, state)


def load_model_state(model: torch.nn.Module, state: dict[str, Any], path: str | Path) -> None:
    """Load a checkpoint's model weights into ``model``, or say clearly why they do not fit."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"the model in {path} does not fit the model its config.json describes ({first}); "
            "was config.json edited, or the checkpoint copied from another run?"
        ) from None
