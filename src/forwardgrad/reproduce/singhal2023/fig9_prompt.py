"""``guess-prompt``, A.5 (Fig. 9): prompt tuning of a pre-trained ViT with Wᵀ against
directional descent, beside activation perturbation and backprop, with the peak memory of each.

The paper tunes the prompt tokens of an ImageNet-pre-trained ViT-B/16 on CUB-200, Stanford Cars
and Stanford Dogs. Neither the weights nor the datasets are available offline, so a small ViT is
pre-trained here by backprop on one half of the classes (MNIST-5k digits 0-4), its weights saved
and loaded back through ``init_from``, and only its prompt tokens are tuned on the other half
(digits 5-9, relabelled 0-4, the head frozen: the shared label space keeps the head trained on
0-4 usable, and every step then depends on the prompts' gradient guess alone).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data import Dataset
from ...diagnostics import agreement, cosine_similarity, effective_ranks, weight_gradients
from ...environment import torch_threads
from ...estimation import cross_entropy_per_example
from ...io import save_torch
from ...stats import finite_mean_and_se
from ...training.checkpoint import load_checkpoint
from ...training.config import TrainConfig
from ...training.loop import evaluate
from ...training.train import initial_model, load_data, probe_batch
from ..registry import Experiment, register
from ..report import ExperimentResult, Plot, Row, new_figure
from .common import PAPER, budget_scaling, method_name, seed_of, seeds_to_run
from .estimators import PromptTokenGuess
from .prompt_tuning import (
    class_subset,
    estimator_factory,
    method_estimator,
    save_batch,
    step_peak_memory,
)
from .runs import drop_checkpoints, run_seconds, train_once

PROMPT_METHODS = ("backprop", "weight", "activation", "activation-prompt", "wt-prompt")
WT, DIRECTIONAL = "wt-prompt", "weight"
PROMPTS = "embed.prompts"

PROMPT_BUDGETS: dict[str, dict[str, Any]] = {
    "paper": {
        "dataset": "mnist5k",
        "pretrain_classes": [0, 5],
        "tune_classes": [5, 10],
        "depth": 4,
        "width": 64,
        "heads": 4,
        "mlp_dim": 128,
        "patch_size": 7,
        "pretrain_epochs": 20,
        "pretrain_lr": 1e-3,
        "prompts": 8,
        "epochs": 20,
        "batch_size": 64,
        "lr": 1e-2,
        "seeds": 3,
        "cosine_draws": 64,
        "memory_batch": 64,
        "memory_methods": list(PROMPT_METHODS),
        "memory_one_process": False,
        "methods": list(PROMPT_METHODS),
        "threads": 1,
    },
    "smoke": {
        "dataset": "digits",
        "pretrain_classes": [0, 5],
        "tune_classes": [5, 10],
        "depth": 1,
        "width": 16,
        "heads": 2,
        "mlp_dim": 32,
        "patch_size": 4,
        "pretrain_epochs": 1,
        "pretrain_lr": 1e-3,
        "prompts": 2,
        "epochs": 1,
        "batch_size": 128,
        "lr": 1e-2,
        "seeds": 1,
        "cosine_draws": 2,
        "memory_batch": 16,
        "memory_methods": ["backprop", WT],
        "memory_one_process": True,
        "methods": list(PROMPT_METHODS),
        "threads": 1,
    },
}


def vit_config(b: dict[str, Any], seed: int, **fields: Any) -> TrainConfig:
    """The budget's ViT trained with ``fields`` (guess, epochs, lr, prompts, init_from, ...)."""
    return TrainConfig(
        dataset=b["dataset"],
        model="vit",
        depth=b["depth"],
        width=b["width"],
        heads=b["heads"],
        mlp_dim=b["mlp_dim"],
        patch_size=b["patch_size"],
        batch_size=b["batch_size"],
        threads=b["threads"],
        seed=seed,
        **fields,
    )


def tune_config(b: dict[str, Any], seed: int, method: str, weights: Path) -> TrainConfig:
    """Prompt tuning: the pre-trained weights, ``prompts`` new tokens, nothing else trained."""
    return vit_config(
        b,
        seed,
        guess=method,
        epochs=b["epochs"],
        lr=b["lr"],
        prompts=b["prompts"],
        init_from=str(weights),
    )


