"""Perturbation sites of any ``nn.Module``, chosen by module type, by name pattern or by block.

A *site* is a module whose output carries an activity tangent. By default every ``nn.Linear``
(any leading dimensions: tokens, patches) and every ``nn.Conv1d``/``nn.Conv2d`` is a site. A
user may choose instead (``sites=``):

* module types, e.g. ``sites=[BasicBlock]`` (block outputs, as frog places its tangents);
* name patterns over ``named_modules()``, shell-style (``fnmatch``: ``*`` also matches dots),
  e.g. ``sites="encoder.layers.*"`` or ``sites=["stem", "layer?"]``;
* any mix of the two.

Only the outermost matches count (a Linear inside a chosen block is not a site of its own). The
root module can never be a site: forming its gradient locally would be a backward pass through
the whole network. Which parameters each site owns, and the rule that turns the site's activity
estimate into their gradients, is found from one traced forward pass (``trace.py``); modules
that use parameters no chosen site covers (affine norms, embeddings, attention) become sites too.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from .rules import Rule

DEFAULT_SITE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

# Modules whose Jacobian is diagonal: their JVP is phi'(s) * t, so phi'(s) is the mask M_i that
# masked guesses use.
ELEMENTWISE_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Identity,
)

SiteSpec = str | type | Sequence[str | type] | None
"""``None`` (Linear and Conv1d/2d), a module type, a name pattern, or a sequence of them."""


class ModelNotSupportedError(ValueError):
    """The model's structure does not fit what an engine or a guess needs."""


@dataclass
class Site:
    """One perturbation site of a model.

    Attributes:
        name: the module's name in ``model.named_modules()``.
        module: the module; its output is the site's activity.
        params: the trainable parameters whose gradients this site forms, by full name
            (those used inside the module's forward, as traced).
        rule: turns an estimate of ``dL/d(output)`` into those parameters' gradients.
        chosen: True for a site the user (or the default) chose; False for one added because
            it uses parameters no chosen site covers.
        mask_module: the elementwise activation that alone consumes this site's output, if any
            (its derivative is the mask of masked guesses).
    """

    name: str
    module: nn.Module
    params: dict[str, nn.Parameter] = field(default_factory=dict)
    rule: Rule | None = None
    chosen: bool = True
    mask_module: nn.Module | None = None

    def describe(self) -> dict:
        return {
            "name": self.name,
            "module": type(self.module).__name__,
            "rule": self.rule.name if self.rule is not None else None,
            "params": list(self.params),
            "chosen": self.chosen,
            "masked_by": type(self.mask_module).__name__ if self.mask_module else None,
        }


def _spec_items(spec: SiteSpec) -> list[str | type]:
    if spec is None:
        return list(DEFAULT_SITE_TYPES)
    if isinstance(spec, (str, type)):
        return [spec]
    items = list(spec)
    if not items:
        raise ValueError("sites= is empty; give module types or name patterns (or None)")
    for item in items:
        if not isinstance(item, (str, type)) or (
            isinstance(item, type) and not issubclass(item, nn.Module)
        ):
            raise ValueError(
                f"sites= takes nn.Module types and name patterns (strings); got {item!r}"
            )
    return items


def _matches(name: str, module: nn.Module, items: list[str | type]) -> bool:
    for item in items:
        if isinstance(item, str):
            if fnmatch.fnmatchcase(name, item):
                return True
        elif isinstance(module, item):
            return True
    return False


def _is_inside(name: str, outer: str) -> bool:
    return name.startswith(outer + ".")


def select_sites(model: nn.Module, spec: SiteSpec = None) -> dict[str, nn.Module]:
    """The outermost modules matching ``spec``, by name, in ``named_modules()`` order.

    Modules inside ``parametrizations`` containers never match (they compute a parameter, not
    an activity). Raises ``ValueError`` for a malformed spec and :class:`ModelNotSupportedError`
    when a pattern names nothing or only the root.
    """
    items = _spec_items(spec)
    chosen: dict[str, nn.Module] = {}
    for name, module in model.named_modules():
        if not name or ".parametrizations." in f".{name}.":
            continue
        if any(_is_inside(name, outer) for outer in chosen):
            continue
        if _matches(name, module, items):
            chosen[name] = module
    if spec is not None:
        for item in items:
            if isinstance(item, str) and not any(
                fnmatch.fnmatchcase(n, item) for n, _ in model.named_modules() if n
            ):
                names = [n for n, _ in model.named_modules() if n][:12]
                raise ModelNotSupportedError(
                    f"site pattern {item!r} matches no module of {type(model).__name__}; "
                    f"module names look like {names}"
                )
    return chosen
