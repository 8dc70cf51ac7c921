"""Exact expectations for k Gaussian tangents in R^n: the cosine to the gradient and the relative
norm of the sum, mean and orthogonal projection estimates (derived in ``fig3_quality``)."""

from __future__ import annotations

import math


def expected_chi(m: int) -> float:
    """E[chi_m] = sqrt(2) Gamma((m+1)/2) / Gamma(m/2), the mean norm of an m-dim Gaussian."""
    return math.sqrt(2.0) * math.exp(math.lgamma((m + 1) / 2) - math.lgamma(m / 2))


def projection_cosine(k: int, n: int) -> float:
    """E[cos] = E[||P_U g|| / ||g||] for U a uniformly random k-dim subspace of R^n."""
    return 1.0 if k >= n else expected_chi(k) / expected_chi(n)


def gaussian_sum_cosine(k: int, n: int) -> float:
    """E[cos] of sum (= mean) of k standard Gaussian forward gradients."""
    return expected_chi(k) / expected_chi(n + k - 1)


def gaussian_mean_relative_norm(k: int, n: int) -> float:
    """E[||mean||] / ||g|| for k standard Gaussian tangents."""
    return (n + k - 1) / k * expected_chi(k) / expected_chi(n + k - 1)
