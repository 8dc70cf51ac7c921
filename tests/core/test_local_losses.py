"""Local losses (Ren et al. 2022): stop-gradients cut values and tangents between blocks, each
site's tangents are scaled by the JVP of the losses it reaches, and every estimator follows
the objective "the output's loss plus every local loss" (unbiased ones without bias, by
Monte-Carlo within 5 standard errors; projection exactly at full rank)."""

import pytest
import torch
import torch.nn.functional as F
from next_layer_cases import tiny_localmixer
from torch import nn
from torch.func import jvp

from forwardgrad import Estimator
from forwardgrad.core.layers import LocalLoss, StopGradient, local_scores, objective
from forwardgrad.diagnostics.contexts import site_contexts


class TwoHeads(nn.Module):
    """A local head on the hidden layer and no stop-gradient: the first layer reaches both
    losses, the head its own, the rest the output's."""

    def __init__(self):
        super().__init__()
        self.hidden = nn.Linear(4, 6)
        self.act = nn.Tanh()
        self.head = nn.Linear(6, 3)
        self.local = LocalLoss()
        self.mid = nn.Linear(6, 5)
        self.act2 = nn.ReLU()
        self.out = nn.Linear(5, 3)

    def forward(self, x):
        h = self.act(self.hidden(x))
        self.local(self.head(h))
        return self.out(self.act2(self.mid(h)))


def batch(model_input_shape, b=5, classes=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, *model_input_shape, generator=g, dtype=dtype)
    return x, torch.randint(0, classes, (b,), generator=g)


