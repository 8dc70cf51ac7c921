"""Estimators on any model: unbiasedness by Monte-Carlo on a conv net and a transformer block,
exact projection at k = n, the batch-coupling check and the batch JVP mode, BatchNorm and
dropout once per step, frozen parameters, the Linear cases that used to go wrong, sites=."""

import pytest
import torch
import torch.nn.functional as F
from test_engine import Conv2dNet, EmbeddingEncoder, MHABlock, Residual, SDPABlock
from torch import nn

from forwardgrad import BatchCouplingError, Estimator, ModelNotSupportedError, mlp
from forwardgrad.core.engine import FunctionalEngine
from forwardgrad.core.rules import InPlaceModifiedError
from forwardgrad.core.state import FrozenBatchNorm
from forwardgrad.diagnostics import activity_gradients, weight_gradients
from forwardgrad.estimation import cross_entropy_per_example as ce

Z_MAX = 5.0


def z_scores(samples, expected):
    n = samples.shape[0]
    se = samples.std(0) / n**0.5 + 1e-9 * samples.abs().max()
    return (samples.mean(0) - expected).abs() / se


def _conv_batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 6, 6, generator=g, dtype=torch.float64), torch.randint(
        0, 4, (b,), generator=g
    )


def _token_batch(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 3, generator=g, dtype=torch.float64), torch.randint(
        0, 4, (b,), generator=g
    )


def mc_activity_samples(est, x, y, draws):
    """``draws`` one-tangent activity estimates per site call, (draws, B, n), in one pass."""
    engine = est.engine_for(x, y)
    est.guess.begin_step(engine.layout, x.shape[0], draws, est.generator)
    with torch.no_grad(), FrozenBatchNorm(est.model):
        res = engine.run(
            x, y, ce, draws, lambda ctx: est.guess.site_tangents(ctx, draws, est.generator)
        )
    d = res.jvps.sum(1, keepdim=True).expand_as(res.jvps) if est.jvp_mode == "batch" else res.jvps
    return [d.unsqueeze(-1) * c.tangent.flatten(2) for c in res.calls], engine


# ------------------------------------------------------------------------- unbiasedness


@pytest.mark.parametrize("model_fn,batch_fn", [(Conv2dNet, _conv_batch), (SDPABlock, _token_batch)])
def test_activation_perturbation_unbiased_on_conv_net_and_transformer_block(model_fn, batch_fn):
    torch.manual_seed(0)
    model = model_fn().double()
    x, y = batch_fn()
    est = Estimator(model, "activation", seed=1)
    samples, engine = mc_activity_samples(est, x, y, 20000)
    true = activity_gradients(model, x, y, ce, engine.sites)
    for s, g in zip(samples, true):
        assert z_scores(s, g.flatten(1)).max() < Z_MAX


@pytest.mark.parametrize("model_fn,batch_fn", [(Conv2dNet, _conv_batch), (SDPABlock, _token_batch)])
def test_weight_perturbation_unbiased_on_conv_net_and_transformer_block(model_fn, batch_fn):
    torch.manual_seed(0)
    model = model_fn().double()
    x, y = batch_fn()
    est = Estimator(model, "weight", seed=1)
    params = {n: p for n, p in model.named_parameters()}
    draws = 20000
    v = est.guess.weight_tangents(list(params.items()), draws, est.generator)
    with torch.no_grad():
        d, _ = FunctionalEngine(model).weight_jvps(params, v, x, y, ce)
    _, true = weight_gradients(model, x, y, ce)
    for name, p in params.items():
        samples = d.mean(1).view(draws, *([1] * p.dim())) * v[name]
        assert z_scores(samples.flatten(1), true[p].flatten()).max() < Z_MAX, name


def test_the_monte_carlo_check_rejects_a_biased_estimate():
    torch.manual_seed(0)
    model = Conv2dNet().double()
    x, y = _conv_batch()
    samples, engine = mc_activity_samples(Estimator(model, "activation"), x, y, 20000)
    true = activity_gradients(model, x, y, ce, engine.sites)
    assert z_scores(samples[-1] * 1.2, true[-1].flatten(1)).max() > 3 * Z_MAX


