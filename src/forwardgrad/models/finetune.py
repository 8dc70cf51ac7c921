"""Fine-tuning a chosen part of a model: weights from a user's state-dict file, LoRA adapters on
chosen Linear layers, and the trainable subset by parameter name.

Forward gradients store no activations for a backward pass, so training a small subset of a
large frozen model (prompt tokens, LoRA adapters, biases) costs the memory of one forward pass.
The estimators give frozen parameters (``requires_grad=False``) no tangent and no gradient, and
an optimizer leaves parameters without a gradient untouched, so they stay bit-identical.

* :func:`load_weights`: a ``state_dict`` saved with ``torch.save`` (read with
  ``weights_only=True``: no code in the file runs), every key and shape checked;
* :class:`LoRALinear` / :func:`add_lora`: ``base(x) + (alpha / r) up(down(x))`` with the base
  frozen, ``down`` random and ``up`` zero (Hu et al. 2021), so the model starts as it was;
* :func:`train_only`: ``requires_grad`` on the parameters matching shell-style name patterns
  (``*.bias``, ``head.*``), off on every other.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

DEFAULT_RANK = 4
DEFAULT_ALPHA = 8.0


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-r update: ``base(x) + scale * up(down(x))``
    with ``scale = alpha / rank``; ``(..., in) -> (..., out)``. ``down`` and ``up`` are plain
    Linear layers (no bias), so the engine forms their gradients with the Linear rule."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1; got {rank}")
        self.base = base.requires_grad_(False)
        self.down = nn.Linear(base.in_features, rank, bias=False)
        self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.zeros_(self.up.weight)
        self.scale = float(alpha) / rank
        like = base.weight
        self.to(device=like.device, dtype=like.dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.up(self.down(x)) * self.scale


def _names_matching(names: Sequence[str], pattern: str) -> list[str]:
    return [n for n in names if fnmatch.fnmatchcase(n, pattern)]


def _no_match(what: str, pattern: str, names: Sequence[str]) -> ValueError:
    examples = list(names)[:8]
    return ValueError(f"{what} pattern {pattern!r} matches nothing; names look like {examples}")


def add_lora(model: nn.Module, patterns: Sequence[str], rank: int, alpha: float) -> list[str]:
    """Wrap every ``nn.Linear`` whose module name matches one of ``patterns`` in a
    :class:`LoRALinear`; returns the adapters' parameter names. A pattern that matches no
    ``nn.Linear`` (other modules it matches are left alone) is an error naming what it does
    match."""
    modules = {n: m for n, m in model.named_modules() if n}
    chosen: list[str] = []
    for pattern in patterns:
        hits = _names_matching(list(modules), pattern)
        if not hits:
            raise _no_match("lora", pattern, list(modules))
        linear = [n for n in hits if type(modules[n]) is nn.Linear]
        if not linear:
            kinds = [f"{n!r} ({type(modules[n]).__name__})" for n in hits[:4]]
            raise ValueError(
                f"lora pattern {pattern!r} matches no nn.Linear, only {', '.join(kinds)}; "
                "LoRA adapters go on nn.Linear layers"
            )
        chosen += [n for n in linear if n not in chosen]
    names_of: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        names_of.setdefault(id(m), []).append(n)
    for name in chosen:
        if len(names_of[id(modules[name])]) > 1:
            raise ValueError(
                f"lora: {name!r} is one nn.Linear registered under several names "
                f"({names_of[id(modules[name])]}); wrapping one name would untie them"
            )
    adapters = []
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(modules[name], rank, alpha))
        adapters += [f"{name}.down.weight", f"{name}.up.weight"]
    return adapters


def train_only(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Train exactly the parameters whose names match one of ``patterns`` (every other gets
    ``requires_grad=False``); returns their names. A pattern matching nothing is an error."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not _names_matching(names, pattern):
            raise _no_match("trainable", pattern, names)
    trained = []
    for name, p in model.named_parameters():
        keep = any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        p.requires_grad_(keep)
        if keep:
            trained.append(name)
    return trained


def load_weights(model: nn.Module, path: str | Path, new: Sequence[str] = ()) -> None:
    """Load the ``state_dict`` saved in ``path`` into ``model``. Every key the model has must be
    in the file with its shape, except those matching ``new`` (parameters the fine-tuning adds,
    such as prompt tokens), and the file may hold no other key: each mismatch is an error
    naming the keys."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"init_from {str(path)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt file, a pickle of code, or not a torch file at all
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"init_from {str(path)!r} is not a state_dict saved with torch.save "
            f"(loaded with weights_only=True): {first}"
        ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a forwardgrad checkpoint.pt
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"init_from {str(path)!r} does not hold a state_dict of tensors")
    own = model.state_dict()
    missing = [k for k in own if k not in state and not any(fnmatch.fnmatchcase(k, p) for p in new)]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    for what, keys in (("lacks", missing), ("has keys the model does not", unexpected)):
        if keys:
            raise ValueError(f"init_from {str(path)!r} {what}: {keys[:6]}")
    if shapes:
        raise ValueError(f"init_from {str(path)!r}: shapes differ: {shapes[:4]}")
    model.load_state_dict(state, strict=False)


def tune_only(
    model: nn.Module,
    trainable: Sequence[str] = (),
    lora: Sequence[str] = (),
    rank: int = DEFAULT_RANK,
    alpha: float = DEFAULT_ALPHA,
    also: Sequence[str] = (),
) -> None:
    """LoRA adapters on the ``lora`` modules, then train only the ``trainable`` patterns, the
    adapters and ``also`` (parameters the model added for fine-tuning, e.g. prompt tokens).
    With none of these, every parameter stays as it was."""
    adapters = add_lora(model, lora, rank, alpha) if lora else []
    if trainable or adapters or also:
        train_only(model, [*trainable, *also, *adapters])
