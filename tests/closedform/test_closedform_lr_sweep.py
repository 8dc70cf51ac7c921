"""The learning-rate grid search over closed-form descent runs and its lr choice."""

import json
import math

import pytest

from forwardgrad.closedform.descent import optimize
from forwardgrad.closedform.lr_sweep import LrOutcome, pick_lr, sweep
from forwardgrad.closedform.settings import default_lr_grid


def test_sweep_picks_the_best_learning_rate_and_records_divergence():
    lrs = [1e-3, 0.1, 0.4, 1e6]
    result = sweep(
        "sphere", dims=[4], tangents=[2], methods=["backprop", "mean"], lrs=lrs,
        seeds=[0, 1], steps=30, patience=None,
    )  # fmt: skip
    assert [(c.method, c.tangents) for c in result.cells] == [("backprop", None), ("mean", 2)]
    bp, fg = result.cells
    # Backprop contracts by |1 - 2 lr| per step: 0.4 is the fastest lr of the grid.
    assert bp.best_lr == 0.4
    assert [o.diverged for o in bp.grid] == [0, 0, 0, 2]
    assert bp.winner.mean_final == pytest.approx(4 * 0.2**60, rel=1e-9)
    for cell in result.cells:
        scores = [o.mean_final for o in cell.grid]
        assert cell.winner.mean_final == min(scores)
        assert not math.isfinite(cell.grid[-1].mean_final)  # the diverged lr is disqualified
    # A run inside the sweep is the same run as optimize() with its seed and lr.
    alone = optimize("sphere", 4, "mean", 2, fg.best_lr, 30, seed=1, patience=None)
    assert fg.winner.final_values[1] == pytest.approx(alone.final_value, rel=1e-9)
    md = result.to_markdown()
    assert "| sphere | 4 | backprop | – | 0.4 |" in md and "1/4" in md
    json.dumps(result.to_dict(), allow_nan=False)


def test_pick_lr_breaks_exact_ties_in_the_middle_and_skips_divergence():
    def outcome(lr, value, diverged=0):
        return LrOutcome(lr, [value], [value], [10], diverged)

    grid = [outcome(0.01, 1.0), outcome(0.1, 0.0), outcome(0.2, 0.0), outcome(0.3, 0.0)]
    assert pick_lr(grid).lr == 0.2
    assert pick_lr([outcome(0.1, -5.0, diverged=1), outcome(0.01, 3.0)]).lr == 0.01
    assert pick_lr([outcome(0.1, math.nan, diverged=1)]) is None


def test_default_lr_grid_spans_the_papers_range():
    grid = default_lr_grid()
    assert len(grid) == 19 and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="per_decade"):
        default_lr_grid(per_decade=0)


def test_sweep_rejects_bad_values():
    with pytest.raises(ValueError, match=r"unknown select_by 'worst'.*final.*best"):
        sweep("sphere", dims=[2], lrs=[0.1], seeds=[0], steps=5, select_by="worst")
    with pytest.raises(ValueError, match="every number of tangents must be an integer >= 1"):
        sweep("sphere", dims=[2], tangents=[0], lrs=[0.1], seeds=[0], steps=5)
