"""Gradients of closed-form functions: k-tangent forward gradients and the exact one.

A forward gradient takes k tangents (k, *batch, n), their k JVPs from ``torch.func.jvp`` under
``torch.func.vmap`` over the tangent axis (one call for all k, primal computed once, no autograd
graph, no backward pass), combined by :func:`forwardgrad.core.aggregate.aggregate`. The exact
gradient (``torch.func.grad``) is the backprop baseline.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..core.aggregate import aggregate

ValueFn = Callable[[Tensor], Tensor]
"""A test function: points ``(*batch, n)`` -> values ``(*batch,)``."""


def directional_derivatives(fn: ValueFn, x: Tensor, tangents: Tensor) -> tuple[Tensor, Tensor]:
    """Values and JVPs of ``fn`` at ``x`` along every tangent, in one batched forward-mode call.

    Args:
        fn: points (*batch, n) -> values (*batch,).
        x: points, (*batch, n).
        tangents: (k, *batch, n); tangent j of batch index b is ``tangents[j, b]``.

    Returns:
        ``values`` (*batch,) (the primal, computed once) and ``jvps`` (k, *batch) with
        ``jvps[j, b] = <grad f(x[b]), tangents[j, b]>``.
    """
    if tangents.shape[1:] != x.shape:
        raise ValueError(
            f"tangents {tuple(tangents.shape)} do not match points {tuple(x.shape)}: "
            "expected tangents (k, *batch, n) for points (*batch, n)"
        )

    x = x.contiguous()  # forward AD cannot attach tangents to broadcast (expanded) points

    def push(tangent: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(fn, (x,), (tangent,))

    # x is not batched by vmap, so the primal output is shared (out_dims None) and computed once.
    values, jvps = torch.func.vmap(push, in_dims=0, out_dims=(None, 0))(tangents)
    return values, jvps


def forward_gradient(
    fn: ValueFn, x: Tensor, tangents: Tensor, method: str
) -> tuple[Tensor, Tensor]:
    """Values (*batch,) and the k-tangent forward gradient (*batch, n) of ``fn`` at ``x``.

    ``tangents`` is (k, *batch, n); ``method`` is an aggregation (sum, mean, projection).
    """
    values, jvps = directional_derivatives(fn, x, tangents)
    return values, aggregate(method, tangents, jvps)


def exact_gradient(fn: ValueFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """Values (*batch,) and exact gradients (*batch, n) of ``fn`` at ``x``.

    Batch entries are independent, so the gradient of the summed values is every gradient.
    """

    def total(points: Tensor) -> tuple[Tensor, Tensor]:
        values = fn(points)
        return values.sum(), values

    grads, values = torch.func.grad(total, has_aux=True)(x)
    return values, grads
