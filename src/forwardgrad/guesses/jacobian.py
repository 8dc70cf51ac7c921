"""Guesses shaped by the upstream Jacobian ``W~ = W_{i+1} M_i``: Wᵀ, W̃⊥ and W̃ᴾ.

At site i (not the last) the true gradient of the pre-activation is ``W~^T dL/ds_{i+1}`` with
``M_i = diag(phi'(s_i))``, so guesses in the image of ``W~^T`` have far lower variance than
isotropic ones. The last site has no next layer and gets isotropic tangents.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.context import SiteContext
from ..core.sites import ModelNotSupportedError
from .base import Guess, isotropic_site_tangents
from .subspace import (
    active_units,
    compact_masked_jacobian,
    exact_jacobian_subspace,
    jacobian_subspace,
    masked_jacobian,
    operator_subspace,
    randomized_subspace,
    svd_subspace,
)

SOLVERS = ("svd", "randomized", "newton-schulz")
GRAM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _noise(ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
    """``eps ~ N(0, I)`` shaped like the next layer's output, flat per example: (k, B, m)."""
    nl = ctx.next_layer
    return nl.noise(k, generator, ctx.preact.dtype).reshape(k, ctx.batch_size, nl.out_features)


def _in_activity(ctx: SiteContext, u: Tensor) -> Tensor:
    """Flat tangents (k, B, n) back in the site's activity shape."""
    return u.reshape(u.shape[0], *ctx.preact.shape)


class WTranspose(Guess):
    """``u = M_i W_{i+1}^T eps``, ``eps ~ N(0, I)`` per example. Bias ``(W~^T W~ - I) g``."""

    name = "wt"
    summary = "W^T: u = M_i W_{i+1}^T eps per example; biased, (W~^T W~ - I) g"
    paper = "Singhal et al. 2023"
    option_names: tuple[str, ...] = ("fallback",)
    needs_next_layer = True

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if self.falls_back(ctx):
            return isotropic_site_tangents(ctx, k, generator)
        nl = ctx.next_layer  # conv sites: the next convolution's transpose, no dense matrix
        return nl.adjoint(nl.noise(k, generator, ctx.preact.dtype))


