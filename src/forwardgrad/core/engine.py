"""The general forward-mode engine: any ``nn.Module``, its own ``forward``, k tangents at once.

One pass runs the model's own ``forward`` (so hooks, parametrizations, shared modules and
subclasses behave exactly as they do in training) inside ``torch.func.jvp``, vectorised over
the k tangents with ``torch.func.vmap``:

* a forward hook on every site injects the site's activity tangent with
  ``forward_ad.make_dual``: ``t_out <- t_out + u_j``. The hook runs once for all k tangents
  (vmap traces the function once), sees the *primal* output, asks the guess for all k tangents
  ``u (k, ...)`` and hands vmap its slice j without a copy. The primal is therefore computed
  once however many tangents there are, and structured guesses are computed once too;
* the per-example losses' JVPs come out as ``(k, B)``;
* no autograd graph is built (the estimator runs this under ``torch.no_grad()``; tangents still
  flow, see pytorch/pytorch#128600) and parameters enter as plain detached tensors;
* the layers that dominate a pass (linear, convolutions, group and layer norm) use lean JVP
  formulas that skip the parameters' zero tangents (``core/jvp_rules.py``);
* fused attention kernels have no forward-mode formula, so every pass runs with
  ``scaled_dot_product_attention`` routed to its math kernel and ``nn.MultiheadAttention``'s
  fast path off;
* dropout draws one mask per pass (vmap's ``randomness="same"``), shared by all k tangents.

Weight-space tangents go in through ``torch.func.functional_call`` on the trainable
parameters (:func:`weight_jvps`); frozen parameters are never perturbed.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import functional_call, jvp, vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from .context import ForwardResult, LossFn, SiteCall, SiteContext, SiteTangentFn, per_example_losses
from .jvp_rules import LeanForwardAD
from .layers import has_local_losses, local_scores, objective, reported
from .rules import LOCAL_VJP, split_activity
from .sites import ModelNotSupportedError, Site
from .state import get_random_state

try:  # zero-copy view of an unbatched (k, ...) tensor as vmap's batched slice
    from torch._C import _functorch as _ft

    _ft_api = (_ft._add_batch_dim, _ft._wrap_for_grad, _ft.current_level, _ft.get_unwrapped)
except (ImportError, AttributeError):  # pragma: no cover - other torch: fall back to indexing
    _ft = None

OnCall = Callable[[SiteCall, SiteContext, "Tensor | None"], None]
"""Called once per site call, right after the guess drew its tangents (low-memory mode)."""


@dataclass(frozen=True)
class LayoutCall:
    """One site call as the trace saw it: who, and the activity's shape per example."""

    site: str
    key: str
    shape: tuple[int, ...]

    @property
    def width(self) -> int:
        return int(torch.Size(self.shape).numel())


class Layout:
    """The site calls of one forward pass, in order (what isotropic block samplers span)."""

    def __init__(self, calls: list[LayoutCall]) -> None:
        self.calls = calls

    def __len__(self) -> int:
        return len(self.calls)

    @property
    def widths(self) -> list[int]:
        return [c.width for c in self.calls]

    @property
    def keys(self) -> list[str]:
        return [c.key for c in self.calls]


