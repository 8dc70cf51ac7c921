"""Real image datasets read from their official files: MNIST, Fashion-MNIST, CIFAR-10/100, SVHN.

The files live in the *data directory* (``cache.py``: ``--data-dir``, else ``$FORWARDGRAD_DATA``,
else ``~/.cache/forwardgrad``), laid out as ``files.py`` shows; ``sources.py`` says what each
dataset's files are and where they come from. Nothing is downloaded unless asked
(``forwardgrad data fetch NAME`` or ``download=True``; ``download.py``).

Dataset names: ``mnist``, ``fashion-mnist``, ``cifar10``, ``cifar100`` (the 100 fine labels),
``cifar100-coarse`` (the 20 coarse labels; equivalently ``cifar100`` with ``labels="coarse"``)
and ``svhn`` (label 10 in the files means digit 0 and becomes 0).

Images stay uint8 in memory, shape ``(N, H, W, C)``; the dataset's ``transform``
(``transforms.ImageTransform``) turns a batch into float32 features: scale to [0, 1], (training
batches with ``augment=True``: random crop with 4 pixels of zero padding for the 32x32 sets, plus
horizontal flips for CIFAR), per-channel normalisation with the training split's mean and std,
flattened to ``(B, H*W*C)`` (the default ``layout="flat"``) or laid out ``(B, C, H, W)``
(``layout="image"``).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import Dataset, DatasetSpec, register
from .cache import (
    cache_path,
    fingerprint,
    read_cache,
    read_cached_entry,
    resolve_data_dir,
    write_cache,
)
from .download import fetch
from .errors import DataMissingError
from .files import locate
from .sources import SOURCES, source_for
from .transforms import PAD, ImageTransform, channel_stats


def load_arrays(name: str, root: Path) -> dict[str, np.ndarray]:
    """Decoded arrays (and training-split channel statistics), from the cache when it is fresh."""
    src = source_for(name)
    paths = locate(name, root)
    stamp = fingerprint(paths)
    cache = cache_path(src.key, root)
    arrays = read_cache(cache, stamp)
    if arrays is None:
        arrays = src.decode(paths)
        arrays["mean"], arrays["std"] = channel_stats(arrays["x_train"])
        write_cache(cache, arrays, stamp)
    return arrays


def class_names(name: str, root: Path) -> list[str]:
    """Class names from the decoded cache (empty when unknown); reads only that entry."""
    src = source_for(name)
    key = "classes_coarse" if src.labels == "coarse" else "classes"
    names = read_cached_entry(cache_path(src.key, root), key)
    return [] if names is None else [str(s) for s in names]


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
    label_set = src.label_set(labels)
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
    return Dataset(
        name=f"{src.key}-coarse" if label_set == "coarse" else src.key,
        x_train=torch.from_numpy(np.ascontiguousarray(arrays["x_train"])),
        y_train=torch.from_numpy(arrays["y_train" + suffix].astype(np.int64)),
        x_test=torch.from_numpy(np.ascontiguousarray(arrays["x_test"])),
        y_test=torch.from_numpy(arrays["y_test" + suffix].astype(np.int64)),
        num_classes=src.classes_of(label_set),
        transform=transform,
        layout=transform.layout,
    )


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


for _name, _source in SOURCES.items():
    register(DatasetSpec(_name, _source.summary, _loader(_name)))

__all__ = ["class_names", "load_arrays", "load_real"]
