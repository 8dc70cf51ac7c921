"""Measurements of gradient estimates against the true gradient (the backprop oracle).

Everything here reads one batch and returns plain floats, lists and dicts (JSON-serialisable).
Layers are numbered by site (0 = the first linear layer). Only the oracle functions
(:func:`activity_gradients`, :func:`weight_gradients`) run a backward pass; estimators are only
ever called through their own forward-mode API (``estimate`` / ``estimate_activity``).

Quantities (g = true gradient, ĝ = one draw of the estimate):

* agreement: cosine(ĝ, g) and relative norm ``||ĝ|| / ||g||`` per parameter tensor, per layer
  (weight and bias together) and over all parameters;
* bias and variance over many draws on the same batch, as the W̃⊥ paper defines them (its
  Eqs. 17-18), in activity space per site or in weight space per layer;
* ``||E[u u^T] - I||_F`` of a guess's tangent distribution per site, from draws and in closed form
  for the guesses whose law is known;
* overlap of the true activity gradient with the top-k right singular subspace of
  ``W~ = W_{i+1} diag(phi'(s_i))`` (Eq. 19) for every k;
* effective rank (Roy & Vetterli 2007) of matrices and of every weight matrix;
* singular values of the Jacobians ``J_{s_i -> s_{i+l}}`` per example;
* 1-step effectiveness (Singhal et al. 2023): best one-step loss decrease along the estimate
  relative to backprop's, over a grid of step sizes, without modifying the model.

:func:`probe` gathers the cheap ones (and, on request, the expensive ones) for a training callback.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacfwd, vmap

from .jvp import LossFn, SiteContext, forward_jvp
from .samplers import SAMPLERS
from .sites import ModelNotSupportedError, SitePlan, find_sites

if TYPE_CHECKING:
    from .estimator import Estimator

# The step sizes of Singhal et al.'s 1-step effectiveness search.
DEFAULT_STEP_SIZES: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

# Extra measurements probe() runs on request. The estimator ones depend on the guess; the model
# ones only on the model and the batch.
ESTIMATOR_EXTRAS: tuple[str, ...] = ("bias_variance", "covariance", "one_step")
MODEL_EXTRAS: tuple[str, ...] = ("overlap", "effective_rank", "jacobian")
PROBE_EXTRAS: tuple[str, ...] = ESTIMATOR_EXTRAS + MODEL_EXTRAS

# ---------------------------------------------------------------------------------- the oracle


def activity_gradients(
    model: nn.Module, x: Tensor, targets: Tensor, loss_fn: LossFn, plan: SitePlan | None = None
) -> list[Tensor]:
    """True per-example gradients ``dl_b/ds_i`` (B, d_i) at every site, by backpropagation.

    This is the oracle: it is the one place here that runs a backward pass.
    """
    plan = plan or find_sites(model)
    preacts: list[Tensor] = []
    handles = [
        s.module.register_forward_hook(lambda m, i, o: preacts.append(o)) for s in plan.sites
    ]
    try:
        with torch.enable_grad():
            losses = loss_fn(model(x), targets)
            grads = torch.autograd.grad(losses.sum(), preacts)
    finally:
        for h in handles:
            h.remove()
    return [g.detach() for g in grads]


def weight_gradients(
    model: nn.Module, x: Tensor, targets: Tensor, loss_fn: LossFn, plan: SitePlan | None = None
) -> tuple[float, dict[nn.Parameter, Tensor]]:
    """Mean loss of the batch and the true gradient of every trained site parameter (oracle).

    Uses ``torch.autograd.grad``, so ``.grad`` is not touched.
    """
    plan = plan or find_sites(model)
    params = [p for _, p in plan.parameters() if p.requires_grad]
    with torch.enable_grad():
        loss = loss_fn(model(x), targets).mean()
        grads = torch.autograd.grad(loss, params)
    return float(loss.detach()), {p: g.detach() for p, g in zip(params, grads)}


# ---------------------------------------------------------------------------------- agreement


def cosine_similarity(a: Tensor, b: Tensor) -> float:
    """Cosine between two tensors viewed as flat vectors."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def relative_norm(estimate: Tensor, true: Tensor) -> float | None:
    """``||estimate|| / ||true||`` of flat vectors; None when the true gradient is zero."""
    true_norm = float(true.double().norm())
    return float(estimate.double().norm()) / true_norm if true_norm > 0 else None


def _agreement(estimates: Sequence[Tensor], trues: Sequence[Tensor]) -> dict[str, float | None]:
    est = torch.cat([t.flatten().double() for t in estimates])
    true = torch.cat([t.flatten().double() for t in trues])
    return {"cosine": cosine_similarity(est, true), "rel_norm": relative_norm(est, true)}


