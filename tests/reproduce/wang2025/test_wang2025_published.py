"""The W̃⊥ paper's published numbers, as the reference digest (§4) lists them."""

import pytest

from forwardgrad.reproduce.wang2025 import published


def test_paper_tables_hold_the_published_values():
    assert published.TABLE1_TRAIN_ACC == {
        "wt": 0.312,
        "wperp-rank": 0.311,
        "wperp-k25": 0.323,
        "wperp-k10": 0.324,
        "wperp-k1": 0.275,
    }
    assert [published.TABLE2[k]["variance"] for k in ("wt", "wperp-bottom", "wperp-k10")] == [
        1.50e-4,
        1.30e-5,
        1.03e-5,
    ]
    assert [published.TABLE2[k]["bias"] for k in ("wt", "wperp-bottom", "wperp-k10")] == [
        2.75e-4,
        2.83e-4,
        2.86e-5,
    ]
    assert [published.TABLE2[k]["cov_norm"] for k in ("wt", "wperp-bottom", "wperp-k10")] == [
        0.084,
        0.085,
        0.085,
    ]
    columns = ("weight", "activation", "wt", "wperp-k10", "backprop")
    assert [[published.TABLE3_TRAIN_ACC[w][c] for c in columns] for w in (64, 128, 256, 512)] == [
        [0.121, 0.201, 0.268, 0.268, 0.536],
        [0.124, 0.275, 0.312, 0.323, 0.709],
        [0.179, 0.309, 0.376, 0.434, 0.887],
        [0.177, 0.319, 0.494, 0.581, 1.000],
    ]
    assert [
        tuple(published.TABLE4[(m, w)].values())
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
    assert [tuple(published.TABLE5[m].values()) for m in ("wperp-k10", "preconditioned", "wt")] == [
        (6.33e-6, 3.63e-5, 0.433, 0.383),
        (1.75e-4, 1.35e-8, 0.367, 0.314),
        (7.04e-5, 1.68e-4, 0.375, 0.316),
    ]
    assert {w: {layer: v["rank"] for layer, v in d.items()} for w, d in published.FIG1.items()} == {
        128: {1: 64, 2: 97, 3: 10},
        512: {1: 260, 2: 387, 3: 10},
    }


def test_paper_tables_agree_where_they_overlap():
    # Wᵀ at width 128 is one number in Tables 1, 3 and 4.
    assert (
        published.TABLE1_TRAIN_ACC["wt"]
        == published.TABLE3_TRAIN_ACC[128]["wt"]
        == published.TABLE4[("wt", 128)]["train_acc"]
    )
    # The printed tables differ by at most 0.008 where they repeat a setting (digest §4.8).
    assert (
        abs(published.TABLE3_TRAIN_ACC[512]["wt"] - published.TABLE4[("wt", 512)]["train_acc"])
        < 0.0081
    )
    assert (
        abs(
            published.TABLE3_TRAIN_ACC[256]["wperp-k10"]
            - published.TABLE5["wperp-k10"]["train_acc"]
        )
        < 0.002
    )
    assert (
        abs(published.TABLE1_TRAIN_ACC["wperp-k10"] - published.TABLE3_TRAIN_ACC[128]["wperp-k10"])
        < 0.002
    )


def test_paper_time_ratios():
    ratios = published.paper_time_ratios()
    assert ratios[("wperp-k10", 128)] == pytest.approx(12.0)
    assert ratios[("wperp-ns", 128)] == pytest.approx(1.8)
    assert ratios[("wperp-k10", 512)] == pytest.approx(2400 / 26)
    assert ratios[("wperp-ns", 512)] == pytest.approx(360 / 26)
    assert ("wt", 128) not in ratios
