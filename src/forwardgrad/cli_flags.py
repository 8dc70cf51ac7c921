"""The flags generated from :class:`~forwardgrad.config.TrainConfig`: one table, keyed by field
name, gives each flag its group and help. A field missing from the table still gets its flag,
under "other options", so a new config field is on the command line at once."""

from __future__ import annotations

import argparse
import dataclasses

from .config import TrainConfig, choices, field_names

GROUPS = {
    "data": "data",
    "model": "model",
    "estimator": "estimator (the gradient guess and how its JVPs are combined)",
    "optimizer": "optimizer and training length",
    "run": "run (seed, device, bookkeeping)",
}

FLAGS: dict[str, tuple[str, str]] = {
    "dataset": ("data", "dataset: {dataset}"),
    "data_dir": ("data", "folder with real datasets' files"),
    "augment": ("data", "on-the-fly augmentation for image sets (true/false)"),
    "model": ("model", "model: {model}"),
    "depth": ("model", "mlp: hidden layers (default 3); vit: encoder blocks (default 6)"),
    "width": ("model", "mlp: hidden width (default 128); vit: token width (default 256)"),
    "bias": ("model", "mlp: use biases (true/false)"),
    "norm": ("model", "resnet18: {norm} (default group; batch needs --jvp batch)"),
    "stem": ("model", "resnet18: {stem} (default cifar: 3x3/1; imagenet: 7x7/2 + max-pool)"),
    "heads": ("model", "vit: attention heads (default 4)"),
    "mlp_dim": ("model", "vit: MLP width (default 512)"),
    "patch_size": ("model", "vit: patch size (default 4)"),
    "sites": (
        "estimator",
        "where tangents go: module-name patterns, comma-separated "
        "(e.g. 'layer?,head'; default every Linear and Conv)",
    ),
    "guess": ("estimator", "gradient guess: {guess}"),
    "tangents": ("estimator", "tangents per step (k)"),
    "aggregate": ("estimator", "how the k JVPs combine: {aggregate}"),
    "scope": ("estimator", "projection scope: {scope} (with --aggregate projection)"),
    "jvp": (
        "estimator",
        "{jvp}: one JVP per example along all sites' tangents, one per site, "
        "or one for the whole batch (models that couple examples, e.g. BatchNorm)",
    ),
    "chunk_size": ("estimator", "push at most this many tangents at once (bounds memory)"),
    "low_memory": ("estimator", "activity guesses: redraw tangents in a second pass (true/false)"),
    "rank": ("estimator", "wperp: kept singular directions k, or 'full' (needs --solver svd)"),
    "solver": ("estimator", "wperp: {solver}"),
    "power_iterations": ("estimator", "wperp randomized: subspace iterations before the apply"),
    "oversample": ("estimator", "wperp randomized: block width beyond the rank"),
    "gram_dtype": ("estimator", "wperp randomized: {gram_dtype}"),
    "bottom": ("estimator", "wperp: bottom-k ablation (true/false; needs --solver svd)"),
    "sigma": ("estimator", "preconditioned: regulariser sigma > 0"),
    "layers": ("estimator", "downstream: number of downstream layers"),
    "sampler": ("estimator", "isotropic guesses: tangent sampler, {sampler}"),
    "normalize": ("estimator", "isotropic guesses: unit-norm tangents (true/false)"),
    "angle": ("estimator", "--sampler angle: degrees to the base tangent, in [0, 180]"),
    "max_length": ("estimator", "--sampler varying-length: maximum length L >= 1"),
    "epochs": ("optimizer", "training epochs"),
    "batch_size": ("optimizer", "minibatch size"),
    "optimizer": ("optimizer", "{optimizer}"),
    "lr": ("optimizer", "learning rate (finite, > 0)"),
    "weight_decay": ("optimizer", "weight decay (>= 0)"),
    "momentum": ("optimizer", "SGD momentum in [0, 1) (with --optimizer sgd)"),
    "seed": ("run", "random seed: model init, shuffling, tangents (0 to 2**31 - 1)"),
    "device": ("run", "torch device: cpu, cuda or cuda:N"),
    "checkpoint_every": ("run", "epochs between checkpoints"),
    "probe_every": ("run", "epochs between gradient probes against backprop (0: none)"),
    "threads": ("run", "CPU threads for torch (1: bit-reproducible, see the README)"),
    "tensorboard": ("run", "also log metrics to RUN_DIR/tensorboard (true/false; extra)"),
}


# How a default of None reads in the help.
_NONE_MEANS = {
    "data_dir": "$FORWARDGRAD_DATA, then ~/.cache/forwardgrad",
    "chunk_size": "all tangents at once",
    "rank": "10",
    "threads": "torch's, one per core",
}


def flag_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def _help(key: str, default: object) -> str:
    group_and_text = FLAGS.get(key)
    text = group_and_text[1] if group_and_text else ""
    if "{" in text:
        text = text.format(**{k: "|".join(v) for k, v in choices().items()})
    shown = _NONE_MEANS.get(key, "none") if default is None else default
    return f"{text} (default: {shown})" if text else f"(default: {shown})"


class FlagGroups:
    """The argument groups of one parser, made on first use, in :data:`GROUPS` order."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.groups: dict[str, argparse._ArgumentGroup] = {}
        for name, title in GROUPS.items():
            self.groups[name] = parser.add_argument_group(title)

    def __getitem__(self, name: str) -> argparse._ArgumentGroup:
        if name not in self.groups:
            self.groups[name] = self.parser.add_argument_group(name)
        return self.groups[name]


def add_config_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> FlagGroups:
    """One flag per TrainConfig field (not in ``skip``), grouped; plus ``--config``."""
    groups = FlagGroups(p)
    groups["run"].add_argument(
        "--config", metavar="FILE", help="TOML file with the same keys as the flags (flags win)"
    )
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for key in field_names():
        if key in skip:
            continue
        group = FLAGS.get(key, ("other options", ""))[0]
        groups[group].add_argument(
            flag_name(key),
            dest=key,
            default=None,
            metavar=key.upper(),
            help=_help(key, defaults[key]),
        )
    return groups


def guess_options_text() -> str:
    """Which flags each guess reads, for the help's constraints."""
    from .guesses import GUESSES

    lines = []
    for name, cls in GUESSES.items():
        keys = [k for k in cls.options if k in TrainConfig.GUESS_OPTION_KEYS]
        if keys:
            lines.append(f"    {name}: {' '.join(flag_name(k) for k in keys)}")
    readers = ", ".join(n for n, c in GUESSES.items() if not c.options)
    lines.append(f"    {readers}: none")
    return "\n".join(lines)
