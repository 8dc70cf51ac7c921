"""What the six reproductions of Wang, Markou & Campbell 2025 share.

The paper's name, the tolerances that judge ours against it, the contenders (each method as the
paper's tables name it, with the guess spec that trains it), the budgets, the settings and notes
every README repeats, and the seed statistics behind every row.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...stats import finite_mean_and_se
from ..report import ExperimentResult, Plot, Row, Tolerance

PAPER = (
    "Wang, Markou & Campbell 2025, Towards Scalable Backpropagation-Free Gradient Estimation "
    "(arXiv 2511.03110, AJCAI 2025)"
)

# ---------------------------------------------------------------------------------------------
# Judging ours against the paper


@dataclass(frozen=True)
class PaperTolerance(Tolerance):
    """``absolute`` for paper values in ``band`` (accuracies, overlaps, covariance norms);
    within a factor ``factor`` for values outside it (bias and variance magnitudes of order
    1e-5, run times, time ratios and ranks), where an absolute slack means nothing. Values
    within ``zero`` of each other count as equal (the paper's 1.35e-8 "bias" of an unbiased
    estimator is rounding noise)."""

    factor: float = 3.0
    band: tuple[float, float] = (0.01, 1.0)
    zero: float = 1e-7

    def allows(self, ours: float, ours_se: float | None, reference: float) -> bool:
        if not math.isfinite(ours):
            return False
        low, high = self.band
        if low <= abs(reference) <= high:
            return super().allows(ours, ours_se, reference)
        if abs(ours - reference) <= self.zero:
            return True
        if ours <= 0 or reference <= 0:
            return False
        return 1 / self.factor <= ours / reference <= self.factor

    def describe(self) -> str:
        low, high = self.band
        inside = super().describe()
        return (
            f"paper values in [{low:g}, {high:g}] (accuracies, overlaps, covariance norms): "
            f"{inside}; outside it (bias and variance magnitudes, times, ratios, ranks): within "
            f"a factor of {self.factor:g}, values within {self.zero:g} of each other counting "
            "as equal"
        )


ACCURACY_TOLERANCE = PaperTolerance(
    absolute=0.04, why="the acceptance criterion for train accuracy in Tables 1, 3 and 5"
)
OVERLAP_TOLERANCE = PaperTolerance(
    absolute=0.05, why="the paper prints no numbers for Fig. 1; its values are read by eye"
)
# Covariance norms of W̃⊥ are exact closed forms, so only float rounding separates them.
EXACT_TOLERANCE = Tolerance(absolute=1e-6, why="exact closed form; float64 rounding")


def cov_norm_theory(width: int, k: int) -> float:
    """``||V_k V_k^T - I||_F / d = sqrt(d - k) / d`` for any k orthonormal directions in R^d.

    The paper's Table 2 reports this d-normalised norm (its code's ``sqrt(mean((C - I)^2))``);
    at d = 128, k = 10 it is 0.0849, printed as 0.085.
    """
    return math.sqrt(width - min(k, width)) / width


def paper_scale(bias: float, variance: float, batch: int) -> tuple[float, float]:
    """Eq. 17-18 magnitudes in the paper's convention from per-example ones.

    The paper's code divides each example's loss by the batch size B, so its activity gradients
    and estimates are B times smaller than ``dl_b/ds_i``: bias scales by 1/B, variance by 1/B².
    """
    return bias / batch, variance / batch**2


def count(n: int, noun: str) -> str:
    """``1 epoch``, ``300 epochs``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


# ---------------------------------------------------------------------------------------------
# Contenders and budgets


@dataclass(frozen=True)
class Contender:
    """One method the paper's tables compare (a gradient estimator, or backprop): its key in
    those tables, its label, and the guess spec that trains it."""

    key: str  # the paper tables' key
    label: str
    spec: str  # compare()'s syntax: "wperp:rank=10:solver=svd"

    def solver_label(self, name_svd: bool = False) -> str:
        """The label, naming the randomized solver where it stands in for exact SVD (and, with
        ``name_svd``, the exact solver of W̃⊥ (k = 10) too)."""
        if "randomized" in self.spec:
            return f"{self.label} [randomized solver]"
        if name_svd and self.key == "wperp-k10":
            return f"{self.label} [SVD]"
        return self.label


