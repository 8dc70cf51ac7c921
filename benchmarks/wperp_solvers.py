"""W̃⊥ subspace solvers side by side: time per call and top-k energy captured.

For each width, one layer's weight ``W (d, d)`` and a batch of ReLU masks (half active, as at
initialisation), every solver finds each example's top-k right singular subspace of
``W diag(m_b)``. Reported per solver: median time per call (``torch.utils.benchmark``), the
ratio to the exact solver, and the fraction of the exact top-k energy its subspace captures
(min and mean over the batch; 1 = exact).

    python benchmarks/wperp_solvers.py [--widths 128,512] [--batch 512] [--rank 10] [--out DIR]

Writes ``wperp_solvers.json`` and ``wperp_solvers.md`` to ``--out`` (default
``runs/bench-wperp-solvers``) and prints the table.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils import benchmark

from forwardgrad.bench import machine
from forwardgrad.guesses.subspace import (
    exact_subspace,
    masked_gram,
    randomized_subspace,
    svd_subspace,
)
from forwardgrad.io import write_json, write_text

Solver = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def _randomized(**options) -> Solver:
    def solve(w: torch.Tensor, m: torch.Tensor, k: int) -> torch.Tensor:
        return randomized_subspace(w, m, k, torch.Generator().manual_seed(0), **options)[0]

    return solve


SOLVERS: dict[str, Solver] = {
    "svd (exact, all units)": lambda w, m, k: exact_subspace(w, m)[0][..., :k],
    "svd (exact, active units)": lambda w, m, k: svd_subspace(w, m, k)[0],
    "randomized (default)": _randomized(),
    "randomized, bf16 Gram": _randomized(gram_dtype=torch.bfloat16),
    "randomized, oversample 2": _randomized(oversample=2),
    "randomized, 1 power iteration": _randomized(iterations=1),
}


def captured_energy(w: torch.Tensor, m: torch.Tensor, basis: torch.Tensor, k: int) -> torch.Tensor:
    """Per example: energy of W diag(m) on the basis over the exact top-k energy, (B,)."""
    gram = masked_gram(w.double(), m.double())
    b = basis.double()
    got = torch.einsum("bdk,bde,bek->b", b, gram, b)
    _, svals = exact_subspace(w, m)
    return got / (svals[:, :k].double() ** 2).sum(-1)


def measure(width: int, batch: int, rank: int, min_run_time: float) -> list[dict]:
    torch.manual_seed(0)
    w = torch.nn.Linear(width, width, bias=False).weight.detach()
    m = (torch.randn(batch, width) > 0).float()
    rows = []
    for name, solve in SOLVERS.items():
        timer = benchmark.Timer(
            stmt="solve(w, m, k)",
            globals={"solve": solve, "w": w, "m": m, "k": rank},
            num_threads=torch.get_num_threads(),
        )
        seconds = timer.blocked_autorange(min_run_time=min_run_time).median
        energy = captured_energy(w, m, solve(w, m, rank), rank)
        rows.append(
            {
                "width": width,
                "solver": name,
                "ms": 1000 * seconds,
                "energy_min": float(energy.min()),
                "energy_mean": float(energy.mean()),
            }
        )
    exact_ms = rows[0]["ms"]
    for r in rows:
        r["x_exact"] = r["ms"] / exact_ms
    return rows


def to_markdown(rows: list[dict], info: dict, batch: int, rank: int) -> str:
    lines = [
        f"Machine: {info.get('cpu', info['processor'])}, {info['cpu_count']} cores; torch "
        f"{info['torch']} ({info['torch_threads']} threads). Batch {batch}, rank k = {rank}, "
        "one layer, ReLU masks half active.",
        "",
        "| width | solver | ms per call | × exact | energy min | energy mean |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['width']} | {r['solver']} | {r['ms']:.1f} | {r['x_exact']:.3f} | "
            f"{r['energy_min']:.3f} | {r['energy_mean']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--widths", default="128,512", help="comma-separated widths")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--min-run-time", type=float, default=2.0, help="seconds per solver")
    p.add_argument("--out", default="runs/bench-wperp-solvers")
    args = p.parse_args(argv)
    widths = [int(v) for v in args.widths.split(",")]
    rows = [r for wd in widths for r in measure(wd, args.batch, args.rank, args.min_run_time)]
    info = machine()
    out = Path(args.out)
    settings = {"widths": widths, "batch": args.batch, "rank": args.rank}
    write_json(out / "wperp_solvers.json", {"machine": info, "settings": settings, "rows": rows})
    table = to_markdown(rows, info, args.batch, args.rank)
    write_text(out / "wperp_solvers.md", table)
    print(table)


if __name__ == "__main__":
    main()
