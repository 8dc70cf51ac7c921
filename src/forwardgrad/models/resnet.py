"""ResNet-18: a stem, four stages of two BasicBlocks (64, 128, 256, 512 channels), a linear head.

The layout and initialisation follow torchvision's ``resnet18`` (He et al. 2016): each
BasicBlock is conv3x3-norm-ReLU-conv3x3-norm plus a shortcut (identity, or conv1x1-norm where the
stride or the width changes), then ReLU; stages 2-4 halve the spatial size in their first block;
convolutions get Kaiming-normal weights (fan-out, ReLU gain), norms weight 1 and bias 0, the head
PyTorch's default Linear init.

Options:

* ``norm``: ``"batch"`` (BatchNorm2d, torchvision's choice; in training mode it couples the
  examples of a batch, and its running-statistics update fails inside ``torch.func.jvp``),
  ``"group"`` (GroupNorm with ``min(GROUPS, channels)`` groups, ``GROUPS = 32``: 32 groups at
  every width here, 2 to 16 channels per group; no running statistics and no coupling across
  the batch, so per-example JVPs stay per-example derivatives) or ``"none"`` (Identity; the
  convolutions then get biases).
* ``stem``: ``"cifar"`` (a 3x3 stride-1 convolution, no max-pool: the usual choice for 32x32
  images) or ``"imagenet"`` (torchvision's 7x7 stride-2 convolution and 3x3 stride-2 max-pool;
  with 1 input channel this is the multi-tangent paper's MNIST ResNet-18).

The parts are named for block-wise use: ``stem``, ``layer1`` ... ``layer4``, ``head`` (global
average pool, flatten, Linear), the six blocks the multi-tangent paper groups ResNet-18 into.
With 10 classes and 3 input channels, ``norm="batch", stem="imagenet"`` has exactly
torchvision's 11,181,642 parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

GROUPS = 32
NORMS = ("batch", "group", "none")
STEMS = ("cifar", "imagenet")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """The normalisation after a convolution with ``channels`` outputs."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(min(GROUPS, channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm={norm!r}: choose one of {list(NORMS)}")


def conv(c_in: int, c_out: int, kernel: int, stride: int, norm: str) -> nn.Conv2d:
    """A ``kernel x kernel`` convolution with 'same' padding; a bias only when there is no norm."""
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=norm == "none")


class BasicBlock(nn.Module):
    """``(B, c_in, H, W)`` -> ``(B, c_out, H/stride, W/stride)``: two 3x3 convs plus a shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = conv(c_in, c_out, 3, stride, norm)
        self.norm1 = norm_layer(norm, c_out)
        self.act1 = nn.ReLU()
        self.conv2 = conv(c_out, c_out, 3, 1, norm)
        self.norm2 = norm_layer(norm, c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                conv(c_in, c_out, 1, stride, norm), norm_layer(norm, c_out)
            )
        self.act2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out = self.act1(self.norm1(self.conv1(x)))  # (B, c_out, H/stride, W/stride)
        out = self.norm2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


def stem_layers(stem: str, in_channels: int, norm: str) -> nn.Sequential:
    """``(B, C, H, W)`` -> ``(B, 64, H, W)`` (cifar) or ``(B, 64, ~H/4, ~W/4)`` (imagenet)."""
    if stem == "cifar":
        return nn.Sequential(conv(in_channels, 64, 3, 1, norm), norm_layer(norm, 64), nn.ReLU())
    if stem == "imagenet":
        return nn.Sequential(
            conv(in_channels, 64, 7, 2, norm),  # (B, 64, ~H/2, ~W/2)
            norm_layer(norm, 64),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),  # (B, 64, ~H/4, ~W/4)
        )
    raise ValueError(f"stem={stem!r}: choose one of {list(STEMS)}")


def stage(c_in: int, c_out: int, stride: int, norm: str, blocks: int = 2) -> nn.Sequential:
    """``blocks`` BasicBlocks; the first one applies ``stride`` and the change of width."""
    layers = [BasicBlock(c_in, c_out, stride, norm)]
    layers += [BasicBlock(c_out, c_out, 1, norm) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet18(nn.Module):
    """ResNet-18: ``(B, C, H, W)`` images -> ``(B, num_classes)`` logits."""

    def __init__(
        self, in_channels: int, num_classes: int, norm: str = "group", stem: str = "cifar"
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm={norm!r}: choose one of {list(NORMS)}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(
                f"in_channels and num_classes must be >= 1; got {in_channels}, {num_classes}"
            )
        self.stem = stem_layers(stem, in_channels, norm)  # (B, 64, H', W')
        self.layer1 = stage(64, 64, 1, norm)  # (B, 64, H', W')
        self.layer2 = stage(64, 128, 2, norm)  # (B, 128, H'/2, W'/2)
        self.layer3 = stage(128, 256, 2, norm)  # (B, 256, H'/4, W'/4)
        self.layer4 = stage(256, 512, 2, norm)  # (B, 512, H'/8, W'/8)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),  # (B, 512, 1, 1)
            nn.Flatten(),  # (B, 512)
            nn.Linear(512, num_classes),  # (B, num_classes)
        )
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:  # (B, C, H, W) -> (B, num_classes)
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(x)


def init_weights(model: nn.Module) -> None:
    """torchvision's ResNet init: Kaiming-normal convs (fan-out), norms at weight 1, bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18(
    in_channels: int, num_classes: int, norm: str = "group", stem: str = "cifar"
) -> ResNet18:
    """ResNet-18 for ``in_channels``-channel images; see the module docstring for the options.

    Any image size works (the head pools globally); ``stem="cifar"`` suits 32x32 and smaller,
    ``stem="imagenet"`` shrinks the input by 4 first.
    """
    return ResNet18(in_channels, num_classes, norm=norm, stem=stem)
