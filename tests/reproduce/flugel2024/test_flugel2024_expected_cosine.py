"""The closed-form expectations of reproduce/flugel2024/expected_cosine.py."""

import math

import pytest

from forwardgrad.reproduce.flugel2024 import expected_cosine as mt


def test_closed_forms():
    assert mt.expected_chi(1) == pytest.approx(math.sqrt(2 / math.pi))
    assert mt.expected_chi(2) == pytest.approx(math.sqrt(math.pi / 2))
    assert mt.expected_chi(10_000) == pytest.approx(math.sqrt(10_000 - 0.5), rel=1e-6)
    n = 64
    assert mt.projection_cosine(n, n) == 1.0 and mt.projection_cosine(4 * n, n) == 1.0
    # k = 1: sum, mean and projection are one and the same estimate.
    assert mt.gaussian_sum_cosine(1, n) == pytest.approx(mt.projection_cosine(1, n))
    assert mt.gaussian_mean_relative_norm(1, n) == pytest.approx(n * mt.projection_cosine(1, n))
    # Both approach the familiar sqrt(k / n) and sqrt((n + k + 1) / k) from below.
    for k in (4, 16, 32):
        assert mt.projection_cosine(k, n) < math.sqrt(k / n)
        assert mt.gaussian_mean_relative_norm(k, n) < math.sqrt((n + k + 1) / k)