def run_guess_prompt(
    budget: str, seeds: int | None, out_dir: Path, progress: bool
) -> ExperimentResult:
    b = PROMPT_BUDGETS[budget]
    seed_list = seeds_to_run(seeds, b["seeds"])
    everything = load_data(vit_config(b, 0), seed=0)  # one split for every run
    pretrain_data = class_subset(everything, b["pretrain_classes"])
    tune_data = class_subset(everything, b["tune_classes"])
    weights, pretrain = _pretrain(b, pretrain_data, out_dir / "runs" / "pretrain", progress)
    runs = {
        method: [
            _tune(b, seed, method, weights, tune_data, out_dir, progress) for seed in seed_list
        ]
        for method in b["methods"]
    }
    with torch_threads(b["threads"]):
        start = {str(seed): _start_of_tuning(b, seed, weights, tune_data) for seed in seed_list}
        memory = _peak_memory(b, weights, tune_data, out_dir / "runs" / "memory")
    drop_checkpoints(out_dir / "runs")
    raw = {"pretrain": pretrain, "runs": runs, "start": start, "memory": memory}
    return ExperimentResult(
        budget=budget,
        seeds=seed_list,
        settings={
            **b,
            "training_loop_seconds": run_seconds(out_dir / "runs"),
            "optimizer": "adamw (weight decay 0.01), every method",
            "trained": f"{PROMPTS} only ({b['prompts']} tokens); the head and every other "
            "weight frozen",
            "weights_file": str(weights),
        },
        rows=_result_rows(raw, b),
        raw=raw,
        scaling=_prompt_scaling(budget, b, seed_list),
        notes=_prompt_notes(raw, b),
        plots=[
            Plot(
                "fig9.png",
                "Prompt tuning on digits 5-9 of a ViT pre-trained on digits 0-4: train loss and "
                "test accuracy per epoch (mean over seeds; epoch 0 is the pre-trained model with "
                "fresh prompts), and the peak memory of one step.",
                _draw_prompt,
            )
        ],
    )


# ------------------------------------------------------------------------------------- runs


def _pretrain(
    b: dict[str, Any], data: Dataset, run_dir: Path, progress: bool
) -> tuple[Path, dict[str, Any]]:
    """Backprop on the pre-training classes; the weights saved as a state_dict file."""
    cfg = vit_config(b, 0, guess="backprop", epochs=b["pretrain_epochs"], lr=b["pretrain_lr"])
    metrics = train_once(cfg, run_dir, data, progress)
    weights = run_dir / "weights.pt"
    if not weights.exists():  # a rerun keeps the file of the first (and its checkpoint is gone)
        save_torch(weights, load_checkpoint(run_dir / "checkpoint.pt", require=("model",))["model"])
    return weights, {"metrics": metrics, "data": data.summary()}


def _tune(
    b: dict[str, Any],
    seed: int,
    method: str,
    weights: Path,
    data: Dataset,
    out_dir: Path,
    progress: bool,
) -> dict[str, Any]:
    """One method and seed: its metrics per epoch and whether the frozen weights stayed."""
    cfg = tune_config(b, seed, method, weights)
    run_dir = out_dir / "runs" / "tune" / method / f"seed{seed}"
    metrics = train_once(cfg, run_dir, data, progress, estimator_factory(method))
    return {"metrics": metrics, "frozen_unchanged": _frozen_unchanged(run_dir, weights)}


def _peak_memory(
    b: dict[str, Any], weights: Path, data: Dataset, folder: Path
) -> dict[str, dict[str, Any]]:
    """Each method's peak step memory on the same batch, in a fresh process per method (or,
    with ``memory_one_process``, all in one)."""
    batch = save_batch(folder / "batch.pt", data, b["memory_batch"])
    configs = [tune_config(b, 0, method, weights) for method in b["memory_methods"]]
    groups = [configs] if b["memory_one_process"] else [[cfg] for cfg in configs]
    got = [m for group in groups for m in step_peak_memory(group, batch, data.num_classes)]
    return dict(zip(b["memory_methods"], got))


def _frozen_unchanged(run_dir: Path, weights: Path) -> bool | None:
    """Whether every pre-trained weight is bit-identical after tuning (None: the checkpoint of
    an earlier session is gone, so there is nothing to compare)."""
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        return None
    tuned = load_checkpoint(checkpoint, require=("model",))["model"]
    before = torch.load(weights, map_location="cpu", weights_only=True)
    return set(tuned) == set(before) | {PROMPTS} and all(
        torch.equal(tuned[k], v) for k, v in before.items()
    )


