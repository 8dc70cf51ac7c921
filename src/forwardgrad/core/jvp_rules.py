"""Lean forward-mode formulas for the layers that dominate a tangent pass.

PyTorch's own forward-AD formulas are general: a convolution's JVP also convolves the input with
the weight's (zero) tangent, one more convolution per layer; ``linear`` does the same with an
extra matmul; the normalisation layers' JVPs are decompositions of a dozen elementwise passes.
In an activity-space pass the parameters never carry tangents, so the JVPs are simply

* ``linear``, ``conv1d``, ``conv2d``: the same op on the input tangent, without bias;
* ``group_norm``, ``layer_norm``: ``gamma * r * (t - mean(t) - x_hat * mean(x_hat * t))`` over
  each normalised group, with ``x_hat`` the normalised input and ``r`` its inverse standard
  deviation. The map ``x -> x_hat`` has a symmetric Jacobian, so this JVP is the layer's own
  input-gradient kernel applied to ``t`` (with unit scale), then scaled by ``gamma``: one fused
  kernel instead of a dozen passes;
* ``scaled_dot_product_attention`` without dropout: the closed-form JVP of softmax attention
  (see :class:`_Attention`), with the fused kernels for the primal.

:class:`LeanForwardAD` routes those calls (only those whose weights carry no tangent and whose
input does) to ``autograd.Function``s with these JVPs; everything else, weight-space passes
included, keeps PyTorch's formula. Each formula is tested against PyTorch's own JVP.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


def _tangent(t) -> Tensor | None:
    return fwAD.unpack_dual(t).tangent if isinstance(t, Tensor) else None


class _Linear(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # no zero tangents for the parameters
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def jvp(ctx, x_t, *_):
        (weight,) = ctx.saved_tensors
        return F.linear(x_t, weight)


class _Conv(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(conv, x, weight, bias, stride, padding, dilation, groups):
        return conv(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # no zero tangents for the parameters
        ctx.conv, ctx.settings = inputs[0], inputs[4:]
        ctx.save_for_forward(inputs[2])

    @staticmethod
    def jvp(ctx, _, x_t, *__):
        (weight,) = ctx.saved_tensors
        return ctx.conv(x_t, weight, None, *ctx.settings)


class _GroupNorm(torch.autograd.Function):
    """``F.group_norm`` (its own kernel, so the primal is bit-identical) with the lean JVP."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, groups, weight, bias, eps):
        b, c = x.shape[:2]
        hw = x[0, 0].numel()
        out, mean, rstd = torch.native_group_norm(x, weight, bias, b, c, hw, groups, eps)
        return out, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # no zero tangents for the parameters
        ctx.groups = inputs[1]
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_forward(inputs[0], inputs[2], output[1], output[2])

    @staticmethod
    def jvp(ctx, x_t, *_):
        x, weight, mean, rstd = ctx.saved_tensors
        b, c = x.shape[:2]
        # x -> x_hat has a symmetric Jacobian, so its JVP is its VJP: one fused kernel.
        t = torch.ops.aten.native_group_norm_backward(
            x_t, x, mean, rstd, None, b, c, x[0, 0].numel(), ctx.groups, [True, False, False]
        )[0]
        if weight is not None:
            t = t.mul_(weight.reshape((1, c) + (1,) * (x_t.dim() - 2)))  # t is ours: in place
        return t, None, None