@contextmanager
def forward_mode_kernels():
    """Route attention to kernels that have forward-mode formulas, for the duration."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)


def _primal(t):
    return fwAD.unpack_dual(t).primal if isinstance(t, Tensor) else t


def _batched_slice(u: Tensor, j: Tensor | None) -> Tensor:
    """Tangent j of ``u (k, ...)`` inside vmap (a zero-copy batched view), or u[0] outside."""
    if j is None:
        return u[0]
    if _ft is not None:
        # u was made inside the jvp, so it is wrapped for that level; its plain value is
        # batched at vmap's level and lifted back to the jvp level, as vmap's own inputs are.
        base = u
        while _ft.is_gradtrackingtensor(base):
            base = _ft.get_unwrapped(base)
        if not _ft.is_functorch_wrapped_tensor(base):
            batched = _ft._add_batch_dim(base, 0, _ft.maybe_get_level(j))
            return _ft._wrap_for_grad(batched, _ft.current_level())
    return u[j]


def _activity_of(site: Site, leaves: list, batch: int):
    """Where a site's output holds its activity (the floating-point tensors), the activity
    itself ``(B, ...)`` (several tensors flattened and concatenated) and their shapes."""
    positions = [i for i, t in enumerate(leaves) if isinstance(t, Tensor) and t.is_floating_point()]
    name = f"site {site.name!r} ({type(site.module).__name__})"
    if not positions:
        raise ModelNotSupportedError(
            f"{name} returns no floating-point tensor to perturb; choose other sites"
        )
    primals = [_primal(leaves[i]) for i in positions]
    if any(p.dim() == 0 or p.shape[0] != batch for p in primals):
        raise ModelNotSupportedError(
            f"{name} returns a tensor whose first dimension is not the batch ({batch}): "
            f"{[tuple(p.shape) for p in primals]}; per-example tangents need batch-first "
            "activities"
        )
    if len(primals) == 1:
        return positions, primals[0], [primals[0].shape]
    activity = torch.cat([p.reshape(batch, -1) for p in primals], 1)
    return positions, activity, [p.shape for p in primals]


def _inject(leaves: list, positions: list[int], parts: list[Tensor], in_place: bool) -> None:
    """Add each tangent part to its output leaf's tangent: ``t_out <- t_out + u``."""
    for i, part in zip(positions, parts):
        primal, tangent = fwAD.unpack_dual(leaves[i])
        if tangent is not None:
            part = part.add_(tangent) if in_place else tangent + part
        leaves[i] = fwAD.make_dual(primal, part)


def _first_tensor(args: tuple) -> Tensor | None:
    return next((a for a in args if isinstance(a, Tensor)), None)