def _start_of_tuning(b: dict[str, Any], seed: int, weights: Path, data: Dataset) -> dict[str, Any]:
    """The pre-trained model with this seed's fresh prompts: its loss and accuracy on the
    tuning classes, and each method's cosine to the true prompt gradient on a fixed batch."""
    base = tune_config(b, seed, "backprop", weights)
    model = initial_model(base, data).eval()
    train_loss, train_acc = evaluate(model, data.x_train, data.y_train, features=data.features)
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test, features=data.features)
    x, y = probe_batch(data, b["batch_size"], seed)
    _, true = weight_gradients(model, x, y, cross_entropy_per_example)
    cosines: dict[str, list[float]] = {}
    for i, method in enumerate(m for m in b["methods"] if m != "backprop"):
        cfg = dataclasses.replace(base, guess=method, seed=seed_of(seed, i, 9))
        estimator = method_estimator(cfg, model)
        draws = [estimator.estimate(x, y)[1] for _ in range(b["cosine_draws"])]
        cosines[method] = [
            agreement([e[p] for p in true], list(true.values()))["cosine"] for e in draws
        ]
    prompts = model.get_parameter(PROMPTS)
    wt = PromptTokenGuess(model, "wt")
    expected = wt.expected_gradient(true[prompts])
    return {
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "cosines": cosines,
        "wt_expected_cosine": cosine_similarity(expected, true[prompts]),
        "wt_second_moment_effective_ranks": effective_ranks(wt.second_moments()).tolist(),
        "trained": [n for n, p in model.named_parameters() if p.requires_grad],
    }


# ------------------------------------------------------------------------------------- rows


def _final(raw: dict[str, Any], method: str, key: str) -> list[float]:
    return [float(r["metrics"][-1][key]) if r["metrics"] else math.nan for r in raw["runs"][method]]


