"""The W̃⊥ reproductions' judging and normalising: tolerances, closed forms, wording."""

import math

from forwardgrad.reproduce.wang2025 import common


def test_paper_tolerance():
    tol = common.ACCURACY_TOLERANCE
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
    assert round(common.cov_norm_theory(128, 10), 3) == 0.085
    assert common.cov_norm_theory(128, 128) == 0.0
    assert common.cov_norm_theory(16, 25) == 0.0  # k beyond the width keeps everything


def test_paper_scale():
    assert common.paper_scale(2.0, 8.0, 4) == (0.5, 0.5)


def test_count():
    assert common.count(1, "epoch") == "1 epoch" and common.count(300, "epoch") == "300 epochs"
