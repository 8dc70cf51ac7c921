"""Training configuration: one dataclass, readable from TOML and the command line (the values
are read by ``config_values.py``).

:meth:`TrainConfig.validate` checks every value before anything is built or written: types,
ranges, finite numbers, names against the registries (datasets, guesses, samplers, ...), the
device, and options that the chosen guess would ignore. Every error is a :class:`ConfigError`
whose message names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any

from ..config_fields import SECTIONS, Rule, number_error, option, positive
from ..guesses.options import GuessOptions
from ..models import finetune


class ConfigError(ValueError):
    """A configuration value or file is malformed; the message names the key and what is allowed."""


# numpy and scikit-learn take seeds below 2**32, and a run draws its streams from seed + 0..3
# (and compare from seed + 0..seeds-1), so seeds stay well inside that range.
MAX_SEED = 2**31 - 1


@dataclass
class TrainConfig(GuessOptions):
    """Everything a training run depends on, flat: each field is a TOML key and a flag.

    Each field is declared once, with its section, help and range (:func:`option`); the guess
    options come from :class:`~forwardgrad.guesses.GuessOptions`, where the guesses declare them.
    """

    dataset: str = option("mnist1d", "data", "dataset: {choices}")
    data_dir: str | None = option(
        None,
        "data",
        "folder with real datasets' files",
        none_means="$FORWARDGRAD_DATA, then ~/.cache/forwardgrad",
    )
    augment: bool = option(
        False, "data", "on-the-fly augmentation for image sets (true/false)"
    )  # random crop (+ flip for CIFAR)
    model: str = option("mlp", "model", "model: {choices}")
    depth: int | None = option(
        None,
        "model",
        "mlp: hidden layers (default 3); vit: encoder blocks (default 6); localmixer: blocks "
        "(default 4)",
        minimum=0,
        zero_means="0: a linear model",
    )
    width: int | None = option(
        None,
        "model",
        "mlp: hidden width (default 128); vit: token width (default 256); localmixer: channels "
        "(default 512)",
        minimum=1,
    )
    bias: bool = option(True, "model", "mlp: use biases (true/false)")
    norm: str | None = option(
        None, "model", "resnet18: {choices} (default group; batch needs --jvp batch)"
    )
    stem: str | None = option(
        None, "model", "resnet18: {choices} (default cifar: 3x3/1; imagenet: 7x7/2 + max-pool)"
    )
    heads: int | None = option(None, "model", "vit: attention heads (default 4)", minimum=1)
    mlp_dim: int | None = option(None, "model", "vit: MLP width (default 512)", minimum=1)
    patch_size: int | None = option(
        None, "model", "vit: patch size (default 4); localmixer: (default: a 4 x 4 grid)", minimum=1
    )
    groups: int | None = option(
        None, "model", "localmixer: channel groups, one local head each (default 16)", minimum=1
    )
    local_losses: bool | None = option(
        None,
        "model",
        "localmixer: local losses after every block, blocks cut apart (default true; false: "
        "trained end to end)",
    )
    prompts: int | None = option(
        None, "model", "vit: learnable prompt tokens after the class token (default 0)", minimum=0
    )
    init_from: str | None = option(
        None, "finetune", "start from this state_dict file (torch.save; every key checked)"
    )
    trainable: str | None = option(
        None,
        "finetune",
        "train only the parameters matching these name patterns, comma-separated (e.g. "
        "'*.bias,head.*'), and those --lora and --prompts add; none given: every parameter",
    )
    lora: str | None = option(
        None,
        "finetune",
        "LoRA adapters on the nn.Linear modules matching these name patterns, comma-separated "
        "(e.g. 'blocks.*.mlp.0'); the wrapped layers are frozen",
    )
    lora_rank: int = option(finetune.DEFAULT_RANK, "finetune", "LoRA rank r", minimum=1)
    lora_alpha: float = option(
        finetune.DEFAULT_ALPHA,
        "finetune",
        "LoRA scale alpha (the update is alpha/r BA)",
        rule=positive(),
    )
    sites: str | None = option(
        None,
        "estimator",
        "where tangents go: module-name patterns, comma-separated "
        "(e.g. 'layer?,head'; default every Linear and Conv)",
    )
    guess: str = option("wperp", "estimator", "gradient guess: {choices}")
    tangents: int = option(1, "estimator", "tangents per step (k)", minimum=1)
    aggregate: str = option("mean", "estimator", "how the k JVPs combine: {choices}")
    scope: str = option(
        "global", "estimator", "projection scope: {choices} (with --aggregate projection)"
    )
    jvp: str = option(
        "global",
        "estimator",
        "{choices}: one JVP per example along all sites' tangents, one per site, "
        "or one for the whole batch (models that couple examples, e.g. BatchNorm)",
    )
    chunk_size: int | None = option(
        None,
        "estimator",
        "push at most this many tangents at once (bounds memory)",
        minimum=1,
        or_also="none",
        none_means="all tangents at once",
    )
    low_memory: bool = option(
        False, "estimator", "activity guesses: redraw tangents in a second pass (true/false)"
    )
    optimizer: str = option("adamw", "optimizer", "{choices}")
    lr: float = option(1e-4, "optimizer", "learning rate (finite, > 0)", rule=positive())
    weight_decay: float = option(
        0.01,
        "optimizer",
        "weight decay (>= 0)",
        rule=Rule(lambda v: v >= 0, "a finite number >= 0"),
    )
    momentum: float = option(
        0.0,
        "optimizer",
        "SGD momentum in [0, 1) (with --optimizer sgd)",
        rule=Rule(lambda v: 0 <= v < 1, "a number in [0, 1)"),
    )
    epochs: int = option(300, "schedule", "training epochs", minimum=1)
    batch_size: int = option(512, "schedule", "minibatch size", minimum=1)
    seed: int = option(0, "run", "random seed: model init, shuffling, tangents (0 to 2**31 - 1)")
    device: str = option("cpu", "run", "torch device: cpu, cuda or cuda:N")
    checkpoint_every: int = option(1, "run", "epochs between checkpoints", minimum=1)
    probe_every: int = option(
        0,
        "run",
        "epochs between gradient probes against backprop (0: none)",
        minimum=0,
        zero_means="0: no probes",
    )
    threads: int | None = option(
        None,
        "run",
        "CPU threads for torch (1: bit-reproducible, see the README)",
        minimum=1,
        or_also="none",
        none_means="torch's, one per core",
    )
    tensorboard: bool = option(
        False, "run", "also log metrics to RUN_DIR/tensorboard (true/false; extra)"
    )
    parallel: str = option(
        "none",
        "parallel",
        "{choices}: split each step's tangents, its batch, or both over the processes "
        "torchrun launched (none: one process)",
    )
    tangent_procs: int | None = option(
        None,
        "parallel",
        "--parallel both: processes that split one batch shard's tangents (a divisor of the "
        "process count)",
        minimum=1,
        or_also="none",
        none_means="the largest divisor at most the count's square root",
    )
    parallel_timeout: float = option(
        300.0,
        "parallel",
        "seconds a process waits for the others before the run stops with an error",
        rule=positive(),
    )
    checksum_every: int = option(
        100,
        "parallel",
        "steps between checks that every process holds bit-identical parameters",
        minimum=1,
    )

    GUESS_OPTION_KEYS: typing.ClassVar[tuple[str, ...]] = tuple(
        f.name for f in dataclasses.fields(GuessOptions)
    )

    def guess_options(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.GUESS_OPTION_KEYS}

    def model_options(self) -> dict[str, Any]:
        """The model builder's options this config sets (unset ones keep the builder's
        defaults), under the builder's names."""
        from ..models import MODELS

        return {
            option: getattr(self, key)
            for key, option in MODELS[self.model].config_keys
            if getattr(self, key) is not None
        }

    def patterns(self, key: str) -> list[str]:
        """A comma-separated pattern key (``trainable``, ``lora``, ``sites``) as a list."""
        value = getattr(self, key)
        return [p.strip() for p in value.split(",") if p.strip()] if value else []

    def site_patterns(self) -> list[str] | None:
        """``sites`` as the Estimator's ``sites=`` list (None: every Linear and Conv)."""
        return None if self.sites is None else self.patterns("sites")

    def validate(self, custom_guess: bool = False) -> TrainConfig:
        """Check every value; raise :class:`ConfigError` naming the first bad one.

        ``custom_guess``: ``guess`` names an estimator that ``train(estimator_factory=...)``
        builds, not a registered guess, so its name and options are not checked.
        """
        _check_types(self)
        _check_ranges(self)
        _check_names(self, skip=("guess",) if custom_guess else ())
        _check_combinations(self)
        if not custom_guess:
            _check_guess_options(self)
        _check_device(self.device)
        if self.tensorboard:
            _check_tensorboard_installed()
        return self

    def to_dict(self) -> dict[str, Any]:
        """Every key and value, by section (the ``config.json`` of a run)."""
        return {key: getattr(self, key) for key in field_names()}


