"""Cosine and relative norm of a gradient estimate against the true gradient."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def cosine_similarity(a: Tensor, b: Tensor) -> float:
    """Cosine between two tensors viewed as flat vectors."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def relative_norm(estimate: Tensor, true: Tensor) -> float | None:
    """``||estimate|| / ||true||`` of flat vectors; None when the true gradient is zero."""
    true_norm = float(true.double().norm())
    return float(estimate.double().norm()) / true_norm if true_norm > 0 else None


def agreement(estimates: Sequence[Tensor], trues: Sequence[Tensor]) -> dict[str, float | None]:
    """Cosine and relative norm of several tensors taken together as one vector."""
    import torch

    est = torch.cat([t.flatten().double() for t in estimates])
    true = torch.cat([t.flatten().double() for t in trues])
    return {"cosine": cosine_similarity(est, true), "rel_norm": relative_norm(est, true)}


def parameter_groups(model: nn.Module, params) -> list[dict]:
    """The trained parameters grouped by the module that owns them (a layer's weight and bias).

    Returns ``[{"layer": i, "name": module name, "shape": its weight's shape or None,
    "params": {short name: parameter}}]`` in ``named_parameters()`` order, over ``params`` only.
    """
    wanted = set(params)
    groups: dict[str, dict] = {}
    for name, p in model.named_parameters():
        if p not in wanted:
            continue
        owner, _, short = name.rpartition(".")
        group = groups.setdefault(owner, {"name": owner, "params": {}})
        group["params"][short] = p
    out = []
    for i, group in enumerate(groups.values()):
        weight = group["params"].get("weight")
        shape = list(weight.shape) if weight is not None else None
        out.append({"layer": i, "name": group["name"], "shape": shape, "params": group["params"]})
    return out


def gradient_agreement(
    model: nn.Module,
    estimate: dict[nn.Parameter, Tensor],
    true: dict[nn.Parameter, Tensor],
) -> dict:
    """Cosine and relative norm of a weight-gradient estimate, globally and per layer.

    Args:
        model: the model (for its layers and parameter names).
        estimate, true: ``{parameter: gradient}`` as :meth:`Estimator.estimate` and
            :func:`weight_gradients` return them, over the same trained parameters.

    Returns:
        ``{"cosine", "rel_norm", "layers": [{"layer", "name", "shape", "cosine", "rel_norm",
        "params": {"weight": {"cosine", "rel_norm"}, "bias": {...}}}]}``; a layer is a module
        owning parameters, its numbers treat them as one vector, the global ones all trained
        parameters.
    """
    if set(estimate) != set(true):
        raise ValueError(
            "the estimate and the true gradient cover different parameters "
            f"({len(estimate)} vs {len(true)} tensors); compare estimates of the same model"
        )
    layers = []
    for group in parameter_groups(model, true):
        ps = group["params"]
        row: dict = {"layer": group["layer"], "name": group["name"], "shape": group["shape"]}
        row.update(agreement([estimate[p] for p in ps.values()], [true[p] for p in ps.values()]))
        row["params"] = {kind: agreement([estimate[p]], [true[p]]) for kind, p in ps.items()}
        layers.append(row)
    params = list(true)
    out: dict = agreement([estimate[p] for p in params], [true[p] for p in params])
    out["layers"] = layers
    return out
