"""What one engine pass shows the guesses (a :class:`SiteContext` per site call) and hands the
rules and aggregations afterwards (a :class:`SiteCall` per site call, in a :class:`ForwardResult`).

A *site call* is one call of a site's module during a pass; a module used twice has two calls,
each with its own tangent. Calls are numbered in the order their modules return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs, targets) -> per-example losses (B,)``."""


class SiteContext:
    """What a guess may see at one site call during the primal pass.

    Attributes:
        site: the site (``.name``, ``.module``; chain sites also ``.index``, ``.followers``).
        index: the call's position in the pass (0, 1, ...).
        key: a stable name for the call (the site's name, ``#n`` appended for its n-th reuse),
            from which its random stream is derived.
        plan: the model's chain of Linear sites, when the fused chain engine runs the pass,
            else None.
        inputs: the module's first input (primal), or None.
        preact: the site's activity ``s`` (primal), ``(B, ...)``.
        act_grad: ``phi'(s)`` of the elementwise activation that alone consumes ``s``, or None
            when none does (computed on first access).
        outputs: what follows the activation, ``phi(s)`` (``s`` itself when there is none;
            computed on first access).
        targets, loss_fn: the batch's targets and the per-example loss.
        is_last: True for the last site call of the pass.
        path: how this call reaches the next linear layer (a
            :class:`~forwardgrad.core.next_layer.NextPath`), the reason it does not (a string),
            or None when its output is the model's output.
        next_layer: ``path`` linearized at this batch (computed on first access), or None.
    """

    def __init__(
        self,
        site: Any,
        index: int,
        preact: Tensor,
        *,
        key: str | None = None,
        plan: Any = None,
        inputs: Tensor | None = None,
        act_grad: Tensor | Callable[[], Tensor | None] | None = None,
        outputs: Tensor | Callable[[], Tensor] | None = None,
        targets: Tensor | None = None,
        loss_fn: LossFn | None = None,
        is_last: bool = False,
        path: Any = None,
    ) -> None:
        self.site, self.index, self.preact = site, index, preact
        self.key = key if key is not None else site.name
        self.plan, self.inputs = plan, inputs
        self._act_grad = act_grad
        self._outputs = outputs
        self.targets, self.loss_fn, self.is_last = targets, loss_fn, is_last
        self.path = path
        self._next_layer: Any = None

    @property
    def next_layer(self) -> Any:
        path = self.path
        if self._next_layer is None and getattr(path, "reaches_layer", False):
            # the chain engine's phi(s) and phi'(s) cover all of the site's followers
            chain = self.plan is not None
            mask, outputs = (self.act_grad, self.outputs) if chain else (None, None)
            self._next_layer = path.at(self.preact, mask, outputs)
        return self._next_layer

    @property
    def act_grad(self) -> Tensor | None:
        if callable(self._act_grad):
            self._act_grad = self._act_grad()
        return self._act_grad

    @property
    def outputs(self) -> Tensor:
        if callable(self._outputs):
            self._outputs = self._outputs()
        return self._outputs if self._outputs is not None else self.preact

    @property
    def batch_size(self) -> int:
        return self.preact.shape[0]


SiteTangentFn = Callable[[SiteContext], "Tensor | None"]
"""Returns the activity tangents ``(k, *preact.shape)`` to inject at a site call, or None."""


@dataclass
class SiteCall:
    """One site call as the rules need it after the pass.

    ``args``/``kwargs`` are the module's inputs (primal; None when the pass did not keep them),
    ``tangent`` the injected ``u (k, *activity_shape)`` (None when not kept or not injected).
    """

    site: Any
    index: int
    key: str
    activity_shape: torch.Size
    args: tuple | None = None
    kwargs: dict | None = None
    tangent: Tensor | None = None
    versions: tuple[int, ...] = ()  # of the tensors in args, to detect later in-place writes
    rng_state: Any = None  # random state when the module was entered (to replay dropout)

    @property
    def input(self) -> Tensor:
        assert self.args is not None, "the pass did not keep this call's inputs"
        return self.args[0]


@dataclass
class ForwardResult:
    """The primal outputs and the JVPs of one engine pass."""

    outputs: Tensor  # model outputs
    losses: Tensor  # per-example losses (B,) (with local losses: the output's)
    jvps: Tensor  # (k, B): d_jb = sum over calls <dl_b/ds, u_j^b> (+ weight-tangent terms)
    calls: list[SiteCall] = field(default_factory=list)
    # local losses: (k, B, 1 + L), each loss's JVP, and per call the losses it reaches
    loss_jvps: Tensor | None = None
    reach: list[frozenset[int]] | None = None

    @property
    def inputs(self) -> list[Tensor]:
        return [c.input for c in self.calls]

    @property
    def tangents(self) -> list[Tensor | None]:
        return [c.tangent for c in self.calls]


def per_example_losses(loss_fn: LossFn, outputs: Tensor, targets: Tensor) -> Tensor:
    """``loss_fn(outputs, targets)``, checked to be one loss per example."""
    losses = loss_fn(outputs, targets)
    batch = targets.shape[0] if isinstance(targets, Tensor) and targets.dim() else None
    if batch is not None and tuple(losses.shape) != (batch,):
        raise ValueError(
            f"loss_fn must return one loss per example, shape ({batch},); got "
            f"{tuple(losses.shape)}. Use reduction='none' and reduce any trailing dimensions."
        )
    return losses
