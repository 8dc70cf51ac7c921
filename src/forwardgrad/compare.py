"""Train several estimators over several seeds and tabulate mean +- std."""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .config import TrainConfig, parse_guess_spec
from .io import write_text
from .train import TrainingDiverged, train

METRICS = ("train_acc", "test_acc", "train_loss", "test_loss")


def run_dir_name(spec: str) -> str:
    """The folder name ``compare()`` gives a guess spec's runs (``OUT/<name>/seed<s>``)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec)


def _run_one(args: tuple[TrainConfig, str, bool, int]) -> dict:
    cfg, out_dir, progress, threads = args
    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        result = train(
            cfg,
            out_dir,
            resume=(Path(out_dir) / "checkpoint.pt").exists()
            and not (Path(out_dir) / "summary.json").exists(),
            progress=progress,
        )
        return result.summary
    except TrainingDiverged as e:
        return {"status": "diverged", "final": None, "failure": str(e), "train_seconds": math.nan}


def _mean_std(values: list[float]) -> tuple[float, float]:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return math.nan, math.nan
    mean = sum(vals) / len(vals)
    var = sum((v - mean) ** 2 for v in vals) / (len(vals) - 1) if len(vals) > 1 else 0.0
    return mean, math.sqrt(var)


def compare(
    base: TrainConfig,
    guesses: Sequence[str],
    seeds: int,
    out_dir: str | Path,
    jobs: int = 1,
    progress: bool = True,
) -> list[dict]:
    """Train every guess spec (``name[:key=value...]``) for ``seeds`` seeds under ``out_dir``.

    Each run lives in ``out_dir/<label>/seed<s>`` (rerunning skips finished runs and resumes
    interrupted ones); the table is written to ``out_dir/summary.csv`` and returned as rows.
    """
    out = Path(out_dir)
    tasks, keys = [], []
    for spec in guesses:
        name, options = parse_guess_spec(spec)
        for seed in range(base.seed, base.seed + seeds):
            cfg = dataclasses.replace(base, guess=name, seed=seed, **options).validate()
            run_dir = out / run_dir_name(spec) / f"seed{seed}"
            tasks.append(
                (
                    cfg,
                    str(run_dir),
                    progress and jobs == 1,
                    0 if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs),
                )
            )
            keys.append(spec)
    done = [_finished(t[1]) for t in tasks]
    todo = [t for t, d in zip(tasks, done) if d is None]
    if jobs > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            fresh = list(pool.map(_run_one, todo))
    else:
        fresh = [_run_one(t) for t in todo]
    it = iter(fresh)
    summaries = [d if d is not None else next(it) for d in done]

    rows = []
    for spec in guesses:
        runs = [s for k, s in zip(keys, summaries) if k == spec]
        row: dict = {
            "guess": spec,
            "seeds": len(runs),
            "completed": sum(r["status"] == "completed" for r in runs),
        }
        for m in METRICS:
            mean, std = _mean_std([r["final"][m] if r.get("final") else None for r in runs])
            row[f"{m}_mean"], row[f"{m}_std"] = mean, std
        row["minutes_per_run"] = _mean_std([r.get("train_seconds", math.nan) / 60 for r in runs])[0]
        rows.append(row)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "summary.csv", buf.getvalue())
    return rows


def _finished(run_dir: str) -> dict | None:
    import json

    p = Path(run_dir) / "summary.json"
    if p.exists():
        summary = json.loads(p.read_text())
        if summary.get("status") in ("completed", "diverged"):
            return summary
    return None


def format_table(rows: list[dict]) -> str:
    """A plain-text table of mean +- std over seeds."""
    header = (
        f"{'guess':<28} {'seeds':>5} {'train acc':>15} {'test acc':>15} "
        f"{'train loss':>15} {'min/run':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:

        def cell(m: str, r: dict = r) -> str:
            return f"{r[m + '_mean']:.3f} ± {r[m + '_std']:.3f}"

        lines.append(
            f"{r['guess']:<28} {r['completed']:>2}/{r['seeds']:<2} {cell('train_acc'):>15} "
            f"{cell('test_acc'):>15} {cell('train_loss'):>15} {r['minutes_per_run']:>8.1f}"
        )
    return "\n".join(lines)
