"""Train several estimators over several seeds and tabulate mean +- std.

Everything is checked before anything trains: the options, every guess spec (each given once,
each building its estimator and taking one trial step), the seeds and jobs, and every run
already in the output folder (reused when finished with the same settings, resumed when
interrupted, refused when it holds other settings). The output folder is locked for the whole
comparison and every run folder for its run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..io import write_text
from ..stats import finite_mean_std
from .config import (
    MAX_SEED,
    OPTION_KEYS,
    ConfigError,
    TrainConfig,
    read_options,
)
from .ensure import RunPlan, carry_out, plan_run
from .guess_specs import config_for_guess, parse_guess_spec
from .runfolder import RunLock, check_out_dir
from .train import preflight

METRICS = ("train_acc", "test_acc", "train_loss", "test_loss")


def run_dir_name(spec: str) -> str:
    """The folder name ``compare()`` gives a guess spec's runs (``OUT/<name>/seed<s>``)."""
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", spec)


# ------------------------------------------------------------------------------ checking


def _check_counts(base: TrainConfig, seeds: int, jobs: int) -> None:
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"--seeds must be an integer >= 1 (runs per guess); got {seeds!r}")
    if base.seed + seeds - 1 > MAX_SEED:
        raise ConfigError(
            f"--seed {base.seed} with --seeds {seeds} reaches seed {base.seed + seeds - 1}, "
            f"past the largest seed {MAX_SEED}"
        )
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs must be an integer >= 1 (parallel runs); got {jobs!r}")


def guess_configs(base: TrainConfig, specs: Sequence[str]) -> list[tuple[str, TrainConfig]]:
    """(spec, config) of every spec, refusing duplicates and options no guess reads."""
    if not specs:
        raise ConfigError("give at least one guess, e.g. --guesses wt,wperp:rank=25")
    out: list[tuple[str, TrainConfig]] = []
    seen_dirs: dict[str, str] = {}
    for spec in specs:
        name, options = parse_guess_spec(spec)
        cfg = config_for_guess(base, name, options)
        folder = run_dir_name(spec)
        if folder in seen_dirs:
            raise ConfigError(
                f"--guesses gives {spec!r} twice (as {seen_dirs[folder]!r} and {spec!r}); "
                "give each guess once"
            )
        same = next((s for s, c in out if c == cfg), None)
        if same is not None:
            raise ConfigError(
                f"--guesses {same!r} and {spec!r} are the same configuration; give it once"
            )
        seen_dirs[folder] = spec
        out.append((spec, cfg))
    _refuse_unread_by_all(base, out)
    return out


def _refuse_unread_by_all(base: TrainConfig, configs: list[tuple[str, TrainConfig]]) -> None:
    """A shared option must be read by at least one guess, or it is a mistake."""
    defaults = TrainConfig()
    shared = [k for k in OPTION_KEYS if getattr(base, k) != getattr(defaults, k)]
    keys = [k for k in shared if not any(k in read_options(cfg) for _, cfg in configs)]
    if keys:
        given = ", ".join(f"--{k.replace('_', '-')} {getattr(base, k)!r}" for k in keys)
        names = ", ".join(s for s, _ in configs)
        raise ConfigError(f"{given}: read by none of the guesses ({names}); leave it out")


def _tasks(
    configs: list[tuple[str, TrainConfig]], seeds: int, out: Path
) -> list[tuple[str, RunPlan]]:
    """Every (spec, plan) of the comparison, each folder checked before anything trains."""
    tasks = []
    for spec, cfg in configs:
        for seed in range(cfg.seed, cfg.seed + seeds):
            seeded = dataclasses.replace(cfg, seed=seed).validate()
            tasks.append((spec, plan_run(seeded, out / run_dir_name(spec) / f"seed{seed}")))
    return tasks


def _preflight_all(configs: list[tuple[str, TrainConfig]]) -> None:
    """Every guess builds its estimator and takes a trial step before any of them trains."""
    loaded: dict[tuple, object] = {}
    for _, cfg in configs:
        key = (cfg.dataset, cfg.data_dir, cfg.augment, cfg.seed)
        loaded[key] = preflight(cfg, loaded.get(key))


# ------------------------------------------------------------------------------ training


def _run_one(args: tuple[RunPlan, bool, int]) -> dict:
    plan, progress, threads = args
    if threads and plan.cfg.threads is None:
        plan = dataclasses.replace(plan, cfg=dataclasses.replace(plan.cfg, threads=threads))
    return carry_out(plan, progress)


