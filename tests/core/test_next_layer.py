"""The route from a site to the next linear layer, and W~ applied without a dense matrix.

W~_b = J_f J_P(b) diag(phi'(s_b)) from the traced route (elementwise activations, max pooling,
Flatten, then a Linear or Conv) against the Jacobian autograd computes for the same map, in
float64 and float32, on conv nets (stride, padding, dilation, groups, overlapping pools), a
Conv1d net and a token-wise Linear; the transpose by <W~ t, y> = <t, W~^T y>; and the reasons
given where a site has no route.
"""

import pytest
import torch
from next_layer_cases import CASES, contexts, reference_jacobian
from torch import nn

from forwardgrad import Estimator
from forwardgrad.core.next_layer import DENSE_LIMIT
from forwardgrad.core.sites import ModelNotSupportedError


def test_routes_through_pooling_and_flatten_are_found():
    _, est, _ = contexts("conv2d")
    routes = [
        None if not hasattr(p, "between") else [type(m).__name__ for m in p.between]
        for p in est._engine.paths
    ]
    assert routes == [["ReLU", "MaxPool2d"], ["Tanh"], ["SiLU", "Flatten"], None]
    _, est, _ = contexts("token-wise")
    assert [type(m).__name__ for m in est._engine.paths[0].between] == ["GELU"]
    assert "goes to mean()" in est._engine.paths[1]
    assert est.guess.fallback_sites == ["mlp.2"]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_w_tilde_and_its_transpose_match_autograd(name, dtype):
    _, _, ctxs = contexts(name, dtype)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    checked = 0
    for ctx in ctxs:
        if ctx.next_layer is None:
            continue
        nl = ctx.next_layer
        ref = reference_jacobian(ctx)
        dense = nl.dense()
        assert dense.dtype == dtype
        assert torch.allclose(dense, ref, atol=tol, rtol=tol), ctx.key
        # matrix-free applies on blocks of vectors agree with the dense matrix
        g = torch.Generator().manual_seed(1)
        t = torch.randn(5, nl.batch_size, *nl.in_shape, generator=g, dtype=dtype)
        y = torch.randn(5, nl.batch_size, *nl.out_shape, generator=g, dtype=dtype)
        flat_t, flat_y = t.reshape(5, nl.batch_size, -1), y.reshape(5, nl.batch_size, -1)
        applied = nl.apply(t).reshape(5, nl.batch_size, -1)
        assert torch.allclose(applied, torch.einsum("bmn,kbn->kbm", ref, flat_t), atol=tol * 10)
        back = nl.adjoint(y).reshape(5, nl.batch_size, -1)
        assert torch.allclose(back, torch.einsum("bmn,kbm->kbn", ref, flat_y), atol=tol * 10)
        inner = (applied * flat_y).sum(-1), (flat_t * back).sum(-1)
        assert torch.allclose(*inner, atol=tol * 100)
        checked += 1
    assert (
        checked
        == {"conv2d": 3, "conv1d": 2, "token-wise": 1, "layer-norm": 2, "localmixer": 5}[name]
    )


