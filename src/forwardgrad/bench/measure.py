"""Measuring one scenario: interleaved step times, and peak step memory in a fresh process."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from ..estimation import Estimator, cross_entropy_per_example
from ..models import build_model, finetune, mlp
from .peers import frog_loop_step
from .scenarios import Method, Scenario


def build_scenario_model(scenario: Scenario) -> nn.Module:
    if scenario.model == "mlp":
        model = mlp(scenario.in_features, scenario.classes, scenario.depth, scenario.width)
    else:
        model = build_model(
            scenario.model, scenario.example_shape(), scenario.classes, **dict(scenario.options)
        )
    finetune.tune_only(model, scenario.trainable, scenario.lora)
    return model


def _build(scenario: Scenario, method: Method, device: str, seed: int = 0):
    """Model, batch and a zero-argument step function (no per-call allocation of .grad)."""
    torch.manual_seed(seed)
    model = build_scenario_model(scenario).to(device)
    x = torch.randn(scenario.batch, *scenario.example_shape(), device=device)
    y = torch.randint(0, scenario.classes, (scenario.batch,), device=device)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    return model, x, y, _stepper(model, x, y, method)


def _stepper(model: nn.Module, x, y, method: Method) -> Callable[[], None]:
    if method.is_backprop:

        def step() -> None:
            cross_entropy_per_example(model(x), y).mean().backward()

        return step
    if method.peer == "frog-loop":
        return frog_loop_step(model, x, y, cross_entropy_per_example, method.tangents)
    est = Estimator(
        model,
        method.guess,
        tangents=method.tangents,
        aggregate=method.aggregate,
        low_memory=method.low_memory,
        **dict(method.options),
    )
    return lambda: est.step(x, y)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_scenario(
    scenario: Scenario, device: str = "cpu", repeats: int = 7, warmup: int = 2
) -> dict[str, dict]:
    """Interleaved step times of every method of a scenario: ``{label: {median_ms, ...}}``."""
    methods = scenario.all_methods()
    steps = {}
    for m in methods:
        *_, steps[m.label] = _build(scenario, m, device)
    samples: dict[str, list[float]] = {m.label: [] for m in methods}
    order = [m.label for m in methods]
    for r in range(warmup + repeats):
        rotated = order[r % len(order) :] + order[: r % len(order)]
        for label in rotated:
            _synchronize(device)
            t0 = time.perf_counter()
            steps[label]()
            _synchronize(device)
            if r >= warmup:
                samples[label].append(time.perf_counter() - t0)
    out = {}
    for label, s in samples.items():
        qs = statistics.quantiles(s, n=4) if len(s) > 1 else [s[0]] * 3
        out[label] = {
            "median_ms": 1000 * statistics.median(s),
            "q1_ms": 1000 * qs[0],
            "q3_ms": 1000 * qs[2],
            "samples_ms": [1000 * v for v in s],
        }
    return out


def _proc_status_kib(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {key}")
    return int(match.group(1))


def _measure_memory_here(scenario: Scenario, method: Method, device: str) -> dict:
    """Peak memory of one step in this process (see the module docstring)."""
    model, _, _, step = _build(scenario, method, device)
    params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    step()  # warm-up: lazily created buffers and thread pools are not the step's memory
    for p in model.parameters():
        if p.grad is not None:
            p.grad.zero_()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        return {"peak_mb": peak / 2**20, "params_mb": params_mb, "how": "cuda max_memory_allocated"}
    before = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step()
    peak = _proc_status_kib("VmHWM") - before
    return {"peak_mb": peak / 1024, "params_mb": params_mb, "how": "peak RSS, fresh process"}


def memory_available(device: str = "cpu") -> str | None:
    """None when memory can be measured here; otherwise why not."""
    if device.startswith("cuda"):
        return None
    if not Path("/proc/self/clear_refs").exists():
        return "peak RSS needs Linux /proc (VmHWM and clear_refs)"
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError as e:
        return f"cannot reset the peak RSS counter (/proc/self/clear_refs: {e})"
    return None


# glibc raises its mmap threshold after large frees, so freed tensor memory would stay resident
# and a warm-up step would hide the measured step's peak. A fixed threshold (and trimming) makes
# every large tensor its own mapping, returned to the system when freed: RSS follows live memory.
_MALLOC_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "65536",
    "MALLOC_TRIM_THRESHOLD_": "131072",
    "MALLOC_TOP_PAD_": "0",
}


def measure_memory(scenario: Scenario, method: Method, device: str = "cpu") -> dict:
    """Peak step memory of one method, in a fresh process on the CPU."""
    if device.startswith("cuda"):
        return _measure_memory_here(scenario, method, device)
    job = json.dumps({"scenario": _scenario_dict(scenario), "method": asdict(method)})
    proc = subprocess.run(
        [sys.executable, "-m", "forwardgrad.bench.measure", "--memory-worker", job],
        capture_output=True,
        text=True,
        env={**os.environ, **_MALLOC_ENV, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of {method.label!r} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _scenario_dict(s: Scenario) -> dict:
    d = asdict(s)
    d["methods"] = [asdict(m) for m in s.methods]
    return d


def _scenario_from_dict(d: dict) -> Scenario:
    methods = tuple(_method_from_dict(m) for m in d.pop("methods"))
    for key in ("lora", "trainable", "input_shape"):
        d[key] = tuple(d.get(key, ()))
    d["options"] = tuple(tuple(o) for o in d.get("options", ()))
    return Scenario(methods=methods, **d)


def _method_from_dict(d: dict) -> Method:
    d = dict(d)
    d["options"] = tuple(tuple(o) for o in d.get("options", ()))
    return Method(**d)


def _memory_worker(job: str) -> None:
    spec = json.loads(job)
    scenario = _scenario_from_dict(spec["scenario"])
    method = _method_from_dict(spec["method"])
    print(json.dumps(_measure_memory_here(scenario, method, "cpu")))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        _memory_worker(sys.argv[2])
    else:
        print("usage: forwardgrad bench ... (an internal entry point)", file=sys.stderr)
        sys.exit(2)
