"""The flags generated from :class:`~forwardgrad.training.config.TrainConfig`: each field's
declaration (:func:`~forwardgrad.config_fields.option`) gives its flag's group (its section) and
help, so a new config field is on the command line, in its section, at once."""

from __future__ import annotations

import argparse
import dataclasses

from ..config_fields import SECTIONS
from ..training.config import TrainConfig, choices, config_fields
from ..training.config_values import config_from_mapping, load_toml


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _help(f: dataclasses.Field, names: dict[str, list[str]]) -> str:
    """The field's help with ``{choices}`` filled in from ``names`` (the registries')."""
    text = f.metadata["help"]
    if "{choices}" in text:
        text = text.format(choices="|".join(names[f.name]))
    shown = f.metadata["none_means"] if f.default is None else f.default
    return f"{text} (default: {shown})"


def add_config_flags(
    p: argparse.ArgumentParser, skip: tuple[str, ...] = ()
) -> dict[str, argparse._ArgumentGroup]:
    """One flag per TrainConfig field (not in ``skip``) in its section's argument group, plus
    ``--config``; returns the groups by section, in :data:`SECTIONS` order."""
    groups = {name: p.add_argument_group(title) for name, title in SECTIONS.items()}
    groups["run"].add_argument(
        "--config", metavar="FILE", help="TOML file with the same keys as the flags (flags win)"
    )
    names = choices()
    for f in config_fields():
        if f.name in skip:
            continue
        groups[f.metadata["section"]].add_argument(
            flag_name(f.name),
            dest=f.name,
            default=None,
            metavar=f.name.upper(),
            help=_help(f, names),
        )
    return groups


def guess_options_text() -> str:
    """Which flags each guess reads, for the help's constraints."""
    from ..guesses import GUESSES

    lines = []
    for name, cls in GUESSES.items():
        keys = [k for k in cls.option_names if k in TrainConfig.GUESS_OPTION_KEYS]
        if keys:
            lines.append(f"    {name}: {' '.join(flag_name(k) for k in keys)}")
    readers = ", ".join(n for n, c in GUESSES.items() if not c.option_names)
    lines.append(f"    {readers}: none")
    return "\n".join(lines)


def given_values(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    """The config values the user gave: the TOML file's, then the flags' on top."""
    values = load_toml(args.config) if getattr(args, "config", None) else {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None and f.name not in skip:
            values[f.name] = v
    return values


def config_from_args(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> TrainConfig:
    """The checked config of a command's ``--config`` file and flags."""
    return config_from_mapping(given_values(args, skip))
