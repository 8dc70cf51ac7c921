"""Training configuration: one dataclass, readable from TOML and the command line.

:meth:`TrainConfig.validate` checks every value before anything is built or written: types,
ranges, finite numbers, names against the registries (datasets, guesses, samplers, ...), the
device, and options that the chosen guess would ignore. Every error is a :class:`ConfigError`
whose message names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
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


# numpy and scikit-learn take seeds below 2**32, and a run draws its streams from seed + 0..3
# (and compare from seed + 0..seeds-1), so seeds stay well inside that range.
MAX_SEED = 2**31 - 1


@dataclass
class TrainConfig:
    # data and model
    dataset: str = "mnist1d"
    data_dir: str | None = None
    augment: bool = False  # random crop (+ flip for CIFAR) on image sets
    model: str = "mlp"  # mlp | cnn | resnet18 | vit (forwardgrad.models)
    depth: int | None = None  # mlp: hidden layers (3); vit: encoder blocks (6)
    width: int | None = None  # mlp: hidden width (128); vit: token width (256)
    bias: bool = True  # mlp
    norm: str | None = None  # resnet18: group | batch | none (group)
    stem: str | None = None  # resnet18: cifar | imagenet (cifar)
    heads: int | None = None  # vit (4)
    mlp_dim: int | None = None  # vit (512)
    patch_size: int | None = None  # vit (4)
    sites: str | None = None  # comma-separated module-name patterns; None: Linear and Conv
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
    threads: int | None = None  # CPU threads of torch (None: torch's default); recorded per run
    tensorboard: bool = False  # also log the metrics to RUN_DIR/tensorboard (optional extra)

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

    def model_options(self) -> dict[str, Any]:
        """The model builder's options this config sets (unset ones keep the builder's
        defaults), under the builder's names."""
        from .models import MODELS

        return {
            option: getattr(self, key)
            for key, option in MODELS[self.model].config_keys
            if getattr(self, key) is not None
        }

    def site_patterns(self) -> list[str] | None:
        """``sites`` as the Estimator's ``sites=`` list (None: every Linear and Conv)."""
        if self.sites is None:
            return None
        return [p.strip() for p in self.sites.split(",") if p.strip()]

    def validate(self, custom_guess: bool = False) -> TrainConfig:
        """Check every value; raise :class:`ConfigError` naming the first bad one.

        ``custom_guess``: ``guess`` names an estimator that ``train(estimator_factory=...)``
        builds, not a registered guess, so its name and options are not checked.
        """
        _check_types(self)
        _check_ranges(self)
        _check_numbers(self)
        _check_names(self, skip=("guess",) if custom_guess else ())
        _check_combinations(self)
        _check_device(self.device)
        if self.tensorboard:
            _check_tensorboard_installed()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def field_names() -> list[str]:
    """The config keys, in declaration order."""
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: hints[name] for name in field_names()}


def _base_type(hint: Any) -> tuple[type, bool]:
    """(the field's value type, whether None is allowed) of a type hint like ``int | None``."""
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    return base, optional


# ------------------------------------------------------------------------------ validation


def _check_types(cfg: TrainConfig) -> None:
    for key, hint in _field_types().items():
        value = getattr(cfg, key)
        base, optional = _base_type(hint)
        if value is None and optional:
            continue
        ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
        if base is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{key} must be {_type_words(key, base, optional)}; got {value!r}")


def _type_words(key: str, base: type, optional: bool) -> str:
    words = {
        int: "int (an integer)",
        float: "float (a number)",
        str: "str (a string)",
        bool: "bool (true or false)",
    }
    extra = " or 'full'" if key == "rank" else (" or 'none'" if optional else "")
    return words.get(base, base.__name__) + extra


_MINIMUMS = {
    "depth": 0,
    "width": 1,
    "heads": 1,
    "mlp_dim": 1,
    "patch_size": 1,
    "tangents": 1,
    "epochs": 1,
    "batch_size": 1,
    "checkpoint_every": 1,
    "probe_every": 0,
    "power_iterations": 0,
    "oversample": 0,
    "layers": 1,
    "chunk_size": 1,
    "rank": 1,
    "threads": 1,
}
_ZERO_MEANS = {"probe_every": " (0: no probes)", "depth": " (0: a linear model)"}


