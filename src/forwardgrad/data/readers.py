"""Readers of the official file formats, and decoders of each dataset's files into arrays.

Readers: IDX (MNIST, Fashion-MNIST; gzipped or not), CIFAR's python pickles and SVHN's MATLAB
files. Decoders turn a dataset's files into uint8 images ``(N, H, W, C)`` and uint8 labels.

Safety: CIFAR's official files are Python pickles, and unpickling an untrusted file can run
arbitrary code. They are read with ``pickle`` (``encoding="bytes"``) through an unpickler that
only allows the few numpy globals an array needs and refuses everything else, but still: only use
CIFAR files from the official archive (``forwardgrad data fetch`` checks its MD5).
"""

from __future__ import annotations

import contextlib
import gzip
import importlib
import math
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import DataFileError

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    with open(path, "rb") as f:
        compressed = f.read(2) == b"\x1f\x8b"
        f.seek(0)
        if not compressed:
            return f.read()
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as g:
                return g.read()
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
            raise DataFileError(f"{path}: corrupt or truncated gzip data ({e})") from None


def parse_idx(buf: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an IDX buffer (magic ``00 00 <type> <ndim>``, big-endian dims, payload)."""
    if len(buf) < 4:
        raise DataFileError(f"{source}: not an IDX file (only {len(buf)} bytes)")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES or buf[3] == 0:
        raise DataFileError(
            f"{source}: not an IDX file (magic number 0x{buf[:4].hex()}; expected 0x0000TTDD with "
            "a known type TT and DD >= 1 dimensions)"
        )
    dtype, ndim = _IDX_DTYPES[buf[2]], buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataFileError(f"{source}: truncated IDX header ({len(buf)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    count = math.prod(dims)
    need, have = count * dtype.itemsize, len(buf) - header
    if have < need:
        raise DataFileError(
            f"{source}: truncated IDX file: its header promises shape {dims} ({need} bytes of "
            f"data) but only {have} bytes follow"
        )
    if have > need:
        raise DataFileError(
            f"{source}: malformed IDX file: {have - need} unexpected bytes after the {dims} array"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # a native-order, writable copy


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from its content)."""
    path = Path(path)
    return parse_idx(_read_maybe_gzip(path), str(path))


def _numpy_global(module: str, name: str) -> Callable[[], object]:
    def resolve():
        for mod in (f"numpy._core.{module}", f"numpy.core.{module}"):
            with contextlib.suppress(ImportError, AttributeError):
                return getattr(importlib.import_module(mod), name)
        raise pickle.UnpicklingError(f"numpy has no {module}.{name}")

    return resolve


# The only globals an array pickle needs (numpy 1.x and 2.x names; bytes under protocol 2).
_PICKLE_GLOBALS: dict[tuple[str, str], Callable[[], object]] = {
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: __import__("_codecs").encode,
}
for _mod in ("numpy.core", "numpy._core"):
    for _sub, _attr in (
        ("multiarray", "_reconstruct"),
        ("multiarray", "scalar"),
        ("numeric", "_frombuffer"),
    ):
        _PICKLE_GLOBALS[(f"{_mod}.{_sub}", _attr)] = _numpy_global(_sub, _attr)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        resolve = _PICKLE_GLOBALS.get((module, name))
        if resolve is None:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name} (CIFAR files hold only arrays, lists "
                "and strings; this file is not an official one)"
            )
        return resolve()


def read_cifar_pickle(path: str | os.PathLike) -> dict:
    """Load one CIFAR python batch (``pickle`` with ``encoding="bytes"``, restricted globals)."""
    path = Path(path)
    with open(path, "rb") as f:
        try:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
        except MemoryError:
            raise
        except Exception as e:  # truncated, garbage or hostile: never half-loaded
            raise DataFileError(
                f"{path}: not a valid CIFAR python pickle ({type(e).__name__}: {e})"
            ) from None
    if not isinstance(obj, dict):
        raise DataFileError(f"{path}: not a CIFAR batch (a {type(obj).__name__}, not a dict)")
    return obj


def _cifar_entry(d: dict, key: str, path: Path):
    """``d[key]``, whether the pickle stored its keys as bytes or as strings."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DataFileError(f"{path}: not a CIFAR batch (no {key!r} entry; keys {sorted(map(str, d))})")


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """SVHN ``*_32x32.mat``: images (N, 32, 32, 3) uint8 and labels (N,) with 10 mapped to 0."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        mat = loadmat(path, variable_names=["X", "y"])
    except MemoryError:
        raise
    except Exception as e:
        raise DataFileError(
            f"{path}: not a readable MATLAB file ({type(e).__name__}: {e}); corrupt or truncated?"
        ) from None
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None:
        raise DataFileError(f"{path}: not an SVHN file (needs variables 'X' and 'y')")
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise DataFileError(
            f"{path}: 'X' should be uint8 of shape (32, 32, 3, N); got {x.dtype} {x.shape}"
        )
    y = np.asarray(y).reshape(-1)
    if y.size != x.shape[3]:
        raise DataFileError(f"{path}: {x.shape[3]} images but {y.size} labels")
    if y.size and (y.min() < 0 or y.max() > 10):
        raise DataFileError(f"{path}: labels outside 1..10 (min {y.min()}, max {y.max()})")
    labels = y.astype(np.uint8)
    labels[labels == 10] = 0  # SVHN writes digit 0 as label 10
    return _contiguous(torch.from_numpy(x).permute(3, 0, 1, 2)), labels


