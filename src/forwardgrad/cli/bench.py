"""``forwardgrad bench``: step time and peak memory of estimators against backprop."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bench import (
    GRID_DEFAULTS,
    PRESET_NAMES,
    QUICK,
    conv_preset,
    finetune_preset,
    grid_preset,
    models_preset,
    run_bench,
    targets_preset,
    write_results,
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return values


def cmd_bench(args: argparse.Namespace) -> int:
    from ..guesses import GUESSES

    if args.preset == "distributed":
        return _distributed(args)
    fixed = {
        "targets": targets_preset,
        "models": models_preset,
        "conv": conv_preset,
        "finetune": finetune_preset,
    }
    if args.preset in fixed:
        preset = fixed[args.preset]()
    else:
        base = QUICK if args.preset == "quick" else GRID_DEFAULTS
        guesses = args.guesses.split(",") if args.guesses else base["guesses"]
        unknown = [g for g in guesses if g not in GUESSES or g == "backprop"]
        if unknown:
            allowed = sorted(g for g in GUESSES if g != "backprop")
            raise ValueError(f"unknown guesses {unknown} for bench; choose from {allowed}")
        preset = grid_preset(
            guesses,
            _int_list(args.tangents) if args.tangents else base["tangents"],
            _int_list(args.depths) if args.depths else base["depths"],
            _int_list(args.widths) if args.widths else base["widths"],
            _int_list(args.batches) if args.batches else base["batches"],
            memory=not args.no_memory,
        )
    if args.repeats < 1 or args.warmup < 0:
        raise ValueError(
            f"--repeats must be >= 1 and --warmup >= 0; got {args.repeats}, {args.warmup}"
        )
    out = run_bench(
        preset,
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        memory=not args.no_memory,
        log=lambda s: print(s, file=sys.stderr, flush=True),
    )
    json_path, md_path = write_results(out, Path(args.out))
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    return 0


def _distributed(args: argparse.Namespace) -> int:
    from ..bench import cost_model
    from ..bench.distributed import Setup, run_distributed_bench, to_markdown
    from ..io import write_json, write_text

    def first(text: str | None, default: int) -> int:
        return _int_list(text)[0] if text else default

    setup = Setup(
        depth=first(args.depths, Setup.depth),
        width=first(args.widths, Setup.width),
        batch=first(args.batches, Setup.batch),
        tangents=first(args.tangents, Setup.tangents),
        repeats=args.repeats,
        warmup=args.warmup,
    )
    if setup.tangents % 2 or setup.batch < 2:
        raise ValueError(
            f"the distributed preset splits k and the batch over 2 processes: --tangents "
            f"{setup.tangents} must be even and --batches {setup.batch} at least 2"
        )
    out = run_distributed_bench(setup, log=lambda s: print(s, file=sys.stderr, flush=True))
    text = to_markdown(out) + "\n" + cost_model.to_markdown(out)
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "bench.json", out)
    write_text(folder / "bench.md", text)
    print(text)
    print(f"wrote {folder / 'bench.json'} and {folder / 'bench.md'}")
    return 0


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench",
        help="step time and peak memory of estimators against backprop, measured side by side",
        description=(
            "Times every method of a scenario interleaved on one model and batch, and measures "
            "each step's peak memory (a fresh process per method on the CPU). Presets: "
            "'targets' (the README's MLP performance targets), 'models' (ResNet-18 and the ViT "
            "against backprop and a frog-style loop, about 90 minutes on a 2-core CPU), 'conv' "
            "(the LeNet-style cnn: Wt and W~perp on conv sites against backprop), 'finetune' "
            "(peak memory of prompt and LoRA tuning of a frozen ViT against backprop's), 'grid' "
            "(guesses x k x depth x width x batch; the full grid takes hours on a laptop CPU: "
            "narrow it with the list flags), 'quick' (seconds), 'distributed' (two processes on "
            "127.0.0.1 against one: bytes sent per step and step time, with a projection to "
            "many processes; the first value of --depths/--widths/--batches/--tangents sets "
            "its MLP, default 3 x 512, batch 256, k = 16)."
        ),
    )
    p.add_argument("--preset", choices=PRESET_NAMES, default="targets", help="default: targets")
    p.add_argument("--guesses", help="grid/quick: comma-separated guesses")
    p.add_argument("--tangents", help="grid/quick: comma-separated k values (default 1,4,16,64)")
    p.add_argument("--depths", help="grid/quick: hidden-layer counts (default 2,8,32)")
    p.add_argument("--widths", help="grid/quick: widths (default 128,512,1024)")
    p.add_argument("--batches", help="grid/quick: batch sizes (default 128,1024)")
    p.add_argument("--repeats", type=int, default=7, help="timed steps per method (default 7)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--out", default="runs/bench", help="output directory (default runs/bench)")
    p.set_defaults(func=cmd_bench)
    return p
