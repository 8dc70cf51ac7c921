"""sum / mean / projection: exactness, agreement with float64 least squares, invariances."""

import warnings

import pytest
import torch

from forwardgrad.core.aggregate import DependentTangentsWarning, aggregate


def _setup(k, n, batch=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    grad = torch.randn(*batch, n, generator=g)
    v = torch.randn(k, *batch, n, generator=g)
    d = (v * grad).sum(-1)
    return grad, v, d


@pytest.mark.parametrize("n", [1, 5, 64])
def test_projection_exact_when_k_equals_n(n):
    grad, v, d = _setup(n, n)
    torch.testing.assert_close(aggregate("projection", v, d), grad, rtol=1e-4, atol=1e-4)


def test_projection_exact_per_example_batch():
    grad, v, d = _setup(7, 7, batch=(3, 2))
    torch.testing.assert_close(aggregate("projection", v, d), grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("k,n", [(1, 10), (3, 10), (16, 64), (50, 64)])
def test_projection_equals_float64_least_squares(k, n):
    grad, v, d = _setup(k, n, batch=(4,))
    out = aggregate("projection", v, d)
    for b in range(4):
        a = v[:, b, :].double()  # (k, n): the min-norm solution of a w = d is P_span(v) g
        ref = torch.linalg.lstsq(
            a, d[:, b].double().unsqueeze(-1), driver="gelsd"
        ).solution.squeeze(-1)
        torch.testing.assert_close(out[b].double(), ref, rtol=1e-4, atol=1e-5)


def test_projection_properties():
    grad, v, d = _setup(5, 20)
    p = aggregate("projection", v, d)
    # The residual is orthogonal to every tangent, and relative norm equals cosine similarity.
    torch.testing.assert_close(v @ (grad - p), torch.zeros(5), atol=1e-4, rtol=0)
    cos = (p @ grad) / (p.norm() * grad.norm())
    torch.testing.assert_close(p.norm() / grad.norm(), cos, rtol=1e-4, atol=0)


def test_invariances():
    grad, v, d = _setup(6, 30)
    scale = torch.tensor([0.1, 2.0, 5.0, 1.0, 0.5, 3.0]).unsqueeze(-1)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    vs, ds = v * scale, d * scale.squeeze(-1)  # JVPs scale with their tangents
    p = aggregate("projection", v, d)
    torch.testing.assert_close(aggregate("projection", vs, ds), p, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(aggregate("projection", v[perm], d[perm]), p, rtol=1e-4, atol=1e-5)
    for method in ("sum", "mean"):
        torch.testing.assert_close(aggregate(method, v[perm], d[perm]), aggregate(method, v, d))
    # Rescaling every tangent by c scales sum and mean by c^2; mean is sum / k.
    torch.testing.assert_close(aggregate("sum", 3 * v, 3 * d), 9 * aggregate("sum", v, d))
    torch.testing.assert_close(aggregate("mean", v, d), aggregate("sum", v, d) / 6)


def test_dependent_tangents_warn_and_project_onto_reached_span():
    grad, v, d = _setup(3, 10)
    v2 = torch.cat([v, v[:1] * 2.0, v[1:2] + v[2:3]])  # 5 tangents spanning 3 dimensions
    d2 = (v2 * grad).sum(-1)
    with pytest.warns(DependentTangentsWarning, match="span only 3 dimensions"):
        out = aggregate("projection", v2, d2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ref = aggregate("projection", v, d)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(out).all()


def test_more_tangents_than_dimensions():
    grad, v, d = _setup(9, 4)
    with pytest.warns(DependentTangentsWarning, match="k > n"):
        out = aggregate("projection", v, d)
    torch.testing.assert_close(out, grad, rtol=1e-4, atol=1e-4)


def test_bad_inputs():
    _, v, d = _setup(3, 5)
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        aggregate("median", v, d)
    with pytest.raises(ValueError, match="disagree"):
        aggregate("mean", v, d[:2])
