"""``tangents-functions`` (Fig. 4): the learning-rate sweep of every (function, n, method, k)
cell, cached under ``OUT/cells`` so a long run resumes where it stopped, and each cell's summary.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...closedform import get_function, sweep
from ...io import write_text
from ...stats import mean_and_se
from .common import find_record, method_label, torch_threads
from .fig4_budget import FunctionsBudget, authors_lr, authors_search_loss, method_plan
from .fig4_sphere import SPHERE_LOG10_FLOOR, sphere_expected_log10


def cell_path(out_dir: Path, function: str, n: int, method: str, k: int | None) -> Path:
    """Where one cell's sweep is cached."""
    return out_dir / "cells" / function / f"n{n}-{method_label(method, k)}.json"


def sweep_cell(
    budget: FunctionsBudget,
    seeds: list[int],
    function: str,
    n: int,
    method: str,
    k: int | None,
    out_dir: Path,
    report: Callable[[str], None] | None,
    compute: bool = True,
) -> dict[str, Any] | None:
    """One (function, n, method, k) cell of the sweep, from the cache when it matches.

    With ``compute`` False a cell that is not cached is None instead of being run.
    """
    settings = {
        "function": function,
        "dim": n,
        "method": method,
        "tangents": k,
        "lrs": list(budget.lrs),
        "seeds": seeds,
        "steps": budget.steps,
        "patience": budget.patience,
    }
    path = cell_path(out_dir, function, n, method, k)
    if path.exists():
        saved = json.loads(path.read_text())
        if saved.get("settings") == settings:
            return saved["cell"]
    if not compute:
        return None
    result = sweep(
        function,
        dims=[n],
        tangents=[k or 1],
        methods=[method],
        lrs=budget.lrs,
        seeds=seeds,
        steps=budget.steps,
        patience=budget.patience,
        progress=report,
    )
    cell = result.cells[0].to_dict()
    # Compact: the full paper grid writes a few hundred of these.
    write_text(path, json.dumps({"settings": settings, "cell": cell}, separators=(",", ":")))
    return cell


def summarise_cell(cell: dict[str, Any], function: str, steps: int) -> dict[str, Any]:
    """The winning learning rate's per-seed numbers and what the authors and theory say."""
    n, method, k = cell["dim"], cell["method"], cell["tangents"]
    spec = get_function(function)
    start_value = float(spec(spec.start(n)))
    record: dict[str, Any] = {
        "function": function,
        "dim": n,
        "method": method,
        "tangents": k,
        "minimum": cell["minimum"],
        "start_value": start_value,
        "best_lr": cell["best_lr"],
        "authors_lr": authors_lr(function, method, k, n),
        "authors_search_final": authors_search_loss(function, method, k, n),
        "diverged_lrs": cell["diverged_lrs"],
        "mean_final_per_lr": {str(o["lr"]): o["mean_final"] for o in cell["grid"]},
        "seconds": cell["seconds"],
    }
    winner = next((o for o in cell["grid"] if o["lr"] == cell["best_lr"]), None)
    for stat in ("best", "final"):
        values = winner[f"{stat}_values"] if winner else []
        mean, se = mean_and_se(values)
        record[f"{stat}_values"] = values
        record[f"mean_{stat}"], record[f"se_{stat}"] = mean, se
    record["steps_run"] = winner["steps_run"] if winner else []
    if function == "sphere" and winner is not None:
        finals = np.asarray(winner["final_values"], dtype=float)
        expected = sphere_expected_log10(method, k, n, cell["best_lr"], steps)
        ran_through = all(s == steps for s in winner["steps_run"])
        if ran_through and expected >= SPHERE_LOG10_FLOOR and bool((finals > 0).all()):
            mean, se = mean_and_se(np.log10(finals))
            record["log10_final"] = {"mean": mean, "se": se, "theory": expected}
    return record


def cell_record(
    records: list[dict[str, Any]], function: str, n: int, method: str, k: int | None
) -> dict[str, Any] | None:
    """The summary of one (function, n, method, k) cell, None where it has not run."""
    return find_record(records, function=function, dim=n, method=method, tangents=k)


def run_cells(
    budget: FunctionsBudget, seeds: list[int], out_dir: Path, progress: bool, compute: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every cell's summary, run or read from the cache, and the cells left out (only those not
    cached, when ``compute`` is False)."""
    report = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else None
    records = []
    missing: list[dict[str, Any]] = []
    with torch_threads(budget.threads):
        for function in budget.functions:
            steps = budget.steps or get_function(function).steps
            for n in budget.dims:
                for method, k in method_plan(budget):
                    cell = sweep_cell(
                        budget, seeds, function, n, method, k, out_dir, report, compute
                    )
                    if cell is None:
                        missing.append({"function": function, "dim": n, "method": method, "k": k})
                    else:
                        records.append(summarise_cell(cell, function, steps))
    return records, missing