def _train_all(plans: list[RunPlan], jobs: int, progress: bool) -> list[dict]:
    """Every plan's summary, training ``jobs`` runs at a time."""
    threads = 0 if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
    todo = [p.action != "reuse" for p in plans]
    work = [(p, progress and jobs == 1, threads) for p, t in zip(plans, todo) if t]
    if jobs > 1 and len(work) > 1:
        trained = iter(_in_parallel(work, jobs))
    else:
        trained = iter([_run_one(w) for w in work])
    return [next(trained) if t else p.summary for p, t in zip(plans, todo)]


def _ignore_sigint() -> None:
    # Workers leave Ctrl-C to the parent, which stops them all the same way (below); an idle
    # worker hit by the terminal's SIGINT would otherwise print a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _in_parallel(work: list[tuple], jobs: int) -> list[dict]:
    """``_run_one`` over ``work`` in ``jobs`` processes. On Ctrl-C (or any error) the workers
    are terminated: each run keeps its last checkpoint, and the lock dies with its process."""
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=_ignore_sigint)
    try:
        results = list(pool.map(_run_one, work))
    except BaseException:
        for process in list(pool._processes.values()):  # no public API stops running tasks
            process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return results


# ------------------------------------------------------------------------------- the table


def _row(spec: str, runs: list[dict]) -> dict:
    completed = [r for r in runs if r.get("status") == "completed"]
    diverged = [r for r in runs if r.get("status") == "diverged"]
    row: dict = {"guess": spec, "seeds": len(runs), "completed": len(completed)}
    for m in METRICS:
        mean, std = finite_mean_std([r["final"][m] for r in completed if r.get("final")])
        row[f"{m}_mean"], row[f"{m}_std"] = mean, std
    minutes = [r.get("train_seconds", math.nan) / 60 for r in completed]
    row["minutes_per_run"] = finite_mean_std(minutes)[0]
    row["diverged"] = len(diverged)
    row["diverged_at"] = "; ".join(
        f"seed {r['seed']}: epoch {(r.get('failure') or {}).get('epoch')}, "
        f"step {(r.get('failure') or {}).get('step')}"
        for r in diverged
    )
    return row


def _write_csv(rows: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def compare(
    base: TrainConfig,
    guesses: Sequence[str],
    seeds: int,
    out_dir: str | Path,
    jobs: int = 1,
    progress: bool = True,
    plot: bool = False,
) -> list[dict]:
    """Train every guess spec (``name[:key=value...]``) for ``seeds`` seeds under ``out_dir``.

    Each run lives in ``out_dir/<label>/seed<s>`` (rerunning skips finished runs and resumes
    interrupted ones); the table is written to ``out_dir/summary.csv`` and returned as rows
    (means and stds over the completed runs; ``diverged`` counts the others). With ``plot``,
    ``out_dir/curves.png`` draws every guess's training curves.
    """
    out = Path(out_dir)
    _check_counts(base, seeds, jobs)
    configs = guess_configs(base, guesses)
    check_out_dir(out)
    tasks = _tasks(configs, seeds, out)
    _preflight_all(configs)
    with RunLock(out):
        summaries = _train_all([plan for _, plan in tasks], jobs, progress)
        by_spec = list(zip([spec for spec, _ in tasks], summaries))
        rows = [_row(spec, [s for t, s in by_spec if t == spec]) for spec, _ in configs]
        _write_csv(rows, out / "summary.csv")
        if plot:
            from .curves import plot_groups

            groups = {spec: [p.run_dir for t, p in tasks if t == spec] for spec, _ in configs}
            plot_groups(groups, out / "curves.png", title=f"{base.dataset}: {seeds} seed(s)")
    return rows


def _cell(r: dict, m: str) -> str:
    if r["completed"] == 0:
        return "diverged"
    return f"{r[m + '_mean']:.3f} ± {r[m + '_std']:.3f}"


def format_table(rows: list[dict]) -> str:
    """A plain-text table of mean +- std over the completed seeds; diverged runs said so."""
    header = (
        f"{'guess':<28} {'done':>5} {'train acc':>15} {'test acc':>15} "
        f"{'train loss':>15} {'min/run':>8}"
    )
    lines = [header, "-" * len(header)]
    notes = []
    for r in rows:
        minutes = "-" if r["completed"] == 0 else f"{r['minutes_per_run']:.1f}"
        lines.append(
            f"{r['guess']:<28} {r['completed']:>2}/{r['seeds']:<2} {_cell(r, 'train_acc'):>15} "
            f"{_cell(r, 'test_acc'):>15} {_cell(r, 'train_loss'):>15} {minutes:>8}"
        )
        if r.get("diverged"):
            notes.append(f"{r['guess']}: {r['diverged']} run(s) diverged ({r['diverged_at']})")
    if notes:
        lines += ["", "means and stds are over the completed runs only;", *notes]
    return "\n".join(lines)