def _check_ranges(cfg: TrainConfig) -> None:
    for key, minimum in _MINIMUMS.items():
        value = getattr(cfg, key)
        if value is not None and value < minimum:
            what = {"chunk_size": " or 'none'", "rank": " or 'full'", "threads": " or 'none'"}
            raise ConfigError(
                f"{key} must be >= {minimum}{_ZERO_MEANS.get(key, '')}"
                f"{what.get(key, '')}; got {value}"
            )
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED}; got {cfg.seed}")


def _check_numbers(cfg: TrainConfig) -> None:
    """Floats must be finite and inside the range where they mean something."""
    rules = {
        "lr": (lambda v: v > 0, "a finite number > 0"),
        "weight_decay": (lambda v: v >= 0, "a finite number >= 0"),
        "momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
        "sigma": (lambda v: v > 0, "a finite number > 0"),
        "angle": (lambda v: 0 <= v <= 180, "a number of degrees in [0, 180]"),
        "max_length": (lambda v: v >= 1, "a finite number >= 1"),
    }
    for key, (ok, allowed) in rules.items():
        value = getattr(cfg, key)
        if not (math.isfinite(value) and ok(value)):
            raise ConfigError(f"{key} must be {allowed}; got {value!r}")


def choices() -> dict[str, list[str]]:
    """The allowed names of every key that takes one, from the registries."""
    from .core.aggregate import AGGREGATIONS
    from .core.samplers import SAMPLERS
    from .core.strategies import JVP_MODES
    from .data import DATASETS
    from .estimation.estimator import SCOPES
    from .guesses import GUESSES
    from .guesses.jacobian import GRAM_DTYPES, SOLVERS
    from .models import MODELS
    from .models.resnet import NORMS, STEMS
    from .optim import OPTIMIZERS

    return {
        "dataset": sorted(DATASETS),
        "model": list(MODELS),
        "norm": list(NORMS),
        "stem": list(STEMS),
        "guess": list(GUESSES),
        "aggregate": list(AGGREGATIONS),
        "scope": list(SCOPES),
        "jvp": list(JVP_MODES),
        "solver": list(SOLVERS),
        "gram_dtype": list(GRAM_DTYPES),
        "optimizer": list(OPTIMIZERS),
        "sampler": list(SAMPLERS),
    }


def _check_names(cfg: TrainConfig, skip: tuple[str, ...] = ()) -> None:
    for key, allowed in choices().items():
        if key in skip:
            continue
        value = getattr(cfg, key)
        if value is None and key in ("norm", "stem"):  # the builder's default
            continue
        if value not in allowed:
            raise ConfigError(f"unknown {key} {value!r}; choose one of: {', '.join(allowed)}")


def read_options(cfg: TrainConfig) -> set[str]:
    """The option keys (guess options, ``scope``, ``momentum``) that ``cfg``'s run reads."""
    from .guesses import GUESSES

    if cfg.guess not in GUESSES:  # an estimator_factory's estimator: its options are its own
        return set(OPTION_KEYS)
    keys = set(GUESSES[cfg.guess].options) & set(TrainConfig.GUESS_OPTION_KEYS)
    if cfg.sampler != "angle":
        keys.discard("angle")
    if cfg.sampler != "varying-length":
        keys.discard("max_length")
    if cfg.solver == "svd":  # the exact solver has no block, iterations or Gram precision
        keys -= {"oversample", "power_iterations", "gram_dtype"}
    if cfg.aggregate == "projection":
        keys.add("scope")
    if cfg.optimizer == "sgd":
        keys.add("momentum")
    return keys


OPTION_KEYS = (*TrainConfig.GUESS_OPTION_KEYS, "scope", "momentum")
"""Keys that only some runs read (by guess, sampler, solver, aggregate or optimizer)."""


def unread_options(cfg: TrainConfig) -> list[str]:
    """Option keys set away from their defaults that ``cfg``'s run would ignore."""
    defaults = TrainConfig()
    used = read_options(cfg)
    return [k for k in OPTION_KEYS if k not in used and getattr(cfg, k) != getattr(defaults, k)]


