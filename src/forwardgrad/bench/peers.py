"""The peer our engine is measured against: a forward-gradient step written the way the field's
public code computes it with real forward-mode AD (frog's forward-AD mode, Flügel et al.'s
reference implementation), for the same estimator.

Per tangent, one forward pass under ``torch.autograd.forward_ad`` (the primal recomputed every
time), with forward hooks injecting that tangent at every module that owns parameters; the
per-example JVPs scale the tangents into activity estimates, averaged over the k tangents. Then,
per module, a layer-local backward: the module re-run on its detached input, and
``torch.autograd.grad`` of its output against the averaged estimate gives its own parameters'
gradients. Counting passes, this costs about 2k + 2 forward passes where ours costs k + 2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn

from ..core.engine import forward_mode_kernels


def _owning_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]


def frog_loop_step(
    model: nn.Module, x: Tensor, y: Tensor, loss_fn, k: int, seed: int = 0
) -> Callable[[], None]:
    """A zero-argument step adding the k-tangent activation-perturbation estimate to ``.grad``."""
    modules = _owning_modules(model)
    generator = torch.Generator(device=x.device).manual_seed(seed)

    def step() -> None:
        inputs: dict[int, Tensor] = {}
        estimates: dict[int, Tensor] = {}
        for _ in range(k):
            tangents: dict[int, Tensor] = {}

            def inject(module, args, out, tangents=tangents):
                primal, tangent = fwAD.unpack_dual(out)
                u = torch.randn(
                    primal.shape, generator=generator, device=primal.device, dtype=primal.dtype
                )
                tangents[id(module)] = u
                inputs[id(module)] = fwAD.unpack_dual(args[0]).primal.detach()
                return fwAD.make_dual(primal, u if tangent is None else tangent + u)

            handles = [m.register_forward_hook(inject) for m in modules]
            try:
                with torch.no_grad(), fwAD.dual_level(), forward_mode_kernels():
                    losses = loss_fn(model(x), y)
                    d = fwAD.unpack_dual(losses).tangent  # (B,)
            finally:
                for h in handles:
                    h.remove()
            for key, u in tangents.items():
                part = d.view(-1, *[1] * (u.dim() - 1)) * u / k
                estimates[key] = part if key not in estimates else estimates[key] + part
        batch = x.shape[0]
        for m in modules:
            own = [p for p in m.parameters(recurse=False) if p.requires_grad]
            with torch.enable_grad():
                out = m(inputs[id(m)])
                grads = torch.autograd.grad(out, own, grad_outputs=estimates[id(m)] / batch)
            for p, g in zip(own, grads):
                p.grad = g if p.grad is None else p.grad.add_(g)

    return step
