"""From an activity estimate to parameter gradients: one rule per module type, all here.

Every rule takes one site call (its module, its inputs as the pass saw them), a cotangent ``c``
shaped like the site's activity (an estimate of ``d(sum_b l_b)/d(output)``) and a scale (1/B for
the mean loss), and forms the parameters' gradients ``scale * (d output / d theta)^T c`` locally:

* ``nn.Linear`` (``linear``): ``c^T x`` summed over every leading dimension (batch, tokens),
  and ``sum c`` for the bias, one ``addmm`` straight into ``.grad``.
* ``nn.Conv1d``/``nn.Conv2d`` (``conv``): the convolution's own weight-gradient kernel
  (``aten.convolution_backward`` with only the weight and bias outputs requested).
* anything else (``local-vjp``): affine norms, embeddings, ``nn.MultiheadAttention``, user
  blocks, subclasses with their own ``forward``, parametrized layers, layers with hooks: a VJP
  of that one module, re-run on its saved inputs with ``torch.func.functional_call``. Its memory
  is that module's own activations (one block's, for a block site), never the network's.

The closed-form rules apply only where they are exactly the module's derivative: the module is
of exactly that type (or its ``forward`` is the base class's), its parameters are its own plain
``weight``/``bias``, it has no hooks and no parametrization, and (for conv) zero padding given as
numbers. Everything else falls to ``local-vjp``, which is exact for any module.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call, vjp
from torch.utils._pytree import tree_flatten

from .context import SiteCall
from .state import get_random_state, set_random_state


class GradSink:
    """Receives each parameter gradient as soon as a rule forms it (``alpha * g``)."""

    def add(self, param: nn.Parameter, grad: Tensor, alpha: float = 1.0) -> None:
        raise NotImplementedError

    def addmm(self, param: nn.Parameter, a: Tensor, b: Tensor, alpha: float = 1.0) -> None:
        """``alpha * a @ b``; sinks that accumulate in place fuse it into one ``addmm_``."""
        self.add(param, a @ b, alpha)


class CollectGrads(GradSink):
    """Sums the gradients into a dict ``{parameter: gradient}``."""

    def __init__(self) -> None:
        self.grads: dict[nn.Parameter, Tensor] = {}

    def add(self, param: nn.Parameter, grad: Tensor, alpha: float = 1.0) -> None:
        g = self.grads.get(param)
        if g is None:
            self.grads[param] = grad.mul(alpha) if alpha != 1.0 else grad.clone()
        else:
            g.add_(grad, alpha=alpha)


class AccumulateIntoGrad(GradSink):
    """Adds the gradients to ``param.grad``, as ``backward`` does, with no gradient-sized
    temporary for Linear weights (one ``addmm_``)."""

    def add(self, param: nn.Parameter, grad: Tensor, alpha: float = 1.0) -> None:
        if param.grad is None:
            param.grad = grad.mul(alpha) if alpha != 1.0 else grad.detach().clone()
        else:
            param.grad.add_(grad, alpha=alpha)

    def addmm(self, param: nn.Parameter, a: Tensor, b: Tensor, alpha: float = 1.0) -> None:
        if param.grad is None:
            param.grad = (a @ b).mul_(alpha)
        else:
            param.grad.addmm_(a, b, alpha=alpha)


class InPlaceModifiedError(RuntimeError):
    """A site's saved input was overwritten in place after the site used it."""


def _check_unmodified(call: SiteCall) -> None:
    tensors = [a for a in (call.args or ()) if isinstance(a, Tensor)]
    for t, version in zip(tensors, call.versions):
        if t._version != version:
            raise InPlaceModifiedError(
                f"the input of site {call.site.name!r} was modified in place after the site "
                "used it (an in-place op such as `x += y` or ReLU(inplace=True) on a tensor "
                "that module read), so its gradient cannot be formed from it; make that op "
                "out of place"
            )


def _trained(call: SiteCall, param: Tensor | None) -> bool:
    """True when ``param`` is one of the parameters this site forms gradients for."""
    return param is not None and any(p is param for p in call.site.params.values())


class Rule:
    """Base: ``apply(call, cotangent, scale, sink)`` hands every gradient of ``call.site.params``
    to ``sink``."""

    name = ""

    def apply(self, call: SiteCall, cotangent: Tensor, scale: float, sink: GradSink) -> None:
        raise NotImplementedError


def _own_weight_and_bias(module: nn.Module, params: dict) -> bool:
    own = {id(p) for p in module._parameters.values() if p is not None}
    return all(id(p) in own for p in params.values()) and set(module._parameters) <= {
        "weight",
        "bias",
    }