# --------------------------------------------------------------------- projection k = n


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-8), (torch.float32, 2e-3)])
def test_projection_is_exact_at_k_equal_n_on_a_small_conv_net(dtype, tol):
    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 2)
            self.head = nn.Linear(2 * 2 * 2, 3)

        def forward(self, x):
            return self.head(F.relu(self.conv(x)).flatten(1))

    torch.manual_seed(0)
    model = Small().to(dtype)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 1, 3, 3, generator=g).to(dtype)
    y = torch.randint(0, 3, (6,), generator=g)
    n = 2 * 2 * 2 + 3  # activity per example: conv output + logits
    _, est = Estimator(model, "activation", tangents=n, aggregate="projection").estimate(x, y)
    _, exact = Estimator(model.double(), "backprop").estimate(x.double(), y)
    model.to(dtype)
    for p in model.parameters():
        scale = exact[p].abs().max()
        assert ((est[p].double() - exact[p]).abs().max() / scale) < tol


# ------------------------------------------------------------------------- batch coupling


class MeanCentred(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(h - h.mean(0))


@pytest.mark.parametrize(
    "model,match",
    [
        (MeanCentred(), r"code in the forward of the root module before it calls 'b'"),
        (
            nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=0), nn.Linear(4, 2)),
            r"module '1' \(Softmax\) mixes the examples",
        ),
        (
            nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)),
            r"module '1' \(BatchNorm1d\) mixes the examples",
        ),
    ],
)
def test_batch_coupling_is_refused_naming_the_module(model, match):
    x, y = torch.randn(6, 3), torch.randint(0, 2, (6,))
    with pytest.raises(BatchCouplingError, match=match):
        Estimator(model, "activation").step(x, y)
    # weight perturbation and the batch JVP mode are derivatives of the batch loss: allowed
    Estimator(model, "weight").step(x, y)
    Estimator(model, "activation", jvp="batch").step(x, y)
    # and the check did not disturb the model (BatchNorm statistics, parameters' .grad aside)


def test_the_batchnorm_resnet_is_refused_and_the_groupnorm_one_is_not():
    from forwardgrad.models import resnet18

    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    torch.manual_seed(0)
    with pytest.raises(BatchCouplingError, match=r"'stem\.1' \(BatchNorm2d\) mixes the examples"):
        Estimator(resnet18(1, 10, norm="batch"), "activation").step(x, y)
    Estimator(resnet18(1, 10, norm="group"), "activation").step(x, y)


def test_batchnorm_in_eval_mode_is_per_example():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    Estimator(model, "activation").step(torch.randn(6, 3), torch.randint(0, 2, (6,)))


def test_batch_mode_is_unbiased_on_a_batchnorm_net_in_training_mode():
    torch.manual_seed(0)
    model = Conv2dNet(norm=nn.BatchNorm2d(3)).double().train()
    x, y = _conv_batch(b=4)
    est = Estimator(model, "activation", jvp="batch", seed=2)
    samples, engine = mc_activity_samples(est, x, y, 20000)
    true = activity_gradients(model, x, y, ce, engine.sites)  # of the summed loss, BN coupling in
    for s, g in zip(samples, true):
        assert z_scores(s, g.flatten(1)).max() < Z_MAX


def test_batch_mode_projection_onto_all_the_batch_tangents_is_exact():
    """Batch mode projects the batch loss's gradient onto the span of the k whole-batch
    tangents; with k = B * n that span is everything, so the estimate is exact: conv and Linear
    rules and BatchNorm's local VJP, in training mode, coupling included."""
    torch.manual_seed(0)

    class Small(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 2)
            self.norm = nn.BatchNorm2d(2)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(F.relu(self.norm(self.conv(x))).flatten(1))

    model = Small().double().train()
    x = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (4,))
    n = 4 * (8 + 8 + 3)  # B * (conv + norm + head activities per example)
    est = Estimator(model, "activation", jvp="batch", tangents=n, aggregate="projection")
    _, g = est.estimate(x, y)
    _, exact = Estimator(model, "backprop").estimate(x, y)
    for p in exact:
        torch.testing.assert_close(g[p], exact[p], rtol=1e-7, atol=1e-9)


def test_batch_mode_has_higher_variance_than_per_example():
    torch.manual_seed(0)
    model = Conv2dNet().double()
    x, y = _conv_batch(b=8)
    _, true = weight_gradients(model, x, y, ce)

    def mse(jvp_mode):
        est = Estimator(model, "activation", jvp=jvp_mode, seed=5)
        errs = []
        for _ in range(100):
            _, g = est.estimate(x, y)
            errs.append(sum(float((g[p] - t).pow(2).sum()) for p, t in true.items()))
        return sum(errs) / len(errs)

    assert mse("batch") > 2 * mse("global")


