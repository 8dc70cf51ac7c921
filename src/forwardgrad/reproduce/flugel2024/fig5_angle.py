"""``tangents-angle``: Fig. 5 (approximation panel) of Flügel et al. 2024, tangents at a fixed
angle α to a random base tangent.

Cosine similarity and relative norm of the projection and mean forward gradients, n = 64,
simulated in closed form (:mod:`.simulation`). The paper prints no numbers for the figure, so
ours are set against the exact expectations in ``THEORY_ANGLE`` where they exist.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..registry import Experiment, register
from ..report import ExperimentResult, Plot, Row, draw_curve, new_figure
from .common import PAPER
from .expected_cosine import expected_chi, gaussian_sum_cosine, projection_cosine
from .simulation import (
    CHUNK_ELEMENTS,
    closed_form_result,
    exactness_notes,
    find_cell,
    paper_seeds,
    run_grid,
)

THEORY_ANGLE = [
    "The `angle` sampler draws a uniform base direction b and k−1 tangents "
    "cos α · b + sin α · r_j with r_j uniform on the unit sphere of b⊥ (all of norm sqrt(n)).",
    "**Projection is independent of α.** For 0° < α < 180°, span(V) = span(b, r_2, …, r_k), "
    "and (b uniform, then r_j uniform in b⊥) makes that span a uniformly random k-dim "
    "subspace. So E[cos] = E[rel. norm] = E[chi_k]/E[chi_n], exactly as for Gaussian tangents, "
    "and 1 for k = n.",
    "**α = 0** (an extra point, outside the paper's grid) gives k copies of b: every "
    "aggregation returns a multiple of (b·g) b, so E[cos] = E|b·g| = E[chi_1]/E[chi_n] for both "
    "projection and mean, and the mean of unit tangents has the same mean relative norm.",
    "For the sum and mean at 0° < α no closed form was derived; the dotted lines in the plot "
    "are the exact Gaussian-tangent values E[chi_k]/E[chi_{n+k−1}] at the same k, for "
    "comparison.",
]


ANGLE_BUDGETS: dict[str, dict[str, Any]] = {
    "paper": {
        "n": 64,
        "ks": [4, 16, 64],
        "angles": [0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0],
        "draws": 1000,
    },
    "smoke": {"n": 64, "ks": [4, 64], "angles": [0.0, 45.0, 90.0], "draws": 200},
}


def _angle_theory(variant: str, angle: float, k: int, n: int) -> float | None:
    if angle == 0.0:
        return expected_chi(1) / expected_chi(n)
    if variant == "projection" and angle < 180.0:
        return projection_cosine(k, n)
    return None


def _angle_rows(
    records: list[dict[str, Any]], n: int, ks: Sequence[int], angles: Sequence[float]
) -> list[Row]:
    groups = [
        ("cosine similarity, E[cos(ĝ, g)]", "cosine", ("projection", "sum = mean")),
        ("relative norm of unit tangents, E[‖ĝ‖] / ‖g‖", "relative_norm", ("projection", "mean")),
    ]
    rows = []
    for group, metric, names in groups:
        for name in names:
            variant = "projection" if name == "projection" else "mean/unit"
            for k in ks:
                for angle in angles:
                    record = find_cell(records, k=k, angle=angle, variant=variant, metric=metric)
                    rows.append(
                        Row(
                            group=group,
                            labels={"aggregation": name, "k": k, "angle (°)": angle},
                            ours=record["mean"],
                            ours_se=record["se"],
                            theory=_angle_theory(variant, angle, k, n),
                        )
                    )
    return rows


def _draw_angle(result: ExperimentResult):
    n, ks, angles = result.settings["n"], result.settings["k"], result.settings["angles"]
    fig, axes = new_figure(ncols=2)
    panels = (
        ("cosine", "cosine similarity", ("projection", "mean/unit")),
        ("relative_norm", "relative norm ‖ĝ‖ / ‖g‖ (unit tangents)", ("projection", "mean/unit")),
    )
    for ax, (metric, title, variants) in zip(axes[0], panels):
        for i, k in enumerate(ks):
            for variant in variants:
                records = [
                    find_cell(result.raw["cells"], k=k, angle=a, variant=variant, metric=metric)
                    for a in angles
                ]
                dashed = variant != "projection"
                # alpha = 0 (k copies of one tangent) is a limit point: drawn apart, unjoined.
                joined = [(a, r) for a, r in zip(angles, records) if a > 0]
                draw_curve(
                    ax,
                    [a for a, _ in joined],
                    [r["mean"] for _, r in joined],
                    [r["se"] for _, r in joined],
                    color=f"C{i}",
                    linestyle="--" if dashed else "-",
                    marker="s" if dashed else "o",
                    label=f"{'mean' if dashed else 'projection'}, k = {k}",
                )
                if angles[0] == 0:
                    ax.plot(0, records[0]["mean"], "x", color=f"C{i}", markersize=7)
            if metric == "cosine":
                ax.axhline(gaussian_sum_cosine(k, n), color=f"C{i}", linestyle=":", linewidth=1)
        ax.set_xlabel("angle α to the base tangent (°)")
        ax.set_xticks(angles)
        ax.set_title(f"{title}, n = {n}", fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylim(0, 1.02)
    axes[0][1].set_yscale("log")
    axes[0][0].legend(fontsize=7, loc="center left")
    return fig


def run_tangents_angle(
    budget: str, seeds: int | None, out_dir: Path, progress: bool
) -> ExperimentResult:
    config = ANGLE_BUDGETS[budget]
    n, ks, angles, draws = config["n"], config["ks"], config["angles"], config["draws"]
    seed_list = paper_seeds(seeds)
    cells = [{"k": k, "angle": a} for k in ks for a in angles]
    records = run_grid("angle", cells, n, draws, seed_list, progress)
    notes = [
        "The paper prints no numbers for Fig. 5, so the *paper* column is 'not reported' "
        "throughout; ours are checked against the exact expectations where they exist.",
        "The angle is measured to a random base tangent (the paper's `specific_angle` sampler), "
        "not to the gradient; tangents are not at a fixed angle to one another.",
        "α = 0 is not in the paper's grid (its code treats 0 as 'no rotation'); here it means "
        "k copies of the base tangent and is kept as an exact check of the limit.",
        "Our sampler gives every tangent the norm sqrt(n) (the paper's has unit norm): cosines "
        "are unaffected, and relative norms are reported for unit tangents as in the paper "
        "(those of the raw tangents are n times larger for the mean; see results.json).",
        "Fig. 5's second panel (Styblinski–Tang optimisation with these tangents) is not part "
        "of this experiment.",
    ]
    exact = [
        find_cell(records, k=k, angle=a, variant="projection", metric="cosine")
        for k in ks
        for a in angles
        if k >= n and a > 0
    ]
    notes += exactness_notes(exact, n, draws * len(seed_list))
    scaling = None
    if budget == "smoke":
        paper = ANGLE_BUDGETS["paper"]
        scaling = (
            f"a quick check, not the paper's settings: k ∈ {{{', '.join(map(str, ks))}}} and "
            f"α ∈ {{{', '.join(f'{a:g}' for a in angles)}}} instead of k ∈ {{4, 16, 64}} and "
            f"α ∈ {{15, …, 90}}, {draws} draws per seed instead of {paper['draws']}."
        )
    settings = {
        "n": n,
        "k": ks,
        "angles": angles,
        "draws_per_seed": draws,
        "sampler": "angle: a random base tangent and k − 1 tangents at α degrees to it, norm "
        "sqrt(n); 'unit' = normalised",
        "aggregations": ["projection", "sum", "mean"],
        "true_gradient": "ones(n), as in the paper's code",
        "jvps": "exact, d = V g (simulated, as the paper does)",
        "precision": "float32 tangents; projection solved in float64; metrics in float64",
        "generator": "torch.Generator per (seed, k, α), seeded by numpy "
        "SeedSequence([seed, k, round(1000 α)])",
        "chunk_elements": CHUNK_ELEMENTS,
    }
    return closed_form_result(
        budget,
        seed_list,
        settings,
        records,
        _angle_rows(records, n, ks, angles),
        scaling,
        THEORY_ANGLE,
        notes,
        [
            Plot(
                "fig5.png",
                f"Fig. 5 layout (approximation panel): mean cosine similarity against the angle α "
                f"for n = {n} ({draws * len(seed_list)} draws; solid: projection, dashed: mean "
                "(= sum), dotted: Gaussian tangents' mean at the same k, exact); right: relative "
                "norm for unit tangents.",
                _draw_angle,
            )
        ],
    )


register(
    Experiment(
        name="tangents-angle",
        paper=PAPER,
        reproduces="Fig. 5 (approximation panel)",
        summary="Cosine similarity of projection and mean forward gradients when the k tangents "
        "sit at a fixed angle α to a random base tangent, n = 64, k ∈ {4, 16, 64}.",
        run=run_tangents_angle,
    )
)
