"""``wperp-conv``: the exact per-example overlap curve at conv and Linear sites against the
dense references, its properties, and the experiment at the smoke budget."""

import json
import math

import pytest
import torch

from forwardgrad.diagnostics import activity_gradients, site_contexts, subspace_overlap
from forwardgrad.environment import torch_threads
from forwardgrad.estimation import Estimator, cross_entropy_per_example
from forwardgrad.guesses.subspace import exact_jacobian_subspace
from forwardgrad.models.cnn import cnn
from forwardgrad.reproduce import run_experiment
from forwardgrad.reproduce.wang2025 import wperp_conv
from forwardgrad.reproduce.wang2025.conv_measurements import (
    exact_overlap_sq,
    example_jacobian,
    mean_padded,
    span_overlap_sq,
)

BATCH = 4


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small float64 eigen- and SVD problems: a second thread only spin-waits on them."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def tiny():
    """LeNet on 8x8 inputs, where every site's dense W̃ is within the exact solvers' limit:
    the site contexts and true gradients of one batch."""
    torch.manual_seed(0)
    model = cnn(1, 10, 8).eval()
    x = torch.randn(BATCH, 1, 8, 8)
    y = torch.randint(0, 10, (BATCH,))
    estimator = Estimator(model, "wperp", rank=10, solver="randomized")
    engine = estimator.engine_for(x, y)
    contexts = site_contexts(engine, x, y, cross_entropy_per_example)
    grads = activity_gradients(model, x, y, cross_entropy_per_example, engine.sites)
    sites = [(c, g) for c, g in zip(contexts, grads) if c.next_layer is not None]
    return model, x, y, sites


def _svd_curve(jac: torch.Tensor, grad: torch.Tensor, rank: int) -> torch.Tensor:
    """The reference: a float64 LAPACK SVD of the whole dense W̃_b (no columns removed)."""
    v = torch.linalg.svd(jac.double(), full_matrices=False).Vh[:rank]
    g = grad.reshape(-1).double()
    return (v @ g).square().cumsum(0) / g.square().sum()


def test_example_jacobian_is_the_next_layers_dense_jacobian(tiny):
    _, _, _, sites = tiny
    assert [type(c.site.module).__name__ for c, _ in sites] == ["Conv2d"] * 2 + ["Linear"] * 2
    for ctx, _ in sites:
        dense = ctx.next_layer.dense()  # (B, m, n), allowed at 8x8
        for b in range(BATCH):
            jac = example_jacobian(ctx.path, ctx.preact[b : b + 1])
            torch.testing.assert_close(jac, dense[b], atol=1e-6, rtol=1e-5)


def test_exact_curve_matches_a_full_svd_of_the_dense_jacobian(tiny):
    _, _, _, sites = tiny
    for ctx, grad in sites:
        dense = ctx.next_layer.dense()
        for b in range(BATCH):
            curve, rank = exact_overlap_sq(dense[b], grad[b])
            assert 0 < rank <= min(dense.shape[1:])
            reference = _svd_curve(dense[b], grad[b], rank)
            torch.testing.assert_close(curve[:rank], reference, atol=1e-6, rtol=0)


def test_exact_curve_matches_the_mlp_overlap_at_linear_sites(tiny):
    _, _, _, sites = tiny
    for ctx, grad in sites[2:]:
        layer = ctx.next_layer
        assert layer.weight is not None
        mlp, _ = subspace_overlap(layer.weight, layer.mask, grad)  # (B, min(m, n))
        for b in range(BATCH):
            curve, _ = exact_overlap_sq(example_jacobian(ctx.path, ctx.preact[b : b + 1]), grad[b])
            # past the rank both are flat; the MLP curve is min(m, n) long, ours min(m, alive)
            n = min(len(curve), mlp.shape[1])
            torch.testing.assert_close(curve[:n], mlp[b, :n], atol=1e-6, rtol=0)


