"""What the multi-tangent experiments share: the paper's name, thread control, labels, seed
lists, statistics, plot styles and the reader of the authors' tables in ``data/``."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

PAPER = (
    "Flügel et al. 2024, Beyond Backpropagation: Optimization with Multi-Tangent Forward "
    "Gradients (arXiv 2410.17764)"
)

DATA_DIR = Path(__file__).parent / "data"

MethodKey = tuple[str, str, int | None]  # (group: function, width or model; method; k)


def read_data(name: str) -> dict[str, Any]:
    """One of the JSON files of the authors' numbers in ``data/``."""
    return json.loads((DATA_DIR / name).read_text(encoding="utf-8"))


def method_entries(table: dict[str, Any], groups: str) -> dict[MethodKey, dict[str, Any]]:
    """``{(group, method, k): entry}`` from a table ``{groups: {group: {method: ...}}}``.

    Under each method sits either one entry (backprop, whose k is None) or ``{k: entry}``.
    """
    entries: dict[MethodKey, dict[str, Any]] = {}
    for group, methods in table[groups].items():
        for method, value in methods.items():
            if method == "backprop":
                entries[(group, method, None)] = dict(value)
                continue
            for k, entry in value.items():
                entries[(group, method, int(k))] = dict(entry)
    return entries


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch threads (None: leave the setting alone)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def method_label(method: str, k: int | None) -> str:
    """``backprop``, ``mean-k4``: the name of a method's run or cache folder."""
    return method if k is None else f"{method}-k{k}"


def k_label(k: int | None) -> str | int:
    """The k column of the tables: a dash for backprop, which uses no tangents."""
    return "–" if k is None else k


def seed_range(seeds: int | None, default: int) -> list[int]:
    """Seeds 0 … seeds - 1, or the budget's ``default`` count when none was asked for."""
    return list(range(seeds if seeds is not None else default))


def short_number(x: float | None) -> str:
    """Three significant digits for a table label; a dash for None or a non-finite value."""
    return "—" if x is None or not math.isfinite(x) else f"{x:.3g}"


def find_record(records: Iterable[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The first record whose fields equal ``match``, None when none does."""
    for record in records:
        if all(record.get(key) == value for key, value in match.items()):
            return record
    return None


K_COLOURS = ("C0", "C1", "C2", "C3", "C4", "C5", "C6")


def method_style(method: str, k: int | None, ks: Sequence[int]) -> dict[str, Any]:
    """The line style of a method in every plot: black backprop, a colour per k, dashed mean."""
    if method == "backprop":
        return {"color": "k", "marker": "D", "label": "backprop"}
    colour = K_COLOURS[sorted(ks).index(k) % len(K_COLOURS)] if k in ks else "0.5"
    if method == "mean":
        label = "forward gradient, k = 1" if k == 1 else f"mean, k = {k}"
        return {"color": colour, "linestyle": "--", "marker": "s", "label": label}
    return {"color": colour, "linestyle": "-", "marker": "o", "label": f"projection, k = {k}"}


def compute_note(seconds: float, what: str) -> str:
    """The note saying how long the runs behind a report took."""
    return (
        f"Compute: {what} took {seconds:.0f} s in all (wall clock, as measured when each part "
        "ran, on a shared 2-core CPU). A rerun into the same folder reuses finished parts, so "
        "the report's own elapsed time below can be much shorter."
    )


def mean_curve(curves: list[list[dict[str, Any]]], metric: str):
    """Epochs and the mean over seeds of ``metric``, up to the shortest seed's curve."""
    curves = [c for c in curves if c]
    if not curves:
        return None
    length = min(len(c) for c in curves)
    epochs = [row["epoch"] for row in curves[0][:length]]
    return epochs, np.mean([[row[metric] for row in c[:length]] for c in curves], axis=0)
