import json
from pathlib import Path

import pytest

from forwardgrad.cli import main
from forwardgrad.reproduce import (
    EXPERIMENTS,
    Experiment,
    ExperimentResult,
    Plot,
    Row,
    Tolerance,
    run_experiment,
)
from forwardgrad.reproduce.report import new_figure, paper_verdict, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> dict[str, tuple[ExperimentResult, Path]]:
    """Every registered experiment, run once at the smoke budget."""
    runs = {}
    for name in EXPERIMENTS:
        out = tmp_path_factory.mktemp(name)
        runs[name] = (run_experiment(name, "smoke", out_dir=out), out)
    return runs


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_every_experiment_writes_its_results_folder(smoke, name):
    result, out = smoke[name]
    record = json.loads((out / "results.json").read_text())
    assert record["experiment"]["name"] == name
    assert record["budget"] == "smoke" and record["seeds"] == result.seeds
    assert record["settings"] and record["rows"]
    assert {"forwardgrad", "torch", "numpy"} <= set(record["versions"])
    assert "--budget smoke" in record["command"]
    for row in record["rows"]:
        assert row["reproduces_paper"] in ("yes", "no", "not reported")
    readme = (out / "README.md").read_text()
    assert "| ours | paper | theory | reproduces paper | matches theory |" in readme
    assert "## Settings" in readme and record["scaling"] in readme
    pngs = sorted(out.glob("*.png"))
    assert pngs, "no plot written"
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        assert f"({png.name})" in readme
    assert not list(out.glob(".*.tmp")), "a temporary file was left behind"


def test_list_and_errors(capsys):
    assert main(["reproduce", "--list"]) == 0
    listed = capsys.readouterr().out
    for name, experiment in EXPERIMENTS.items():
        assert name in listed and experiment.reproduces in listed

    assert main(["reproduce", "no-such-figure"]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'no-such-figure'" in err
    assert all(name in err for name in EXPERIMENTS)
    assert main(["reproduce"]) == 2
    assert "--list" in capsys.readouterr().err

    with pytest.raises(ValueError, match="available: "):
        run_experiment("no-such-figure")
    with pytest.raises(ValueError, match="unknown budget 'huge'"):
        run_experiment("tangents-angle", "huge")
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        run_experiment("tangents-angle", seeds=0)


def test_cli_default_out_dir(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "tangents-angle", "--no-progress", "--seeds", "2"]) == 0
    out = tmp_path / "runs" / "reproduce" / "tangents-angle-smoke"
    assert (out / "README.md").exists()
    assert json.loads((out / "results.json").read_text())["seeds"] == [0, 1]
    assert "match theory" in capsys.readouterr().out


# ---- the report with paper values, as training-based experiments will supply --------------


def test_report_puts_paper_values_beside_ours(tmp_path):
    def draw(result):
        fig, axes = new_figure()
        axes[0][0].plot([1, 2], [r.ours for r in result.rows[:2]])
        return fig

    rows = [
        Row("Table 1", {"method": "wt"}, ours=0.332, ours_se=0.004, paper=0.312),
        Row("Table 1", {"method": "wperp", "k": 10}, ours=0.40, ours_se=0.004, paper=0.324),
        Row("Table 1", {"method": "backprop"}, ours=0.70, ours_se=None),
    ]
    result = ExperimentResult(
        budget="smoke",
        seeds=[0, 1, 2],
        settings={"epochs": 1},
        rows=rows,
        raw={},
        paper_tolerance=Tolerance(absolute=0.04, why="train accuracy"),
        scaling="1 epoch instead of 300",
        plots=[Plot("table1.png", "train accuracy", draw)],
    )
    experiment = Experiment("demo", "A paper", "Table 1", "a demo", run=lambda *a: result)
    files = write_report(experiment, result, tmp_path, "forwardgrad reproduce demo")
    assert files == ["results.json", "README.md", "table1.png"]
    assert [paper_verdict(r, result.paper_tolerance) for r in rows] == [
        "yes",
        "no",
        "not reported",
    ]
    readme = (tmp_path / "README.md").read_text()
    assert "| wt |  | 0.3320 ± 0.0040 | 0.3120 | — | yes | — |" in readme
    assert "| wperp | 10 | 0.4000 ± 0.0040 | 0.3240 | — | no | — |" in readme
    assert "| backprop |  | 0.7000 | not reported | — | not reported | — |" in readme
    assert "1/2 of the paper's numbers reproduced" in readme
    assert "1 epoch instead of 300" in readme
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["verdict_counts"]["paper"] == {"yes": 1, "no": 1, "not reported": 1}
