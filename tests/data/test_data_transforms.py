"""The real sets' per-batch transform: per-channel normalisation, seeded augmentation."""

from __future__ import annotations

import pytest
import torch
from data_files import (
    make_cifar10,
    make_svhn,
)

from forwardgrad.data import load_dataset


def test_training_features_are_normalised_per_channel(tmp_path):
    make_cifar10(tmp_path, per_batch=40)
    data = load_dataset("cifar10", data_dir=tmp_path)
    f = data.features(data.x_train).reshape(-1, 32, 32, 3)
    assert f.dtype == torch.float32
    torch.testing.assert_close(f.mean((0, 1, 2)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(f.std((0, 1, 2), correction=0), torch.ones(3), atol=1e-4, rtol=0)
    # the same statistics are applied to the test split (from the training split only)
    raw = data.x_test.float() / 255
    mean = data.x_train.float().div(255).mean((0, 1, 2))
    std = data.x_train.float().div(255).std((0, 1, 2), correction=0)
    expect = ((raw - mean) / std).reshape(len(raw), -1)
    torch.testing.assert_close(data.features(data.x_test), expect, atol=1e-4, rtol=1e-4)


def _crops(img: torch.Tensor, pad: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """All 81 crops of the zero-padded image, unflipped and flipped: (81, H, W, C) each."""
    h, w = img.shape[:2]
    padded = torch.zeros(h + 2 * pad, w + 2 * pad, img.shape[2])
    padded[pad : pad + h, pad : pad + w] = img
    crops = torch.stack(
        [padded[i : i + h, j : j + w] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]
    )
    return crops, crops.flip(2)


def _kinds(data, n: int = 48, seed: int = 0) -> set[str]:
    img = data.x_train[:1].expand(n, -1, -1, -1)
    out = data.features(img, True, torch.Generator().manual_seed(seed)).reshape(n, 32, 32, 3)
    plain = data.transform.mean, data.transform.std
    base = data.x_train[0].float() / 255
    crops, flipped = _crops(base)
    crops = (crops - plain[0]) / plain[1]
    flipped = (flipped - plain[0]) / plain[1]
    kinds = set()
    for o in out:
        if any(torch.allclose(o, c, atol=1e-5) for c in crops):
            kinds.add("crop")
        elif any(torch.allclose(o, c, atol=1e-5) for c in flipped):
            kinds.add("flip")
        else:
            kinds.add("other")
    return kinds


def test_augmentation_shape_seeded_and_flips_only_for_cifar(tmp_path):
    make_cifar10(tmp_path)
    make_svhn(tmp_path)
    cifar = load_dataset("cifar10", data_dir=tmp_path, augment=True)
    x = cifar.x_train[:8]
    a = cifar.features(x, True, torch.Generator().manual_seed(3))
    b = cifar.features(x, True, torch.Generator().manual_seed(3))
    c = cifar.features(x, True, torch.Generator().manual_seed(4))
    assert a.shape == (8, 3072) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # evaluation batches are never augmented
    plain = load_dataset("cifar10", data_dir=tmp_path)
    assert torch.equal(cifar.features(x), plain.features(x))
    assert torch.equal(cifar.features(x, False, torch.Generator()), plain.features(x))
    assert _kinds(cifar) == {"crop", "flip"}
    svhn = load_dataset("svhn", data_dir=tmp_path, augment=True)
    assert _kinds(svhn) == {"crop"}
    with pytest.raises(ValueError, match="32x32"):
        load_dataset("mnist", data_dir=tmp_path, augment=True)
