import math

import pytest
import torch

from forwardgrad.core.samplers import SAMPLERS, sample_tangents


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_shapes_and_normalize(name):
    v = sample_tangents(name, 4, (3,), 16, gen())
    assert v.shape == (4, 3, 16)
    u = sample_tangents(name, 4, (3,), 16, gen(), normalize=True)
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(4, 3))


def test_orthonormal_tangents_are_orthogonal_with_gaussian_norm():
    v = sample_tangents("orthonormal", 5, (2,), 12, gen())
    gram = torch.einsum("kbn,jbn->bkj", v, v)
    torch.testing.assert_close(gram, 12 * torch.eye(5).expand(2, 5, 5), atol=1e-4, rtol=0)


def test_rademacher_values():
    v = sample_tangents("rademacher", 3, (), 100, gen())
    assert set(v.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("angle", [0.0, 15.0, 60.0, 90.0])
def test_fixed_angle(angle):
    v = sample_tangents("angle", 6, (), 32, gen(), angle=angle)
    cos = (v[1:] @ v[0]) / (v[1:].norm(dim=-1) * v[0].norm())
    torch.testing.assert_close(
        cos, torch.full((5,), math.cos(math.radians(angle))), atol=1e-5, rtol=0
    )


def test_varying_length_orthogonal_basis_vectors():
    v = sample_tangents("varying-length", 4, (), 10, gen(), max_length=8.0)
    assert ((v != 0).sum(-1) == 1).all()
    lengths = v.norm(dim=-1)
    assert ((lengths >= 1) & (lengths <= 8)).all()
    assert (v @ v.t() - torch.diag(lengths**2)).abs().max() < 1e-6


def test_errors():
    with pytest.raises(ValueError, match="unknown sampler 'gauss'"):
        sample_tangents("gauss", 1, (), 3, gen())
    with pytest.raises(ValueError, match="at most n = 3"):
        sample_tangents("orthonormal", 4, (), 3, gen())
    with pytest.raises(ValueError, match="angle must be in"):
        sample_tangents("angle", 2, (), 3, gen(), angle=200)
    with pytest.raises(ValueError, match=">= 1"):
        sample_tangents("normal", 0, (), 3, gen())
