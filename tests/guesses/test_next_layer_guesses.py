"""Next-layer guesses on conv and token-wise sites against dense references.

Each guess's tangents at a conv (or token-wise Linear) site are checked against the same law
built from the dense per-example Jacobian autograd gives (``reference_jacobian``): Wᵀ and
downstream exactly, for the same noise; W̃⊥'s subspace against the SVD's; and the bias
formula of each by Monte-Carlo, ``E[(g . u) u] = C g`` with C = W̃ᵀW̃ (Wᵀ), V_kV_kᵀ (W̃⊥) or the
row-space projector (W̃ᴾ), within 5 standard errors per coordinate. The matrix-free W̃⊥ solver
is checked by the share of the exact top-10 energy it captures on a 256 -> 64 conv site
(measured at the defaults: 0.992-0.997 per example; 0.9998 or more with 4 more iterations). On
a freshly initialised LeNet's first conv at 28 x 28 (4,704 -> 3,136, a flat spectrum) it
captured 0.84 of what 30 iterations find.
"""

import pytest
import torch
from next_layer_cases import CASES, contexts, reference_jacobian
from torch import nn

from forwardgrad import Estimator
from forwardgrad.core.sites import ModelNotSupportedError
from forwardgrad.guesses import GuessOptions, make_guess
from forwardgrad.models import vit


def structured(ctxs):
    return [c for c in ctxs if c.next_layer is not None]


def flat(u):
    return u.reshape(u.shape[0], u.shape[1], -1)  # (k, B, n)


def draw(name, ctx, k, seed=3, **options):
    guess = make_guess(name, GuessOptions(**options))
    return guess.site_tangents(ctx, k, torch.Generator().manual_seed(seed))


def assert_mean_is(samples, expected, sigmas=5.0):
    """The mean over dim 0 of ``samples`` equals ``expected`` within ``sigmas`` standard
    errors per coordinate (and a small floor for coordinates with zero variance)."""
    mean = samples.mean(0)
    se = samples.std(0) / samples.shape[0] ** 0.5
    assert ((mean - expected).abs() <= sigmas * se + 1e-9).all(), float(
        ((mean - expected).abs() / (se + 1e-12)).max()
    )


def jvp_weighted(u, g):
    """Samples of ``(g . u) u`` per example: (k, B, n)."""
    return (u * g).sum(-1, keepdim=True) * u


@pytest.mark.parametrize("name", list(CASES))
def test_wt_is_the_next_layers_transpose_of_the_same_noise(name):
    _, _, ctxs = contexts(name)
    for ctx in structured(ctxs):
        u = draw("wt", ctx, 4)
        nl = ctx.next_layer
        eps = nl.noise(4, torch.Generator().manual_seed(3), torch.float64)
        ref = torch.einsum("bmn,kbm->kbn", reference_jacobian(ctx), eps.reshape(4, 3, -1))
        assert u.shape == (4, *ctx.preact.shape)
        assert torch.allclose(flat(u), ref, atol=1e-12), ctx.key


@pytest.mark.parametrize("name", ["conv2d", "token-wise"])
def test_wt_bias_matches_its_formula_by_monte_carlo(name):
    _, _, ctxs = contexts(name)
    ctx = structured(ctxs)[0]
    jac = reference_jacobian(ctx)
    g = torch.randn(3, jac.shape[-1], generator=torch.Generator().manual_seed(7), dtype=jac.dtype)
    u = flat(draw("wt", ctx, 6000))
    expected = torch.einsum("bmn,bm->bn", jac, torch.einsum("bmn,bn->bm", jac, g))  # W~^T W~ g
    assert_mean_is(jvp_weighted(u, g), expected)


def top_projector(jac, k):
    _, _, vh = torch.linalg.svd(jac)
    v = vh[:, :k].transpose(1, 2)
    return v @ v.transpose(1, 2)


@pytest.mark.parametrize("name", list(CASES))
def test_wperp_svd_is_the_exact_top_k_subspace(name):
    _, _, ctxs = contexts(name)
    for ctx in structured(ctxs):
        jac = reference_jacobian(ctx)
        k = min(4, *jac.shape[-2:])
        u = flat(draw("wperp", ctx, 64, rank=k, solver="svd"))
        proj = top_projector(jac, k)
        # every tangent lies in the top-k subspace, and 64 of them span it
        assert torch.allclose(torch.einsum("bmn,kbn->kbm", proj, u), u, atol=1e-10), ctx.key
        span = torch.linalg.matrix_rank(u.permute(1, 2, 0), atol=1e-8)
        assert (span == k).all()


def test_wperp_bias_matches_its_formula_by_monte_carlo():
    _, _, ctxs = contexts("conv2d")
    ctx = structured(ctxs)[0]
    jac = reference_jacobian(ctx)
    g = torch.randn(3, jac.shape[-1], generator=torch.Generator().manual_seed(7), dtype=jac.dtype)
    u = flat(draw("wperp", ctx, 6000, rank=6, solver="svd"))
    assert_mean_is(jvp_weighted(u, g), torch.einsum("bmn,bn->bm", top_projector(jac, 6), g))


