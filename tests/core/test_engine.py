"""The general engine on any nn.Module: JVPs against torch.func.jvp and finite differences for
every supported layer type and for whole CNN / ResNet / ViT models (float64); the fused Linear
chain equals the general path; tangents are never dropped or upcast."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp

from forwardgrad import Estimator, mlp
from forwardgrad.core.chain import ChainEngine
from forwardgrad.core.engine import GeneralEngine, forward_mode_kernels
from forwardgrad.estimation import cross_entropy_per_example as ce
from forwardgrad.models import build_model

# ------------------------------------------------------------------------------ tiny models


class TokenMLP(nn.Module):
    """Linear on every token (leading dims), LayerNorm, GELU, a mean over tokens."""

    def __init__(self):
        super().__init__()
        self.up = nn.Linear(3, 6)
        self.norm = nn.LayerNorm(6)
        self.down = nn.Linear(6, 4)

    def forward(self, x):  # (B, T, 3)
        return self.down(F.gelu(self.norm(self.up(x)))).mean(1)


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 3, 3, padding=1)
        self.pool = nn.AvgPool1d(2)
        self.head = nn.Linear(3 * 4, 4)

    def forward(self, x):  # (B, 2, 8)
        return self.head(self.pool(torch.tanh(self.conv(x))).flatten(1))


class Conv2dNet(nn.Module):
    def __init__(self, norm=None):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.norm = norm or nn.GroupNorm(1, 3)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, groups=1)
        self.head = nn.Linear(4, 4)

    def forward(self, x):  # (B, 1, 6, 6)
        h = F.max_pool2d(F.relu(self.norm(self.conv1(x))), 2, ceil_mode=True)
        h = F.adaptive_avg_pool2d(F.silu(self.conv2(h)), 1).flatten(1)
        return self.head(h)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(5, 6)
        self.norm = nn.LayerNorm(6)
        self.mid = nn.Linear(6, 6)
        self.out = nn.Linear(6, 4)

    def forward(self, x):
        h = self.inp(x)
        h = h + torch.relu(self.mid(self.norm(h)))
        return self.out(h)


class SDPABlock(nn.Module):
    """Pre-norm attention with F.scaled_dot_product_attention (fused kernels lack forward AD)."""

    def __init__(self, d=8, heads=2):
        super().__init__()
        self.embed = nn.Linear(3, d)
        self.norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.head = nn.Linear(d, 4)
        self.heads = heads

    def forward(self, x):  # (B, T, 3)
        h = self.embed(x)
        b, t, d = h.shape
        q, k, v = self.qkv(self.norm(h)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return self.head(h.mean(1))


class MHABlock(nn.Module):
    """nn.MultiheadAttention (its out_proj weights are used directly, not through out_proj)."""

    def __init__(self, need_weights=False):
        super().__init__()
        self.embed = nn.Linear(3, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 4)
        self.need_weights = need_weights

    def forward(self, x):
        h = self.embed(x)
        a, w = self.attn(h, h, h, need_weights=self.need_weights)
        out = self.head((h + a).mean(1))
        return out if w is None else out + w.sum((1, 2)).unsqueeze(1)


class EmbeddingEncoder(nn.Module):
    """Token ids -> nn.Embedding -> nn.TransformerEncoderLayer -> mean -> Linear."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 8)
        self.encoder = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 4)

    def forward(self, tokens):  # (B, T) int64
        return self.head(self.encoder(self.embed(tokens)).mean(1))


def _bn_eval_net():
    net = Conv2dNet(norm=nn.BatchNorm2d(3))
    with torch.no_grad():
        net.norm.running_mean.uniform_(-0.5, 0.5)
        net.norm.running_var.uniform_(0.5, 2.0)
    return net.eval()


LAYER_MODELS = {  # name -> (model factory, input factory)
    "linear-tokens+layernorm+gelu": (TokenMLP, lambda g: torch.randn(3, 5, 3, generator=g)),
    "conv1d+avgpool+tanh": (Conv1dNet, lambda g: torch.randn(3, 2, 8, generator=g)),
    "conv2d+groupnorm+maxpool+silu": (Conv2dNet, lambda g: torch.randn(3, 1, 6, 6, generator=g)),
    "batchnorm-eval": (_bn_eval_net, lambda g: torch.randn(3, 1, 6, 6, generator=g)),
    "residual+layernorm": (Residual, lambda g: torch.randn(3, 5, generator=g)),
    "sdpa-attention": (SDPABlock, lambda g: torch.randn(3, 4, 3, generator=g)),
    "multihead-attention": (MHABlock, lambda g: torch.randn(3, 4, 3, generator=g)),
    "embedding+transformer-encoder": (
        EmbeddingEncoder,
        lambda g: torch.randint(0, 7, (3, 5), generator=g),
    ),
}


