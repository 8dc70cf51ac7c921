"""The lean forward-mode formulas equal PyTorch's own JVPs (and leave the primal bit-identical),
for one tangent and vectorised over several, and they do less work."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from forwardgrad.core.jvp_rules import LeanForwardAD

LAYERS = {
    "linear-tokens": (lambda: nn.Linear(6, 5), (4, 3, 6)),
    "linear-no-bias": (lambda: nn.Linear(6, 5, bias=False), (4, 6)),
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, padding=1), (4, 3, 8)),
    "conv2d-strided": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1), (4, 3, 8, 8)),
    "conv2d-grouped-same": (lambda: nn.Conv2d(4, 4, 3, padding="same", groups=2), (4, 4, 8, 8)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), (4, 4, 5, 5)),
    "groupnorm-no-affine": (lambda: nn.GroupNorm(2, 4, affine=False), (4, 4, 5)),
    "layernorm": (lambda: nn.LayerNorm(6), (4, 3, 6)),
    "layernorm-2d": (lambda: nn.LayerNorm((3, 6)), (4, 3, 6)),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_formulas_match_pytorch(name, dtype):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make().to(dtype)
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(-1, 1)
    x = torch.randn(shape, dtype=dtype)
    t = torch.randn_like(x)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    with torch.no_grad():
        ref_out, ref_t = jvp(layer, (x,), (t,))
        with LeanForwardAD():
            out, lean_t = jvp(layer, (x,), (t,))
            many = vmap(lambda u: jvp(layer, (x,), (u,))[1])(torch.stack([t, -2 * t, 0 * t]))
    assert torch.equal(out, ref_out)  # the primal is PyTorch's own kernel
    torch.testing.assert_close(lean_t, ref_t, **tol)
    torch.testing.assert_close(many, torch.stack([ref_t, -2 * ref_t, 0 * ref_t]), **tol)


@pytest.mark.parametrize(
    "causal,mask", [(False, None), (True, None), (False, "bool"), (False, "add")]
)
@pytest.mark.parametrize("which", ["qkv", "q", "v"])
def test_attention_formula_matches_the_math_kernel(causal, mask, which):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    tq, tk, tv = (torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64) for _ in range(3))
    m = None
    if mask == "bool":
        m = torch.rand(5, 5, generator=g) > 0.3
        m[:, 0] = True
    elif mask == "add":
        m = torch.randn(5, 5, generator=g, dtype=torch.float64)

    def f(a, b, c):
        return F.scaled_dot_product_attention(a, b, c, attn_mask=m, is_causal=causal)

    primals = {"qkv": (q, k, v), "q": (q,), "v": (v,)}[which]
    tangents = {"qkv": (tq, tk, tv), "q": (tq,), "v": (tv,)}[which]

    def g_fn(*ins):
        full = {"qkv": ins, "q": (ins[0], k, v), "v": (q, k, ins[0])}[which]
        return f(*full)

    with torch.no_grad():
        with sdpa_kernel(SDPBackend.MATH):
            ref_out, ref_t = jvp(g_fn, primals, tangents)
        with LeanForwardAD():
            out, lean_t = jvp(g_fn, primals, tangents)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lean_t, ref_t, rtol=1e-9, atol=1e-11)


def test_weight_tangents_keep_pytorchs_formula():
    """With a tangent on the weight the lean path is not taken (and the result stays exact)."""
    x, w = torch.randn(4, 6, dtype=torch.float64), torch.randn(5, 6, dtype=torch.float64)
    tx, tw = torch.randn_like(x), torch.randn_like(w)
    with torch.no_grad():
        ref = jvp(F.linear, (x, w), (tx, tw))[1]
        with LeanForwardAD():
            lean = jvp(F.linear, (x, w), (tx, tw))[1]
    torch.testing.assert_close(lean, ref)


def _convolutions(fn) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    names = ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward", "aten::thnn_conv2d")
    return sum(e.count for e in prof.key_averages() if e.key in names)


def test_the_lean_convolution_jvp_skips_the_weight_tangent_convolution():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x, t = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        default = _convolutions(lambda: jvp(conv, (x,), (t,)))

        def lean():
            with LeanForwardAD():
                jvp(conv, (x,), (t,))

        assert _convolutions(lean) == 2 < default  # primal + tangent; PyTorch's formula: 3
