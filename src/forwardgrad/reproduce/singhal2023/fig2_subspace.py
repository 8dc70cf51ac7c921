"""``guess-subspace``, Fig. 2 (right): the activity gradient projected on the activations' PCA
subspace against a random subspace, every hidden layer, every epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...core.chain import chain_plan
from ...data import Dataset
from ...diagnostics import activity_gradients, site_contexts
from ...estimation import cross_entropy_per_example
from ...stats import finite_mean_and_se
from ...training.train import probe_batch
from ..flugel2024.expected_cosine import projection_cosine
from ..registry import Experiment, register
from ..report import ExperimentResult, Plot, Row, Tolerance, new_figure
from .common import (
    EMBEDDED_NOTE,
    PAPER,
    budget_config,
    budget_inputs,
    budget_scaling,
    generator_of,
    paper_numbers,
    timed_settings,
)
from .maths import pca_basis, random_basis, subspace_cosine
from .runs import drop_checkpoints, train_with_measurements

SUBSPACE_BUDGETS: dict[str, dict[str, Any]] = {
    "paper": {
        "dataset": "mnist5k",
        "layers": [3, 4, 6],
        "width": 1024,
        "epochs": 20,
        "batch_size": 512,
        "lr": 1e-4,
        "ks": [1, 2, 5, 10, 20, 50, 100, 200, 500],
    },
    "smoke": {
        "dataset": "digits",
        "layers": [3],
        "width": 32,
        "epochs": 2,
        "batch_size": 64,
        "lr": 1e-3,
        "ks": [1, 2, 5, 10, 20],
    },
}

SUBSPACE_K = 10  # the paper's "fewer than 10 principal components"


def subspace_curves(
    model: nn.Module, x: Tensor, y: Tensor, ks: Sequence[int], generator: torch.Generator
) -> list[dict[str, Any]]:
    """For every hidden layer: mean cosine of ``dl_b/dx_{i+1}`` with its projection on the top-k
    PCA directions of the batch's activations x_{i+1}, and on a random k-dim subspace."""
    plan = chain_plan(model)
    contexts = site_contexts(plan, x, y, cross_entropy_per_example)
    grads = activity_gradients(model, x, y, cross_entropy_per_example, plan)
    out = []
    for i in range(len(plan) - 1):
        activations = contexts[i].outputs  # x_{i+1}
        grad_x = grads[i + 1].double() @ plan.sites[i + 1].weight.detach().double()
        d = activations.shape[-1]
        # One basis of the largest k for each kind: its first k columns are the top-k PCA
        # directions, and (for the random one) a uniformly random k-dim subspace, nested in k.
        top = pca_basis(activations, max(ks))
        rand = random_basis(d, max(ks), generator)
        pca = [float(subspace_cosine(grad_x, top[:, :k]).nanmean()) for k in ks]
        rnd = [float(subspace_cosine(grad_x, rand[:, :k]).nanmean()) for k in ks]
        out.append({"layer": i, "width": d, "pca": pca, "random": rnd})
    return out


def run_guess_subspace(
    budget: str, seeds: int | None, out_dir: Path, progress: bool
) -> ExperimentResult:
    b, seed_list, data = budget_inputs(SUBSPACE_BUDGETS, budget, seeds)
    ks = [k for k in b["ks"] if k <= min(b["batch_size"], b["width"])]
    curves: list[dict[str, Any]] = []
    for seed in seed_list:
        for layers in b["layers"]:
            curves += _depth_curves(b, data, seed, layers, ks, out_dir, progress)
    drop_checkpoints(out_dir / "runs")
    return ExperimentResult(
        budget=budget,
        seeds=seed_list,
        settings=timed_settings(
            {**b, "ks": ks, "pca": "centred activations of one fixed batch"}, out_dir
        ),
        rows=_subspace_rows(curves, ks, b["width"]),
        raw={"curves": curves, "ks": ks},
        paper_tolerance=Tolerance(absolute=0.1, why="read from a figure, different dataset"),
        theory_tolerance=Tolerance(
            absolute=0.01,
            standard_errors=4.0,
            why="Monte-Carlo over random subspaces; 0.01 for the examples sharing one subspace",
        ),
        scaling=budget_scaling(
            budget,
            "MNIST-5k instead of the paper's dataset (CIFAR-10 in the rest of its experiments; "
            "not available offline); otherwise its settings: depths 3, 4, 6, width 1024, 20 "
            "epochs of backprop (AdamW, lr 1e-4, batch 512), every hidden layer, every epoch "
            "(and the start).",
            f"digits, depth 3, width {b['width']}, {b['epochs']} epochs.",
        ),
        notes=_subspace_notes(b, curves, ks),
        plots=[
            Plot(
                "fig2_right.png",
                "Fig. 2 (right) layout: cosine of the gradient with its projection on the top-k "
                "PCA subspace of the activations (blue) and on a random k-dim subspace (orange), "
                "one thin line per (depth, layer, epoch); dashed: E[χ_k]/E[χ_d].",
                _draw_subspace,
            )
        ],
    )