def _input(make, g, double=True):
    x = make(g)
    return x.double() if double and x.is_floating_point() else x


# ------------------------------------------------------------------------------ references


def offset_losses(model, x, y, modules):
    """``f(offsets...)``: per-example losses with ``offsets[i]`` added to the i-th site call's
    output (a plain addition, independent of the engine's dual-tensor mechanism)."""

    def f(*offsets):
        it = iter(offsets)

        def add(module, args, out):
            if isinstance(out, tuple):
                return (out[0] + next(it),) + out[1:]
            return out + next(it)

        handles = [m.register_forward_hook(add) for m in modules]
        try:
            with forward_mode_kernels():
                return ce(model(x), y)
        finally:
            for h in handles:
                h.remove()

    return f


def engine_jvps(model, x, y, tangents_for):
    """The engine's (k, B) JVPs with ``tangents_for(layout call) -> (k, B, ...)`` per call."""
    est = Estimator(model, "activation")
    engine = est.engine_for(x, y)
    tangents = [tangents_for(call) for call in engine.layout.calls]
    with torch.no_grad():
        res = engine.run(x, y, ce, tangents[0].shape[0], lambda ctx: tangents[ctx.index])
    modules = [call.site.module for call in res.calls]
    return res, tangents, modules


@pytest.mark.parametrize("name", list(LAYER_MODELS))
@pytest.mark.parametrize("k", [1, 3])
def test_layer_jvps_match_torch_func_and_finite_differences(name, k):
    make_model, make_input = LAYER_MODELS[name]
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = make_model().double()
    x = _input(make_input, g)
    y = torch.randint(0, 4, (x.shape[0],), generator=g)

    def draw(call):
        return torch.randn(k, x.shape[0], *call.shape, generator=g, dtype=torch.float64)

    res, tangents, modules = engine_jvps(model, x, y, draw)
    f = offset_losses(model, x, y, modules)
    zeros = tuple(torch.zeros_like(t[0]) for t in tangents)
    for j in range(k):
        u = tuple(t[j] for t in tangents)
        _, ref = jvp(f, zeros, u)
        torch.testing.assert_close(res.jvps[j], ref, rtol=1e-9, atol=1e-11)
        eps = 1e-6
        with torch.no_grad():
            plus = f(*(eps * t for t in u))
            minus = f(*(-eps * t for t in u))
        torch.testing.assert_close(res.jvps[j], (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(res.losses, ce(model(x), y))


@pytest.mark.parametrize(
    "name,shape,options",
    [
        ("cnn", (1, 8, 8), {}),
        ("resnet18", (1, 8, 8), {"norm": "group"}),
        ("resnet18", (3, 8, 8), {"norm": "none", "stem": "imagenet"}),
        ("vit", (1, 8, 8), {"depth": 2, "dim": 16, "mlp_dim": 32, "heads": 2}),
    ],
)
def test_whole_model_jvps_match_torch_func_and_finite_differences(name, shape, options):
    torch.manual_seed(0)
    model = build_model(name, shape, 4, **options).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (2,), generator=g)

    def draw(call):
        return torch.randn(1, 2, *call.shape, generator=g, dtype=torch.float64)

    res, tangents, modules = engine_jvps(model, x, y, draw)
    f = offset_losses(model, x, y, modules)
    u = tuple(t[0] for t in tangents)
    _, ref = jvp(f, tuple(torch.zeros_like(t) for t in u), u)
    torch.testing.assert_close(res.jvps[0], ref, rtol=1e-9, atol=1e-10)
    eps = 1e-6
    with torch.no_grad():
        fd = (f(*(eps * t for t in u)) - f(*(-eps * t for t in u))) / (2 * eps)
    torch.testing.assert_close(res.jvps[0], fd, rtol=1e-5, atol=1e-6)


def test_weight_jvps_of_any_model_match_torch_func():
    """Weight-space tangents through functional_call: the JVP of the per-example losses."""
    from torch.func import functional_call

    from forwardgrad.core.engine import weight_jvps

    torch.manual_seed(0)
    model = SDPABlock().double()
    x = torch.randn(3, 4, 3, dtype=torch.float64)
    y = torch.randint(0, 4, (3,))
    params = {n: p for n, p in model.named_parameters()}
    tangents = {n: torch.randn(2, *p.shape, dtype=torch.float64) for n, p in params.items()}
    with torch.no_grad():
        d, losses = weight_jvps(model, params, tangents, x, y, ce)
    primals = {n: p.detach() for n, p in params.items()}
    for j in range(2):
        with forward_mode_kernels():
            _, ref = jvp(
                lambda ps: ce(functional_call(model, ps, (x,)), y),
                (primals,),
                ({n: v[j] for n, v in tangents.items()},),
            )
        torch.testing.assert_close(d[j], ref, rtol=1e-10, atol=1e-12)


# -------------------------------------------------------------------- chain = general path


@pytest.mark.parametrize("aggregate", ["mean", "projection"])
def test_fused_chain_equals_the_general_path(aggregate):
    """Same model, same seed: the fast path (plain MLP) and the general engine (forced by an
    explicit sites= choice) draw the same tangents and give the same estimate."""
    torch.manual_seed(0)
    model = mlp(6, 3, depth=2, width=8).double()
    x = torch.randn(5, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (5,))
    fast = Estimator(model, "activation", tangents=3, aggregate=aggregate, seed=4)
    general = Estimator(
        model, "activation", tangents=3, aggregate=aggregate, seed=4, sites=nn.Linear
    )
    _, g_fast = fast.estimate(x, y)
    _, g_general = general.estimate(x, y)
    assert isinstance(fast.engine_for(x, y), ChainEngine)
    assert isinstance(general.engine_for(x, y), GeneralEngine)
    for p in model.parameters():
        torch.testing.assert_close(g_fast[p], g_general[p], rtol=1e-10, atol=1e-12)


def test_fast_path_only_where_exactly_equivalent():
    """A hook, a parametrization, a shared layer or a Linear subclass sends an MLP to the
    general engine (the chain would ignore them)."""

    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    cases = {
        "plain": mlp(3, 2, depth=1, width=4),
        "subclass": nn.Sequential(MyLinear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        "weight_norm": nn.Sequential(
            nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)), nn.ReLU(), nn.Linear(4, 2)
        ),
    }
    hooked = mlp(3, 2, depth=1, width=4)
    hooked[0].register_forward_hook(lambda m, i, o: o * 2)
    cases["hook"] = hooked
    shared = nn.Linear(4, 4)
    cases["shared"] = nn.Sequential(nn.Linear(3, 4), shared, nn.ReLU(), shared, nn.Linear(4, 2))
    for name, model in cases.items():
        engine = Estimator(model, "activation").engine_for(x, y)
        assert isinstance(engine, ChainEngine) == (name == "plain"), name