def gradient_agreement(
    plan: SitePlan,
    estimate: dict[nn.Parameter, Tensor],
    true: dict[nn.Parameter, Tensor],
) -> dict:
    """Cosine and relative norm of a weight-gradient estimate, globally and per layer.

    Args:
        plan: the model's sites (for layer structure and parameter names).
        estimate, true: ``{parameter: gradient}`` as :meth:`Estimator.estimate` and
            :func:`weight_gradients` return them, over the same trained parameters.

    Returns:
        ``{"cosine", "rel_norm", "layers": [{"layer", "shape", "cosine", "rel_norm",
        "params": {"weight": {"cosine", "rel_norm"}, "bias": {...}}}]}``; a layer's numbers
        treat its weight and bias as one vector, the global ones all trained parameters.
    """
    if set(estimate) != set(true):
        raise ValueError(
            "the estimate and the true gradient cover different parameters "
            f"({len(estimate)} vs {len(true)} tensors); compare estimates of the same model"
        )
    layers = []
    for site in plan.sites:
        params = [
            (kind, p)
            for kind, p in (("weight", site.module.weight), ("bias", site.module.bias))
            if p is not None and p in true
        ]
        if not params:  # a frozen layer has nothing to compare
            continue
        row: dict = {"layer": site.index, "shape": list(site.module.weight.shape)}
        row.update(_agreement([estimate[p] for _, p in params], [true[p] for _, p in params]))
        row["params"] = {kind: _agreement([estimate[p]], [true[p]]) for kind, p in params}
        layers.append(row)
    params = list(true)
    out: dict = _agreement([estimate[p] for p in params], [true[p] for p in params])
    out["layers"] = layers
    return out


# ------------------------------------------------------------------------- site contexts


def site_contexts(plan: SitePlan, x: Tensor, targets: Tensor, loss_fn: LossFn) -> list[SiteContext]:
    """What the engine's primal pass shows a guess at every site (pre-activations, phi'(s_i),
    outputs), captured from one pass with no tangents injected."""
    contexts: list[SiteContext] = []

    def capture(ctx: SiteContext) -> None:
        contexts.append(ctx)
        return None

    with torch.no_grad():
        forward_jvp(plan, x, targets, loss_fn, 1, site_tangents=capture, keep_inputs=False)
    return contexts


# ------------------------------------------------------- tangent covariance (second moment)


def _identity_factor(ctx: SiteContext) -> Tensor:
    b, d = ctx.preact.shape
    return torch.eye(d, dtype=torch.float64, device=ctx.preact.device).expand(b, d, d)


def closed_form_covariance_factor(
    estimator: Estimator, x: Tensor, targets: Tensor
) -> list[Tensor | None]:
    """Factors ``F_b`` with ``E[u_b u_b^T] = F_b^T F_b`` per site, where the law is known.

    Known in closed form (None elsewhere, e.g. mixing, downstream, randomized or Newton-Schulz
    W̃⊥, where only :func:`tangent_covariance`'s draws tell):

    * ``activation`` (samplers normal, rademacher, orthonormal, angle): ``I``;
      ``activation-masked``: ``diag([phi'(s_i) != 0])``;
    * ``wt``: ``W~_b`` (so ``E[uu^T] = W~_b^T W~_b``);
    * ``wperp`` with ``solver="svd"``: ``V_k^T`` (so ``E[uu^T] = V_k V_k^T``, top or bottom k);
    * ``preconditioned`` when the next layer is at least as wide: ``I``;
    * the last site of every next-layer guess except self-sharpening: ``I`` (isotropic there).

    Returns one float64 tensor ``(B, r, d_i)`` or None per site. Isotropic guesses with
    ``normalize=True`` have ``E[uu^T] = I / n`` with n the whole activity dimension.
    """
    from .guesses.subspace import masked_jacobian, svd_subspace

    name, o = estimator.guess_name, estimator.guess.options
    contexts = site_contexts(estimator.plan, x, targets, estimator.loss_fn)
    total_width = sum(estimator.plan.widths)
    out: list[Tensor | None] = []
    for ctx in contexts:
        factor: Tensor | None = None
        if name in ("activation", "activation-masked"):
            if o.sampler in ("normal", "rademacher", "orthonormal", "angle"):
                factor = _identity_factor(ctx)
                if name == "activation-masked":
                    factor = factor * (ctx.act_grad != 0).double().unsqueeze(-1)
                if o.normalize:
                    factor = factor / math.sqrt(total_width)
        elif ctx.is_last:
            if name in ("wt", "wperp", "preconditioned", "mixing", "downstream"):
                factor = _identity_factor(ctx)
        else:
            nxt = estimator.plan.next_site(ctx.index)
            weight = nxt.weight.detach().double()
            mask = ctx.act_grad.double()
            if name == "wt":
                factor = masked_jacobian(weight, mask)
            elif name == "wperp" and o.solver == "svd":
                basis, keep = svd_subspace(weight, mask, o.rank, bottom=o.bottom)
                factor = (basis * keep.unsqueeze(1)).transpose(1, 2)
            elif name == "preconditioned" and weight.shape[0] >= weight.shape[1]:
                factor = _identity_factor(ctx)
        out.append(factor)
    return out


def covariance_distance(cov: Tensor) -> Tensor:
    """``||C_b - I||_F`` for second-moment matrices ``cov (..., d, d)`` -> ``(...)``."""
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    return (cov - eye).flatten(-2).norm(dim=-1)


