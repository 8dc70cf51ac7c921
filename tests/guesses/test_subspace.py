"""W̃⊥ subspace solvers: the exact one equals torch.linalg.svd; randomized agrees within tolerance.

Stated tolerances of the randomized (block Krylov) solver at its defaults (measured values in
brackets):
* separated spectrum (top 10 singular values in [0.5, 1], the rest <= 0.1), unmasked: projector
  difference ||P_randomized - P_svd||_F <= 1e-3 for every example;
* PyTorch-initialised 256-wide weights and ReLU-like masks (a flat spectrum, where the top-k
  subspace is barely defined): the randomized subspace captures >= 0.93 of the exact top-k
  subspace's energy tr(P G) for every example, and more with more Krylov steps;
* narrow next layers (d2 <= k + oversample) are solved exactly.
"""

import pytest
import torch

from forwardgrad.guesses import GuessOptions, make_guess
from forwardgrad.guesses.subspace import (
    active_units,
    compact_masked_jacobian,
    exact_subspace,
    masked_gram,
    masked_jacobian,
    randomized_subspace,
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


def gapped(d2, d1, k=10, seed=0):
    """Top k singular values in [0.5, 1], the rest <= 0.1."""
    g = torch.Generator().manual_seed(seed)
    r = min(d1, d2)
    u, _ = torch.linalg.qr(torch.randn(d2, r, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d1, r, generator=g))
    s = torch.cat([torch.linspace(1.0, 0.5, k), torch.linspace(0.1, 0.01, r - k)])
    return (u * s) @ v.t()


@pytest.mark.parametrize("d2,d1", SHAPES)
@pytest.mark.parametrize("k", [1, 6, None])
def test_svd_subspace_on_active_units_equals_full_problem(d2, d1, k):
    # Masks about half active take the restricted path; the answer must be the full one's.
    w, m = decaying(d2, d1), masks(16, d1)
    m[0, :3], m[0, 3:] = 1, 0  # 3 active units: its top-6 includes null directions
    assert int((m != 0).sum(-1).max()) <= 0.8 * d1  # the restricted path is the one tested
    basis, keep = svd_subspace(w, m, k, ordered=k is not None)
    full, svals = exact_subspace(w, m)
    r = min(d2, d1)
    assert basis.shape == (16, d1, r if k is None else min(k, r))
    torch.testing.assert_close(
        basis.transpose(-1, -2) @ (basis * keep.unsqueeze(1)),
        torch.diag_embed(keep),
        atol=1e-5,
        rtol=0,
    )
    if k is None:
        ref = torch.einsum("bdr,br,ber->bde", full, (svals > 1e-4 * svals[:, :1]).float(), full)
        torch.testing.assert_close(
            torch.einsum("bdr,br,ber->bde", basis, keep, basis), ref, atol=1e-4, rtol=0
        )
    else:
        rows = slice(1, None)  # example 0's null directions are any orthonormal completion
        torch.testing.assert_close(
            projector(basis)[rows], projector(full[..., :k])[rows], atol=1e-4, rtol=0
        )
        assert (basis[0, m[0] == 0, :3].abs().max()) < 1e-6  # its 3 real ones are active only


@pytest.mark.parametrize("d2,d1", [(96, 96), (64, 96), (96, 64)])
def test_randomized_matches_svd_on_separated_spectrum(d2, d1):
    w, m = gapped(d2, d1), torch.ones(4, d1)
    vr, sr = randomized_subspace(w, m, 10, torch.Generator().manual_seed(0))
    ve, _ = svd_subspace(w, m, 10)
    assert (projector(vr) - projector(ve)).norm(dim=(1, 2)).max() <= 1e-3
    _, s_exact = exact_subspace(w, m)
    torch.testing.assert_close(sr, s_exact[:, : sr.shape[1]], rtol=1e-3, atol=1e-6)


def _energy_ratio(w, m, **options):
    vr, _ = randomized_subspace(w, m, 10, torch.Generator().manual_seed(0), **options)
    ve, _ = svd_subspace(w, m, 10)
    g = masked_gram(w, m)
    energy = lambda v: torch.einsum("bdk,bde,bek->b", v, g, v)  # noqa: E731
    return energy(vr) / energy(ve)


def test_randomized_captures_top_k_energy_on_flat_spectrum():
    torch.manual_seed(0)
    w = torch.nn.Linear(256, 256).weight.detach()
    m = masks(32, 256)
    assert _energy_ratio(w, m).min() >= 0.93
    more = [_energy_ratio(w, m, iterations=q).mean() for q in (1, 2, 3)]
    assert more[0] < more[1] < more[2] <= 1 + 1e-5  # iterations converge on the exact answer
    assert _energy_ratio(w, m, iterations=20).min() >= 0.999


@pytest.mark.parametrize("d2", [4, 10, 12])
def test_randomized_is_exact_for_narrow_next_layer(d2):
    torch.manual_seed(0)
    w, m = torch.nn.Linear(64, d2).weight.detach(), masks(8, 64)
    vr, sr = randomized_subspace(w, m, 10, torch.Generator().manual_seed(0))
    ve, se = svd_subspace(w, m, 10)
    assert vr.shape == ve.shape
    assert (projector(vr) - projector(ve)).norm(dim=(1, 2)).max() <= 1e-4
    torch.testing.assert_close(sr, se_vals := exact_subspace(w, m)[1][:, : sr.shape[1]])
    assert se_vals.shape == sr.shape


def test_randomized_survives_rank_deficient_masks():
    w = decaying(128, 128)
    m = torch.zeros(8, 128)
    m[:, :5] = 1  # only 5 active units < k + oversample
    vr, sr = randomized_subspace(w, m, 10, torch.Generator().manual_seed(0))
    assert torch.isfinite(vr).all() and torch.isfinite(sr).all()
    assert (vr[:, 5:, :].abs().max()) < 1e-5  # nothing outside the active units


def test_bottom_k_is_the_smallest_directions():
    # All units active: the bottom-k come from the eigendecomposition, nonzero and smallest.
    w, m = decaying(32, 32), torch.ones(4, 32)
    top, _ = svd_subspace(w, m, 5)
    bottom, _ = svd_subspace(w, m, 5, bottom=True)
    assert (top.transpose(1, 2) @ bottom).abs().max() < 1e-4  # disjoint subspaces
    _, svals = exact_subspace(w, m)
    s_bottom = torch.linalg.matrix_norm(masked_jacobian(w, m) @ bottom, ord=2)
    assert torch.allclose(s_bottom, svals[:, -5], rtol=1e-3)


def test_bottom_k_of_masked_jacobian_is_its_null_space():
    """With at most r - k active units the k smallest singular values are zero: the bottom-k
    subspace (from the inactive units, no eigendecomposition) is orthonormal, annihilated by
    W diag(m_b), orthogonal to the top directions, and the eigendecomposition agrees that those
    singular values are zero."""
    w, m = decaying(32, 32), masks(6, 32)
    assert int(m.sum(-1).max()) <= 32 - 5
    bottom, weights = svd_subspace(w, m, 5, bottom=True)
    assert bottom.shape == (6, 32, 5) and bool((weights == 1).all())
    eye = torch.eye(5).expand(6, 5, 5)
    assert torch.allclose(bottom.transpose(1, 2) @ bottom, eye)
    assert (masked_jacobian(w, m) @ bottom).abs().max() == 0
    top, _ = svd_subspace(w, m, 10)
    assert (top.transpose(1, 2) @ bottom).abs().max() < 1e-6
    _, svals = exact_subspace(w, m)
    assert svals[:, -5:].max() < 1e-5 * svals[:, 0].min()


def test_newton_schulz_guess_covariance_matches_top_k_projector():
    """W̃⊥-NS: Cov(u) = p^N(W̃)^T p^N(W̃) ≈ V_k V_k^T when sigma_k / sigma_1 sits clear of the
    polynomial's band (here sigma_k / sigma_1 = 0.5, sigma_{k+1} / sigma_1 = 0.25)."""
    from forwardgrad.guesses import newton_schulz as ns

    g = torch.Generator().manual_seed(0)
    d, k = 40, 6
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    s = torch.cat([torch.linspace(1.0, 0.5, k), torch.linspace(0.25, 0.01, d - k)])
    w = (u * s) @ v.t()
    m = torch.ones(3, d)
    _, svals = exact_subspace(w, m)
    norm = svals[:, 0]
    threshold, coeffs = ns.coefficients_keeping(float(svals[0, k - 1] / svals[0, 0]))
    assert threshold == 0.4  # keeps [0.45, 1.1], drops [0, 0.35]
    poly = ns.matrix_polynomial(
        masked_jacobian(w, m) / norm.view(-1, 1, 1), coeffs, ns.DEFAULT_ITERATIONS
    )
    cov = poly.transpose(1, 2) @ poly
    top, _ = svd_subspace(w, m, k)
    # The 0.4 entry's measured error is 0.01 per singular value, so 0.02 on its square.
    assert (cov - projector(top)).abs().max() < 0.03


def test_bfloat16_gram_applies_capture_the_same_energy():
    torch.manual_seed(0)
    w = torch.nn.Linear(256, 256).weight.detach()
    m = masks(32, 256)
    full = _energy_ratio(w, m)
    low = _energy_ratio(w, m, gram_dtype=torch.bfloat16)
    assert (full - low).abs().max() <= 2e-3
    vr, sr = randomized_subspace(
        w, m, 10, torch.Generator().manual_seed(0), gram_dtype=torch.bfloat16
    )
    assert vr.dtype == torch.float32 and sr.dtype == torch.float32
    eye = torch.eye(10).expand(32, 10, 10)
    torch.testing.assert_close(vr.transpose(-1, -2) @ vr, eye, atol=1e-5, rtol=0)


def test_wperp_rejects_unknown_gram_dtype():
    with pytest.raises(ValueError, match="gram_dtype 'float16'"):
        make_guess("wperp", GuessOptions(gram_dtype="float16"))


def test_svd_subspace_columns_are_ordered_by_singular_value():
    # Fig. 1's overlap curves read the columns in order: the default keeps it on every path.
    w = torch.nn.Linear(48, 48).weight.detach()  # square, full rank
    m = masks(8, 48)
    basis, keep = svd_subspace(w, m, None)
    _, svals = exact_subspace(w, m)
    energy = torch.einsum("bdr,bde,ber->br", basis, masked_gram(w, m), basis) * keep
    torch.testing.assert_close(energy.sqrt(), svals * keep, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("d2,d1", [(48, 48), (64, 40), (24, 48)])
def test_polynomial_on_active_columns_equals_the_full_one(d2, d1):
    """W̃⊥-NS iterates on each example's active columns only: scattered back, the same
    p^N(W~) as on the full masked Jacobian (its inactive columns stay zero)."""
    from forwardgrad.guesses import newton_schulz as ns

    w = decaying(d2, d1).double()
    m = masks(5, d1).double() * torch.rand(5, d1, generator=torch.Generator().manual_seed(3))
    m[0] = 0  # an example with no active unit
    norm = torch.linalg.matrix_norm(masked_jacobian(w, m), ord=2).clamp_min(1e-30).view(-1, 1, 1)
    _, coeffs = ns.coefficients_keeping(0.5)
    full = ns.matrix_polynomial(masked_jacobian(w, m) / norm, coeffs, ns.DEFAULT_ITERATIONS)
    idx = active_units(m)
    assert idx.shape[1] == int((m != 0).sum(-1).max())
    small = ns.matrix_polynomial(
        compact_masked_jacobian(w, m, idx) / norm, coeffs, ns.DEFAULT_ITERATIONS
    )
    back = torch.zeros_like(full).scatter_(2, idx.unsqueeze(1).expand(-1, d2, -1), small)
    assert torch.allclose(back, full, atol=1e-12)
