"""Measurements along a trajectory and the rows built from them (Tables 2 and 5)."""

import pytest
import torch

from forwardgrad.models import mlp
from forwardgrad.reproduce.wang2025 import common
from forwardgrad.reproduce.wang2025.measurements import measure_estimator, measurement_rows
from forwardgrad.reproduce.wang2025.published import TABLE2
from forwardgrad.reproduce.wang2025.table2_bias import ratio_rows


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 40, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    torch.manual_seed(0)
    return mlp(40, 10, depth=3, width=16, bias=False), x, y


def test_measured_covariance_norms_are_exact(batch):
    model, x, y = batch
    top = measure_estimator(model, common.wperp(10, "svd"), 16, x, y, draws=2, seed=0)
    bottom = measure_estimator(
        model, common.wperp(10, "svd", bottom=True), 16, x, y, draws=2, seed=0
    )
    for result in (top, bottom):
        assert [row["layer"] for row in result["layers"]] == [1, 2, 3, 4]
        for row in result["layers"][:3]:  # the last layer's tangents are isotropic
            assert row["cov_norm"] == pytest.approx(common.cov_norm_theory(16, 10), abs=1e-9)
            assert row["bias_closed_form"]
        assert result["layers"][3]["cov_norm"] == pytest.approx(0.0, abs=1e-12)


def test_preconditioned_is_unbiased_where_the_next_layer_is_as_wide(batch):
    model, x, y = batch
    result = measure_estimator(model, common.PRECONDITIONED, 16, x, y, draws=2, seed=0)
    first = result["layers"][0]
    assert first["bias_closed_form"] and first["bias_eq17"] == 0.0
    assert first["variance"] > 0


def _measurement(method: str, seed: int, epoch: int, bias: float, variance: float) -> dict:
    layer = {"layer": 1, "bias_eq17": bias, "variance": variance, "cov_norm": 0.1}
    return {"method": method, "seed": seed, "epoch": epoch, "examples": 4, "layers": [layer]}


def test_measurement_and_ratio_rows():
    measurements = [
        _measurement("wt", 0, 5, bias=8.0, variance=32.0),
        _measurement("wt", 1, 5, bias=16.0, variance=64.0),
        _measurement("wt", 0, 0, bias=1e6, variance=1e6),  # another epoch: ignored
        _measurement("wperp-k10", 0, 5, bias=1.0, variance=16.0),
        _measurement("wperp-k10", 1, 5, bias=2.0, variance=16.0),
        _measurement("wperp-bottom", 0, 5, bias=4.0, variance=1.0),
        _measurement("wperp-bottom", 1, 5, bias=4.0, variance=1.0),
    ]
    rows = measurement_rows("g", common.WT, measurements, 1, 5, TABLE2["wt"])
    variance, bias, cov = rows
    assert variance.ours == pytest.approx((32 + 64) / 2 / 16)  # variance / B^2, B = 4
    assert variance.ours_se == pytest.approx(1.0)
    assert bias.ours == pytest.approx(3.0) and bias.paper == 2.75e-4  # bias / B
    assert cov.ours == pytest.approx(0.1) and cov.labels["method"] == "W̃ᵀ"
    ratios = {r.labels["ratio"]: r for r in ratio_rows("g", measurements, 1, 5, TABLE2)}
    assert ratios["variance W̃ᵀ / W̃⊥"].ours == pytest.approx(3.0)  # mean of 2 and 4
    assert ratios["bias W̃ᵀ / W̃⊥"].ours == pytest.approx(8.0)
    assert ratios["bias W̃⊥-bottom / W̃⊥"].ours == pytest.approx(3.0)
    assert ratios["bias W̃ᵀ / W̃⊥"].paper == pytest.approx(2.75e-4 / 2.86e-5)
