"""A model of step time and traffic for many processes and large models, from measured costs.

Traffic per process per step (bytes it sends), for N processes, P float32 parameters, k
tangents and a global batch of B examples, with bandwidth-optimal collectives:

* gradient all-reduce (DDP-style, and activity-space guesses under a data split):
  ``2 (N-1)/N * 4P``;
* tangent split (every process on the whole batch, k/N tangents each; N <= k): an all-gather of
  each process's ``(k/N, B)`` JVPs, ``(N-1) * 4 k B / N``, whatever P is;
* data split with shared (weight-space) tangents: an all-reduce of k + 2 numbers,
  ``2 (N-1)/N * 4 (k + 2)``, whatever P and B are.

Time on the wire: ``ceil(log2 N)`` latencies per all-gather and twice that per all-reduce
(recursive doubling / halving), plus the bytes over the bandwidth. Compute is fitted to the
times measured on this machine (one thread per process) and scaled linearly with P:

* tangent split: ``F + (k/N) t`` (``F``: the primal, and the tangents and estimate every
  process forms for all k; ``t``: one tangent's JVP), from one process at k and at k/2;
* data splits: ``a + (B/N) c``, from one process on the whole batch and on half of it.

What the model leaves out: stragglers and jitter, overlap of communication with compute,
memory (every process holds the whole model), and the number of steps to a given loss (a
weight-space guess sends least but needs more steps as P grows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Network:
    name: str
    latency_s: float
    bandwidth_bytes_per_s: float


NETWORKS = (
    Network("datacenter (100 Gb/s, 10 us)", 10e-6, 100e9 / 8),
    Network("internet (100 Mb/s, 30 ms)", 30e-3, 100e6 / 8),
)
PROCESSES = (2, 16, 128, 1024)
PARAMETERS = (1e8, 1e9)


def allreduce_bytes(size: float, n: int) -> float:
    return 2 * (n - 1) / n * size


def allgather_bytes(payload: float, n: int) -> float:
    return (n - 1) * payload


def allreduce_seconds(size: float, n: int, net: Network) -> float:
    if n == 1:
        return 0.0
    hops = 2 * math.ceil(math.log2(n))
    return hops * net.latency_s + allreduce_bytes(size, n) / net.bandwidth_bytes_per_s


def allgather_seconds(payload: float, n: int, net: Network) -> float:
    if n == 1:
        return 0.0
    hops = math.ceil(math.log2(n))
    return hops * net.latency_s + allgather_bytes(payload, n) / net.bandwidth_bytes_per_s


@dataclass(frozen=True)
class Fitted:
    """Compute per step on this machine: ``fixed + per_unit * units`` seconds at ``params``."""

    fixed: float
    per_unit: float
    params: int

    def seconds(self, units: float, params: float) -> float:
        return (self.fixed + self.per_unit * units) * params / self.params


def fit_two_points(whole_s: float, half_s: float, units: float, params: int) -> Fitted:
    """The line through (units, whole) and (units/2, half), its intercept kept >= 0."""
    per_unit = max(0.0, 2 * (whole_s - half_s) / units)
    return Fitted(max(0.0, whole_s - per_unit * units), per_unit, params)


def project(measured: dict) -> list[dict]:
    """Rows of projected traffic, wire time and step time, from a distributed bench result:
    per method, ``(bytes sent per process, seconds on the wire, seconds per step)``."""
    s = measured["setup"]
    k, batch, params = s["tangents"], s["batch"], measured["parameters"]
    rows = {r["label"]: r for r in measured["rows"]}

    def fitted(label: str, units: float) -> Fitted:
        r = rows[label]
        whole, half = r["one_process_1_thread_ms"] / 1000, r["one_process_1_thread_half_ms"] / 1000
        return fit_two_points(whole, half, units, params)

    tangent = fitted("activation, tangent split", k)
    ddp = fitted("backprop, data split (DDP-style)", batch)
    scalar = fitted("weight, data split", batch)
    out = []
    for p in PARAMETERS:
        for n in PROCESSES:
            for net in NETWORKS:
                row = {"parameters": p, "processes": n, "network": net.name}
                wire = allreduce_seconds(4 * p, n, net)
                row["ddp"] = (allreduce_bytes(4 * p, n), wire, ddp.seconds(batch / n, p) + wire)
                wire = allreduce_seconds(4 * (k + 2), n, net)
                row["scalar"] = (
                    allreduce_bytes(4 * (k + 2), n),
                    wire,
                    scalar.seconds(batch / n, p) + wire,
                )
                if n <= k:
                    payload = 4 * k * batch / n
                    wire = allgather_seconds(payload, n, net)
                    row["tangent"] = (
                        allgather_bytes(payload, n),
                        wire,
                        tangent.seconds(k / n, p) + wire,
                    )
                out.append(row)
    return out


def _size(b: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if b >= scale:
            return f"{b / scale:.3g} {unit}"
    return f"{b:.3g} B"


def _time(seconds: float) -> str:
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def _cell(entry) -> str:
    sent, wire, step = entry
    return f"{_size(sent)}; {_time(wire)}; {_time(step)}"


def to_markdown(measured: dict) -> str:
    s = measured["setup"]
    lines = [
        f"## Projected: k = {s['tangents']}, global batch {s['batch']}",
        "",
        "Each cell: bytes each process sends per step; their time on the wire; the whole step "
        "(compute scaled from this machine's one-thread measurements, plus the wire). See "
        "`forwardgrad.bench.cost_model` for the formulas and what they leave out.",
        "",
        "| parameters | processes | network | gradient all-reduce (DDP-style) | "
        "data split, shared tangents | tangent split |",
        "|---:|---:|---|---|---|---|",
    ]
    for r in project(measured):
        tangent = _cell(r["tangent"]) if "tangent" in r else f"needs N <= k = {s['tangents']}"
        lines.append(
            f"| {r['parameters']:.0e} | {r['processes']} | {r['network']} | {_cell(r['ddp'])} | "
            f"{_cell(r['scalar'])} | {tangent} |"
        )
    return "\n".join(lines) + "\n"