# ------------------------------------------------------------------------------ the traps


def test_tangents_keep_the_model_dtype():
    for dtype in (torch.float32, torch.float64):
        torch.manual_seed(0)
        model = SDPABlock().to(dtype)
        x = torch.randn(3, 4, 3, dtype=dtype)
        y = torch.randint(0, 4, (3,))
        est = Estimator(model, "activation", tangents=2)
        loss, grads = est.estimate(x, y)
        assert loss.dtype == dtype
        assert all(g.dtype == dtype for g in grads.values())
        _, estimates, _ = est.estimate_activity(x, y)
        assert all(e.dtype == dtype for e in estimates)


def test_detach_in_the_model_cuts_tangents_like_it_cuts_gradients():
    """A model that detaches a branch: the forward gradient sees what backprop sees."""

    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 4)
            self.b = nn.Linear(4, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h.detach() + 0 * h) + self.b(h).detach()

    torch.manual_seed(0)
    model = Detached().double()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randint(0, 2, (4,))
    est = Estimator(model, "activation", tangents=8, aggregate="projection")  # n = 4 + 2 + 2
    _, g = est.estimate(x, y)
    _, exact = Estimator(model, "backprop").estimate(x, y)
    for p in model.parameters():
        torch.testing.assert_close(g[p], exact[p], rtol=1e-8, atol=1e-10)
