"""``forwardgrad bench --preset distributed``: what splitting a step over processes sends and
saves, measured side by side in one run on this machine.

Two processes on 127.0.0.1 (gloo, one thread each) run each case's steps; every collective
counts the bytes this process contributes (:class:`~forwardgrad.distributed.Collectives`), so
the traffic is measured, not computed. In the same run, one process times the same steps with
two threads (the machine's other way to use both cores), with one thread, and with one thread
on half the work (k/2 tangents, or half the batch): the last is what each of the two processes
computes, so the split's overhead (collectives, waiting, and for a tangent split the tangents
and estimate that every process forms for all k) is the difference. The gradient all-reduce a
DDP-style run sends is measured the same way, as backprop with the batch split.

:mod:`.cost_model` projects these measured costs to many processes and large models.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..distributed.local import failures, launch_local
from ..estimation import Estimator
from ..models import mlp


@dataclass(frozen=True)
class Case:
    label: str
    guess: str
    aggregate: str
    mode: str  # "tangents" | "data": how the two processes split the step
    tangents: int


@dataclass(frozen=True)
class Setup:
    """The model and batch every case steps on: an MLP of ``depth`` x ``width`` on 784 inputs."""

    depth: int = 3
    width: int = 512
    batch: int = 256
    tangents: int = 16
    repeats: int = 7
    warmup: int = 2

    def cases(self) -> list[Case]:
        k = self.tangents
        return [
            Case("activation, tangent split", "activation", "projection", "tangents", k),
            Case("wt, tangent split", "wt", "projection", "tangents", k),
            Case("weight, data split", "weight", "projection", "data", k),
            Case("activation, data split", "activation", "projection", "data", k),
            Case("backprop, data split (DDP-style)", "backprop", "mean", "data", 1),
        ]


def build_case(setup: Setup, case: Case, parallel=None, tangents: int | None = None):
    """The case's model, batch (whole) and estimator."""
    torch.manual_seed(0)
    model = mlp(784, 10, setup.depth, setup.width)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(setup.batch, 784, generator=g)
    y = torch.randint(0, 10, (setup.batch,), generator=g)
    k = tangents or case.tangents
    est = Estimator(model, case.guess, tangents=k, aggregate=case.aggregate, parallel=parallel)
    return model, x, y, est


def timed_steps(model, est, x, y, setup: Setup, before_each=None) -> list[float]:
    """Seconds of each of ``repeats`` steps after ``warmup`` untimed ones."""
    seconds = []
    for r in range(setup.warmup + setup.repeats):
        if before_each is not None:
            before_each(r)
        t0 = time.perf_counter()
        est.step(x, y)
        if r >= setup.warmup:
            seconds.append(time.perf_counter() - t0)
        for p in model.parameters():
            p.grad = None
    return seconds


def _median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median(seconds)


def one_process(setup: Setup, case: Case, threads: int, half: bool) -> float:
    """Median step time (ms) in this process with ``threads`` threads; ``half``: the share of
    one of two processes (k/2 tangents for a tangent split, half the batch for a data split)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        k = case.tangents // 2 if half and case.mode == "tangents" else None
        model, x, y, est = build_case(setup, case, tangents=k)
        if half and case.mode == "data":
            x, y = x[: len(x) // 2], y[: len(y) // 2]
        return _median_ms(timed_steps(model, est, x, y, setup))
    finally:
        torch.set_num_threads(previous)


def two_processes(setup: Setup, timeout: float = 900.0) -> dict:
    """Every case on two processes on 127.0.0.1: process 0's step times and bytes sent."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "two.json"
        args = ["-m", "forwardgrad.bench.distributed_worker", str(out), json.dumps(asdict(setup))]
        finished = launch_local(args, world=2, timeout=timeout)
        problem = failures(finished)
        if problem is not None:
            raise RuntimeError(f"the two-process benchmark failed:\n{problem}")
        return json.loads(out.read_text())


def run_distributed_bench(setup: Setup, log=lambda s: None) -> dict:
    """Measure every case: two processes, then one process (2 threads, 1, 1 on half)."""
    log(f"two processes on 127.0.0.1, {len(setup.cases())} cases ...")
    two = two_processes(setup)
    rows = []
    for case in setup.cases():
        log(f"one process: {case.label}")
        row = {
            **asdict(case),
            "two_processes_ms": two[case.label]["median_ms"],
            "bytes_per_step": two[case.label]["bytes_per_step"],
            "one_process_2_threads_ms": one_process(setup, case, 2, half=False),
            "one_process_1_thread_ms": one_process(setup, case, 1, half=False),
            "one_process_1_thread_half_ms": one_process(setup, case, 1, half=True),
        }
        rows.append(row)
    gradient_bytes = next(r for r in rows if r["guess"] == "backprop")["bytes_per_step"]
    params = sum(p.numel() for p in mlp(784, 10, setup.depth, setup.width).parameters())
    from .report import machine

    return {
        "preset": "distributed",
        "setup": asdict(setup),
        "parameters": params,
        "gradient_allreduce_bytes": gradient_bytes,
        "rows": rows,
        "machine": machine(),
        "command": " ".join(["forwardgrad", *sys.argv[1:]]) if sys.argv else "",
    }


def to_markdown(out: dict) -> str:
    s = out["setup"]
    grad = out["gradient_allreduce_bytes"]
    lines = [
        f"# Distributed: 2 processes on 127.0.0.1 (gloo) vs one process, MLP {s['depth']} x "
        f"{s['width']} on 784 inputs ({out['parameters']:,} parameters), batch {s['batch']}, "
        f"k = {s['tangents']}",
        "",
        "Bytes each process sends per step, counted from the collectives' payloads; gradient "
        f"all-reduce (backprop, batch split) sends {grad:,} B for this model.",
        "",
        "| case | bytes / step / process | vs gradient all-reduce | 1 proc, 2 threads (ms) | "
        "2 procs, 1 thread each (ms) | speed-up | 1 proc, 1 thread (ms) | efficiency | "
        "1 proc, 1 thread, half the work (ms) | split overhead (ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in out["rows"]:
        two, t2, t1, half = (
            r["two_processes_ms"],
            r["one_process_2_threads_ms"],
            r["one_process_1_thread_ms"],
            r["one_process_1_thread_half_ms"],
        )
        lines.append(
            f"| {r['label']} | {r['bytes_per_step']:,} | {r['bytes_per_step'] / grad:.2g}x | "
            f"{t2:.1f} | {two:.1f} | {t2 / two:.2f}x | {t1:.1f} | {t1 / (2 * two):.0%} | "
            f"{half:.1f} | {two - half:+.1f} |"
        )
    lines += [
        "",
        "speed-up: 1 process with 2 threads over 2 processes with 1 thread each; efficiency: "
        "1 process, 1 thread over twice the 2-process time; split overhead: the 2-process step "
        "over what one process computes of it alone (half the tangents or half the batch).",
        "",
        f"Machine: {out['machine'].get('cpu', out['machine']['processor'])}, "
        f"{out['machine']['cpu_count']} cores, torch {out['machine']['torch']}. Median of "
        f"{s['repeats']} steps after {s['warmup']} warm-up steps.",
    ]
    return "\n".join(lines) + "\n"