# --------------------------------------------------------------- BatchNorm, dropout, state


def test_batchnorm_running_statistics_update_once_per_step_as_one_forward_would():
    torch.manual_seed(0)
    model = Conv2dNet(norm=nn.BatchNorm2d(3, momentum=0.3)).train()
    reference = Conv2dNet(norm=nn.BatchNorm2d(3, momentum=0.3)).train()
    reference.load_state_dict(model.state_dict())
    x, y = _conv_batch(b=5)
    x = x.float()
    with torch.no_grad():
        reference(x)
    est = Estimator(model, "activation", jvp="batch", tangents=4, chunk_size=2)
    est.step(x, y)  # two chunks: two passes, one update
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(model.norm, name), getattr(reference.norm, name))


class DropoutNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 16)
        self.drop = nn.Dropout(0.5)
        self.b = nn.Linear(16, 3)

    def forward(self, x):
        return self.b(self.drop(torch.relu(self.a(x))))


def test_dropout_draws_one_mask_per_step_shared_by_every_tangent_and_chunk():
    """With the dropout mask fixed (same random state), the estimate is the estimate of the
    fixed-mask network: exact at k = n, whether the tangents go in one pass or in chunks."""
    torch.manual_seed(0)
    model = DropoutNet().double().train()
    x, y = torch.randn(4, 5, dtype=torch.float64), torch.randint(0, 3, (4,))
    n = 16 + 3
    torch.manual_seed(123)
    _, exact = Estimator(model, "backprop").estimate(x, y)  # draws the mask from seed 123
    for chunk in (None, 5):
        torch.manual_seed(123)
        est = Estimator(model, "activation", tangents=n, aggregate="projection", chunk_size=chunk)
        _, g = est.estimate(x, y)
        for p in model.parameters():
            torch.testing.assert_close(g[p], exact[p], rtol=1e-7, atol=1e-9)


def test_frozen_parameters_get_no_gradient_and_no_noise():
    torch.manual_seed(0)
    model = Residual()
    for p in model.inp.parameters():
        p.requires_grad_(False)
    x, y = torch.randn(4, 5), torch.randint(0, 4, (4,))
    est = Estimator(model, "activation", tangents=2)
    est.step(x, y)
    assert all(p.grad is None for p in model.inp.parameters())
    assert all(p.grad is not None for p in model.mid.parameters())
    assert "inp" not in [s.name for s in est.sites]  # no tangent where nothing is trained
    weight = Estimator(model, "weight")
    params = weight._trained_parameters(weight.engine_for(x, y))
    assert not any(n.startswith("inp.") for n in params)


# ------------------------------------------------------------ the Linear cases, sites=


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return 2 * super().forward(x) + 1


def _linear_cases():
    def hooked():
        m = mlp(3, 2, depth=1, width=4)
        m[0].register_forward_hook(lambda mod, inp, out: out * 3 - 1)
        return m

    def shared():
        s = nn.Linear(4, 4)
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), s, nn.Tanh(), s, nn.Linear(4, 2))

    return {
        "subclass": lambda: nn.Sequential(ScaledLinear(3, 4), nn.ReLU(), nn.Linear(4, 2)),
        "hook": hooked,
        "weight_norm": lambda: nn.Sequential(
            nn.utils.parametrizations.weight_norm(nn.Linear(3, 4)), nn.Tanh(), nn.Linear(4, 2)
        ),
        "shared": shared,
    }


@pytest.mark.parametrize("case", ["subclass", "hook", "weight_norm", "shared"])
def test_linear_layers_the_chain_cannot_read_match_backprop(case):
    torch.manual_seed(0)
    model = _linear_cases()[case]().double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    n = sum(Estimator(model, "activation").engine_for(x, y).layout.widths)
    est = Estimator(model, "activation", tangents=n, aggregate="projection")
    _, g = est.estimate(x, y)
    _, exact = Estimator(model, "backprop").estimate(x, y)
    assert set(g) == set(exact)
    for p in exact:
        torch.testing.assert_close(g[p], exact[p], rtol=1e-7, atol=1e-9)


