"""A small LeNet-style convolutional network.

Two conv-ReLU-maxpool stages (6 and 16 channels, 5x5 kernels with padding 2, so the convolutions
keep the spatial size and only the 2x2 pools halve it), then Linear-ReLU-Linear-ReLU-Linear
(120, 84, classes) as in LeNet-5. The padding lets 8x8 inputs (sklearn digits) through as well
as 28x28 (MNIST) and 32x32 (CIFAR, SVHN): the feature map after the two pools is
``16 x H//4 x W//4`` (16x2x2 for 8x8, 16x7x7 for 28x28, 16x8x8 for 32x32).
"""

from __future__ import annotations

from torch import Tensor, nn

from .shapes import ImageSize, pair


class LeNet(nn.Module):
    """LeNet-style conv net: ``(B, C, H, W)`` images -> ``(B, num_classes)`` logits."""

    def __init__(self, in_channels: int, num_classes: int, image_size: ImageSize) -> None:
        super().__init__()
        h, w = pair(image_size)
        if h < 4 or w < 4:
            raise ValueError(f"LeNet needs images of at least 4x4 (two 2x2 pools); got {h}x{w}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"in_channels and num_classes must be >= 1; got {in_channels}, {num_classes}"
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),  # (B, 6, H, W)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 6, H//2, W//2)
            nn.Conv2d(6, 16, kernel_size=5, padding=2),  # (B, 16, H//2, W//2)
            nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 16, H//4, W//4)
        )
        flat = 16 * (h // 2 // 2) * (w // 2 // 2)
        self.classifier = nn.Sequential(
            nn.Flatten(),  # (B, 16 * H//4 * W//4)
            nn.Linear(flat, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),  # (B, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        return self.classifier(self.features(x))


def cnn(in_channels: int, num_classes: int, image_size: ImageSize) -> LeNet:
    """A LeNet-style conv net for ``in_channels x image_size`` images (PyTorch's default init).

    ``image_size``: ``H`` for square images, or ``(H, W)``; at least 4.
    """
    return LeNet(in_channels, num_classes, image_size)