class _LayerNorm(torch.autograd.Function):
    """``F.layer_norm`` (its own kernel) with the lean JVP."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, shape, weight, bias, eps):
        return torch.native_layer_norm(x, shape, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # no zero tangents for the parameters
        ctx.ndims = len(inputs[1])
        ctx.mark_non_differentiable(output[1], output[2])
        ctx.save_for_forward(inputs[0], inputs[2], output[1], output[2])

    @staticmethod
    def jvp(ctx, x_t, *_):
        x, weight, mean, rstd = ctx.saved_tensors
        shape = x.shape[x.dim() - ctx.ndims :]
        t = torch.ops.aten.native_layer_norm_backward(
            x_t, x, shape, mean, rstd, None, None, [True, False, False]
        )[0]
        return (t if weight is None else t.mul_(weight)), None, None


class _Attention(torch.autograd.Function):
    """``F.scaled_dot_product_attention`` (without dropout) with its JVP in closed form:
    ``S = q k^T s``, ``P = softmax(S)``, ``O = P v``;
    ``O_t = P_t v + P v_t`` with ``P_t = P (S_t - rowsum(P S_t))``, ``S_t = (q_t k^T + q k_t^T) s``.
    The primal uses PyTorch's fused kernels (which have no forward-mode formula)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, mask, is_causal, scale):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(
            [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        ):
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale
            )

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.set_materialize_grads(False)  # no zero tangents for the parameters
        q, k, v, mask, is_causal, scale = inputs
        ctx.is_causal, ctx.scale, ctx.has_mask = is_causal, scale, mask is not None
        ctx.save_for_forward(q, k, v, *([mask] if mask is not None else []))

    @staticmethod
    def jvp(ctx, q_t, k_t, v_t, *_):
        q, k, v, *mask = ctx.saved_tensors
        # contiguous once: batched matmuls would otherwise copy strided operands every time
        q, v, k_T = q.contiguous(), v.contiguous(), k.transpose(-2, -1).contiguous()
        scale = ctx.scale if ctx.scale is not None else q.shape[-1] ** -0.5
        scores = (q @ k_T) * scale
        if ctx.is_causal:
            t, s = scores.shape[-2:]
            causal = torch.ones(t, s, dtype=torch.bool, device=q.device).tril(s - t)
            scores = scores.masked_fill(~causal, float("-inf"))
        if mask:
            m = mask[0]
            scores = scores.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else scores + m
        probs = torch.softmax(scores, -1)
        scores_t = None
        if q_t is not None:
            scores_t = q_t.contiguous() @ k_T
        if k_t is not None:
            term = q @ k_t.transpose(-2, -1).contiguous()
            scores_t = term if scores_t is None else scores_t + term
        out_t = None
        if scores_t is not None:
            scores_t = scores_t * scale
            probs_t = probs * (scores_t - (probs * scores_t).sum(-1, keepdim=True))
            out_t = probs_t @ v
        if v_t is not None:
            term = probs @ v_t.contiguous()
            out_t = term if out_t is None else out_t + term
        return out_t


def _bind_attention(
    query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
):
    return query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa


def _bind_conv(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    return input, weight, bias, stride, padding, dilation, groups


def _bind_group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    return input, num_groups, weight, bias, eps


def _bind_layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    return input, tuple(normalized_shape), weight, bias, eps


_CONVS = {torch.conv1d: F.conv1d, torch.conv2d: F.conv2d, F.conv1d: F.conv1d, F.conv2d: F.conv2d}


# Each takes (func, args, kwargs) of a call and returns its lean result, or None where the lean
# formula does not apply (PyTorch's own then runs).


def _lean_linear(func, args, kwargs):
    x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
    b = args[2] if len(args) > 2 else kwargs.get("bias")
    return _Linear.apply(x, w, b) if _lean(x, w, b) else None


def _lean_conv(func, args, kwargs):
    bound = _bind_conv(*args, **kwargs)
    return _Conv.apply(_CONVS[func], *bound) if _lean(*bound[:3]) else None


def _lean_group_norm(func, args, kwargs):
    x, groups, w, b, eps = _bind_group_norm(*args, **kwargs)
    return _GroupNorm.apply(x, groups, w, b, eps)[0] if _lean(x, w, b) else None


def _lean_layer_norm(func, args, kwargs):
    x, shape, w, b, eps = _bind_layer_norm(*args, **kwargs)
    return _LayerNorm.apply(x, shape, w, b, eps)[0] if _lean(x, w, b) else None


def _lean_attention(func, args, kwargs):
    q, k, v, mask, dropout, causal, scale, gqa = _bind_attention(*args, **kwargs)
    carries = any(_tangent(t) is not None for t in (q, k, v))
    if carries and dropout == 0.0 and not gqa and _tangent(mask) is None:
        return _Attention.apply(q, k, v, mask, causal, scale)
    return None


_LEAN_CALLS = {
    F.linear: _lean_linear,
    torch._C._nn.linear: _lean_linear,
    **dict.fromkeys(_CONVS, _lean_conv),
    F.group_norm: _lean_group_norm,
    F.layer_norm: _lean_layer_norm,
    F.scaled_dot_product_attention: _lean_attention,
}


class LeanForwardAD(TorchFunctionMode):
    """Routes linear, conv1d/2d, group_norm, layer_norm and attention calls whose input carries
    a tangent and whose parameters do not to the lean formulas above (see the module
    docstring)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        lean = _LEAN_CALLS.get(func)
        out = None if lean is None else lean(func, args, kwargs)
        return func(*args, **kwargs) if out is None else out


def _lean(x, *params) -> bool:
    """The lean formula applies: the input carries a tangent, no parameter does."""
    return _tangent(x) is not None and all(_tangent(p) is None for p in params)
