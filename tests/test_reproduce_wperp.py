"""The W̃⊥ paper's reproductions: paper values, tolerances, normalisation and row building."""

import math

import pytest
import torch

from forwardgrad.models import mlp
from forwardgrad.reproduce import wperp as wp
from forwardgrad.train import read_config

# ---- the paper's numbers, as the reference digest (§4) lists them --------------------------


def test_paper_tables_hold_the_published_values():
    assert wp.TABLE1_TRAIN_ACC == {
        "wt": 0.312,
        "wperp-rank": 0.311,
        "wperp-k25": 0.323,
        "wperp-k10": 0.324,
        "wperp-k1": 0.275,
    }
    assert [wp.TABLE2[k]["variance"] for k in ("wt", "wperp-bottom", "wperp-k10")] == [
        1.50e-4,
        1.30e-5,
        1.03e-5,
    ]
    assert [wp.TABLE2[k]["bias"] for k in ("wt", "wperp-bottom", "wperp-k10")] == [
        2.75e-4,
        2.83e-4,
        2.86e-5,
    ]
    assert [wp.TABLE2[k]["cov_norm"] for k in ("wt", "wperp-bottom", "wperp-k10")] == [
        0.084,
        0.085,
        0.085,
    ]
    columns = ("weight", "activation", "wt", "wperp-k10", "backprop")
    assert [[wp.TABLE3_TRAIN_ACC[w][c] for c in columns] for w in (64, 128, 256, 512)] == [
        [0.121, 0.201, 0.268, 0.268, 0.536],
        [0.124, 0.275, 0.312, 0.323, 0.709],
        [0.179, 0.309, 0.376, 0.434, 0.887],
        [0.177, 0.319, 0.494, 0.581, 1.000],
    ]
    assert [
        tuple(wp.TABLE4[(m, w)].values())
        for w in (512, 128)
        for m in ("wperp-ns", "wperp-k10", "wt")
    ] == [
        (360.0, 0.594, 0.477),
        (2400.0, 0.581, 0.498),
        (26.0, 0.486, 0.438),
        (9.0, 0.326, 0.291),
        (60.0, 0.324, 0.283),
        (5.0, 0.312, 0.277),
    ]
    assert [tuple(wp.TABLE5[m].values()) for m in ("wperp-k10", "preconditioned", "wt")] == [
        (6.33e-6, 3.63e-5, 0.433, 0.383),
        (1.75e-4, 1.35e-8, 0.367, 0.314),
        (7.04e-5, 1.68e-4, 0.375, 0.316),
    ]
    assert {w: {layer: v["rank"] for layer, v in d.items()} for w, d in wp.FIG1.items()} == {
        128: {1: 64, 2: 97, 3: 10},
        512: {1: 260, 2: 387, 3: 10},
    }


def test_paper_tables_agree_where_they_overlap():
    # Wᵀ at width 128 is one number in Tables 1, 3 and 4.
    assert (
        wp.TABLE1_TRAIN_ACC["wt"]
        == wp.TABLE3_TRAIN_ACC[128]["wt"]
        == wp.TABLE4[("wt", 128)]["train_acc"]
    )
    # The printed tables differ by at most 0.008 where they repeat a setting (digest §4.8).
    assert abs(wp.TABLE3_TRAIN_ACC[512]["wt"] - wp.TABLE4[("wt", 512)]["train_acc"]) < 0.0081
    assert abs(wp.TABLE3_TRAIN_ACC[256]["wperp-k10"] - wp.TABLE5["wperp-k10"]["train_acc"]) < 0.002
    assert abs(wp.TABLE1_TRAIN_ACC["wperp-k10"] - wp.TABLE3_TRAIN_ACC[128]["wperp-k10"]) < 0.002


def test_paper_time_ratios():
    ratios = wp.paper_time_ratios()
    assert ratios[("wperp-k10", 128)] == pytest.approx(12.0)
    assert ratios[("wperp-ns", 128)] == pytest.approx(1.8)
    assert ratios[("wperp-k10", 512)] == pytest.approx(2400 / 26)
    assert ratios[("wperp-ns", 512)] == pytest.approx(360 / 26)
    assert ("wt", 128) not in ratios


# ---- judging and normalising ----------------------------------------------------------------


def test_paper_tolerance():
    tol = wp.ACCURACY_TOLERANCE
    # accuracies: +-0.04 absolute
    assert tol.allows(0.35, None, 0.312) and tol.allows(0.272, 0.01, 0.312)
    assert not tol.allows(0.36, None, 0.312)
    # small magnitudes: within a factor of 3
    assert tol.allows(3.0e-5, None, 1.03e-5) and tol.allows(0.4e-5, None, 1.03e-5)
    assert not tol.allows(4.0e-5, None, 1.03e-5) and not tol.allows(2e-6, None, 1.03e-5)
    # an exact zero against rounding noise
    assert tol.allows(0.0, None, 1.35e-8)
    assert not tol.allows(0.0, None, 2.86e-5)
    # large values (times, ratios, ranks): a factor too
    assert tol.allows(25.0, None, 12.0) and not tol.allows(40.0, None, 12.0)
    assert not tol.allows(math.nan, None, 0.3)
    assert "factor of 3" in tol.describe() and "0.04" in tol.describe()


def test_cov_norm_theory_is_the_papers_table2_value():
    assert round(wp.cov_norm_theory(128, 10), 3) == 0.085
    assert wp.cov_norm_theory(128, 128) == 0.0
    assert wp.cov_norm_theory(16, 25) == 0.0  # k beyond the width keeps everything