def test_a_layer_replaced_after_the_estimator_was_built_gets_its_gradient():
    torch.manual_seed(0)
    model = mlp(3, 2, depth=1, width=4).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    est = Estimator(model, "activation", tangents=6, aggregate="projection")
    est.estimate(x, y)
    model[2] = nn.Linear(4, 2).double()
    _, g = est.estimate(x, y)
    _, exact = Estimator(model, "backprop").estimate(x, y)
    assert model[2].weight in g
    for p in exact:
        torch.testing.assert_close(g[p], exact[p], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("model_fn", [MHABlock, lambda: MHABlock(need_weights=True)])
def test_multihead_attention_matches_backprop_at_k_equal_n(model_fn):
    torch.manual_seed(0)
    model = model_fn().double()
    x, y = _token_batch()
    n = sum(Estimator(model, "activation").engine_for(x, y).layout.widths)
    est = Estimator(model, "activation", tangents=n, aggregate="projection")
    _, g = est.estimate(x, y)
    _, exact = Estimator(model, "backprop").estimate(x, y)
    assert "attn" in [s.name for s in est.sites]  # out_proj is used by attn, not called
    for p in exact:
        torch.testing.assert_close(g[p], exact[p], rtol=1e-7, atol=1e-9)


def test_token_inputs_and_the_transformer_encoder_layer():
    torch.manual_seed(0)
    model = EmbeddingEncoder().double()
    x = torch.randint(0, 7, (3, 2))
    y = torch.randint(0, 4, (3,))
    n = sum(Estimator(model, "activation").engine_for(x, y).layout.widths)
    est = Estimator(model, "activation", tangents=n, aggregate="projection")
    _, g = est.estimate(x, y)
    _, exact = Estimator(model, "backprop").estimate(x, y)
    for p in exact:
        torch.testing.assert_close(g[p], exact[p], rtol=1e-6, atol=1e-8)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x):
        return x + self.norm(torch.relu(self.fc(x)))


class Stack(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 4)
        self.layer1 = Block(4)
        self.layer2 = Block(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.layer2(self.layer1(self.stem(x))))


def test_sites_by_type_pattern_and_block():
    model = Stack().double()
    x, y = torch.randn(3, 3, dtype=torch.float64), torch.randint(0, 2, (3,))
    by_block = Estimator(model, "activation", sites=Block)
    by_block.step(x, y)
    rows = {row["name"]: row for row in by_block.describe()}
    assert [n for n, r in rows.items() if r["chosen"]] == ["layer1", "layer2"]
    assert rows["layer1"]["rule"] == "local-vjp"
    assert rows["layer1"]["params"] == [
        "layer1.fc.weight",
        "layer1.fc.bias",
        "layer1.norm.weight",
        "layer1.norm.bias",
    ]
    # parameters outside the chosen blocks get sites of their own, with their type's rule
    assert (rows["stem"]["rule"], rows["stem"]["chosen"]) == ("linear", False)
    by_pattern = Estimator(model, "activation", sites=["layer?", "head"])
    by_pattern.step(x, y)
    assert [s.name for s in by_pattern.sites if s.chosen] == ["layer1", "layer2", "head"]
    with pytest.raises(ModelNotSupportedError, match="matches no module"):
        Estimator(model, "activation", sites="encoder.*")
    with pytest.raises(ValueError, match="takes nn.Module types and name patterns"):
        Estimator(model, "activation", sites=[3])
    # block sites are exact at k = n too: the blocks' and the others' activities per example
    n = sum(by_block.engine_for(x, y).layout.widths)
    est = Estimator(model, "activation", sites=Block, tangents=n, aggregate="projection")
    _, g = est.estimate(x, y)
    _, exact = Estimator(model, "backprop").estimate(x, y)
    for p in exact:
        torch.testing.assert_close(g[p], exact[p], rtol=1e-7, atol=1e-9)


