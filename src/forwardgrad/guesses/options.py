"""The options a guess may read, each declared once (default, help, allowed range).

:class:`~forwardgrad.training.config.TrainConfig` takes these fields as they are, so each is a
TOML key and a command-line flag too; each guess lists the ones it reads in its
``option_names``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config_fields import Rule, option, positive


@dataclass
class GuessOptions:
    """Every option any guess reads; each guess class names the ones it uses."""

    rank: int | None = option(
        10,
        "estimator",
        "wperp: kept singular directions k, or 'full' (needs --solver svd)",
        minimum=1,
        or_also="full",
    )
    solver: str = option("randomized", "estimator", "wperp: {choices}")
    power_iterations: int = option(
        0, "estimator", "wperp randomized: subspace iterations before the apply", minimum=0
    )
    oversample: int = option(
        6, "estimator", "wperp randomized: block width beyond the rank", minimum=0
    )
    gram_dtype: str = option("float32", "estimator", "wperp randomized: {choices}")
    ns_refresh: int = option(
        50, "estimator", "wperp newton-schulz: steps between sigma_k estimates", minimum=1
    )
    bottom: bool = option(
        False, "estimator", "wperp: bottom-k ablation (true/false; needs --solver svd)"
    )
    sigma: float = option(
        1e-5, "estimator", "preconditioned: regulariser sigma > 0", rule=positive()
    )
    layers: int = option(1, "estimator", "downstream: number of downstream layers", minimum=1)
    fallback: str = option(
        "none",
        "estimator",
        "next-layer guesses: at sites that do not reach a next linear layer, {choices} "
        "('activation': isotropic tangents there, listed in the run's summary)",
    )
    sampler: str = option("normal", "estimator", "isotropic guesses: tangent sampler, {choices}")
    normalize: bool = option(
        False, "estimator", "isotropic guesses: unit-norm tangents (true/false)"
    )
    angle: float = option(
        45.0,
        "estimator",
        "--sampler angle: degrees to the base tangent, in [0, 180]",
        rule=Rule(lambda v: 0 <= v <= 180, "a number of degrees in [0, 180]"),
    )
    max_length: float = option(
        4.0,
        "estimator",
        "--sampler varying-length: maximum length L >= 1",
        rule=Rule(lambda v: v >= 1, "a finite number >= 1"),
    )