def factor_covariance_distance(factor: Tensor) -> Tensor:
    """``||F_b^T F_b - I||_F`` from factors ``(B, r, d)`` -> ``(B,)``, without forming d x d.

    ``||F^T F - I||^2 = ||F F^T||^2 - 2 ||F||^2 + d`` (the r x r Gram has the same Frobenius
    norm as the d x d one).
    """
    f = factor.double()
    gram = f @ f.transpose(-1, -2)
    sq = gram.flatten(-2).pow(2).sum(-1) - 2 * f.flatten(-2).pow(2).sum(-1) + f.shape[-1]
    return sq.clamp_min(0).sqrt()


def covariance_bias(factor: Tensor, grad: Tensor) -> float:
    """The W̃⊥ paper's bias magnitude (Eq. 17) from a closed-form second moment.

    ``|| (1/B) sum_b (F_b^T F_b - I) g_b ||_2`` with ``factor (B, r, d)``, ``grad (B, d)`` the
    true per-example ``dl_b/ds_i``.
    """
    f, g = factor.double(), grad.double()
    expected = torch.einsum("brd,br->bd", f, torch.einsum("brd,bd->br", f, g))
    return float((expected - g).mean(0).norm())


def _draws_are_independent(estimator: Estimator) -> bool:
    """True when the k tangents of one engine pass are i.i.d., so many can be drawn at once.

    Only isotropic guesses with a sampler that couples its k tangents (orthonormal, angle,
    varying-length) are not: their tangents are drawn in groups of the estimator's k.
    """
    guess = estimator.guess
    if not guess.isotropic:
        return True
    spec = SAMPLERS.get(guess.options.sampler)
    return spec is not None and spec.elementwise


def tangent_second_moments(
    estimator: Estimator, x: Tensor, targets: Tensor, draws: int, max_examples: int | None = None
) -> tuple[list[Tensor | None], int]:
    """Monte-Carlo ``E[u_b u_b^T]`` per site from the estimator's own guess.

    Tangents are drawn by the guess exactly as the engine asks for them (``begin_step`` then
    ``site_tangents`` per site, with the primal pass's contexts), without JVPs. Advances the
    estimator's generator.

    Returns a list of float64 ``(B', d_i, d_i)`` (B' = min(B, max_examples); None at sites the
    guess leaves unperturbed) and the number of tangents actually drawn (>= draws).
    """
    if draws < 1:
        raise ValueError(f"draws must be >= 1; got {draws}")
    guess, plan, gen = estimator.guess, estimator.plan, estimator.generator
    if guess.space != "activity":
        raise ValueError(
            f"guess {estimator.guess_name!r} draws weight-space tangents over all parameters; "
            "the tangent covariance is defined per site for activity-space guesses"
        )
    contexts = site_contexts(plan, x, targets, estimator.loss_fn)
    batch = x.shape[0]
    n = batch if max_examples is None else min(batch, max_examples)
    acc: list[Tensor | None] = [None] * len(contexts)
    # i.i.d. tangents are drawn many at a time; coupled ones exactly as the estimator groups them
    independent = _draws_are_independent(estimator)
    done = 0
    with torch.no_grad():
        while done < draws:
            k = min(256, draws - done) if independent else estimator.num_tangents
            guess.begin_step(plan, batch, k, gen)
            for i, ctx in enumerate(contexts):
                u = guess.site_tangents(ctx, k, gen)
                if u is None:
                    continue
                u = u[:, :n].double()
                moment = torch.einsum("kbi,kbj->bij", u, u)
                acc[i] = moment if acc[i] is None else acc[i] + moment
            done += k
    return [None if a is None else a / done for a in acc], done


def tangent_covariance(
    estimator: Estimator,
    x: Tensor,
    targets: Tensor,
    draws: int = 1000,
    max_examples: int | None = 64,
) -> dict:
    """``||E[u u^T] - I||_F`` of the guess's tangents at every site, averaged over examples.

    "Covariance" is the second moment ``E[u u^T]``, the matrix in the bias formula
    ``E[ĝ] - g = (E[u u^T] - I) g``; it equals the covariance for zero-mean guesses.

    Returns ``{"draws", "examples", "layers": [{"layer", "width", "frobenius",
    "frobenius_over_d", "closed_form", "closed_form_over_d"}]}``. ``frobenius`` is the mean over
    examples of the per-example norm from ``draws`` tangents (Monte-Carlo noise about
    ``d / sqrt(draws)`` for isotropic tangents); ``frobenius_over_d`` divides by the width, the
    normalisation of the W̃⊥ paper's Table 2 (its code's ``sqrt(mean((Cov - I)^2))``).
    ``closed_form`` is the exact value where :func:`closed_form_covariance_factor` knows the law,
    else None.
    """
    moments, done = tangent_second_moments(estimator, x, targets, draws, max_examples)
    factors = closed_form_covariance_factor(estimator, x, targets)
    n = x.shape[0] if max_examples is None else min(x.shape[0], max_examples)
    layers = []
    for i, (moment, factor) in enumerate(zip(moments, factors)):
        d = estimator.plan.widths[i]
        if moment is None:
            moment = torch.zeros(n, d, d, dtype=torch.float64)
        emp = float(covariance_distance(moment).mean())
        exact = None if factor is None else float(factor_covariance_distance(factor[:n]).mean())
        layers.append(
            {
                "layer": i,
                "width": d,
                "frobenius": emp,
                "frobenius_over_d": emp / d,
                "closed_form": exact,
                "closed_form_over_d": None if exact is None else exact / d,
            }
        )
    return {"draws": done, "examples": n, "layers": layers}


