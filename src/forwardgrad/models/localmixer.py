"""Ren et al. (2022)'s LocalMixer: an MLP-Mixer trained block by block with local losses.

Shapes (C channels, P patches, G groups, K classes)::

    (B, c, H, W) --patches p x p--> (B, c p p, P)                 channels x patches
    block 0:  channel 1x1 conv -> norm -> ReLU -> group 1x1 conv -> norm(G) -> ReLU
    block i:  token Linear(P, P) -> norm -> ReLU -> channel 1x1 conv -> norm -> ReLU
              -> group 1x1 conv -> norm(G) -> ReLU, plus the block's input
    after each block (local losses): a grouped 1x1 conv head, (B, G K, P): G heads at every
              patch, each a cross-entropy (LocalLoss); a StopGradient before the next block
    readout:  the last block's output, mean over patches (B, C) -> Linear -> (B, K)

Every layer is a 1x1 convolution on ``(B, C, P)`` or a ``Linear`` over the patches, and every
norm is a :class:`~forwardgrad.core.layers.ChannelLayerNorm` (over the channels of each patch,
or of each group; no learned scale), so each layer reaches the next through a norm and a ReLU:
the next-layer guesses (Wᵀ, W̃⊥, downstream) apply at every layer of a block.

Where this model differs from Ren et al.'s ``mlp_block``: the residual is added after the
block's last ReLU (Ren adds it before), so that the group layer's route to the head does not
depend on the residual's value (``core/next_layer.py``); the local heads classify each patch's
own features (Ren's heads average the features over patches, with a stop-gradient trick that
keeps each patch's gradient local). With ``local_losses=False`` there are no heads and no
stop-gradients: the same mixer trained end to end (Ren's "BP" and "FG" rows).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..core.layers import ChannelLayerNorm, LocalLoss, StopGradient


class Patches(nn.Module):
    """``(B, c, H, W) -> (B, c p p, (H/p)(W/p))``: non-overlapping p x p patches as columns."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: Tensor) -> Tensor:
        return F.unfold(x, self.patch_size, stride=self.patch_size)


class MixerBlock(nn.Module):
    """One LocalMixer block on ``(B, C, P)`` (block 0 has no token mixing and no residual)."""

    def __init__(
        self, in_channels: int, channels: int, patches: int, groups: int, first: bool
    ) -> None:
        super().__init__()
        self.first = first
        if not first:
            self.token = nn.Linear(patches, patches)
            self.token_norm = ChannelLayerNorm(channels)
            self.token_act = nn.ReLU()
        self.channel = nn.Conv1d(in_channels, channels, 1)
        self.channel_norm = ChannelLayerNorm(channels)
        self.channel_act = nn.ReLU()
        self.group = nn.Conv1d(channels, channels, 1, groups=groups)
        self.group_norm = ChannelLayerNorm(channels, groups)
        self.group_act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else self.token_act(self.token_norm(self.token(x)))
        h = self.channel_act(self.channel_norm(self.channel(h)))
        h = self.group_act(self.group_norm(self.group(h)))
        return h if self.first else x + h


class LocalMixer(nn.Module):
    """See the module docstring. Ren's M/8/16 for CIFAR-10 is ``blocks=4, channels=512,
    groups=16, patch_size=8``."""

    def __init__(
        self,
        image_size: tuple[int, int],
        in_channels: int,
        num_classes: int,
        *,
        patch_size: int = 8,
        blocks: int = 4,
        channels: int = 512,
        groups: int = 16,
        local_losses: bool = True,
    ) -> None:
        super().__init__()
        h, w = image_size
        for name, value in (
            ("patch_size", patch_size),
            ("blocks", blocks),
            ("channels", channels),
            ("groups", groups),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"localmixer {name} must be a positive integer; got {value!r}")
        if not isinstance(local_losses, bool):
            raise ValueError(f"localmixer local_losses must be True or False; got {local_losses!r}")
        if h % patch_size or w % patch_size:
            raise ValueError(f"patch size {patch_size} does not divide the image size {h}x{w}")
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        patches = (h // patch_size) * (w // patch_size)
        self.local_losses = local_losses
        self.patches = Patches(patch_size)
        widths = [in_channels * patch_size * patch_size] + [channels] * blocks
        self.blocks = nn.ModuleList(
            MixerBlock(widths[i], channels, patches, groups, first=i == 0) for i in range(blocks)
        )
        if local_losses:
            self.heads = nn.ModuleList(
                nn.Conv1d(channels, groups * num_classes, 1, groups=groups) for _ in range(blocks)
            )
            self.local_loss = LocalLoss(groups)
            self.cut = StopGradient()
        self.readout = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:  # (B, c, H, W) -> (B, num_classes)
        h = self.patches(x)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if self.local_losses:
                self.local_loss(self.heads[i](h))
                h = self.cut(h)
        return self.readout(h.mean(2))


def localmixer(
    image_size: tuple[int, int], in_channels: int, num_classes: int, **options
) -> LocalMixer:
    return LocalMixer(image_size, in_channels, num_classes, **options)
