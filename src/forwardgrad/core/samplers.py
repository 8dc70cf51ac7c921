"""Tangent samplers for isotropic guesses.

Every sampler draws k tangents in R^n for each leading batch index: shape ``(k, *batch, n)``.
Structured samplers are scaled so that each tangent has norm sqrt(n), the expected norm of a
standard Gaussian tangent, so learning rates carry over between samplers; ``normalize=True``
rescales every tangent to unit norm instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

SamplerFn = Callable[..., Tensor]


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    summary: str
    fn: SamplerFn
    # True when coordinates are drawn independently, so a tangent over several blocks of
    # coordinates (sites) can be drawn block by block with the same distribution.
    elementwise: bool = False


def normal(
    k: int, batch: tuple[int, ...], n: int, generator: torch.Generator, **_: object
) -> Tensor:
    """i.i.d. N(0, 1) entries."""
    return torch.randn(k, *batch, n, generator=generator, device=generator.device)


def rademacher(
    k: int, batch: tuple[int, ...], n: int, generator: torch.Generator, **_: object
) -> Tensor:
    """i.i.d. +-1 entries."""
    bits = torch.randint(0, 2, (k, *batch, n), generator=generator, device=generator.device)
    return bits.to(torch.get_default_dtype()) * 2 - 1


def _require_k_le_n(name: str, k: int, n: int) -> None:
    if k > n:
        raise ValueError(
            f"sampler {name!r} draws at most n = {n} mutually orthogonal tangents; got k = {k}"
        )


def orthonormal(
    k: int, batch: tuple[int, ...], n: int, generator: torch.Generator, **_: object
) -> Tensor:
    """k orthogonal tangents of norm sqrt(n): QR of a Gaussian (n, k) block per batch index."""
    _require_k_le_n("orthonormal", k, n)
    g = torch.randn(*batch, n, k, generator=generator, device=generator.device)
    q, r = torch.linalg.qr(g)
    # Fix the signs so Q is Haar-distributed rather than biased by the QR convention.
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q.movedim(-1, 0) * math.sqrt(n)


def fixed_angle(
    k: int,
    batch: tuple[int, ...],
    n: int,
    generator: torch.Generator,
    angle: float = 45.0,
    **_: object,
) -> Tensor:
    """A random base tangent and k - 1 tangents at exactly ``angle`` degrees to it.

    Each secondary tangent is rotated towards the base within the plane of the base and its own
    random direction; the tangents are not at a fixed angle to one another. ``angle=0`` gives k
    copies of the base (linearly dependent, on purpose).
    """
    if not 0.0 <= angle <= 180.0:
        raise ValueError(f"angle must be in [0, 180] degrees; got {angle}")
    g = torch.randn(k, *batch, n, generator=generator, device=generator.device)
    base = g[0] / g[0].norm(dim=-1, keepdim=True)
    rest = g[1:] - (g[1:] * base).sum(-1, keepdim=True) * base
    rest = rest / rest.norm(dim=-1, keepdim=True)
    a = math.radians(angle)
    secondary = math.cos(a) * base + math.sin(a) * rest
    return torch.cat([base.unsqueeze(0), secondary], 0) * math.sqrt(n)


def varying_length(
    k: int,
    batch: tuple[int, ...],
    n: int,
    generator: torch.Generator,
    max_length: float = 4.0,
    **_: object,
) -> Tensor:
    """k distinct random standard basis vectors, each scaled by a length drawn from U[1, L]."""
    _require_k_le_n("varying-length", k, n)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1; got {max_length}")
    dev = generator.device
    idx = torch.rand(*batch, n, generator=generator, device=dev).argsort(-1)[..., :k]  # (*batch, k)
    lengths = 1 + (max_length - 1) * torch.rand(*batch, k, generator=generator, device=dev)
    out = torch.zeros(*batch, k, n, device=dev)
    out.scatter_(-1, idx.unsqueeze(-1), lengths.unsqueeze(-1))
    return out.movedim(-2, 0)


SAMPLERS: dict[str, SamplerSpec] = {
    s.name: s
    for s in [
        SamplerSpec(
            "normal", "i.i.d. standard Gaussian entries (the default)", normal, elementwise=True
        ),
        SamplerSpec("rademacher", "i.i.d. +-1 entries", rademacher, elementwise=True),
        SamplerSpec(
            "orthonormal",
            "k orthogonal tangents of norm sqrt(n) (QR of a Gaussian block)",
            orthonormal,
        ),
        SamplerSpec(
            "angle", "k tangents at a fixed angle (degrees) to a random base tangent", fixed_angle
        ),
        SamplerSpec(
            "varying-length",
            "k orthogonal basis vectors with lengths drawn from U[1, L]",
            varying_length,
        ),
    ]
}


def sample_tangents(
    sampler: str,
    k: int,
    batch: tuple[int, ...],
    n: int,
    generator: torch.Generator,
    normalize: bool = False,
    **options: float,
) -> Tensor:
    """Draw tangents ``(k, *batch, n)`` with the named sampler; optionally unit-normalise each."""
    spec = SAMPLERS.get(sampler)
    if spec is None:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    if k < 1:
        raise ValueError(f"the number of tangents must be >= 1; got {k}")
    v = spec.fn(k, batch, n, generator, **options)
    if normalize:
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return v
