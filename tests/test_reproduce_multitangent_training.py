"""The mathematics of ``tangents-functions`` (multitangent_training.py) and ``tangents-mlp``
(tangents_mlp.py)."""

import math
from dataclasses import replace

import numpy as np
import pytest

from forwardgrad.closedform import PAPER_DIMS, sweep
from forwardgrad.reproduce import multitangent_training as mtt
from forwardgrad.reproduce import tangents_mlp as tmlp


@pytest.mark.parametrize("n", [1, 7, 64, 1024])
@pytest.mark.parametrize("k", [1, 4, 16])
def test_sphere_contraction_closed_forms(n, k):
    # Mean: E c = 1 - 4η + 4η²(n+k+1)/k is smallest at η* = k/(2(n+k+1)), where it is
    # 1 - k/(n+k+1).
    best = mtt.sphere_optimal_lr("mean", k, n)
    assert best == pytest.approx(k / (2 * (n + k + 1)))
    at_best = mtt.sphere_contraction("mean", k, n, best)
    assert at_best == pytest.approx(1 - k / (n + k + 1))
    for factor in (0.9, 1.1):
        assert mtt.sphere_contraction("mean", k, n, factor * best) > at_best
    # Projection: η* = 1/2 for every n and k, E c = 1 - k/n; the exact gradient for k >= n.
    assert mtt.sphere_optimal_lr("projection", k, n) == 0.5
    assert mtt.sphere_contraction("projection", k, n, 0.5) == pytest.approx(max(0.0, 1 - k / n))
    assert mtt.sphere_contraction("projection", k, n, 0.45) > mtt.sphere_contraction(
        "projection", k, n, 0.5
    )
    assert mtt.sphere_contraction("backprop", None, n, 0.3) == pytest.approx(0.16)
    assert mtt.sphere_expected_value("mean", k, n, best, 10) == pytest.approx(n * at_best**10)


@pytest.mark.parametrize(
    ("method", "k", "n", "lr"),
    [("mean", 1, 1, 0.2), ("mean", 3, 10, 0.05), ("mean", 16, 64, 0.09), ("projection", 2, 9, 0.3)],
)
def test_contraction_draws_reduce_to_the_closed_form(method, k, n, lr):
    """The scalar reduction of c (Beta / chi-square variables) has the closed-form mean."""
    draws = mtt.sphere_contraction_draws(method, k, n, lr, 400_000, np.random.default_rng(1))
    se = draws.std() / math.sqrt(draws.size)
    assert abs(draws.mean() - mtt.sphere_contraction(method, k, n, lr)) < 5 * se
    # Jensen: E[log c] < log E[c].
    mean_log, mc_se = mtt.sphere_log_contraction(method, k, n, lr)
    assert mean_log < math.log(mtt.sphere_contraction(method, k, n, lr))
    assert 0 < mc_se < 1e-2


def test_exact_steps_have_an_exact_log_contraction():
    exact = (pytest.approx(math.log(0.64)), 0.0)
    assert mtt.sphere_log_contraction("backprop", None, 5, 0.1) == exact
    # k >= n: the projection is the exact gradient.
    assert mtt.sphere_log_contraction("projection", 8, 8, 0.1) == exact
    assert mtt.sphere_log_contraction("backprop", None, 5, 0.5)[0] == -math.inf
    with pytest.raises(ValueError, match="exact gradient"):
        mtt.sphere_contraction_draws("projection", 8, 8, 0.1, 10, np.random.default_rng(0))


@pytest.mark.parametrize(
    ("method", "k", "lr"), [("mean", 1, 0.04), ("mean", 4, 0.1), ("projection", 3, 0.4)]
)
def test_expected_log_value_matches_gradient_descent(method, k, lr):
    """Seed means of log10 f_T from the real optimiser against log10 n + T E[log10 c]."""
    n, steps, seeds = 12, 25, 150
    result = sweep(
        "sphere",
        dims=[n],
        tangents=[k],
        methods=[method],
        lrs=[lr],
        seeds=list(range(seeds)),
        steps=steps,
        patience=None,
    )
    log_final = np.log10(result.cells[0].grid[0].final_values)
    se = log_final.std(ddof=1) / math.sqrt(seeds)
    expected = mtt.sphere_expected_log10(method, k, n, lr, steps)
    assert abs(log_final.mean() - expected) < 4 * se + 0.01


def test_authors_tables():
    for table in (mtt._AUTHORS_LR_TEXT, mtt._AUTHORS_LOSS_TEXT):
        assert len(table) == 3 * 8
        assert all(len(text.split()) == len(PAPER_DIMS) for text in table.values())
    assert mtt.authors_lr("sphere", "projection", 16, 1024) == 0.486
    assert mtt.authors_lr("rosenbrock", "backprop", None, 1) == 0.0836
    assert mtt.authors_search_loss("styblinski-tang", "backprop", None, 64) == -2510
    assert mtt.authors_search_loss("sphere", "mean", 3, 64) is None  # k = 3 was not run
    assert mtt.authors_lr("sphere", "mean", 1, 3) is None  # n = 3 was not run
    assert len(tmlp.AUTHORS_FC) == 3 * len(tmlp.MLP_METHODS)


