"""Every committed result under docs/results/ is what today's code writes from its numbers.

The run folders behind them are not in the repository (hours of training each), so this checks
what can be checked without them: each ``README.md`` rendered again from its ``results.json``,
with today's registry text (name, paper, figure, summary) and today's report code, is the
committed file, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from forwardgrad.reproduce import get_experiment, report
from forwardgrad.reproduce.report import ExperimentResult, Plot, Row, Tolerance
from forwardgrad.reproduce.wang2025.common import PaperTolerance

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"
FOLDERS = sorted(p for p in RESULTS.iterdir() if (p / "results.json").exists())
VERDICTS = ("reproduces_paper", "matches_theory")


def _int_keys(value):
    """JSON turned a settings dict's integer keys (widths) into strings: turn them back."""
    if isinstance(value, dict):
        keys_are_ints = value and all(isinstance(k, str) and k.isdigit() for k in value)
        return {(int(k) if keys_are_ints else k): _int_keys(v) for k, v in value.items()}
    return value


def _result(record: dict) -> ExperimentResult:
    def tolerance(key: str) -> Tolerance | None:
        fields = record[key]
        if not fields:
            return None
        if "factor" in fields:  # the W~perp paper's: a factor for values outside a band
            return PaperTolerance(**{**fields, "band": tuple(fields["band"])})
        return Tolerance(**fields)

    rows = [Row(**{k: v for k, v in r.items() if k not in VERDICTS}) for r in record["rows"]]
    return ExperimentResult(
        budget=record["budget"],
        seeds=record["seeds"],
        settings=_int_keys(record["settings"]),
        rows=rows,
        raw=record["raw"],
        paper_tolerance=tolerance("paper_tolerance"),
        theory_tolerance=tolerance("theory_tolerance"),
        scaling=record["scaling"],
        theory=record["theory"],
        notes=record["notes"],
        plots=[Plot(name, caption, draw=None) for name, caption in record["plots"].items()],
        elapsed_seconds=record["elapsed_seconds"],
    )


def test_every_registered_experiment_has_its_committed_results():
    from forwardgrad.reproduce import EXPERIMENTS

    assert sorted(p.name for p in FOLDERS) == sorted(EXPERIMENTS)


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.name)
def test_committed_readme_is_what_the_report_writes_from_its_numbers(folder, monkeypatch):
    record = json.loads((folder / "results.json").read_text())
    monkeypatch.setattr(report, "versions", lambda: record["versions"])
    experiment = get_experiment(record["experiment"]["name"])
    assert record["experiment"] == {
        "name": experiment.name,
        "paper": experiment.paper,
        "reproduces": experiment.reproduces,
        "summary": experiment.summary,
    }
    result = _result(record)
    files = ["results.json", "README.md", *record["plots"]]
    assert record["outcome"] == report.summary_line(result)
    readme = report.render_readme(experiment, result, record["command"], files)
    assert readme == (folder / "README.md").read_text()