def test_sites_without_a_route_say_why():
    class Shapes(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.act = nn.ReLU(inplace=True)
            self.b = nn.Linear(4, 4)
            self.pool = nn.AvgPool1d(2)
            self.c = nn.Linear(2, 4)
            self.d = nn.Linear(4, 3)

        def forward(self, x):
            h = self.b(self.act(self.a(x)))  # a: modified in place by act
            h = self.c(self.pool(h.unsqueeze(1)).squeeze(1))  # b: a function, then AvgPool
            return self.d(h + h)  # c: added to itself (a function)

    model = Shapes()
    est = Estimator(model, "activation")
    est.estimate(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    paths = est._engine.paths
    assert paths[0] == "its output is modified in place by 'act' (inplace=True)"
    assert paths[1].startswith("its output goes to unsqueeze()")
    assert paths[2] == "its output is used 2 times (['add', 'add']), not by one module"
    assert paths[3] is None
    pooled = nn.Sequential(nn.Linear(4, 4), nn.Unflatten(1, (1, 4)), nn.AvgPool1d(2))
    est = Estimator(nn.Sequential(*pooled, nn.Flatten(), nn.Linear(2, 3)), "activation")
    est.estimate(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    assert est._engine.paths[0] == (
        "its output reaches '1' (Unflatten), which is neither a plain Linear/Conv layer nor an "
        "elementwise activation, max pool, Flatten or layer norm"
    )


def test_dense_jacobians_past_the_limit_are_refused_naming_the_sizes(monkeypatch):
    _, _, ctxs = contexts("conv2d")
    import forwardgrad.core.next_layer as nl_module

    monkeypatch.setattr(nl_module, "DENSE_LIMIT", 1000)
    with pytest.raises(ModelNotSupportedError, match=r"dense 64 x 256 matrix per example"):
        ctxs[0].next_layer.dense("wperp solver 'svd' at site '0'")
    assert DENSE_LIMIT == 1 << 20


def test_downstream_map_composes_the_layers_and_their_activations():
    model, _, ctxs = contexts("conv2d")
    s = ctxs[0].preact
    two = ctxs[0].path.downstream(2)(s)
    expected = model[4](model[3](model[2](model[1](s))))  # tanh(conv(pool(relu(s))))
    expected = model[7](model[6](model[5](expected)))  # flatten(silu(conv(...)))
    assert torch.allclose(two, expected, atol=1e-12)
    # at the network's end the map stops at the output
    three = ctxs[0].path.downstream(5)(s)
    assert torch.allclose(three, model[1:](s), atol=1e-12)


def _paths(model, x, guess="activation"):
    est = Estimator(model, guess)
    est.estimate(x, torch.zeros(len(x), dtype=torch.long))
    return est, est._engine.paths


def test_attribute_reads_that_compute_are_consumers_but_metadata_reads_are_not():
    class Residual(nn.Module):
        def __init__(self, transposed):
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4)
            self.head, self.transposed = nn.Linear(4, 3), transposed

        def forward(self, x):
            h = self.fc1(x)
            if not self.transposed:
                assert h.shape[-1] == 4 and h.dtype == x.dtype  # metadata only
                return self.head(self.fc2(self.act(h)))
            return self.head(self.fc2(self.act(h)) + h.mT.mT)  # a residual through .mT

    x = torch.randn(3, 4)
    _, paths = _paths(Residual(False), x)
    assert [type(m).__name__ for m in paths[0].between] == ["Tanh"]
    est, paths = _paths(Residual(True), x)
    assert paths[0] == "its output is used 2 times (['act', '.mT']), not by one module"
    assert est.describe()[0]["masked_by"] is None


def test_hooks_on_routing_modules_break_the_route():
    def doubles(module, args):
        return (args[0] * 2,)

    inner = nn.Sequential(nn.Tanh(), nn.Linear(4, 4))
    inner.register_forward_pre_hook(doubles)
    model = nn.Sequential(nn.Linear(4, 4), inner, nn.Linear(4, 3))
    _, paths = _paths(model, torch.randn(3, 4))
    assert paths[0].startswith("its output reaches '1' (Sequential)")
    dropout = nn.Dropout(0.3).eval()
    dropout.register_forward_pre_hook(doubles)
    model = nn.Sequential(nn.Linear(4, 4), dropout, nn.ReLU(), nn.Linear(4, 3))
    _, paths = _paths(model, torch.randn(3, 4))
    assert isinstance(paths[0], str)


def test_a_flatten_with_nothing_to_flatten_is_part_of_the_route():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Flatten(), nn.Linear(5, 3))
    _, paths = _paths(model, torch.randn(3, 4))
    # it hands back its input, so it is skipped like an Identity
    assert [type(m).__name__ for m in paths[0].between] == ["ReLU"]
    assert paths[0].target is model[3]


def test_a_pool_over_unbatched_layouts_is_refused():
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.MaxPool1d(2), nn.Linear(4, 3))
    _, paths = _paths(model, torch.randn(3, 5))
    assert "goes to '2' (MaxPool1d) with output [(2, 4)], not batched" in paths[0]
    est = Estimator(model, "wt", fallback="activation")
    est.estimate(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))
    assert est.guess.fallback_sites == ["0"]


def test_the_last_layers_activations_lead_to_the_output():
    model = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3), nn.Sigmoid())
    x = torch.randn(4, 5)
    for sites in (None, [nn.Linear]):  # the fused chain and the general engine
        est = Estimator(model, "downstream", sites=sites)
        est.estimate(x, torch.zeros(4, dtype=torch.long))
        path = est._engine.paths[0]
        assert torch.allclose(path.downstream(1)(model[0](x)), model(x))
        assert est.describe()[-1]["next_layer"] == "Sigmoid -> output"


def test_an_output_nothing_reads_is_no_output_layer_without_local_losses():
    class Unread(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.probe, self.b = (
                nn.Linear(4, 6),
                nn.ReLU(),
                nn.Linear(4, 3),
                nn.Linear(6, 3),
            )

        def forward(self, x):
            self.last_probe = self.probe(x)
            return self.b(self.act(self.a(x)))

    x, y = torch.randn(4, 4), torch.randint(0, 3, (4,))
    with pytest.raises(ModelNotSupportedError, match="site 'probe'"):
        Estimator(Unread(), "wt").estimate(x, y)
