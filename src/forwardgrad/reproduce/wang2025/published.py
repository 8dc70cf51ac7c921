"""The paper's published numbers, read once from ``data/*.json`` (reference digest §4).

Keys are :attr:`Contender.key` values; widths, layers and k are ints (JSON keeps them as strings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).parent / "data"


def _int_keys(value: Any) -> Any:
    """JSON object keys that are whole numbers back to ints, at every depth."""
    if isinstance(value, dict):
        return {int(k) if k.isdigit() else k: _int_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_int_keys(v) for v in value]
    return value


def read_published(name: str) -> Any:
    """The ``values`` of ``data/<name>.json`` (its ``source`` says where they come from)."""
    return _int_keys(json.loads((DATA_DIR / f"{name}.json").read_text())["values"])


TABLE1_TRAIN_ACC: dict[str, float] = read_published("table1")
TABLE2: dict[str, dict[str, float]] = read_published("table2")
TABLE3_TRAIN_ACC: dict[int, dict[str, float]] = read_published("table3")
# (method, width) -> train time in minutes and accuracies.
TABLE4: dict[tuple[str, int], dict[str, float]] = {
    (row.pop("method"), row.pop("width")): row for row in read_published("table4")
}
TABLE5: dict[str, dict[str, float]] = read_published("table5")
# width -> paper layer -> {"rank", k: overlap}.
FIG1: dict[int, dict[int, dict[Any, float]]] = read_published("fig1")


def paper_time_ratios() -> dict[tuple[str, int], float]:
    """Table 4's train times relative to W̃ᵀ at the same width (hardware cancels, roughly)."""
    return {
        (method, width): values["minutes"] / TABLE4[("wt", width)]["minutes"]
        for (method, width), values in TABLE4.items()
        if method != "wt"
    }
