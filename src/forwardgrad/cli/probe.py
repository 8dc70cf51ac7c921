"""``forwardgrad probe``: how good is a gradient estimate, measured against backprop on one batch.

    forwardgrad probe runs/mnist1d-wperp-seed0 --guess wt,wperp,activation --all
    forwardgrad probe --dataset digits --depth 2 --width 64 --guess wt --bias-variance

Wire into the main parser with ``add_probe_parser(sub)``. The model is a saved run's (its
``config.json`` and ``checkpoint.pt``) or a fresh one built from a config and flags. Prints a
per-layer table per guess and writes every number as JSON (atomically).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..io import write_json
from ..training.checkpoint import load_checkpoint, load_model_state
from ..training.config import ConfigError, TrainConfig
from ..training.config_values import coerce, config_from_mapping
from ..training.guess_specs import config_for_guess, parse_guess_spec
from .flags import add_config_flags, config_from_args, given_values

# Config keys that only matter for training; the probe takes no flag for them.
_TRAINING_ONLY = (
    "guess",
    "epochs",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "augment",
    "checkpoint_every",
    "probe_every",
)
# Config keys a saved run fixes: its checkpoint only loads into the same model and data.
_RUN_FIXED = ("dataset", "depth", "width", "bias")

_EXTRA_FLAGS = {
    "bias_variance": "bias and variance over --variance-draws estimates (W~perp paper Eqs. 17-18)",
    "covariance": "||E[uu^T] - I||_F of the tangents per layer, from --covariance-draws tangents",
    "one_step": "1-step effectiveness: best SGD-step loss decrease relative to backprop's",
    "overlap": "overlap of the true gradient with the top-k subspace of W~ (Eq. 19)",
    "effective_rank": "effective rank of every weight matrix",
    "jacobian": "singular values of J(s_i -> s_{i+l}) for --jacobian-layers",
}


def add_probe_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``probe`` to the main parser's subparsers; returns its parser."""
    p = subparsers.add_parser(
        "probe",
        help="measure gradient estimates against backprop on one batch (cosine, bias, ...)",
        description="Compare gradient guesses with the true gradient on a fixed batch of the "
        "training set (--batch-size examples, chosen by --seed: the batch a run's probes.jsonl "
        "uses). Cosine and relative norm per layer always; the flags below add the expensive "
        "measurements. The model is RUN_DIR's last checkpoint, or a fresh one from --config and "
        "the flags.",
    )
    p.add_argument(
        "run",
        nargs="?",
        metavar="RUN_DIR",
        help="a run directory (config.json + checkpoint.pt); omit for a freshly initialised model",
    )
    p.add_argument(
        "--guess",
        metavar="SPECS",
        help="comma-separated guesses, each name[:key=value...], e.g. wt,wperp:rank=25 "
        "(default: the config's guess)",
    )
    p.add_argument(
        "--draws", type=int, default=1, help="estimates for cosine and 1-step (default 1)"
    )
    p.add_argument(
        "--variance-draws", type=int, default=100, help="estimates for --bias-variance (100)"
    )
    p.add_argument(
        "--covariance-draws", type=int, default=1000, help="tangents for --covariance (1000)"
    )
    p.add_argument(
        "--examples",
        type=int,
        default=64,
        help="examples used by the per-example d x d measurements (default 64)",
    )
    for name, text in _EXTRA_FLAGS.items():
        p.add_argument("--" + name.replace("_", "-"), action="store_true", help=text)
    p.add_argument("--all", action="store_true", help="every measurement above")
    p.add_argument(
        "--overlap-k", type=int, default=10, help="k of the overlap column in the table (10)"
    )
    p.add_argument(
        "--jacobian-layers",
        default="1,2,3,4",
        metavar="L,...",
        help="downstream layer counts l for --jacobian (default 1,2,3,4)",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="JSON output (default RUN_DIR/probe.json, or runs/probe-<dataset>-seed<seed>.json)",
    )
    add_config_flags(p, skip=_TRAINING_ONLY)
    p.set_defaults(func=cmd_probe)
    return p


def _at_least(name: str, value: int, minimum: int = 1) -> int:
    if value < minimum:
        raise ConfigError(f"--{name} must be >= {minimum}; got {value}")
    return value


def _config_and_run(args: argparse.Namespace) -> tuple[TrainConfig, Path | None, int]:
    """The config (saved run's, with flags applied, or a fresh one), the run dir, the data seed."""
    from ..training.resume import config_from_saved, read_config

    if args.run is None:
        cfg = config_from_args(args, skip=("guess",))  # --guess here lists the guesses to probe
        return cfg, None, cfg.seed
    run = Path(args.run)
    if not run.is_dir():
        raise FileNotFoundError(f"no run directory at {run}")
    if not (run / "checkpoint.pt").exists():
        raise FileNotFoundError(
            f"{run} has no checkpoint.pt: the run has not finished an epoch, or is not a "
            "forwardgrad run directory"
        )
    if args.config:
        raise ConfigError("give either RUN_DIR or --config, not both")
    saved = read_config(run)
    flags = given_values(args, skip=("guess",))
    clashes = [k for k in _RUN_FIXED if k in flags and coerce(k, flags[k]) != saved.get(k)]
    if clashes:
        names = ", ".join("--" + k for k in clashes)
        raise ConfigError(f"{run} fixes the model and its data; drop {names}")
    cfg = config_from_mapping(flags, config_from_saved(saved, run / "config.json"))
    return cfg, run, int(saved.get("seed", cfg.seed))


