"""Image-size helpers shared by the image models."""

from __future__ import annotations

ImageSize = int | tuple[int, int]
"""``H`` for square images, or ``(H, W)``."""


def pair(size: ImageSize) -> tuple[int, int]:
    """``(H, W)`` from an int (square images) or a pair."""
    h, w = (size, size) if isinstance(size, int) else size
    return int(h), int(w)
