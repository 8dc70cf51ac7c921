"""What the engine's primal pass shows a guess at every site call, for measurements that draw
tangents without JVPs."""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.chain import ChainEngine, SitePlan
from ..core.context import LossFn, SiteContext
from ..core.state import untouched


def site_contexts(engine, x: Tensor, targets: Tensor, loss_fn: LossFn) -> list[SiteContext]:
    """The :class:`SiteContext` of every site call (activities, ``phi'(s)``, outputs), from one
    primal pass with no tangents injected. ``engine``: an estimator's engine
    (:meth:`Estimator.engine_for`) or a :class:`SitePlan`. The model's state is left as it was."""
    if isinstance(engine, SitePlan):
        engine = ChainEngine(engine)
    contexts: list[SiteContext] = []

    def capture(ctx: SiteContext) -> None:
        contexts.append(ctx)
        return None

    model = getattr(engine, "model", None)
    with torch.no_grad():
        if model is None:
            engine.run(x, targets, loss_fn, 1, capture, False, False, tangent_mode=False)
        else:
            device = next(model.parameters()).device
            with untouched(model, device):
                engine.run(x, targets, loss_fn, 1, capture, False, False, tangent_mode=False)
    return contexts


def flat(t: Tensor) -> Tensor:
    """``(B, ...) -> (B, n)``: an activity (or its gradient) as one vector per example."""
    return t.reshape(t.shape[0], -1)