def _plain(module: nn.Module, base: type[nn.Module]) -> bool:
    from torch.nn.utils import parametrize

    return (
        isinstance(module, base)
        and type(module).forward is base.forward
        and not module._forward_hooks
        and not module._forward_pre_hooks
        and not parametrize.is_parametrized(module)
    )


class LinearRule(Rule):
    name = "linear"

    def applies(self, module: nn.Module, params: dict) -> bool:
        return _plain(module, nn.Linear) and _own_weight_and_bias(module, params)

    def apply(self, call: SiteCall, cotangent: Tensor, scale: float, sink: GradSink) -> None:
        _check_unmodified(call)
        module = call.site.module
        x = call.input
        c2 = cotangent.reshape(-1, cotangent.shape[-1])
        w, b = module.weight, module.bias
        if _trained(call, w):
            sink.addmm(w, c2.t(), x.reshape(-1, x.shape[-1]), scale)
        if _trained(call, b):
            sink.add(b, c2.sum(0), scale)


class ConvRule(Rule):
    name = "conv"
    types: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d)

    def applies(self, module: nn.Module, params: dict) -> bool:
        return (
            any(
                _plain(module, t) and type(module)._conv_forward is t._conv_forward
                for t in self.types
            )
            and _own_weight_and_bias(module, params)
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )

    def apply(self, call: SiteCall, cotangent: Tensor, scale: float, sink: GradSink) -> None:
        _check_unmodified(call)
        m = call.site.module
        w, b = m.weight, m.bias
        want_w, want_b = _trained(call, w), _trained(call, b)
        n = len(m.kernel_size)
        _, grad_w, grad_b = torch.ops.aten.convolution_backward(
            cotangent,
            call.input,
            w,
            [w.shape[0]] if want_b else None,
            list(m.stride),
            list(m.padding),
            list(m.dilation),
            False,
            [0] * n,
            m.groups,
            [False, want_w, want_b],
        )
        if want_w:
            sink.add(w, grad_w, scale)
        if want_b:
            sink.add(b, grad_b, scale)


def activity_leaves(output) -> list[Tensor]:
    """The floating-point tensors of a module's output (its activity), in pytree order."""
    leaves, _ = tree_flatten(output)
    return [t for t in leaves if isinstance(t, Tensor) and t.is_floating_point()]


def split_activity(flat: Tensor, shapes: list[torch.Size]) -> list[Tensor]:
    """Undo the concatenation of several activity leaves: ``(B, n) -> [(B, ...), ...]``."""
    if len(shapes) == 1:
        return [flat.reshape(shapes[0])]
    sizes = [int(torch.Size(s[1:]).numel()) for s in shapes]
    return [p.reshape(s) for p, s in zip(flat.split(sizes, dim=1), shapes)]


class LocalVJPRule(Rule):
    """A VJP of one module (or block) on its saved inputs, for any parametrised module."""

    name = "local-vjp"

    def apply(self, call: SiteCall, cotangent: Tensor, scale: float, sink: GradSink) -> None:
        module, params = call.site.module, call.site.params
        _check_unmodified(call)
        local = _local_names(module, params)
        primals = {local[name]: p.detach() for name, p in params.items() if p.requires_grad}
        if not primals:
            return

        def activity(ps: dict) -> list[Tensor]:
            out = functional_call(module, ps, call.args, call.kwargs or {})
            return activity_leaves(out)

        now = None
        if call.rng_state is not None:  # replay the random draws (dropout) the pass saw
            now = get_random_state(call.rng_state[0])
            set_random_state(call.rng_state)
        try:
            outs, pullback = vjp(activity, primals)
        finally:
            if now is not None:
                set_random_state(now)
        shapes = [o.shape for o in outs]
        (grads,) = pullback(split_activity(cotangent, shapes))
        for name, p in params.items():
            if p.requires_grad:
                sink.add(p, grads[local[name]], scale)


def _local_names(module: nn.Module, params: dict) -> dict[str, str]:
    """Full parameter name -> the name ``functional_call`` on ``module`` knows it by."""
    by_id = {id(p): n for n, p in module.named_parameters(remove_duplicate=False)}
    out = {}
    for name, p in params.items():
        local = by_id.get(id(p))
        if local is None:
            from .sites import ModelNotSupportedError

            raise ModelNotSupportedError(
                f"parameter {name!r} is used in the forward of {type(module).__name__} but is "
                "not one of its parameters, so its gradient cannot be formed locally there; "
                "register it on that module (or a submodule of it)"
            )
        out[name] = local
    return out


LINEAR = LinearRule()
CONV = ConvRule()
LOCAL_VJP = LocalVJPRule()


def rule_for(module: nn.Module, params: dict) -> Rule:
    """The rule for a site: the closed form where exact, else the local VJP."""
    for rule in (LINEAR, CONV):
        if rule.applies(module, params):
            return rule
    return LOCAL_VJP