def test_paper_scale():
    assert wp.paper_scale(2.0, 8.0, 4) == (0.5, 0.5)


def test_count():
    assert wp.count(1, "epoch") == "1 epoch" and wp.count(300, "epoch") == "300 epochs"


def test_overlap_past_the_curve_is_one():
    assert wp.overlap_at([0.3, 0.8, 1.0], 2) == 0.8
    assert wp.overlap_at([0.3, 0.8, 1.0], 10) == 1.0


# ---- measurements ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 40, generator=gen)
    y = torch.randint(0, 10, (32,), generator=gen)
    torch.manual_seed(0)
    return mlp(40, 10, depth=3, width=16, bias=False), x, y


def test_measured_covariance_norms_are_exact(batch):
    model, x, y = batch
    top = wp.measure_estimator(model, wp.wperp(10, "svd"), 16, x, y, draws=2, seed=0)
    bottom = wp.measure_estimator(
        model, wp.wperp(10, "svd", bottom=True), 16, x, y, draws=2, seed=0
    )
    for result in (top, bottom):
        assert [row["layer"] for row in result["layers"]] == [1, 2, 3, 4]
        for row in result["layers"][:3]:  # the last layer's tangents are isotropic
            assert row["cov_norm"] == pytest.approx(wp.cov_norm_theory(16, 10), abs=1e-9)
            assert row["bias_closed_form"]
        assert result["layers"][3]["cov_norm"] == pytest.approx(0.0, abs=1e-12)


def test_preconditioned_is_unbiased_where_the_next_layer_is_as_wide(batch):
    model, x, y = batch
    result = wp.measure_estimator(model, wp.PRECONDITIONED, 16, x, y, draws=2, seed=0)
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
    rows = wp.measurement_rows("g", wp.WT, measurements, 1, 5, wp.TABLE2["wt"])
    variance, bias, cov = rows
    assert variance.ours == pytest.approx((32 + 64) / 2 / 16)  # variance / B^2, B = 4
    assert variance.ours_se == pytest.approx(1.0)
    assert bias.ours == pytest.approx(3.0) and bias.paper == 2.75e-4  # bias / B
    assert cov.ours == pytest.approx(0.1) and cov.labels["method"] == "W̃ᵀ"
    ratios = {r.labels["ratio"]: r for r in wp.ratio_rows("g", measurements, 1, 5, wp.TABLE2)}
    assert ratios["variance W̃ᵀ / W̃⊥"].ours == pytest.approx(3.0)  # mean of 2 and 4
    assert ratios["bias W̃ᵀ / W̃⊥"].ours == pytest.approx(8.0)
    assert ratios["bias W̃⊥-bottom / W̃⊥"].ours == pytest.approx(3.0)
    assert ratios["bias W̃ᵀ / W̃⊥"].paper == pytest.approx(2.75e-4 / 2.86e-5)


# ---- training in segments -------------------------------------------------------------------


def test_segmented_run_follows_the_uninterrupted_trajectory(tmp_path):
    budget = wp.Budget(epochs=3, seeds=1, train_subset=512, test_subset=64)
    data = wp.dataset(budget)
    cfg = wp.config(wp.WT, 8, 3, seed=0)
    straight = wp.train_to(cfg, tmp_path / "straight", data, 3)

    seen: list[float] = []

    def measure(model: torch.nn.Module) -> dict:
        seen.append(float(model[0].weight.detach().sum()))
        return {"weight_sum": seen[-1]}

    summary, points = wp.measured_run(cfg, tmp_path / "segments", data, (0, 1, 3), "t", measure)
    assert sorted(points) == [0, 1, 3] and len(seen) == 3
    for key in ("train_acc", "train_loss", "test_acc"):
        assert summary["final"][key] == pytest.approx(straight["final"][key], rel=1e-6)
    final = wp.checkpoint_model(cfg, tmp_path / "segments", data, 3)
    assert float(final[0].weight.detach().sum()) == pytest.approx(seen[-1])
    assert float(
        wp.checkpoint_model(cfg, tmp_path / "straight", data, 3)[0].weight.detach().sum()
    ) == (pytest.approx(seen[-1], rel=1e-6))
    # Run again: cached measurements, nothing retrained.
    seen.clear()
    again, cached = wp.measured_run(cfg, tmp_path / "segments", data, (0, 1, 3), "t", measure)
    assert not seen and cached == points and again["steps"] == summary["steps"]
    # Another experiment sharing the finished run measures its earlier epochs from the kept
    # snapshots, without retraining: the same models as seen along the way.
    shared, other_points = wp.measured_run(
        cfg, tmp_path / "segments", data, (0, 1, 3), "other", measure
    )
    assert seen == [points[e]["weight_sum"] for e in (0, 1, 3)]
    assert sorted(other_points) == [0, 1, 3] and shared["steps"] == summary["steps"]
    # Without a snapshot an epoch the run has passed cannot be measured: a clear error.
    with pytest.raises(RuntimeError, match="no snapshot of epoch 2"):
        wp.checkpoint_model(cfg, tmp_path / "segments", data, 2)
    # A run of other settings in the same folder is refused.
    other = wp.config(wp.WT, 16, 3, seed=0)
    with pytest.raises(ValueError, match="other settings"):
        wp.train_to(other, tmp_path / "straight", data, 3)
    assert read_config(tmp_path / "straight")["width"] == 8