def _guess_configs(cfg: TrainConfig, specs_arg: str | None) -> list[tuple[str, TrainConfig]]:
    specs = [s.strip() for s in (specs_arg or cfg.guess).split(",") if s.strip()]
    if not specs:
        raise ConfigError("--guess needs at least one guess")
    out = []
    for spec in specs:
        name, opts = parse_guess_spec(spec)
        out.append((spec, config_for_guess(cfg, name, opts)))
    return out


def cmd_probe(args: argparse.Namespace) -> int:
    from ..diagnostics import ESTIMATOR_EXTRAS, MODEL_EXTRAS, probe, probe_model
    from ..estimation import cross_entropy_per_example
    from ..training.train import build_estimator, build_model, load_data, probe_batch

    for name in ("draws", "covariance_draws", "examples", "overlap_k"):
        _at_least(name.replace("_", "-"), getattr(args, name))
    _at_least("variance-draws", args.variance_draws, 2)  # a variance needs two draws
    try:
        layers = [int(v) for v in args.jacobian_layers.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"--jacobian-layers must be comma-separated integers; got {args.jacobian_layers!r}"
        ) from None
    extras = [n for n in _EXTRA_FLAGS if args.all or getattr(args, n)]
    cfg, run, data_seed = _config_and_run(args)
    guesses = _guess_configs(cfg, args.guess)  # fail on a bad guess before loading anything

    device = torch.device(cfg.device)
    data = load_data(cfg, seed=data_seed)
    torch.manual_seed(cfg.seed)  # a fresh model is the one a training run with this seed starts
    model = build_model(cfg, data, weights=run is None).to(device)
    if run is not None:
        state = load_checkpoint(run / "checkpoint.pt", map_location=device)
        load_model_state(model, state, run / "checkpoint.pt")
    model.eval()
    x, y = probe_batch(data, cfg.batch_size, cfg.seed, device)

    result: dict = {
        "run": str(run) if run is not None else None,
        "dataset": cfg.dataset,
        "seed": cfg.seed,
        "examples": int(x.shape[0]),
        "epoch": state.get("epoch") if run is not None else 0,
        "model": probe_model(
            model,
            x,
            y,
            cross_entropy_per_example,
            [e for e in extras if e in MODEL_EXTRAS],
            max_examples=args.examples,
            jacobian_layers=layers,
        ),
        "results": [],
    }
    for spec, gcfg in guesses:
        estimator = build_estimator(gcfg, model)
        row = probe(
            model,
            estimator,
            x,
            y,
            extras=[e for e in extras if e in ESTIMATOR_EXTRAS],
            draws=args.draws,
            variance_draws=args.variance_draws,
            covariance_draws=args.covariance_draws,
            max_examples=args.examples,
        )
        result["results"].append({"spec": spec, **row})

    out = Path(args.out) if args.out else None
    if out is None:
        out = (
            run / "probe.json"
            if run is not None
            else Path(f"runs/probe-{cfg.dataset}-seed{cfg.seed}.json")
        )
    write_json(out, result)
    print(format_report(result, args.overlap_k))
    print(f"\nwrote {out}")
    return 0


# ---------------------------------------------------------------------------------- printing


def _cell_text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e4:
            return f"{value:.4f}"
        return f"{value:.2e}"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    return str(value)


