"""The mathematics behind the *How to Guess a Gradient* reproductions (reproduce/guess.py)."""

import math

import pytest
import torch
from conftest import batch
from torch import nn

from forwardgrad.config import TrainConfig
from forwardgrad.core.chain import chain_plan, forward_jvp
from forwardgrad.data import load_dataset
from forwardgrad.diagnostics import effective_rank, weight_gradients
from forwardgrad.estimation import Estimator
from forwardgrad.guesses.jacobian import WTranspose
from forwardgrad.io import read_jsonl
from forwardgrad.models import mlp
from forwardgrad.reproduce import guess as g
from forwardgrad.reproduce.flugel2024.expected_cosine import projection_cosine
from forwardgrad.train import train


def _flat(grads: dict) -> torch.Tensor:
    return torch.cat([t.flatten().double() for t in grads.values()])


# ---- per-example weight cosine ---------------------------------------------------------------


def test_per_example_weight_cosine_equals_the_outer_products():
    gen = torch.Generator().manual_seed(1)
    widths, inputs_dims, b = [5, 3], [4, 5], 6
    f64 = torch.float64
    est = [torch.randn(b, d, generator=gen, dtype=f64) for d in widths]
    true = [torch.randn(b, d, generator=gen, dtype=f64) for d in widths]
    inputs = [torch.randn(b, d, generator=gen, dtype=f64) for d in inputs_dims]
    for bias in (True, False):
        got = g.per_example_weight_cosine(est, true, inputs, bias=bias)
        for i in range(b):
            # One example's weight gradient: the outer product e x^T (and e for the bias).
            def flat(vs, i=i, bias=bias):
                parts = [torch.outer(v[i], x[i]).flatten() for v, x in zip(vs, inputs)]
                if bias:
                    parts += [v[i] for v in vs]
                return torch.cat(parts).double()

            a, c = flat(est), flat(true)
            expected = float(a @ c / (a.norm() * c.norm()))
            assert float(got[i]) == pytest.approx(expected, abs=1e-10)
    # An estimate equal to the truth (up to a positive scale) has cosine 1.
    ones = g.per_example_weight_cosine([3 * t for t in true], true, inputs)
    assert torch.allclose(ones, torch.ones(b, dtype=torch.float64))


def test_activity_cosine_is_the_concatenated_cosine():
    gen = torch.Generator().manual_seed(2)
    est = [torch.randn(3, 4, generator=gen), torch.randn(3, 2, generator=gen)]
    true = [torch.randn(3, 4, generator=gen), torch.randn(3, 2, generator=gen)]
    got = g.activity_cosine(est, true)
    e, t = torch.cat(est, -1).double(), torch.cat(true, -1).double()
    assert torch.allclose(got, torch.nn.functional.cosine_similarity(e, t, dim=-1))


# ---- subspaces -------------------------------------------------------------------------------


def test_projection_of_a_vector_in_the_pca_subspace_is_itself():
    gen = torch.Generator().manual_seed(3)
    # Activations spanning exactly a 3-dim subspace of R^10 (after centring).
    span = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    acts = torch.randn(50, 3, generator=gen, dtype=torch.float64) @ span + 7.0
    basis = g.pca_basis(acts, 3)
    assert basis.shape == (10, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3, dtype=torch.float64), atol=1e-10)
    inside = torch.randn(4, 3, generator=gen, dtype=torch.float64) @ span
    assert torch.allclose(g.subspace_cosine(inside, basis), torch.ones(4, dtype=torch.float64))
    # Orthogonal to the span: nothing is captured.
    q, _ = torch.linalg.qr(torch.cat([span.T, torch.randn(10, 1, dtype=torch.float64)], 1))
    outside = q[:, 3:].T
    assert float(g.subspace_cosine(outside, basis)[0]) == pytest.approx(0.0, abs=1e-10)
    # The zero vector has no direction.
    assert math.isnan(float(g.subspace_cosine(torch.zeros(1, 10), basis)[0]))
    # Uncentred PCA keeps the mean direction instead.
    assert g.pca_basis(acts, 20).shape == (10, 10)  # capped at min(B, d)


def test_random_subspace_cosine_has_the_closed_form_mean():
    gen = torch.Generator().manual_seed(4)
    d, k = 40, 5
    v = torch.randn(1, d, generator=gen, dtype=torch.float64)
    draws = torch.stack([g.subspace_cosine(v, g.random_basis(d, k, gen))[0] for _ in range(4000)])
    basis = g.random_basis(d, k, gen)
    assert torch.allclose(basis.T @ basis, torch.eye(k, dtype=torch.float64), atol=1e-10)
    se = float(draws.std() / math.sqrt(len(draws)))
    assert abs(float(draws.mean()) - projection_cosine(k, d)) < 4 * se
    assert float(g.subspace_cosine(v, g.random_basis(d, d, gen))[0]) == pytest.approx(1.0)


