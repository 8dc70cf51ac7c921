"""``forwardgrad reproduce NAME`` and ``forwardgrad reproduce --list``.

Wire into the main parser with ``add_reproduce_parser(sub)``. Problems raise ``ValueError`` with
a clear message (the main CLI turns it into exit code 2).
"""

from __future__ import annotations

import argparse
import sys


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..reproduce import EXPERIMENTS, default_out_dir, get_experiment, run_experiment
    from ..reproduce.report import summary_line

    if args.list:
        width = max(len(name) for name in EXPERIMENTS)
        for name, experiment in EXPERIMENTS.items():
            print(f"{name:<{width}}  {experiment.reproduces} of {experiment.paper}")
            print(f"{'':<{width}}  {experiment.summary}")
        return 0
    if args.name is None:
        raise ValueError(
            "name an experiment, or pass --list; available: " + ", ".join(sorted(EXPERIMENTS))
        )
    experiment = get_experiment(args.name)  # a clear error before any work
    out = args.out or default_out_dir(experiment.name, args.budget)
    progress = not args.no_progress and sys.stderr.isatty()
    result = run_experiment(experiment.name, args.budget, args.seeds, out, progress=progress)
    budget = "the paper's settings" if result.scaling is None else "scaled: see README.md"
    print(
        f"{experiment.name} ({experiment.reproduces}), budget {args.budget} ({budget}), "
        f"seeds {', '.join(map(str, result.seeds))}, {result.elapsed_seconds:.1f} s: "
        f"{summary_line(result)}."
    )
    print(f"wrote {', '.join(result.files)}")
    return 0


def add_reproduce_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``reproduce`` to the main parser's subparsers; returns its parser."""
    from ..reproduce.registry import BUDGETS, DEFAULT_OUT_ROOT

    p = subparsers.add_parser(
        "reproduce",
        help="rerun a paper's table or figure; ours beside the paper's numbers",
        description="Rerun a registered paper table or figure and write a results folder: "
        "results.json (numbers, settings, seeds, versions), README.md (ours beside the paper's "
        "published values) and plots. `--list` names the experiments.",
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="experiment name (see --list)")
    p.add_argument("--list", action="store_true", help="name every experiment and exit")
    p.add_argument(
        "--budget",
        choices=BUDGETS,
        default="smoke",
        help="smoke: a quick check in seconds; paper: the paper's settings, or a stated "
        "scaling of them (default smoke)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        metavar="N",
        help="number of seeds, 0..N-1 (default: the paper's count)",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default=None,
        help=f"results folder (default {DEFAULT_OUT_ROOT}/NAME-BUDGET)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_reproduce)
    return p
