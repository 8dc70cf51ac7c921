"""``forwardgrad plot RUN_DIR...``: training curves of runs (or of compare folders) to a PNG.

Wire into the main parser with ``add_plot_parser(sub)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_plot(args: argparse.Namespace) -> int:
    from ..training.curves import find_runs, group_runs, plot_groups

    runs = find_runs(args.runs)
    if args.out:
        out = Path(args.out)
    elif len(args.runs) == 1:
        out = Path(args.runs[0]) / "curves.png"
    else:
        out = Path("curves.png")
    if out.suffix.lower() != ".png":
        raise ValueError(f"--out {out} must name a .png file")
    groups = group_runs(runs)
    plot_groups(groups, out, title=args.title or "")
    curves = ", ".join(f"{name} ({len(r)} run(s))" for name, r in groups.items())
    print(f"wrote {out}: {curves}")
    return 0


def add_plot_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``plot`` to the main parser's subparsers; returns its parser."""
    p = subparsers.add_parser(
        "plot",
        help="draw training curves (accuracy and loss over epochs) of runs to a PNG",
        description="Draw train/test accuracy and loss over epochs for run folders, or every "
        "run below a folder (a compare output). Runs that differ only in their seed are one "
        "curve: the mean, with a band of ± 1 std over the seeds.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders or folders of runs")
    p.add_argument(
        "--out",
        metavar="FILE.png",
        help="output PNG (default RUN_DIR/curves.png for one folder, ./curves.png for several)",
    )
    p.add_argument("--title", help="figure title")
    p.set_defaults(func=cmd_plot)
    return p
