"""The public entry point: a guess, an engine, a strategy and an aggregation, filling ``.grad``.

>>> est = Estimator(model, guess="wperp", rank=10, tangents=4, aggregate="projection")
>>> loss = est.step(x, y)          # fills .grad with no backward pass
>>> optimizer.step(); optimizer.zero_grad()

Activity-space guesses put tangents on the outputs of the model's sites (every Linear and
Conv1d/2d by default, any choice with ``sites=``), estimate ``dl_b/ds`` per example from the
JVPs, and turn each site's estimate into its parameters' gradients by the site's local rule
(``core/rules.py``); no backward pass through the network. Weight-space guesses perturb the
trainable parameters and aggregate the JVPs of the mean loss with the parameter tangents.

Which engine runs a pass is chosen per model, on the first batch and whenever the model's
structure changes (a layer replaced, a hook added, parameters frozen): the fused Linear chain
(``core/chain.py``) where the model is exactly a plain MLP, else the general engine
(``core/engine.py``), whose sites and rules come from one traced pass (``core/trace.py``) and
which first checks that the batch is not coupled (per-example JVPs need that; ``jvp="batch"``
does not).

With ``parallel`` (:class:`forwardgrad.distributed.Collectives`, one per process of a
``torchrun`` launch) the step's work is shared: a tangent split pushes only this process's
share of the k tangents and gathers the others' JVPs, so every process forms the same estimate
as one process would (same tangents, same JVPs up to rounding); a data split estimates on this
process's shard of the batch and sums over the shards the k JVPs (weight-space guesses, whose
tangents the processes share) or the parameter gradients (activity-space guesses, whose
tangents are per example: each shard draws its own).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks
from torch.nn.modules.dropout import _DropoutNd

from ..core.aggregate import AGGREGATIONS, aggregate
from ..core.chain import ChainEngine, SitePlan, chain_problem
from ..core.context import LossFn, SiteCall
from ..core.engine import FunctionalEngine, GeneralEngine
from ..core.layers import has_local_losses, model_losses, reported
from ..core.rules import AccumulateIntoGrad, CollectGrads, GradSink
from ..core.sites import ModelNotSupportedError, SiteSpec, select_sites
from ..core.state import step_state
from ..core.strategies import JVP_MODES, StepSettings, TangentShare, choose_strategy
from ..core.trace import check_batch_coupling, trace_sites
from ..distributed import Collectives, LaunchError
from ..guesses import Guess, GuessOptions, make_guess

SCOPES = ("global", "site")


def cross_entropy_per_example(outputs: Tensor, targets: Tensor) -> Tensor:
    """Per-example cross-entropy, the default loss."""
    return F.cross_entropy(outputs, targets, reduction="none")


def _structure_key(model: nn.Module, x: Tensor) -> tuple:
    """Everything about the model whose change needs a new engine (cheap: no tensor data)."""
    modules = tuple(
        (n, id(m), m.training, m.p if isinstance(m, _DropoutNd) else None, len(m._forward_hooks))
        + (len(m._forward_pre_hooks),)
        for n, m in model.named_modules()
    )
    params = tuple((n, id(p), p.requires_grad) for n, p in model.named_parameters())
    hooks = (len(module_hooks._global_forward_hooks), len(module_hooks._global_forward_pre_hooks))
    return modules, params, hooks, tuple(x.shape[1:]), x.dtype, x.device


class Estimator:
    """Gradient estimator for any ``nn.Module`` from forward-mode JVPs.

    Args:
        model: the model; its parameters are read, never modified.
        guess: a name from :data:`forwardgrad.guesses.GUESSES` (``backprop`` is the oracle) or a
            :class:`~forwardgrad.guesses.Guess` instance.
        tangents: k, the number of tangents per step.
        aggregate: ``sum``, ``mean`` or ``projection``.
        scope: ``global`` (project onto the span of the tangents over all sites at once) or
            ``site`` (each site on its own, with the global JVPs).
        jvp: ``global`` (one directional derivative along all sites' tangents, per example:
            the forward gradient), ``site`` (each site's tangents scaled by their own
            directional derivative, one pass per site; activity guesses with sum or mean) or
            ``batch`` (one directional derivative of the whole batch's loss per tangent: valid
            for models that couple the examples, BatchNorm in training mode included; unbiased,
            with higher variance).
        loss_fn: per-example loss ``(outputs, targets) -> (B,)``; cross-entropy by default.
        seed: seed of the tangent generator.
        chunk_size: push at most this many tangents through the network at once, bounding
            tangent memory at the cost of one primal pass per chunk (None: all k at once).
        low_memory: activity-space guesses only. A first pass keeps nothing but the JVPs; a
            second primal pass redraws each site's tangents and forms its gradient at once, so
            memory does not grow with depth (one more primal pass).
        sites: where activity tangents go: None (every Linear and Conv1d/2d), module types,
            name patterns, or a mix (see :func:`forwardgrad.core.sites.select_sites`).
        parallel: this process's :class:`~forwardgrad.distributed.Collectives` when the step
            is shared by several processes (None: one process does it all). Each process then
            passes its own shard of the batch (a data split) or the whole batch (a tangent
            split), and every process gets the same estimate and the whole batch's mean loss.
        **guess_options: fields of :class:`~forwardgrad.guesses.GuessOptions` (rank, solver,
            bottom, sigma, layers, sampler, normalize, angle, max_length, ...).
    """

    def __init__(
        self,
        model: nn.Module,
        guess: str | Guess = "activation",
        *,
        tangents: int = 1,
        aggregate: str = "mean",
        scope: str = "global",
        jvp: str = "global",
        loss_fn: LossFn | None = None,
        seed: int = 0,
        chunk_size: int | None = None,
        low_memory: bool = False,
        sites: SiteSpec = None,
        parallel: Collectives | None = None,
        **guess_options: object,
    ) -> None:
        self.guess = _make_guess(guess, guess_options)
        self.guess_name = self.guess.name
        if isinstance(tangents, bool) or not isinstance(tangents, int) or tangents < 1:
            raise ValueError(f"tangents must be a positive integer; got {tangents!r}")
        _check_choice("aggregation", aggregate, AGGREGATIONS)
        _check_choice("projection scope", scope, SCOPES)
        _check_choice("jvp mode", jvp, JVP_MODES)
        if chunk_size is not None and (isinstance(chunk_size, bool) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None; got {chunk_size}")
        if low_memory and self.guess.space != "activity":
            raise ValueError(
                f"low_memory needs tangents drawn site by site: guess {self.guess_name!r} is not "
                "an activity-space guess"
            )
        self.model = model
        self.num_tangents = tangents
        self.aggregation = aggregate
        self.scope = scope
        self.jvp_mode = jvp
        self.jvp_scope = jvp  # the name this setting had before "batch" existed
        self.loss_fn: LossFn = loss_fn or cross_entropy_per_example
        self.chunk_size = chunk_size
        self.low_memory = bool(low_memory)
        self.sites_spec = sites
        select_sites(model, sites)  # a bad spec fails here, before any batch
        self.strategy = (
            choose_strategy(self.guess, aggregate, chunk_size, jvp, self.low_memory)
            if self.guess.space == "activity"
            else None
        )
        if jvp == "site" and self.guess.space != "activity":
            raise ValueError(
                f"jvp='site' (one pass per site): guess {self.guess_name!r} is not an "
                "activity-space guess"
            )
        self.parallel = parallel
        self._check_parallel()
        self.plan: SitePlan | None = None
        self._read_chain()
        if self.plan is not None:  # a plain MLP: its structure is known before any batch
            self.guess.bind(ChainEngine(self.plan))
        device = _parameter_device(model)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self._site_generator = torch.Generator(device=device)
        self._engine = None
        self._engine_key: tuple | None = None
        self.unused_parameters: list[str] = []

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
            loss, grads = self._backprop(x, targets, loss_fn)
        else:
            sink = CollectGrads()
            loss = self._run(x, targets, loss_fn, sink)
            grads = sink.grads
        if self._sums_gradients_over_shards():
            loss, grads = self._sum_over_shards(loss, grads, x.shape[0])
        return loss, grads

    def step(self, x: Tensor, targets: Tensor, loss_fn: LossFn | None = None) -> Tensor:
        """Estimate the gradient and accumulate it into ``.grad`` (as ``backward`` would).

        Returns the batch's mean loss (a detached scalar tensor).
        """
        loss_fn = loss_fn or self.loss_fn
        if self.guess.space == "activity" and not self._sums_gradients_over_shards():
            # Site by site straight into .grad: no dict of all gradients is held at once.
            self._check_batch(x, targets)
            return self._run(x, targets, loss_fn, AccumulateIntoGrad())
        loss, grads = self.estimate(x, targets, loss_fn)
        sink = AccumulateIntoGrad()
        for p, g in grads.items():
            sink.add(p, g)
        return loss

    def estimate_activity(
        self, x: Tensor, targets: Tensor, loss_fn: LossFn | None = None
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Per-example estimates of ``dl_b/ds`` at every site call, for an activity guess.

        Returns the mean loss, the estimates ``(B, *activity_shape)`` per site call and each
        call's input (the module's first argument). Diagnostics compare these with the true
        per-example gradients.
        """
        if self.guess.space != "activity":
            raise ValueError(f"guess {self.guess_name!r} is not an activity-space guess")
        self._check_batch(x, targets)
        calls: list[tuple[SiteCall, Tensor]] = []
        with torch.no_grad():
            engine = self._ensure_engine(x, targets, loss_fn or self.loss_fn)
            loss = self._activity(
                engine,
                x,
                targets,
                loss_fn or self.loss_fn,
                lambda call, est: calls.append((call, est)),
            )
        calls.sort(key=lambda ce: ce[0].index)
        return loss, [e for _, e in calls], [c.input for c, _ in calls]

    def engine_for(self, x: Tensor, targets: Tensor, loss_fn: LossFn | None = None):
        """The engine this estimator uses for batches like ``x`` (built on first use: the
        model's sites and rules are traced and the batch-coupling check runs)."""
        with torch.no_grad():
            return self._ensure_engine(x, targets, loss_fn or self.loss_fn)

    @property
    def sites(self) -> list:
        """The sites of the engine built for the last batch (empty before the first)."""
        return list(self._engine.sites) if self._engine is not None else []

    def describe(self) -> list[dict]:
        """One row per site: name, module type, gradient rule, parameters, mask, the route to
        the next linear layer (``next_layer``: the modules between and the layer, ``output``,
        or why there is none), whether the guess falls back to activation perturbation there
        and, with local losses, the losses whose JVP scales its tangents (``losses``)."""
        rows = [_describe(s) for s in self.sites]
        engine = self._engine
        if engine is None:
            return rows
        routes: dict[str, object] = {}
        for call, path in zip(engine.layout.calls, getattr(engine, "paths", [])):
            routes.setdefault(call.site, path)
        fallback = set(self.guess.fallback_sites)
        reached: dict[str, frozenset[int]] = {}
        for call, losses in zip(engine.layout.calls, getattr(engine, "reach", None) or []):
            reached.setdefault(call.site, losses)
        for row in rows:
            row["next_layer"] = _route(routes.get(row["name"], "not traced"))
            row["fallback"] = row["name"] in fallback
            if reached:  # local losses: which losses scale this site's tangents
                losses = sorted(reached.get(row["name"], ()))
                row["losses"] = ["output" if i == 0 else f"local {i}" for i in losses]
        return rows

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "guess": self.guess.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.guess.load_state_dict(state.get("guess", {}))

    # ------------------------------------------------------------------ processes

    def _check_parallel(self) -> None:
        """Refuse what a split over processes cannot do exactly, naming it."""
        if self.parallel is None:
            return
        grid = self.parallel.grid
        if grid.tangent_size > 1:
            where = f"--parallel {grid.mode} splits the tangents over {grid.tangent_size} processes"
            if self.guess.space == "exact":
                raise LaunchError(f"{where}, but guess 'backprop' has none; use --parallel data")
            grid.tangent_share(self.num_tangents)  # k must split evenly
            if has_local_losses(self.model) and self.guess.space == "activity":
                raise LaunchError(
                    f"{where}, but the model has local losses, whose per-loss JVPs are not "
                    "gathered; use --parallel data"
                )
            for bad, what in (
                (self.chunk_size is not None, "chunk_size (each process already pushes k/N)"),
                (self.low_memory, "low_memory"),
                (self.jvp_mode == "site", "jvp='site'"),
            ):
                if bad:
                    raise LaunchError(f"{where}; it does not combine with {what}")
        if grid.data_size > 1 and self.jvp_mode == "batch":
            raise LaunchError(
                f"jvp='batch' needs the whole batch's loss in one pass; --parallel {grid.mode} "
                "splits the batch over processes. Use --parallel tangents"
            )
        why = self.guess.whole_batch_dependence() if grid.data_size > 1 else None
        if why:
            raise LaunchError(
                f"--parallel {grid.mode} splits the batch over processes, but guess "
                f"{self.guess_name!r} needs it whole: {why}. Use --parallel tangents"
            )

    def _tangent_share(self) -> TangentShare | None:
        c = self.parallel
        if c is None or c.grid.tangent_size == 1:
            return None
        start, stop = c.grid.tangent_slice(self.num_tangents)
        return TangentShare(start, stop, c.gather_tangent_jvps)

    def _data_stream(self) -> int:
        return 0 if self.parallel is None else self.parallel.grid.data_rank

    def _sums_gradients_over_shards(self) -> bool:
        """Activity-space tangents (and backprop) are per example, so a data split sums the
        shards' gradients; weight-space tangents are shared, so it sums their k JVPs instead."""
        c = self.parallel
        return c is not None and c.grid.data_size > 1 and self.guess.space != "weight"

    def _sum_over_shards(
        self, loss: Tensor, grads: dict[nn.Parameter, Tensor], batch: int
    ) -> tuple[Tensor, dict[nn.Parameter, Tensor]]:
        """The whole batch's mean loss and gradients from every shard's (one all-reduce)."""
        _refuse_batch_statistics(self.model, self.parallel.grid.mode)
        params = [p for p in self.model.parameters() if p.requires_grad]
        like = next(iter(grads.values()), loss)
        pieces = [
            (grads[p] if p in grads else torch.zeros_like(p, dtype=like.dtype)).reshape(-1)
            for p in params
        ]
        flat, loss = self._mean_over_shards(torch.cat(pieces), loss, batch)
        out = {}
        for p, piece in zip(params, flat.split([p.numel() for p in params])):
            if p in grads or bool(piece.any()):
                out[p] = piece.view(p.shape)
        return loss, out

    def _mean_over_shards(self, values: Tensor, loss: Tensor, batch: int) -> tuple[Tensor, Tensor]:
        """The whole batch's mean of ``values`` (a shard's means, flat) and of the loss, from
        every shard's weighted by its size: one all-reduce of ``values`` and two numbers."""
        one = torch.ones(1, dtype=values.dtype, device=values.device)
        flat = torch.cat([values, loss.to(values.dtype).reshape(1), one]).mul_(batch)
        flat = self.parallel.sum_over_shards(flat)
        return flat[:-2] / flat[-1], flat[-2] / flat[-1]

    # ------------------------------------------------------------------ engines

    def _read_chain(self) -> None:
        self.plan = chain_problem(self.model)[0] if self.sites_spec is None else None

    def _ensure_engine(self, x: Tensor, targets: Tensor, loss_fn: LossFn):
        key = _structure_key(self.model, x)
        if key != self._engine_key:
            self._engine = self._build_engine(x, targets, loss_fn)
            self._engine_key = key
        return self._engine

    def _build_engine(self, x: Tensor, targets: Tensor, loss_fn: LossFn):
        self._read_chain()
        if self.plan is not None:
            engine = ChainEngine(self.plan)
            self.guess.bind(engine)  # the structure may have changed since the last batch
            return engine
        if self.guess.space == "weight":
            return FunctionalEngine(self.model)
        device = _parameter_device(self.model)
        trace = trace_sites(self.model, x, select_sites(self.model, self.sites_spec), device)
        if not trace.sites:
            raise ModelNotSupportedError(
                f"{type(self.model).__name__} has no trainable parameter used in its forward"
            )
        self.unused_parameters = trace.unused
        engine = GeneralEngine(
            self.model, trace.sites, trace.layout, trace.paths, trace.reach, trace.losses
        )
        self.guess.bind(engine)
        if self.jvp_mode != "batch":
            check_batch_coupling(engine, x, targets, loss_fn, device)
        return engine

    # ------------------------------------------------------------------ internals

    def _check_batch(self, x: Tensor, targets: Tensor) -> None:
        if x.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets disagree on the batch size: {x.shape[0]} vs {targets.shape[0]}"
            )
        plan = self.plan
        if plan is not None and not plan.prefix:
            first = plan.sites[0]
            if x.dim() != 2 or x.shape[1] != first.in_features:
                raise ValueError(
                    f"inputs of shape {tuple(x.shape)} do not fit the first linear layer, "
                    f"which expects (batch, {first.in_features})"
                )

    def _run(self, x: Tensor, targets: Tensor, loss_fn: LossFn, sink: GradSink) -> Tensor:
        with torch.no_grad():
            engine = self._ensure_engine(x, targets, loss_fn)
            if self.guess.space == "weight":
                return self._weight_space(engine, x, targets, loss_fn, sink)
            scale = 1.0 / x.shape[0]

            def emit(call: SiteCall, estimate: Tensor) -> None:
                call.site.rule.apply(call, estimate, scale, sink)

            return self._activity(engine, x, targets, loss_fn, emit)

    def _passes(self, bn, rng) -> Callable:
        """Runs one engine pass with the step's BatchNorm and random-state bookkeeping."""
        ran = []

        def run_pass(run: Callable):
            first = not ran
            rng.before_pass()
            if first:
                bn.record()
            try:
                result = run()
            finally:
                if first:
                    bn.stop()
            rng.after_pass()
            ran.append(True)
            return result

        return run_pass

    def _settings(self, engine, bn, rng) -> StepSettings:
        return StepSettings(
            engine=engine,
            guess=self.guess,
            num_tangents=self.num_tangents,
            aggregation=self.aggregation,
            scope=self.scope,
            jvp_mode=self.jvp_mode,
            chunk_size=self.chunk_size,
            generator=self.generator,
            site_generator=self._site_generator,
            passes=self._passes(bn, rng),
            share=self._tangent_share(),
            stream=self._data_stream(),
        )

    def _activity(self, engine, x, targets, loss_fn, emit) -> Tensor:
        with step_state(self.model, _parameter_device(self.model)) as (bn, rng):
            return self.strategy.run(self._settings(engine, bn, rng), x, targets, loss_fn, emit)

    def _trained_parameters(self, engine) -> dict[str, nn.Parameter]:
        if isinstance(engine, ChainEngine):
            return dict(engine.plan.parameters())
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _weight_space(self, engine, x, targets, loss_fn, sink: GradSink) -> Tensor:
        params = {n: p for n, p in self._trained_parameters(engine).items() if p.requires_grad}
        names = list(params)
        if not names:
            raise ModelNotSupportedError("the model has no trainable parameter to perturb")
        tangents: dict[str, list[Tensor]] = {n: [] for n in names}
        jvps, loss = [], None
        share = self._tangent_share()
        with step_state(self.model, _parameter_device(self.model)) as (bn, rng):
            run_pass = self._passes(bn, rng)
            for k in _chunks(self.num_tangents, self.chunk_size):
                v = self.guess.weight_tangents(list(params.items()), k, self.generator)
                pushed = v if share is None else _share_of(v, share)
                d, losses = run_pass(
                    lambda v=pushed: engine.weight_jvps(params, v, x, targets, loss_fn)
                )
                d = d.mean(1)  # JVP of the mean loss, (k,)
                jvps.append(d if share is None else share.gather(d))
                for n in names:
                    tangents[n].append(v[n])
                loss = losses.mean()
        d = torch.cat(jvps, 0)
        if self.parallel is not None and self.parallel.grid.data_size > 1:
            # the whole batch's k JVPs and mean loss: k + 2 numbers on the wire
            _refuse_batch_statistics(self.model, self.parallel.grid.mode)
            d, loss = self._mean_over_shards(d, loss, x.shape[0])
        v_all = {n: torch.cat(tangents[n], 0).reshape(len(d), -1) for n in names}  # (k, numel)
        groups = [names] if self.scope == "global" else _by_module(names)
        for group in groups:
            sizes = [v_all[n].shape[1] for n in group]
            flat = aggregate(self.aggregation, torch.cat([v_all[n] for n in group], 1), d)
            for n, piece in zip(group, flat.split(sizes)):
                sink.add(params[n], piece.reshape(params[n].shape))
        return loss

    def _backprop(self, x: Tensor, targets: Tensor, loss_fn: LossFn):
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        params = [p for _, p in named]
        with torch.enable_grad():
            losses = model_losses(self.model, x, targets, loss_fn)  # and every local loss
            grads = torch.autograd.grad(losses.sum(1).mean(), params, allow_unused=True)
        loss = reported(losses.detach()).mean()
        return loss, {p: g for p, g in zip(params, grads) if g is not None}


