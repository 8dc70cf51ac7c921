"""Real datasets load from tiny files in their official formats, through the public path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from data_files import (
    listing,
    make_cifar10,
    make_cifar100,
    make_idx_set,
    make_svhn,
)

from forwardgrad.data import DATASETS, load_dataset
from forwardgrad.data.sources import source_for


def test_names_registered():
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100", "cifar100-coarse", "svhn"):
        assert name in DATASETS


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_sets_load(tmp_path, name, gz):
    files = make_idx_set(tmp_path, name, gz=gz)
    data = load_dataset(name, data_dir=str(tmp_path))
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (12, 28, 28, 1)
    assert data.x_test.shape == (5, 28, 28, 1)
    assert data.y_train.dtype == torch.int64
    np.testing.assert_array_equal(data.x_train[..., 0].numpy(), files["train"][0])
    np.testing.assert_array_equal(data.y_test.numpy(), files["t10k"][1])
    assert data.num_classes == 10
    f = data.features(data.x_train[:3])
    assert f.dtype == torch.float32 and f.shape == (3, 784)
    assert data.input_shape == (784,)


def test_cifar10_loads_with_official_layout(tmp_path):
    ref = make_cifar10(tmp_path)
    data = load_dataset("cifar10", data_dir=tmp_path)
    assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (20, 32, 32, 3)
    assert data.x_test.shape == (4, 32, 32, 3) and data.num_classes == 10
    np.testing.assert_array_equal(data.y_train.numpy(), ref["y_train"])
    np.testing.assert_array_equal(data.y_test.numpy(), ref["y_test"])
    # a row is the 1024 red, then green, then blue values, row-major
    row = ref["x_train"][7]
    img = data.x_train[7].numpy()
    np.testing.assert_array_equal(img[..., 0].ravel(), row[:1024])
    np.testing.assert_array_equal(img[..., 2].ravel(), row[2048:])
    assert data.features(data.x_test).shape == (4, 3072)


def test_cifar100_fine_and_coarse(tmp_path):
    ref = make_cifar100(tmp_path)
    fine = load_dataset("cifar100", data_dir=tmp_path)
    coarse = load_dataset("cifar100-coarse", data_dir=tmp_path)
    option = load_dataset("cifar100", data_dir=tmp_path, labels="coarse")
    assert fine.num_classes == 100 and coarse.num_classes == 20 and option.num_classes == 20
    np.testing.assert_array_equal(fine.y_train.numpy(), ref["train"][1])
    np.testing.assert_array_equal(coarse.y_test.numpy(), ref["test"][2])
    np.testing.assert_array_equal(option.y_train.numpy(), ref["train"][2])
    assert torch.equal(fine.x_train, coarse.x_train)
    with pytest.raises(ValueError, match="coarse"):
        load_dataset("cifar10", data_dir=tmp_path, labels="coarse")


def test_svhn_layout_and_label_ten_is_zero(tmp_path):
    ref = make_svhn(tmp_path)
    data = load_dataset("svhn", data_dir=tmp_path)
    x, y = ref["train"]
    assert data.x_train.shape == (6, 32, 32, 3) and data.x_train.dtype == torch.uint8
    np.testing.assert_array_equal(data.x_train.numpy(), x.transpose(3, 0, 1, 2))
    assert y[0, 0] == 10 and data.y_train[0] == 0  # SVHN's label 10 is the digit 0
    np.testing.assert_array_equal(data.y_train.numpy(), y.ravel() % 10)
    np.testing.assert_array_equal(data.y_test.numpy(), ref["test"][1].ravel() % 10)
    assert data.num_classes == 10 and int(data.y_train.max()) <= 9


@pytest.mark.parametrize(
    "name,file,url",
    [
        ("cifar10", "data_batch_1", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
        (
            "mnist",
            "train-images-idx3-ubyte",
            "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        ),
        ("svhn", "test_32x32.mat", "http://ufldl.stanford.edu/housenumbers/test_32x32.mat"),
    ],
)
def test_missing_files_are_named_with_directory_and_url(tmp_path, name, file, url):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset(name, data_dir=tmp_path)
    msg = str(e.value)
    assert file in msg and str(tmp_path / source_for(name).folder) in msg and url in msg
    assert f"forwardgrad data fetch {name}" in msg
    assert listing(tmp_path) == []


def test_train_on_tiny_cifar10(tmp_path):
    from forwardgrad.training.config import TrainConfig
    from forwardgrad.training.train import train

    make_cifar10(tmp_path / "data")
    cfg = TrainConfig(
        dataset="cifar10",
        data_dir=str(tmp_path / "data"),
        guess="wt",
        depth=1,
        width=8,
        epochs=1,
        batch_size=4,
    )
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.summary["status"] == "completed"
    assert result.summary["steps"] == 5
