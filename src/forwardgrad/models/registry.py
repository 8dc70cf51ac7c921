"""Models by name: ``build_model(name, input_shape, num_classes, **options)``.

``input_shape`` is one example's shape as the dataset serves it (``Dataset.input_shape``):
``(features,)`` or any shape for ``mlp`` (image-shaped input is flattened first), ``(C, H, W)``
for the image models (load the data with ``layout="image"``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from .cnn import cnn
from .localmixer import localmixer
from .mlp import mlp
from .resnet import resnet18
from .vit import vit


@dataclass(frozen=True)
class ModelSpec:
    """A named model: ``build(input_shape, num_classes, **options) -> nn.Module``.

    ``config_keys`` maps the training config's keys to the builder's options (``width`` is the
    ViT's ``dim``); ``layout`` is how the data must be served (``flat`` or ``image``)."""

    name: str
    summary: str
    build: Callable[..., nn.Module]
    config_keys: tuple[tuple[str, str], ...] = ()
    layout: str = "image"

    @property
    def options(self) -> tuple[str, ...]:
        """The keyword options ``build`` takes (besides ``input_shape`` and ``num_classes``)."""
        return tuple(inspect.signature(self.build).parameters)[2:]


def image_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)`` from ``input_shape``, or a ValueError saying to use the image layout."""
    if len(input_shape) != 3:
        raise ValueError(
            f"model {name!r} takes images shaped (C, H, W); got input_shape {input_shape}. "
            "Load the dataset with layout='image'."
        )
    c, h, w = (int(n) for n in input_shape)
    return c, h, w


def build_mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    depth: int = 3,
    width: int = 128,
    bias: bool = True,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    model = mlp(
        math.prod(input_shape),
        num_classes,
        depth=depth,
        width=width,
        bias=bias,
        activation=activation,
    )
    if len(input_shape) > 1:
        model = nn.Sequential(nn.Flatten(), *model)  # (B, *input_shape) -> (B, features)
    return model


def build_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    c, h, w = image_shape("cnn", input_shape)
    return cnn(c, num_classes, (h, w))


def build_resnet18(
    input_shape: tuple[int, ...], num_classes: int, norm: str = "group", stem: str = "cifar"
) -> nn.Module:
    c, _, _ = image_shape("resnet18", input_shape)
    return resnet18(c, num_classes, norm=norm, stem=stem)


def build_vit(
    input_shape: tuple[int, ...],
    num_classes: int,
    patch_size: int = 4,
    depth: int = 6,
    heads: int = 4,
    dim: int = 256,
    mlp_dim: int = 512,
    dropout: float = 0.0,
    prompts: int = 0,
) -> nn.Module:
    c, h, w = image_shape("vit", input_shape)
    return vit(
        (h, w),
        c,
        num_classes,
        patch_size=patch_size,
        depth=depth,
        heads=heads,
        dim=dim,
        mlp_dim=mlp_dim,
        dropout=dropout,
        prompts=prompts,
    )


def build_localmixer(
    input_shape: tuple[int, ...],
    num_classes: int,
    patch_size: int | None = None,
    blocks: int = 4,
    channels: int = 512,
    groups: int = 16,
    local_losses: bool = True,
) -> nn.Module:
    """Ren et al.'s M/8/16 by default; the patches tile the image 4 x 4 (8 x 8 pixels on
    CIFAR-10's 32 x 32, 7 x 7 on MNIST's 28 x 28) unless ``patch_size`` is given."""
    c, h, w = image_shape("localmixer", input_shape)
    if patch_size is None:
        if h % 4 or w % 4 or not h:
            raise ValueError(
                f"localmixer tiles the image 4 x 4 by default, which {h}x{w} does not allow; "
                "give patch_size"
            )
        patch_size = h // 4 if h == w else math.gcd(h // 4, w // 4)
    return localmixer(
        (h, w),
        c,
        num_classes,
        patch_size=patch_size,
        blocks=blocks,
        channels=channels,
        groups=groups,
        local_losses=local_losses,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "mlp",
            "Linear-ReLU-...-Linear on flattened input (depth 3, width 128)",
            build_mlp,
            (("depth", "depth"), ("width", "width"), ("bias", "bias")),
            layout="flat",
        ),
        ModelSpec("cnn", "LeNet-style conv net: conv-relu-pool x2, three Linear layers", build_cnn),
        ModelSpec(
            "resnet18",
            "ResNet-18, 11.2M parameters (norm group|batch|none, stem cifar|imagenet)",
            build_resnet18,
            (("norm", "norm"), ("stem", "stem")),
        ),
        ModelSpec(
            "vit",
            "ViT: pre-norm blocks (depth 6, heads 4, width 256, mlp_dim 512, patch_size 4)",
            build_vit,
            (
                ("depth", "depth"),
                ("width", "dim"),
                ("heads", "heads"),
                ("mlp_dim", "mlp_dim"),
                ("patch_size", "patch_size"),
                ("prompts", "prompts"),
            ),
        ),
        ModelSpec(
            "localmixer",
            "Ren et al.'s LocalMixer M/8/16 with local losses (blocks 4, channels 512, groups "
            "16, 4 x 4 patches)",
            build_localmixer,
            (
                ("depth", "blocks"),
                ("width", "channels"),
                ("groups", "groups"),
                ("patch_size", "patch_size"),
                ("local_losses", "local_losses"),
            ),
        ),
    )
}


def build_model(
    name: str, input_shape: Sequence[int], num_classes: int, **options: object
) -> nn.Module:
    """Build model ``name`` for examples shaped ``input_shape`` and ``num_classes`` classes.

    ``options`` are the builder's keyword options (``MODELS[name].options``); any other raises a
    ValueError naming the allowed ones.
    """
    spec = MODELS.get(name)
    if spec is None:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        allowed = ", ".join(spec.options) or "none"
        raise ValueError(
            f"model {name!r} does not take option(s) {', '.join(unknown)}; allowed: {allowed}"
        )
    return spec.build(tuple(int(n) for n in input_shape), num_classes, **options)