# ---- singular-value powers and effective rank ------------------------------------------------


def test_effective_rank_numbers():
    assert effective_rank(torch.eye(4)) == pytest.approx(4.0)
    assert effective_rank(torch.diag(torch.tensor([2.0, 0.0, 0.0]))) == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4): exp(H) = exp(1.5 ln 2) = 2^1.5.
    assert effective_rank(torch.diag(torch.tensor([2.0, 1.0, 1.0]))) == pytest.approx(2**1.5)


def test_power_one_is_the_identity_and_powers_order_the_effective_rank():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(12, 8, generator=gen)
    assert torch.allclose(g.powered_matrix(w, 1.0), w, atol=1e-5)
    s = torch.linalg.svdvals(w.double())
    ranks = []
    for p in (0.0, 0.5, 1.0, 2.0, 4.0):
        wp = g.powered_matrix(w, p)
        assert wp.dtype == w.dtype
        # Same singular vectors, spectrum s^p, Frobenius norm kept.
        sp = torch.linalg.svdvals(wp.double())
        expected = s**p * (s.norm() / (s**p).norm())
        assert torch.allclose(sp, expected, rtol=1e-4)
        assert float(wp.norm()) == pytest.approx(float(w.norm()), rel=1e-5)
        ranks.append(effective_rank(wp))
    # p = 0: all singular values equal, so the effective rank is the rank.
    assert ranks[0] == pytest.approx(8.0, rel=1e-5)
    assert all(a > b for a, b in zip(ranks, ranks[1:]))
    # Directions below the rank tolerance stay at zero, whatever the power.
    low = torch.randn(12, 2, generator=gen) @ torch.randn(2, 8, generator=gen)
    assert torch.linalg.matrix_rank(g.powered_matrix(low, 0.1)) == 2


def test_powered_wt_with_power_one_draws_the_wt_tangents():
    torch.manual_seed(0)
    model = mlp(6, 4, depth=2, width=5)
    x, y = batch(6, 4, 7)
    plan = chain_plan(model)
    tangents = {}
    for name, guess in (("wt", WTranspose()), ("power", g.PoweredWTranspose(1.0))):
        gen = torch.Generator().manual_seed(11)
        got = []

        def draw(ctx, guess=guess, gen=gen, got=got):
            u = guess.site_tangents(ctx, 3, gen)
            got.append(u)
            return u

        with torch.no_grad():
            forward_jvp(plan, x, y, Estimator(model).loss_fn, 3, site_tangents=draw)
        tangents[name] = got
    for a, b in zip(tangents["wt"], tangents["power"]):
        assert torch.allclose(a, b, atol=1e-5)
    # A different power changes the law, not the shapes; the estimator runs with it.
    est = g.powered_wt_estimator(model, 3.0, seed=0)
    assert est.guess_name == "wt-power" and isinstance(est.guess, g.PoweredWTranspose)
    _, grads = est.estimate(x, y)
    assert {tuple(t.shape) for t in grads.values()} == {tuple(p.shape) for p in model.parameters()}


# ---- cosine-matched directional descent ------------------------------------------------------


def test_cosine_matched_direction_has_the_cosine_and_an_unbiased_mean():
    gen = torch.Generator().manual_seed(6)
    grad = torch.randn(30, generator=gen)
    for c in (0.03, 0.5, 1.0):
        d = g.cosine_matched_direction(grad, torch.randn(30, generator=gen), c)
        assert float(d.norm()) == pytest.approx(1.0)
        assert float(d @ grad.double() / grad.double().norm()) == pytest.approx(c, abs=1e-12)
    # The JVP-scaled step (g . d) d averages to a positive multiple of g.
    c = 0.2
    steps = [
        (d @ grad.double()) * d
        for d in (
            g.cosine_matched_direction(grad, torch.randn(30, generator=gen), c)
            for _ in range(20000)
        )
    ]
    mean = torch.stack(steps).mean(0)
    cos = float(mean @ grad.double() / (mean.norm() * grad.double().norm()))
    assert cos > 0.98
    assert float(mean @ grad.double()) / float(grad.double() @ grad.double()) == pytest.approx(
        c**2, rel=0.05
    )
    with pytest.raises(ValueError, match="cosine"):
        g.cosine_matched_direction(grad, grad, 1.5)


def test_cosine_matched_estimator_sits_at_its_cosine_and_length():
    torch.manual_seed(0)
    model = mlp(6, 4, depth=2, width=5)
    x, y = batch(6, 4, 16)
    est = g.CosineMatchedEstimator(model, cosine=0.05, relative_norm=3.0, seed=2)
    _, grads = est.estimate(x, y)
    _, true = weight_gradients(model, x, y, est.loss_fn)
    a, b = _flat(grads), _flat(true)
    assert float(a @ b / (a.norm() * b.norm())) == pytest.approx(0.05, abs=1e-5)
    assert float(a.norm() / b.norm()) == pytest.approx(3.0, rel=1e-5)
    # Fresh noise on every call.
    _, again = est.estimate(x, y)
    assert not torch.allclose(_flat(again), a)
    with pytest.raises(ValueError, match="matched cosine"):
        g.CosineMatchedEstimator(model, cosine=0.0)


