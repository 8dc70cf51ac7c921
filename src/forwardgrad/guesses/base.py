"""The interface every guess implements.

A guess is only the distribution of the tangents. Activity-space guesses return, at each site
call, ``k`` tangents per example ``(k, *activity_shape)`` given what the primal pass has computed
there (:class:`~forwardgrad.core.context.SiteContext`); weight-space guesses return one tangent
per parameter tensor ``(k, *shape)`` shared by the batch. Guesses never run the engine and never
aggregate.

Tangents a guess returns belong to the engine from then on (it may add into them in place when it
keeps none): return a fresh tensor, not a view of state the guess reuses.

``layout`` (in :meth:`Guess.begin_step`) is the pass's sequence of site calls: ``len(layout)``
and ``layout.widths`` (activity size per example of each call).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.context import SiteContext
from ..core.samplers import SAMPLERS, sample_tangents
from ..core.sites import ModelNotSupportedError
from .options import GuessOptions

FALLBACKS = ("none", "activation")


class Guess:
    """Base class. Subclasses set ``name``, ``space`` and implement the tangent methods."""

    name: str = ""
    summary: str = ""
    paper: str = ""
    option_names: tuple[str, ...] = ()  # the GuessOptions fields this guess reads
    space: str = "activity"  # "activity" | "weight"
    isotropic: bool = False  # uses the tangent samplers
    needs_next_layer: bool = False  # W~ at every site call but the last
    needs_mask: bool = False  # phi'(s) at every site call but the last

    def __init__(self, options: GuessOptions | None = None) -> None:
        self.options = options or GuessOptions()
        if not self.isotropic and (self.options.sampler != "normal" or self.options.normalize):
            raise ValueError(
                f"guess {self.name!r} draws its own structured tangents; samplers and "
                "normalize apply only to isotropic guesses (weight, activation, activation-masked)"
            )
        if self.options.fallback not in FALLBACKS:
            raise ValueError(
                f"unknown fallback {self.options.fallback!r}; choose one of {list(FALLBACKS)}"
            )
        self.fallback_sites: list[str] = []
        self.output_sites: list[str] = []  # the output layer and local losses' heads

    @property
    def structured(self) -> bool:
        return self.space == "activity" and (self.needs_next_layer or self.needs_mask)

    def bind(self, engine) -> None:
        """Check that every site call but the output layers (the last call, and with local
        losses the heads whose output is a loss's input) has what this guess needs (once per
        engine); raise naming the calls that do not, or, with ``fallback='activation'``, note
        them in ``fallback_sites`` (they get isotropic tangents)."""
        self.fallback_sites = []
        self.output_sites = []
        if not self.structured or not engine.layout.keys:
            return
        sites = {s.name: s for s in engine.sites}
        problems = []
        last = len(engine.layout.calls) - 1
        local = getattr(engine, "reach", None) is not None
        for i, call in enumerate(engine.layout.calls):
            # the last call (the output layer) and local losses' heads get isotropic tangents;
            # without local losses, an output nothing reads is no output layer
            if i == last or (local and is_output(engine.paths[i])):
                self.output_sites.append(call.key)
                continue
            why = self.site_problem(engine.paths[i], sites.get(call.site), engine)
            if why is not None:
                problems.append((call.key, why))
        if not problems:
            return
        if self.options.fallback == "activation":
            self.fallback_sites = [key for key, _ in problems]
            return
        key, why = problems[0]
        more = f" (and {len(problems) - 1} more: {[k for k, _ in problems[1:4]]})"
        raise ModelNotSupportedError(
            f"guess {self.name!r} {self.builds_from} at every site but the output layers; site "
            f"{key!r} has none: {why}{more if len(problems) > 1 else ''}. At such sites only "
            "the isotropic guesses work (activation, activation-masked, weight; backprop); "
            f"fallback='activation' (--fallback activation) keeps {self.name!r} elsewhere and "
            "uses activation perturbation there"
        )

    builds_from = "is built from the next layer's Jacobian W~ = W_{i+1} M_i, needed"

    def site_problem(self, path, site, engine) -> str | None:
        """Why a site call (its path, its site) cannot have this guess's tangents, or None."""
        if self.needs_next_layer and (path is None or isinstance(path, str)):
            return path or "its output is the model's output"
        if self.needs_next_layer and not path.reaches_layer:
            return "its output reaches the model's output, not a next layer"
        if self.needs_mask and engine.plan is None and getattr(site, "mask_module", None) is None:
            return "its output is not consumed by one elementwise activation alone"
        return None

    def falls_back(self, ctx: SiteContext) -> bool:
        """True where this guess hands the site isotropic tangents: the last site call and
        the heads of local losses (no next layer), and the calls noted in ``fallback_sites``."""
        return ctx.is_last or ctx.key in self.fallback_sites or ctx.key in self.output_sites

    def begin_step(self, layout, batch_size: int, k: int, generator: torch.Generator) -> None:
        """Called once per engine pass, before any site (isotropic guesses draw here)."""

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor | None:
        raise NotImplementedError

    def weight_tangents(
        self, params: list[tuple[str, Tensor]], k: int, generator: torch.Generator
    ) -> dict[str, Tensor]:
        """Tangents ``(k, *p.shape)`` for every ``(name, p)`` of the trainable parameters."""
        raise NotImplementedError

    def whole_batch_dependence(self) -> str | None:
        """Why this guess's tangents (or the state it keeps) depend on the whole batch, so
        that splitting the batch over processes would change the guess; None when they are
        per example. Read by the estimator before a data split."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def isotropic_site_tangents(ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
    """Standard Gaussian tangents for one site: the fallback of structured guesses at sites
    they do not shape (the last site, whose output has no next layer)."""
    return torch.randn(
        k, *ctx.preact.shape, generator=generator, device=generator.device, dtype=ctx.preact.dtype
    )


class IsotropicActivityGuess(Guess):
    """Isotropic tangents over the whole activity space, handed to each site as its slice.

    Samplers that draw every coordinate independently (normal, rademacher, unnormalised) are
    drawn site by site, which is the same distribution and keeps only one site's tangents alive.
    Samplers that couple coordinates (orthonormal, fixed angle, varying length, normalize) draw
    one global block per step, so that their structure holds over all sites together.
    """

    isotropic = True

    @property
    def draws_per_site(self) -> bool:
        spec = SAMPLERS.get(self.options.sampler)  # unknown names fail in sample_tangents
        return spec is not None and spec.elementwise and not self.options.normalize

    def begin_step(self, layout, batch_size: int, k: int, generator: torch.Generator) -> None:
        self._block = None
        if self.draws_per_site:
            return
        o = self.options
        self._block = sample_tangents(
            o.sampler,
            k,
            (batch_size,),
            sum(layout.widths),
            generator,
            normalize=o.normalize,
            angle=o.angle,
            max_length=o.max_length,
        )
        self._offsets = [0]
        for w in layout.widths:
            self._offsets.append(self._offsets[-1] + w)

    def _slice(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        shape = ctx.preact.shape
        if self._block is None:
            n = shape[1:].numel()
            u = sample_tangents(self.options.sampler, k, (shape[0],), n, generator)
            return u.to(ctx.preact.dtype).view(k, *shape)
        i = ctx.index
        part = self._block[..., self._offsets[i] : self._offsets[i + 1]]
        return part.to(ctx.preact.dtype).reshape(k, *shape)


def is_output(path) -> bool:
    """A site call whose output goes (through activations at most) to a loss: the model's
    output or a local loss's scores."""
    return path is None or (not isinstance(path, str) and not path.reaches_layer)
