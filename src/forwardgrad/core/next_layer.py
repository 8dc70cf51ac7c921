"""The map from a site's activity to the next site's: what the next-layer guesses are built from.

A site call *reaches the next layer* when its output ``s_i (B, *S)`` flows, one consuming module
at a time, through *pass-through* modules (elementwise activations, max pooling, ``Flatten``)
into a plain ``nn.Linear`` (any leading dimensions: tokens, patches) or ``nn.Conv1d/2d``. The
next activity is then ``s_{i+1} = f(P(phi(s_i)))`` with f affine, and its Jacobian per example is
the linear map

    W~_b = J_f  J_P(b)  diag(phi'(s_i^b))        (B, *S) -> (B, *S')

``J_P(b)`` is max pooling's selection of each window's largest entry (per example, like the
mask), a reshape for ``Flatten``, and a layer norm's Jacobian at the example
(``nn.LayerNorm``, :class:`~forwardgrad.core.layers.ChannelLayerNorm`): per normalised group
``diag(gamma) (1/sigma) (I - 11^T/n - x^ x^T/n)``, whose transpose is as cheap. A residual add
on the way (``s + r``, r made before the site) is the identity for ``s``; it may only be
followed by the next layer itself (what follows it otherwise depends on r's value, which the
route does not keep). :class:`NextPath` is that route, found once (from the
traced pass, or from a plain MLP's chain); :class:`NextLayer` is its linearization at one
batch's primal values. It applies ``W~`` and ``W~^T`` to blocks of vectors without forming a
dense matrix: ``W~^T`` is the next convolution's transpose (``convolution_backward`` for the
input only) or ``y @ W`` for a Linear, the pooling's scatter and the mask. A dense ``(B, m, n)``
Jacobian is formed only on request and only for small layers (the exact solvers).

The per-example subspace of a conv site is over all its positions at once: ``W~_b`` maps the
whole ``C x H x W`` activity of example b to the whole next activity, as the per-example
gradient ``W~_b^T dl_b/ds_{i+1}`` does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ChannelLayerNorm
from .rules import CONV, LINEAR
from .sites import ELEMENTWISE_TYPES, ModelNotSupportedError

POOL_TYPES: tuple[type[nn.Module], ...] = (nn.MaxPool1d, nn.MaxPool2d)
RESHAPE_TYPES: tuple[type[nn.Module], ...] = (nn.Flatten,)
NORM_TYPES: tuple[type[nn.Module], ...] = (nn.LayerNorm, ChannelLayerNorm)


class ResidualAdd(nn.Module):
    """A step of a route, not a layer of any model: ``s + r`` where r does not depend on s, whose
    Jacobian for s is the identity (``forward`` is the identity on s)."""

    def forward(self, h: Tensor) -> Tensor:
        return h


# Dense per-example Jacobians with more than this many entries (n * max(m, n), per example,
# so the refusal does not depend on the batch size) are refused: an exact solver on them
# would need gigabytes for a batch; the matrix-free solver does not.
DENSE_LIMIT = 1 << 20


def _no_hooks(module: nn.Module) -> bool:
    return not module._forward_hooks and not module._forward_pre_hooks


def is_transparent(module: nn.Module, same: bool = False) -> bool:
    """A module with no hooks that hands back its input unchanged: Identity, dropout that is
    off (eval mode or p = 0), or (``same``: it returned the very tensor it was given) a
    Flatten with nothing to flatten."""
    if not _no_hooks(module):
        return False
    if type(module) is nn.Identity or (same and type(module) is nn.Flatten):
        return True
    dropout = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
    return type(module) in dropout and (not module.training or module.p == 0)


def is_pass_through(module: nn.Module) -> bool:
    """An elementwise activation, a max pool, a Flatten or a layer norm, exactly of that type,
    with no hooks."""
    kinds = ELEMENTWISE_TYPES + POOL_TYPES + RESHAPE_TYPES + NORM_TYPES
    return type(module) in kinds and _no_hooks(module)


def is_linear_map(module: nn.Module) -> bool:
    """A plain Linear or Conv1d/2d (zero padding given as numbers): an affine map whose linear
    part and transpose are known in closed form."""
    own = {n: p for n, p in module.named_parameters(recurse=False)}
    return LINEAR.applies(module, own) or CONV.applies(module, own)


@dataclass
class NextPath:
    """How one site call reaches the next linear layer.

    Attributes:
        between: the pass-through modules on the way, in order.
        target: the Linear or Conv layer they feed; None when ``between`` leads to the model's
            output instead (the network's last layer followed by activations).
        then: the target call's own path (for guesses through several layers), or the reason it
            has none (a string); None when the target's output is the model's output.
    """

    between: list[nn.Module]
    target: nn.Module | None
    then: NextPath | str | None = None

    @property
    def reaches_layer(self) -> bool:
        return self.target is not None

    def at(
        self, preact: Tensor, mask: Tensor | None = None, outputs: Tensor | None = None
    ) -> NextLayer:
        """The linearization at activity ``preact (B, *S)``. ``mask``/``outputs``: ``phi'(s)``
        and ``phi(s)`` when the caller has them and every module between is elementwise."""
        return NextLayer(self, preact, mask, outputs)

    def layers(self, count: int) -> tuple[list[NextPath], NextPath | None]:
        """This path and the following ones, up to ``count`` (fewer at the network's end), and
        the path after the last of them (None where there is none). ValueError with the reason
        when a layer on the way does not reach the next."""
        out: list[NextPath] = [self]
        while len(out) < count and isinstance(out[-1].then, NextPath | str):
            nxt = out[-1].then
            if isinstance(nxt, str):
                raise ValueError(f"layer {len(out) + 1} down: {nxt}")
            if not nxt.reaches_layer:  # the network ends after these activations
                break
            out.append(nxt)
        last = out[-1].then
        last = last if isinstance(last, NextPath) else None
        steps = [m for p in out for m in p.between] + (last.between if last is not None else [])
        added = [i for i, m in enumerate(steps) if isinstance(m, ResidualAdd)]
        after = (
            [m for m in steps[added[0] + 1 :] if not isinstance(m, ResidualAdd)] if added else []
        )
        if after:
            raise ValueError(
                f"a residual add is followed by {type(after[0]).__name__} within "
                f"{len(out)} layer(s): its derivative there depends on the residual's value"
            )
        return out, last

    def downstream(self, layers: int):
        """The map ``s_i -> x_{i+l+1}`` through the next ``layers`` layers: each one's
        pass-through modules and affine map, then the pass-through modules after the last
        (those leading to the next layer, or to the model's output; where the last layer's
        output goes anywhere else the map ends at its activity; it is shorter at the network's
        end), on detached parameters. ValueError when a layer on the
        way does not reach the next."""
        paths, last = self.layers(layers)

        def f(s: Tensor) -> Tensor:
            h = s
            for path in paths:
                for m in path.between:
                    h = m(h)
                h = affine(path.target, h)
            for m in last.between if last is not None else ():
                h = m(h)
            return h

        return f


def _conv_dims(module: nn.Module) -> int:
    return len(module.kernel_size)


def affine(module: nn.Module, h: Tensor) -> Tensor:
    """The target layer's own affine map on ``h`` with detached parameters (no hooks run)."""
    w = module.weight.detach()
    b = module.bias.detach() if module.bias is not None else None
    if isinstance(module, nn.Linear):
        return F.linear(h, w, b)
    conv = F.conv1d if _conv_dims(module) == 1 else F.conv2d
    return conv(h, w, b, module.stride, module.padding, module.dilation, module.groups)


class _Piece:
    """One linear factor of W~: ``apply`` on ``(N, B, *in)``, ``adjoint`` on ``(N, B, *out)``."""

    def apply(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError


@dataclass
class _Scale(_Piece):
    factor: Tensor  # (B, *S): phi'(s)

    def apply(self, t: Tensor) -> Tensor:
        return t * self.factor

    adjoint = apply


@dataclass
class _Select(_Piece):
    """Max pooling at fixed windows: each output takes the input entry at ``index``."""

    index: Tensor  # (B, C, *out_spatial), into the flattened input spatial positions
    in_shape: tuple[int, ...]  # (C, *in_spatial)

    def apply(self, t: Tensor) -> Tensor:
        n, b = t.shape[:2]
        flat = t.reshape(n, b, self.in_shape[0], -1)
        idx = self.index.reshape(1, b, self.in_shape[0], -1).expand(n, -1, -1, -1)
        return flat.gather(3, idx).view(n, *self.index.shape)

    def adjoint(self, y: Tensor) -> Tensor:
        n, b = y.shape[:2]
        c = self.in_shape[0]
        spatial = torch.Size(self.in_shape[1:]).numel()
        out = y.new_zeros(n, b, c, spatial)
        idx = self.index.reshape(1, b, c, -1).expand(n, -1, -1, -1)
        out.scatter_add_(3, idx, y.reshape(n, b, c, -1))  # overlapping windows add up
        return out.view(n, b, *self.in_shape)


@dataclass
class _Reshape(_Piece):
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    def apply(self, t: Tensor) -> Tensor:
        return t.reshape(*t.shape[:2], *self.out_shape)

    def adjoint(self, y: Tensor) -> Tensor:
        return y.reshape(*y.shape[:2], *self.in_shape)


@dataclass
class _Matmul(_Piece):
    weight: Tensor  # (d_out, d_in), on the last dimension

    def apply(self, t: Tensor) -> Tensor:
        return t @ self.weight.t()

    def adjoint(self, y: Tensor) -> Tensor:
        return y @ self.weight


@dataclass
class _Conv(_Piece):
    module: nn.Module
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...] = field(init=False)

    def __post_init__(self) -> None:
        m = self.module
        spatial = [
            (size + 2 * p - d * (k - 1) - 1) // s + 1
            for size, p, d, k, s in zip(
                self.in_shape[1:], m.padding, m.dilation, m.kernel_size, m.stride
            )
        ]
        self.out_shape = (m.out_channels, *spatial)

    def apply(self, t: Tensor) -> Tensor:
        m = self.module
        conv = F.conv1d if _conv_dims(m) == 1 else F.conv2d
        flat = t.reshape(-1, *self.in_shape)
        y = conv(flat, m.weight.detach(), None, m.stride, m.padding, m.dilation, m.groups)
        return y.view(*t.shape[:2], *self.out_shape)

    def adjoint(self, y: Tensor) -> Tensor:
        m = self.module
        w = m.weight.detach()
        flat = y.reshape(-1, *self.out_shape)
        dims = _conv_dims(m)
        (grad_in, _, _) = torch.ops.aten.convolution_backward(
            flat,
            flat.new_empty(1).expand(flat.shape[0], *self.in_shape),
            w,
            None,
            list(m.stride),
            list(m.padding),
            list(m.dilation),
            False,
            [0] * dims,
            m.groups,
            [True, False, False],
        )
        return grad_in.view(*y.shape[:2], *self.in_shape)


class NormJacobian(_Piece):
    """A layer norm's Jacobian at one batch: per normalised group of n entries,
    ``diag(gamma) (1/sigma) (I - 11^T/n - x^ x^T/n)`` (the middle factor is symmetric)."""

    def __init__(self, norm: nn.Module, h: Tensor) -> None:
        self.norm, self.shape = norm, tuple(h.shape[1:])  # h: the norm's input (B, *S)
        if isinstance(norm, nn.LayerNorm):
            self.size = int(torch.Size(norm.normalized_shape).numel())
            self.gamma = norm.weight.detach().reshape(-1) if norm.weight is not None else None
        else:
            self.size, self.gamma = self.shape[0] // norm.groups, None
        centred = self._grouped(h.unsqueeze(0))
        centred = centred - centred.mean(-1, keepdim=True)
        self.inv_std = torch.rsqrt((centred * centred).mean(-1, keepdim=True) + norm.eps)
        self.normalized = centred * self.inv_std  # x^, (1, B, M, n)

    def _grouped(self, t: Tensor) -> Tensor:
        """``(N, B, *S) -> (N, B, M, n)``: one row per normalised group of n entries."""
        n, b = t.shape[:2]
        if isinstance(self.norm, nn.LayerNorm):  # the trailing dimensions
            return t.reshape(n, b, -1, self.size)
        t = t.reshape(n, b, self.norm.groups, self.size, -1).transpose(3, 4)
        return t.reshape(n, b, -1, self.size)  # (N, B, groups * positions, C / groups)

    def _ungrouped(self, t: Tensor) -> Tensor:
        n, b = t.shape[:2]
        if not isinstance(self.norm, nn.LayerNorm):
            t = t.reshape(n, b, self.norm.groups, -1, self.size).transpose(3, 4)
        return t.reshape(n, b, *self.shape)

    def _centre(self, t: Tensor) -> Tensor:
        x = self.normalized
        t = t - t.mean(-1, keepdim=True) - x * (x * t).mean(-1, keepdim=True)
        return t * self.inv_std

    def apply(self, t: Tensor) -> Tensor:
        t = self._centre(self._grouped(t))
        return self._ungrouped(t if self.gamma is None else t * self.gamma)

    def adjoint(self, y: Tensor) -> Tensor:
        y = self._grouped(y)
        return self._ungrouped(self._centre(y if self.gamma is None else y * self.gamma))


def _pool_piece(module: nn.Module, h: Tensor) -> tuple[Tensor, _Piece]:
    pool = F.max_pool1d if isinstance(module, nn.MaxPool1d) else F.max_pool2d
    out, index = pool(
        h,
        module.kernel_size,
        module.stride,
        module.padding,
        module.dilation,
        ceil_mode=module.ceil_mode,
        return_indices=True,
    )
    return out, _Select(index, tuple(h.shape[1:]))


class NextLayer:
    """``W~_b`` (and its transpose) at one batch's primal values; see the module docstring.

    Attributes:
        in_shape, out_shape: per-example shapes of the site's activity and the next one's.
        inputs: the next layer's input ``P(phi(s))`` (B, ...).
        weight, mask: when ``W~_b = W diag(mask_b)`` exactly (a Linear next layer on ``(B, d)``
            activities through elementwise modules only), the dense W and the mask; else None.
    """

    def __init__(
        self, path: NextPath, preact: Tensor, mask: Tensor | None, outputs: Tensor | None
    ) -> None:
        from .chain import elementwise_derivative

        self.path = path
        self.batch_size = preact.shape[0]
        self.in_shape = tuple(preact.shape[1:])
        pieces: list[_Piece] = []
        h = preact
        elementwise = all(type(m) in ELEMENTWISE_TYPES for m in path.between)
        if elementwise and mask is not None and outputs is not None:
            pieces.append(_Scale(mask))
            h = outputs
        else:
            for m in path.between:
                if type(m) in ELEMENTWISE_TYPES:
                    h, d = elementwise_derivative([m], h)
                    pieces.append(_Scale(d))
                elif isinstance(m, POOL_TYPES):
                    h, piece = _pool_piece(m, h)
                    pieces.append(piece)
                elif isinstance(m, NORM_TYPES):
                    pieces.append(NormJacobian(m, h))
                    h = m(h)
                elif isinstance(m, ResidualAdd):
                    # the value of the next layer's input lacks r; no step after this one reads it
                    continue
                else:
                    out = m(h)
                    pieces.append(_Reshape(tuple(h.shape[1:]), tuple(out.shape[1:])))
                    h = out
        self.inputs = h
        target = path.target
        self.weight = self.mask = None
        if isinstance(target, nn.Linear):
            w = target.weight.detach()
            pieces.append(_Matmul(w))
            self.out_shape = (*h.shape[1:-1], w.shape[0])
            if elementwise and preact.dim() == 2:
                self.weight = w
                scales = [p.factor for p in pieces if isinstance(p, _Scale)]
                self.mask = _product(scales, preact)
        else:
            conv = _Conv(target, tuple(h.shape[1:]))
            pieces.append(conv)
            self.out_shape = conv.out_shape
        self._pieces = _merged(pieces)

    @property
    def dtype(self) -> torch.dtype:
        return self.inputs.dtype

    @property
    def in_features(self) -> int:
        return int(torch.Size(self.in_shape).numel())

    @property
    def out_features(self) -> int:
        return int(torch.Size(self.out_shape).numel())

    def apply(self, t: Tensor) -> Tensor:
        """``W~ t``: ``(N, B, *in_shape) -> (N, B, *out_shape)``."""
        for p in self._pieces:
            t = p.apply(t)
        return t

    def adjoint(self, y: Tensor) -> Tensor:
        """``W~^T y``: ``(N, B, *out_shape) -> (N, B, *in_shape)``."""
        for p in reversed(self._pieces):
            y = p.adjoint(y)
        return y

    def noise(self, k: int, generator: torch.Generator, dtype: torch.dtype) -> Tensor:
        """``eps ~ N(0, I)`` shaped like the next activity: ``(k, B, *out_shape)``."""
        shape = (k, self.batch_size, *self.out_shape)
        return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)

    def gram_rows(self, z: Tensor) -> Tensor:
        """``W~_b^T W~_b z_b`` for blocks of vectors as rows: ``(B, p, n) -> (B, p, n)``."""
        b, p, n = z.shape
        t = z.transpose(0, 1).reshape(p, b, *self.in_shape)
        y = self.adjoint(self.apply(t))
        return y.reshape(p, b, n).transpose(0, 1)

    def dense(self, what: str = "this guess") -> Tensor:
        """The per-example Jacobian ``(B, m, n)``, for small layers only (refused past
        :data:`DENSE_LIMIT` entries, naming the sizes)."""
        b, m, n = self.batch_size, self.out_features, self.in_features
        if self.weight is not None:
            return self.weight.unsqueeze(0) * self.mask.unsqueeze(1)
        if n * max(m, n) > DENSE_LIMIT:
            raise ModelNotSupportedError(
                f"{what} needs W~ as a dense {m} x {n} matrix per example (and {n} x {n} to "
                f"solve), more than the {DENSE_LIMIT:,} entries allowed; the layer is too large "
                "for the exact solvers"
            )
        like = self.inputs
        eye = torch.eye(n, dtype=like.dtype, device=like.device)
        basis = eye.view(n, 1, *self.in_shape).expand(n, b, *self.in_shape)
        cols = self.apply(basis)  # (n, B, *out)
        return cols.reshape(n, b, m).permute(1, 2, 0)


def _product(factors: list[Tensor], like: Tensor) -> Tensor:
    out = None
    for f in factors:
        out = f if out is None else out * f
    return out if out is not None else torch.ones_like(like)


def _merged(pieces: list[_Piece]) -> list[_Piece]:
    """Adjacent masks as one (one multiply per apply instead of several)."""
    out: list[_Piece] = []
    for p in pieces:
        if isinstance(p, _Scale) and out and isinstance(out[-1], _Scale):
            out[-1] = _Scale(out[-1].factor * p.factor)
        else:
            out.append(p)
    return out
