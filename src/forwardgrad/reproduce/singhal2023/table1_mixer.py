"""``guess-mixer``, Table 1: LocalMixer test accuracy of backprop, Ren et al.'s local-loss
activity perturbation, activation mixing and Wᵀ (and Ren et al.'s Table 3 FG-A, LG-FG-A and
L-BP rows).

CIFAR-10 is not embedded: the paper budget trains a scaled LocalMixer on MNIST-5k, where what
can be checked is the ordering the paper reports (Wᵀ ≥ Ren's LG-FG-A ≥ mixing), and
:data:`CIFAR10_COMMAND` trains the paper's own setting for anyone with CIFAR-10's files.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

from ...training.compare import compare
from ...training.config import TrainConfig
from ..registry import Experiment, register
from ..report import ExperimentResult, Plot, Row, Tolerance, new_figure
from .common import (
    PAPER,
    accuracy_percent,
    budget_scaling,
    compared_records,
    seeds_to_run,
    timed_settings,
)
from .runs import drop_checkpoints

# (spec, name): local losses are the model's default; ":local_losses=false" trains end to end.
MIXER_METHODS = (
    ("backprop:local_losses=false", "Backprop (end to end)"),
    ("backprop", "Backprop, local losses (Ren's L-BP)"),
    ("activation:local_losses=false", "Activation perturbation, no local losses (Ren's FG-A)"),
    ("activation", "Ren et al.: activation perturbation, local losses (LG-FG-A)"),
    ("mixing", "Activation mixing, local losses"),
    ("wt", "Wᵀ, local losses"),
)

# Test accuracy (%) on CIFAR-10: Table 1's "with Adam" row (backprop, Ren et al., mixing, Wᵀ)
# and Ren et al.'s Table 3 (100 - test error) for the rows Table 1 does not have.
PAPER_TEST = {
    "backprop:local_losses=false": 71.2,
    "backprop": 100 - 30.75,
    "activation:local_losses=false": 100 - 59.72,
    "activation": 71.2,
    "mixing": 68.8,
    "wt": 72.5,
}
# Train accuracy (%): Ren et al.'s Table 3 (100 - train error); Table 1 gives none.
PAPER_TRAIN = {
    "backprop:local_losses=false": 100.0,
    "backprop": 100.0,
    "activation:local_losses=false": 100 - 41.29,
    "activation": 100 - 19.39,
}

MIXER_BUDGETS: dict[str, dict[str, Any]] = {
    # Scaled: M/8/16 (512 channels) takes about 110 s an epoch for Wᵀ on MNIST-5k on this
    # 2-core CPU, so the paper's hundreds of epochs and 5 methods x 3 seeds are out of reach.
    "paper": {
        "dataset": "mnist5k",
        "blocks": 4,
        "channels": 64,
        "groups": 2,
        "epochs": 40,
        "batch_size": 64,
        "lr": 1e-3,
        "seeds": 2,
    },
    "smoke": {
        "dataset": "digits",
        "blocks": 2,
        "channels": 8,
        "groups": 2,
        "epochs": 1,
        "batch_size": 256,
        "lr": 1e-3,
        "seeds": 1,
    },
}

# The paper's setting (Ren's M/8/16, Adam 1e-3) for anyone who has CIFAR-10's files; add
# --augment for Table 1's augmentation rows (random crop and flip), with 10x the epochs for the
# forward-gradient methods as the paper did.
CIFAR10_COMMAND = shlex.join(
    [
        "forwardgrad",
        "compare",
        "--model",
        "localmixer",
        "--dataset",
        "cifar10",
        "--data-dir",
        "DIR",
        "--guesses",
        ",".join(spec for spec, _ in MIXER_METHODS),
        "--optimizer",
        "adam",
        "--lr",
        "1e-3",
        "--batch-size",
        "100",
        "--epochs",
        "200",
        "--seeds",
        "3",
        "--out",
        "runs/guess-mixer-cifar10",
    ]
)


def mixer_config(b: dict[str, Any]) -> TrainConfig:
    """The shared config of every method's run under budget ``b``."""
    return TrainConfig(
        dataset=b["dataset"],
        model="localmixer",
        depth=b["blocks"],
        width=b["channels"],
        groups=b["groups"],
        epochs=b["epochs"],
        batch_size=b["batch_size"],
        optimizer="adam",
        lr=b["lr"],
        seed=0,
        threads=1,  # bit-reproducible runs
    )


def run_guess_mixer(
    budget: str, seeds: int | None, out_dir: Path, progress: bool
) -> ExperimentResult:
    b = MIXER_BUDGETS[budget]
    seed_list = seeds_to_run(seeds, b["seeds"])
    root = out_dir / "runs"
    table = compare(
        mixer_config(b), [s for s, _ in MIXER_METHODS], len(seed_list), root, progress=progress
    )
    drop_checkpoints(root)
    by_spec = {row["guess"]: row for row in table}
    curves = {s: compared_records(root, s, seed_list, "metrics.jsonl") for s, _ in MIXER_METHODS}
    return ExperimentResult(
        budget=budget,
        seeds=seed_list,
        settings=timed_settings(
            b,
            out_dir,
            model="localmixer",
            methods=[s for s, _ in MIXER_METHODS],
            optimizer="adam",
            cifar10_command=CIFAR10_COMMAND,
        ),
        rows=_rows(by_spec, len(seed_list)),
        raw={"table": table, "curves": curves},
        paper_tolerance=Tolerance(
            absolute=2.0,
            standard_errors=2.0,
            why="percentage points; the paper's numbers are CIFAR-10's, ours MNIST-5k's",
        ),
        scaling=budget_scaling(budget, _scaling(b, seed_list), _smoke(b)),
        notes=_notes() + _claims(by_spec, len(seed_list)),
        plots=[
            Plot(
                "curves.png",
                "Test accuracy per epoch of every method (mean over seeds).",
                _draw_curves,
            )
        ],
    )