def true_objective_gradient(model, x, y):
    """Autograd of the mean over examples of the output's loss plus every local loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    with local_scores(model) as scores:
        out = model(x)
    total = objective(lambda z, t: F.cross_entropy(z, t, reduction="none"), out, y, scores)
    grads = torch.autograd.grad(total.sum(1).mean(), params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def flat(grads):
    return torch.cat([g.reshape(-1) for g in grads])


def estimates(model, x, y, guess, n, **options):
    """n independent estimates (each step draws new tangents), flat: (n, parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    est = Estimator(model, guess, seed=0, **options)
    rows = []
    for _ in range(n):
        _, grads = est.estimate(x, y)
        rows.append(flat([grads.get(p, torch.zeros_like(p)) for p in params]))
    return torch.stack(rows)


def assert_mean_is(samples, expected, sigmas=5.0):
    mean = samples.mean(0)
    se = samples.std(0) / samples.shape[0] ** 0.5
    worst = float(((mean - expected).abs() / (se + 1e-12)).max())
    assert ((mean - expected).abs() <= sigmas * se + 1e-9).all(), worst


def test_stop_gradient_cuts_values_and_tangents_where_no_grad_does_not():
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    y = StopGradient()(x * 2)
    assert not y.requires_grad  # no value gradient
    cut = jvp(lambda v: StopGradient()(v * 2), (x.detach(),), (torch.ones(3, dtype=x.dtype),))
    assert torch.equal(cut[1], torch.zeros(3, dtype=x.dtype))

    def under_no_grad(v):
        with torch.no_grad():
            return v * 2

    kept = jvp(under_no_grad, (x.detach(),), (torch.ones(3, dtype=x.dtype),))
    assert torch.equal(kept[1], torch.full((3,), 2.0, dtype=x.dtype))  # the trap


def test_each_block_reaches_only_its_own_local_loss():
    torch.manual_seed(0)
    model = tiny_localmixer().double()
    x, y = batch((1, 8, 8))
    engine = Estimator(model, "activation").engine_for(x, y)
    reach = dict(zip(engine.layout.keys, engine.reach))
    assert engine.losses == 3  # the readout's, then one per block
    for key, losses in reach.items():
        expected = {0} if key == "readout" else {int(key.split(".")[1]) + 1}
        assert losses == expected, key
    # and in a pass: tangents at one site move only the losses it reaches, exactly
    for i, key in enumerate(engine.layout.keys):

        def only_here(ctx, i=i):
            if ctx.index != i:
                return None
            return torch.randn(2, *ctx.preact.shape, dtype=ctx.preact.dtype)

        with torch.no_grad():
            res = engine.run(x, y, Estimator(model).loss_fn, 2, only_here)
        moved = {int(j) for j in (res.loss_jvps.abs().amax((0, 1)) > 0).nonzero().flatten()}
        assert moved == reach[key], key


def test_without_stop_gradients_a_site_reaches_every_later_loss():
    torch.manual_seed(0)
    model = TwoHeads().double()
    x, y = batch((4,))
    engine = Estimator(model, "activation").engine_for(x, y)
    assert dict(zip(engine.layout.keys, engine.reach)) == {
        "hidden": {0, 1},
        "head": {1},
        "mid": {0},
        "out": {0},
    }


@pytest.mark.parametrize("guess", ["activation", "activation-masked"])
def test_activity_perturbation_with_local_losses_is_unbiased_for_the_local_objective(guess):
    torch.manual_seed(0)
    model = tiny_localmixer().double()
    x, y = batch((1, 8, 8), b=2)
    expected = flat(true_objective_gradient(model, x, y))
    assert_mean_is(estimates(model, x, y, guess, 200, tangents=2), expected)


@pytest.mark.parametrize("guess", ["activation", "weight"])
def test_sites_reaching_several_losses_are_unbiased_too(guess):
    torch.manual_seed(0)
    model = TwoHeads().double()
    x, y = batch((4,))
    expected = flat(true_objective_gradient(model, x, y))
    assert_mean_is(estimates(model, x, y, guess, 1500), expected)


def test_backprop_follows_the_local_objective_and_reports_the_outputs_loss():
    torch.manual_seed(0)
    model = tiny_localmixer().double()
    x, y = batch((1, 8, 8))
    loss, grads = Estimator(model, "backprop").estimate(x, y)
    params = list(model.parameters())
    expected = true_objective_gradient(model, x, y)
    for p, g in zip(params, expected):
        assert torch.allclose(grads.get(p, torch.zeros_like(p)), g, atol=1e-12)
    assert torch.allclose(loss, F.cross_entropy(model(x), y))
    # the first block's weights follow its own local loss only
    block0 = model.blocks[0].channel.weight
    with local_scores(model) as scores:
        model(x)
    first = F.cross_entropy(
        scores[0][1].reshape(5, 2, 3, 4).permute(0, 1, 3, 2).reshape(-1, 3), y.repeat_interleave(8)
    )
    (own,) = torch.autograd.grad(first, block0)
    assert torch.allclose(grads[block0], own, atol=1e-12)


def test_projection_at_full_rank_is_the_exact_local_gradient():
    torch.manual_seed(0)
    model = TwoHeads().double()
    x, y = batch((4,), b=3)
    # the output's loss is reached by hidden, mid and out: 6 + 5 + 3 entries per example
    est = Estimator(model, "activation", tangents=14, aggregate="projection")
    _, grads = est.estimate(x, y)
    for p, g in zip(model.parameters(), true_objective_gradient(model, x, y)):
        assert torch.allclose(grads[p], g, atol=1e-9)


def test_the_low_memory_mode_gives_the_same_local_estimate():
    torch.manual_seed(0)
    model = tiny_localmixer().double()
    x, y = batch((1, 8, 8))
    _, base = Estimator(model, "activation", tangents=2, seed=3).estimate(x, y)
    _, other = Estimator(model, "activation", tangents=2, seed=3, low_memory=True).estimate(x, y)
    assert set(base) == set(other)
    for p in base:
        assert torch.allclose(base[p], other[p], atol=1e-10)


@pytest.mark.parametrize("mode", [{"jvp": "site"}, {"chunk_size": 1, "tangents": 2}])
def test_per_site_jvps_and_chunks_are_unbiased_with_local_losses(mode):
    torch.manual_seed(0)
    model = TwoHeads().double()
    x, y = batch((4,))
    expected = flat(true_objective_gradient(model, x, y))
    assert_mean_is(estimates(model, x, y, "activation", 1000, **mode), expected)


def test_the_residual_route_is_the_blocks_own_jacobian():
    """The group layer's W~ (norm, ReLU, residual add, head) against autograd through the
    block's own forward, with the block's input as the residual."""
    torch.manual_seed(0)
    model = tiny_localmixer().double()
    x, y = batch((1, 8, 8), b=2)
    est = Estimator(model, "wt")
    est.estimate(x, y)
    ctx = next(
        c for c in site_contexts(est._engine, x, y, est.loss_fn) if c.key == "blocks.1.group"
    )
    block = model.blocks[1]
    with torch.no_grad():
        block_input = model.cut(model.blocks[0](model.patches(x)))

    def head_of(s):
        h = block_input + block.group_act(block.group_norm(s))
        return model.heads[1](h)

    full = torch.autograd.functional.jacobian(head_of, ctx.preact)
    b = x.shape[0]
    full = full.reshape(b, -1, b, ctx.preact[0].numel())
    ref = torch.stack([full[i, :, i] for i in range(b)])
    assert torch.allclose(ctx.next_layer.dense(), ref, atol=1e-10)


def test_self_sharpening_refuses_local_heads_unless_asked():
    from forwardgrad.core.sites import ModelNotSupportedError

    model = tiny_localmixer()
    x, y = batch((1, 8, 8), dtype=torch.float32)
    with pytest.raises(ModelNotSupportedError, match="heads of local losses"):
        Estimator(model, "self-sharpening").estimate(x, y)
    est = Estimator(model, "self-sharpening", fallback="activation")
    est.estimate(x, y)
    assert {"heads.0", "heads.1"} <= set(est.guess.fallback_sites)


class Written(nn.Module):
    """A local loss whose scores reach it through an in-place write into a view of a buffer
    (``how="view"``: the view is taken before the write), or are changed after it read them."""

    def __init__(self, how):
        super().__init__()
        self.how = how
        self.a, self.b, self.out = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
        self.local = LocalLoss()

    def forward(self, x):
        s = self.a(x)
        buf = torch.zeros(x.shape[0], 6, dtype=x.dtype)
        if self.how == "after":
            scores = self.local(self.b(x))
            scores += s
            return self.out(x)
        view = buf[:, :3]
        if self.how == "copy":
            buf[:, :3].copy_(s)
        else:
            buf[:, :3] = s
        self.local(view)
        return self.out(x)


@pytest.mark.parametrize("how", ["copy", "view"])
def test_reach_follows_in_place_writes_into_shared_memory(how):
    torch.manual_seed(0)
    model = Written(how).double()
    x, y = batch((4,), b=3)
    engine = Estimator(model, "activation").engine_for(x, y)
    assert dict(zip(engine.layout.keys, engine.reach))["a"] == {1}
    est = Estimator(model, "activation", tangents=9, aggregate="projection")
    _, grads = est.estimate(x, y)
    for p, g in zip(model.parameters(), true_objective_gradient(model, x, y)):
        assert torch.allclose(grads.get(p, torch.zeros_like(p)), g, atol=1e-9)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
        self.local = LocalLoss()

    def forward(self, x):
        self.local(self.head(x))
        return self.a(x), self.b(x)


def test_every_tensor_of_a_tuple_output_reaches_the_output_loss():
    model = TwoOutputs()
    x, y = batch((4,), dtype=torch.float32)

    def loss_fn(out, t):
        return (
            F.cross_entropy(out[0] + out[1], t, reduction="none")
            if isinstance(out, tuple)
            else F.cross_entropy(out, t, reduction="none")
        )

    engine = Estimator(model, "activation", loss_fn=loss_fn).engine_for(x, y)
    assert dict(zip(engine.layout.keys, engine.reach)) == {"head": {1}, "a": {0}, "b": {0}}


class InsideSite(nn.Module):
    """A LocalLoss inside a module that is a site of its own (it owns a gain)."""

    def __init__(self):
        super().__init__()
        self.head, self.local = nn.Linear(4, 3), LocalLoss()
        self.gain = nn.Parameter(torch.ones(4))

    def forward(self, x):
        h = x * self.gain
        self.local(self.head(h))
        return h


def test_unsupported_local_loss_placements_are_refused():
    from forwardgrad.core.sites import ModelNotSupportedError

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.block, self.out = InsideSite(), nn.Linear(4, 3)

        def forward(self, x):
            return self.out(self.block(x))

    x, y = batch((4,), dtype=torch.float32)
    with pytest.raises(ModelNotSupportedError, match="inside site 'block'"):
        Estimator(Net(), "activation").estimate(x, y)
    with pytest.raises(ModelNotSupportedError, match="modified in place after"):
        Estimator(Written("after"), "activation").estimate(x, y)


def test_a_broadcasting_residual_add_is_no_route():
    class Broadcast(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)

        def forward(self, x):  # (B, 5, 4)
            s = self.act(self.a(x[:, :1]))  # (B, 1, 4), added into all 5 tokens
            return self.b(s + x).mean(1)

    est = Estimator(Broadcast(), "wt", fallback="activation")
    x = torch.randn(3, 5, 4)
    est.estimate(x, torch.randint(0, 3, (3,)))
    assert est.guess.fallback_sites == ["a"]


def test_the_oracle_follows_the_local_objective():
    from forwardgrad.core.oracle import weight_gradients

    torch.manual_seed(0)
    model = TwoHeads().double()
    x, y = batch((4,))
    loss, grads = weight_gradients(model, x, y, Estimator(model).loss_fn)
    for p, g in zip(model.parameters(), true_objective_gradient(model, x, y)):
        assert torch.allclose(grads[p], g, atol=1e-12)
    assert loss == pytest.approx(float(F.cross_entropy(model(x), y)))