class GeneralEngine:
    """Forward-mode passes over any model with tangents injected at ``sites``.

    Args:
        model: the model (its ``forward`` is run as is).
        sites: the sites (see :func:`forwardgrad.core.trace.trace_sites`).
        layout: the site calls of one pass, as traced.
    """

    def __init__(
        self,
        model: nn.Module,
        sites: list[Site],
        layout: Layout,
        paths: list | None = None,
        reach: list[frozenset[int]] | None = None,
        losses: int = 1,
    ) -> None:
        self.model = model
        self.sites = sites
        self.layout = layout
        self.plan = None  # the fused Linear chain's; this engine has none
        # per site call: its NextPath to the next linear layer, why it has none, or None
        self.paths = paths if paths is not None else ["the model was not traced"] * len(layout)
        # local losses: per site call, the losses it reaches (None: the model has none)
        self.reach = reach
        self.losses = losses
        self._site_of = {id(s.module): s for s in sites}
        self._suspended = 0

    @contextmanager
    def suspended(self):
        """Hooks pass everything through (for local VJPs re-running a site's module)."""
        self._suspended += 1
        try:
            yield
        finally:
            self._suspended -= 1

    # ------------------------------------------------------------------ hooks

    def _install(self, state: dict) -> list:
        handles = []
        stacks: dict[int, list] = {}
        device = state["device"]

        def pre(module: nn.Module, args: tuple, kwargs: dict) -> None:
            if self._suspended:
                return None
            site = self._site_of[id(module)]
            saved_args = tuple(_primal(a) for a in args)
            saved_kwargs = {n: _primal(v) for n, v in kwargs.items()}
            versions = tuple(a._version for a in saved_args if isinstance(a, Tensor))
            rng = get_random_state(device) if site.rule is LOCAL_VJP else None
            stacks.setdefault(id(module), []).append((saved_args, saved_kwargs, versions, rng))
            return None

        def post(module: nn.Module, args: tuple, kwargs: dict, output):
            if self._suspended:
                return None
            return self._at_site(module, output, stacks[id(module)].pop(), state)

        for site in self.sites:
            handles.append(
                site.module.register_forward_pre_hook(pre, prepend=True, with_kwargs=True)
            )
            handles.append(site.module.register_forward_hook(post, with_kwargs=True))
        return handles

    def _at_site(self, module: nn.Module, output, entry: tuple, state: dict):
        """One site call: read its activity, draw its tangents, record the call, inject."""
        site = self._site_of[id(module)]
        saved_args, saved_kwargs, versions, rng = entry
        calls: list[SiteCall] = state["calls"]
        n = state["counts"].get(site.name, 0)
        state["counts"][site.name] = n + 1
        key = site.name if n == 0 else f"{site.name}#{n}"
        index = len(calls)
        leaves, spec = tree_flatten(output)
        positions, activity, shapes = _activity_of(site, leaves, state["batch"])
        mask, after = self._mask_fns(site, activity)
        ctx = SiteContext(
            site,
            index,
            activity,
            key=key,
            inputs=_first_tensor(saved_args),
            act_grad=mask,
            outputs=after,
            targets=state["targets"],
            loss_fn=state["loss_fn"],
            is_last=index == len(self.layout) - 1,
            path=self.paths[index] if index < len(self.paths) else None,
        )
        fn: SiteTangentFn | None = state["site_tangents"]
        with self.suspended():  # a guess may run the route's modules (a norm that is a site)
            u = fn(ctx) if fn is not None else None
        k = state["k"]
        if u is not None and (u.shape != (k, *activity.shape) or u.dtype != activity.dtype):
            raise ValueError(
                f"site {site.name!r}: tangents must be {activity.dtype} of shape "
                f"{(k, *activity.shape)}; got {u.dtype} {tuple(u.shape)}"
            )
        call = SiteCall(
            site, index, key, activity.shape, saved_args, saved_kwargs, u, versions, rng
        )
        on_call: OnCall | None = state["on_call"]
        if on_call is not None:
            with self.suspended():
                on_call(call, ctx, u)
        if not state["keep_inputs"]:
            call.args = call.kwargs = None
        if not state["keep_tangents"]:
            call.tangent = None
        calls.append(call)
        if u is None or not state["tangent_mode"]:
            return None
        parts = split_activity(_batched_slice(u, state["j"]), shapes)
        # Tangents handed to the engine are its own: when the pass keeps none, the incoming
        # tangent is added into u in place, one activation-sized buffer fewer per site.
        _inject(leaves, positions, parts, in_place=not state["keep_tangents"])
        return tree_unflatten(leaves, spec)

    @staticmethod
    def _mask_fns(site: Site, activity: Tensor):
        """``phi'(s)`` and ``phi(s)`` of the site's mask module, each computed on first use
        (together), or (None, None) when it has none."""
        if site.mask_module is None:
            return None, None
        both: list = []

        def pair():
            if not both:
                from .chain import elementwise_derivative

                both.extend(elementwise_derivative([site.mask_module], activity))
            return both

        return (lambda: pair()[1]), (lambda: pair()[0])

    # ------------------------------------------------------------------ passes

    def run(
        self,
        x: Tensor,
        targets: Tensor,
        loss_fn: LossFn,
        num_tangents: int,
        site_tangents: SiteTangentFn | None = None,
        keep_inputs: bool = True,
        keep_tangents: bool = True,
        on_call: OnCall | None = None,
        tangent_mode: bool = True,
    ) -> ForwardResult:
        """One pass over a batch.

        With ``tangent_mode`` the site tangents are injected and pushed through (``jvps``
        ``(k, B)``); without it the pass is primal only (tangents may still be drawn, e.g. for
        the low-memory mode's second pass, which hands them to ``on_call``). ``keep_inputs`` /
        ``keep_tangents`` keep each call's inputs and tangents in the result (off: only the
        current site's are alive at any time, so memory does not grow with depth).
        """
        k = num_tangents
        state = {
            "calls": [],
            "counts": {},
            "batch": targets.shape[0],
            "targets": targets,
            "loss_fn": loss_fn,
            "site_tangents": site_tangents,
            "k": k,
            "keep_inputs": keep_inputs,
            "keep_tangents": keep_tangents,
            "on_call": on_call,
            "tangent_mode": tangent_mode and site_tangents is not None,
            "j": None,
            "device": _device_of(x, self.model),
        }
        handles = self._install(state)
        local = local_scores(self.model) if self.reach is not None else nullcontext([])
        try:
            with forward_mode_kernels(), local as scores:
                state["scores"] = scores
                if not state["tangent_mode"]:
                    outputs = self.model(x)
                    losses = self._losses(loss_fn, outputs, targets, scores)
                    jvps = torch.zeros(k, *losses.shape, dtype=losses.dtype, device=x.device)
                else:
                    losses, jvps, outputs = self._tangent_pass(x, targets, loss_fn, k, state)
        finally:
            for h in handles:
                h.remove()
        calls = state["calls"]
        if len(calls) != len(self.layout):
            raise ModelNotSupportedError(
                f"the model called its sites {len(calls)} times in this pass but "
                f"{len(self.layout)} times when traced; the engine needs the same sites called "
                "in the same order for every batch of the same shape"
            )
        if self.reach is None:
            return ForwardResult(outputs=outputs, losses=losses, jvps=jvps, calls=calls)
        return ForwardResult(
            outputs=outputs,
            losses=reported(losses),
            jvps=jvps.sum(-1),
            calls=calls,
            loss_jvps=jvps,
            reach=self.reach,
        )

    def _losses(self, loss_fn: LossFn, outputs, targets: Tensor, scores: list) -> Tensor:
        """``(B,)``, or with local losses ``(B, 1 + L)`` (the output's, then each local one)."""
        if self.reach is None:
            return per_example_losses(loss_fn, outputs, targets)
        if len(scores) != self.losses - 1:
            raise ModelNotSupportedError(
                f"the model called its LocalLoss modules {len(scores)} times in this pass but "
                f"{self.losses - 1} times when traced; the engine needs the same local losses "
                "in every pass"
            )
        return objective(loss_fn, outputs, targets, scores)

    def _tangent_pass(self, x, targets, loss_fn, k: int, state: dict):
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        zero = torch.zeros((), dtype=dtype, device=x.device)
        scores = state["scores"]

        def one(j: Tensor | None):
            state["j"] = j

            def run(_: Tensor):
                scores.clear()
                out = self.model(x)
                return self._losses(loss_fn, out, targets, scores), out

            losses, jvps, out = jvp(run, (zero,), (zero,), has_aux=True)
            return losses, jvps, out

        with LeanForwardAD():
            if k == 1:
                losses, jvps, out = one(None)
                return losses, jvps.unsqueeze(0), out
            index = torch.arange(k, device=x.device)
            return vmap(one, out_dims=(None, 0, None), randomness="same")(index)


