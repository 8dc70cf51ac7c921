"""How an activity-space estimate is computed: which passes, and what each keeps.

Every strategy turns the engine's JVPs and the guess's tangents into per-example estimates of
``dl_b/ds`` for every site call and hands each to ``emit(call, estimate)`` as soon as it is known
(the estimator then applies the call's gradient rule, or keeps the estimate for diagnostics):

* :class:`OnePass` (default; with ``chunk_size`` the tangents go ``c`` at a time, one pass per
  chunk, each folded in and dropped for sum/mean);
* :class:`LowMemory`: a first pass keeps nothing but the JVPs (and, for projection, the k x k
  Gram matrices); a second, primal-only pass redraws every site's tangents from the same seed
  and emits its estimate at once, so memory stays one site deep;
* :class:`PerSiteJVP` (``jvp="site"``): one pass per site call, each site's tangents scaled by
  their own directional derivative ``g_i . u_i``.

With a :class:`TangentShare` (tangents split over processes), :class:`OnePass` draws all k
tangents at every call, exactly as one process would, pushes only this process's share through
the network, and forms the estimate from everyone's JVPs, which the share's ``gather`` brings.

How the JVPs become coefficients is shared (:func:`coefficients`): ``sum``, ``mean`` or the
projection onto the tangents' span, per example; in ``batch`` JVP mode from the directional
derivative of the whole batch's loss instead (unbiased for any model, BatchNorm in training
mode included, with the variance of one number per tangent for the whole batch).

Each strategy checks, at construction, that it can serve the estimator's settings.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .aggregate import aggregate_sum, projection_coefficients, projection_grams, tangent_gram
from .context import LossFn, SiteCall, SiteContext

Emit = Callable[[SiteCall, Tensor], None]
"""``emit(call, estimate (B, *activity_shape))``: per-example estimates of ``dl_b/ds``."""

JVP_MODES = ("global", "site", "batch")


def call_seed(step_seed: int, key: str) -> int:
    """The seed of one site call's tangents: derived from the step's seed and the call's name,
    so a site's random stream does not depend on which other sites exist."""
    digest = hashlib.blake2b(f"{step_seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class TangentShare:
    """The tangents ``[start, stop)`` of a step's k that this process pushes, and
    ``gather(jvps (stop - start, B)) -> (k, B)``, which brings the other processes' JVPs."""

    start: int
    stop: int
    gather: Callable[[Tensor], Tensor]


@dataclass
class StepSettings:
    """What the strategies need of the estimator for one step."""

    engine: object
    guess: object
    num_tangents: int
    aggregation: str
    scope: str
    jvp_mode: str
    chunk_size: int | None
    generator: torch.Generator
    site_generator: torch.Generator
    passes: Callable  # passes(run) -> result: runs one engine pass with the step's state
    share: TangentShare | None = None  # None: this process pushes all k tangents
    stream: int = 0  # which of several data shards' tangent streams (0: the one-process stream)

    def chunks(self) -> list[int]:
        k, c = self.num_tangents, self.chunk_size or self.num_tangents
        return [min(c, k - start) for start in range(0, k, c)]

    def draws(self, k: int):
        return site_draws(
            self.guess, self.engine.layout, self.generator, self.site_generator, k, self.stream
        )


def site_draws(
    guess,
    layout,
    generator: torch.Generator,
    site_generator: torch.Generator,
    k: int,
    stream: int = 0,
):
    """One step's tangent drawing: ``begin(batch)`` before each pass, ``draw(ctx)`` per call.

    A step seed is drawn from ``generator``; each call's tangents then depend only on it and on
    the call's name, so a second pass (low memory, another chunk's replay) draws them again,
    identical. ``stream`` n > 0 derives another step seed from it, for the n-th shard of a batch
    split over processes (whose examples need tangents independent of the other shards')."""
    step_seed = int(torch.randint(2**62, (1,), generator=generator))
    if stream:
        step_seed = call_seed(step_seed, f"data shard {stream}")

    def begin(batch_size: int) -> None:
        site_generator.manual_seed(step_seed)
        guess.begin_step(layout, batch_size, k, site_generator)

    def draw(ctx: SiteContext) -> Tensor | None:
        site_generator.manual_seed(call_seed(step_seed, ctx.key))
        return guess.site_tangents(ctx, k, site_generator)

    return begin, draw


def site_by_site_problem(guess) -> str | None:
    """Why this guess's tangents cannot be drawn one site at a time, or None."""
    if guess.space != "activity":
        return f"guess {guess.name!r} is not an activity-space guess"
    if getattr(guess, "draws_per_site", True) is False:
        return (
            f"sampler {guess.options.sampler!r} with normalize={guess.options.normalize} couples "
            "the tangents of all sites, so they cannot be drawn site by site; use sampler "
            "normal or rademacher, unnormalised"
        )
    return None


def choose_strategy(guess, aggregation: str, chunk_size, jvp_mode: str, low_memory: bool):
    """The strategy for these settings; raises ``ValueError`` naming what does not combine."""
    cls = LowMemory if low_memory else PerSiteJVP if jvp_mode == "site" else OnePass
    problem = cls.problem(guess, aggregation, chunk_size, jvp_mode)
    if problem:
        raise ValueError(problem)
    return cls()


def batch_jvps(jvps: Tensor) -> Tensor:
    """Batch mode: every example gets the JVP of the batch's summed loss, ``(k, B)``."""
    return jvps.sum(1, keepdim=True).expand_as(jvps)


def coefficients(
    settings: StepSettings,
    jvps: Tensor,
    grams: list[Tensor] | None,
    widths: list[int],
    total_k: int | None = None,
    reach: list[frozenset[int]] | None = None,
) -> list[Tensor]:
    """Per-call coefficients ``c (k, B)`` with estimate ``sum_j c_j u_j``.

    ``grams`` (projection only): per call ``(B, k, k)`` Gram matrices of the tangents, in
    float64. ``total_k``: the k that ``mean`` divides by when ``jvps`` is one chunk of it.
    ``reach`` (local losses): ``jvps`` is ``(k, B, 1 + L)``, one JVP per loss. A call's
    coefficients for sum and mean come from the JVP of the losses it reaches; a projection
    (global scope) is one per loss, onto the span of the tangents of every call reaching it,
    and a call adds those of the losses it reaches (so it is exact at full rank).
    """
    if reach is None:
        return _coefficients(settings, jvps, grams, widths, total_k)
    zero = torch.zeros_like(jvps[..., 0])
    if settings.aggregation != "projection" or settings.scope == "site":
        groups: dict[frozenset[int], list[int]] = {}
        for i, losses in enumerate(reach):
            groups.setdefault(losses, []).append(i)
        out: list[Tensor] = [zero] * len(reach)  # no loss reached: a zero gradient
        for losses, calls in groups.items():
            d = jvps[..., sorted(losses)].sum(-1)
            part = None if grams is None else [grams[i] for i in calls]
            coefs = _coefficients(settings, d, part, [widths[i] for i in calls], total_k)
            for i, c in zip(calls, coefs):
                out[i] = c
        return out
    assert grams is not None
    per_loss = {}
    for loss in sorted(set().union(*reach)):
        calls = [i for i, losses in enumerate(reach) if loss in losses]
        part, sizes = [grams[i] for i in calls], [widths[i] for i in calls]
        per_loss[loss] = _coefficients(settings, jvps[..., loss], part, sizes, total_k)[0]
    return [sum((per_loss[loss] for loss in losses), zero) for losses in reach]


def _coefficients(
    settings: StepSettings,
    jvps: Tensor,
    grams: list[Tensor] | None,
    widths: list[int],
    total_k: int | None = None,
) -> list[Tensor]:
    batch_mode = settings.jvp_mode == "batch"
    d = batch_jvps(jvps) if batch_mode else jvps
    k = d.shape[0]
    if settings.aggregation != "projection":
        total = total_k or k
        return [d / total if settings.aggregation == "mean" and total > 1 else d] * len(widths)
    assert grams is not None
    eps = torch.finfo(d.dtype).eps
    batch = jvps.shape[1]
    if batch_mode:  # project the batch loss's gradient onto the span of the whole batch's tangents
        grams = [g.sum(0, keepdim=True) for g in grams]
        d, batch_dims = d[:, :1], batch
    else:
        batch_dims = 1
    if settings.scope == "global":
        coef = projection_coefficients(sum(grams), d, sum(widths) * batch_dims, eps)
        out = [coef] * len(grams)
    else:
        out = [projection_coefficients(g, d, w * batch_dims, eps) for g, w in zip(grams, widths)]
    return [c.expand(k, batch) for c in out]


def estimate_of(u: Tensor, coef: Tensor) -> Tensor:
    """``sum_j coef_j u_j`` per example: ``u (k, B, *shape)``, ``coef (k, B)`` -> ``(B, ...)``."""
    k, b = u.shape[:2]
    return aggregate_sum(u.reshape(k, b, -1), coef.to(u.dtype)).reshape(u.shape[1:])


def _gram(u: Tensor) -> Tensor:
    return tangent_gram(u.reshape(*u.shape[:2], -1))


class Strategy:
    """Base: ``run`` emits every call's estimate and returns the batch's mean loss."""

    name = ""

    @classmethod
    def problem(cls, guess, aggregation: str, chunk_size: int | None, jvp_mode: str) -> str | None:
        """Why this strategy cannot serve these settings, or None."""
        return None

    def run(
        self, s: StepSettings, x: Tensor, targets: Tensor, loss_fn: LossFn, emit: Emit
    ) -> Tensor:
        raise NotImplementedError


class OnePass(Strategy):
    """All tangents (or ``chunk_size`` at a time) in one pass each, calls kept for the rules."""

    name = "one-pass"

    def run(self, s, x, targets, loss_fn, emit) -> Tensor:
        if s.share is not None:
            return self._shared(s, x, targets, loss_fn, emit)
        projection = s.aggregation == "projection"
        calls: list[SiteCall] | None = None
        sums: list[Tensor] | None = None  # sum and mean: running estimate per call
        kept_jvps, kept_tangents = [], []
        loss = reach = None
        for k in s.chunks():
            begin, draw = s.draws(k)
            begin(x.shape[0])
            res = s.passes(lambda k=k, draw=draw: s.engine.run(x, targets, loss_fn, k, draw))
            calls, loss, reach = res.calls, res.losses.mean(), res.reach
            if projection:  # its coefficients need every tangent's JVP and Gram at once
                kept_jvps.append(_jvps(res))
                kept_tangents.append([c.tangent for c in res.calls])
                continue
            widths = _widths([c.tangent for c in calls])
            coefs = coefficients(s, _jvps(res), None, widths, s.num_tangents, reach)
            part = [
                estimate_of(c.tangent, coef) if c.tangent is not None else None
                for c, coef in zip(calls, coefs)
            ]
            sums = part if sums is None else [_add(t, p) for t, p in zip(sums, part)]
        assert calls is not None and loss is not None
        if projection:
            d = kept_jvps[0] if len(kept_jvps) == 1 else torch.cat(kept_jvps, 0)
            per_call = [
                chunks[0] if len(chunks) == 1 else torch.cat(chunks, 0)
                for chunks in zip(*kept_tangents)
            ]
            sums = _projected(s, d, per_call, reach)
        for call, est in zip(calls, sums):
            if est is not None:
                emit(call, est)
        return loss

    @staticmethod
    def _shared(s, x, targets, loss_fn, emit) -> Tensor:
        """This process's share of the tangents through the network; everyone's JVPs back."""
        share = s.share
        begin, draw = s.draws(s.num_tangents)
        full: dict[int, Tensor] = {}  # every call's k tangents, as one process would draw them

        def own_share(ctx: SiteContext) -> Tensor | None:
            u = draw(ctx)
            if u is None:
                return None
            full[ctx.index] = u
            return u[share.start : share.stop]

        begin(x.shape[0])
        k_local = share.stop - share.start
        res = s.passes(lambda: s.engine.run(x, targets, loss_fn, k_local, own_share))
        if res.reach is not None:
            raise ValueError("local losses do not combine with tangents split over processes")
        d = share.gather(res.jvps)
        per_call = [full.get(call.index) for call in res.calls]
        if s.aggregation == "projection":
            estimates = _projected(s, d, per_call)
        else:
            coefs = coefficients(s, d, None, _widths(per_call))
            estimates = [None if u is None else estimate_of(u, c) for u, c in zip(per_call, coefs)]
        for call, est in zip(res.calls, estimates):
            if est is not None:
                emit(call, est)
        return res.losses.mean()


def _projected(
    s: StepSettings, d: Tensor, per_call: list[Tensor], reach: list[frozenset[int]] | None = None
) -> list[Tensor]:
    """Every call's projection estimate from all k JVPs ``d`` and tangents ``per_call``."""
    grams = projection_grams(per_call, s.scope if reach is None else "site")
    coefs = coefficients(s, d, grams, _widths(per_call), reach=reach)
    return [estimate_of(u, c) for u, c in zip(per_call, coefs)]


def _jvps(res) -> Tensor:
    """The pass's JVPs as ``coefficients`` takes them: ``(k, B)``, or one per loss."""
    return res.jvps if res.reach is None else res.loss_jvps


def _widths(per_call: list[Tensor | None]) -> list[int]:
    """Each call's activity size per example, from its tangents ``(k, B, ...)`` (0: none)."""
    return [0 if u is None else int(u[0, 0].numel()) for u in per_call]


def _add(total: Tensor | None, part: Tensor | None) -> Tensor | None:
    if total is None:
        return part
    return total if part is None else total.add_(part)


class LowMemory(Strategy):
    """Two passes, each call's tangents drawn twice from the same seed; memory one site deep."""

    name = "low-memory"

    @classmethod
    def problem(cls, guess, aggregation, chunk_size, jvp_mode) -> str | None:
        why = site_by_site_problem(guess)
        if why is None and chunk_size is not None:
            why = "chunk_size and low_memory do not combine (each bounds memory its own way)"
        if why is None and jvp_mode == "site":
            why = "jvp='site' does not combine with it"
        return None if why is None else f"low_memory needs tangents drawn site by site: {why}"

    def run(self, s, x, targets, loss_fn, emit) -> Tensor:
        k = s.num_tangents
        begin, draw = s.draws(k)
        projection = s.aggregation == "projection"
        grams: list[Tensor] = []  # per call (B, k, k); small, independent of width
        widths: list[int] = []

        def first_pass(ctx: SiteContext) -> Tensor | None:
            u = draw(ctx)
            widths.append(int(ctx.preact[0].numel()))
            if u is not None and projection:
                grams.append(_gram(u))
            return u

        guess_state = s.guess.state_dict()
        begin(x.shape[0])
        res = s.passes(lambda: s.engine.run(x, targets, loss_fn, k, first_pass, False, False))
        coefs = coefficients(s, _jvps(res), grams if projection else None, widths, reach=res.reach)
        grams.clear()

        def second_pass(call: SiteCall, ctx: SiteContext, u: Tensor | None) -> None:
            if u is not None:
                emit(call, estimate_of(u, coefs[call.index]))

        s.guess.load_state_dict(guess_state)
        begin(x.shape[0])
        s.passes(
            lambda: s.engine.run(
                x, targets, loss_fn, k, draw, False, False, on_call=second_pass, tangent_mode=False
            )
        )
        return res.losses.mean()


class PerSiteJVP(Strategy):
    """``sum_j (g_i . u_ij) u_ij`` per site call, from one pass per call with tangents there
    only (the same tangents a global pass would draw: each call seeds its own draw)."""

    name = "per-site-jvp"

    @classmethod
    def problem(cls, guess, aggregation, chunk_size, jvp_mode) -> str | None:
        why = site_by_site_problem(guess)
        if why is None and aggregation == "projection":
            why = "projection needs every tangent's global JVP; use sum or mean"
        return None if why is None else f"jvp='site' (one pass per site): {why}"

    def run(self, s, x, targets, loss_fn, emit) -> Tensor:
        sums: list[Tensor | None] | None = None
        calls = None
        loss = None
        n = len(s.engine.layout)
        for k in s.chunks():
            begin, draw = s.draws(k)
            part: list[Tensor | None] = []
            for i in range(n):
                begin(x.shape[0])

                def only_here(ctx: SiteContext, i: int = i, draw=draw) -> Tensor | None:
                    return draw(ctx) if ctx.index == i else None

                res = s.passes(lambda f=only_here, k=k: s.engine.run(x, targets, loss_fn, k, f))
                u = res.calls[i].tangent
                reach = None if res.reach is None else [res.reach[i]]
                coef = coefficients(s, _jvps(res), None, [0], s.num_tangents, reach)[0]
                part.append(None if u is None else estimate_of(u, coef))
                calls, loss = res.calls, res.losses.mean()
            sums = part if sums is None else [_add(t, p) for t, p in zip(sums, part)]
        assert calls is not None and sums is not None and loss is not None
        for call, est in zip(calls, sums):
            if est is not None:
                emit(call, est)
        return loss
