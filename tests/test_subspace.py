"""W̃⊥ subspace solvers: the exact one equals torch.linalg.svd; randomized agrees within tolerance.

Stated tolerances (measured on these cases: 2e-5 and >= 0.988):
* well-separated spectrum (singular values decaying as 0.8^j): projector difference
  ||P_randomized - P_svd||_F <= 1e-3 for every example;
* PyTorch-initialised weights (flat spectrum, where the top-k subspace is barely defined): the
  randomized subspace captures >= 0.97 of the exact top-k subspace's energy tr(P G).
"""

import pytest
import torch

from forwardgrad.guesses.subspace import (
    exact_subspace,
    masked_gram,
    masked_jacobian,
    randomized_subspace,
    spectral_norm,
    svd_subspace,
)

SHAPES = [(48, 48), (10, 64), (32, 48), (48, 32)]


def decaying(d2, d1, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = min(d1, d2)
    u, _ = torch.linalg.qr(torch.randn(d2, r, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d1, r, generator=g))
    return (u * 0.8 ** torch.arange(r).float()) @ v.t()


def masks(b, d1, seed=1):
    return (torch.randn(b, d1, generator=torch.Generator().manual_seed(seed)) > 0).float()


def projector(basis):
    return basis @ basis.transpose(-1, -2)


@pytest.mark.parametrize("d2,d1", SHAPES)
def test_exact_subspace_equals_torch_svd(d2, d1):
    w, m = decaying(d2, d1), masks(16, d1)
    basis, svals = exact_subspace(w, m)
    _, s_ref, vh = torch.linalg.svd(masked_jacobian(w, m).double(), full_matrices=False)
    torch.testing.assert_close(svals.double(), s_ref, atol=1e-5, rtol=1e-4)
    k = 6
    torch.testing.assert_close(
        projector(basis[..., :k]).double(),
        projector(vh[:, :k, :].transpose(1, 2)),
        atol=1e-4,
        rtol=0,
    )


@pytest.mark.parametrize("d2,d1", SHAPES)
def test_randomized_matches_svd_on_separated_spectrum(d2, d1):
    w, m = decaying(d2, d1), masks(16, d1)
    gen = torch.Generator().manual_seed(0)
    vr, sr = randomized_subspace(w, m, 10, gen)
    ve, _ = svd_subspace(w, m, 10)
    assert (projector(vr) - projector(ve)).norm(dim=(1, 2)).max() <= 1e-3
    _, s_exact = exact_subspace(w, m)
    torch.testing.assert_close(sr, s_exact[:, : sr.shape[1]], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("d2,d1", SHAPES)
def test_randomized_captures_top_k_energy_on_flat_spectrum(d2, d1):
    torch.manual_seed(0)
    w = torch.nn.Linear(d1, d2).weight.detach()
    m = masks(16, d1)
    vr, _ = randomized_subspace(w, m, 10, torch.Generator().manual_seed(0))
    ve, _ = svd_subspace(w, m, 10)
    g = masked_gram(w, m)
    energy = lambda v: torch.einsum("bdk,bde,bek->b", v, g, v)  # noqa: E731
    assert (energy(vr) / energy(ve)).min() >= 0.97


def test_randomized_survives_rank_deficient_masks():
    w = decaying(128, 128)
    m = torch.zeros(8, 128)
    m[:, :5] = 1  # only 5 active units < k + oversample
    vr, sr = randomized_subspace(w, m, 10, torch.Generator().manual_seed(0))
    assert torch.isfinite(vr).all() and torch.isfinite(sr).all()
    assert (vr[:, 5:, :].abs().max()) < 1e-5  # nothing outside the active units


def test_bottom_k_is_the_smallest_directions():
    w, m = decaying(32, 32), masks(4, 32)
    top, _ = svd_subspace(w, m, 5)
    bottom, _ = svd_subspace(w, m, 5, bottom=True)
    assert (top.transpose(1, 2) @ bottom).abs().max() < 1e-4  # disjoint subspaces


def test_spectral_norm_by_power_iteration():
    # A Rayleigh quotient never exceeds sigma_1; with close top singular values power iteration
    # converges slowly, so the estimate may sit a few percent low. Newton-Schulz tolerates that:
    # its polynomials are fitted on [0, 1.1].
    w, m = decaying(64, 64), masks(8, 64)
    est = spectral_norm(w, m, torch.Generator().manual_seed(0))
    _, s_exact = exact_subspace(w, m)
    ratio = est / s_exact[:, 0]
    assert (ratio <= 1 + 1e-5).all() and (ratio >= 0.9).all()