def _rows(by_spec: dict[str, dict], seeds: int) -> list[Row]:
    rows = []
    for split, paper in (("test", PAPER_TEST), ("train", PAPER_TRAIN)):
        for spec, name in MIXER_METHODS:
            rows.append(
                Row(
                    f"{split} accuracy (%), paper: CIFAR-10",
                    {"method": name, "guess": spec},
                    *accuracy_percent(by_spec[spec], split, seeds),
                    paper.get(spec),
                )
            )
    return rows


def _ordering(by_spec: dict[str, dict], seeds: int, better: str, worse: str) -> str:
    (a, a_se), (b, b_se) = (accuracy_percent(by_spec[s], "test", seeds) for s in (better, worse))
    gap = a - b
    se = math.hypot(a_se or 0.0, b_se or 0.0)
    verdict = "held" if gap >= 0 else "not held"
    within = f" (gap {gap:+.1f} points, SE {se:.1f})" if se else f" (gap {gap:+.1f} points)"
    return f"{better} ≥ {worse}: {verdict}{within}"


def _claims(by_spec: dict[str, dict], seeds: int) -> list[str]:
    pairs = [
        ("wt", "activation"),
        ("activation", "mixing"),
        ("activation", "activation:local_losses=false"),
    ]
    return [
        "Claim (paper, Table 1): Wᵀ ≥ Ren et al.'s LG-FG-A ≥ mixing in test accuracy; "
        "(Ren et al., Table 3) local losses lift activity perturbation. Ours: "
        + "; ".join(_ordering(by_spec, seeds, a, b) for a, b in pairs)
        + ". 'Held' compares the means only; a gap within about 2 SE ranks nothing."
    ]


def _notes() -> list[str]:
    return [
        "CIFAR-10 is not available offline. MNIST-5k (4000 train / 1000 test) stands in for it; "
        "the paper column holds the CIFAR-10 numbers for reference (Table 1's Adam row; "
        "Ren et al.'s Table 3, 100 − error, for FG-A, L-BP and the train accuracies), so the "
        "'reproduces paper' column compares across datasets and is not a test of the "
        "method. The ordering of the methods is what this budget can check.",
        "The model is forwardgrad's `localmixer` (see its docstring for how it departs from "
        "Ren et al.'s: residual after the last ReLU, per-patch local heads). Every local-loss "
        "run scales each block's tangents by the JVP of that block's own local loss (one pass, "
        "the blocks cut apart by stop-gradients); Wᵀ and mixing reach each layer's next one "
        "through its layer norm and ReLU.",
        "The paper's augmentation rows (random crop and flip, 500 and 5000 epochs) are not run "
        "at this budget; `CIFAR10_COMMAND` in settings (add `--augment`) runs them on CIFAR-10.",
    ]


def _scaling(b: dict[str, Any], seeds: list[int]) -> str:
    return (
        f"scaled: LocalMixer with {b['blocks']} blocks, {b['channels']} channels in "
        f"{b['groups']} groups of {b['channels'] // b['groups']} (Ren's M/8/16: 512 channels in "
        f"16 groups of 32), the image in a 4 x 4 grid of patches, on {b['dataset']}; "
        f"{b['epochs']} epochs, batch {b['batch_size']}, "
        f"Adam lr {b['lr']:g} (the paper's Adam row), seeds {', '.join(map(str, seeds))}. "
        "At 512 channels one Wᵀ epoch took about 110 s on the 2-core CPU these ran on."
    )


def _smoke(b: dict[str, Any]) -> str:
    return (
        f"digits, {b['blocks']} blocks of {b['channels']} channels, {b['epochs']} epoch, "
        f"batch {b['batch_size']}."
    )


def _draw_curves(result: ExperimentResult):
    fig, axes = new_figure(1, 1, panel_size=(6.0, 4.0))
    ax = axes[0][0]
    names = dict(MIXER_METHODS)
    for i, (spec, runs) in enumerate(result.raw["curves"].items()):
        runs = [r for r in runs if r]
        if not runs:
            continue
        epochs = [m["epoch"] for m in runs[0]]
        mean = [100 * sum(r[j]["test_acc"] for r in runs) / len(runs) for j in range(len(epochs))]
        ax.plot(epochs, mean, marker="o", color=f"C{i}", label=names[spec])
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return fig


register(
    Experiment(
        name="guess-mixer",
        paper=PAPER,
        reproduces="Table 1 (and Ren et al. 2022, Table 3)",
        summary="LocalMixer test accuracy: backprop, Ren et al.'s local-loss activation "
        "perturbation, mixing and Wᵀ (with local losses), and activity perturbation without "
        "them.",
        run=run_guess_mixer,
    )
)
