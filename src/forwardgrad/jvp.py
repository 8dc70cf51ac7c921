"""Forward-mode engine: one primal pass, k tangents carried beside it, per-example JVPs.

The engine walks the sites of a :class:`~forwardgrad.sites.SitePlan` once. At every site it
computes the primal pre-activation, asks a callback for the activity tangents to inject there
(it knows nothing of how they are made), and pushes all k tangents forward together as one
``(k, B, d)`` tensor, so the primal is computed once however many tangents there are.

Tangent rules:

* Linear sites use their exact JVP, ``t_out = t @ W^T (+ V_W x + V_b)``, as one large matmul.
  (PyTorch's forward-AD formula for ``addmm`` also multiplies by the weight's zero tangent, which
  costs a third matmul; the result is the same, which the tests check against ``torch.func.jvp``.)
* Elementwise followers go through ``torch.func.jvp`` once with a tangent of ones, giving
  ``phi'(s)``; every tangent is then ``phi'(s) * t``. ``phi'(s)`` is also what guesses use as M_i.
* Any other follower, and the loss, go through ``torch.func.jvp`` under ``torch.func.vmap``
  over the tangent axis.

No autograd graph is built: callers run this under ``torch.no_grad()`` (forward-mode tangents
still flow through ``torch.func.jvp`` there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import jvp, vmap

from .sites import Site, SitePlan

LossFn = Callable[[Tensor, Tensor], Tensor]
"""``loss_fn(outputs (B, C), targets (B,)) -> per-example losses (B,)``."""


@dataclass
class SiteContext:
    """What a guess may see at one site during the primal pass (all shapes per batch)."""

    site: Site
    plan: SitePlan
    inputs: Tensor  # x_i, (B, d_in)
    preact: Tensor  # s_i, (B, d_out)
    act_grad: Tensor | None  # phi'(s_i), (B, d_out); None when a follower is not elementwise
    outputs: Tensor  # x_{i+1} = followers(s_i), (B, d_out)
    targets: Tensor | None = None  # the batch's targets (for guesses that use the local error)
    loss_fn: LossFn | None = None

    @property
    def index(self) -> int:
        return self.site.index

    @property
    def is_last(self) -> bool:
        return self.site.index == len(self.plan) - 1

    @property
    def batch_size(self) -> int:
        return self.preact.shape[0]


SiteTangentFn = Callable[[SiteContext], Tensor | None]
"""Returns the activity tangents ``(k, B, d_out)`` to inject at a site, or None for none."""


@dataclass
class ForwardResult:
    """The primal outputs and the JVPs of one engine pass."""

    outputs: Tensor  # model outputs (B, C)
    losses: Tensor  # per-example losses (B,)
    jvps: Tensor  # (k, B): d_jb = sum_i <dl_b/ds_i, u_ij^b> (+ weight-tangent terms)
    inputs: list[Tensor] = field(default_factory=list)  # x_i per site, (B, d_in)
    tangents: list[Tensor | None] = field(default_factory=list)  # injected u_i, (k, B, d_out)


def _elementwise_chain(modules: list, s: Tensor) -> tuple[Tensor, Tensor]:
    """Primal output and derivative phi'(s) of a chain of elementwise modules."""
    if len(modules) == 1 and type(modules[0]) is torch.nn.ReLU:
        # The common case in closed form: no tangent of ones, two fewer (B, d) temporaries.
        # phi'(0) = 0, as PyTorch's own ReLU derivative.
        out = torch.relu(s)
        return out, torch.sign(out)  # 1 where s > 0, else 0, in one pass
    out, grad = s, None
    for m in modules:
        out, d = jvp(m, (out,), (torch.ones_like(out),))
        grad = d if grad is None else grad * d
    return out, grad if grad is not None else torch.ones_like(s)


def _accumulate(total: Tensor | None, owned: bool, term: Tensor) -> tuple[Tensor, bool]:
    """``total + term``, in place when ``total`` is our own buffer (saves a (k, B, d) copy);
    tensors handed in by a guess, or views of them, are never written to."""
    if total is None:
        return term, False
    if owned:
        return total.add_(term), True
    return total + term, True


