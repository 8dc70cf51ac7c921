"""How a batch is laid out for the model: flat feature vectors or channels-first images.

* ``"flat"`` (the default): ``(B, features)``; images are flattened in their stored order
  (``H*W*C`` for the real sets, row-major pixels for the embedded ones).
* ``"image"``: ``(B, C, H, W)``, what convolutional and patch-based models take.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor

LAYOUTS = ("flat", "image")


def check_layout(layout: str) -> str:
    """``layout`` itself, or a ValueError naming the layouts."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: choose one of {list(LAYOUTS)}")
    return layout


def arrange(images: Tensor, layout: str) -> Tensor:
    """Images ``(B, H, W, C)`` as ``layout`` serves them: ``(B, H*W*C)`` or ``(B, C, H, W)``."""
    if check_layout(layout) == "flat":
        return images.reshape(len(images), -1)
    return images.permute(0, 3, 1, 2).contiguous()


def standardize_channels(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel standardisation of images ``(N, C, H, W)``, training-split statistics only.

    One mean and one std per channel over all training pixels (not per pixel, as the flat
    layout's ``standardize`` does): a convolution shares its weights across positions, and
    per-pixel scaling would blow up near-constant border pixels.
    """
    mean = x_train.mean((0, 2, 3), keepdims=True)
    std = x_train.std((0, 2, 3), keepdims=True)
    std = np.where(std > 1e-8, std, 1.0)
    return (x_train - mean) / std, (x_test - mean) / std