# ----------------------------------------------------------------------------------------------
# Decoders: a dataset's official files -> uint8 arrays (N, H, W, C) and uint8 labels
# ----------------------------------------------------------------------------------------------


def _contiguous(t: Tensor) -> np.ndarray:
    """A permuted view made contiguous (torch's copy is several times faster than numpy's)."""
    return t.contiguous().numpy()


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataFileError(f"{path}: labels must be integers in 0..{num_classes - 1}")
    return labels.astype(np.uint8)


def decode_idx(paths: dict[str, Path], num_classes: int = 10) -> dict[str, np.ndarray]:
    """MNIST-style IDX files: 28x28 grey images and their labels, train and t10k."""
    out: dict[str, np.ndarray] = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ipath, lpath = paths[f"{prefix}-images-idx3-ubyte"], paths[f"{prefix}-labels-idx1-ubyte"]
        images, labels = read_idx(ipath), read_idx(lpath)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise DataFileError(
                f"{ipath}: expected uint8 images of shape (N, 28, 28); got {images.dtype} "
                f"{images.shape}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1:
            raise DataFileError(f"{lpath}: expected a 1-d uint8 label file; got {labels.shape}")
        if len(labels) != len(images):
            raise DataFileError(
                f"{lpath}: {len(labels)} labels for {len(images)} images in {ipath}"
            )
        out[f"x_{split}"] = images.reshape(*images.shape, 1)
        out[f"y_{split}"] = _check_labels(labels, num_classes, lpath)
    return out


def _cifar_split(paths: list[Path], label_keys: dict[str, int]):
    xs, ys = [], {k: [] for k in label_keys}
    for path in paths:
        d = read_cifar_pickle(path)
        data = np.asarray(_cifar_entry(d, "data", path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataFileError(
                f"{path}: 'data' should be uint8 of shape (N, 3072); got {data.dtype} {data.shape}"
            )
        for key, n_classes in label_keys.items():
            labels = np.asarray(_cifar_entry(d, key, path))
            if labels.shape != (len(data),):
                raise DataFileError(f"{path}: {len(data)} images but {labels.shape} {key!r}")
            ys[key].append(_check_labels(labels, n_classes, path))
        xs.append(data)
    # a row is the 1024 red, then green, then blue values: (N, 3, 32, 32) -> (N, 32, 32, 3)
    x = _contiguous(torch.from_numpy(np.concatenate(xs)).view(-1, 3, 32, 32).permute(0, 2, 3, 1))
    return x, {k: np.concatenate(v) for k, v in ys.items()}


def _label_names(path: Path | None, key: str) -> np.ndarray:
    if path is None:
        return np.array([], dtype=str)
    names = _cifar_entry(read_cifar_pickle(path), key, path)
    return np.array([n.decode() if isinstance(n, bytes) else str(n) for n in names], dtype=str)


def decode_cifar10(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """CIFAR-10's five training batches and test batch, class names from ``batches.meta``."""
    x_train, y_train = _cifar_split([paths[f"data_batch_{i}"] for i in range(1, 6)], {"labels": 10})
    x_test, y_test = _cifar_split([paths["test_batch"]], {"labels": 10})
    return {
        "x_train": x_train,
        "y_train": y_train["labels"],
        "x_test": x_test,
        "y_test": y_test["labels"],
        "classes": _label_names(paths.get("batches.meta"), "label_names"),
    }


def decode_cifar100(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """CIFAR-100's train and test files with both label sets (100 fine, 20 coarse)."""
    keys = {"fine_labels": 100, "coarse_labels": 20}
    x_train, y_train = _cifar_split([paths["train"]], keys)
    x_test, y_test = _cifar_split([paths["test"]], keys)
    return {
        "x_train": x_train,
        "y_train": y_train["fine_labels"],
        "x_test": x_test,
        "y_test": y_test["fine_labels"],
        "y_train_coarse": y_train["coarse_labels"],
        "y_test_coarse": y_test["coarse_labels"],
        "classes": _label_names(paths.get("meta"), "fine_label_names"),
        "classes_coarse": _label_names(paths.get("meta"), "coarse_label_names"),
    }


def decode_svhn(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    """SVHN's two ``.mat`` files; the class names are the digits."""
    x_train, y_train = read_svhn_mat(paths["train_32x32.mat"])
    x_test, y_test = read_svhn_mat(paths["test_32x32.mat"])
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "classes": np.array([str(i) for i in range(10)]),
    }
