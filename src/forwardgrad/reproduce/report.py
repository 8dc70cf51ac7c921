"""The pieces an experiment hands back, and the results folder written from them.

An experiment returns an :class:`ExperimentResult`: its settings, seeds and raw numbers, a list
of :class:`Row` (one number of ours beside the paper's published value and, where one exists, a
closed-form value), the tolerances that decide whether a row reproduces, free-text theory and
notes, and :class:`Plot` functions. :func:`write_report` turns that into

* ``results.json``: everything, plus the verdicts and the package versions;
* ``README.md``: a table per row group, ours | paper | theory | verdicts, then settings, theory,
  notes and the plots;
* one PNG per plot.

Every file is written atomically. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..io import atomic_write, write_json, write_text
from ..stats import mean_and_se

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .registry import Experiment

NOT_REPORTED = "not reported"


@dataclass(frozen=True)
class Tolerance:
    """``|ours - reference| <= absolute + standard_errors * SE(ours)`` counts as agreement."""

    absolute: float = 0.0
    standard_errors: float = 0.0
    why: str = ""

    def allows(self, ours: float, ours_se: float | None, reference: float) -> bool:
        slack = self.absolute + self.standard_errors * (ours_se or 0.0)
        return abs(ours - reference) <= slack

    def describe(self) -> str:
        parts = []
        if self.standard_errors:
            parts.append(f"{self.standard_errors:g} standard errors of ours")
        if self.absolute or not parts:
            parts.append(f"{self.absolute:g} absolute")
        text = "|ours − reference| ≤ " + " + ".join(parts)
        return f"{text} ({self.why})" if self.why else text


@dataclass(frozen=True)
class Row:
    """One measured number beside the paper's and the theory's.

    ``group`` names the README table the row goes into; ``labels`` are its identifying columns
    (in order). ``paper`` is the value as published, None where the paper gives no number;
    ``theory`` a closed-form expectation, None where there is none.
    """

    group: str
    labels: dict[str, Any]
    ours: float
    ours_se: float | None = None
    paper: float | None = None
    theory: float | None = None


@dataclass(frozen=True)
class Plot:
    """A PNG of the results: ``draw(result)`` returns a matplotlib Figure."""

    filename: str
    caption: str
    draw: Callable[[ExperimentResult], Figure]


@dataclass
class ExperimentResult:
    """What an experiment's ``run`` returns; :func:`write_report` needs nothing else."""

    budget: str
    seeds: list[int]
    settings: dict[str, Any]
    rows: list[Row]
    raw: dict[str, Any]
    paper_tolerance: Tolerance | None = None
    theory_tolerance: Tolerance | None = None
    scaling: str | None = None  # how this budget departs from the paper's settings, and why
    theory: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    elapsed_seconds: float = math.nan
    files: list[str] = field(default_factory=list)  # filled in by write_report


# ---------------------------------------------------------------------------------------------
# Verdicts


def paper_verdict(row: Row, tolerance: Tolerance | None) -> str:
    if row.paper is None:
        return NOT_REPORTED
    if tolerance is None:
        return "no tolerance"
    return "yes" if tolerance.allows(row.ours, row.ours_se, row.paper) else "no"


def theory_verdict(row: Row, tolerance: Tolerance | None) -> str:
    if row.theory is None or tolerance is None:
        return "—"
    return "yes" if tolerance.allows(row.ours, row.ours_se, row.theory) else "no"


def verdict_counts(result: ExperimentResult) -> dict[str, dict[str, int]]:
    """``{"paper": {"yes": .., "no": .., "not reported": ..}, "theory": {...}}``."""
    counts: dict[str, dict[str, int]] = {"paper": {}, "theory": {}}
    for row in result.rows:
        for key, verdict in (
            ("paper", paper_verdict(row, result.paper_tolerance)),
            ("theory", theory_verdict(row, result.theory_tolerance)),
        ):
            counts[key][verdict] = counts[key].get(verdict, 0) + 1
    return counts


def summary_line(result: ExperimentResult) -> str:
    """One sentence: how many rows reproduce the paper and match theory."""
    c = verdict_counts(result)
    compared = c["paper"].get("yes", 0) + c["paper"].get("no", 0)
    if compared:
        paper = f"{c['paper'].get('yes', 0)}/{compared} of the paper's numbers reproduced"
    else:
        paper = "the paper publishes no numbers for these rows"
    checked = c["theory"].get("yes", 0) + c["theory"].get("no", 0)
    theory = f"; {c['theory'].get('yes', 0)}/{checked} rows match theory" if checked else ""
    return paper + theory


