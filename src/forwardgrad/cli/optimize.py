"""``forwardgrad optimize`` (one descent run) and ``forwardgrad sweep`` (learning-rate grid).

Wire into the main parser with ``add_optimize_parsers(sub)``. Bad names and values raise
``ValueError`` naming the bad value and the allowed ones (the main CLI exits with code 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..closedform import (
    DTYPES,
    FUNCTIONS,
    METHODS,
    PAPER_DIMS,
    PAPER_METHODS,
    PAPER_PATIENCE,
    PAPER_TANGENTS,
    SELECT_BY,
    default_lr_grid,
    optimize,
    sweep,
)
from ..core.samplers import SAMPLERS
from ..io import write_json, write_text


def _parse_number(flag: str, text: str, kind: type) -> int | float:
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{flag} expects {what}; got {text!r}") from None


def _parse_list(flag: str, text: str, kind: type) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"{flag} needs at least one value; got {text!r}")
    return [_parse_number(flag, t, kind) if kind is not str else t for t in items]


def _dtype(name: str):
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def _patience(text: str) -> int | None:
    value = _parse_number("--patience", text, int)
    if value < 0:
        raise ValueError(f"--patience must be >= 0 (0 = no early stopping); got {value}")
    return value or None


def _sampler_options(args: argparse.Namespace) -> dict[str, float]:
    options = {}
    if args.angle is not None:
        options["angle"] = _parse_number("--angle", args.angle, float)
    if args.max_length is not None:
        options["max_length"] = _parse_number("--max-length", args.max_length, float)
    return options


def cmd_optimize(args: argparse.Namespace) -> int:
    """One run; prints the final value, writes JSON. Exit code 1 when the run diverged."""
    n = _parse_number("--dim", args.dim, int)
    k = _parse_number("--tangents", args.tangents, int)
    steps = None if args.steps is None else _parse_number("--steps", args.steps, int)
    result = optimize(
        args.function,
        n,
        args.method,
        k,
        _parse_number("--lr", args.lr, float),
        steps,
        _parse_number("--seed", args.seed, int),
        patience=_patience(args.patience),
        sampler=args.sampler,
        sampler_options=_sampler_options(args),
        dtype=_dtype(args.dtype),
    )
    label = args.method if result.tangents is None else f"{args.method} k={k}"
    out = Path(
        args.out
        or f"runs/optimize-{args.function}-n{n}-{args.method}"
        + ("" if result.tangents is None else f"-k{k}")
        + f"-seed{result.seed}.json"
    )
    write_json(out, result.to_dict())
    print(
        f"{args.function} n={n} {label} lr={result.lr:g} seed {result.seed}: "
        f"final f = {result.final_value:.6g} after {result.steps_run} steps "
        f"({result.stop_reason}); best f = {result.best_value:.6g}; f* = {result.minimum:.6g}; "
        f"results in {out}"
    )
    return 1 if result.diverged else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """A learning-rate grid per (function, dim, method, k); writes sweep.json and sweep.md."""
    if args.lrs is not None:
        lrs = _parse_list("--lrs", args.lrs, float)
    else:
        lrs = default_lr_grid(
            _parse_number("--lr-min-exp", args.lr_min_exp, int),
            _parse_number("--lr-max-exp", args.lr_max_exp, int),
            _parse_number("--lr-per-decade", args.lr_per_decade, int),
        )
    first = _parse_number("--seed", args.seed, int)
    count = _parse_number("--seeds", args.seeds, int)
    if count < 1:
        raise ValueError(f"--seeds must be >= 1; got {count}")
    result = sweep(
        _parse_list("--function", args.function, str),
        dims=_parse_list("--dims", args.dims, int),
        tangents=_parse_list("--tangents", args.tangents, int),
        methods=_parse_list("--methods", args.methods, str),
        lrs=lrs,
        seeds=list(range(first, first + count)),
        steps=None if args.steps is None else _parse_number("--steps", args.steps, int),
        patience=_patience(args.patience),
        sampler=args.sampler,
        sampler_options=_sampler_options(args),
        select_by=args.select_by,
        dtype=_dtype(args.dtype),
        progress=None if args.quiet else lambda line: print(line, file=sys.stderr, flush=True),
    )
    out = Path(args.out)
    write_json(out / "sweep.json", result.to_dict())
    table = result.to_markdown()
    write_text(out / "sweep.md", table)
    print(table, end="")
    print(f"\nwrote {out / 'sweep.json'} and {out / 'sweep.md'}")
    return 0


def _join(items) -> str:
    return ", ".join(str(i) for i in items)


def _add_shared(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--steps", default=None, help="step budget (default: the function's; see the summaries)"
    )
    p.add_argument(
        "--patience",
        default=str(PAPER_PATIENCE),
        help="stop after this many steps without a new best value; 0 = never "
        f"(default {PAPER_PATIENCE}, as in the paper)",
    )
    p.add_argument(
        "--sampler", default="normal", help=f"tangent sampler: {_join(SAMPLERS)} (default normal)"
    )
    p.add_argument("--angle", default=None, help="sampler 'angle': degrees to the base tangent")
    p.add_argument("--max-length", default=None, help="sampler 'varying-length': maximum length")
    p.add_argument("--dtype", default="float64", help=f"{' | '.join(DTYPES)} (default float64)")


def add_optimize_parsers(subparsers) -> None:
    """Add ``optimize`` and ``sweep`` to the main parser's subparsers."""
    functions = "\n".join(f"  {name:<16} {s.summary}" for name, s in FUNCTIONS.items())
    methods = "\n".join(f"  {name:<16} {text}" for name, text in METHODS.items())
    listing = f"functions:\n{functions}\n\nmethods:\n{methods}"

    p = subparsers.add_parser(
        "optimize",
        help="gradient descent on a closed-form function with one gradient estimator",
        description="Minimise a test function from the paper's start point by plain gradient "
        "descent; print the final value and write the run (config, seed, trajectory) as JSON. "
        "Exit code 1 when the run diverged.",
        epilog=listing,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--function", required=True, help=f"test function: {_join(FUNCTIONS)}")
    p.add_argument("--dim", default="64", help="dimension n (default 64)")
    p.add_argument("--method", default="mean", help=f"{' | '.join(METHODS)} (default mean)")
    p.add_argument("--tangents", default="1", help="tangents per step k (default 1)")
    p.add_argument("--lr", required=True, help="learning rate")
    p.add_argument("--seed", default="0", help="seed of the tangent generator (default 0)")
    _add_shared(p)
    p.add_argument(
        "--out",
        help="JSON file (default runs/optimize-<function>-n<dim>-<method>[-k<k>]-seed<seed>.json)",
    )
    p.set_defaults(func=cmd_optimize)

    p = subparsers.add_parser(
        "sweep",
        help="learning-rate grid search per function, dimension, method and k (Fig. 4)",
        description="For every (function, dimension, method, k) run every learning rate of a "
        "log grid with every seed and keep the lr with the best mean value. Writes "
        "OUT/sweep.json (every run's outcome) and OUT/sweep.md (one row per cell); progress "
        "goes to stderr. The defaults are the paper's Fig. 4 grid: expect hours; narrow it "
        "with --dims/--tangents/--methods/--steps.",
        epilog=listing,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--function", required=True, help=f"comma-separated test functions: {_join(FUNCTIONS)}"
    )
    p.add_argument(
        "--dims", default=_join(PAPER_DIMS), help=f"comma-separated n (default {_join(PAPER_DIMS)})"
    )
    p.add_argument(
        "--tangents",
        default=_join(PAPER_TANGENTS),
        help=f"comma-separated k (default {_join(PAPER_TANGENTS)}; backprop ignores it)",
    )
    p.add_argument(
        "--methods",
        default=_join(PAPER_METHODS),
        help=f"comma-separated, from {_join(METHODS)} (default {_join(PAPER_METHODS)})",
    )
    p.add_argument("--lrs", default=None, help="comma-separated learning rates (overrides grid)")
    p.add_argument("--lr-min-exp", default="-6", help="grid from 10^this (default -6)")
    p.add_argument("--lr-max-exp", default="0", help="grid up to 10^this (default 0)")
    p.add_argument("--lr-per-decade", default="3", help="grid points per decade (default 3)")
    p.add_argument("--seeds", default="5", help="number of seeds, from --seed on (default 5)")
    p.add_argument("--seed", default="0", help="first seed (default 0)")
    p.add_argument(
        "--select-by",
        default="final",
        help=f"pick the lr by mean {' | '.join(SELECT_BY)} f over the seeds (default final)",
    )
    _add_shared(p)
    p.add_argument("--out", default="runs/sweep", help="output directory (default runs/sweep)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_sweep)
