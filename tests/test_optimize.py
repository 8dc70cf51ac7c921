"""Closed-form test functions and forward-gradient descent on them (multi-tangent paper, Fig. 4)."""

import json
import math
import warnings

import pytest
import torch

from forwardgrad.cli import main
from forwardgrad.functions import FUNCTIONS, STYBLINSKI_TANG_MIN_PER_DIM, get_function
from forwardgrad.optimize import (
    LrOutcome,
    default_lr_grid,
    directional_derivatives,
    exact_gradient,
    forward_gradient,
    optimize,
    pick_lr,
    sweep,
)

NAMES = sorted(FUNCTIONS)


def _autograd_gradient(fn, x):
    """Reference gradients (*batch, n) by ordinary reverse mode."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


def _random_points(n, batch=(3,), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, n, generator=g, dtype=torch.float64)


# --- the functions ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 7])
def test_minimiser_has_known_value_and_zero_gradient(name, n):
    spec = get_function(name)
    x = spec.minimiser(n)
    assert x.shape == (n,)
    assert spec(x).item() == pytest.approx(spec.minimum(n), abs=1e-12 * max(1, n))
    assert _autograd_gradient(spec.fn, x).abs().max().item() < 1e-9


def test_known_values_at_start_points():
    for n in (1, 2, 5, 64):
        assert FUNCTIONS["sphere"](FUNCTIONS["sphere"].start(n)).item() == n
        assert FUNCTIONS["styblinski-tang"](FUNCTIONS["styblinski-tang"].start(n)).item() == 0
        # (-1, 0, ..., 0): the first term is 100 + 4, every later one (1 - 0)^2; n = 1 is empty.
        expected = 0.0 if n == 1 else 104.0 + (n - 2)
        assert FUNCTIONS["rosenbrock"](FUNCTIONS["rosenbrock"].start(n)).item() == expected


def test_styblinski_tang_minimum_is_the_global_one():
    # A dense 1-D grid (the function is separable) finds the same minimum, not the local one.
    grid = torch.linspace(-5, 5, 200_001, dtype=torch.float64).unsqueeze(-1)
    values = FUNCTIONS["styblinski-tang"](grid)
    assert values.min().item() == pytest.approx(STYBLINSKI_TANG_MIN_PER_DIM, abs=1e-6)
    assert grid[values.argmin()].item() == pytest.approx(-2.903534, abs=1e-4)
    assert STYBLINSKI_TANG_MIN_PER_DIM == pytest.approx(-39.166, abs=1e-3)  # the paper's -39.17n


def test_functions_are_batched_over_leading_axes():
    x = _random_points(4, batch=(2, 3))
    for spec in FUNCTIONS.values():
        out = spec(x)
        assert out.shape == (2, 3)
        torch.testing.assert_close(out[1, 2], spec(x[1, 2]))


def test_unknown_function_names_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'spere'.*rosenbrock.*sphere.*styblinski-tang"):
        get_function("spere")
    with pytest.raises(ValueError, match="dimension"):
        FUNCTIONS["sphere"].start(0)


# --- gradients ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_jvps_and_exact_gradient_match_autograd(name):
    fn = FUNCTIONS[name].fn
    x = _random_points(6)
    tangents = torch.randn(5, 3, 6, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    grad = _autograd_gradient(fn, x)
    values, jvps = directional_derivatives(fn, x, tangents)
    assert values.shape == (3,) and jvps.shape == (5, 3)
    torch.testing.assert_close(values, fn(x))
    torch.testing.assert_close(jvps, (tangents * grad).sum(-1))
    values, exact = exact_gradient(fn, x)
    torch.testing.assert_close(exact, grad)
    torch.testing.assert_close(values, fn(x))
    # No autograd graph is left behind: the estimates are plain tensors.
    _, estimate = forward_gradient(fn, x, tangents, "mean")
    assert not estimate.requires_grad and estimate.grad_fn is None


def test_mismatched_tangents_are_rejected():
    with pytest.raises(ValueError, match=r"expected tangents \(k, \*batch, n\)"):
        directional_derivatives(FUNCTIONS["sphere"].fn, _random_points(4), torch.randn(2, 3, 5))


@pytest.mark.parametrize("name", NAMES)
def test_projection_with_k_equal_n_is_the_exact_gradient(name):
    fn = FUNCTIONS[name].fn
    x = _random_points(6)
    tangents = torch.randn(6, 3, 6, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    _, estimate = forward_gradient(fn, x, tangents, "projection")
    torch.testing.assert_close(estimate, _autograd_gradient(fn, x), rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "method,factor",
    # E[g_mean] = g for Gaussian tangents; the sum is k times that; the projection onto a
    # uniformly random k-dimensional subspace has E[P_U] = (k / n) I.
    [("mean", lambda k, n: 1.0), ("sum", lambda k, n: k), ("projection", lambda k, n: k / n)],
)
def test_forward_gradient_expectation(method, factor):
    n, k, samples = 5, 2, 20_000
    fn = FUNCTIONS["rosenbrock"].fn
    x = _random_points(n, batch=(), seed=3) * 0.5
    grad = _autograd_gradient(fn, x)
    g = torch.Generator().manual_seed(4)
    tangents = torch.randn(k, samples, n, generator=g, dtype=x.dtype)
    _, estimates = forward_gradient(fn, x.expand(samples, n), tangents, method)
    mean = estimates.mean(0)
    stderr = estimates.std(0) / math.sqrt(samples)
    # Five standard errors per coordinate: a false alarm has probability ~ 3e-6 per coordinate.
    assert ((mean - factor(k, n) * grad).abs() <= 5 * stderr).all(), (mean, grad, stderr)


# --- descent ------------------------------------------------------------------------------------


def test_backprop_descent_on_sphere_contracts_at_the_known_rate():
    # x <- x - lr * 2x = (1 - 2 lr) x, so f_t = (1 - 2 lr)^(2t) f_0.
    n, lr, steps = 6, 0.1, 40
    result = optimize("sphere", n, "backprop", 1, lr, steps, patience=None)
    expected = [n * (1 - 2 * lr) ** (2 * t) for t in range(steps + 1)]
    assert result.steps_run == steps and result.stop_reason == "steps"
    assert result.values == pytest.approx(expected, rel=1e-12)
    assert result.final_point == pytest.approx([-((1 - 2 * lr) ** steps)] * n, rel=1e-12)
    assert result.tangents is None


def test_forward_gradient_descent_is_reproducible_and_reaches_the_minimum():
    a = optimize("sphere", 8, "projection", 4, 0.3, 300, seed=7)
    b = optimize("sphere", 8, "projection", 4, 0.3, 300, seed=7)
    c = optimize("sphere", 8, "projection", 4, 0.3, 300, seed=8)
    assert a.values == b.values and a.values != c.values
    assert a.final_value < 1e-20 and a.best_value == min(a.values)


def test_projection_with_more_tangents_than_dimensions_follows_backprop():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the expected rank warning must not leak out
        fg = optimize("rosenbrock", 2, "projection", 4, 1e-3, 200, patience=None)
    bp = optimize("rosenbrock", 2, "backprop", 1, 1e-3, 200, patience=None)
    assert fg.values == pytest.approx(bp.values, rel=1e-9)


def test_rosenbrock_in_one_dimension_is_flat():
    result = optimize("rosenbrock", 1, "mean", 2, 0.1, 100, patience=5)
    assert result.final_value == 0.0 and result.final_point == [-1.0]
    assert result.stop_reason == "no improvement" and result.steps_run == 5


def test_early_stopping_after_patience_steps_without_a_new_best():
    # lr = 1 on the sphere flips x to -x: f never improves on its start value.
    result = optimize("sphere", 3, "backprop", 1, 1.0, 1000, patience=10)
    assert result.stop_reason == "no improvement"
    assert result.steps_run == 10 and result.best_step == 0 and len(result.values) == 11


def test_divergence_is_recorded_not_raised():
    result = optimize("styblinski-tang", 8, "mean", 1, 5.0, 1000)
    assert result.diverged and not math.isfinite(result.final_value)
    assert result.steps_run < 1000 and math.isfinite(result.best_value)
    d = result.to_dict()
    assert d["result"]["final_value"] is None and d["result"]["diverged"] is True
    json.dumps(d, allow_nan=False)  # valid JSON: non-finite numbers are null


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(function="nope"), "unknown function 'nope'"),
        (dict(method="adam"), r"unknown method 'adam'.*backprop.*projection"),
        (dict(k=0), "number of tangents must be an integer >= 1; got 0"),
        (dict(n=0), "dimension must be an integer >= 1; got 0"),
        (dict(lr=-0.1), "learning rate must be a finite number > 0; got -0.1"),
        (dict(lr=math.nan), "learning rate"),
        (dict(steps=0), "steps must be an integer >= 1; got 0"),
        (dict(sampler="uniform"), r"unknown sampler 'uniform'.*normal"),
    ],
)
def test_bad_arguments_name_the_bad_value(kwargs, match):
    args = dict(function="sphere", n=4, method="mean", k=2, lr=0.1, steps=10) | kwargs
    with pytest.raises(ValueError, match=match):
        optimize(**args)


# --- sweeps -------------------------------------------------------------------------------------


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


# --- command line -------------------------------------------------------------------------------


def test_cli_optimize_prints_and_writes_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    argv = ["optimize", "--function", "styblinski-tang", "--dim", "4", "--method", "projection"]
    argv += ["--tangents", "4", "--lr", "0.01", "--steps", "200", "--seed", "3", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    saved = json.loads(out.read_text())
    assert saved["config"] == {
        "function": "styblinski-tang", "dim": 4, "method": "projection", "tangents": 4,
        "lr": 0.01, "steps": 200, "seed": 3, "patience": 50, "sampler": "normal",
        "sampler_options": {}, "dtype": "float64",
    }  # fmt: skip
    final = saved["result"]["final_value"]
    assert f"final f = {final:.6g}" in printed
    assert final == pytest.approx(4 * STYBLINSKI_TANG_MIN_PER_DIM, rel=1e-6)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temporary left over


def test_cli_sweep_writes_json_and_markdown(tmp_path, capsys):
    argv = ["sweep", "--function", "sphere", "--dims", "2,4", "--tangents", "2"]
    argv += ["--methods", "backprop,projection", "--lrs", "0.1,0.5", "--seeds", "2"]
    argv += ["--steps", "20", "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "[1/4] sphere n=2 backprop" in captured.err and "[4/4]" in captured.err
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert len(saved["cells"]) == 4 and saved["config"]["seeds"] == [0, 1]
    assert saved["config"]["lrs"] == [0.1, 0.5]
    assert len(saved["cells"][0]["grid"]) == 2
    assert "| sphere | 4 | projection | 2 |" in (tmp_path / "sweep.md").read_text()


@pytest.mark.parametrize(
    "argv,bad,allowed",
    [
        (["optimize", "--function", "spere", "--lr", "0.1"], "'spere'", "styblinski-tang"),
        (
            ["optimize", "--function", "sphere", "--lr", "0.1", "--method", "sgd"],
            "'sgd'",
            "projection",
        ),
        (["optimize", "--function", "sphere", "--lr", "fast"], "'fast'", "--lr expects a number"),
        (["optimize", "--function", "sphere", "--lr", "0.1", "--dim", "2.5"], "'2.5'", "--dim"),
        (
            ["optimize", "--function", "sphere", "--lr", "0.1", "--dtype", "half"],
            "'half'",
            "float64",
        ),
        (["sweep", "--function", "sphere", "--dims", "2,x"], "'x'", "--dims"),
        (["sweep", "--function", "sphere", "--methods", "mean,foo"], "'foo'", "backprop"),
    ],
)
def test_cli_errors_name_the_bad_value_and_exit_2(argv, bad, allowed, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "error" in err and bad in err and allowed in err