def wperp(k: int | None, solver: str = "svd", bottom: bool = False) -> Contender:
    """W̃⊥ with the top (or ``bottom``) k singular directions; ``k=None``: k = rank(W̃)."""
    rank = "full" if k is None else str(k)
    spec = f"wperp:rank={rank}:solver={solver}" + (":bottom=true" if bottom else "")
    if bottom:
        return Contender("wperp-bottom", f"W̃⊥-bottom (k = {k})", spec)
    if solver == "newton-schulz":
        return Contender("wperp-ns", f"W̃⊥-NS (k = {k})", spec)
    if k is None:
        return Contender("wperp-rank", "W̃⊥ (k = rank(W̃))", spec)
    return Contender(f"wperp-k{k}", f"W̃⊥ (k = {k})", spec)


WT = Contender("wt", "W̃ᵀ", "wt")
WEIGHT = Contender("weight", "weight perturbation", "weight")
ACTIVATION = Contender("activation", "activation perturbation", "activation")
BACKPROP = Contender("backprop", "backprop", "backprop")
PRECONDITIONED = Contender("preconditioned", "W̃ᴾ (σ = 1e-5)", "preconditioned:sigma=1e-05")

# Fig. 2's markers and colours.
STYLE = {
    "weight": {"color": "tab:green", "marker": "*"},
    "activation": {"color": "tab:blue", "marker": "s"},
    "wt": {"color": "tab:red", "marker": "o"},
    "wperp-k10": {"color": "tab:orange", "marker": "^"},
    "backprop": {"color": "black", "marker": "D"},
    "wperp-bottom": {"color": "tab:purple", "marker": "v"},
    "wperp-ns": {"color": "tab:brown", "marker": "P"},
    "preconditioned": {"color": "tab:cyan", "marker": "X"},
    "wperp-rank": {"color": "tab:gray", "marker": "h"},
    "wperp-k25": {"color": "tab:olive", "marker": "<"},
    "wperp-k1": {"color": "tab:pink", "marker": ">"},
}


@dataclass(frozen=True)
class Budget:
    epochs: int
    seeds: int  # default seed count
    widths: tuple[int, ...] = (128,)
    # Widest layer trained with the exact SVD solver; wider W̃⊥ runs use the randomized one.
    svd_max_width: int = 128
    train_subset: int | None = None  # smoke: first N training examples only
    test_subset: int | None = None  # smoke: first N test examples only
    points: tuple[int, ...] = ()  # epochs at which a trajectory is measured
    draws: int = 8  # estimates per measurement (variance)
    examples: int = 512  # fixed training batch the measurements use
    timing_epochs: int = 0  # Table 4: epochs timed where a full run is infeasible

    def wperp_solver(self, width: int) -> str:
        return "svd" if width <= self.svd_max_width else "randomized"

    def randomized_widths(self) -> list[int]:
        """The widths at which W̃⊥ trains with the randomized solver instead of exact SVD."""
        return [w for w in self.widths if self.wperp_solver(w) == "randomized"]

    def seed_list(self, seeds: int | None) -> list[int]:
        return list(range(self.seeds if seeds is None else seeds))


SMOKE_NOTE = (
    "a pipeline check, not the paper's settings: {what}, on the first {subset} training and "
    "{test} test examples, one seed; the numbers mean nothing."
)

TRAJECTORY_POINTS = (0, 10, 30, 100, 300)


# ---------------------------------------------------------------------------------------------
# Settings and notes every experiment shares


def common_settings(budget: Budget) -> dict[str, Any]:
    """The settings every experiment's README lists first."""
    return {
        "dataset": "MNIST-1D from mnist1d.make_dataset's defaults: 4000 train / 1000 test, "
        "40 features, standardised with training statistics"
        + (
            f"; first {budget.train_subset} training and {budget.test_subset} test examples"
            if budget.train_subset
            else ""
        ),
        "model": "MLP, 3 hidden ReLU layers of equal width, no biases, PyTorch's default init",
        "loss": "cross-entropy",
        "optimizer": "AdamW, lr 1e-4, weight decay 0.01 (PyTorch's default), default betas",
        "batch_size": 512,
        "epochs": budget.epochs,
        "tangents_per_step": 1,
        "cpu": f"{os.cpu_count()} logical CPUs ({platform.machine()})",
        "torch_threads": torch.get_num_threads(),
    }