def test_authors_sphere_learning_rates_are_the_exact_optimum():
    """The authors' searched sphere learning rates sit near η* = k/(2(n+k+1)) (mean) and 1/2
    (projection) wherever f did not reach 0 for a range of rates (n >= 128)."""
    for n in (128, 256, 512, 1024):
        for method, k in tmlp.MLP_METHODS[1:]:
            ratio = mtt.authors_lr("sphere", method, k, n) / mtt.sphere_optimal_lr(method, k, n)
            assert 0.8 < ratio < 1.2, (n, method, k, ratio)


def test_projection_with_k_at_least_n_steps_like_backprop(tmp_path):
    """With k >= n Gaussian tangents span R^n: every lr of the grid gives backprop's run."""
    budget = replace(
        mtt.FUNCTIONS_BUDGETS["smoke"],
        functions=("sphere", "styblinski-tang"),
        dims=(2,),
        mean_tangents=(1,),
        projection_tangents=(2, 4),
        steps=15,
    )
    result = mtt._functions_result("smoke", budget, None, tmp_path, False, "a test")
    cells = result.raw["cells"]
    for function in budget.functions:
        exact = mtt._find_record(cells, function, 2, "backprop", None)["mean_final_per_lr"]
        for k in (2, 4):
            proj = mtt._find_record(cells, function, 2, "projection", k)["mean_final_per_lr"]
            assert proj.keys() == exact.keys()
            for lr, value in exact.items():
                if value is None:  # diverged: the projection diverges too
                    assert proj[lr] is None
                else:
                    assert proj[lr] == pytest.approx(value, rel=1e-9, abs=1e-12)
    # The cache: a second run reads every cell back unchanged.
    again = mtt._functions_result("smoke", budget, None, tmp_path, False, "a test")
    assert again.raw["cells"] == cells
    groups = {row.group for row in result.rows}
    assert any(g.startswith("Fig. 4, styblinski-tang: best f / n") for g in groups)
    assert any(g.startswith("sphere: log10 f") for g in groups)


def test_claim_comparison_counts_ties_within_noise():
    base = {"start_value": 10.0, "minimum": 0.0, "se_best": 0.1}
    low = {**base, "mean_best": 1.0}
    assert mtt._significantly_lower(low, {**base, "mean_best": 2.0}) == 1
    assert mtt._significantly_lower(low, {**base, "mean_best": 1.2}) == 0  # < 2 SE apart
    assert mtt._significantly_lower({**base, "mean_best": 3.0}, low) == -1
    tiny = {"start_value": 10.0, "minimum": 0.0, "se_best": 0.0}
    # Both at the minimum up to float noise: a tie, whatever the ratio.
    assert mtt._significantly_lower({**tiny, "mean_best": 1e-25}, {**tiny, "mean_best": 0.0}) == 0


def test_mlp_settings_follow_the_paper():
    assert [tmlp.perturbed_dimension(w) for w in (256, 1024, 4096)] == [522, 2058, 8202]
    cfg = tmlp._mlp_config(tmlp.MLP_BUDGETS["paper"], 1024, 1024, "projection", 16, 2)
    assert (cfg.depth, cfg.width, cfg.batch_size) == (2, 1024, 64)
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay) == ("sgd", 0.0, 0.0)
    assert (cfg.guess, cfg.aggregate, cfg.tangents, cfg.scope) == (
        "activation",
        "projection",
        16,
        "global",
    )
    assert cfg.lr == 0.1270 and cfg.seed == 2
    # The projection's expected step is k/n of its learning rate; the mean is unbiased.
    assert tmlp.effective_lr("projection", 16, 2058, 0.127) == pytest.approx(0.127 * 16 / 2058)
    assert tmlp.effective_lr("mean", 16, 2058, 0.0027) == 0.0027
    bp = tmlp._mlp_config(tmlp.MLP_BUDGETS["paper"], 256, 256, "backprop", None, 0)
    assert bp.guess == "backprop" and bp.lr == 0.02605


def test_functions_subset_reports_what_ran(tmp_path, monkeypatch):
    """A part of the paper grid: cells run once, a finished-only report names what is missing."""
    tiny = replace(
        mtt.FUNCTIONS_BUDGETS["smoke"], dims=(2,), mean_tangents=(1,), projection_tangents=(2,)
    )
    monkeypatch.setitem(mtt.FUNCTIONS_BUDGETS, "paper", tiny)
    out = tmp_path / "fig4"
    mtt.run_functions_subset(["sphere"], out)
    result = mtt.run_functions_subset(["sphere", "styblinski-tang"], out, finished_only=True)
    assert {r["function"] for r in result.raw["cells"]} == {"sphere"}
    # styblinski-tang n = 2: backprop, mean k = 1, projection k = 2
    assert len(result.raw["missing"]) == 3
    assert "styblinski-tang n = 2 (3 cells)" in result.scaling
    assert "rosenbrock (all 3 cells)" in result.scaling
    readme = (out / "README.md").read_text()
    assert 'run_functions_subset(["sphere", "styblinski-tang"]' in readme
    assert "finished_only=True" in readme
    assert (out / "fig4.png").exists()