@functools.cache
def config_fields() -> tuple[dataclasses.Field, ...]:
    """The config's fields by section (in :data:`SECTIONS` order), the guess options last in
    the estimator section: the order of ``--help``, ``config.json`` and :func:`field_names`."""
    order = list(SECTIONS)
    fields = dataclasses.fields(TrainConfig)
    guess = set(TrainConfig.GUESS_OPTION_KEYS)
    return tuple(
        sorted(fields, key=lambda f: (order.index(f.metadata["section"]), f.name in guess))
    )


def field_names() -> list[str]:
    """The config keys, in section order."""
    return [f.name for f in config_fields()]


def word_for_none(key: str) -> str:
    """The word that stands for None in ``key``'s values ('full' for rank; else 'none')."""
    field = next(f for f in config_fields() if f.name == key)
    return field.metadata["or_also"] or "none"


def field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainConfig)
    return {name: hints[name] for name in field_names()}


def base_type(hint: Any) -> tuple[type, bool]:
    """(the field's value type, whether None is allowed) of a type hint like ``int | None``."""
    args = typing.get_args(hint)
    optional = isinstance(hint, types.UnionType) and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    return base, optional


# ------------------------------------------------------------------------------ validation


def _check_types(cfg: TrainConfig) -> None:
    for key, hint in field_types().items():
        value = getattr(cfg, key)
        base, optional = base_type(hint)
        if value is None and optional:
            continue
        ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
        if base is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{key} must be {type_words(key, base, optional)}; got {value!r}")


