"""``tangents-functions`` (Fig. 4, reproduce/flugel2024/fig4_*.py): the authors' tables, the
cached sweep cells, the claim checks and a part of the paper grid."""

from dataclasses import replace

import pytest

from forwardgrad.closedform import PAPER_DIMS
from forwardgrad.reproduce.flugel2024 import fig4_budget as budget
from forwardgrad.reproduce.flugel2024.fig4_cells import cell_record
from forwardgrad.reproduce.flugel2024.fig4_claims import significantly_lower
from forwardgrad.reproduce.flugel2024.fig4_functions import functions_result, run_functions_subset
from forwardgrad.reproduce.flugel2024.fig4_sphere import sphere_optimal_lr
from forwardgrad.reproduce.flugel2024.network_runs import METHODS


def test_authors_tables():
    table = budget.AUTHORS_TABLE
    assert len(table) == 3 * 8
    for field in ("lr", "search_final"):
        assert all(len(entry[field]) == len(PAPER_DIMS) for entry in table.values())
    assert budget.authors_lr("sphere", "projection", 16, 1024) == 0.486
    assert budget.authors_lr("rosenbrock", "backprop", None, 1) == 0.0836
    assert budget.authors_search_loss("styblinski-tang", "backprop", None, 64) == -2510
    assert budget.authors_search_loss("sphere", "mean", 3, 64) is None  # k = 3 was not run
    assert budget.authors_lr("sphere", "mean", 1, 3) is None  # n = 3 was not run


def test_authors_sphere_learning_rates_are_the_exact_optimum():
    """The authors' searched sphere learning rates sit near η* = k/(2(n+k+1)) (mean) and 1/2
    (projection) wherever f did not reach 0 for a range of rates (n >= 128)."""
    for n in (128, 256, 512, 1024):
        for method, k in METHODS[1:]:
            ratio = budget.authors_lr("sphere", method, k, n) / sphere_optimal_lr(method, k, n)
            assert 0.8 < ratio < 1.2, (n, method, k, ratio)


def test_projection_with_k_at_least_n_steps_like_backprop(tmp_path):
    """With k >= n Gaussian tangents span R^n: every lr of the grid gives backprop's run."""
    small = replace(
        budget.FUNCTIONS_BUDGETS["smoke"],
        functions=("sphere", "styblinski-tang"),
        dims=(2,),
        mean_tangents=(1,),
        projection_tangents=(2, 4),
        steps=15,
    )
    result = functions_result("smoke", small, None, tmp_path, False, "a test")
    cells = result.raw["cells"]
    for function in small.functions:
        exact = cell_record(cells, function, 2, "backprop", None)["mean_final_per_lr"]
        for k in (2, 4):
            proj = cell_record(cells, function, 2, "projection", k)["mean_final_per_lr"]
            assert proj.keys() == exact.keys()
            for lr, value in exact.items():
                if value is None:  # diverged: the projection diverges too
                    assert proj[lr] is None
                else:
                    assert proj[lr] == pytest.approx(value, rel=1e-9, abs=1e-12)
    # The cache: a second run reads every cell back unchanged.
    again = functions_result("smoke", small, None, tmp_path, False, "a test")
    assert again.raw["cells"] == cells
    groups = {row.group for row in result.rows}
    assert any(g.startswith("Fig. 4, styblinski-tang: best f / n") for g in groups)
    assert any(g.startswith("sphere: log10 f") for g in groups)


def test_claim_comparison_counts_ties_within_noise():
    base = {"start_value": 10.0, "minimum": 0.0, "se_best": 0.1}
    low = {**base, "mean_best": 1.0}
    assert significantly_lower(low, {**base, "mean_best": 2.0}) == 1
    assert significantly_lower(low, {**base, "mean_best": 1.2}) == 0  # < 2 SE apart
    assert significantly_lower({**base, "mean_best": 3.0}, low) == -1
    tiny = {"start_value": 10.0, "minimum": 0.0, "se_best": 0.0}
    # Both at the minimum up to float noise: a tie, whatever the ratio.
    assert significantly_lower({**tiny, "mean_best": 1e-25}, {**tiny, "mean_best": 0.0}) == 0


def test_functions_subset_reports_what_ran(tmp_path, monkeypatch):
    """A part of the paper grid: cells run once, a finished-only report names what is missing."""
    tiny = replace(
        budget.FUNCTIONS_BUDGETS["smoke"], dims=(2,), mean_tangents=(1,), projection_tangents=(2,)
    )
    monkeypatch.setitem(budget.FUNCTIONS_BUDGETS, "paper", tiny)
    out = tmp_path / "fig4"
    run_functions_subset(["sphere"], out)
    result = run_functions_subset(["sphere", "styblinski-tang"], out, finished_only=True)
    assert {r["function"] for r in result.raw["cells"]} == {"sphere"}
    # styblinski-tang n = 2: backprop, mean k = 1, projection k = 2
    assert len(result.raw["missing"]) == 3
    assert "styblinski-tang n = 2 (3 cells)" in result.scaling
    assert "rosenbrock (all 3 cells)" in result.scaling
    readme = (out / "README.md").read_text()
    assert 'run_functions_subset(["sphere", "styblinski-tang"]' in readme
    assert "finished_only=True" in readme
    assert (out / "fig4.png").exists()