# ---------------------------------------------------------------------------------------------
# Statistics helpers shared by experiments


def describe_sample(values: np.ndarray) -> dict[str, float]:
    """Summary of per-draw values: mean, std, SE, root mean square and its (delta-method) SE."""
    x = np.asarray(values, dtype=np.float64)
    n = x.size
    mean, se = mean_and_se(x)
    sq_mean, sq_se = mean_and_se(x**2)
    rms = math.sqrt(sq_mean)
    return {
        "count": n,
        "mean": mean,
        "std": float(x.std(ddof=1)) if n > 1 else 0.0,
        "se": se if se is not None else 0.0,
        "rms": rms,
        "rms_se": (sq_se or 0.0) / (2 * rms) if rms > 0 else 0.0,
        "min": float(x.min()),
        "max": float(x.max()),
    }


# ---------------------------------------------------------------------------------------------
# Plot helpers (matplotlib is imported here, lazily, and only the Agg canvas is used)


def new_figure(
    ncols: int = 1, nrows: int = 1, panel_size: tuple[float, float] = (5.0, 3.8)
) -> tuple[Figure, np.ndarray]:
    """A figure on the Agg canvas (no pyplot, no global backend switch) and its axes grid."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def draw_curve(
    ax: Axes,
    x: Sequence[float],
    y: Sequence[float],
    se: Sequence[float] | None = None,
    **style: Any,
) -> None:
    """A line with markers and, given standard errors, a shaded 95% band."""
    ax.plot(x, y, **{"marker": "o", "markersize": 3.5, **style})
    if se is not None:
        lo = np.asarray(y) - 1.96 * np.asarray(se)
        hi = np.asarray(y) + 1.96 * np.asarray(se)
        ax.fill_between(x, lo, hi, alpha=0.2, color=ax.lines[-1].get_color(), linewidth=0)


def draw_methods_against_k(
    ax: Axes,
    find: Callable[[str, int | None], dict[str, Any] | None],
    metric: str,
    ks: Sequence[int],
) -> None:
    """Backprop as a horizontal line, the mean (dashed) and the projection (solid) of k
    tangents against k; ``find(method, k)`` gives a record with ``record[metric]["mean"]`` and
    ``["se"]``, or None."""
    bp = find("backprop", None)
    if bp is not None and math.isfinite(bp[metric]["mean"]):
        ax.axhline(bp[metric]["mean"], color="k", linewidth=1.2, label="backprop")
    for method, dashed in (("mean", True), ("projection", False)):
        found = [
            r for k in ks if (r := find(method, k)) is not None and math.isfinite(r[metric]["mean"])
        ]
        if not found:
            continue
        draw_curve(
            ax,
            [r["tangents"] for r in found],
            [r[metric]["mean"] for r in found],
            [r[metric]["se"] or 0.0 for r in found],
            color="C1" if dashed else "C0",
            linestyle="--" if dashed else "-",
            marker="s" if dashed else "o",
            label=method,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ks), [str(k) for k in ks])
    ax.set_xlabel("tangents k")
    ax.grid(True, alpha=0.3)


def save_figure(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=130))


# ---------------------------------------------------------------------------------------------
# Writing the folder


def _report_number(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    ax = abs(x)
    if ax != 0 and (ax < 1e-3 or ax >= 1e5):
        return f"{x:.3e}"
    if ax >= 100:
        return f"{x:.1f}"
    if ax >= 10:
        return f"{x:.2f}"
    return f"{x:.4f}"


def _ours_text(row: Row) -> str:
    if row.ours_se is None:
        return _report_number(row.ours)
    return f"{_report_number(row.ours)} ± {_report_number(row.ours_se)}"


def _label(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def markdown_tables(result: ExperimentResult) -> str:
    """One markdown table per row group, in the order the groups first appear."""
    groups: dict[str, list[Row]] = {}
    for row in result.rows:
        groups.setdefault(row.group, []).append(row)
    out = []
    for group, rows in groups.items():
        label_cols: list[str] = []
        for row in rows:
            label_cols += [c for c in row.labels if c not in label_cols]
        cols = [*label_cols, "ours", "paper", "theory", "reproduces paper", "matches theory"]
        lines = [f"### {group}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for row in rows:
            cells = [_label(row.labels.get(c, "")) for c in label_cols]
            cells += [
                _ours_text(row),
                NOT_REPORTED if row.paper is None else _report_number(row.paper),
                _report_number(row.theory),
                paper_verdict(row, result.paper_tolerance),
                theory_verdict(row, result.theory_tolerance),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _settings_lines(settings: dict[str, Any]) -> list[str]:
    return [f"- `{k}`: {v}" for k, v in settings.items()]


def versions() -> dict[str, str]:
    """Versions of the software that produced the numbers."""
    import torch

    from .. import __version__

    found = {
        "forwardgrad": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import matplotlib

        found["matplotlib"] = matplotlib.__version__
    except ImportError:  # pragma: no cover - plots then fail with a clear ImportError
        pass
    return found


def render_readme(
    experiment: Experiment, result: ExperimentResult, command: str, files: Sequence[str]
) -> str:
    budget_text = (
        f"`{result.budget}`: the paper's settings, unscaled."
        if result.scaling is None
        else f"`{result.budget}`: {result.scaling}"
    )
    seeds = ", ".join(str(s) for s in result.seeds)
    parts = [
        f"# {experiment.name}: {experiment.reproduces} of {experiment.paper}",
        "",
        experiment.summary,
        "",
        f"Reproduce with `{command}`.",
        "",
        f"- Budget {budget_text}",
        f"- Seeds: {seeds}.",
        f"- Outcome: {summary_line(result)}.",
        "",
        "## Results",
        "",
        "Ours is the mean ± one standard error. *paper* is the value as published "
        f"('{NOT_REPORTED}' where the paper gives no number); *theory* a closed-form "
        "expectation (derived below; '—' where there is none).",
        "",
    ]
    for name, tol in (("paper", result.paper_tolerance), ("theory", result.theory_tolerance)):
        if tol is not None:
            parts.append(f"- Tolerance against {name}: {tol.describe()}.")
    parts += ["", markdown_tables(result), ""]
    if result.theory:
        parts += ["## Theory", "", *[f"- {t}" for t in result.theory], ""]
    if result.notes:
        parts += ["## Notes", "", *[f"- {t}" for t in result.notes], ""]
    if result.plots:
        parts += ["## Plots", ""]
        for plot in result.plots:
            parts += [f"![{plot.caption}]({plot.filename})", "", f"*{plot.caption}*", ""]
    parts += ["## Settings", "", *_settings_lines(result.settings), ""]
    env = ", ".join(f"{k} {v}" for k, v in versions().items())
    parts += [
        "## Environment",
        "",
        f"{env}; {result.elapsed_seconds:.1f} s. Raw numbers: `results.json`. "
        f"Files: {', '.join(f'`{f}`' for f in files)}.",
        "",
    ]
    return "\n".join(parts)


def _row_record(row: Row, result: ExperimentResult) -> dict[str, Any]:
    return {
        **asdict(row),
        "reproduces_paper": paper_verdict(row, result.paper_tolerance),
        "matches_theory": theory_verdict(row, result.theory_tolerance),
    }


def write_report(
    experiment: Experiment, result: ExperimentResult, out_dir: Path, command: str
) -> list[str]:
    """Write results.json, README.md and the plots into ``out_dir``; returns the file names."""
    out_dir = Path(out_dir)
    for plot in result.plots:
        save_figure(plot.draw(result), out_dir / plot.filename)
    files = ["results.json", "README.md", *(p.filename for p in result.plots)]
    record = {
        "experiment": {
            "name": experiment.name,
            "paper": experiment.paper,
            "reproduces": experiment.reproduces,
            "summary": experiment.summary,
        },
        "command": command,
        "budget": result.budget,
        "seeds": result.seeds,
        "settings": result.settings,
        "scaling": result.scaling,
        "paper_tolerance": asdict(result.paper_tolerance) if result.paper_tolerance else None,
        "theory_tolerance": asdict(result.theory_tolerance) if result.theory_tolerance else None,
        "outcome": summary_line(result),
        "verdict_counts": verdict_counts(result),
        "rows": [_row_record(r, result) for r in result.rows],
        "theory": result.theory,
        "notes": result.notes,
        "raw": result.raw,
        "plots": {p.filename: p.caption for p in result.plots},
        "versions": versions(),
        "elapsed_seconds": result.elapsed_seconds,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(out_dir / "results.json", record)
    write_text(out_dir / "README.md", render_readme(experiment, result, command, files))
    return files