def captured_energy(jac, basis, k):
    """Share of the exact top-k energy sum(sigma_i^2, i <= k) that ``basis`` (B, n, k)
    captures, ||W~ V||_F^2, per example."""
    svals = torch.linalg.svdvals(jac)
    return (jac @ basis).pow(2).sum((1, 2)) / svals[:, :k].pow(2).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matrix_free_wperp_captures_most_of_the_exact_energy(dtype):
    _, _, ctxs = contexts("conv2d", dtype, b=4)
    ctx = structured(ctxs)[0]  # 256 -> 64 per example: the operator path (16 < 64)
    jac = reference_jacobian(ctx).double()
    guess = make_guess("wperp", GuessOptions(rank=10))
    basis, keep = guess._subspace(ctx, torch.Generator().manual_seed(0))
    assert keep is None and basis.dtype == dtype and basis.shape == (4, 256, 10)
    gram = basis.transpose(1, 2).double() @ basis.double()
    assert torch.allclose(gram, torch.eye(10, dtype=torch.float64).expand(4, -1, -1), atol=1e-4)
    energy = captured_energy(jac, basis.double(), 10)
    assert (energy >= 0.98).all() and (energy <= 1 + 1e-5).all(), energy
    refined = make_guess("wperp", GuessOptions(rank=10, power_iterations=4))
    basis, _ = refined._subspace(ctx, torch.Generator().manual_seed(0))
    assert (captured_energy(jac, basis.double(), 10) >= 0.999).all()


def test_wperp_newton_schulz_stays_in_the_row_space():
    _, _, ctxs = contexts("conv2d")
    for ctx in structured(ctxs):
        jac = reference_jacobian(ctx)
        u = flat(draw("wperp", ctx, 8, rank=4, solver="newton-schulz"))
        row = torch.linalg.pinv(jac) @ jac  # projector onto the row space
        assert torch.allclose(torch.einsum("bmn,kbn->kbm", row, u), u, atol=1e-8), ctx.key
        assert (u.norm(dim=-1) > 0).all()


def test_preconditioned_is_a_gaussian_on_the_row_space():
    # token-wise: 4 tokens x 6 -> 4 x 5 per example, of full row rank 20 (GELU masks no unit;
    # where W~ has zero singular values the closed form V_r U_r^T eps also spans null
    # directions of the reduced SVD, as the paper's sigma-regularised formula does)
    _, _, ctxs = contexts("token-wise")
    ctx = structured(ctxs)[0]
    jac = reference_jacobian(ctx)
    assert (torch.linalg.matrix_rank(jac) == 20).all()
    row = torch.linalg.pinv(jac) @ jac
    g = torch.randn(3, jac.shape[-1], generator=torch.Generator().manual_seed(7), dtype=jac.dtype)
    u = flat(draw("preconditioned", ctx, 6000))
    assert torch.allclose(torch.einsum("bmn,kbn->kbm", row, u), u, atol=1e-8)
    assert_mean_is(jvp_weighted(u, g), torch.einsum("bmn,bn->bm", row, g))


@pytest.mark.parametrize("layers", [1, 2])
def test_downstream_is_the_vjp_of_the_next_layers_for_the_same_noise(layers):
    _, _, ctxs = contexts("conv2d")
    ctx = structured(ctxs)[0]
    u = draw("downstream", ctx, 3, layers=layers)
    f = ctx.path.downstream(layers)
    out = f(ctx.preact)
    eps = torch.randn((3, *out.shape), generator=torch.Generator().manual_seed(3), dtype=out.dtype)
    full = torch.autograd.functional.jacobian(f, ctx.preact)  # (*out, *in)
    jac = full.reshape(out.numel(), ctx.preact.numel())
    ref = eps.reshape(3, -1) @ jac
    assert torch.allclose(u.reshape(3, -1), ref, atol=1e-12)


def test_mixing_on_a_conv_site_masks_and_scales_whole_activities():
    _, _, ctxs = contexts("conv2d")
    ctx = structured(ctxs)[0]
    u = draw("mixing", ctx, 5)
    active = ctx.preact > 0  # the ReLU's mask
    assert (u[:, ~active] == 0).all()
    norms = flat(u).pow(2).sum(-1)
    assert torch.allclose(norms, active.reshape(3, -1).sum(-1).double().expand(5, -1))


def tiny_vit():
    torch.manual_seed(0)
    return vit(8, 1, 4, patch_size=4, depth=1, heads=2, dim=8, mlp_dim=16)


def test_sites_without_a_next_layer_are_refused_or_fall_back_when_asked():
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 4, (4,))
    with pytest.raises(
        ModelNotSupportedError,
        match=r"guess 'wt' .* site 'embed.proj' has none: its output goes to flatten\(\)",
    ):
        Estimator(tiny_vit(), "wt").estimate(x, y)
    est = Estimator(tiny_vit(), "wt", fallback="activation")
    loss, grads = est.estimate(x, y)
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads.values())
    assert "blocks.0.mlp.0" not in est.guess.fallback_sites  # token-wise Linear -> GELU -> Linear
    assert est.guess.fallback_sites[:2] == ["embed.proj", "embed"]
    assert "blocks.0.mlp.3" in est.guess.fallback_sites  # followed by the residual add


@pytest.mark.parametrize("guess", ["mixing", "wt", "downstream", "self-sharpening"])
def test_the_general_engine_gives_the_fused_chains_tangents(guess):
    # mixing mixes phi(s) on both engines (the general one reads phi from the mask module)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3))
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    chain = Estimator(model, guess, tangents=4, seed=1)
    general = Estimator(model, guess, tangents=4, seed=1, sites=[nn.Linear])
    _, a = chain.estimate(x, y)
    _, b = general.estimate(x, y)
    assert chain._engine.plan is not None and general._engine.plan is None
    for p in model.parameters():
        assert torch.allclose(a[p], b[p], atol=1e-6), (guess, p.shape)