def _generic_chain(
    modules: list, s: Tensor, tangents: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Primal output and pushed tangents through arbitrary per-example modules."""

    def chain(h: Tensor) -> Tensor:
        for m in modules:
            h = m(h)
        return h

    if tangents is None:
        return chain(s), None
    if tangents.shape[0] == 1:
        out, t = jvp(chain, (s,), (tangents[0],))
        return out, t.unsqueeze(0)
    return vmap(lambda t: jvp(chain, (s,), (t,)), out_dims=(None, 0))(tangents)


def loss_jvp(
    loss_fn: LossFn, outputs: Tensor, targets: Tensor, tangents: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """Per-example losses (B,) and their JVPs (k, B) along output tangents (k, B, C)."""

    def per_example(z: Tensor) -> Tensor:
        return loss_fn(z, targets)

    if tangents is None:
        losses = per_example(outputs)
        jvps = None
    elif tangents.shape[0] == 1:
        losses, d = jvp(per_example, (outputs,), (tangents[0],))
        jvps = d.unsqueeze(0)
    else:
        losses, jvps = vmap(lambda t: jvp(per_example, (outputs,), (t,)), out_dims=(None, 0))(
            tangents
        )
    if losses.shape != (outputs.shape[0],):
        raise ValueError(
            f"loss_fn must return one loss per example, shape ({outputs.shape[0]},); got "
            f"{tuple(losses.shape)}. Use reduction='none' and reduce any trailing dimensions."
        )
    return losses, jvps


def forward_jvp(
    plan: SitePlan,
    x: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    num_tangents: int,
    site_tangents: SiteTangentFn | None = None,
    weight_tangents: dict[str, Tensor] | None = None,
    keep_inputs: bool = True,
    keep_tangents: bool = True,
) -> ForwardResult:
    """One forward-mode pass of ``plan`` on a batch, carrying ``num_tangents`` tangents.

    Args:
        plan: the model's sites.
        x: inputs, (B, ...) as the model's first module expects.
        targets: labels, (B,) or whatever ``loss_fn`` takes.
        loss_fn: per-example loss, see :data:`LossFn`.
        num_tangents: k.
        site_tangents: activity-space tangents per site (k, B, d_out), injected on s_i.
        weight_tangents: weight-space tangents ``{"{i}.weight": (k, d_out, d_in),
            "{i}.bias": (k, d_out)}`` (names as :meth:`SitePlan.parameters`).
        keep_inputs: keep each site's input x_i (needed to turn activity estimates into weight
            estimates).
        keep_tangents: keep each site's injected tangents u_i. With both ``keep_`` flags off,
            only the current site's activations and tangents are alive at any time, so peak
            memory does not grow with depth.

    Returns:
        :class:`ForwardResult` with ``jvps[j, b]`` the directional derivative of example b's loss
        along tangent j.
    """
    k = num_tangents
    h = x
    for m in plan.prefix:
        h = m(h)
    t: Tensor | None = None  # tangents of the current activation, (k, B, d)
    result_inputs: list[Tensor] = []
    result_tangents: list[Tensor | None] = []
    for site in plan.sites:
        w, b = site.module.weight, site.module.bias
        s = torch.nn.functional.linear(h, w, b)
        if site.elementwise_followers:
            out, act_grad = _elementwise_chain(site.followers, s)
        else:
            out, act_grad = None, None
        u = None
        if site_tangents is not None:
            ctx = SiteContext(
                site=site,
                plan=plan,
                inputs=h,
                preact=s,
                act_grad=act_grad,
                outputs=out if out is not None else s,
                targets=targets,
                loss_fn=loss_fn,
            )
            u = site_tangents(ctx)
            if u is not None and u.shape != (k, *s.shape):
                raise ValueError(
                    f"site {site.index}: tangents must have shape {(k, *s.shape)}, "
                    f"got {tuple(u.shape)}"
                )
        # Tangents arriving from the previous site, plus the injected ones, in one fused
        # ``addmm`` when both exist; t_s is then this function's own buffer (safe in place).
        if t is None:
            t_s, owned = u, False
        elif u is None:
            t_s, owned = torch.matmul(t, w.t()), True
        else:
            t_s = torch.addmm(u.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1]), w.t())
            t_s, owned = t_s.view(u.shape), True
        t = None  # the previous layer's tangents are no longer needed: free them now
        if weight_tangents is not None:
            v_w = weight_tangents.get(f"{site.index}.weight")
            if v_w is not None:
                # V_W x for every tangent: (B, d_in) x (k, d_in, d_out) -> (k, B, d_out)
                term = torch.matmul(h, v_w.transpose(1, 2))
                t_s, owned = _accumulate(t_s, owned, term)
            v_b = weight_tangents.get(f"{site.index}.bias")
            if v_b is not None:
                term = v_b.unsqueeze(1).expand(k, s.shape[0], -1)
                t_s, owned = _accumulate(t_s, owned, term)
        if keep_inputs:
            result_inputs.append(h)
        if keep_tangents:
            result_tangents.append(u)
        if site.elementwise_followers:
            h = out
            if t_s is None:
                t = None
            else:
                t = t_s.mul_(act_grad) if owned else act_grad * t_s
        else:
            h, t = _generic_chain(site.followers, s, t_s)
        # Drop this site's temporaries before the next site allocates its own, so at most one
        # site's worth is alive (this is what keeps low-memory mode flat in depth).
        s = t_s = out = act_grad = u = ctx = None
    losses, jvps = loss_jvp(loss_fn, h, targets, t)
    if jvps is None:
        jvps = torch.zeros(k, h.shape[0], dtype=h.dtype, device=h.device)
    return ForwardResult(
        outputs=h, losses=losses, jvps=jvps, inputs=result_inputs, tangents=result_tangents
    )
