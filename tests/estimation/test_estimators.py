"""Every guess matches its definition: unbiased ones by Monte-Carlo, biased ones by their formula.

Each Monte-Carlo check compares the mean of N estimates with its expectation coordinate by
coordinate, in units of the standard error: |mean - expected| / SE < Z_MAX everywhere. With a
few hundred coordinates the chance that a correct estimator trips this bound is below 1e-4; a
negative control shows the same check rejects a biased estimator.
"""

import pytest
import torch
from conftest import batch

from forwardgrad import Estimator, chain_plan, mlp
from forwardgrad.core.chain import forward_jvp
from forwardgrad.diagnostics import activity_gradients
from forwardgrad.estimation import cross_entropy_per_example as ce
from forwardgrad.guesses.subspace import masked_jacobian

Z_MAX = 5.0


def mc_tangents(est: Estimator, x, y, draws: int):
    """``draws`` independent one-tangent draws in one batched engine pass.

    Returns the JVPs (draws, B) and the injected tangents per site (draws, B, d_i); draw j's
    one-tangent estimate of dl_b/ds_i is ``jvps[j, b] * tangents[i][j, b]``.
    """
    est.guess.begin_step(est.plan.layout, x.shape[0], draws, est.generator)
    with torch.no_grad():
        res = forward_jvp(
            est.plan,
            x,
            y,
            ce,
            draws,
            site_tangents=lambda ctx: est.guess.site_tangents(ctx, draws, est.generator),
        )
    return res.jvps, res.tangents


def mc_activity(est: Estimator, x, y, draws: int) -> list[torch.Tensor]:
    """Stack of ``draws`` one-tangent activity estimates per site: (draws, B, d_i)."""
    d, tangents = mc_tangents(est, x, y, draws)
    return [d.unsqueeze(-1) * u for u in tangents]


