"""Datasets: a name maps to a loader returning standardised train/test tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .layout import LAYOUTS, check_layout  # noqa: F401  (LAYOUTS: re-exported)
from .transforms import standardize  # noqa: F401  (re-exported)

BatchTransform = Callable[[Tensor, bool, "torch.Generator | None"], Tensor]
"""``transform(raw_batch, train, generator) -> float32 features``: applied per batch, so large
sets stay compact (uint8) in memory; ``train=True`` may augment, seeded by ``generator``."""


@dataclass
class Dataset:
    """A classification dataset held in memory, with int64 labels.

    ``x_train``/``x_test`` are float32 features, or raw arrays (e.g. uint8 images) that
    ``transform`` turns into float32 features one batch at a time. ``layout`` says how the
    features are laid out: ``"flat"`` ``(B, features)`` or ``"image"`` ``(B, C, H, W)``.
    """

    name: str
    x_train: Tensor  # (N, ...)
    y_train: Tensor  # (N,) int64
    x_test: Tensor
    y_test: Tensor
    num_classes: int
    transform: BatchTransform | None = None
    layout: str = "flat"

    def features(
        self, x: Tensor, train: bool = False, generator: torch.Generator | None = None
    ) -> Tensor:
        """Float32 model inputs for a batch of raw rows of ``x_train``/``x_test``."""
        return x if self.transform is None else self.transform(x, train, generator)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example as the model sees it (after ``transform``)."""
        return tuple(self.features(self.x_train[:1]).shape[1:])

    @property
    def num_features(self) -> int:
        return int(np.prod(self.input_shape))

    def summary(self) -> str:
        return (
            f"{self.name}: {len(self.x_train)} train / {len(self.x_test)} test, "
            f"input {self.input_shape}, {self.num_classes} classes"
        )


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    summary: str
    load: Callable[..., Dataset]


def to_dataset(
    name: str, x_train, y_train, x_test, y_test, num_classes: int, layout: str = "flat"
) -> Dataset:
    return Dataset(
        name=name,
        x_train=torch.as_tensor(np.asarray(x_train, dtype=np.float32)),
        y_train=torch.as_tensor(np.asarray(y_train, dtype=np.int64)),
        x_test=torch.as_tensor(np.asarray(x_test, dtype=np.float32)),
        y_test=torch.as_tensor(np.asarray(y_test, dtype=np.int64)),
        num_classes=num_classes,
        layout=layout,
    )


DATASETS: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> None:
    DATASETS[spec.name] = spec


def dataset_spec(name: str) -> DatasetSpec:
    """The registered dataset ``name``, or a ValueError naming the known ones."""
    spec = DATASETS.get(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return spec


def load_dataset(name: str, layout: str = "flat", **options) -> Dataset:
    """Load a dataset by name (see ``forwardgrad list``).

    ``layout``: ``"flat"`` serves ``(B, features)`` batches, ``"image"`` ``(B, C, H, W)`` ones
    (image sets only; see ``forwardgrad.data.layout``).
    """
    data = dataset_spec(name).load(layout=check_layout(layout), **options)
    if data.layout != layout:
        raise ValueError(f"dataset {name!r} does not serve layout={layout!r}")
    return data


from . import embedded, real  # noqa: E402,F401  (register the embedded and real datasets)
