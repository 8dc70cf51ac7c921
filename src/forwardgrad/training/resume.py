"""Resuming a run: which settings may change, and checks that a folder's files belong together.

A resumed run continues exactly the computation it started: only the keys in
:data:`RESUME_FIELDS` (how long it trains and how it is looked after) may change, and
``config.json``, ``checkpoint.pt`` and the data must still describe the same run.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .config import ConfigError, TrainConfig, field_names, unread_options
from .config_values import coerce

RESUME_FIELDS = (
    "epochs",
    "checkpoint_every",
    "threads",
    "data_dir",
    "tensorboard",
    # a run resumes with any process count and split: each gives the one-process estimate
    # (a data split of per-example tangents: one of the same distribution)
    "parallel",
    "tangent_procs",
    "parallel_timeout",
    "checksum_every",
)
"""Config keys a resumed run may change; every other key is fixed by the run."""


class ResumeRefused(ConfigError):
    """The run cannot be resumed as asked (a fixed setting changed, files disagree, ...)."""


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    """The whole of ``run_dir/config.json`` (config, seed, data, environment, resumes)."""
    p = Path(run_dir) / "config.json"
    if not p.exists():
        raise ConfigError(f"{p} is missing: {run_dir} is not a forwardgrad run directory")
    try:
        record = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{p} is corrupt ({e}); cannot use the run") from None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ConfigError(f"{p} is corrupt (no 'config' table); cannot use the run")
    return record


def read_config(out_dir: str | Path) -> dict[str, Any]:
    """The config a run saved in ``out_dir/config.json``, as a dict."""
    return read_run_record(out_dir)["config"]


def config_from_saved(
    saved: dict[str, Any], source: str | Path, custom_guess: bool = False
) -> TrainConfig:
    """The :class:`TrainConfig` of a saved config dict.

    Keys this version added since the run was saved take their defaults; options the run's
    guess never read (which older versions wrote into ``config.json``) go back to their
    defaults, which changes nothing the run computes.
    """
    cfg = TrainConfig()
    for key, value in saved.items():
        try:
            setattr(cfg, key, coerce(key, value))
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None
    defaults = TrainConfig()
    try:
        for key in unread_options(cfg):
            setattr(cfg, key, getattr(defaults, key))
        return cfg.validate(custom_guess)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def resumed_config(
    saved: TrainConfig,
    requested: TrainConfig | None,
    epochs: int | None,
    run_dir: Path,
    custom_guess: bool = False,
) -> tuple[TrainConfig, dict[str, Any]]:
    """The config a resumed run continues with, and what it changes.

    ``requested`` (None: the saved config) may differ from ``saved`` only in
    :data:`RESUME_FIELDS`; ``epochs`` overrides both.
    """
    changes: dict[str, Any] = {}
    if requested is not None:
        differ = [k for k in field_names() if getattr(requested, k) != getattr(saved, k)]
        fixed = [k for k in differ if k not in RESUME_FIELDS]
        if fixed:
            raise ResumeRefused(_fixed_message(saved, requested, fixed, run_dir))
        changes = {k: getattr(requested, k) for k in differ}
    if epochs is not None and epochs != saved.epochs:
        changes["epochs"] = epochs
    return dataclasses.replace(saved, **changes).validate(custom_guess), changes


def _fixed_message(saved: TrainConfig, requested: TrainConfig, keys: list[str], run: Path) -> str:
    asked = ", ".join(
        f"{flag(k)} {getattr(requested, k)!r} (the run has {getattr(saved, k)!r})" for k in keys
    )
    allowed = ", ".join(flag(k) for k in RESUME_FIELDS)
    return (
        f"cannot resume {run} with {asked}: a resumed run keeps the settings it started with. "
        f"On resume only {allowed} may change; start a new run (another --out) to change the rest"
    )


def check_checkpoint_config(state: dict[str, Any], saved: TrainConfig, run_dir: Path) -> None:
    """Refuse a folder whose ``config.json`` and ``checkpoint.pt`` describe different runs."""
    written = state.get("config")
    if not isinstance(written, dict):
        return  # checkpoints from before the config was stored in them
    defaults = TrainConfig().to_dict()
    current = saved.to_dict()
    differ = [
        k
        for k in field_names()
        if k not in RESUME_FIELDS and written.get(k, defaults[k]) != current[k]
    ]
    if differ:
        detail = ", ".join(
            f"{k} ({current[k]!r} in config.json, {written.get(k, defaults[k])!r} in checkpoint.pt)"
            for k in differ
        )
        raise ResumeRefused(
            f"{run_dir}: config.json and checkpoint.pt disagree on {detail}; config.json was "
            "changed after the checkpoint was written. Put the checkpoint's values back, or "
            "start a new run to train with the new ones"
        )


def check_same_data(record: dict[str, Any], data_summary: str, run_dir: Path) -> None:
    """Refuse to resume on data other than the run's (a changed --data-dir, other files)."""
    before = record.get("data")
    if before is not None and before != data_summary:
        raise ResumeRefused(
            f"{run_dir} was trained on {before!r}, but the data loaded now is "
            f"{data_summary!r}; resume it with the same data"
        )


def refuse_diverged(summary: dict[str, Any] | None, run_dir: Path) -> None:
    """A diverged run resumed with its own settings would repeat the same steps and diverge."""
    if not summary or summary.get("status") != "diverged":
        return
    failure = summary.get("failure") or {}
    where = f"epoch {failure.get('epoch')}, step {failure.get('step')}"
    raise ResumeRefused(
        f"{run_dir} diverged ({failure.get('what', 'the loss')} not finite at {where}); "
        "resuming it with the same settings would repeat the same steps. Start a new run, "
        "e.g. with a lower --lr"
    )


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """``run_dir/summary.json``, or None when absent or unreadable."""
    p = Path(run_dir) / "summary.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