class WPerp(Guess):
    """W̃⊥(k): ``u = V_k z``, ``z ~ N(0, I_k)``, V_k the top-k right singular vectors of W~_b.

    Options: ``rank`` (k; None keeps every direction above the float32 rank tolerance),
    ``solver`` (``svd`` exact; ``randomized`` Nystrom, see :func:`randomized_subspace`, with
    ``oversample``, ``power_iterations`` and ``gram_dtype``; ``newton-schulz`` the paper's
    polynomial variant ``u = p^N(W~/||W~||_2)^T eps``), ``bottom`` (the k smallest directions, an
    ablation; svd only). Bias ``-(I - V_k V_k^T) g``.
    """

    name = "wperp"
    summary = (
        "W~perp(k): u = V_k z, top-k right singular subspace of W~ = W_{i+1} M_i; "
        "bias -(I - V_k V_k^T) g"
    )
    paper = "Wang, Markou & Campbell 2025"
    option_names: tuple[str, ...] = (
        "rank",
        "solver",
        "bottom",
        "oversample",
        "power_iterations",
        "gram_dtype",
        "ns_refresh",
        "fallback",
    )
    needs_next_layer = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        if o.solver not in SOLVERS:
            raise ValueError(f"unknown wperp solver {o.solver!r}; choose one of {list(SOLVERS)}")
        if o.rank is not None and o.rank < 1:
            raise ValueError(f"wperp rank must be a positive integer or 'full'; got {o.rank}")
        if o.bottom and o.solver != "svd":
            raise ValueError("wperp bottom=True (the bottom-k ablation) needs solver='svd'")
        if o.gram_dtype not in GRAM_DTYPES:
            raise ValueError(
                f"unknown wperp gram_dtype {o.gram_dtype!r}; choose one of {list(GRAM_DTYPES)}"
            )
        if o.rank is None and o.solver != "svd":
            raise ValueError("wperp rank='full' (numerical rank) needs solver='svd'")
        self._calls: dict[int, int] = {}
        self._sigma_ratio: dict[int, float] = {}

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if self.falls_back(ctx):
            return isotropic_site_tangents(ctx, k, generator)
        o = self.options
        nl = ctx.next_layer
        if o.solver == "newton-schulz":
            return _in_activity(ctx, self._newton_schulz(ctx, k, generator))
        basis, keep = self._subspace(ctx, generator)
        z = torch.randn(
            k, *basis.shape[::2], generator=generator, device=generator.device, dtype=nl.dtype
        )  # (k, B, r)
        if keep is not None:
            z = z * keep
        return _in_activity(ctx, torch.einsum("bdr,kbr->kbd", basis, z))

    def _subspace(self, ctx: SiteContext, generator: torch.Generator):
        """Each example's basis (B, n, r) and keep weights (B, r) or None."""
        o = self.options
        nl = ctx.next_layer
        if o.solver != "svd":
            return self._randomized(ctx, o.rank, generator)[0], None
        if nl.weight is not None:  # a dense Linear next layer: W~_b = W diag(m_b)
            return svd_subspace(nl.weight, nl.mask, o.rank, bottom=o.bottom, ordered=False)
        return jacobian_subspace(nl.dense(self._what(ctx)), o.rank, o.bottom)

    def _what(self, ctx: SiteContext) -> str:
        return f"wperp solver {self.options.solver!r} at site {ctx.key!r}"

    def _randomized(self, ctx: SiteContext, rank: int, generator: torch.Generator):
        """The randomized top-``rank`` basis (B, n, rank) and singular values (B, rank): from
        the shared ``W^T W`` on a dense Linear next layer, else matrix-free."""
        o = self.options
        nl = ctx.next_layer
        if nl.weight is not None:
            return randomized_subspace(
                nl.weight,
                nl.mask,
                rank,
                generator,
                o.oversample,
                o.power_iterations,
                GRAM_DTYPES[o.gram_dtype],
            )
        if o.gram_dtype != "float32":
            raise ModelNotSupportedError(
                f"wperp gram_dtype {o.gram_dtype!r} applies to dense Linear next layers; site "
                f"{ctx.key!r} reaches a {type(nl.path.target).__name__} (matrix-free, in the "
                "model's dtype): use gram_dtype='float32'"
            )
        if min(nl.in_features, nl.out_features) <= rank + o.oversample:
            # the block would span the space or exceed the rank: solve exactly
            basis, svals = exact_jacobian_subspace(nl.dense(self._what(ctx)))
            return basis[..., :rank], svals[..., :rank]
        return operator_subspace(
            nl.gram_rows,
            (nl.batch_size, nl.in_features),
            rank,
            generator,
            nl.dtype,
            o.oversample,
            o.power_iterations,
        )

    def _newton_schulz(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        from . import newton_schulz  # loads the coefficient table on first use

        o = self.options
        nl = ctx.next_layer
        i = ctx.index
        calls = self._calls.get(i, 0)
        # sigma_1 from a Rayleigh-Ritz block (k + oversample vectors): single-vector power
        # iteration can sit >10% low, which would push singular values past the polynomials'
        # fitted domain [0, 1.1], where they are unbounded. sigma_k / sigma_1 changes slowly,
        # so it is refreshed only every ns_refresh steps (the paper: 50), from the same solve.
        refresh = i not in self._sigma_ratio or calls % o.ns_refresh == 0
        _, svals = self._randomized(ctx, o.rank if refresh else 1, generator)
        norm = svals[:, 0].clamp_min(1e-30)
        if refresh:
            self._sigma_ratio[i] = float((svals[:, -1] / norm).median())
        self._calls[i] = calls + 1
        _, coeffs = newton_schulz.coefficients_keeping(self._sigma_ratio[i])
        eps = _noise(ctx, k, generator)
        if nl.weight is None:  # conv / token-wise: the polynomial needs W~ densely
            poly = newton_schulz.matrix_polynomial(
                nl.dense(self._what(ctx)) / norm.view(-1, 1, 1),
                coeffs,
                newton_schulz.DEFAULT_ITERATIONS,
            )
            return torch.einsum("kbe,bea->kba", eps, poly)
        w, mask = nl.weight, nl.mask
        d1 = w.shape[1]
        idx = active_units(mask)
        # Inactive units are zero columns of W~, which the odd polynomial keeps at zero: where
        # they are many, iterate on the active columns only ((a / d1)^2 of the work, the Gram
        # on the narrow side) and scatter the result back.
        compact = idx.shape[1] <= 0.8 * d1
        jac = compact_masked_jacobian(w, mask, idx) if compact else masked_jacobian(w, mask)
        poly = newton_schulz.matrix_polynomial(
            jac / norm.view(-1, 1, 1), coeffs, newton_schulz.DEFAULT_ITERATIONS
        )
        u = torch.einsum("kbe,bea->kba", eps, poly)
        if not compact:
            return u
        full = torch.zeros(k, mask.shape[0], d1, dtype=w.dtype, device=w.device)
        return full.scatter_(2, idx.expand(k, -1, -1), u)

    def whole_batch_dependence(self) -> str | None:
        if self.options.solver != "newton-schulz":
            return None
        return (
            "its Newton-Schulz calibration (sigma_k / sigma_1) is a median over the batch, so "
            "each shard would keep its own; solvers 'randomized' and 'svd' are per example"
        )

    def state_dict(self) -> dict:
        return {"calls": dict(self._calls), "sigma_ratio": dict(self._sigma_ratio)}

    def load_state_dict(self, state: dict) -> None:
        self._calls = {int(a): int(b) for a, b in state.get("calls", {}).items()}
        self._sigma_ratio = {int(a): float(b) for a, b in state.get("sigma_ratio", {}).items()}


class Preconditioned(Guess):
    """W̃ᴾ: ``u = (W~_s^T W~_s)^{-1/2} W~_s^T eps`` with ``W~_s = U (S^2 + sigma)^{1/2} V^T``.

    With the reduced SVD ``W~ = U_r S_r V_r^T`` (r = min(d_{i+2}, d_{i+1})) the factors
    ``(S^2 + sigma)^{+-1/2}`` cancel exactly (the paper's Eqs. 11-16), leaving
    ``u = V_r U_r^T eps ~ N(0, V_r V_r^T)``. So sigma only guards the numerics of the paper's
    explicit form; it does not change the distribution, which is sampled here in closed form:

    * next layer at least as wide (``d_{i+2} >= d_{i+1}``): V_r spans everything, ``u ~ N(0, I)``,
      unbiased (and unmasked);
    * narrower next layer: ``u`` is a Gaussian in the d_{i+2}-dimensional row space of W~, biased
      by ``-(I - V_r V_r^T) g`` (for the 10-way output layer's feeder this is the W̃⊥(10) subspace).
    """

    name = "preconditioned"
    summary = (
        "W~P: (W~_s^T W~_s)^(-1/2) W~_s^T eps (sigma = 1e-5); unbiased when d_{i+2} >= d_{i+1}"
    )
    paper = "Wang, Markou & Campbell 2025"
    option_names: tuple[str, ...] = ("sigma", "fallback")
    needs_next_layer = True

    def __init__(self, options=None) -> None:
        super().__init__(options)
        if not self.options.sigma > 0:
            raise ValueError(f"preconditioned sigma must be > 0; got {self.options.sigma}")

    def site_tangents(self, ctx: SiteContext, k: int, generator: torch.Generator) -> Tensor:
        if self.falls_back(ctx):
            return isotropic_site_tangents(ctx, k, generator)
        nl = ctx.next_layer
        if nl.out_features >= nl.in_features:
            return isotropic_site_tangents(ctx, k, generator)
        jac = nl.dense(f"preconditioned at site {ctx.key!r}")
        u_left, _, vh = torch.linalg.svd(jac, full_matrices=False)
        eps = _noise(ctx, k, generator)
        coords = torch.einsum("ber,kbe->kbr", u_left, eps)  # U_r^T eps
        return _in_activity(ctx, torch.einsum("brd,kbr->kbd", vh, coords))  # V_r U_r^T eps
