"""The public entry point: a guess, the engine and an aggregation, filling ``param.grad``.

>>> est = Estimator(model, guess="wperp", rank=10, tangents=4, aggregate="projection")
>>> loss = est.step(x, y)          # fills .grad with no backward pass
>>> optimizer.step(); optimizer.zero_grad()

Activity-space guesses estimate ``dl_b/ds_i`` per example as the aggregation of ``d_jb u_ij^b``
and turn it into weight estimates by the local outer products
``g_W_i = mean_b g_s_i^b (x_i^b)^T``, ``g_b_i = mean_b g_s_i^b`` (no backward pass). Weight-space
guesses aggregate the JVPs of the mean loss ``d_j = mean_b d_jb`` with the parameter tangents.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .aggregate import (
    AGGREGATIONS,
    aggregate,
    aggregate_sum,
    projection_coefficients,
    tangent_gram,
)
from .guesses import GuessOptions, make_guess
from .jvp import LossFn, SiteContext, forward_jvp
from .sites import find_sites

SCOPES = ("global", "site")
JVP_SCOPES = ("global", "site")


def cross_entropy_per_example(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy, the default loss."""
    return F.cross_entropy(outputs, targets, reduction="none")


LayerSink = Callable[[nn.Linear, Tensor, Tensor], None]
"""``sink(layer, g (B, d_out), inputs (B, d_in))`` turns one layer's per-example estimates of
``dl_b/ds`` into its weight and bias gradients (the mean over the batch)."""


def _collect_into(grads: dict[nn.Parameter, Tensor]) -> LayerSink:
    """A sink that stores each trained parameter's gradient in ``grads``."""

    def sink(layer: nn.Linear, g: Tensor, inputs: Tensor) -> None:
        if layer.weight.requires_grad:
            grads[layer.weight] = (g.t() @ inputs).div_(g.shape[0])
        if layer.bias is not None and layer.bias.requires_grad:
            grads[layer.bias] = g.mean(0)

    return sink


def _accumulate_into_grad(layer: nn.Linear, g: Tensor, inputs: Tensor) -> None:
    """A sink that adds each trained parameter's gradient to its ``.grad`` (as ``backward``
    does), fused into one ``addmm_`` per weight: no gradient-sized temporary."""
    batch = g.shape[0]
    w, b = layer.weight, layer.bias
    if w.requires_grad:
        if w.grad is None:
            w.grad = (g.t() @ inputs).div_(batch)
        else:
            w.grad.addmm_(g.t(), inputs, alpha=1.0 / batch)
    if b is not None and b.requires_grad:
        if b.grad is None:
            b.grad = g.mean(0)
        else:
            b.grad.add_(g.sum(0), alpha=1.0 / batch)