def _table(headers: list[str], rows: list[list], left: int = 2) -> str:
    """Columns of text; the first ``left`` columns left-aligned, numbers right-aligned."""
    cells = [headers] + [[_cell_text(v) for v in row] for row in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(headers))]
    lines = []
    for i, r in enumerate(cells):
        parts = [c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(parts).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _by_layer(rows: list[dict] | None) -> dict[int, dict]:
    return {r["layer"]: r for r in rows or []}


def _layer_table(res: dict) -> str:
    """One row per layer (cosine, relative norm, and bias/variance and covariance when
    measured), then the whole-model row."""
    bv, cov = res.get("bias_variance"), res.get("covariance")
    bv_layers, cov_layers = _by_layer(bv and bv["layers"]), _by_layer(cov and cov["layers"])
    headers = ["layer", "shape", "cosine", "rel_norm"]
    headers += ["bias", "variance", "bias_se"] if bv else []
    headers += ["cov-I", "cov-I exact"] if cov else []
    rows = []
    for layer in res["layers"]:
        i = layer["layer"]
        row = [i, layer["shape"], layer["cosine"], layer["rel_norm"]]
        if bv:
            b = bv_layers.get(i, {})
            row += [b.get("bias"), b.get("variance"), b.get("bias_se")]
        if cov:
            c = cov_layers.get(i, {})
            row += [c.get("frobenius"), c.get("closed_form")]
        rows.append(row)
    total = ["all", "", res["cosine"], res["rel_norm"]]
    total += [bv["bias"], bv["variance"], bv["bias_se"]] if bv else []
    total += ["", ""] if cov else []
    return _table(headers, [*rows, total])


def _guess_notes(res: dict) -> list[str]:
    """What the table's extra columns mean, and the measurements that are no column."""
    bv, cov, one = res.get("bias_variance"), res.get("covariance"), res.get("one_step")
    notes = []
    if bv:
        notes.append(
            f"bias, variance: {bv['space']} space, {bv['draws']} draws (W~perp paper Eqs. 17-18); "
            "bias_se: the bias measurement's noise floor"
        )
    if cov:
        notes.append(
            f"cov-I: ||E[uu^T] - I||_F per example from {cov['draws']} tangents, mean over "
            f"{cov['examples']} examples; exact: the closed form where the guess's law is known"
        )
    if "cosine_std" in res:
        notes.append(f"cosine std over the draws: {_cell_text(res['cosine_std'])}")
    if one:
        eff, std = _cell_text(one["effectiveness"]), _cell_text(one["effectiveness_std"])
        best = ", ".join(_cell_text(s) for s in one["best_steps"])
        bp_step, bp_drop = _cell_text(one["backprop_step"]), _cell_text(one["backprop_decrease"])
        notes.append(
            f"1-step effectiveness: {eff}"
            + (f" ± {std}" if one["effectiveness_std"] else "")
            + f" (best steps {best}; backprop's best step {bp_step}, loss decrease {bp_drop})"
        )
    return notes + [f"skipped {name}: {why}" for name, why in res.get("skipped", {}).items()]


def _guess_report(res: dict) -> str:
    head = (
        f"{res['spec']}  (tangents {res['tangents']}, {res['aggregate']}; "
        f"{res['examples']} examples, loss {res['loss']:.4f})"
    )
    return "\n".join([head, _layer_table(res), *_guess_notes(res)])


def _weights_table(model: dict, overlap_k: int) -> str | None:
    """Effective ranks of the weights and overlaps of W~'s top subspaces, per layer."""
    ranks, overlaps = _by_layer(model.get("effective_rank")), _by_layer(model.get("overlap"))
    if not (ranks or overlaps):
        return None
    headers = ["layer", "shape"]
    headers += ["erank(W)", "rank(W)"] if ranks else []
    headers += ["rank(W~)", "overlap@1", f"overlap@{overlap_k}"] if overlaps else []
    rows = []
    for i in sorted(set(ranks) | set(overlaps)):
        r, o = ranks.get(i), overlaps.get(i)
        row = [i, r["shape"] if r else ""]
        if ranks:
            row += [r and r["effective_rank"], r and r["rank"]]
        if overlaps:
            curve = o["overlap"] if o else []
            at = curve[min(overlap_k, len(curve)) - 1] if curve else None
            row += [o and o["rank"], curve[0] if curve else None, at]
        rows.append(row)
    return "model: weights and upstream Jacobians W~ = W_(i+1) diag(phi'(s_i))\n" + _table(
        headers, rows
    )


def _spectra_table(spectra: list[dict]) -> str:
    """Effective rank and largest singular value of the Jacobians over l layers."""
    ls = sorted({s["layers"] for s in spectra})
    cells = {(s["layer"], s["layers"]): s for s in spectra}
    rows = []
    for i in sorted({s["layer"] for s in spectra}):
        row: list = [i]
        for v in ls:
            s = cells.get((i, v))
            row.append(f"{s['effective_rank']:.1f} [{s['sigma_max']:.2f}]" if s else "")
        rows.append(row)
    return "Jacobian J(s_i -> s_i+l): mean effective rank [mean sigma_max]\n" + _table(
        ["layer"] + [f"l={v}" for v in ls], rows, left=1
    )


def _model_report(model: dict, overlap_k: int) -> str | None:
    parts = [_weights_table(model, overlap_k)]
    if model.get("jacobian"):
        parts.append(_spectra_table(model["jacobian"]))
    parts += [f"skipped {name}: {why}" for name, why in model.get("skipped", {}).items()]
    parts = [p for p in parts if p]
    return "\n\n".join(parts) if parts else None


def format_report(result: dict, overlap_k: int = 10) -> str:
    """The readable summary of a ``forwardgrad probe`` result."""
    where = result["run"] or f"fresh model ({result['dataset']}, seed {result['seed']})"
    parts = [f"probe of {where}, epoch {result['epoch']}, {result['examples']} training examples"]
    parts += [_guess_report(r) for r in result["results"]]
    model = _model_report(result["model"], overlap_k)
    if model:
        parts.append(model)
    return "\n\n".join(parts)
