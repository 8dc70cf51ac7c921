"""The registry of paper reproductions and the one function that runs any of them."""

from __future__ import annotations

import dataclasses
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .report import ExperimentResult, write_report

BUDGETS = ("smoke", "paper")
DEFAULT_OUT_ROOT = Path("runs/reproduce")

# run(budget, seeds, out_dir, progress): seeds=None means the experiment's own default (the
# paper's seed count); out_dir may hold intermediate files (training runs, checkpoints).
RunFn = Callable[[str, int | None, Path, bool], ExperimentResult]


@dataclass(frozen=True)
class Experiment:
    name: str
    paper: str  # e.g. "Flügel et al. 2024, Multi-Tangent Forward Gradients"
    reproduces: str  # e.g. "Fig. 3", "Table 1"
    summary: str
    run: RunFn


EXPERIMENTS: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add an experiment to :data:`EXPERIMENTS` (names are unique)."""
    if experiment.name in EXPERIMENTS:
        raise ValueError(f"experiment {experiment.name!r} is registered twice")
    EXPERIMENTS[experiment.name] = experiment
    return experiment


def get_experiment(name: str) -> Experiment:
    experiment = EXPERIMENTS.get(name)
    if experiment is None:
        available = ", ".join(sorted(EXPERIMENTS)) or "none"
        raise ValueError(f"unknown experiment {name!r}; available: {available}")
    return experiment


def default_out_dir(name: str, budget: str) -> Path:
    return DEFAULT_OUT_ROOT / f"{name}-{budget}"


def command_line(name: str, budget: str, seeds: int | None, out_dir: Path) -> str:
    """The CLI command that reruns this reproduction (recorded in results.json and README)."""
    parts = ["forwardgrad", "reproduce", name, "--budget", budget]
    if seeds is not None:
        parts += ["--seeds", str(seeds)]
    parts += ["--out", str(out_dir)]
    return shlex.join(parts)


def run_experiment(
    name: str,
    budget: str = "smoke",
    seeds: int | None = None,
    out_dir: str | Path | None = None,
    progress: bool = False,
) -> ExperimentResult:
    """Run a registered experiment and write its results folder.

    ``budget`` is ``smoke`` (seconds; for tests) or ``paper`` (the paper's settings, or a stated
    scaling of them). The folder defaults to ``runs/reproduce/NAME-BUDGET``. Returns the result
    with ``files`` naming what was written.
    """
    experiment = get_experiment(name)
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}; choose one of {', '.join(BUDGETS)}")
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds must be >= 1; got {seeds}")
    out = Path(out_dir) if out_dir is not None else default_out_dir(name, budget)
    start = time.perf_counter()
    result = experiment.run(budget, seeds, out, progress)
    if result.budget != budget:
        raise RuntimeError(f"experiment {name!r} reported budget {result.budget!r}, not {budget!r}")
    result = dataclasses.replace(result, elapsed_seconds=time.perf_counter() - start)
    files = write_report(experiment, result, out, command_line(name, budget, seeds, out))
    return dataclasses.replace(result, files=[str(out / f) for f in files])
