"""Standardisation with training-split statistics, and the real sets' per-batch transform.

The embedded sets are standardised once, as float arrays (``standardize``). The real sets stay
uint8 in memory and ``ImageTransform`` turns each batch into float32 features: scale to [0, 1],
(training batches with ``augment=True``: random crop with ``PAD`` pixels of zero padding for the
32x32 sets, plus horizontal flips for CIFAR), per-channel normalisation with the training split's
mean and std (``channel_stats``), flattened or laid out channels-first (``layout``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .layout import arrange, check_layout

PAD = 4  # pixels of zero padding for the random-crop augmentation of the 32x32 sets


def _usable_std(std: np.ndarray) -> np.ndarray:
    """``std`` with (near-)constant features at 1, so they standardise to 0 instead of inf."""
    return np.where(std > 1e-8, std, 1.0)


def standardize(
    x_train: np.ndarray, x_test: np.ndarray, axes: int | tuple[int, ...] = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both splits with the training split's mean and std over ``axes``.

    ``axes=0`` (flat rows): per feature. ``axes=(0, 2, 3)`` (images ``(N, C, H, W)``): one mean
    and one std per channel over all training pixels, since a convolution shares its weights
    across positions and per-pixel scaling would blow up near-constant border pixels.
    """
    mean = x_train.mean(axes, keepdims=True)
    std = _usable_std(x_train.std(axes, keepdims=True))
    return (x_train - mean) / std, (x_test - mean) / std


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
    return mean, _usable_std(std)


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