def test_block_sites_give_the_same_gradient_as_layer_sites_at_k_equal_n():
    torch.manual_seed(0)
    model = Residual().double()
    x, y = torch.randn(3, 5, dtype=torch.float64), torch.randint(0, 4, (3,))

    class Wrap(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.body = inner

        def forward(self, x):
            return self.body(x)

    wrapped = Wrap(model)
    est = Estimator(wrapped, "activation", tangents=4, aggregate="projection", sites="body")
    _, g = est.estimate(x, y)
    _, exact = Estimator(wrapped, "backprop").estimate(x, y)
    for p in exact:  # one block site of width 4 (the logits): exact with k = 4
        torch.testing.assert_close(g[p], exact[p], rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------ clear errors


def test_a_parameter_used_in_the_root_forward_is_refused():
    class RootParam(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.temperature = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.fc(x) / self.temperature

    with pytest.raises(ModelNotSupportedError, match="'temperature' is used directly"):
        Estimator(RootParam(), "activation").step(
            torch.randn(2, 3), torch.zeros(2, dtype=torch.long)
        )
    Estimator(RootParam(), "weight").step(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))


def test_an_input_overwritten_in_place_is_refused():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(3)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            h = x * 1.0
            out = self.norm(h)
            h.mul_(2)  # overwrites what norm read
            return self.fc(out + h)

    with pytest.raises(InPlaceModifiedError, match="site 'norm' was modified in place"):
        Estimator(InPlace(), "activation").step(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))


def test_next_layer_guesses_refuse_a_site_with_no_next_layer_naming_it():
    x, y = torch.randn(4, 5), torch.randint(0, 4, (4,))
    with pytest.raises(
        ModelNotSupportedError,
        match=r"guess 'wt' is built from the next layer.*site 'inp' has none: its output is "
        r"used 2 times.*fallback='activation'",
    ):
        Estimator(Residual(), "wt").step(x, y)


def test_unused_parameters_get_no_gradient_and_are_listed():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(3, 2)
            self.spare = nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    model = Unused()
    est = Estimator(model, "activation")
    est.step(torch.randn(2, 3), torch.zeros(2, dtype=torch.long))
    assert est.unused_parameters == ["spare.weight", "spare.bias"]
    assert model.spare.weight.grad is None


def test_masked_guess_masks_where_an_activation_alone_consumes_the_site():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 5), nn.ReLU(), nn.Linear(5, 3)
    )
    x, y = torch.randn(4, 1, 6, 6), torch.randint(0, 3, (4,))
    est = Estimator(model, "activation-masked", tangents=3)
    _, estimates, _ = est.estimate_activity(x, y)
    assert [row["masked_by"] for row in est.describe()] == ["ReLU", "ReLU", None]
    for i in (0, 3):  # the estimate is zero wherever the ReLU is inactive
        inactive = model[i](x if i == 0 else model[:3](x)) <= 0
        assert (estimates[0 if i == 0 else 1][inactive] == 0).all()


@pytest.mark.parametrize(
    "name,make,batch_fn",
    [
        ("conv", Conv2dNet, _conv_batch),
        ("sdpa", SDPABlock, _token_batch),
        ("mha", MHABlock, _token_batch),
        ("resnet18", lambda: __import__("forwardgrad").models.resnet18(1, 4), None),
        ("vit", lambda: __import__("forwardgrad").models.vit(6, 1, 4, patch_size=3, depth=1), None),
    ],
)
@pytest.mark.parametrize("guess", ["activation", "activation-masked", "weight"])
def test_no_autograd_graph_and_no_backward_on_any_model(name, make, batch_fn, guess, monkeypatch):
    """Nothing calls backward; reverse-mode products happen only inside the local-VJP rules
    (one module each), and nothing is saved for a backward outside them."""
    from forwardgrad.core import rules

    torch.manual_seed(0)
    model = make().double()
    if batch_fn is None:
        x = torch.randn(3, 1, 6, 6, dtype=torch.float64)
        y = torch.randint(0, 4, (3,))
    else:
        x, y = batch_fn()

    def forbidden(*args, **kwargs):
        raise AssertionError("backward called by a BP-free estimator")

    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    inside_rule = []
    real_apply = rules.LocalVJPRule.apply

    def apply(self, *args, **kwargs):
        # torch.func.vjp refuses saved-tensor hooks: lift ours for the rule's local VJP
        torch._C._autograd._pop_saved_tensors_default_hooks()
        inside_rule.append(True)
        try:
            return real_apply(self, *args, **kwargs)
        finally:
            inside_rule.pop()
            torch._C._autograd._push_saved_tensors_default_hooks(pack, lambda t: t)

    monkeypatch.setattr(rules.LocalVJPRule, "apply", apply)
    saved_outside = []

    def pack(t):
        if not inside_rule:
            saved_outside.append(t.shape)
        return t

    est = Estimator(model, guess, tangents=2)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = est.step(x, y)
    assert loss.grad_fn is None and not loss.requires_grad
    assert saved_outside == [], f"tensors saved for a backward outside the rules: {saved_outside}"
    for p in model.parameters():
        assert p.grad is not None and p.grad.grad_fn is None
