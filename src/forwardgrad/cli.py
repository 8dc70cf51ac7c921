"""Command line: ``forwardgrad train | compare | list``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .config import ConfigError, TrainConfig, coerce, config_from_mapping, load_toml

# Flags shared by train and compare: every TrainConfig field except the per-command ones.
_FLAG_HELP = {
    "dataset": "dataset name (see `forwardgrad list`)",
    "data_dir": "directory holding real datasets' files (default $FORWARDGRAD_DATA)",
    "augment": "on-the-fly augmentation for image sets (true/false)",
    "depth": "number of hidden layers",
    "width": "hidden width",
    "bias": "use biases (true/false)",
    "guess": "gradient guess (see `forwardgrad list`)",
    "tangents": "tangents per step (k)",
    "aggregate": "sum | mean | projection",
    "scope": "projection scope: global | site",
    "jvp": "global (one JVP along all sites' tangents) | site (each site scaled by its own)",
    "chunk_size": "push at most this many tangents at once",
    "low_memory": "activity guesses: regenerate tangents in a second pass (true/false)",
    "rank": "wperp: kept singular directions k, or 'full'",
    "solver": "wperp: svd | randomized | newton-schulz",
    "power_iterations": "wperp randomized: subspace iterations before the Nystrom apply",
    "oversample": "wperp randomized: block width beyond the rank",
    "gram_dtype": "wperp randomized: float32 | bfloat16 (faster where the CPU/GPU has bf16)",
    "bottom": "wperp: bottom-k ablation (true/false)",
    "sigma": "preconditioned: regulariser sigma",
    "layers": "downstream: number of downstream layers",
    "sampler": "isotropic guesses: tangent sampler",
    "normalize": "isotropic guesses: unit-norm tangents (true/false)",
    "angle": "sampler 'angle': degrees to the base tangent",
    "max_length": "sampler 'varying-length': maximum length L",
    "epochs": "training epochs",
    "batch_size": "minibatch size",
    "optimizer": "adamw | adam | sgd | stable-adamw",
    "lr": "learning rate",
    "weight_decay": "weight decay",
    "momentum": "SGD momentum",
    "seed": "random seed (model init, shuffling, tangents)",
    "device": "torch device, e.g. cpu or cuda",
    "checkpoint_every": "epochs between checkpoints",
    "probe_every": "epochs between gradient probes against backprop, in probes.jsonl (0: none)",
}


def _add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    p.add_argument("--config", help="TOML file with the same keys as the flags (flags win)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        p.add_argument(
            flag,
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=f"{_FLAG_HELP.get(f.name, '')} (default: {f.default})",
        )


def _config(args: argparse.Namespace) -> TrainConfig:
    values = load_toml(args.config) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return config_from_mapping(values)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    epochs = None
    if args.resume:
        # The saved config defines the run; only --epochs may change (to extend it).
        out, resume, cfg = Path(args.resume), True, TrainConfig()
        epochs = int(coerce("epochs", args.epochs)) if args.epochs is not None else None
    else:
        cfg = _config(args)
        out = Path(args.out or f"runs/{cfg.dataset}-{cfg.guess}-seed{cfg.seed}")
        resume = False
    result = train(cfg, out, resume=resume, progress=not args.no_progress, epochs=epochs)
    final = result.summary["final"]
    print(
        f"{result.summary['guess']} seed {result.summary['seed']}: epoch {final['epoch']}, "
        f"train loss {final['train_loss']:.4f}, train acc {final['train_acc']:.4f}, "
        f"test acc {final['test_acc']:.4f} ({result.summary['train_seconds']:.1f} s); "
        f"results in {out}"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, format_table

    cfg = _config(args)
    guesses = [g for g in args.guesses.split(",") if g.strip()]
    if not guesses:
        raise ConfigError("--guesses needs at least one guess")
    out = Path(args.out or f"runs/compare-{cfg.dataset}")
    rows = compare(cfg, guesses, args.seeds, out, jobs=args.jobs, progress=not args.no_progress)
    print(format_table(rows))
    print(f"\nwrote {out / 'summary.csv'}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .core.aggregate import AGGREGATIONS
    from .core.samplers import SAMPLERS
    from .data import DATASETS
    from .guesses import GUESSES
    from .optim import OPTIMIZERS

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="forwardgrad",
        description="Train neural networks without backpropagation, from forward-mode JVPs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one model with one estimator")
    _add_config_flags(p)
    p.add_argument("--out", help="run directory (default runs/<dataset>-<guess>-seed<seed>)")
    p.add_argument(
        "--resume",
        metavar="DIR",
        help="continue the run in DIR from its checkpoint (--epochs may extend it)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="train several estimators over seeds; table of mean ± std")
    _add_config_flags(p, skip=("guess",))
    p.add_argument(
        "--guesses",
        required=True,
        help="comma-separated guesses, each name[:key=value...], e.g. wt,wperp:rank=25",
    )
    p.add_argument(
        "--seeds", type=int, default=3, help="number of seeds, from --seed on (default 3)"
    )
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel processes (default 1)")
    p.add_argument("--out", help="output directory (default runs/compare-<dataset>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("list", help="name every guess, sampler, aggregation, dataset and optimizer")
    p.set_defaults(func=cmd_list)

    from .cli_bench import add_bench_parser
    from .cli_optimize import add_optimize_parsers
    from .cli_probe import add_probe_parser
    from .cli_reproduce import add_reproduce_parser
    from .data.cli_data import add_data_parser

    add_data_parser(sub)
    add_probe_parser(sub)
    add_reproduce_parser(sub)
    add_optimize_parsers(sub)
    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"forwardgrad {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # TrainingDiverged and friends
        print(f"forwardgrad {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
