"""The engine's JVPs equal torch.autograd's directional derivatives."""

import pytest
import torch
from conftest import batch
from torch import nn
from torch.func import functional_call, jvp

from forwardgrad import chain_plan, forward_jvp, mlp
from forwardgrad.diagnostics import activity_gradients
from forwardgrad.estimation import cross_entropy_per_example as ce

SHAPES = [  # (in, classes, depth, width, batch, activation)
    (5, 3, 1, 7, 4, nn.ReLU),
    (12, 10, 3, 16, 9, nn.ReLU),
    (8, 4, 2, 6, 1, nn.Tanh),
    (6, 5, 4, 11, 5, nn.GELU),
]


def assert_activity_jvps_match_autograd(model, x, y, k):
    """Inject random tangents at every site; compare the engine's JVPs with autograd's
    sum_i <dl_b/ds_i, u_i^b>."""
    plan = chain_plan(model)
    tangents = [torch.randn(k, x.shape[0], s.out_features, dtype=torch.float64) for s in plan.sites]
    with torch.no_grad():
        res = forward_jvp(plan, x, y, ce, k, site_tangents=lambda ctx: tangents[ctx.index])
    true = activity_gradients(model, x, y, ce, plan)  # dl_b/ds_i, (B, d_i)
    expected = sum(torch.einsum("bd,kbd->kb", g, u) for g, u in zip(true, tangents))
    torch.testing.assert_close(res.jvps, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(res.losses, ce(model(x), y))
    return plan


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [1, 3])
def test_activity_jvps_match_autograd(shape, k):
    n_in, n_cls, depth, width, b, act = shape
    model = mlp(n_in, n_cls, depth, width, activation=act).double()
    x, y = batch(n_in, n_cls, b)
    assert_activity_jvps_match_autograd(model, x.double(), y, k)


@pytest.mark.parametrize("shape", SHAPES)
def test_weight_jvps_match_torch_func(shape):
    n_in, n_cls, depth, width, b, act = shape
    model = mlp(n_in, n_cls, depth, width, activation=act).double()
    x, y = batch(n_in, n_cls, b)
    x = x.double()
    plan = chain_plan(model)
    k = 2
    v = {name: torch.randn(k, *p.shape, dtype=torch.float64) for name, p in plan.parameters()}
    with torch.no_grad():
        res = forward_jvp(plan, x, y, ce, k, weight_tangents=v)
    # Reference: torch.func.jvp of the per-example loss w.r.t. all parameters at once.
    params = {n: p.detach() for n, p in plan.parameters()}
    for j in range(k):
        tang = {n: v[n][j] for n, _ in plan.parameters()}
        _, ref = jvp(lambda p: ce(functional_call(model, p, (x,)), y), (params,), (tang,))
        torch.testing.assert_close(res.jvps[j], ref, rtol=1e-10, atol=1e-12)


def test_weight_jvp_of_mean_loss_is_gradient_dot_tangent():
    model = mlp(10, 4, 2, 8).double()
    x, y = batch(10, 4, 6)
    x = x.double()
    plan = chain_plan(model)
    v = {name: torch.randn(1, *p.shape, dtype=torch.float64) for name, p in plan.parameters()}
    with torch.no_grad():
        res = forward_jvp(plan, x, y, ce, 1, weight_tangents=v)
    loss = ce(model(x), y).mean()
    grads = torch.autograd.grad(loss, [p for _, p in plan.parameters()])
    expected = sum((g * v[n][0]).sum() for g, (n, _) in zip(grads, plan.parameters()))
    torch.testing.assert_close(res.jvps.mean(1)[0], expected)


def test_flatten_prefix_and_image_inputs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.ReLU(), nn.Linear(5, 2)).double()
    x = torch.randn(4, 3, 4, dtype=torch.float64)
    assert_activity_jvps_match_autograd(model, x, torch.randint(0, 2, (4,)), 1)


def test_wrong_tangent_shape_is_reported():
    model = mlp(4, 2, 1, 3)
    plan = chain_plan(model)
    x, y = batch(4, 2, 5)
    with pytest.raises(ValueError, match=r"site '0': tangents must have shape \(2, 5, 3\)"):
        forward_jvp(plan, x, y, ce, 2, site_tangents=lambda ctx: torch.zeros(2, 5, 99))


def test_loss_must_be_per_example():
    model = mlp(4, 2, 1, 3)
    plan = chain_plan(model)
    x, y = batch(4, 2, 5)
    mean_loss = lambda out, t: ce(out, t).mean()  # noqa: E731
    with pytest.raises(ValueError, match="one loss per example"):
        forward_jvp(
            plan,
            x,
            y,
            mean_loss,
            1,
            site_tangents=lambda ctx: torch.zeros(1, 5, ctx.site.out_features),
        )
