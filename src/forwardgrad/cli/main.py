"""Command line: ``forwardgrad train | compare | plot | list`` (and the commands wired in below).

Exit codes: 0 success; 1 the run diverged or failed while running; 2 bad input (a flag, config,
file or folder), with a one-line message naming the bad value and what is allowed; 130 (143)
interrupted by Ctrl-C (SIGTERM), with one line saying what was kept and how to resume.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

from ..training.config import ConfigError, TrainConfig
from ..training.config_values import config_from_mapping
from ..training.resume import RESUME_FIELDS, flag
from .flags import add_config_flags, config_from_args, given_values, guess_options_text


class Parser(argparse.ArgumentParser):
    """No abbreviated long options: ``--epoch`` is an error, not ``--epochs``."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


# --------------------------------------------------------------------------------- train


def _out_dir(args: argparse.Namespace, cfg: TrainConfig) -> Path:
    """``--out``, or the default folder; a default folder that holds a run gives way to the
    next free ``-2``, ``-3``, ... (an explicit ``--out`` is never changed)."""
    from ..training.runfolder import next_free_dir

    if args.out:
        return Path(args.out)
    default = Path(f"runs/{cfg.dataset}-{cfg.guess}-seed{cfg.seed}")
    free = next_free_dir(default)
    if free != default:
        print(f"{default} already holds a run; this one goes to {free}", file=sys.stderr)
    return free


def _print_result(result, out: Path) -> None:
    s = result.summary
    final = s["final"]
    print(
        f"{s['guess']} seed {s['seed']}: epoch {final['epoch']}, "
        f"train loss {final['train_loss']:.4f}, train acc {final['train_acc']:.4f}, "
        f"test acc {final['test_acc']:.4f} ({s['train_seconds']:.1f} s); results in {out}"
    )


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.train import train

    if args.resume:
        return _resume(args)
    cfg = config_from_args(args)
    _say_process_count(cfg)
    leader = _keeps_the_folder()
    out = _out_dir(args, cfg) if leader else Path(args.out or ".")
    result = train(cfg, out, progress=not args.no_progress and leader)
    if leader:
        _print_result(result, result.out_dir)
    return 0


def _keeps_the_folder() -> bool:
    """Whether this process writes the run (one process, or process 0 of a torchrun launch);
    the others say nothing unless they fail. Only process 0 chooses the default folder."""
    from ..distributed import launched_world

    return launched_world()[0] == 0


def _say_process_count(cfg: TrainConfig) -> None:
    from ..distributed import launched_world

    if cfg.parallel != "none" and launched_world()[1] == 1:
        print(
            f"--parallel {cfg.parallel}: one process (torchrun --nproc-per-node N -m "
            "forwardgrad train ... launches N)",
            file=sys.stderr,
        )


def _resume(args: argparse.Namespace) -> int:
    from ..training.resume import config_from_saved, read_config
    from ..training.train import train

    run = Path(args.resume)
    if args.out is not None and Path(args.out).absolute() != run.absolute():
        raise ConfigError(
            f"--out {args.out} with --resume {run}: a resumed run continues in its own folder; "
            "drop --out"
        )
    values = given_values(args)
    requested = None
    if values and (run / "checkpoint.pt").exists():
        saved = config_from_saved(read_config(run), run / "config.json")
        requested = config_from_mapping(values, saved)
    leader = _keeps_the_folder()
    result = train(requested, run, resume=True, progress=not args.no_progress and leader)
    if not leader:
        return 0
    if result.epochs_trained == 0:
        done = result.summary["epochs_completed"]
        print(
            f"{run} is already complete at epoch {done} of {done}: nothing to train. "
            f"Pass --epochs N (N > {done}) with --resume to train it further."
        )
    _print_result(result, run)
    return 0


# ------------------------------------------------------------------------------- compare


def cmd_compare(args: argparse.Namespace) -> int:
    from ..training.compare import compare, format_table

    cfg = config_from_args(args)
    guesses = [g.strip() for g in args.guesses.split(",") if g.strip()]
    if not guesses:
        raise ConfigError("--guesses needs at least one guess, e.g. --guesses wt,wperp:rank=25")
    out = Path(args.out or f"runs/compare-{cfg.dataset}")
    rows = compare(
        cfg,
        guesses,
        args.seeds,
        out,
        jobs=args.jobs,
        progress=not args.no_progress,
        plot=not args.no_plot,
    )
    print(format_table(rows))
    print(f"\nwrote {out / 'summary.csv'}" + ("" if args.no_plot else f" and {out / 'curves.png'}"))
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from ..core.aggregate import AGGREGATIONS
    from ..core.samplers import SAMPLERS
    from ..data import DATASETS
    from ..guesses import GUESSES
    from ..training.optimizers import OPTIMIZERS

    def section(title: str, items: dict[str, str]) -> None:
        print(f"{title}:")
        for name, text in items.items():
            print(f"  {name:<18} {text}")
        print()

    section("guesses", {n: f"{c.summary}  [{c.paper}]" for n, c in GUESSES.items()})
    section("samplers (isotropic guesses)", {n: s.summary for n, s in SAMPLERS.items()})
    section("aggregations", {n: text for n, (_, text) in AGGREGATIONS.items()})
    section("datasets", {n: s.summary for n, s in DATASETS.items()})
    section("optimizers", OPTIMIZERS)
    return 0