def _why_unread(cfg: TrainConfig, keys: list[str]) -> str:
    """Why each of ``keys`` would be ignored, one clause per reason."""
    from .guesses import GUESSES

    special = {
        "angle": f"angle applies to sampler 'angle' only (sampler is {cfg.sampler!r})",
        "max_length": "max_length applies to sampler 'varying-length' only "
        f"(sampler is {cfg.sampler!r})",
        "scope": f"scope applies to aggregate 'projection' only (aggregate is {cfg.aggregate!r})",
        "momentum": f"momentum applies to optimizer 'sgd' only (optimizer is {cfg.optimizer!r})",
    }
    if cfg.guess == "wperp" and cfg.solver == "svd":
        for k in ("oversample", "power_iterations", "gram_dtype"):
            special[k] = f"{k} applies to wperp's randomized and newton-schulz solvers, not svd"
    clauses = [special[k] for k in keys if k in special]
    by_guess = [k for k in keys if k not in special]
    if by_guess:
        reads = sorted(set(GUESSES[cfg.guess].options) & set(TrainConfig.GUESS_OPTION_KEYS))
        what = ("only " + ", ".join(reads)) if reads else "none of the guess options"
        clauses.insert(0, f"guess {cfg.guess!r} reads {what}, not {', '.join(by_guess)}")
    return "; ".join(clauses)


MODEL_KEYS = ("depth", "width", "bias", "norm", "stem", "heads", "mlp_dim", "patch_size")
"""Keys that only some models read."""


def _check_model_options(cfg: TrainConfig) -> None:
    from .models import MODELS

    reads = {key for key, _ in MODELS[cfg.model].config_keys}
    unread = [
        k
        for k in MODEL_KEYS
        if k not in reads and getattr(cfg, k) is not None and not (k == "bias" and cfg.bias)
    ]
    if unread:
        given = ", ".join(f"{k} = {getattr(cfg, k)!r}" for k in unread)
        what = ", ".join(sorted(reads)) or "none of them"
        raise ConfigError(
            f"{given} would be ignored: model {cfg.model!r} reads {what}; leave "
            f"{'it' if len(unread) == 1 else 'them'} out"
        )
    if cfg.sites is not None and not cfg.site_patterns():
        raise ConfigError(f"sites must name module patterns, comma-separated; got {cfg.sites!r}")


def _check_combinations(cfg: TrainConfig) -> None:
    _check_model_options(cfg)
    unread = unread_options(cfg)
    if unread:
        given = ", ".join(f"{k} = {getattr(cfg, k)!r}" for k in unread)
        raise ConfigError(
            f"{given} would be ignored: {_why_unread(cfg, unread)}; leave "
            f"{'it' if len(unread) == 1 else 'them'} out"
        )
    # Constraints within one guess's options (rank 'full' needs solver 'svd', ...) are the
    # guess's own; train() meets them when it builds the estimator, before writing anything.


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(
            f"device {device!r} is not a torch device; use cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r}: this torch build ({torch.__version__}) sees no CUDA GPU; "
                "use --device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
        return
    if dev.type == "mps" and torch.backends.mps.is_available():
        return
    raise ConfigError(f"device {device!r} is not available here; use cpu (or cuda on a GPU)")


def _check_tensorboard_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(
            "tensorboard = true needs the tensorboard package: "
            "pip install 'forwardgrad[tensorboard]'"
        )


# ---------------------------------------------------------------------------- reading values


def coerce(key: str, value: Any) -> Any:
    """Convert a TOML or command-line value to the field's type, or raise :class:`ConfigError`."""
    types_ = _field_types()
    if key not in types_:
        raise ConfigError(_unknown_key_message(key, list(types_)))
    base, optional = _base_type(types_[key])
    if optional and (value is None or (isinstance(value, str) and value.lower() == "none")):
        return None
    if key == "rank" and isinstance(value, str) and value.lower() == "full":
        return None
    try:
        return _convert(base, value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(
            f"config key {key!r} must be {_type_words(key, base, optional)}; got {value!r}"
        ) from None


def _convert(base: type, value: Any) -> Any:
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError
    if base is int:
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise ValueError
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ValueError
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    return value


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
    """The top-level keys of a TOML config file (tables are refused)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist (or is not a file)")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"config file {str(p)!r} cannot be read: {e.strerror or e}") from None
    for key, value in data.items():
        if isinstance(value, dict):
            raise ConfigError(
                f"config file {str(p)!r}: tables are not used; put {key!r}'s keys at top level"
            )
    return data


# ------------------------------------------------------------------------------- guess specs

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
