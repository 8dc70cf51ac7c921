"""Reading config values: a flag's or a TOML file's value converted to its field's type, and
TOML files (top-level keys or tables named by their section) read into flat keys.

Every bad value is a :class:`~forwardgrad.training.config.ConfigError` naming the key, the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path
from typing import Any

from ..config_fields import SECTIONS
from .config import (
    ConfigError,
    TrainConfig,
    base_type,
    config_fields,
    field_types,
    type_words,
    word_for_none,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def coerce(key: str, value: Any) -> Any:
    """Convert a TOML or command-line value to the field's type, or raise :class:`ConfigError`."""
    types_ = field_types()
    if key not in types_:
        raise ConfigError(_unknown_key_message(key, list(types_)))
    base, optional = base_type(types_[key])
    words = {"none", word_for_none(key)}  # rank's 'full', like every optional key's 'none'
    if optional and (value is None or (isinstance(value, str) and value.lower() in words)):
        return None
    try:
        return _convert(base, value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"config key {key!r} must be {type_words(key, base, optional)}; got {value!r}"
        ) from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
        return value.lower() in ("true", "1", "yes")
    raise ValueError


def _to_int(value: Any) -> int:
    if isinstance(value, (bool, list, dict)):
        raise ValueError
    if isinstance(value, float) and not value.is_integer():
        raise ValueError
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    return float(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    return value


_CONVERTERS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _convert(base: type, value: Any) -> Any:
    """``value`` as a ``base`` (ValueError when it is not one, in TOML's or the flags' terms)."""
    convert = _CONVERTERS.get(base)
    return convert(value) if convert is not None else value


def _unknown_key_message(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(str(key).replace("-", "_"), allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown config key {key!r}{hint}; allowed keys: {', '.join(sorted(allowed))}"


def config_from_mapping(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """``base`` (default: the defaults) with ``values`` applied and checked."""
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        setattr(cfg, key, coerce(key, value))
    return cfg.validate()


def load_toml(path: str | Path) -> dict[str, Any]:
    """The keys of a TOML config file, flat.

    Keys may sit at the top level or in a table named by their section (``[optimizer]``
    ``lr = 1e-3``); a key in another section's table, or a table of no section, is refused.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist (or is not a file)")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {e.strerror or e}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        items = _section_items(p, key, value) if isinstance(value, dict) else {key: value}
        for k, v in items.items():
            if k in flat:
                raise ConfigError(f"config file {str(p)!r} sets {k!r} twice")
            flat[k] = v
    return flat


def _section_items(path: Path, section: str, table: dict[str, Any]) -> dict[str, Any]:
    """A ``[section]`` table's keys, each checked to belong to that section."""
    if section not in SECTIONS:
        raise ConfigError(
            f"config file {str(path)!r}: unknown table [{section}]; tables are the sections "
            f"{', '.join(SECTIONS)} (or put the keys at top level)"
        )
    sections = {f.name: f.metadata["section"] for f in config_fields()}
    for key in table:
        if isinstance(table[key], dict):
            raise ConfigError(f"config file {str(path)!r}: [{section}] {key!r} is a table")
        if key not in sections:
            raise ConfigError(_unknown_key_message(key, list(sections)))
        if sections[key] != section:
            raise ConfigError(
                f"config file {str(path)!r}: {key!r} belongs to [{sections[key]}], not [{section}]"
            )
    return table
