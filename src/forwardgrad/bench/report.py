"""Running a preset and reporting it: JSON and a Markdown table, ratios and targets."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch

from ..io import write_json, write_text
from .measure import _scenario_dict, measure_memory, memory_available, time_scenario
from .scenarios import Preset, Target


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


def _number_or_dash(v: float | None, spec: str) -> str:
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
            cells = [
                _number_or_dash(r.get(key), spec)
                for key, spec in (
                    ("median_ms", ".1f"),
                    ("x_backprop", ".2f"),
                    ("x_limit", ".2f"),
                    ("memory_peak_mb", ".0f"),
                    ("memory_x_backprop", ".2f"),
                )
            ]
            lines.append(f"| {entry['scenario']['name']} | {label} | {' | '.join(cells)} |")
    if out["memory_note"]:
        lines += ["", f"Memory not measured: {out['memory_note']}."]
    if out["targets"]:
        lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
        for t in out["targets"]:
            met = "—" if t["met"] is None else ("yes" if t["met"] else "**no**")
            lines.append(
                f"| {t['text']} | {_number_or_dash(t['measured_ratio'], '.2f')}× | {met} |"
            )
    return "\n".join(lines) + "\n"


def write_results(out: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    write_json(json_path, out)
    write_text(md_path, to_markdown(out))
    return json_path, md_path