def _device_of(x: Tensor, model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else x.device


def weight_jvps(
    model: nn.Module,
    params: dict[str, Tensor],
    tangents: dict[str, Tensor],
    x: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
) -> tuple[Tensor, Tensor]:
    """JVPs ``(k, B)`` of the per-example losses along weight-space tangents, and the losses.

    With local losses the JVPs are those of each example's whole objective (its output's loss
    plus every local loss), and the losses reported are the output's.

    ``params`` are the trainable parameters by name, ``tangents`` theirs ``(k, *shape)``; the
    other parameters and buffers are the model's own.
    """
    primals = {n: p.detach() for n, p in params.items()}
    k = next(iter(tangents.values())).shape[0]
    local = has_local_losses(model)

    def run(ps: dict):
        with local_scores(model) if local else nullcontext([]) as scores:
            out = functional_call(model, ps, (x,))
        if not local:
            losses = per_example_losses(loss_fn, out, targets)
            return losses, losses
        # local losses: the JVP of their sum with the output's (one directional derivative)
        full = objective(loss_fn, out, targets, scores)
        return full.sum(1), reported(full)

    with forward_mode_kernels():
        if k == 1:
            _, d, losses = jvp(
                run, (primals,), ({n: v[0] for n, v in tangents.items()},), has_aux=True
            )
            return d.unsqueeze(0), losses

        def one(v: dict):
            _, d, losses = jvp(run, (primals,), (v,), has_aux=True)
            return d, losses

        return vmap(one, out_dims=(0, None), randomness="same")(tangents)


class FunctionalEngine:
    """Weight-space passes only, over any model (no sites)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.sites: list[Site] = []
        self.layout = Layout([])
        self.plan = None
        self.paths: list = []

    def weight_jvps(self, params, tangents, x, targets, loss_fn) -> tuple[Tensor, Tensor]:
        return weight_jvps(self.model, params, tangents, x, targets, loss_fn)