def _result_rows(raw: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    rows = [_pretrain_row(raw)]
    group = f"Prompt tuning on digits {_classes(b['tune_classes'])}, after {b['epochs']} epochs"
    for method in raw["runs"]:
        rows.append(
            Row(
                f"{group}: train loss",
                {"method": method_name(method)},
                *finite_mean_and_se(_final(raw, method, "train_loss")),
            )
        )
    for method in raw["runs"]:
        acc = [100 * a for a in _final(raw, method, "test_acc")]
        rows.append(
            Row(
                f"{group}: test accuracy (%)",
                {"method": method_name(method)},
                *finite_mean_and_se(acc),
            )
        )
    return rows + _cosine_rows(raw, b) + _memory_rows(raw, b)


def _pretrain_row(raw: dict[str, Any]) -> Row:
    last = raw["pretrain"]["metrics"][-1]
    return Row(
        "Pre-training by backprop (digits 0-4): test accuracy (%)",
        {"model": "pre-trained ViT"},
        100 * float(last["test_acc"]),
    )


def _cosine_rows(raw: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    """Each method's cosine to the true prompt gradient at the start of tuning, per draw, the
    cosine of Wᵀ's expectation (closed form) and the effective rank of its tangents' law."""
    group = "Start of tuning: cosine to the true prompt gradient (fixed batch)"
    rows = []
    for method in next(iter(raw["start"].values()))["cosines"]:
        values = [c for s in raw["start"].values() for c in s["cosines"][method]]
        rows.append(
            Row(
                group,
                {"method": method_name(method), "of": "one draw"},
                *finite_mean_and_se(values),
            )
        )
    expected = [s["wt_expected_cosine"] for s in raw["start"].values()]
    rows.append(
        Row(
            group,
            {"method": method_name(WT), "of": "E[ĝ], closed form (unbiased guesses: 1)"},
            *finite_mean_and_se(expected),
        )
    )
    ranks = [r for s in raw["start"].values() for r in s["wt_second_moment_effective_ranks"]]
    rows.append(
        Row(
            "Start of tuning: effective rank of Wᵀ's E[u uᵀ] = J_pᵀJ_p per prompt token",
            {"method": method_name(WT), "of": f"token width {b['width']}"},
            *finite_mean_and_se(ranks),
        )
    )
    return rows


def _memory_rows(raw: dict[str, Any], b: dict[str, Any]) -> list[Row]:
    where = "one fresh process" if b["memory_one_process"] else "a fresh process each"
    group = f"Peak memory of one tuning step (MB, batch {b['memory_batch']}, {where})"
    reference = raw["memory"].get("backprop", {}).get("peak_mb")
    rows = []
    for method, got in raw["memory"].items():
        ratio = got["peak_mb"] / reference if reference else math.nan
        labels = {"method": method_name(method), "× backprop": f"{ratio:.2f}"}
        rows.append(Row(group, labels, got["peak_mb"]))
    return rows


def _classes(classes: Sequence[int]) -> str:
    return f"{classes[0]}-{classes[1] - 1}"


# ------------------------------------------------------------------------------------ notes


def _compare_text(raw: dict[str, Any], better: str, worse: str, key: str, lower: bool) -> str:
    """``better`` against ``worse`` on the final ``key``: means, seed-by-seed wins and the gap
    in combined standard errors; resolved only at 2 or more of them."""
    a, b = _final(raw, better, key), _final(raw, worse, key)
    scale, digits = (1.0, 3) if "loss" in key else (100.0, 1)
    (ma, sa), (mb, sb) = finite_mean_and_se(a), finite_mean_and_se(b)
    wins = sum((x < y) if lower else (x > y) for x, y in zip(a, b))
    spread = math.hypot(sa or 0.0, sb or 0.0)
    gap = abs(ma - mb) / spread if spread > 0 else math.nan
    if not ((ma < mb) if lower else (ma > mb)):
        verdict = "does not hold"
    elif gap >= 2:
        verdict = "holds"
    elif not math.isfinite(gap):
        verdict = "holds on the means of one seed: not resolved"
    else:
        verdict = "holds on the means, within 2 combined SE: not resolved by these seeds"
    apart = f", {gap:.1f} combined SE apart" if math.isfinite(gap) else ""
    return (
        f"{method_name(better)} {scale * ma:.{digits}f} against {method_name(worse)} "
        f"{scale * mb:.{digits}f} (better in {wins} of {len(a)} seeds{apart}) — {verdict}"
    )


def _prompt_notes(raw: dict[str, Any], b: dict[str, Any]) -> list[str]:
    notes = [
        "Claim (paper, A.5): Wᵀ outperforms directional descent. Final train loss: "
        + _compare_text(raw, WT, DIRECTIONAL, "train_loss", lower=True)
        + ". Final test accuracy (%): "
        + _compare_text(raw, WT, DIRECTIONAL, "test_acc", lower=False)
        + ".",
        "Wᵀ against the same per-example tangents on the prompt rows without its structure "
        "(activation-prompt): final train loss "
        + _compare_text(raw, WT, "activation-prompt", "train_loss", lower=True)
        + "; test accuracy (%) "
        + _compare_text(raw, WT, "activation-prompt", "test_acc", lower=False)
        + ".",
        "Backprop as the reference: final train loss "
        + _compare_text(raw, "backprop", WT, "train_loss", lower=True)
        + ".",
        _start_note(raw, b),
        _frozen_note(raw),
        "Wᵀ of the prompts (probe, `PromptTokenGuess`): per prompt token u = J_LNᵀ W_qkvᵀ ε, "
        "ε ~ N(0, I) shaped like the first block's q/k/v projection output, J_LN that block's "
        "norm1 Jacobian at the token (closed form), zero on the class and patch tokens. The "
        "library's `wt` finds no next layer at the patch embedding (its output feeds norm1 and "
        "the residual add); as the only (so last) site it would draw isotropic tangents. "
        "E[ĝ] = J_pᵀJ_p g per prompt token: biased, unlike directional descent and activation "
        "perturbation.",
        "Directional descent is the `weight` guess over the trainable parameters, here the "
        "prompt tokens alone. `activation` is the library's activation perturbation at the "
        "patch-embedding output, every token (class, prompts, patches); `activation-prompt` "
        "puts the same isotropic tangents on the prompt rows only, the control with Wᵀ's "
        "support and without its structure. One tangent per step for every guess.",
        _memory_note(raw, b),
    ]
    return notes


def _start_note(raw: dict[str, Any], b: dict[str, Any]) -> str:
    start = list(raw["start"].values())
    acc = 100 * float(np.mean([s["test_acc"] for s in start]))
    loss = float(np.mean([s["train_loss"] for s in start]))
    return (
        f"Before tuning (pre-trained weights, fresh prompts, head trained on digits "
        f"{_classes(b['pretrain_classes'])}): train loss {loss:.3f}, test accuracy {acc:.1f}% on "
        f"digits {_classes(b['tune_classes'])} relabelled 0-4 (chance 20%)."
    )


def _frozen_note(raw: dict[str, Any]) -> str:
    checked = [r["frozen_unchanged"] for runs in raw["runs"].values() for r in runs]
    known = [c for c in checked if c is not None]
    unchecked = len(checked) - len(known)
    return (
        f"Frozen weights bit-identical to the saved pre-trained file after tuning: {sum(known)} "
        f"of {len(known)} runs checked"
        + (f" ({unchecked} reused from an earlier session, not checked)" if unchecked else "")
        + "."
    )


def _memory_note(raw: dict[str, Any], b: dict[str, Any]) -> str:
    params = next(iter(raw["memory"].values()))["params_mb"]
    where = (
        "one fresh process for all methods"
        if b["memory_one_process"]
        else "a fresh process per method, as `forwardgrad bench` measures it"
    )
    return (
        "Peak memory: the resident-set peak of one step above the resident size before it, "
        f"after a warm-up step, on the same {b['memory_batch']} training examples, in {where}; "
        f"the model's parameters take {params:.2f} MB. Backprop must keep every activation "
        "between the input and the prompts, which sit at the input; the forward gradients keep "
        "the tangents of one pass."
    )


def _prompt_scaling(budget: str, b: dict[str, Any], seeds: Sequence[int]) -> str:
    return budget_scaling(
        budget,
        "substituted: no pre-trained ViT-B/16 and none of CUB-200, Stanford Cars or Stanford "
        f"Dogs are available offline. A ViT of depth {b['depth']}, width {b['width']}, "
        f"{b['heads']} heads, MLP {b['mlp_dim']}, {b['patch_size']}x{b['patch_size']} patches is "
        f"pre-trained here by backprop on MNIST-5k digits {_classes(b['pretrain_classes'])} "
        f"({b['pretrain_epochs']} epochs, AdamW lr {b['pretrain_lr']:g}), saved, loaded back "
        f"with init_from; then {b['prompts']} prompt tokens alone are tuned on digits "
        f"{_classes(b['tune_classes'])} relabelled 0-4 (head frozen; both halves standardised "
        f"with all ten digits' training statistics), {b['epochs']} epochs, "
        f"batch {b['batch_size']}, AdamW lr {b['lr']:g} for every method, seeds "
        f"{', '.join(map(str, seeds))}, one thread. The paper gives no epochs, learning rate "
        "or prompt count for A.5.",
        f"{b['dataset']} (8x8), depth {b['depth']}, width {b['width']}, {b['prompts']} prompts, "
        f"{b['pretrain_epochs']} + {b['epochs']} epoch(s).",
    )


# ------------------------------------------------------------------------------------- plot


def _curve(raw: dict[str, Any], method: str, key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of ``key`` per epoch, epoch 0 being the start of tuning."""
    runs = raw["runs"][method]
    start = [s[key] for s in raw["start"].values()]
    epochs = min(len(r["metrics"]) for r in runs)
    values = [float(np.mean(start))]
    values += [float(np.mean([r["metrics"][e][key] for r in runs])) for e in range(epochs)]
    return list(range(epochs + 1)), values


def _draw_prompt(result: ExperimentResult):
    raw = result.raw
    fig, axes = new_figure(3, 1, panel_size=(4.4, 3.4))
    for i, method in enumerate(raw["runs"]):
        epochs, loss = _curve(raw, method, "train_loss")
        axes[0][0].plot(epochs, loss, color=f"C{i}", marker="o", ms=3, label=method_name(method))
        epochs, acc = _curve(raw, method, "test_acc")
        axes[0][1].plot(epochs, [100 * a for a in acc], color=f"C{i}", marker="o", ms=3)
    axes[0][0].set_ylabel("train loss")
    axes[0][1].set_ylabel("test accuracy (%)")
    for ax in axes[0][:2]:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    memory = raw["memory"]
    names = [method_name(m) for m in memory]
    ax = axes[0][2]
    ax.barh(names, [m["peak_mb"] for m in memory.values()], color="C7")
    ax.invert_yaxis()
    ax.set_xlabel("peak memory of one step (MB)")
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    return fig


register(
    Experiment(
        name="guess-prompt",
        paper=PAPER,
        reproduces="A.5 (Fig. 9)",
        summary="Prompt tuning of a pre-trained ViT by guessing the prompts' gradient: Wᵀ of "
        "the first layer that reads the prompts against directional descent, activation "
        "perturbation and backprop, with each method's peak step memory; a small ViT "
        "pre-trained here on digits 0-4 and tuned on digits 5-9 stands in for ViT-B/16 on "
        "CUB-200, Cars and Dogs.",
        run=run_guess_prompt,
    )
)
