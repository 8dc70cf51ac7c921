"""Step time and peak memory of every estimator, side by side with a backprop step.

Everything that is compared is measured in one run: the methods of a scenario share one model
and one batch, and their steps are timed interleaved (round-robin, order rotated every round),
so a slow spell of the machine hits all of them alike. Reported are medians and ratios:

* ``x backprop``: step time (or peak memory) over a backprop step's on the same model and batch;
* ``x limit``: that time ratio over the ratio forward mode costs in principle, counted in forward
  passes: backprop ~3 (forward + backward), activity-space JVPs with k tangents sharing one
  primal ~1 + k, weight-space JVPs ~1 + 2k (the ``V x`` products). 1.0 means "as fast as the cost
  model allows"; the model ignores the cost of forming structured tangents (W~perp's subspaces).

Memory on the CPU is measured in a fresh process per (scenario, method): the step's peak resident
set size above the resident size just before it, after one warm-up step and with every ``.grad``
already allocated (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``). On a GPU it is
``torch.cuda.max_memory_allocated`` above the allocation before the step.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .estimation import Estimator, cross_entropy_per_example
from .io import write_json, write_text
from .models import mlp


@dataclass(frozen=True)
class Method:
    """One way to get a gradient: ``backprop`` (a plain ``loss.backward()``) or an estimator."""

    label: str
    guess: str = "backprop"
    tangents: int = 1
    aggregate: str = "mean"
    low_memory: bool = False
    options: tuple[tuple[str, object], ...] = ()

    @property
    def is_backprop(self) -> bool:
        return self.guess == "backprop"

    def forward_passes(self) -> float:
        """Cost in forward passes under the cost model of the module docstring."""
        if self.is_backprop:
            return 3.0
        from .guesses import GUESSES

        weight_space = GUESSES[self.guess].space == "weight"
        return 1.0 + (2.0 if weight_space else 1.0) * self.tangents


BACKPROP = Method("backprop")


@dataclass(frozen=True)
class Scenario:
    """A model shape and batch, and the methods measured on it (backprop always first)."""

    name: str
    depth: int
    width: int
    batch: int
    methods: tuple[Method, ...]
    in_features: int = 784
    classes: int = 10
    time: bool = True
    memory: bool = False

    def all_methods(self) -> tuple[Method, ...]:
        return (BACKPROP, *[m for m in self.methods if not m.is_backprop])


@dataclass(frozen=True)
class Target:
    """``numerator <= threshold * factor * denominator``, each a (scenario, method label) pair."""

    text: str
    kind: str  # "time" | "memory"
    numerator: tuple[str, str]
    denominator: tuple[str, str]
    threshold: float
    factor: float = 1.0


@dataclass
class Preset:
    scenarios: list[Scenario]
    targets: list[Target] = field(default_factory=list)


def _activation(k: int, aggregate: str = "mean", low_memory: bool = False) -> Method:
    suffix = f" {aggregate}" if aggregate != "mean" else ""
    suffix += " low-memory" if low_memory else ""
    return Method(f"activation k={k}{suffix}", "activation", k, aggregate, low_memory)


def targets_preset() -> Preset:
    """The scenarios behind the performance targets (see the README's Performance section)."""
    mlp_name, deep8, deep32, wperp_name = (
        "784-1024x3-10 b512",
        "784-1024x8-10 b1024",
        "784-1024x32-10 b1024",
        "40-512x3-10 b512 (MNIST-1D)",
    )
    memory_methods = (_activation(1), _activation(1, low_memory=True))
    scenarios = [
        Scenario(
            mlp_name,
            3,
            1024,
            512,
            (
                _activation(1),
                _activation(16),
                _activation(16, "projection"),
                _activation(1, low_memory=True),
                Method(
                    "activation k=1 rademacher", "activation", options=(("sampler", "rademacher"),)
                ),
                Method("wt k=1", "wt"),
                Method("weight k=1", "weight"),
            ),
        ),
        Scenario(deep8, 8, 1024, 1024, memory_methods, time=False, memory=True),
        Scenario(deep32, 32, 1024, 1024, memory_methods, time=False, memory=True),
        Scenario(
            wperp_name,
            3,
            512,
            512,
            (
                Method("wt", "wt"),
                Method("wperp rank 10", "wperp", options=(("rank", 10),)),
                Method(
                    "wperp rank 10 bf16 Gram",
                    "wperp",
                    options=(("rank", 10), ("gram_dtype", "bfloat16")),
                ),
            ),
            in_features=40,
        ),
    ]
    a1, a16 = _activation(1).label, _activation(16).label
    lm = _activation(1, low_memory=True).label
    targets = [
        Target(
            "activation k=1 step <= 1.0x backprop",
            "time",
            (mlp_name, a1),
            (mlp_name, "backprop"),
            1.0,
        ),
        Target(
            "activation k=16 <= 0.5x of 16 one-tangent steps",
            "time",
            (mlp_name, a16),
            (mlp_name, a1),
            0.5,
            factor=16,
        ),
        Target(
            "projection adds <= 10% to a k=16 step",
            "time",
            (mlp_name, _activation(16, "projection").label),
            (mlp_name, a16),
            1.10,
        ),
        Target(
            "depth 32: BP-free peak memory <= 0.25x backprop",
            "memory",
            (deep32, lm),
            (deep32, "backprop"),
            0.25,
        ),
        Target(
            "depth 32: BP-free peak memory <= 1.2x its own at depth 8",
            "memory",
            (deep32, lm),
            (deep8, lm),
            1.2,
        ),
        Target(
            "wperp (rank 10) step <= 5x a wt step, width 512",
            "time",
            (wperp_name, "wperp rank 10"),
            (wperp_name, "wt"),
            5.0,
        ),
        Target(
            "wperp (rank 10, bf16 Gram applies) step <= 5x a wt step, width 512",
            "time",
            (wperp_name, "wperp rank 10 bf16 Gram"),
            (wperp_name, "wt"),
            5.0,
        ),
    ]
    return Preset(scenarios, targets)


def grid_preset(
    guesses: list[str],
    tangents: list[int],
    depths: list[int],
    widths: list[int],
    batches: list[int],
    memory: bool = True,
) -> Preset:
    """Every combination; each (depth, width, batch) is one scenario holding all guesses x k."""
    methods = tuple(Method(f"{g} k={k}", g, k) for g in guesses for k in tangents)
    scenarios = [
        Scenario(f"784-{w}x{d}-10 b{b}", d, w, b, methods, memory=memory)
        for d in depths
        for w in widths
        for b in batches
    ]
    return Preset(scenarios)


PRESET_NAMES = ("targets", "grid", "quick")
GRID_DEFAULTS = {
    "guesses": ["activation", "wt", "wperp", "weight"],
    "tangents": [1, 4, 16, 64],
    "depths": [2, 8, 32],
    "widths": [128, 512, 1024],
    "batches": [128, 1024],
}
QUICK = {
    "guesses": ["activation", "wt"],
    "tangents": [1, 4],
    "depths": [2],
    "widths": [32],
    "batches": [16],
}


# --------------------------------------------------------------------------- building blocks


def _build(scenario: Scenario, method: Method, device: str, seed: int = 0):
    """Model, batch and a zero-argument step function (no per-call allocation of .grad)."""
    torch.manual_seed(seed)
    model = mlp(scenario.in_features, scenario.classes, scenario.depth, scenario.width).to(device)
    x = torch.randn(scenario.batch, scenario.in_features, device=device)
    y = torch.randint(0, scenario.classes, (scenario.batch,), device=device)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    return model, x, y, _stepper(model, x, y, method)


def _stepper(model: nn.Module, x, y, method: Method) -> Callable[[], None]:
    if method.is_backprop:

        def step() -> None:
            cross_entropy_per_example(model(x), y).mean().backward()

        return step
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
        [sys.executable, "-m", "forwardgrad.bench", "--memory-worker", job],
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
    return Scenario(methods=methods, **d)


def _method_from_dict(d: dict) -> Method:
    d = dict(d)
    d["options"] = tuple(tuple(o) for o in d.get("options", ()))
    return Method(**d)


# --------------------------------------------------------------------------- running and reporting


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_bench(
    preset: Preset,
    device: str = "cpu",
    repeats: int = 7,
    warmup: int = 2,
    memory: bool = True,
    log: Callable[[str], None] = lambda s: None,
) -> dict:
    """Measure every scenario of a preset; returns the JSON-ready results."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch.cuda.is_available() is False")
    why_not = memory_available(device) if memory else "memory measurement switched off"
    results = []
    for sc in preset.scenarios:
        entry: dict = {"scenario": _scenario_dict(sc), "methods": {}}
        times = {}
        if sc.time:
            log(f"timing {sc.name} ...")
            times = time_scenario(sc, device, repeats, warmup)
        bp_time = times.get("backprop", {}).get("median_ms")
        mems = {}
        if sc.memory and why_not is None:
            for m in sc.all_methods():
                log(f"memory {sc.name} / {m.label} ...")
                mems[m.label] = measure_memory(sc, m, device)
        bp_mem = mems.get("backprop", {}).get("peak_mb")
        for m in sc.all_methods():
            row: dict = {"method": asdict(m), "forward_passes": m.forward_passes()}
            if m.label in times:
                t = times[m.label]
                row.update(t)
                ratio = t["median_ms"] / bp_time
                row["x_backprop"] = ratio
                row["x_limit"] = ratio / (m.forward_passes() / 3.0)
            if m.label in mems:
                row.update({f"memory_{k}": v for k, v in mems[m.label].items()})
                row["memory_x_backprop"] = mems[m.label]["peak_mb"] / bp_mem if bp_mem else None
            entry["methods"][m.label] = row
        results.append(entry)
    out = {
        "machine": machine(),
        "device": device,
        "repeats": repeats,
        "warmup": warmup,
        "memory_note": why_not,
        "scenarios": results,
    }
    out["targets"] = [_evaluate_target(t, results) for t in preset.targets]
    return out


def _lookup(results: list[dict], where: tuple[str, str], key: str) -> float | None:
    for entry in results:
        if entry["scenario"]["name"] == where[0]:
            return entry["methods"].get(where[1], {}).get(key)
    return None


def _evaluate_target(t: Target, results: list[dict]) -> dict:
    key = "median_ms" if t.kind == "time" else "memory_peak_mb"
    num, den = _lookup(results, t.numerator, key), _lookup(results, t.denominator, key)
    ratio = None if num is None or den is None or den == 0 else num / (t.factor * den)
    return {
        **asdict(t),
        "measured_ratio": ratio,
        "met": None if ratio is None else ratio <= t.threshold,
    }


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def to_markdown(out: dict) -> str:
    m = out["machine"]
    lines = [
        f"Machine: {m.get('cpu', m['processor'])}, {m['cpu_count']} cores"
        + (f", GPU {m['gpu']}" if "gpu" in m and out["device"].startswith("cuda") else "")
        + f"; torch {m['torch']} ({m['torch_threads']} threads); device `{out['device']}`; "
        + f"median of {out['repeats']} interleaved steps after {out['warmup']} warm-up.",
        "",
        "| scenario | method | step ms | × backprop | × limit | peak MB | mem × backprop |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for entry in out["scenarios"]:
        for label, r in entry["methods"].items():
            lines.append(
                f"| {entry['scenario']['name']} | {label} | {_fmt(r.get('median_ms'), '.1f')} | "
                f"{_fmt(r.get('x_backprop'), '.2f')} | {_fmt(r.get('x_limit'), '.2f')} | "
                f"{_fmt(r.get('memory_peak_mb'), '.0f')} | "
                f"{_fmt(r.get('memory_x_backprop'), '.2f')} |"
            )
    if out["memory_note"]:
        lines += ["", f"Memory not measured: {out['memory_note']}."]
    if out["targets"]:
        lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
        for t in out["targets"]:
            met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(f"| {t['text']} | {_fmt(t['measured_ratio'], '.2f')}× | {met} |")
    return "\n".join(lines) + "\n"


def write_results(out: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    write_json(json_path, out)
    write_text(md_path, to_markdown(out))
    return json_path, md_path


def _memory_worker(job: str) -> None:
    spec = json.loads(job)
    scenario = _scenario_from_dict(spec["scenario"])
    method = _method_from_dict(spec["method"])
    print(json.dumps(_measure_memory_here(scenario, method, "cpu")))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        _memory_worker(sys.argv[2])
    else:
        print(
            "usage: forwardgrad bench ... (this module's entry point is internal)", file=sys.stderr
        )
        sys.exit(2)
