"""Fig. 1's overlap curves, read at k."""

from forwardgrad.reproduce.wang2025 import fig1_overlap


def test_overlap_past_the_curve_is_one():
    assert fig1_overlap.overlap_at([0.3, 0.8, 1.0], 2) == 0.8
    assert fig1_overlap.overlap_at([0.3, 0.8, 1.0], 10) == 1.0