def type_words(key: str, base: type, optional: bool) -> str:
    words = {
        int: "int (an integer)",
        float: "float (a number)",
        str: "str (a string)",
        bool: "bool (true or false)",
    }
    extra = f" or {word_for_none(key)!r}" if optional else ""
    return words.get(base, base.__name__) + extra


def _check_ranges(cfg: TrainConfig) -> None:
    """Integers at or above their minimum; floats finite and inside their rule."""
    for f in config_fields():
        error = number_error(f.name, f, getattr(cfg, f.name))
        if error:
            raise ConfigError(error)
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed must be an integer from 0 to {MAX_SEED}; got {cfg.seed}")


def choices() -> dict[str, list[str]]:
    """The allowed names of every key that takes one, from the registries."""
    from ..core.aggregate import AGGREGATIONS
    from ..core.samplers import SAMPLERS
    from ..core.strategies import JVP_MODES
    from ..data import DATASETS
    from ..distributed import PARALLEL_MODES
    from ..estimation.estimator import SCOPES
    from ..guesses import GUESSES
    from ..guesses.base import FALLBACKS
    from ..guesses.jacobian import GRAM_DTYPES, SOLVERS
    from ..models import MODELS
    from ..models.resnet import NORMS, STEMS
    from .optimizers import OPTIMIZERS

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
        "fallback": list(FALLBACKS),
        "optimizer": list(OPTIMIZERS),
        "sampler": list(SAMPLERS),
        "parallel": list(PARALLEL_MODES),
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
    from ..guesses import GUESSES

    if cfg.guess not in GUESSES:  # an estimator_factory's estimator: its options are its own
        return set(OPTION_KEYS)
    keys = set(GUESSES[cfg.guess].option_names) & set(TrainConfig.GUESS_OPTION_KEYS)
    if cfg.sampler != "angle":
        keys.discard("angle")
    if cfg.sampler != "varying-length":
        keys.discard("max_length")
    if cfg.solver == "svd":  # the exact solver has no block, iterations or Gram precision
        keys -= {"oversample", "power_iterations", "gram_dtype"}
    if cfg.solver != "newton-schulz":
        keys.discard("ns_refresh")
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
    from ..guesses import GUESSES

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
    if cfg.guess == "wperp" and cfg.solver != "newton-schulz":
        special["ns_refresh"] = (
            f"ns_refresh applies to wperp's newton-schulz solver only (solver is {cfg.solver!r})"
        )
    clauses = [special[k] for k in keys if k in special]
    by_guess = [k for k in keys if k not in special]
    if by_guess:
        reads = sorted(set(GUESSES[cfg.guess].option_names) & set(TrainConfig.GUESS_OPTION_KEYS))
        what = ("only " + ", ".join(reads)) if reads else "none of the guess options"
        clauses.insert(0, f"guess {cfg.guess!r} reads {what}, not {', '.join(by_guess)}")
    return "; ".join(clauses)


MODEL_KEYS = tuple(
    f.name for f in config_fields() if f.metadata["section"] == "model" and f.name != "model"
)
"""Keys that only some models read: the model section's, but ``model`` itself."""


def _check_model_options(cfg: TrainConfig) -> None:
    from ..models import MODELS

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
    if cfg.tangent_procs is not None and cfg.parallel != "both":
        raise ConfigError(
            f"tangent_procs = {cfg.tangent_procs} is read only by parallel 'both'; here "
            f"parallel is {cfg.parallel!r}: leave it out"
        )
    unread = unread_options(cfg)
    if unread:
        given = ", ".join(f"{k} = {getattr(cfg, k)!r}" for k in unread)
        raise ConfigError(
            f"{given} would be ignored: {_why_unread(cfg, unread)}; leave "
            f"{'it' if len(unread) == 1 else 'them'} out"
        )


def _check_guess_options(cfg: TrainConfig) -> None:
    """The guess's own constraints on its options (rank 'full' needs solver 'svd', ...): the
    guess checks them when it is made, so make it now, before anything is loaded or written."""
    from ..guesses import make_guess

    try:
        make_guess(cfg.guess, GuessOptions(**cfg.guess_options()))
    except ValueError as e:
        raise ConfigError(str(e)) from None


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