def z_scores(samples: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    n = samples.shape[0]
    # A floor far below any real effect absorbs float64 round-off where both sides are ~0.
    se = samples.std(0) / n**0.5 + 1e-9 * samples.abs().max()
    return (samples.mean(0) - expected).abs() / se


def small_model(out_classes=4):
    torch.manual_seed(1)
    return mlp(6, out_classes, depth=2, width=8).double()


@pytest.mark.parametrize(
    "guess,opts",
    [
        ("activation", {}),
        ("activation-masked", {}),
        ("activation", {"sampler": "rademacher"}),
    ],
)
def test_activity_guesses_unbiased(guess, opts):
    model = small_model()
    x, y = batch(6, 4, 5)
    x = x.double()
    true = activity_gradients(model, x, y, ce)
    est = Estimator(model, guess, tangents=1, seed=0, **opts)
    for samples, g in zip(mc_activity(est, x, y, 20000), true):
        assert z_scores(samples, g).max() < Z_MAX


def test_mean_of_k_tangents_unbiased_and_projection_shrinks_by_k_over_n():
    from forwardgrad import aggregate

    model = small_model()
    x, y = batch(6, 4, 3)
    x = x.double()
    true = activity_gradients(model, x, y, ce)
    k, groups = 4, 5000
    est = Estimator(model, "activation")
    d, tangents = mc_tangents(est, x, y, k * groups)
    d = d.view(k, groups, -1)
    v = torch.cat(tangents, -1).view(k, groups, x.shape[0], -1)  # (k, G, B, n), n = 8 + 8 + 4
    n = v.shape[-1]
    widths = [t.shape[-1] for t in tangents]
    mean = aggregate("mean", v, d).split(widths, -1)
    for samples, g in zip(mean, true):
        assert z_scores(samples, g).max() < Z_MAX
    # Projection onto a uniformly random k-dim subspace: E[P_U g] = (k / n) g.
    proj = aggregate("projection", v, d).split(widths, -1)
    for samples, g in zip(proj, true):
        assert z_scores(samples, g * k / n).max() < Z_MAX


def test_negative_control_rejects_biased_estimator():
    model = small_model()
    x, y = batch(6, 4, 5)
    x = x.double()
    true = activity_gradients(model, x, y, ce)
    est = Estimator(model, "wt")
    samples = mc_activity(est, x, y, 20000)
    assert z_scores(samples[0], true[0]).max() > 3 * Z_MAX  # W^T is biased at the first site


def test_weight_perturbation_unbiased():
    model = small_model()
    x, y = batch(6, 4, 5)
    x = x.double()
    plan = chain_plan(model)
    loss = ce(model(x), y).mean()
    true = torch.cat(
        [g.flatten() for g in torch.autograd.grad(loss, [p for _, p in plan.parameters()])]
    )
    est = Estimator(model, "weight")
    draws = 20000
    v = est.guess.weight_tangents(plan.parameters(), draws, est.generator)
    with torch.no_grad():
        res = forward_jvp(plan, x, y, ce, draws, weight_tangents=v)
    flat = torch.cat([v[n].flatten(1) for n, _ in plan.parameters()], 1)  # (draws, N)
    samples = res.jvps.mean(1, keepdim=True) * flat  # one-tangent estimates of the mean loss
    assert z_scores(samples, true).max() < Z_MAX


def test_preconditioned_unbiased_when_next_layers_not_narrower():
    torch.manual_seed(2)
    model = mlp(
        5, 9, depth=2, width=7
    ).double()  # 5 -> 7 -> 7 -> 9: every W_{i+1} is square or tall
    x, y = batch(5, 9, 4)
    x = x.double()
    true = activity_gradients(model, x, y, ce)
    est = Estimator(model, "preconditioned")
    for samples, g in zip(mc_activity(est, x, y, 20000), true):
        assert z_scores(samples, g).max() < Z_MAX


def _expected_with_covariance(cov: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bij,bj->bi", cov, g)


def test_wt_matches_its_bias_formula():
    model = small_model()
    x, y = batch(6, 4, 5)
    x = x.double()
    plan = chain_plan(model)
    true = activity_gradients(model, x, y, ce)
    samples = mc_activity(Estimator(model, "wt"), x, y, 20000)
    for i, site in enumerate(plan.sites[:-1]):
        with torch.no_grad():
            s = site.module(plan.prefix[0](x) if plan.prefix else _site_input(model, x, i))
        mask = (s > 0).double()
        jac = masked_jacobian(plan.sites[i + 1].weight.detach(), mask)  # W~ per example
        cov = jac.transpose(1, 2) @ jac  # Cov(u) = W~^T W~; E[g_hat] = Cov g
        assert z_scores(samples[i], _expected_with_covariance(cov, true[i])).max() < Z_MAX
    assert z_scores(samples[-1], true[-1]).max() < Z_MAX  # last site: isotropic, unbiased


def _site_input(model, x, i):
    plan = chain_plan(model)
    h = x
    for site in plan.sites[:i]:
        h = site.module(h)
        for m in site.followers:
            h = m(h)
    return h


def _wperp_expected_projector(model, x, i, k):
    plan = chain_plan(model)
    s = plan.sites[i].module(_site_input(model, x, i)).detach()
    jac = masked_jacobian(plan.sites[i + 1].weight.detach(), (s > 0).double())
    _, _, vh = torch.linalg.svd(jac, full_matrices=False)
    vk = vh[:, :k, :].transpose(1, 2)
    return vk @ vk.transpose(1, 2)


def test_wperp_matches_its_bias_formula():
    torch.manual_seed(3)
    model = mlp(6, 4, depth=2, width=10).double()
    x, y = batch(6, 4, 4)
    x = x.double()
    true = activity_gradients(model, x, y, ce)
    k = 3
    samples = mc_activity(Estimator(model, "wperp", rank=k, solver="svd"), x, y, 20000)
    for i in range(2):
        proj = _wperp_expected_projector(model, x, i, k)  # E[g_hat] = V_k V_k^T g
        assert z_scores(samples[i], _expected_with_covariance(proj, true[i])).max() < Z_MAX


def test_wperp_tangents_lie_in_top_k_subspace_with_projector_covariance():
    torch.manual_seed(4)
    model = mlp(6, 4, depth=2, width=10).double()
    x, y = batch(6, 4, 3)
    x = x.double()
    k = 3
    est = Estimator(model, "wperp", rank=k, solver="svd")
    proj = _wperp_expected_projector(model, x, 0, k)
    _, tangents = mc_tangents(est, x, y, 20000)
    u = tangents[0]  # (N, B, d) at the first site
    residual = u - torch.einsum("bij,nbj->nbi", proj, u)
    assert residual.abs().max() < 1e-10  # in the top-k subspace exactly
    cov = torch.einsum("nbi,nbj->bij", u, u) / u.shape[0]
    # Entrywise standard error of a Wishart mean with identity-like covariance ~ 1/sqrt(N).
    assert (cov - proj).abs().max() < 6 / u.shape[0] ** 0.5


def test_wperp_full_rank_keeps_only_nonzero_directions():
    torch.manual_seed(5)
    model = mlp(6, 3, depth=2, width=10).double()  # last hidden site feeds a rank-<=3 W~
    x, y = batch(6, 3, 4)
    est = Estimator(model, "wperp", rank=None, solver="svd")
    _, g_sites, _ = est.estimate_activity(x.double(), y)
    assert all(torch.isfinite(g).all() for g in g_sites)


@pytest.mark.parametrize("guess", ["activation", "wt", "self-sharpening"])
def test_site_jvp_scales_each_site_by_its_own_directional_derivative(guess):
    """jvp='site': each site's estimate is (g_i . u_i) u_i with that site's own true gradient,
    where the global forward gradient would scale every u_i by sum_j g_j . u_j."""
    model = small_model()
    x, y = batch(6, 4, 5)
    x = x.double()
    true = activity_gradients(model, x, y, ce)
    est = Estimator(model, guess, tangents=1, jvp="site", seed=3)
    drawn: dict[int, torch.Tensor] = {}
    site_tangents = est.guess.site_tangents

    def record(ctx, k, generator):
        drawn[ctx.index] = site_tangents(ctx, k, generator)[0]
        return drawn[ctx.index].unsqueeze(0)

    est.guess.site_tangents = record
    _, estimates, _ = est.estimate_activity(x, y)
    assert sorted(drawn) == list(range(len(true)))
    for i, (g_hat, g) in enumerate(zip(estimates, true)):
        u = drawn[i]
        expected = (g * u).sum(-1, keepdim=True) * u
        assert torch.allclose(g_hat, expected, rtol=1e-9, atol=1e-12), i
    # The global JVP differs: every site shares sum_j g_j . u_j (same seed, same tangents).
    est = Estimator(model, guess, tangents=1, jvp="global", seed=3)
    site_tangents = est.guess.site_tangents
    est.guess.site_tangents = record
    _, global_estimates, _ = est.estimate_activity(x, y)
    shared = sum((g * drawn[i]).sum(-1, keepdim=True) for i, g in enumerate(true))
    assert torch.allclose(global_estimates[0], shared * drawn[0], rtol=1e-9, atol=1e-12)


def test_site_jvp_rejects_what_it_cannot_do():
    model = small_model()
    for kwargs, message in (
        ({"guess": "weight"}, "not an activity-space guess"),
        ({"guess": "activation", "aggregate": "projection", "tangents": 2}, "projection"),
        ({"guess": "activation", "low_memory": True}, "low_memory"),
        ({"guess": "activation", "sampler": "orthonormal", "tangents": 2}, "couples"),
    ):
        with pytest.raises(ValueError, match=message):
            Estimator(model, jvp="site", **kwargs)
    with pytest.raises(ValueError, match="unknown jvp mode 'layer'"):
        Estimator(model, "activation", jvp="layer")