def test_curves_rise_to_one_at_the_numerical_rank(tiny):
    """g = W̃_bᵀ dl/ds_{i+1} lies in the row space, so the curve is nondecreasing in [0, 1]
    and reaches 1 at the rank, where it stays."""
    _, _, _, sites = tiny
    for ctx, grad in sites:
        for b in range(BATCH):
            jac = example_jacobian(ctx.path, ctx.preact[b : b + 1])
            curve, rank = exact_overlap_sq(jac, grad[b])
            assert bool((curve.diff() >= -1e-12).all())
            assert 0 <= float(curve.min()) and float(curve.max()) <= 1
            assert float(curve[rank - 1]) == pytest.approx(1.0, abs=1e-6)
    assert exact_overlap_sq(torch.ones(3, 5), torch.zeros(5))[0].isnan().all()


def test_span_overlap_of_exact_and_whole_subspaces(tiny):
    _, _, _, sites = tiny
    ctx, grad = sites[0]
    dense = ctx.next_layer.dense().double()
    n = dense.shape[-1]
    v, _ = exact_jacobian_subspace(dense)  # (B, n, r), descending
    mix = torch.randn(10, 10, dtype=torch.float64)
    top10 = torch.einsum("bnr,rk->kbn", v[..., :10], mix)  # any 10 vectors spanning V_10
    expected = torch.stack([exact_overlap_sq(dense[b], grad[b])[0][9] for b in range(BATCH)])
    torch.testing.assert_close(span_overlap_sq(top10, grad), expected, atol=1e-6, rtol=0)
    whole = torch.randn(n, BATCH, n, dtype=torch.float64)
    torch.testing.assert_close(
        span_overlap_sq(whole, grad), torch.ones(BATCH, dtype=torch.float64), atol=1e-9, rtol=0
    )


def test_the_trained_solver_approaches_the_exact_subspace_with_iterations(tiny):
    """The reference check of the randomized solver: with many subspace iterations its
    subspace captures what the exact top-10 does; with none (training) less or about as much."""
    model, x, y, sites = tiny
    ctx, grad = sites[0]
    dense = ctx.next_layer.dense()
    exact = torch.stack([exact_overlap_sq(dense[b], grad[b])[0][9] for b in range(BATCH)])
    refined = Estimator(model, "wperp", rank=10, solver="randomized", power_iterations=40)
    tangents = refined.guess.site_tangents(ctx, 10, torch.Generator().manual_seed(1))
    assert float((span_overlap_sq(tangents, grad) - exact).abs().max()) < 1e-3


def test_curve_helpers():
    a = torch.tensor([0.2, 1.0], dtype=torch.float64)
    b = torch.tensor([0.4, 0.6, 0.9], dtype=torch.float64)
    nan = torch.full((1,), math.nan, dtype=torch.float64)
    torch.testing.assert_close(mean_padded([a, b, nan]), torch.tensor([0.3, 0.8, 0.95]).double())
    assert mean_padded([nan]).isnan().all()
    assert wperp_conv.captured_at([0.2, 0.5, 1.0], 2) == 0.5
    assert wperp_conv.captured_at([0.2, 0.5, 1.0], 10) == 1.0
    assert wperp_conv.k_reaching([0.2, 0.5, 0.95, 1.0]) == 3
    assert math.isnan(wperp_conv.k_reaching([0.2, 0.5]))


def test_smoke_budget(tmp_path):
    result = run_experiment("wperp-conv", "smoke", out_dir=tmp_path)
    record = json.loads((tmp_path / "results.json").read_text())
    runs = record["raw"]["runs"]
    assert sorted(r["method"] for r in runs) == sorted(c.key for c in wperp_conv.CONTENDERS)
    assert all(r["status"] == "completed" and len(r["test_acc_curve"]) == 1 for r in runs)
    measured = record["raw"]["measurements"]
    assert sorted(m["epoch"] for m in measured) == [0, 1]
    for m in measured:
        assert [s["module"] for s in m["sites"]] == ["Conv2d"] * 2 + ["Linear"] * 2
        for site in m["sites"]:
            curve = site["overlap_sq"]
            assert all(b >= a - 1e-6 for a, b in zip(curve, curve[1:]))
            assert 0 <= curve[0] and curve[-1] == pytest.approx(1.0, abs=1e-5)
            assert 0 <= site["solver_overlap_sq"] <= 1
            assert site["rank"] <= min(math.prod(site["in_shape"]), math.prod(site["out_shape"]))
    assert {row.labels.get("subspace") for row in result.rows} >= {"exact", "trained solver"}
    assert all(row.paper is None for row in result.rows)
