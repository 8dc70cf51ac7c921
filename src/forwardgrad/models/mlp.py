"""The multilayer perceptron: Linear-act-...-Linear."""

from __future__ import annotations

from torch import nn


def mlp(
    in_features: int,
    num_classes: int,
    depth: int = 3,
    width: int = 128,
    bias: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """An MLP with ``depth`` hidden layers of ``width`` units: Linear-act-...-Linear.

    ``depth`` counts hidden layers, so depth 3 has four linear layers (the W̃⊥ paper's "3 hidden
    layers"). PyTorch's default initialisation.
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0; got {depth}")
    if width < 1 or in_features < 1 or num_classes < 1:
        raise ValueError(
            "width, in_features and num_classes must be >= 1; "
            f"got {width}, {in_features}, {num_classes}"
        )
    layers: list[nn.Module] = []
    d = in_features
    for _ in range(depth):
        layers += [nn.Linear(d, width, bias=bias), activation()]
        d = width
    layers.append(nn.Linear(d, num_classes, bias=bias))
    return nn.Sequential(*layers)
