"""Registry of gradient guesses: a name maps to one small class in this package."""

from __future__ import annotations

from .base import Guess
from .downstream import Downstream, SelfSharpening
from .isotropic import ActivationPerturbation, MaskedActivationPerturbation, WeightPerturbation
from .jacobian import Preconditioned, WPerp, WTranspose
from .mixing import ActivationMixing
from .options import GuessOptions


class Backprop(Guess):
    """The oracle: the exact gradient by reverse-mode AD. Not a guess; listed for symmetry."""

    name = "backprop"
    summary = "the exact gradient by backpropagation (oracle and baseline)"
    paper = "Rumelhart et al. 1986"
    option_names: tuple[str, ...] = ()
    space = "exact"


GUESSES: dict[str, type[Guess]] = {
    cls.name: cls
    for cls in [
        WeightPerturbation,
        ActivationPerturbation,
        MaskedActivationPerturbation,
        ActivationMixing,
        WTranspose,
        WPerp,
        Preconditioned,
        Downstream,
        SelfSharpening,
        Backprop,
    ]
}


def make_guess(name: str, options: GuessOptions | None = None) -> Guess:
    """Build the guess registered under ``name``; unknown names list the known ones."""
    cls = GUESSES.get(name)
    if cls is None:
        raise ValueError(f"unknown guess {name!r}; choose one of {sorted(GUESSES)}")
    return cls(options)


__all__ = ["GUESSES", "Guess", "GuessOptions", "make_guess"]
