"""Training curves: train/test accuracy and loss over epochs, mean and spread over seeds.

Runs that differ only in their seed (and in what a resume may change) are one curve: the mean
over the seeds that reached each epoch, with a band of +- one standard deviation where there
are two or more. The PNG is written atomically; matplotlib is imported only here, with the Agg
canvas, so no display is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..io import atomic_write, read_jsonl
from ..stats import finite_mean_std
from .resume import RESUME_FIELDS, read_config

PANELS = (
    ("train_acc", "train accuracy"),
    ("test_acc", "test accuracy"),
    ("train_loss", "train loss"),
    ("test_loss", "test loss"),
)
_IGNORED = {"seed", *RESUME_FIELDS}  # runs differing only here are one curve


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Every run folder (one holding ``metrics.jsonl``) at or below ``paths``, in order."""
    found: list[Path] = []
    for given in paths:
        p = Path(given)
        if not p.exists():
            raise FileNotFoundError(f"no run folder at {p}")
        if (p / "metrics.jsonl").exists():
            runs = [p]
        else:
            runs = sorted(m.parent for m in p.rglob("metrics.jsonl"))
        if not runs:
            raise FileNotFoundError(f"{p} holds no run (no metrics.jsonl at or below it)")
        found += [r for r in runs if r not in found]
    return found


def _label(run: Path) -> str:
    # compare() keeps OUT/<guess spec>/seed<s>: the spec names the curve.
    return run.parent.name if run.name.startswith("seed") else run.name


def group_runs(runs: Sequence[Path]) -> dict[str, list[Path]]:
    """Runs grouped by their settings (seed aside), each group named after its first run."""
    groups: dict[str, list[Path]] = {}
    keys: dict[str, tuple] = {}
    for run in runs:
        try:
            cfg = read_config(run)
            key = tuple(sorted((k, repr(v)) for k, v in cfg.items() if k not in _IGNORED))
        except ValueError:
            key = (str(run),)  # no readable config: a curve of its own
        name = next((n for n, k in keys.items() if k == key), None)
        if name is None:
            name = _label(run)
            while name in groups:
                name += "'"
            keys[name] = key
            groups[name] = []
        groups[name].append(run)
    return groups


def _mean_band(series: list[dict[int, float]]) -> tuple[list[int], list[float], list[float]]:
    epochs = sorted({e for s in series for e in s})
    means, stds = [], []
    for e in epochs:
        mean, std = finite_mean_std(s[e] for s in series if e in s)
        means.append(mean)
        stds.append(0.0 if math.isnan(std) else std)
    return epochs, means, stds


def _series(run: Path, metric: str) -> dict[int, float]:
    try:
        return {r["epoch"]: r[metric] for r in read_jsonl(run / "metrics.jsonl")}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{run / 'metrics.jsonl'} is corrupt ({e})") from None


def plot_groups(groups: dict[str, list[Path]], path: str | Path, title: str = "") -> Path:
    """Draw every group's curves (four panels) to the PNG ``path``; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 7.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (metric, name) in zip(axes.flat, PANELS):
        for label, runs in groups.items():
            series = [_series(run, metric) for run in runs]
            epochs, mean, std = _mean_band(series)
            if not epochs:
                continue
            seeds = f" ({len(runs)} seeds)" if len(runs) > 1 else ""
            (line,) = ax.plot(epochs, mean, label=label + seeds, linewidth=1.5)
            if len(runs) > 1:
                low = [m - s for m, s in zip(mean, std)]
                high = [m + s for m, s in zip(mean, std)]
                ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_title(name)
        ax.grid(True, alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0, 0].legend(fontsize="small")
    if any(len(runs) > 1 for runs in groups.values()):
        title = (title + " " if title else "") + "(band: ± 1 std over seeds)"
    if title:
        fig.suptitle(title)
    out = Path(path)
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=110))
    return out
