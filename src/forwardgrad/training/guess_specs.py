"""Guess specs: ``name[:key=value...]``, one guess and its own options, as ``compare`` and
``probe`` take them, turned into the config of that guess."""

from __future__ import annotations

import dataclasses
from typing import Any

from .config import ConfigError, TrainConfig, choices, unread_options
from .config_values import coerce

# Keys a guess spec may not set: compare and probe set them for every guess.
_SPEC_FIXED = {"guess": "the spec's name is the guess", "seed": "--seed/--seeds set it"}


def parse_guess_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"wperp:rank=25:solver=randomized"`` -> ("wperp", {"rank": 25, "solver": "randomized"})."""
    name, *opts = spec.strip().split(":")
    if not name:
        raise ConfigError(f"guess spec {spec!r} has no guess name before its options")
    options: dict[str, Any] = {}
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(f"guess option {opt!r} in {spec!r} must look like key=value")
        key, value = opt.split("=", 1)
        key = key.strip()
        if key in _SPEC_FIXED:
            raise ConfigError(
                f"guess spec {spec!r} may not set {key!r} ({_SPEC_FIXED[key]}); "
                "set it for every guess with its flag"
            )
        if key in options:
            raise ConfigError(f"guess spec {spec!r} sets {key!r} twice")
        options[key] = coerce(key, value)
    return name, options


def config_for_guess(base: TrainConfig, name: str, options: dict[str, Any]) -> TrainConfig:
    """The config of guess ``name`` from a config shared by several guesses plus its own options.

    Options of ``base`` that this guess does not read go back to their defaults (a shared
    ``rank`` is for the guesses that read it); options given for this guess itself that it does
    not read are refused.
    """
    known = choices()["guess"]
    if name not in known:
        raise ConfigError(f"unknown guess {name!r}; choose one of: {', '.join(known)}")
    merged = dataclasses.replace(base, guess=name)
    for key, value in options.items():
        setattr(merged, key, value)
    defaults = TrainConfig()
    for key in unread_options(merged):
        if key not in options:
            setattr(merged, key, getattr(defaults, key))
    return merged.validate()
