"""Real image datasets read from their official files: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN.

Where the files live (the *data directory* ``DIR``): the ``data_dir`` argument (``--data-dir``),
else the environment variable ``FORWARDGRAD_DATA``, else ``$XDG_CACHE_HOME/forwardgrad`` (by
default ``~/.cache/forwardgrad``). Layout under ``DIR``::

    mnist/           train-images-idx3-ubyte[.gz]  train-labels-idx1-ubyte[.gz]
                     t10k-images-idx3-ubyte[.gz]   t10k-labels-idx1-ubyte[.gz]
    fashion-mnist/   the same four IDX files
    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta
    svhn/            train_32x32.mat, test_32x32.mat
    cifar-10-python.tar.gz, cifar-100-python.tar.gz   (optional: unpacked safely on first use)
    .cache/          decoded uint8 arrays (``<source>.npz``), rebuilt when a source file changes

Nothing is downloaded unless asked (``forwardgrad data fetch NAME`` or ``download=True``);
downloads go through pooch and are checked against the official MD5 checksums.

Dataset names: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` (the 100 fine labels),
``cifar100-coarse`` (the 20 coarse labels; equivalently ``cifar100`` with ``labels="coarse"``)
and ``svhn`` (label 10 in the files means digit 0 and becomes 0).

Images stay uint8 in memory, shape ``(N, H, W, C)``; the dataset's ``transform`` turns a batch into
float32 features: scale to [0, 1], (training batches with ``augment=True``: random crop with 4
pixels of zero padding for the 32x32 sets, plus horizontal flips for CIFAR), per-channel
normalisation with the training split's mean and std, flattened to ``(B, H*W*C)`` (the default
``layout="flat"``) or laid out ``(B, C, H, W)`` (``layout="image"``).

Safety: CIFAR's official files are Python pickles, and unpickling an untrusted file can run
arbitrary code. They are read with ``pickle`` (``encoding="bytes"``) through an unpickler that
only allows the few numpy globals an array needs and refuses everything else, but still: only use
CIFAR files from the official archive (``forwardgrad data fetch`` checks its MD5). Archives are
unpacked only after every member has been checked (no absolute paths, no ``..``, no links, no
device files), with tarfile's ``"data"`` filter where available, into a temporary folder that is
then renamed into place.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib
import math
import os
import pickle
import shutil
import struct
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
from torch import Tensor

from ..io import atomic_write
from . import Dataset, DatasetSpec, register
from .layout import arrange, check_layout

DATA_ENV = "FORWARDGRAD_DATA"
CACHE_DIR = ".cache"
CACHE_FORMAT = 1
PAD = 4  # pixels of zero padding for the random-crop augmentation of the 32x32 sets


class DataFileError(ValueError):
    """A data file is corrupt, truncated or not in the format its name promises."""


class UnsafeArchiveError(DataFileError):
    """An archive member could write outside its folder: refused, nothing extracted."""


class DataMissingError(FileNotFoundError):
    """Files of a dataset are missing; the message says which, where, and where they come from."""


class DownloadError(ValueError):
    """A download failed (offline, server error or checksum mismatch); nothing was left behind."""


# ----------------------------------------------------------------------------------------------
# Where the files come from. MD5 checksums: the official values as published in torchvision's
# dataset sources (torchvision/datasets/mnist.py: MNIST.resources, FashionMNIST.resources;
# torchvision/datasets/cifar.py: CIFAR10/CIFAR100 tgz_md5, train_list, test_list, meta;
# torchvision/datasets/svhn.py: SVHN.split_list). The MNIST mirror is torchvision's, since
# yann.lecun.com often refuses downloads; every mirror serves the same bytes (same MD5).
# ----------------------------------------------------------------------------------------------

_MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
_FASHION_MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class Download:
    """One official file: saved as ``name``, fetched from the first of ``urls`` that works."""

    name: str
    urls: tuple[str, ...]
    md5: str


@dataclass(frozen=True)
class Source:
    """The files of one real dataset and how to decode them."""

    key: str  # cache name
    title: str
    folder: str  # sub-directory of the data directory
    files: tuple[str, ...]  # required files in the folder
    optional: tuple[str, ...]  # used when present (class names)
    gz_ok: bool  # files may also be present as NAME.gz (IDX)
    downloads: tuple[Download, ...]  # files placed in the folder by ``fetch`` (if no archive)
    archive: Download | None  # official archive, placed in the data directory itself
    md5: dict[str, str]  # official MD5 of files in the folder (checked by ``fetch``)
    homepage: str
    licence: str
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int
    sizes: tuple[int, int]  # official (train, test) sizes
    flip: bool  # horizontal flips are valid augmentation (not for digits)
    decode: Callable[[dict[str, Path]], dict[str, np.ndarray]]

    @property
    def augmentable(self) -> bool:
        return self.image_shape[:2] == (32, 32)

    def file_label(self, name: str) -> str:
        return f"{name}[.gz]" if self.gz_ok else name


# ----------------------------------------------------------------------------------------------
# Data directory
# ----------------------------------------------------------------------------------------------


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
    return data_dir_origin(data_dir)[0]


# ----------------------------------------------------------------------------------------------
# Readers for the official formats
# ----------------------------------------------------------------------------------------------

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


def _numpy_global(module: str, name: str):
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


def _get(d: dict, key: str, path: Path):
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
# Decoders: official files -> uint8 arrays (N, H, W, C) and uint8 labels
# ----------------------------------------------------------------------------------------------


def _contiguous(t: Tensor) -> np.ndarray:
    """A permuted view made contiguous (torch's copy is several times faster than numpy's)."""
    return t.contiguous().numpy()


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DataFileError(f"{path}: labels must be integers in 0..{num_classes - 1}")
    return labels.astype(np.uint8)


def _decode_idx(paths: dict[str, Path], num_classes: int = 10) -> dict[str, np.ndarray]:
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
        data = np.asarray(_get(d, "data", path))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataFileError(
                f"{path}: 'data' should be uint8 of shape (N, 3072); got {data.dtype} {data.shape}"
            )
        for key, n_classes in label_keys.items():
            labels = np.asarray(_get(d, key, path))
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
    names = _get(read_cifar_pickle(path), key, path)
    return np.array([n.decode() if isinstance(n, bytes) else str(n) for n in names], dtype=str)


def _decode_cifar10(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    x_train, y_train = _cifar_split([paths[f"data_batch_{i}"] for i in range(1, 6)], {"labels": 10})
    x_test, y_test = _cifar_split([paths["test_batch"]], {"labels": 10})
    return {
        "x_train": x_train,
        "y_train": y_train["labels"],
        "x_test": x_test,
        "y_test": y_test["labels"],
        "classes": _label_names(paths.get("batches.meta"), "label_names"),
    }


def _decode_cifar100(paths: dict[str, Path]) -> dict[str, np.ndarray]:
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


def _decode_svhn(paths: dict[str, Path]) -> dict[str, np.ndarray]:
    x_train, y_train = read_svhn_mat(paths["train_32x32.mat"])
    x_test, y_test = read_svhn_mat(paths["test_32x32.mat"])
    return {
        "x_train": x_train,
        "y_train": y_train,
        "x_test": x_test,
        "y_test": y_test,
        "classes": np.array([str(i) for i in range(10)]),
    }


# ----------------------------------------------------------------------------------------------
# The sources
# ----------------------------------------------------------------------------------------------


def _idx_source(key, title, folder, mirrors, md5s, homepage, licence) -> Source:
    names = [f + ".gz" for f in _IDX_FILES]
    return Source(
        key=key,
        title=title,
        folder=folder,
        files=_IDX_FILES,
        optional=(),
        gz_ok=True,
        downloads=tuple(Download(n, tuple(m + n for m in mirrors), md5s[n]) for n in names),
        archive=None,
        md5=dict(md5s),
        homepage=homepage,
        licence=licence,
        image_shape=(28, 28, 1),
        num_classes=10,
        sizes=(60000, 10000),
        flip=False,
        decode=_decode_idx,
    )


SOURCES: dict[str, Source] = {
    "mnist": _idx_source(
        "mnist",
        "MNIST handwritten digits",
        "mnist",
        _MNIST_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        "http://yann.lecun.com/exdb/mnist/",
        "Y. LeCun, C. Cortes, C. Burges; no licence file is published with it (widely "
        "redistributed, often cited as CC BY-SA 3.0)",
    ),
    "fashion-mnist": _idx_source(
        "fashion-mnist",
        "Fashion-MNIST (Zalando article images)",
        "fashion-mnist",
        _FASHION_MIRRORS,
        {
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        "https://github.com/zalandoresearch/fashion-mnist",
        "MIT licence, Zalando SE",
    ),
    "cifar10": Source(
        key="cifar10",
        title="CIFAR-10 (32x32 colour images)",
        folder="cifar-10-batches-py",
        files=tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
        optional=("batches.meta",),
        gz_ok=False,
        downloads=(),
        archive=Download(
            "cifar-10-python.tar.gz",
            ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
            "c58f30108f718f92721af3b95e74349a",
        ),
        md5={
            "data_batch_1": "c99cafc152244af753f735de768cd75f",
            "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
            "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
            "data_batch_4": "634d18415352ddfa80567beed471001a",
            "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
            "test_batch": "40351d587109b95175f43aff81a1287e",
            "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
        },
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        licence="A. Krizhevsky (2009), 'Learning Multiple Layers of Features from Tiny Images'; "
        "no explicit licence: cite the report",
        image_shape=(32, 32, 3),
        num_classes=10,
        sizes=(50000, 10000),
        flip=True,
        decode=_decode_cifar10,
    ),
    "cifar100": Source(
        key="cifar100",
        title="CIFAR-100 (32x32 colour images)",
        folder="cifar-100-python",
        files=("train", "test"),
        optional=("meta",),
        gz_ok=False,
        downloads=(),
        archive=Download(
            "cifar-100-python.tar.gz",
            ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
            "eb9058c3a382ffc7106e4002c42a8d85",
        ),
        md5={
            "train": "16019d7e3df5f24257cddd939b257f8d",
            "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
            "meta": "7973b15100ade9c7d40fb424638fde48",
        },
        homepage="https://www.cs.toronto.edu/~kriz/cifar.html",
        licence="A. Krizhevsky (2009), 'Learning Multiple Layers of Features from Tiny Images'; "
        "no explicit licence: cite the report",
        image_shape=(32, 32, 3),
        num_classes=100,
        sizes=(50000, 10000),
        flip=True,
        decode=_decode_cifar100,
    ),
    "svhn": Source(
        key="svhn",
        title="SVHN street-view house numbers (cropped digits)",
        folder="svhn",
        files=("train_32x32.mat", "test_32x32.mat"),
        optional=(),
        gz_ok=False,
        downloads=(
            Download(
                "train_32x32.mat",
                ("http://ufldl.stanford.edu/housenumbers/train_32x32.mat",),
                "e26dedcc434d2e4c54c9b2d4a06d8373",
            ),
            Download(
                "test_32x32.mat",
                ("http://ufldl.stanford.edu/housenumbers/test_32x32.mat",),
                "eb5a983be6a315427106f1b164d9cef3",
            ),
        ),
        archive=None,
        md5={
            "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
        },
        homepage="http://ufldl.stanford.edu/housenumbers/",
        licence="Y. Netzer et al. (2011); for non-commercial use only",
        image_shape=(32, 32, 3),
        num_classes=10,
        sizes=(73257, 26032),
        flip=False,
        decode=_decode_svhn,
    ),
}

# dataset name -> (source key, label set)
NAMES: dict[str, tuple[str, str]] = {
    "mnist": ("mnist", "fine"),
    "fashion-mnist": ("fashion-mnist", "fine"),
    "cifar10": ("cifar10", "fine"),
    "cifar100": ("cifar100", "fine"),
    "cifar100-coarse": ("cifar100", "coarse"),
    "svhn": ("svhn", "fine"),
}


def source_for(name: str) -> Source:
    if name not in NAMES:
        raise ValueError(f"{name!r} is not a real dataset; choose one of {sorted(NAMES)}")
    return SOURCES[NAMES[name][0]]


# ----------------------------------------------------------------------------------------------
# Finding the files, unpacking archives
# ----------------------------------------------------------------------------------------------


def _find(src: Source, folder: Path, name: str) -> Path | None:
    for candidate in (name, name + ".gz") if src.gz_ok else (name,):
        p = folder / candidate
        if p.is_file():
            return p
    return None


def _missing_message(name: str, src: Source, root: Path, missing: list[str]) -> str:
    folder = root / src.folder
    what = ", ".join(src.file_label(m) for m in missing)
    msg = f"{name}: missing {what} in {folder}{os.sep} (data directory {root}). "
    if src.archive is not None:
        msg += (
            f"Download the official archive {src.archive.urls[0]} and put it in {root}{os.sep} "
            f"(it is unpacked there on first use), or unpack it yourself so that "
            f"{folder}{os.sep} holds {', '.join(src.files)}"
        )
    else:
        urls = [d.urls[0] for d in src.downloads if d.name.removesuffix(".gz") in missing]
        them = "it" if len(urls) == 1 else "them"
        msg += f"Download {', '.join(urls)} and put {them} in {folder}{os.sep}"
        msg += " (gzipped or not)" if src.gz_ok else ""
    return (
        msg + f"; or run `forwardgrad data fetch {name} --data-dir {root}`, or load with "
        f"download=True. Set the directory with --data-dir or ${DATA_ENV}. See {src.homepage}"
    )


def locate(name: str, root: Path, extract: bool = True) -> dict[str, Path]:
    """Paths of the dataset's files under ``root`` (unpacking the official archive if needed)."""
    src = source_for(name)
    folder = root / src.folder
    found = {f: p for f in src.files if (p := _find(src, folder, f)) is not None}
    missing = [f for f in src.files if f not in found]
    if missing and extract and src.archive is not None and (root / src.archive.name).is_file():
        extract_archive(root / src.archive.name, root, src.folder)
        return locate(name, root, extract=False)
    if missing:
        raise DataMissingError(_missing_message(name, src, root, missing))
    found.update({f: p for f in src.optional if (p := _find(src, folder, f)) is not None})
    return found