class Estimator:
    """Gradient estimator for an ``nn.Sequential`` of linear layers and activations.

    Args:
        model: the model; its parameters are read, never modified.
        guess: a name from :data:`forwardgrad.guesses.GUESSES` (``backprop`` is the oracle).
        tangents: k, the number of tangents per step.
        aggregate: ``sum``, ``mean`` or ``projection``.
        scope: ``global`` (aggregate over all sites at once) or ``site`` (each site on its own,
            with the global JVPs).
        jvp: ``global`` (one directional derivative along all sites' tangents at once, the
            forward gradient) or ``site`` (each site's tangents scaled by their own directional
            derivative ``g_i . u_i``: one pass per site, activity guesses with sum or mean only).
        loss_fn: per-example loss ``(outputs, targets) -> (B,)``; cross-entropy by default.
        seed: seed of the tangent generator.
        chunk_size: push at most this many tangents through the network at once, bounding
            tangent memory at the cost of one primal pass per chunk (None: all k at once).
            With ``sum`` and ``mean`` each chunk is folded into the estimate and dropped;
            ``projection`` needs every tangent at once and keeps them all.
        low_memory: activity-space guesses only. Keep no site's inputs or tangents: a first
            pass computes the JVPs (and, for projection, the Gram matrices of the tangents,
            accumulated site by site); a second primal pass regenerates each site's tangents from
            the same random state and turns them into that layer's gradient at once. Peak memory
            then does not grow with depth, for the cost of one more primal pass and a second
            draw of the tangents.
        **guess_options: fields of :class:`~forwardgrad.guesses.GuessOptions` (rank, solver,
            bottom, sigma, layers, sampler, normalize, angle, max_length, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        guess: str = "activation",
        *,
        tangents: int = 1,
        aggregate: str = "mean",
        scope: str = "global",
        jvp: str = "global",
        loss_fn: LossFn | None = None,
        seed: int = 0,
        chunk_size: int | None = None,
        low_memory: bool = False,
        **guess_options: object,
    ) -> None:
        known = {f.name for f in dataclasses.fields(GuessOptions)}
        unknown = sorted(set(guess_options) - known)
        if unknown:
            raise ValueError(f"unknown guess options {unknown}; known options are {sorted(known)}")
        if not isinstance(tangents, int) or tangents < 1:
            raise ValueError(f"tangents must be a positive integer; got {tangents!r}")
        if aggregate not in AGGREGATIONS:
            raise ValueError(
                f"unknown aggregation {aggregate!r}; choose one of {sorted(AGGREGATIONS)}"
            )
        if scope not in SCOPES:
            raise ValueError(f"unknown projection scope {scope!r}; choose one of {list(SCOPES)}")
        if jvp not in JVP_SCOPES:
            raise ValueError(f"unknown jvp scope {jvp!r}; choose one of {list(JVP_SCOPES)}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size}")
        self.model = model
        self.plan = find_sites(model)
        self.guess_name = guess
        self.guess = make_guess(guess, GuessOptions(**guess_options))  # type: ignore[arg-type]
        self.guess.bind(self.plan)
        self.num_tangents = tangents
        self.aggregation = aggregate
        self.scope = scope
        self.loss_fn: LossFn = loss_fn or cross_entropy_per_example
        self.chunk_size = chunk_size
        self.low_memory = bool(low_memory)
        if self.low_memory:
            self._check_low_memory()
        self.jvp_scope = jvp
        if jvp == "site":
            self._check_site_jvp()
        device = self.plan.sites[0].weight.device
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self._site_generator = torch.Generator(device=device)

    # ------------------------------------------------------------------ public API

    def estimate(
        self, x: Tensor, targets: Tensor, loss_fn: LossFn | None = None
    ) -> tuple[Tensor, dict[nn.Parameter, Tensor]]:
        """Mean loss of the batch and the gradient estimate of every trained parameter.

        Parameters are not modified and ``.grad`` is not touched.
        """
        loss_fn = loss_fn or self.loss_fn
        self._check_batch(x, targets)
        if self.guess.space == "exact":
            return self._backprop(x, targets, loss_fn)
        with torch.no_grad():
            if self.guess.space == "weight":
                return self._weight_space(x, targets, loss_fn)
            grads: dict[nn.Parameter, Tensor] = {}
            if self.low_memory:
                loss = self._low_memory(x, targets, loss_fn, _collect_into(grads))
            else:
                loss = self._activity_space(x, targets, loss_fn, _collect_into(grads))
            return loss, grads

    def step(self, x: Tensor, targets: Tensor, loss_fn: LossFn | None = None) -> Tensor:
        """Estimate the gradient and accumulate it into ``.grad`` (as ``backward`` would).

        Returns the batch's mean loss (a detached scalar tensor).
        """
        if self.guess.space == "activity":
            # Layer by layer straight into .grad: no dict of all gradients is held at once.
            self._check_batch(x, targets)
            loss_fn = loss_fn or self.loss_fn
            with torch.no_grad():
                if self.low_memory:
                    return self._low_memory(x, targets, loss_fn, _accumulate_into_grad)
                return self._activity_space(x, targets, loss_fn, _accumulate_into_grad)
        loss, grads = self.estimate(x, targets, loss_fn)
        for p, g in grads.items():
            if p.grad is None:
                p.grad = g.detach().clone()
            else:
                p.grad.add_(g)
        return loss

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "guess": self.guess.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.guess.load_state_dict(state.get("guess", {}))

    # ------------------------------------------------------------------ internals

    def _check_batch(self, x: Tensor, targets: Tensor) -> None:
        if x.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets disagree on the batch size: {x.shape[0]} vs {targets.shape[0]}"
            )
        first = self.plan.sites[0]
        if not self.plan.prefix and (x.dim() != 2 or x.shape[1] != first.in_features):
            raise ValueError(
                f"inputs of shape {tuple(x.shape)} do not fit the first linear layer, which "
                f"expects (batch, {first.in_features})"
            )

    def _site_by_site_problem(self) -> str | None:
        """Why this guess's tangents cannot be drawn one site at a time, or None."""
        if self.guess.space != "activity":
            return f"guess {self.guess_name!r} is not an activity-space guess"
        if getattr(self.guess, "draws_per_site", True) is False:
            return (
                f"sampler {self.guess.options.sampler!r} with normalize="
                f"{self.guess.options.normalize} couples the tangents of all sites, so they "
                "cannot be drawn site by site; use sampler normal or rademacher, unnormalised"
            )
        return None

    def _check_low_memory(self) -> None:
        problem = self._site_by_site_problem()
        if problem is None and self.chunk_size is not None:
            problem = "chunk_size and low_memory do not combine (each bounds memory its own way)"
        if problem:
            raise ValueError(f"low_memory needs tangents drawn site by site: {problem}")

    def _check_site_jvp(self) -> None:
        problem = self._site_by_site_problem()
        if problem is None and self.aggregation == "projection":
            problem = "projection needs every tangent's global JVP; use sum or mean"
        if problem is None and self.low_memory:
            problem = "low_memory does not combine with it"
        if problem:
            raise ValueError(f"jvp='site' (one pass per site): {problem}")

    def _projection_coefficients(self, grams: list[Tensor], d: Tensor) -> list[Tensor]:
        """Per-site coefficients ``c (k, B)`` of the projection ``g_i = sum_j c_j u_ij``.

        The Gram matrices come per site, formed in the tangents' precision (see
        :func:`~forwardgrad.aggregate.tangent_gram`); scope ``global`` projects onto the span
        of the tangents over all sites at once (one coefficient vector for every site).
        """
        widths = self.plan.widths
        eps = torch.finfo(d.dtype).eps
        if self.scope == "global":
            coef = projection_coefficients(sum(grams), d, sum(widths), eps).to(d.dtype)
            return [coef] * len(grams)
        return [projection_coefficients(g, d, w, eps).to(d.dtype) for g, w in zip(grams, widths)]

    def _site_draws(self, k: int):
        """Per-step tangent drawing from one seed, re-seeded at every site.

        Each site's tangents depend only on the step's seed and the site, so the low-memory
        mode can draw them a second time, identical, and both modes give the same estimate.
        Returns ``begin(batch_size)`` (call before each pass) and ``draw(ctx)``.
        """
        step_seed = int(torch.randint(2**62, (1,), generator=self.generator))
        site_generator = self._site_generator

        def begin(batch_size: int) -> None:
            site_generator.manual_seed(step_seed)
            self.guess.begin_step(self.plan, batch_size, k, site_generator)

        def draw(ctx: SiteContext) -> Tensor | None:
            site_generator.manual_seed(step_seed + 7919 * (ctx.index + 1))
            return self.guess.site_tangents(ctx, k, site_generator)

        return begin, draw

    def _low_memory(self, x: Tensor, targets: Tensor, loss_fn: LossFn, sink: LayerSink) -> Tensor:
        """Two passes, each site's tangents drawn twice from the same seed; see ``low_memory``.

        ``sink`` receives each layer's estimates as soon as they are known.
        """
        k, batch = self.num_tangents, x.shape[0]
        begin, draw = self._site_draws(k)
        guess_state = copy.deepcopy(self.guess.state_dict())
        projection = self.aggregation == "projection"
        grams: list[Tensor] = []  # per site (B, k, k); small, independent of width

        def first_pass(ctx: SiteContext) -> Tensor | None:
            u = draw(ctx)
            if u is not None and projection:
                grams.append(tangent_gram(u, None))
            return u

        begin(batch)
        res = forward_jvp(
            self.plan,
            x,
            targets,
            loss_fn,
            k,
            site_tangents=first_pass,
            keep_inputs=False,
            keep_tangents=False,
        )
        d = res.jvps  # (k, B)
        if projection:
            coefs = self._projection_coefficients(grams, d)
        else:
            coefs = [d / k if self.aggregation == "mean" else d] * len(self.plan)
        grams.clear()

        def second_pass(ctx: SiteContext) -> None:
            u = draw(ctx)
            if u is None:
                return None
            sink(ctx.site.module, aggregate_sum(u, coefs[ctx.index]), ctx.inputs)
            return None  # nothing is pushed forward: this pass is primal only

        self.guess.load_state_dict(guess_state)
        begin(batch)
        forward_jvp(
            self.plan,
            x,
            targets,
            loss_fn,
            k,
            site_tangents=second_pass,
            keep_inputs=False,
            keep_tangents=False,
        )
        return res.losses.mean()

    def _chunks(self) -> list[int]:
        k, c = self.num_tangents, self.chunk_size or self.num_tangents
        return [min(c, k - start) for start in range(0, k, c)]

    def estimate_activity(
        self, x: Tensor, targets: Tensor, loss_fn: LossFn | None = None
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Per-example estimates of ``dl_b/ds_i`` for an activity-space guess.

        Returns the mean loss, the estimates ``(B, d_i)`` per site and the site inputs
        ``x_i (B, d_in)``. Diagnostics compare these with the true per-example gradients.
        """
        if self.guess.space != "activity":
            raise ValueError(f"guess {self.guess_name!r} is not an activity-space guess")
        self._check_batch(x, targets)
        with torch.no_grad():
            return self._activity_estimates(x, targets, loss_fn or self.loss_fn)

    def _activity_estimates(self, x: Tensor, targets: Tensor, loss_fn: LossFn):
        projection = self.aggregation == "projection"
        jvps, site_tangents, inputs, loss = [], [], None, None
        sums: list[Tensor] | None = None  # sum and mean: running sum_j d_j u_j per site
        for k in self._chunks():
            begin, draw = self._site_draws(k)
            if self.jvp_scope == "site":
                part, inputs, loss = self._site_jvp_estimates(x, targets, loss_fn, k, begin, draw)
                sums = part if sums is None else [t.add_(p) for t, p in zip(sums, part)]
                continue
            begin(x.shape[0])
            res = forward_jvp(self.plan, x, targets, loss_fn, k, site_tangents=draw)
            inputs, loss = res.inputs, res.losses.mean()
            if projection:  # its coefficients need every tangent's JVP and Gram at once
                jvps.append(res.jvps)
                site_tangents.append(res.tangents)
                continue
            # Fold each chunk in and drop its tangents: memory stays at one chunk's worth.
            part = [aggregate_sum(u, res.jvps) for u in res.tangents]
            sums = part if sums is None else [t.add_(p) for t, p in zip(sums, part)]
        if not projection:
            assert sums is not None
            if self.aggregation == "mean" and self.num_tangents > 1:
                sums = [t.div_(self.num_tangents) for t in sums]
            return loss, sums, inputs
        if len(jvps) == 1:  # one chunk: no concatenation copies
            d, per_site = jvps[0], site_tangents[0]
        else:
            d = torch.cat(jvps, 0)  # (k, B)
            per_site = [torch.cat([t[i] for t in site_tangents], 0) for i in range(len(self.plan))]
        coefs = self._projection_coefficients([tangent_gram(u, None) for u in per_site], d)
        return loss, [aggregate_sum(u, c) for u, c in zip(per_site, coefs)], inputs

    def _site_jvp_estimates(self, x, targets, loss_fn, k, begin, draw):
        """``sum_j (g_i . u_ij) u_ij`` per site, each from a pass with tangents at site i only
        (the same tangents as a global pass would draw: each site re-seeds its own draw)."""
        part = []
        for i in range(len(self.plan)):
            begin(x.shape[0])

            def only_here(ctx: SiteContext, i: int = i) -> Tensor | None:
                return draw(ctx) if ctx.index == i else None

            res = forward_jvp(self.plan, x, targets, loss_fn, k, site_tangents=only_here)
            u = res.tangents[i]
            assert u is not None
            part.append(aggregate_sum(u, res.jvps))
        return part, res.inputs, res.losses.mean()

    def _activity_space(
        self, x: Tensor, targets: Tensor, loss_fn: LossFn, sink: LayerSink
    ) -> Tensor:
        loss, g_sites, inputs = self._activity_estimates(x, targets, loss_fn)
        for site, g, h in zip(self.plan.sites, g_sites, inputs):
            sink(site.module, g, h)
        return loss

    def _weight_space(self, x: Tensor, targets: Tensor, loss_fn: LossFn):
        gen = self.generator
        names = [n for n, _ in self.plan.parameters()]
        params = dict(self.plan.parameters())
        tangents: dict[str, list[Tensor]] = {n: [] for n in names}
        jvps, loss = [], None
        for k in self._chunks():
            v = self.guess.weight_tangents(self.plan, k, gen)
            res = forward_jvp(
                self.plan, x, targets, loss_fn, k, weight_tangents=v, keep_inputs=False
            )
            jvps.append(res.jvps.mean(1))  # JVP of the mean loss, (k,)
            for n in names:
                tangents[n].append(v[n])
            loss = res.losses.mean()
        d = torch.cat(jvps, 0)
        v_all = {n: torch.cat(tangents[n], 0).flatten(1) for n in names}  # (k, numel)
        if self.scope == "global":
            sizes = [v_all[n].shape[1] for n in names]
            flat = aggregate(self.aggregation, torch.cat([v_all[n] for n in names], 1), d)
            pieces = dict(zip(names, flat.split(sizes)))
        else:  # per site: weight and bias of one layer together
            pieces = {}
            for site in self.plan.sites:
                site_names = [n for n in names if n.split(".")[0] == str(site.index)]
                sizes = [v_all[n].shape[1] for n in site_names]
                flat = aggregate(self.aggregation, torch.cat([v_all[n] for n in site_names], 1), d)
                pieces.update(zip(site_names, flat.split(sizes)))
        grads = {params[n]: pieces[n].reshape(params[n].shape) for n in names}
        return loss, self._trained_only(grads)

    def _backprop(self, x: Tensor, targets: Tensor, loss_fn: LossFn):
        params = [p for _, p in self.plan.parameters() if p.requires_grad]
        with torch.enable_grad():
            loss = loss_fn(self.model(x), targets).mean()
            grads = torch.autograd.grad(loss, params)
        return loss.detach(), dict(zip(params, grads))

    @staticmethod
    def _trained_only(grads: dict[nn.Parameter, Tensor]) -> dict[nn.Parameter, Tensor]:
        return {p: g for p, g in grads.items() if p.requires_grad}
