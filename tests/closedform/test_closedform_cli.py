"""``forwardgrad optimize`` and ``forwardgrad sweep``: output files, printed lines, bad values."""

import json

import pytest

from forwardgrad.cli import main
from forwardgrad.closedform.functions import STYBLINSKI_TANG_MIN_PER_DIM


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