def _unsafe(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if not name or "\x00" in name:
        return "has an empty or invalid name"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive or PureWindowsPath(name).root:
        return "is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "has a '..' component"
    if member.issym() or member.islnk():
        return f"is a {'symbolic' if member.issym() else 'hard'} link (to {member.linkname!r})"
    if not (member.isfile() or member.isdir()):
        return "is a device file, FIFO or other special file"
    return None


def extract_archive(archive: Path, root: Path, folder: str) -> Path:
    """Unpack ``folder/`` of a tar archive into ``root/folder``, safely and atomically.

    Every member is checked first; one unsafe member rejects the whole archive. Members are
    extracted (tarfile's ``"data"`` filter where available) into a temporary folder inside
    ``root``, then renamed into place, so an interrupted or failed extraction leaves nothing.
    """
    target = root / folder
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        try:
            tar = tarfile.open(archive, "r:*")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise DataFileError(f"{archive}: not a readable tar archive ({e})") from None
        with tar:
            try:
                members = tar.getmembers()
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise DataFileError(f"{archive}: corrupt or truncated archive ({e})") from None
            selected = []
            for m in members:
                problem = _unsafe(m)
                if problem:
                    raise UnsafeArchiveError(
                        f"{archive}: refusing to unpack it: member {m.name!r} {problem}; nothing "
                        "was extracted. Use the official archive."
                    )
                parts = PurePosixPath(m.name).parts
                if parts and parts[0] == folder:
                    selected.append(m)
            if not any(m.isfile() for m in selected):
                raise DataFileError(f"{archive}: holds no {folder}/ folder; is it the right file?")
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=selected, filter="data")
                else:  # pragma: no cover  (Python without extraction filters)
                    tar.extractall(tmp, members=selected)
            except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
                raise DataFileError(
                    f"{archive}: corrupt or truncated archive ({e}); nothing was extracted"
                ) from None
        _move_into_place(tmp / folder, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _move_into_place(src: Path, target: Path) -> None:
    try:
        os.rename(src, target)  # atomic; fails when target exists and is not empty
        return
    except OSError:
        if not target.is_dir():
            raise
    for f in src.iterdir():  # target holds some files: add the missing ones, one rename each
        if f.is_file() and not (target / f.name).exists():
            os.replace(f, target / f.name)


# ----------------------------------------------------------------------------------------------
# Decoded cache
# ----------------------------------------------------------------------------------------------


def _fingerprint(paths: dict[str, Path]) -> str:
    h = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    for key in sorted(paths):
        st = paths[key].stat()
        h.update(f"{key}|{paths[key].name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def cache_path(name: str, root: Path) -> Path:
    return root / CACHE_DIR / f"{source_for(name).key}.npz"


def _read_cache(path: Path, fingerprint: str) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if "fingerprint" not in z.files or str(z["fingerprint"]) != fingerprint:
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


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:  # e.g. a read-only data directory: decode again next time
        warnings.warn(
            f"could not write the cache {path} ({e}); the files will be decoded again next time",
            stacklevel=3,
        )


def channel_stats(x: np.ndarray, chunk: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 images ``(N, H, W, C)`` scaled to [0, 1]."""
    flat = x.reshape(-1, x.shape[-1])
    counts = np.zeros((flat.shape[1], 256), dtype=np.int64)
    for start in range(0, len(flat), chunk):  # histograms: exact, and no float copy of the data
        block = flat[start : start + chunk]
        for c in range(flat.shape[1]):
            counts[c] += np.bincount(block[:, c], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = np.maximum(counts.sum(1), 1)
    mean = counts @ values / n
    std = np.sqrt(np.maximum(counts @ values**2 / n - mean**2, 0.0))
    return mean, np.where(std > 1e-8, std, 1.0)


def load_arrays(name: str, root: Path) -> dict[str, np.ndarray]:
    """Decoded arrays (and training-split channel statistics), from the cache when it is fresh."""
    src = source_for(name)
    paths = locate(name, root)
    fingerprint = _fingerprint(paths)
    cache = cache_path(name, root)
    arrays = _read_cache(cache, fingerprint)
    if arrays is None:
        arrays = src.decode(paths)
        arrays["mean"], arrays["std"] = channel_stats(arrays["x_train"])
        _write_cache(cache, {**arrays, "fingerprint": np.array(fingerprint)})
    return arrays


def class_names(name: str, root: Path) -> list[str]:
    """Class names from the decoded cache (empty when unknown); reads only that entry."""
    key = "classes_coarse" if NAMES[name][1] == "coarse" else "classes"
    try:
        with np.load(cache_path(name, root), allow_pickle=False) as z:
            return [str(s) for s in z[key]] if key in z.files else []
    except (OSError, ValueError, KeyError, EOFError):
        return []


# ----------------------------------------------------------------------------------------------
# Per-batch transform
# ----------------------------------------------------------------------------------------------


class ImageTransform:
    """uint8 images ``(B, H, W, C)`` -> float32 features ``(B, H*W*C)``, or ``(B, C, H, W)``
    with ``layout="image"``.

    For training batches (``train=True``) with augmentation on, first takes a random ``H x W``
    crop of each image padded with ``pad`` zero (black) pixels and, if ``flip``, mirrors about
    half of them left-right: one vectorised gather on the uint8 batch, seeded by ``generator``.
    Then scales to [0, 1], normalises each channel with the training split's ``mean``/``std``
    and flattens (or moves the channels first).
    """

    def __init__(self, mean, std, pad: int = 0, flip: bool = False, layout: str = "flat") -> None:
        self.mean = torch.as_tensor(np.asarray(mean), dtype=torch.float32)
        self.std = torch.as_tensor(np.asarray(std), dtype=torch.float32)
        self.pad, self.flip = int(pad), bool(flip)
        self.layout = check_layout(layout)
        self._scale = 1.0 / (255.0 * self.std)  # (x / 255 - mean) / std = x * scale - shift
        self._shift = self.mean / self.std

    def __call__(
        self, x: Tensor, train: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        if x.ndim != 4:
            raise ValueError(f"expected a batch of images (B, H, W, C); got shape {tuple(x.shape)}")
        if train and (self.pad or self.flip) and len(x):
            x = self.augment(x, generator)
        out = x.to(torch.float32, copy=True)  # never modify the caller's tensor
        out.mul_(self._scale.to(out.device)).sub_(self._shift.to(out.device))
        return arrange(out, self.layout)

    def augment(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        b, h, w, _ = x.shape
        p = self.pad
        if p:
            padded = x.new_zeros((b, h + 2 * p, w + 2 * p, x.shape[3]))
            padded[:, p : p + h, p : p + w] = x
            dy = torch.randint(0, 2 * p + 1, (b,), generator=generator)
            dx = torch.randint(0, 2 * p + 1, (b,), generator=generator)
        else:
            padded, dy, dx = x, torch.zeros(b, dtype=torch.long), torch.zeros(b, dtype=torch.long)
        cols = torch.arange(w).expand(b, w)
        if self.flip:
            mirrored = torch.rand(b, generator=generator) < 0.5
            cols = torch.where(mirrored[:, None], cols.flip(1), cols)
        rows = torch.arange(h)[None, :] + dy[:, None]
        cols = cols + dx[:, None]
        dev = x.device
        index = torch.arange(b, device=dev)[:, None, None]
        return padded[index, rows.to(dev)[:, :, None], cols.to(dev)[:, None, :]]


# ----------------------------------------------------------------------------------------------
# Loading and fetching
# ----------------------------------------------------------------------------------------------


def load_real(
    name: str,
    data_dir: str | os.PathLike | None = None,
    seed: int = 0,
    augment: bool = False,
    download: bool = False,
    labels: str | None = None,
    layout: str = "flat",
    **_: object,
) -> Dataset:
    """Load a real dataset from its official files (see the module docstring).

    ``augment``: random crops (4-pixel zero padding) for the 32x32 sets, plus horizontal flips
    for CIFAR, applied to training batches only. ``download``: fetch missing files first.
    ``layout``: ``"flat"`` ``(B, H*W*C)`` or ``"image"`` ``(B, C, H, W)`` batches.
    ``labels``: ``"fine"`` (default) or ``"coarse"`` (CIFAR-100 only). ``seed`` is unused: the
    official train/test split is kept.
    """
    src = source_for(name)
    label_set = NAMES[name][1] if labels is None else labels
    if label_set not in ("fine", "coarse"):
        raise ValueError(f"labels={labels!r}: choose 'fine' or 'coarse'")
    if label_set == "coarse" and src.key != "cifar100":
        raise ValueError(f"labels={labels!r}: only cifar100 has 'coarse' labels")
    if augment and not src.augmentable:
        raise ValueError(
            f"{name}: augmentation is defined for the 32x32 sets only (cifar10, cifar100, svhn)"
        )
    root = resolve_data_dir(data_dir)
    if download:
        try:
            locate(name, root)
        except DataMissingError:
            fetch(name, root)  # only what is missing; present files are left alone
    arrays = load_arrays(name, root)
    suffix = "_coarse" if label_set == "coarse" else ""
    transform = ImageTransform(
        arrays["mean"],
        arrays["std"],
        pad=PAD if augment else 0,
        flip=augment and src.flip,
        layout=layout,
    )
    shown = name
    if src.key == "cifar100":
        shown = "cifar100-coarse" if label_set == "coarse" else "cifar100"
    return Dataset(
        name=shown,
        x_train=torch.from_numpy(np.ascontiguousarray(arrays["x_train"])),
        y_train=torch.from_numpy(arrays["y_train" + suffix].astype(np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(arrays["x_test"])),
        y_test=torch.from_numpy(arrays["y_test" + suffix].astype(np.int64)),
        num_classes=20 if label_set == "coarse" else src.num_classes,
        transform=transform,
        layout=transform.layout,
    )


def file_md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)  # the official checksums are MD5 (integrity only)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, md5: str) -> None:
    got = file_md5(path)
    if got != md5:
        raise DataFileError(
            f"{path} has MD5 {got}, but the official file's is {md5}: it is corrupt, truncated or "
            "not the official file. Delete it and fetch it again."
        )


def _short(e: BaseException, limit: int = 300) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[:limit] + "..."


def download_file(dl: Download, dest_dir: Path, progress: bool = False) -> Path:
    """Download ``dl`` into ``dest_dir`` with pooch, checking its MD5; leave nothing on failure."""
    try:
        import pooch
    except ImportError:  # pragma: no cover
        raise DownloadError("downloading needs the 'pooch' package (pip install pooch)") from None
    target = dest_dir / dl.name
    created = not dest_dir.exists()
    dest_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=dest_dir))
    errors = []
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel("WARNING")  # we say what we download; pooch would show the temporary name
    try:
        for url in dl.urls:
            try:
                got = pooch.retrieve(
                    url, known_hash=f"md5:{dl.md5}", fname=dl.name, path=tmp, progressbar=progress
                )
            except MemoryError:
                raise
            except Exception as e:  # offline, HTTP error, checksum mismatch: try the next mirror
                errors.append(f"{url}: {_short(e)}")
                continue
            os.replace(got, target)
            return target
    finally:
        logger.setLevel(level)
        shutil.rmtree(tmp, ignore_errors=True)
        if created and dest_dir.is_dir() and not any(dest_dir.iterdir()):
            dest_dir.rmdir()
    raise DownloadError(
        f"could not download {dl.name}: " + "; ".join(errors) + f". Nothing was written. Check "
        f"the network connection, or download {dl.urls[0]} by hand and put it in {dest_dir}"
    )


def fetch(
    name: str,
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download (and verify) the official files of ``name`` that are not there yet.

    Files already present are checked against the official MD5 (uncompressed IDX files, which
    have no official checksum, are only decoded later). Returns the dataset's folder.
    """
    src = source_for(name)
    say = log or (lambda _msg: None)
    root = resolve_data_dir(data_dir)
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _fetch(src, root, say, progress)
    except BaseException:
        if created and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # leave no empty data directory behind either
        raise


def _fetch(src: Source, root: Path, say: Callable[[str], None], progress: bool) -> Path:
    folder = root / src.folder
    if src.archive is not None:
        present = {f: p for f in src.files + src.optional if (p := _find(src, folder, f))}
        if all(f in present for f in src.files):
            for f, p in present.items():
                _verify(p, src.md5[f])
            say(f"{folder}: all files present, MD5 verified")
            return folder
        archive = root / src.archive.name
        if archive.is_file():
            _verify(archive, src.archive.md5)
            say(f"{archive}: present, MD5 verified")
        else:
            say(f"downloading {src.archive.urls[0]}")
            download_file(src.archive, root, progress)
            say(f"{archive}: downloaded, MD5 verified")
        extract_archive(archive, root, src.folder)
        say(f"{folder}: unpacked")
        return folder
    for dl in src.downloads:
        logical = dl.name.removesuffix(".gz") if src.gz_ok else dl.name
        p = _find(src, folder, logical)
        if p is not None and p.name == dl.name:
            _verify(p, dl.md5)
            say(f"{p}: present, MD5 verified")
        elif p is not None:
            say(f"{p}: present (uncompressed: no official checksum; checked when decoded)")
        else:
            say(f"downloading {dl.urls[0]}")
            download_file(dl, folder, progress)
            say(f"{folder / dl.name}: downloaded, MD5 verified")
    return folder


# ----------------------------------------------------------------------------------------------
# Status (for `forwardgrad data info`)
# ----------------------------------------------------------------------------------------------


@dataclass
class FileStatus:
    label: str  # name as shown (IDX: NAME[.gz])
    path: Path  # where it is, or where it is expected
    present: bool
    required: bool
    size: int | None


@dataclass
class DataStatus:
    name: str
    source: Source
    root: Path
    origin: str
    folder: Path
    files: list[FileStatus]
    archive: Path | None
    archive_present: bool

    @property
    def missing(self) -> list[FileStatus]:
        return [f for f in self.files if f.required and not f.present]

    @property
    def ready(self) -> bool:
        return not self.missing or self.archive_present


def status(name: str, data_dir: str | os.PathLike | None = None) -> DataStatus:
    """Which files of ``name`` are present, without reading or changing anything."""
    src = source_for(name)
    root, origin = data_dir_origin(data_dir)
    folder = root / src.folder
    files = []
    for f in src.files + src.optional:
        p = _find(src, folder, f)
        files.append(
            FileStatus(
                p.name if p is not None else src.file_label(f),
                p or folder / f,
                p is not None,
                f in src.files,
                p.stat().st_size if p else None,
            )
        )
    archive = root / src.archive.name if src.archive is not None else None
    return DataStatus(
        name, src, root, origin, folder, files, archive, archive is not None and archive.is_file()
    )


# ----------------------------------------------------------------------------------------------
# Registration
# ----------------------------------------------------------------------------------------------


def _loader(name: str) -> Callable[..., Dataset]:
    def load(
        data_dir=None, seed: int = 0, augment: bool = False, download: bool = False, **options
    ) -> Dataset:
        return load_real(
            name, data_dir=data_dir, seed=seed, augment=augment, download=download, **options
        )

    load.__name__ = f"load_{name.replace('-', '_')}"
    load.__doc__ = f"Load {name} from its official files (see forwardgrad.data.real)."
    return load


_SUMMARIES = {
    "mnist": "MNIST, 60000/10000 x 28x28 grey, official IDX files (docs/datasets.md)",
    "fashion-mnist": "Fashion-MNIST, 60000/10000 x 28x28 grey, official IDX files",
    "cifar10": "CIFAR-10, 50000/10000 x 32x32 RGB, official python batches",
    "cifar100": "CIFAR-100 (100 fine labels), 50000/10000 x 32x32 RGB",
    "cifar100-coarse": "CIFAR-100 with its 20 coarse labels",
    "svhn": "SVHN cropped digits, 73257/26032 x 32x32 RGB, official .mat files",
}

for _name in NAMES:
    register(DatasetSpec(_name, _SUMMARIES[_name], _loader(_name)))

__all__ = [
    "DATA_ENV",
    "NAMES",
    "SOURCES",
    "DataFileError",
    "DataMissingError",
    "DownloadError",
    "ImageTransform",
    "UnsafeArchiveError",
    "channel_stats",
    "extract_archive",
    "fetch",
    "load_real",
    "locate",
    "parse_idx",
    "read_cifar_pickle",
    "read_idx",
    "read_svhn_mat",
    "resolve_data_dir",
    "status",
]
