"""How a batch is laid out for the model: flat feature vectors or channels-first images.

* ``"flat"`` (the default): ``(B, features)``; images are flattened in their stored order
  (``H*W*C`` for the real sets, row-major pixels for the embedded ones).
* ``"image"``: ``(B, C, H, W)``, what convolutional and patch-based models take.
"""

from __future__ import annotations

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