# ------------------------------------------------------------------------ bias and variance


class _Moments:
    """Streaming sums over draws of an error ``e_j = ĝ_j - g`` (any fixed shape)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None

    def add(self, e: Tensor) -> None:
        e = e.double()
        self.n += 1
        self.sum = e.clone() if self.sum is None else self.sum + e
        self.sumsq = e * e if self.sumsq is None else self.sumsq + e * e

    @property
    def mean(self) -> Tensor:
        return self.sum / self.n

    @property
    def var(self) -> Tensor:
        """Unbiased variance over draws, elementwise."""
        return (self.sumsq - self.n * self.mean**2).clamp_min(0) / max(self.n - 1, 1)


def _bias_stats(batch_error: _Moments, sq_error: Tensor, draws: int) -> dict[str, float]:
    """Eqs. 17-18 from the draws: bias vector beta = E[error], mse vector m; the vectors are
    over units (activity) or parameter entries (weight)."""
    beta = batch_error.mean
    mse = sq_error / draws
    return {
        "bias": float(beta.norm()),
        "variance": float((mse - beta**2).norm()),
        "bias_se": float((batch_error.var.sum() / draws).sqrt()),
        "mse": float(mse.sum()),
    }


def _combine(rows: list[dict]) -> dict[str, float]:
    """Global numbers from per-layer ones: the vectors concatenate, so norms add in squares."""
    return {
        "bias": math.sqrt(sum(r["bias"] ** 2 for r in rows)),
        "variance": math.sqrt(sum(r["variance"] ** 2 for r in rows)),
        "bias_se": math.sqrt(sum(r["bias_se"] ** 2 for r in rows)),
        "mse": sum(r["mse"] for r in rows),
    }


def bias_variance(
    estimator: Estimator, x: Tensor, targets: Tensor, draws: int = 100, space: str = "auto"
) -> dict:
    """Bias and variance of an estimator on one batch, from ``draws`` independent estimates.

    Each draw is one call of the estimator (``estimate_activity`` in activity space, ``estimate``
    in weight space), so a k-tangent estimator is measured as it trains. Advances its generator.

    Activity space (the W̃⊥ paper's definition, per site i, g_b the true ``dl_b/ds_i`` of
    example b's own loss; the authors' code divides each example's loss by B, so its bias and
    its variance come out B and B^2 times smaller than these):

    * ``bias`` (Eq. 17) ``= ||beta||_2`` with ``beta = (1/B) sum_b (E[ĝ_b] - g_b)``, a vector
      over the units, **averaged over the examples before the norm**; E is the mean over draws
      (the paper uses the closed form ``(Cov - I) g_b``, reported as ``bias_closed_form`` where
      known);
    * ``variance`` (Eq. 18) ``= ||m - beta^2||_2`` with ``m = (1/B) sum_b E[(ĝ_b - g_b)^2]``, the
      elementwise MSE averaged over the examples, and ``beta^2`` elementwise;
    * ``bias_se``: the standard error of the measured ``beta`` (its Monte-Carlo noise floor,
      shrinking like 1/sqrt(draws)); a bias well above it is real;
    * ``mse``: ``sum(m)``; per example (not batch-averaged before the norm):
      ``bias_per_example = mean_b ||E[ĝ_b] - g_b||`` and
      ``variance_per_example = mean_b sum_units Var(ĝ_b)``; ``grad_norm = ||(1/B) sum_b g_b||``.

    Weight space (any guess; per parameter tensor under ``params``, per layer with the weight and
    bias entries together): the same formulas without the example axis, over the entries of the
    batch's gradient g: ``bias = ||E[ĝ] - g||``, ``variance = ||E[(ĝ - g)^2] - (E[ĝ] - g)^2||``,
    ``grad_norm = ||g||``.

    Args:
        space: ``activity``, ``weight`` or ``auto`` (activity for activity-space guesses).

    Returns:
        ``{"space", "draws", "bias", "variance", "bias_se", "mse", "layers": [per layer]}``.
    """
    if draws < 2:
        raise ValueError(f"bias_variance needs draws >= 2 to measure a variance; got {draws}")
    spaces = ("auto", "activity", "weight")
    if space not in spaces:
        raise ValueError(f"unknown space {space!r}; choose one of {list(spaces)}")
    if space == "auto":
        space = "activity" if estimator.guess.space == "activity" else "weight"
    if space == "activity":
        if estimator.guess.space != "activity":
            raise ValueError(
                f"guess {estimator.guess_name!r} is not an activity-space guess; use space='weight'"
            )
        return _activity_bias_variance(estimator, x, targets, draws)
    return _weight_bias_variance(estimator, x, targets, draws)


def _activity_bias_variance(estimator: Estimator, x: Tensor, targets: Tensor, draws: int) -> dict:
    plan = estimator.plan
    true = [g.double() for g in activity_gradients(estimator.model, x, targets, estimator.loss_fn)]
    batch_error = [_Moments() for _ in true]
    example_error = [_Moments() for _ in true]
    sq_error = [torch.zeros(g.shape[-1], dtype=torch.float64) for g in true]
    for _ in range(draws):
        _, estimates, _ = estimator.estimate_activity(x, targets)
        for i, (est, g) in enumerate(zip(estimates, true)):
            err = est.double() - g  # (B, d)
            batch_error[i].add(err.mean(0))
            example_error[i].add(err)
            sq_error[i] += (err**2).mean(0)
    factors = closed_form_covariance_factor(estimator, x, targets)
    layers = []
    for i, g in enumerate(true):
        row: dict = {"layer": i, "width": plan.widths[i]}
        row.update(_bias_stats(batch_error[i], sq_error[i], draws))
        ex = example_error[i]
        row["bias_closed_form"] = None if factors[i] is None else covariance_bias(factors[i], g)
        row["bias_per_example"] = float(ex.mean.norm(dim=-1).mean())
        row["variance_per_example"] = float(ex.var.sum(-1).mean())
        row["grad_norm"] = float(g.mean(0).norm())
        layers.append(row)
    return {"space": "activity", "draws": draws, **_combine(layers), "layers": layers}


def _weight_bias_variance(estimator: Estimator, x: Tensor, targets: Tensor, draws: int) -> dict:
    plan = estimator.plan
    _, true = weight_gradients(estimator.model, x, targets, estimator.loss_fn, plan)
    params = list(true)
    error = {p: _Moments() for p in params}
    sq_error = {p: torch.zeros_like(true[p], dtype=torch.float64) for p in params}
    for _ in range(draws):
        _, est = estimator.estimate(x, targets)
        for p in params:
            err = est[p].double() - true[p].double()
            error[p].add(err)
            sq_error[p] += err**2
    layers = []
    for site in plan.sites:
        kinds = [
            (kind, p)
            for kind, p in (("weight", site.module.weight), ("bias", site.module.bias))
            if p is not None and p in true
        ]
        if not kinds:
            continue
        per_param = {kind: _bias_stats(error[p], sq_error[p], draws) for kind, p in kinds}
        row: dict = {"layer": site.index, "shape": list(site.module.weight.shape)}
        row.update(_combine(list(per_param.values())))
        row["grad_norm"] = float(torch.cat([true[p].double().flatten() for _, p in kinds]).norm())
        row["params"] = per_param
        layers.append(row)
    return {"space": "weight", "draws": draws, **_combine(layers), "layers": layers}


# ---------------------------------------------------------------------------------- overlap


def subspace_overlap(weight: Tensor, mask: Tensor, grad: Tensor) -> tuple[Tensor, Tensor]:
    """Squared overlap of ``g_b`` with the top-k right singular subspace of ``W~_b``, every k.

    Args:
        weight: the next layer's weight ``W_{i+1}`` (d2, d1).
        mask: ``phi'(s_i)`` per example (B, d1); ``W~_b = W_{i+1} diag(mask_b)``.
        grad: true ``dl_b/ds_i`` (B, d1).

    Returns:
        ``overlap_sq (B, r)`` with ``overlap_sq[b, k-1] = ||V_k V_k^T g_b||^2 / ||g_b||^2`` for
        k = 1..r (r = min(d2, d1); singular directions below the float32 rank tolerance count as
        absent, so the curve is flat past the numerical rank; NaN where ``g_b = 0``), and the
        numerical rank of every ``W~_b`` (B,).
    """
    from .guesses.subspace import svd_subspace

    basis, keep = svd_subspace(weight.double(), mask.double(), None)  # (B, d1, r), (B, r)
    g = grad.double()
    coords = torch.einsum("bdr,bd->br", basis, g) * keep
    captured = (coords**2).cumsum(-1)
    total = (g**2).sum(-1, keepdim=True)
    overlap_sq = torch.where(total > 0, captured / total.clamp_min(1e-300), math.nan)
    return overlap_sq.clamp(max=1.0), keep.sum(-1)


def overlap_curves(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    plan: SitePlan | None = None,
    max_examples: int | None = None,
) -> list[dict]:
    """The W̃⊥ paper's Fig. 1: overlap of the true gradient with the top-k subspace of W̃.

    For every site with a next layer, ``overlap[k-1]`` is the mean over examples of Eq. 19,
    ``||V_k V_k^T g_b|| / ||g_b||`` (V_k the right singular vectors; the paper's ``U_k`` is a
    notation slip), and ``overlap_sq[k-1]`` the mean of its square (what the authors' code
    plots). Examples with a zero gradient are left out. For an MLP the true gradient lies in the
    row space of W̃, so both reach 1 at the numerical rank.

    Returns ``[{"layer", "rank", "overlap": [..r], "overlap_sq": [..r]}]`` (``rank`` is the mean
    numerical rank of W̃_b, the figure's legend).
    """
    plan = plan or find_sites(model)
    contexts = site_contexts(plan, x, targets, loss_fn)
    grads = activity_gradients(model, x, targets, loss_fn, plan)
    n = x.shape[0] if max_examples is None else min(x.shape[0], max_examples)
    out = []
    for ctx, g in zip(contexts[:-1], grads[:-1]):
        if ctx.act_grad is None:
            raise ModelNotSupportedError(
                f"overlap needs elementwise activations between linear layers; site {ctx.index} "
                f"is followed by {[type(m).__name__ for m in ctx.site.followers]}"
            )
        weight = plan.next_site(ctx.index).weight.detach()
        sq, rank = subspace_overlap(weight, ctx.act_grad[:n], g[:n])
        valid = ~torch.isnan(sq[:, 0])
        out.append(
            {
                "layer": ctx.index,
                "rank": float(rank.double().mean()),
                "overlap": sq[valid].sqrt().mean(0).tolist(),
                "overlap_sq": sq[valid].mean(0).tolist(),
            }
        )
    return out


# --------------------------------------------------------------------------- effective rank


def effective_ranks(matrices: Tensor) -> Tensor:
    """Effective rank (Roy & Vetterli 2007) of every matrix in ``(..., m, n)`` -> ``(...)``.

    ``exp(H(p))`` with ``p_j = sigma_j / sum sigma`` the normalised singular values and H the
    Shannon entropy (``0 log 0 = 0``); between 1 and rank. A zero matrix gets 0.
    """
    if matrices.dim() < 2:
        raise ValueError(f"effective rank needs matrices (..., m, n); got shape {matrices.shape}")
    s = torch.linalg.svdvals(matrices.double())
    total = s.sum(-1, keepdim=True)
    p = s / total.clamp_min(1e-300)
    entropy = -torch.where(p > 0, p * p.clamp_min(1e-300).log(), torch.zeros_like(p)).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


def effective_rank(matrix: Tensor) -> float:
    """Effective rank of one matrix (m, n); see :func:`effective_ranks`."""
    if matrix.dim() != 2:
        raise ValueError(f"effective_rank takes one matrix (m, n); got shape {matrix.shape}")
    return float(effective_ranks(matrix))


def weight_effective_ranks(model: nn.Module, plan: SitePlan | None = None) -> list[dict]:
    """``[{"layer", "shape", "effective_rank", "rank"}]`` for every linear layer's weight."""
    plan = plan or find_sites(model)
    out = []
    for site in plan.sites:
        w = site.weight.detach()
        out.append(
            {
                "layer": site.index,
                "shape": list(w.shape),
                "effective_rank": effective_rank(w),
                "rank": int(torch.linalg.matrix_rank(w.double())),
            }
        )
    return out


# ------------------------------------------------------------------------ Jacobian spectra


def _site_map(plan: SitePlan, start: int, layers: int):
    """``s_start -> s_{start+layers}`` for one example (d,), with detached weights."""
    chain = plan.sites[start : start + layers + 1]

    def f(s: Tensor) -> Tensor:
        h = s
        for prev, site in zip(chain[:-1], chain[1:]):
            for m in prev.followers:
                h = m(h)
            b = site.bias.detach() if site.bias is not None else None
            h = torch.nn.functional.linear(h, site.weight.detach(), b)
        return h

    return f


def jacobian_spectra(
    model: nn.Module,
    x: Tensor,
    layers: Iterable[int] = (1, 2, 3, 4),
    plan: SitePlan | None = None,
    max_examples: int | None = 64,
) -> list[dict]:
    """Singular values of ``J_{s_i -> s_{i+l}}`` per example (Singhal et al. 2023, Fig. 7).

    The Jacobians are formed by forward-mode AD (``jacfwd``) through the l layers after site i.
    For every site i and every l with ``i + l`` a site, summarised over the first
    ``max_examples`` examples:

    ``{"layer": i, "layers": l, "shape": [d_{i+l}, d_i], "singular_values": mean over examples
    of the sorted sigma_j, "normalized": mean of sigma_j / sigma_1, "sigma_max": mean sigma_1,
    "effective_rank": mean effective rank}``.
    """
    plan = plan or find_sites(model)
    ls = sorted(set(layers))
    bad = [v for v in ls if not isinstance(v, int) or v < 1]
    if bad:
        raise ValueError(f"Jacobian spectra need layer counts l >= 1; got {bad}")
    n = x.shape[0] if max_examples is None else min(x.shape[0], max_examples)
    with torch.no_grad():
        h = x[:n]
        for m in plan.prefix:
            h = m(h)
        preacts = []
        for site in plan.sites:
            s = site.module(h)
            preacts.append(s)
            h = s
            for m in site.followers:
                h = m(h)
    out = []
    for i in range(len(plan)):
        for depth in ls:
            if i + depth >= len(plan):
                continue
            jac = vmap(jacfwd(_site_map(plan, i, depth)))(preacts[i])  # (n, d_{i+l}, d_i)
            sv = torch.linalg.svdvals(jac.double())
            top = sv[:, :1]
            normalized = torch.where(top > 0, sv / top.clamp_min(1e-300), torch.zeros_like(sv))
            out.append(
                {
                    "layer": i,
                    "layers": depth,
                    "shape": list(jac.shape[1:]),
                    "singular_values": sv.mean(0).tolist(),
                    "normalized": normalized.mean(0).tolist(),
                    "sigma_max": float(top.mean()),
                    "effective_rank": float(effective_ranks(jac).mean()),
                }
            )
    return out


# ---------------------------------------------------------------------- 1-step effectiveness


def _losses_after_step(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    direction: dict[nn.Parameter, Tensor],
    step_sizes: Sequence[float],
) -> list[float]:
    """Mean loss at ``theta - lr * direction`` for every lr, evaluated functionally: the model's
    own parameters are never written."""
    named = list(model.named_parameters())
    out = []
    with torch.no_grad():
        for lr in step_sizes:
            params = {name: p - lr * direction[p] if p in direction else p for name, p in named}
            out.append(float(loss_fn(functional_call(model, params, (x,)), targets).mean()))
    return out


def one_step_effectiveness(
    model: nn.Module,
    estimator: Estimator,
    x: Tensor,
    targets: Tensor,
    step_sizes: Sequence[float] = DEFAULT_STEP_SIZES,
    draws: int = 1,
) -> dict:
    """Loss decrease of one plain SGD step along the estimate, relative to backprop's.

    For each of ``draws`` estimates ĝ and for the true gradient g, the step ``theta - lr * ĝ`` is
    tried at every step size and the largest decrease of the batch's mean loss is kept (Singhal
    et al. 2023: "the ratio of loss reduction due to the method's guess compared to backprop's",
    each at its best step size). The effectiveness is ``best decrease(ĝ) / best decrease(g)``:
    1 for backprop, negative when every step along the estimate raises the loss, and above 1
    when an estimate longer than the gradient gains from the grid's coarseness. The model is
    evaluated functionally, so its parameters and ``.grad`` are untouched.

    Returns ``{"step_sizes", "loss", "backprop_decrease", "backprop_step", "decrease",
    "effectiveness", "effectiveness_std", "best_steps", "draws"}`` (``effectiveness`` None when
    backprop itself cannot lower the loss on this grid).
    """
    if not step_sizes or any(not (lr > 0) for lr in step_sizes):
        raise ValueError(f"step sizes must be positive numbers, at least one; got {step_sizes}")
    if draws < 1:
        raise ValueError(f"draws must be >= 1; got {draws}")
    if estimator.model is not model:
        raise ValueError("the estimator was built for a different model")
    loss_fn = estimator.loss_fn
    loss0, true = weight_gradients(model, x, targets, loss_fn, estimator.plan)
    bp = [loss0 - v for v in _losses_after_step(model, x, targets, loss_fn, true, step_sizes)]
    bp_best = max(bp)
    decreases, steps = [], []
    for _ in range(draws):
        _, est = estimator.estimate(x, targets)
        dec = [loss0 - v for v in _losses_after_step(model, x, targets, loss_fn, est, step_sizes)]
        best = max(range(len(dec)), key=dec.__getitem__)
        decreases.append(dec[best])
        steps.append(step_sizes[best])
    ratios = [d / bp_best for d in decreases] if bp_best > 0 else None
    mean_ratio = sum(ratios) / len(ratios) if ratios else None
    std = (
        math.sqrt(sum((r - mean_ratio) ** 2 for r in ratios) / (len(ratios) - 1))
        if ratios and len(ratios) > 1
        else None
    )
    return {
        "step_sizes": list(step_sizes),
        "loss": loss0,
        "backprop_decrease": bp_best,
        "backprop_step": step_sizes[bp.index(bp_best)],
        "decrease": sum(decreases) / len(decreases),
        "effectiveness": mean_ratio,
        "effectiveness_std": std,
        "best_steps": steps,
        "draws": draws,
    }


# ---------------------------------------------------------------------------------- probe


def _check_extras(extras: Iterable[str]) -> list[str]:
    chosen = list(extras)
    if "all" in chosen:
        return list(PROBE_EXTRAS)
    bad = [e for e in chosen if e not in PROBE_EXTRAS]
    if bad:
        raise ValueError(f"unknown probe measurement(s) {bad}; choose from {list(PROBE_EXTRAS)}")
    return chosen


def probe_model(
    model: nn.Module,
    x: Tensor,
    targets: Tensor,
    loss_fn: LossFn,
    extras: Iterable[str] = MODEL_EXTRAS,
    *,
    max_examples: int | None = 64,
    jacobian_layers: Iterable[int] = (1, 2, 3, 4),
) -> dict:
    """The estimator-independent measurements among ``extras`` (overlap, effective_rank,
    jacobian). Measurements the model's structure does not allow are listed under
    ``"skipped"`` with the reason instead of failing the probe."""
    chosen = [e for e in _check_extras(extras) if e in MODEL_EXTRAS]
    plan = find_sites(model)
    out: dict = {}
    skipped: dict[str, str] = {}
    for name in chosen:
        try:
            if name == "overlap":
                out[name] = overlap_curves(model, x, targets, loss_fn, plan, max_examples)
            elif name == "effective_rank":
                out[name] = weight_effective_ranks(model, plan)
            elif name == "jacobian":
                out[name] = jacobian_spectra(model, x, jacobian_layers, plan, max_examples)
        except ModelNotSupportedError as e:
            skipped[name] = str(e)
    if skipped:
        out["skipped"] = skipped
    return out


def probe(
    model: nn.Module,
    estimator: Estimator,
    x: Tensor,
    targets: Tensor,
    *,
    extras: Iterable[str] = (),
    draws: int = 1,
    variance_draws: int = 100,
    covariance_draws: int = 1000,
    max_examples: int | None = 64,
    step_sizes: Sequence[float] = DEFAULT_STEP_SIZES,
    jacobian_layers: Iterable[int] = (1, 2, 3, 4),
) -> dict:
    """Compare an estimator with the backprop oracle on one batch.

    Always (cheap: ``draws`` estimates and one backward pass): the batch's mean ``loss`` and
    :func:`gradient_agreement` of the weight-gradient estimate (``cosine``, ``rel_norm`` and
    ``layers``), averaged over ``draws`` estimates (with ``cosine_std`` when draws > 1).

    On request, ``extras`` names any of :data:`PROBE_EXTRAS` (or ``"all"``), each stored under
    its name: ``bias_variance`` (:func:`bias_variance`, ``variance_draws`` estimates),
    ``covariance`` (:func:`tangent_covariance`, ``covariance_draws`` tangents), ``one_step``
    (:func:`one_step_effectiveness`, ``draws`` estimates), and the model measurements of
    :func:`probe_model`. A measurement the guess or model does not allow is listed under
    ``"skipped"`` with the reason.

    The estimator's generator advances; give a training run's probe its own estimator so probing
    does not change the training trajectory.
    """
    if estimator.model is not model:
        raise ValueError("the estimator was built for a different model")
    if draws < 1:
        raise ValueError(f"draws must be >= 1; got {draws}")
    chosen = _check_extras(extras)
    loss, true = weight_gradients(model, x, targets, estimator.loss_fn, estimator.plan)
    runs = []
    for _ in range(draws):
        _, est = estimator.estimate(x, targets)
        runs.append(gradient_agreement(estimator.plan, est, true))
    out: dict = {
        "guess": estimator.guess_name,
        "tangents": estimator.num_tangents,
        "aggregate": estimator.aggregation,
        "examples": int(x.shape[0]),
        "loss": loss,
        **_mean_agreement(runs),
    }
    skipped: dict[str, str] = {}
    if "bias_variance" in chosen:
        out["bias_variance"] = bias_variance(estimator, x, targets, variance_draws)
    if "covariance" in chosen:
        if estimator.guess.space == "activity":
            out["covariance"] = tangent_covariance(
                estimator, x, targets, covariance_draws, max_examples
            )
        else:
            skipped["covariance"] = (
                f"guess {estimator.guess_name!r} has no per-site activity tangents"
            )
    if "one_step" in chosen:
        out["one_step"] = one_step_effectiveness(model, estimator, x, targets, step_sizes, draws)
    model_part = probe_model(
        model,
        x,
        targets,
        estimator.loss_fn,
        [e for e in chosen if e in MODEL_EXTRAS],
        max_examples=max_examples,
        jacobian_layers=jacobian_layers,
    )
    skipped.update(model_part.pop("skipped", {}))
    out.update(model_part)
    if skipped:
        out["skipped"] = skipped
    return out


def _mean_agreement(runs: list[dict]) -> dict:
    """Average the agreement dicts of several draws (per layer and parameter too)."""

    def mean(values: list) -> float | None:
        vals = [v for v in values if v is not None]
        return sum(vals) / len(vals) if vals else None

    first = runs[0]
    out: dict = {
        "cosine": mean([r["cosine"] for r in runs]),
        "rel_norm": mean([r["rel_norm"] for r in runs]),
    }
    if len(runs) > 1:
        c = [r["cosine"] for r in runs]
        m = out["cosine"]
        out["cosine_std"] = math.sqrt(sum((v - m) ** 2 for v in c) / (len(c) - 1))
    layers = []
    for j, layer in enumerate(first["layers"]):
        row = {"layer": layer["layer"], "shape": layer["shape"]}
        for key in ("cosine", "rel_norm"):
            row[key] = mean([r["layers"][j][key] for r in runs])
        row["params"] = {
            kind: {
                key: mean([r["layers"][j]["params"][kind][key] for r in runs])
                for key in ("cosine", "rel_norm")
            }
            for kind in layer["params"]
        }
        layers.append(row)
    out["layers"] = layers
    return out
