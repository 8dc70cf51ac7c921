"""A config field declared once: its default, section, help text and allowed range.

Every setting of a run (data, model, estimator, optimizer, schedule, run) is one dataclass field
made with :func:`option`. The command-line flags, their ``--help``, the TOML sections and the
range checks are all read from these declarations, so a new setting is one field. This module
imports nothing from the package, so the guesses (which declare their own options) can use it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

SECTIONS: dict[str, str] = {
    "data": "data",
    "model": "model",
    "finetune": "fine-tuning (start from a state-dict file, train only part of the model)",
    "estimator": "estimator (the gradient guess and how its JVPs are combined)",
    "optimizer": "optimizer",
    "schedule": "schedule (training length and batches)",
    "run": "run (seed, device, bookkeeping)",
    "parallel": "parallel (how the processes of a torchrun launch share each step)",
}
"""The config's sections, in ``--help`` order: also the TOML tables a config file may use."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a number must satisfy, in words for the error message."""

    holds: Callable[[float], bool]
    allowed: str


def option(
    default: Any,
    section: str,
    help: str,
    *,
    minimum: int | None = None,
    rule: Rule | None = None,
    zero_means: str = "",
    or_also: str = "",
    none_means: str = "none",
) -> Any:
    """A dataclass field carrying what the CLI, the TOML reader and the validation need.

    ``help`` may name ``{choices}``: the allowed names, filled in from the registries.
    ``minimum`` bounds integers (``zero_means`` says what 0 means, when allowed; ``or_also`` names
    the word that may stand instead, like ``'full'``); ``rule`` checks floats (which must also be
    finite); ``none_means`` is how a default of None reads in the help.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown config section {section!r}; choose one of {list(SECTIONS)}")
    metadata = {
        "section": section,
        "help": help,
        "minimum": minimum,
        "rule": rule,
        "zero_means": zero_means,
        "or_also": or_also,
        "none_means": none_means,
    }
    return dataclasses.field(default=default, metadata=metadata)


def positive(what: str = "a finite number > 0") -> Rule:
    return Rule(lambda v: v > 0, what)


def number_error(name: str, field: dataclasses.Field, value: Any) -> str | None:
    """Why ``value`` breaks ``field``'s range (None when it does not)."""
    meta = field.metadata
    if value is None:
        return None
    minimum = meta.get("minimum")
    if minimum is not None and value < minimum:
        zero = f" ({meta['zero_means']})" if meta.get("zero_means") else ""
        also = f" or {meta['or_also']!r}" if meta.get("or_also") else ""
        return f"{name} must be >= {minimum}{zero}{also}; got {value}"
    rule = meta.get("rule")
    if rule is not None and not (math.isfinite(value) and rule.holds(value)):
        return f"{name} must be {rule.allowed}; got {value!r}"
    return None
