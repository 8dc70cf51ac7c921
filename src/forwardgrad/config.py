"""Training configuration: one dataclass, readable from TOML and the command line."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value or file is malformed; the message names the key and what is allowed."""


@dataclass
class TrainConfig:
    # data and model
    dataset: str = "mnist1d"
    data_dir: str | None = None
    augment: bool = False  # random crop (+ flip for CIFAR) on image sets
    depth: int = 3
    width: int = 128
    bias: bool = True
    # estimator
    guess: str = "wperp"
    tangents: int = 1
    aggregate: str = "mean"
    scope: str = "global"
    jvp: str = "global"  # directional derivative: global | site (one per site, one pass each)
    chunk_size: int | None = None
    low_memory: bool = False  # activity guesses: two passes, memory flat in depth
    rank: int | None = 10  # None (TOML/CLI: "full") = numerical rank
    solver: str = "randomized"
    power_iterations: int = 0  # wperp randomized: subspace iterations before the Nystrom apply
    oversample: int = 6  # wperp randomized: block width beyond the rank (p = k + oversample)
    gram_dtype: str = "float32"  # wperp randomized: precision of the Gram applies
    bottom: bool = False
    sigma: float = 1e-5
    layers: int = 1
    sampler: str = "normal"
    normalize: bool = False
    angle: float = 45.0
    max_length: float = 4.0
    # optimisation
    epochs: int = 300
    batch_size: int = 512
    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 0.01
    momentum: float = 0.0
    seed: int = 0
    device: str = "cpu"
    # bookkeeping
    checkpoint_every: int = 1
    probe_every: int = 0  # epochs between gradient probes (probes.jsonl); 0 = never

    GUESS_OPTION_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "rank",
        "solver",
        "power_iterations",
        "oversample",
        "gram_dtype",
        "bottom",
        "sigma",
        "layers",
        "sampler",
        "normalize",
        "angle",
        "max_length",
    )

    def guess_options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.GUESS_OPTION_KEYS}

    def validate(self) -> TrainConfig:
        positive = ("depth", "width", "tangents", "epochs", "batch_size", "checkpoint_every")
        for key in positive:
            if getattr(self, key) < (0 if key == "depth" else 1):
                raise ConfigError(
                    f"{key} must be {'>= 0' if key == 'depth' else '>= 1'}; "
                    f"got {getattr(self, key)}"
                )
        if self.power_iterations < 0 or self.oversample < 0:
            raise ConfigError(
                f"power_iterations and oversample must be >= 0; got {self.power_iterations}, "
                f"{self.oversample}"
            )
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0; got {self.lr}")
        if self.probe_every < 0:
            raise ConfigError(f"probe_every must be >= 0 (0: no probes); got {self.probe_every}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def coerce(key: str, value: Any) -> Any:
    """Convert a TOML or command-line value to the field's type, or raise :class:`ConfigError`."""
    types_ = _field_types()
    if key not in types_ or key == "GUESS_OPTION_KEYS":
        allowed = sorted(k for k in types_ if k != "GUESS_OPTION_KEYS")
        raise ConfigError(f"unknown config key {key!r}; allowed keys: {', '.join(allowed)}")
    hint = types_[key]
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if optional and (
        value is None or (isinstance(value, str) and value.lower() in ("none", "full"))
    ):
        return None
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError):
        extra = " or 'full'" if key == "rank" else (" or 'none'" if optional else "")
        raise ConfigError(
            f"config key {key!r} must be {base.__name__}{extra}; got {value!r}"
        ) from None
    return value


def config_from_mapping(values: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    cfg = dataclasses.replace(base) if base is not None else TrainConfig()
    for key, value in values.items():
        setattr(cfg, key, coerce(key, value))
    return cfg.validate()


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(
                f"config file {str(p)!r}: tables are not used; put {key!r}'s keys at top level"
            )
    return data


def parse_guess_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"wperp:rank=25:solver=randomized"`` -> ("wperp", {"rank": 25, "solver": "randomized"})."""
    name, *opts = spec.strip().split(":")
    options: dict[str, Any] = {}
    for opt in opts:
        if "=" not in opt:
            raise ConfigError(f"guess option {opt!r} in {spec!r} must look like key=value")
        key, value = opt.split("=", 1)
        options[key] = coerce(key, value)
    return name, options