def test_unit_guess_is_the_forward_gradient_of_a_unit_tangent():
    torch.manual_seed(0)
    model = mlp(6, 4, depth=2, width=5)
    x, y = batch(6, 4, 16)
    estimator = Estimator(model, "wt", seed=3)
    _, est = Estimator(model, "wt", seed=3).estimate(x, y)  # the same draw
    _, unit = g.UnitGuess(estimator).estimate(x, y)
    _, true = weight_gradients(model, x, y, estimator.loss_fn)
    a, u, t = _flat(est), _flat(unit), _flat(true)
    cos = float(a @ t / (a.norm() * t.norm()))
    # Along the estimate, as long as |cos| ||g||: the JVP along the unit direction times it.
    assert float(u @ a / (u.norm() * a.norm())) == pytest.approx(math.copysign(1.0, cos), abs=1e-5)
    assert float(u.norm()) == pytest.approx(abs(cos) * float(t.norm()), rel=1e-4)


# ---- training in segments --------------------------------------------------------------------


def test_training_in_segments_follows_one_uninterrupted_run(tmp_path):
    data = load_dataset("digits")
    cfg = TrainConfig(dataset="digits", depth=1, width=8, guess="wt", epochs=3, batch_size=256)
    seen = []

    def measure(model: nn.Module, epoch: int) -> dict:
        seen.append(epoch)
        return {"norm": float(model[0].weight.detach().norm())}

    records, metrics = g.train_with_measurements(cfg, tmp_path / "seg", data, 2, measure)
    assert [r["epoch"] for r in records] == [0, 2, 3] == seen
    whole = train(cfg, tmp_path / "whole", progress=False, data=data)
    assert [m["train_loss"] for m in metrics] == pytest.approx(
        [m["train_loss"] for m in read_jsonl(tmp_path / "whole" / "metrics.jsonl")]
    )
    assert metrics[-1]["train_acc"] == whole.summary["final"]["train_acc"]
    # The start is the model train() starts from.
    assert records[0]["norm"] == pytest.approx(
        float(g.initial_model(cfg, data)[0].weight.detach().norm())
    )
    # A rerun of a finished run measures nothing again, with or without its checkpoint.
    g.drop_checkpoints(tmp_path / "seg")
    again, _ = g.train_with_measurements(cfg, tmp_path / "seg", data, 2, measure)
    assert again == records and seen == [0, 2, 3]


def test_a_diverging_run_ends_its_measurements_instead_of_the_experiment(tmp_path):
    data = load_dataset("digits")
    cfg = TrainConfig(
        dataset="digits", depth=1, width=8, guess="backprop", epochs=3, optimizer="sgd", lr=1e12
    )
    records, metrics = g.train_with_measurements(cfg, tmp_path, data, 1, lambda m, e: {})
    assert records[-1]["epoch"] < 3 and len(metrics) < 3
    assert math.isnan(g.final_metric([], "train_acc"))
    assert g.train_with_measurements(cfg, tmp_path, data, 1, lambda m, e: {}) == (records, metrics)


# ---- small helpers ---------------------------------------------------------------------------


def test_paper_conventions():
    assert g.hidden_layers(6) == 5 and g.hidden_layers(3) == 2
    with pytest.raises(ValueError):
        g.hidden_layers(0)
    counts = g.guess_counts(8192)
    assert counts[0] == 2 and counts[-1] == 8192 and len(counts) == 13
    assert g.table2_mnist(3, 128, "weight", "train") == 92.3
    assert g.table2_mnist(6, 1024, "self-sharpening:optimizer=stable-adamw", "test") == 93.7
    assert g.table2_mnist(6, 1024, "backprop", "test") == 97.9
    assert g.table2_mnist(3, 16, "wt", "train") is None
    assert g.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert g.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_cosine_of_averaged_activation_guesses_follows_theory():
    torch.manual_seed(0)
    model = mlp(6, 4, depth=2, width=8)
    x, y = batch(6, 4, 32)
    got = g.cosine_against_guess_count(model, "activation", x, y, [2, 16], chunk=8, seed=0)
    n = 8 + 8 + 4
    for i, k in enumerate((2, 16)):
        values = torch.tensor(got["activity"][i])
        se = float(values.std() / math.sqrt(len(values)))
        assert abs(float(values.mean()) - g.gaussian_sum_cosine(k, n)) < 4 * se + 1e-3
        assert len(got["weight"][i]) == 32
