"""Where the real datasets' files live, and the cache of their decoded arrays.

The *data directory* is the ``data_dir`` argument (``--data-dir``), else the environment
variable ``FORWARDGRAD_DATA``, else ``$XDG_CACHE_HOME/forwardgrad`` (by default
``~/.cache/forwardgrad``). Decoding the official files takes seconds, so the uint8 arrays are kept
in ``DIR/.cache/<source>.npz``, with a fingerprint of the source files (names, sizes, modification
times) that rebuilds the cache whenever one of them changes.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from ..io import atomic_write

DATA_ENV = "FORWARDGRAD_DATA"
CACHE_DIR = ".cache"
CACHE_FORMAT = 1


def default_data_dir() -> Path:
    """``$XDG_CACHE_HOME/forwardgrad``, or ``~/.cache/forwardgrad``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "forwardgrad"


def data_dir_origin(data_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The data directory and where it came from (argument, environment or default)."""
    if data_dir:
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser(), f"${DATA_ENV}"
    return default_data_dir(), "default"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory (see the module docstring)."""
    return data_dir_origin(data_dir)[0]


def cache_path(key: str, root: Path) -> Path:
    """The decoded cache of the source ``key`` in the data directory ``root``."""
    return root / CACHE_DIR / f"{key}.npz"


def fingerprint(paths: dict[str, Path]) -> str:
    """Changes when any source file is renamed, resized or touched (or the cache format moves)."""
    h = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    for key in sorted(paths):
        st = paths[key].stat()
        h.update(f"{key}|{paths[key].name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def read_cache(path: Path, expected: str) -> dict[str, np.ndarray] | None:
    """The cached arrays when their fingerprint is ``expected``; None when stale or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if "fingerprint" not in z.files or str(z["fingerprint"]) != expected:
                return None
            return {k: z[k] for k in z.files if k != "fingerprint"}
    except FileNotFoundError:
        return None
    except MemoryError:
        raise
    except Exception as e:  # a damaged cache is rebuilt from the source files
        warnings.warn(
            f"ignoring unreadable cache {path} ({e}); decoding the source files again", stacklevel=3
        )
        return None


def write_cache(path: Path, arrays: dict[str, np.ndarray], stamp: str) -> None:
    """Save ``arrays`` with the fingerprint ``stamp``; a failure only costs decoding again."""
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays, fingerprint=np.array(stamp)))
    except OSError as e:  # e.g. a read-only data directory: decode again next time
        warnings.warn(
            f"could not write the cache {path} ({e}); the files will be decoded again next time",
            stacklevel=3,
        )


def read_cached_entry(path: Path, key: str) -> np.ndarray | None:
    """One array of a cache (None when the cache or the entry is absent or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return z[key] if key in z.files else None
    except (OSError, ValueError, KeyError, EOFError):
        return None