# -------------------------------------------------------------------------------- parser


def _train_epilog() -> str:
    resumable = ", ".join(flag(k) for k in RESUME_FIELDS)
    return f"""examples:
  forwardgrad train --epochs 50                          W~perp on MNIST-1D (the quick start)
  forwardgrad train --guess wt --width 256 --lr 1e-3 --out runs/wt256
  forwardgrad train --config run.toml --seed 1           TOML keys are the flag names; flags win
  forwardgrad train --resume runs/wt256 --epochs 400     continue a run, here to 400 epochs

constraints:
  guess options apply only to the guesses that read them (others are refused):
{guess_options_text()}
  --angle needs --sampler angle; --max-length needs --sampler varying-length
  --rank full and --bottom true need --solver svd (wperp)
  --ns-refresh needs --solver newton-schulz (wperp)
  --scope needs --aggregate projection; --momentum needs --optimizer sgd
  --low-memory true and --jvp site: activity-space guesses with sum or mean
  --resume DIR continues DIR's run with its own settings; only these may change:
    {resumable}
  (other flags are refused unless they repeat the run's value)

Run folders, resume and reproducibility: see the README."""


def _add_train_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        usage="%(prog)s [FLAGS]  (grouped below; examples at the end)",
        help="train one model with one estimator",
        description="Train one model with one gradient estimator; writes a run folder.",
        epilog=_train_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = add_config_flags(p)
    run = groups["run"]
    run.add_argument(
        "--out",
        metavar="DIR",
        help="run folder (default runs/<dataset>-<guess>-seed<seed>, or the next free -2, -3...)",
    )
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)


def _add_compare_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        usage="%(prog)s --guesses SPECS [FLAGS]",
        help="train several estimators over seeds; table of mean ± std and curves",
        description="Train every guess for every seed, then print mean ± std over seeds, write "
        "OUT/summary.csv and draw OUT/curves.png. Rerunning skips finished runs and resumes "
        "interrupted ones.",
    )
    groups = add_config_flags(p, skip=("guess",))
    est = groups["estimator"]
    est.add_argument(
        "--guesses",
        required=True,
        help="comma-separated guesses, each name[:key=value...], e.g. wt,wperp:rank=25 "
        "(each given once)",
    )
    run = groups["run"]
    run.add_argument(
        "--seeds", type=int, default=3, help="number of seeds, from --seed on (default 3)"
    )
    run.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    run.add_argument("--out", metavar="DIR", help="output folder (default runs/compare-<dataset>)")
    run.add_argument("--no-plot", action="store_true", help="do not draw OUT/curves.png")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="forwardgrad",
        description="Train neural networks without backpropagation, from forward-mode JVPs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_train_parser(sub)
    _add_compare_parser(sub)
    p = sub.add_parser("list", help="name every guess, sampler, aggregation, dataset and optimizer")
    p.set_defaults(func=cmd_list)

    from .bench import add_bench_parser
    from .data import add_data_parser
    from .optimize import add_optimize_parsers
    from .plot import add_plot_parser
    from .probe import add_probe_parser
    from .reproduce import add_reproduce_parser

    add_plot_parser(sub)
    add_data_parser(sub)
    add_probe_parser(sub)
    add_reproduce_parser(sub)
    add_optimize_parsers(sub)
    add_bench_parser(sub)
    return parser


# ---------------------------------------------------------------------------------- main


@contextlib.contextmanager
def _sigterm_as_interrupt(received: list[int]) -> Iterator[None]:
    """SIGTERM (a scheduler ending the job) stops a run as Ctrl-C does: checkpoint kept, temporary
    files removed, one line saying how to resume."""

    def handler(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted_line(args: argparse.Namespace, error: KeyboardInterrupt) -> str:
    from ..training.train import RunInterrupted

    if isinstance(error, RunInterrupted):
        return str(error)
    if args.command == "compare":
        return (
            "interrupted; finished runs are kept and interrupted ones resume from their last "
            "checkpoint: run the same command again"
        )
    if args.command == "train":
        return "interrupted before training started; nothing was written"
    return "interrupted"


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, reporting unknown flags from the subcommand's parser with the closest flag."""
    args, extras = parser.parse_known_args(argv)
    if not extras:
        return args
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = sub.choices[args.command]
    known = [s for a in command._actions for s in a.option_strings if s.startswith("--")]
    close = difflib.get_close_matches(extras[0].split("=")[0], known, n=1)
    hint = f" (did you mean {close[0]}?)" if close and extras[0].startswith("-") else ""
    command.error(f"unrecognized arguments: {' '.join(extras)}{hint}")
    raise AssertionError("unreachable: argparse's error() exits")


def main(argv: list[str] | None = None) -> int:
    from ..training.train import TrainingDiverged

    parser = build_parser()
    args = _parse(parser, argv)
    received: list[int] = []
    name = f"forwardgrad {args.command}"
    with _sigterm_as_interrupt(received):
        try:
            return args.func(args)
        except KeyboardInterrupt as e:
            print(f"{name}: {_interrupted_line(args, e)}", file=sys.stderr)
            return 143 if received else 130
        except TrainingDiverged as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 1
        except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
            print(f"{name}: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            where = f" ({e.filename})" if e.filename else ""
            print(f"{name}: error: {e.strerror or e}{where}", file=sys.stderr)
            return 1
        except RuntimeError as e:
            print(f"{name}: {e}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