def _depth_curves(
    b: dict[str, Any],
    data: Dataset,
    seed: int,
    layers: int,
    ks: Sequence[int],
    out_dir: Path,
    progress: bool,
) -> list[dict[str, Any]]:
    """Train one depth with backprop; its subspace curves per (epoch, hidden layer)."""
    cfg = budget_config(b, seed, layers=layers, guess="backprop")
    x, y = probe_batch(data, b["batch_size"], seed)

    def measure(model: nn.Module, epoch: int) -> dict[str, Any]:
        generator = generator_of(seed, layers, epoch)
        return {"layers": subspace_curves(model, x, y, ks, generator)}

    records, _ = train_with_measurements(
        cfg, out_dir / "runs" / f"L{layers}-seed{seed}", data, 1, measure, progress
    )
    return [
        {"seed": seed, "depth": layers, "epoch": record["epoch"], **layer}
        for record in records
        for layer in record["layers"]
    ]


def _reference_k(ks: Sequence[int]) -> int:
    """The index of the k the headline rows use: the paper's 10, or the largest measured."""
    return ks.index(SUBSPACE_K) if SUBSPACE_K in ks else len(ks) - 1


def _subspace_rows(curves: list[dict[str, Any]], ks: list[int], d: int) -> list[Row]:
    paper = paper_numbers("fig2_subspace")
    j = _reference_k(ks)
    k = ks[j]
    pca_k = [c["pca"][j] for c in curves]
    rnd_k = [c["random"][j] for c in curves]
    group = f"Fig. 2 (right): cosine of the gradient with its projection, k = {k} basis vectors"
    rows = [
        Row(
            group,
            {"subspace": "activation PCA", "statistic": "largest over layers and epochs"},
            float(np.max(pca_k)),
            None,
            paper["activation_pca_best"],
        ),
        Row(
            group,
            {"subspace": "activation PCA", "statistic": "mean over layers and epochs"},
            *finite_mean_and_se(pca_k),
            None,
        ),
        Row(
            group,
            {"subspace": "random", "statistic": "mean over layers and epochs"},
            *finite_mean_and_se(rnd_k),
            paper["random"],
            projection_cosine(k, d),
        ),
    ]
    for jj, kk in enumerate(ks):
        rows.append(
            Row(
                "every k: mean over layers and epochs",
                {"k": kk, "subspace": "activation PCA"},
                *finite_mean_and_se([c["pca"][jj] for c in curves]),
            )
        )
        rows.append(
            Row(
                "every k: mean over layers and epochs",
                {"k": kk, "subspace": "random"},
                *finite_mean_and_se([c["random"][jj] for c in curves]),
                None,
                projection_cosine(kk, d),
            )
        )
    return rows


def _subspace_notes(b: dict[str, Any], curves: list[dict[str, Any]], ks: list[int]) -> list[str]:
    j = _reference_k(ks)
    k = ks[j]
    pca_k = [c["pca"][j] for c in curves]
    rnd_k = [c["random"][j] for c in curves]
    better = sum(c["pca"][j] > c["random"][j] for c in curves)
    return [
        EMBEDDED_NOTE,
        "The gradient is the per-example gradient with respect to the activations x_{i+1} of "
        "every hidden layer (what activation mixing guesses, Sec. 3.3), obtained by backprop; "
        f"the activation subspace is the top-k PCA directions of the {b['batch_size']} "
        "examples' x_{i+1} (centred), the random subspace an orthonormalised Gaussian block. The "
        "cosine of a vector with its projection is ||Pv|| / ||v||, averaged over the examples; "
        "for a random subspace its expectation is E[χ_k] / E[χ_d] (theory column).",
        f"Claim (paper): the activation subspace needs far fewer basis vectors than a random one. "
        f"Ours at k = {k}: PCA beats random in {better} of {len(curves)} (depth, layer, epoch) "
        f"curves; PCA {np.mean(pca_k):.3f} on average against random {np.mean(rnd_k):.3f}.",
        "The PCA curves rise steeply up to k = 10, the number of classes: MNIST activations "
        "cluster by class, and the last hidden layer's gradient W_Lᵀ (softmax − onehot) lies in "
        "a 10-dimensional space.",
        "The paper's 0.5 is its best case ('as high as 0.5 with fewer than 10 principal "
        "components') and its 0.1 the random subspace at width 1024 (√(10/1024) ≈ 0.1).",
    ]


def _draw_subspace(result: ExperimentResult):
    fig, axes = new_figure(1, 1, panel_size=(5.5, 4.2))
    ax = axes[0][0]
    ks = result.raw["ks"]
    for c in result.raw["curves"]:
        ax.plot(ks, c["pca"], color="C0", alpha=0.25, linewidth=0.8)
        ax.plot(ks, c["random"], color="C1", alpha=0.25, linewidth=0.8)
    d = result.settings["width"]
    ax.plot(ks, [projection_cosine(k, d) for k in ks], "k--", linewidth=1, label="E[χ_k]/E[χ_d]")
    ax.plot([], [], color="C0", label="activation subspace (PCA)")
    ax.plot([], [], color="C1", label="random subspace")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("number of basis vectors k")
    ax.set_ylabel("cosine(projected gradient, gradient)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


register(
    Experiment(
        name="guess-subspace",
        paper=PAPER,
        reproduces="Fig. 2 (right)",
        summary="Cosine between the activity gradient and its projection on the top-k PCA "
        "subspace of the activations, against a random k-dim subspace, for every hidden layer "
        "of MLPs of depth 3, 4, 6 through 20 epochs of training.",
        run=run_guess_subspace,
    )
)
