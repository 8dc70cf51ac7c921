"""The pure mathematics of the *How to Guess a Gradient* reproductions (singhal2023/maths.py)."""

import math

import pytest
import torch

from forwardgrad.diagnostics import effective_rank
from forwardgrad.reproduce.flugel2024.expected_cosine import projection_cosine
from forwardgrad.reproduce.singhal2023 import maths

# ---- per-example weight cosine ---------------------------------------------------------------


def test_per_example_weight_cosine_equals_the_outer_products():
    gen = torch.Generator().manual_seed(1)
    widths, inputs_dims, b = [5, 3], [4, 5], 6
    f64 = torch.float64
    est = [torch.randn(b, d, generator=gen, dtype=f64) for d in widths]
    true = [torch.randn(b, d, generator=gen, dtype=f64) for d in widths]
    inputs = [torch.randn(b, d, generator=gen, dtype=f64) for d in inputs_dims]
    for bias in (True, False):
        got = maths.per_example_weight_cosine(est, true, inputs, bias=bias)
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
    ones = maths.per_example_weight_cosine([3 * t for t in true], true, inputs)
    assert torch.allclose(ones, torch.ones(b, dtype=torch.float64))


def test_activity_cosine_is_the_concatenated_cosine():
    gen = torch.Generator().manual_seed(2)
    est = [torch.randn(3, 4, generator=gen), torch.randn(3, 2, generator=gen)]
    true = [torch.randn(3, 4, generator=gen), torch.randn(3, 2, generator=gen)]
    got = maths.activity_cosine(est, true)
    e, t = torch.cat(est, -1).double(), torch.cat(true, -1).double()
    assert torch.allclose(got, torch.nn.functional.cosine_similarity(e, t, dim=-1))


# ---- subspaces -------------------------------------------------------------------------------


def test_projection_of_a_vector_in_the_pca_subspace_is_itself():
    gen = torch.Generator().manual_seed(3)
    # Activations spanning exactly a 3-dim subspace of R^10 (after centring).
    span = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    acts = torch.randn(50, 3, generator=gen, dtype=torch.float64) @ span + 7.0
    basis = maths.pca_basis(acts, 3)
    assert basis.shape == (10, 3)
    assert torch.allclose(basis.T @ basis, torch.eye(3, dtype=torch.float64), atol=1e-10)
    inside = torch.randn(4, 3, generator=gen, dtype=torch.float64) @ span
    assert torch.allclose(maths.subspace_cosine(inside, basis), torch.ones(4, dtype=torch.float64))
    # Orthogonal to the span: nothing is captured.
    q, _ = torch.linalg.qr(torch.cat([span.T, torch.randn(10, 1, dtype=torch.float64)], 1))
    outside = q[:, 3:].T
    assert float(maths.subspace_cosine(outside, basis)[0]) == pytest.approx(0.0, abs=1e-10)
    # The zero vector has no direction.
    assert math.isnan(float(maths.subspace_cosine(torch.zeros(1, 10), basis)[0]))
    # Uncentred PCA keeps the mean direction instead.
    assert maths.pca_basis(acts, 20).shape == (10, 10)  # capped at min(B, d)


def test_random_subspace_cosine_has_the_closed_form_mean():
    gen = torch.Generator().manual_seed(4)
    d, k = 40, 5
    v = torch.randn(1, d, generator=gen, dtype=torch.float64)
    draws = torch.stack(
        [maths.subspace_cosine(v, maths.random_basis(d, k, gen))[0] for _ in range(4000)]
    )
    basis = maths.random_basis(d, k, gen)
    assert torch.allclose(basis.T @ basis, torch.eye(k, dtype=torch.float64), atol=1e-10)
    se = float(draws.std() / math.sqrt(len(draws)))
    assert abs(float(draws.mean()) - projection_cosine(k, d)) < 4 * se
    assert float(maths.subspace_cosine(v, maths.random_basis(d, d, gen))[0]) == pytest.approx(1.0)


# ---- singular-value powers and effective rank ------------------------------------------------


def test_effective_rank_numbers():
    assert effective_rank(torch.eye(4)) == pytest.approx(4.0)
    assert effective_rank(torch.diag(torch.tensor([2.0, 0.0, 0.0]))) == pytest.approx(1.0)
    # p = (1/2, 1/4, 1/4): exp(H) = exp(1.5 ln 2) = 2^1.5.
    assert effective_rank(torch.diag(torch.tensor([2.0, 1.0, 1.0]))) == pytest.approx(2**1.5)


def test_power_one_is_the_identity_and_powers_order_the_effective_rank():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(12, 8, generator=gen)
    assert torch.allclose(maths.powered_matrix(w, 1.0), w, atol=1e-5)
    s = torch.linalg.svdvals(w.double())
    ranks = []
    for p in (0.0, 0.5, 1.0, 2.0, 4.0):
        wp = maths.powered_matrix(w, p)
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
    assert torch.linalg.matrix_rank(maths.powered_matrix(low, 0.1)) == 2


# ---- cosine-matched directional descent ------------------------------------------------------


def test_cosine_matched_direction_has_the_cosine_and_an_unbiased_mean():
    gen = torch.Generator().manual_seed(6)
    grad = torch.randn(30, generator=gen)
    for c in (0.03, 0.5, 1.0):
        d = maths.cosine_matched_direction(grad, torch.randn(30, generator=gen), c)
        assert float(d.norm()) == pytest.approx(1.0)
        assert float(d @ grad.double() / grad.double().norm()) == pytest.approx(c, abs=1e-12)
    # The JVP-scaled step (g . d) d averages to a positive multiple of maths.
    c = 0.2
    steps = [
        (d @ grad.double()) * d
        for d in (
            maths.cosine_matched_direction(grad, torch.randn(30, generator=gen), c)
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
        maths.cosine_matched_direction(grad, grad, 1.5)
