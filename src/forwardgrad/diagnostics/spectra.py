"""Spectral measurements: the overlap of the true gradient with W̃'s top-k subspace (the W̃⊥
paper's Fig. 1), effective ranks of weights, and singular values of downstream Jacobians.

The overlap and the Jacobian spectra are defined for a chain of Linear layers (an MLP); other
models raise :class:`~forwardgrad.core.sites.ModelNotSupportedError` (a probe lists them as
skipped). Effective ranks apply to any model's weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from torch.func import jacfwd, vmap

from ..core.chain import SitePlan, chain_plan
from ..core.context import LossFn
from ..core.oracle import activity_gradients
from .contexts import site_contexts


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
    from ..guesses.subspace import svd_subspace

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
    plan = plan or chain_plan(model)
    contexts = site_contexts(plan, x, targets, loss_fn)
    grads = activity_gradients(model, x, targets, loss_fn, plan)
    n = x.shape[0] if max_examples is None else min(x.shape[0], max_examples)
    out = []
    for ctx, g in zip(contexts[:-1], grads[:-1]):
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


def weight_effective_ranks(model: nn.Module) -> list[dict]:
    """``[{"layer", "name", "shape", "effective_rank", "rank"}]`` for every trainable weight of
    two or more dimensions (a conv kernel read as ``(out, in * kernel)``), in parameter order."""
    out = []
    weights = [(n, p) for n, p in model.named_parameters() if p.dim() >= 2 and p.requires_grad]
    for i, (name, p) in enumerate(weights):
        w = p.detach().reshape(p.shape[0], -1)
        out.append(
            {
                "layer": i,
                "name": name.rpartition(".")[0],
                "shape": list(p.shape),
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
    plan = plan or chain_plan(model)
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