def _share_of(tangents: dict[str, Tensor], share: TangentShare) -> dict[str, Tensor]:
    return {n: t[share.start : share.stop] for n, t in tangents.items()}


def _refuse_batch_statistics(model: nn.Module, mode: str) -> None:
    """A batch split over processes would give each BatchNorm its shard's statistics (and
    each process its own running statistics): refuse rather than train a different model."""
    for name, m in model.named_modules():
        batch_norm = isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        if batch_norm and (m.training or m.running_mean is None):
            raise LaunchError(
                f"{name or 'the model'} ({type(m).__name__}, training mode or no running "
                "statistics) normalises by the "
                f"batch's statistics, which --parallel {mode} would split over processes; use "
                "--parallel tangents, or eval-mode normalisation"
            )


def _make_guess(guess: str | Guess, options: dict) -> Guess:
    if isinstance(guess, Guess):
        if options:
            raise ValueError(
                f"guess options {sorted(options)} were given with a Guess instance; set them on "
                "the instance's GuessOptions instead"
            )
        return guess
    known = {f.name for f in dataclasses.fields(GuessOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown guess options {unknown}; known options are {sorted(known)}")
    return make_guess(guess, GuessOptions(**options))  # type: ignore[arg-type]


def _check_choice(what: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {sorted(allowed)}")


def _chunks(k: int, chunk_size: int | None) -> list[int]:
    c = chunk_size or k
    return [min(c, k - start) for start in range(0, k, c)]


def _by_module(names: list[str]) -> list[list[str]]:
    """Parameter names grouped by the module that owns them (a layer's weight and bias)."""
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(n.rpartition(".")[0], []).append(n)
    return list(groups.values())


def _parameter_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _route(path) -> str:
    if path is None:
        return "output"
    if isinstance(path, str):
        return f"none: {path}"
    between = [type(m).__name__ for m in path.between]
    end = type(path.target).__name__ if path.reaches_layer else "output"
    return " -> ".join([*between, end])


def _describe(site) -> dict:
    if hasattr(site, "describe"):
        return site.describe()
    return {
        "name": site.name,
        "module": type(site.module).__name__,
        "rule": site.rule.name,
        "params": list(site.params),
        "chosen": True,
        "masked_by": [type(m).__name__ for m in site.followers] or None,
    }