COMMON_NOTES = [
    "No biases: the paper optimises only the weights (its code creates bias parameters but "
    "never adds them in the forward pass). The earlier Table 1 run in docs/results.md used "
    "biases.",
    "Accuracies are evaluated on the full training and test splits after the last epoch.",
]

TIMING_NOTE = (
    "Times are training time only (no evaluation), on the CPU of the machine that ran this "
    "(settings `cpu` and `torch_threads`; other jobs sharing it slow it down); the paper's are "
    "from an Apple M1 Pro laptop (PyTorch MPS, the SVD on its CPU)."
)


def scaling(
    budget_name: str, budget: Budget, what: str, paper_departures: str | None
) -> str | None:
    """The README's scaling line: the smoke note, or how the paper budget departs (if at all)."""
    if budget_name == "smoke":
        return SMOKE_NOTE.format(what=what, subset=budget.train_subset, test=budget.test_subset)
    return paper_departures


def join_widths(widths: Sequence[int]) -> str:
    """``128``, ``256 and 512``."""
    return " and ".join(map(str, widths))


# ---------------------------------------------------------------------------------------------
# Rows and the result every experiment hands back


def select(records: Sequence[dict], **match: Any) -> list[dict]:
    """The run records whose fields equal ``match``."""
    return [r for r in records if all(r.get(k) == v for k, v in match.items())]


def accuracy_row(
    group: str, labels: dict[str, Any], records: Sequence[dict], metric: str, paper: float | None
) -> Row:
    mean, se = finite_mean_and_se([r[metric] for r in records])
    return Row(group, labels, ours=mean, ours_se=se, paper=paper)


# (labels, run records, the paper's value per metric): one contender's accuracy rows.
AccuracyEntry = tuple[dict[str, Any], Sequence[dict], Mapping[str, float | None]]


def accuracy_rows(groups: Sequence[tuple[str, str]], entries: Sequence[AccuracyEntry]) -> list[Row]:
    """One accuracy row per entry in each README group; ``groups`` pairs a group's title with
    the metric it lists (``train_acc``, ``test_acc``)."""
    return [
        accuracy_row(group, labels, records, metric, paper.get(metric))
        for group, metric in groups
        for labels, records, paper in entries
    ]


def labels_and_order(contenders: Sequence[Contender]) -> dict[str, Any]:
    """The ``raw`` entries the plots read: each contender's label, and the contenders' order."""
    return {
        "labels": {c.key: c.label for c in contenders},
        "order": [c.key for c in contenders],
    }


def specs(contenders: Sequence[Contender]) -> dict[str, str]:
    """The ``methods`` setting: each contender's guess spec by key."""
    return {c.key: c.spec for c in contenders}


def status_notes(records: Sequence[dict]) -> list[str]:
    """A note naming the runs that diverged, if any."""
    bad = [r for r in records if r["status"] != "completed"]
    if not bad:
        return []
    runs = ", ".join(f"{r['method']} width {r['width']} seed {r['seed']}" for r in bad)
    return [f"Diverged (left out of the means): {runs}."]


def experiment_result(
    budget_name: str,
    budget: Budget,
    seeds: list[int],
    *,
    settings: dict[str, Any],
    rows: list[Row],
    raw: dict[str, Any],
    notes: Sequence[str],
    records: Sequence[dict],
    what: str,
    departures: str | None,
    plot: Plot,
    paper_tolerance: Tolerance = ACCURACY_TOLERANCE,
    theory_tolerance: Tolerance | None = None,
) -> ExperimentResult:
    """An experiment's result, with what every one of them adds: the common settings first, the
    common notes and the diverged ``records`` last, and the smoke note (``what`` ran) or the
    paper budget's ``departures`` as its scaling line."""
    return ExperimentResult(
        budget=budget_name,
        seeds=seeds,
        settings={**common_settings(budget), **settings},
        rows=rows,
        raw=raw,
        paper_tolerance=paper_tolerance,
        theory_tolerance=theory_tolerance,
        scaling=scaling(budget_name, budget, what, departures),
        notes=[*notes, *COMMON_NOTES, *status_notes(records)],
        plots=[plot],
    )
