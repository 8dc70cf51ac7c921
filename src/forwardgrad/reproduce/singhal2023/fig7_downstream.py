"""``guess-downstream``, Fig. 7: training with 1, 2 and 3 downstream layers, and the spectra of
the Jacobians over l layers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from ...data import Dataset
from ...diagnostics import jacobian_spectra
from ...stats import finite_mean_and_se
from ...training.compare import compare
from ...training.train import probe_batch
from ..registry import Experiment, register
from ..report import ExperimentResult, Plot, Row, new_figure
from .common import (
    EMBEDDED_NOTE,
    PAPER,
    accuracy_percent,
    budget_config,
    budget_inputs,
    budget_scaling,
    compared_records,
    grid_panels,
    hidden_layers,
    method_name,
    plot_train_accuracy,
    timed_settings,
)
from .runs import drop_checkpoints, train_with_measurements

DOWNSTREAM_METHODS = (
    "activation",
    "wt",
    "downstream:layers=1",
    "downstream:layers=2",
    "downstream:layers=3",
    "backprop",
)

DOWNSTREAM_BUDGETS: dict[str, dict[str, Any]] = {
    "paper": {
        "dataset": "mnist5k",
        "layers": 6,
        "width": 256,
        "epochs": 100,
        "batch_size": 512,
        "lr": 1e-4,
        "spectra_width": 256,
        "spectra_epochs": 10,
        "jacobian_layers": [1, 2, 3, 4],
        "examples": 64,
        "methods": list(DOWNSTREAM_METHODS),
    },
    "smoke": {
        "dataset": "digits",
        "layers": 6,
        "width": 32,
        "epochs": 2,
        "batch_size": 256,
        "lr": 1e-3,
        "spectra_width": 32,
        "spectra_epochs": 1,
        "jacobian_layers": [1, 2],
        "examples": 4,
        "methods": ["wt", "downstream:layers=1", "downstream:layers=2"],
    },
}


def hidden_spectra(spectra: list[dict], ls: Sequence[int], hidden: int) -> dict[str, Any]:
    """Mean normalised spectrum and effective rank per l over the hidden-to-hidden Jacobians
    ``J_{s_i -> s_{i+l}}`` (i + l < hidden: both ends hidden, so all are width x width)."""
    out: dict[str, Any] = {}
    for ell in ls:
        mine = [s for s in spectra if s["layers"] == ell and s["layer"] + ell < hidden]
        if not mine:
            continue
        out[str(ell)] = {
            "normalized": np.mean([s["normalized"] for s in mine], axis=0).tolist(),
            "effective_rank": float(np.mean([s["effective_rank"] for s in mine])),
            "effective_ranks": [s["effective_rank"] for s in mine],
            "count": len(mine),
        }
    return out


def run_guess_downstream(
    budget: str, seeds: int | None, out_dir: Path, progress: bool
) -> ExperimentResult:
    b, seed_list, data = budget_inputs(DOWNSTREAM_BUDGETS, budget, seeds)
    # Right: Jacobian spectra of the paper's 6 x 256 MLP, at the start and after backprop.
    spectra: dict[str, dict[str, Any]] = {}
    for seed in seed_list:
        for record in _spectra_run(b, data, seed, out_dir, progress):
            tag = "start" if record["epoch"] == 0 else "trained"
            spectra.setdefault(tag, {})[str(seed)] = record["spectra"]
    # Left: training curves with 1, 2, 3 downstream layers and the other guesses.
    curves_dir = out_dir / "runs" / "methods"
    table = compare(
        budget_config(b, 0), b["methods"], len(seed_list), curves_dir, jobs=1, progress=progress
    )
    curves = {
        spec: compared_records(curves_dir, spec, seed_list, "metrics.jsonl")
        for spec in b["methods"]
    }
    drop_checkpoints(out_dir / "runs")
    erank = _effective_ranks(spectra, b["jacobian_layers"])
    rows = _erank_rows(erank)
    for row in table:
        rows.append(
            Row(
                "Fig. 7 (left): final train accuracy (%)",
                {"method": method_name(row["guess"])},
                *accuracy_percent(row, "train", len(seed_list)),
            )
        )
    final = {row["guess"]: 100 * row["train_acc_mean"] for row in table}
    return ExperimentResult(
        budget=budget,
        seeds=seed_list,
        settings=timed_settings(b, out_dir),
        rows=rows,
        raw={"spectra": spectra, "curves": curves, "table": table},
        scaling=_downstream_scaling(budget, b),
        notes=_downstream_notes(b, erank, final),
        plots=[
            Plot(
                "fig7.png",
                "Fig. 7 layout. Left: train accuracy with activation perturbation, Wᵀ, 1-, 2- and "
                "3-layer downstream and backprop. Right: normalised singular values of the "
                "Jacobian over l = 1 … 4 layers (solid: trained, dashed: at the start).",
                _draw_downstream,
            )
        ],
    )


def _spectra_run(
    b: dict[str, Any], data: Dataset, seed: int, out_dir: Path, progress: bool
) -> list[dict]:
    """Train with backprop, measuring the hidden Jacobian spectra at the start and the end."""
    hidden = hidden_layers(b["layers"])
    cfg = budget_config(
        b, seed, width=b["spectra_width"], epochs=b["spectra_epochs"], guess="backprop"
    )
    x, _ = probe_batch(data, b["examples"], seed)

    def measure(model: nn.Module, epoch: int, x: Tensor = x) -> dict[str, Any]:
        got = jacobian_spectra(model, x, b["jacobian_layers"], max_examples=b["examples"])
        return {"spectra": hidden_spectra(got, b["jacobian_layers"], hidden)}

    records, _ = train_with_measurements(
        cfg, out_dir / "runs" / f"spectra-seed{seed}", data, cfg.epochs, measure, progress
    )
    return records


def _effective_ranks(
    spectra: dict[str, dict[str, Any]], ls: Sequence[int]
) -> dict[str, dict[int, list[float]]]:
    """Per network (start, trained) and l, every measured effective rank over the seeds."""
    out: dict[str, dict[int, list[float]]] = {}
    for tag in ("start", "trained"):
        out[tag] = {}
        for ell in ls:
            values = [
                v
                for per_seed in spectra.get(tag, {}).values()
                if str(ell) in per_seed
                for v in per_seed[str(ell)]["effective_ranks"]
            ]
            if values:
                out[tag][ell] = values
    return out


def _erank_rows(erank: dict[str, dict[int, list[float]]]) -> list[Row]:
    return [
        Row(
            "Fig. 7 (right): effective rank of the Jacobian over l layers",
            {"network": tag, "l": ell},
            *finite_mean_and_se(values),
        )
        for tag, per_l in erank.items()
        for ell, values in per_l.items()
    ]


def _downstream_notes(
    b: dict[str, Any], erank: dict[str, dict[int, list[float]]], final: dict[str, float]
) -> list[str]:
    notes = [EMBEDDED_NOTE]
    for tag, per_l in erank.items():
        values = {ell: float(np.mean(v)) for ell, v in per_l.items()}
        ls = sorted(values)
        falls = all(values[a] > values[c] for a, c in zip(ls, ls[1:]))
        notes.append(
            f"Claim (paper): more layers give a faster-decaying Jacobian spectrum, a lower "
            f"effective rank. Ours ({tag}): "
            + ", ".join(f"l={ell}: {values[ell]:.1f}" for ell in ls)
            + (" — falls with l, holds." if falls else " — does not fall monotonically.")
        )
    one, two = final.get("downstream:layers=1"), final.get("downstream:layers=2")
    if one is not None and two is not None:
        notes.append(
            "Claim (paper): 2-layer downstream has no advantage over 1-layer downstream. Ours, "
            f"final train accuracy: 1 layer {one:.1f}%, 2 layers {two:.1f}%, 3 layers "
            f"{final.get('downstream:layers=3', math.nan):.1f}%"
            + (" — holds." if two <= one + 1.0 else " — does not hold (2 layers is better).")
        )
    notes.append(
        "Spectra: singular values of J_{s_i → s_{i+l}} (pre-activation to pre-activation, "
        "`diagnostics.jacobian_spectra`, by forward-mode AD) per example on a fixed batch of "
        f"{b['examples']}, normalised by the largest, averaged over examples and over the "
        "hidden-to-hidden pairs (i, i + l); the downstream guess itself uses the Jacobian to "
        "the activations x_{i+l+1}, which differs only by the last ReLU mask. The trained "
        f"network is after {b['spectra_epochs']} epochs of backprop (the paper does not say)."
    )
    return notes


def _downstream_scaling(budget: str, b: dict[str, Any]) -> str:
    return budget_scaling(
        budget,
        f"MNIST-5k instead of CIFAR-10. Spectra: the paper's 6 x 256 MLP. Training curves: "
        f"width {b['width']} instead of 1024 and {b['epochs']} epochs (the paper's plot length "
        "is not stated), AdamW lr 1e-4, batch 512: width 1024 costs ~15× more per step on a CPU.",
        f"digits, width {b['width']}, {b['epochs']} epoch(s), "
        f"l = {', '.join(map(str, b['jacobian_layers']))}.",
    )


def _draw_downstream(result: ExperimentResult):
    fig, axes = new_figure(2, 1, panel_size=(5.0, 3.8))
    ax = axes[0][0]
    for i, (spec, runs) in enumerate(result.raw["curves"].items()):
        plot_train_accuracy(ax, runs[0], color=f"C{i}", label=method_name(spec))
    ax.set_xlabel("epoch")
    ax.set_ylabel("train accuracy (%)")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    for tag, line in (("trained", "-"), ("start", "--")):
        per_seed = next(iter(result.raw["spectra"].get(tag, {}).values()), {})
        for ell, s in per_seed.items():
            values = s["normalized"]
            ax.plot(
                range(1, len(values) + 1),
                values,
                color=f"C{int(ell) - 1}",
                linestyle=line,
                label=f"l = {ell}" if tag == "trained" else None,
            )
    ax.set_yscale("log")
    ax.set_ylim(1e-4, 1.5)
    ax.set_xlabel("singular value index")
    ax.set_ylabel("σ_j / σ_1")
    ax.legend(fontsize=8)
    grid_panels(axes[0])
    return fig


register(
    Experiment(
        name="guess-downstream",
        paper=PAPER,
        reproduces="Fig. 7",
        summary="Training with 1-, 2- and 3-layer downstream guesses (more layers do not help), "
        "and the spectra and effective ranks of the Jacobians over l = 1 … 4 layers of a 6-layer "
        "MLP.",
        run=run_guess_downstream,
    )
)
