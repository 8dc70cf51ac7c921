"""The backprop oracle: exact gradients by reverse-mode AD, the reference every estimate is
measured against (and the ``backprop`` estimator). The only full backward pass in the library."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .context import LossFn
from .layers import model_losses, reported
from .rules import activity_leaves
from .sites import select_sites


def weight_gradients(
    model: nn.Module, x: Tensor, targets: Tensor, loss_fn: LossFn
) -> tuple[float, dict[nn.Parameter, Tensor]]:
    """Mean loss of the batch and the true gradient of every trainable parameter it uses (of
    the output's loss plus every local loss, for a model with local losses; the mean loss is
    the output's).

    Uses ``torch.autograd.grad``, so ``.grad`` is not touched; unused parameters are left out.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.enable_grad():
        losses = model_losses(model, x, targets, loss_fn)  # with local losses: all of them
        grads = torch.autograd.grad(losses.sum(1).mean(), params, allow_unused=True)
    loss = float(reported(losses.detach()).mean())
    return loss, {p: g.detach() for p, g in zip(params, grads) if g is not None}


def activity_gradients(
    model: nn.Module, x: Tensor, targets: Tensor, loss_fn: LossFn, sites=None
) -> list[Tensor]:
    """True per-example gradients ``dl_b/ds`` ``(B, *activity_shape)`` at every site call.

    ``sites``: the sites (an estimator's ``engine_for(x, targets).sites``, a
    :class:`~forwardgrad.core.chain.SitePlan`, or modules); None: the default sites (every
    Linear and Conv1d/2d). Calls are in the order their modules return, as in the engine; an
    output of several floating-point tensors is one activity, flattened and concatenated.
    """
    if sites is None:
        sites = list(select_sites(model).values())
    modules = [getattr(s, "module", s) for s in getattr(sites, "sites", sites)]
    outputs: list[list[Tensor]] = []

    def capture(module, args, output) -> None:
        outputs.append(activity_leaves(output))

    handles = [m.register_forward_hook(capture) for m in modules]
    try:
        with torch.enable_grad():
            losses = model_losses(model, x, targets, loss_fn)  # with local losses: all of them
            flat = [t for leaves in outputs for t in leaves]
            grads = torch.autograd.grad(losses.sum(), flat, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    out, i = [], 0
    for leaves in outputs:
        parts = []
        for t in leaves:
            g = grads[i] if grads[i] is not None else torch.zeros_like(t)
            parts.append(g.detach())
            i += 1
        b = parts[0].shape[0]
        out.append(parts[0] if len(parts) == 1 else torch.cat([p.reshape(b, -1) for p in parts], 1))
    return out
