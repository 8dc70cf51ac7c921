"""Building blocks the engine understands: local losses, stop-gradients, channel norms.

A model trains with *local losses* (Ren et al. 2022) by passing each local head's class scores
through a :class:`LocalLoss` in its ``forward`` and cutting its blocks apart with
:class:`StopGradient`. The objective every estimator (backprop included) then follows is the
model's own loss plus every local loss; each site's activity tangents are scaled by the JVP of
the losses its output reaches, and nothing else (see ``trace.py``, which finds what each site
reaches, and ``strategies.py``). With the blocks cut apart, a block's sites reach its own local
loss only: one pass gives every block its own directional derivative.

``torch.no_grad()`` stops neither values nor tangents in forward mode; ``Tensor.detach()``
stops both (it returns a tensor with no tangent in ``torch.func.jvp`` and in
``torch.autograd.forward_ad``), so that is what :class:`StopGradient` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class StopGradient(nn.Module):
    """``x.detach()``: the same values, no gradient and no tangent flows back through it."""

    def forward(self, x: Tensor) -> Tensor:
        return x.detach()


class LocalLoss(nn.Module):
    """Marks its input as the class scores of a local loss; returns them unchanged.

    The scores are ``(B, groups * classes, *cells)`` (the layout of a grouped 1x1 convolution):
    per example, ``groups`` heads at each cell (patch, position) each give class scores. The
    local loss of an example is the mean over heads and cells of the model's per-example loss
    (cross-entropy by default) of each head's scores against the example's target.
    """

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        if groups < 1:
            raise ValueError(f"LocalLoss groups must be >= 1; got {groups}")
        self.groups = groups

    def forward(self, scores: Tensor) -> Tensor:
        return scores

    def per_example(self, loss_fn, scores: Tensor, targets: Tensor) -> Tensor:
        """The local loss of every example, ``(B,)``, from ``loss_fn(outputs, targets)``."""
        b, width = scores.shape[:2]
        if width % self.groups:
            raise ValueError(
                f"local scores of width {width} do not split into {self.groups} groups"
            )
        heads = scores.reshape(b, self.groups, width // self.groups, -1)  # (B, G, classes, N)
        cells = heads.shape[1] * heads.shape[3]
        flat = heads.permute(0, 1, 3, 2).reshape(b * cells, -1)  # one row of class scores each
        repeated = targets.repeat_interleave(cells, dim=0)
        return loss_fn(flat, repeated).reshape(b, cells).mean(1)

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of every position of ``(B, C, *positions)`` (over each of
    ``groups`` equal groups of channels when ``groups > 1``), with no learned scale or shift.

    This is the normalisation of Ren et al.'s LocalMixer, whose layers are 1x1 convolutions on
    ``(B, C, patches)``; ``nn.LayerNorm`` normalises the trailing dimensions instead.
    """

    def __init__(self, channels: int, groups: int = 1, eps: float = 1e-5) -> None:
        super().__init__()
        if groups < 1 or channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        self.channels, self.groups, self.eps = channels, groups, eps

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        g = x.reshape(b, self.groups, c // self.groups, *x.shape[2:])
        centred = g - g.mean(2, keepdim=True)
        var = (centred * centred).mean(2, keepdim=True)  # Tensor.var is slow across this dim
        return (centred * torch.rsqrt(var + self.eps)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"{self.channels}, groups={self.groups}, eps={self.eps}"


def has_local_losses(model: nn.Module) -> bool:
    return any(isinstance(m, LocalLoss) for m in model.modules())


@contextmanager
def local_scores(model: nn.Module) -> Iterator[list[tuple[LocalLoss, Tensor]]]:
    """Collects, while the block runs, every LocalLoss call's ``(module, scores)`` in order
    (clear the list before each forward)."""
    seen: list[tuple[LocalLoss, Tensor]] = []

    def keep(module: nn.Module, args: tuple, output: Tensor) -> None:
        seen.append((module, output))

    handles = [m.register_forward_hook(keep) for m in model.modules() if isinstance(m, LocalLoss)]
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def objective(
    loss_fn, outputs: Tensor, targets: Tensor, scores: list[tuple[LocalLoss, Tensor]]
) -> Tensor:
    """Per-example losses ``(B, 1 + L)``: the model's output's, then each local loss's."""
    from .context import per_example_losses

    columns = [per_example_losses(loss_fn, outputs, targets)]
    columns += [m.per_example(loss_fn, s, targets) for m, s in scores]
    return torch.stack(columns, 1)


def model_losses(model: nn.Module, x: Tensor, targets: Tensor, loss_fn) -> Tensor:
    """One forward pass's per-example losses ``(B, 1 + L)``: the output's, then each local
    loss's (none for a model without local losses)."""
    from .context import per_example_losses

    if not has_local_losses(model):
        return per_example_losses(loss_fn, model(x), targets).unsqueeze(1)
    with local_scores(model) as scores:
        outputs = model(x)
    return objective(loss_fn, outputs, targets, scores)


def reported(losses: Tensor) -> Tensor:
    """The output's loss per example from ``(B, 1 + L)`` losses (what training reports), NaN
    where a local loss is not finite (so a run stops there as it would on its own loss)."""
    out = losses[:, 0].clone()
    out[~torch.isfinite(losses).all(1)] = float("nan")
    return out
