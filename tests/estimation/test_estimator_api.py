"""The estimator's guarantees: no autograd graph, parameters untouched, clear errors."""

import pytest
import torch
from conftest import batch
from torch import nn

import forwardgrad as fg
from forwardgrad import Estimator, ModelNotSupportedError, mlp
from forwardgrad.core.chain import forward_jvp
from forwardgrad.core.strategies import site_draws

BP_FREE = [g for g in fg.GUESSES if g != "backprop"]
LOCAL_VJP = {"downstream", "self-sharpening"}  # the methods define a local reverse product


def _options(guess):
    return {"solver": "randomized"} if guess == "wperp" else {}


@pytest.mark.parametrize("guess", BP_FREE)
def test_step_builds_no_autograd_graph_and_never_calls_backward(guess, monkeypatch):
    model = mlp(8, 4, depth=2, width=16)
    x, y = batch(8, 4, 6)

    def forbidden(*args, **kwargs):
        raise AssertionError("backward called by a BP-free estimator")

    monkeypatch.setattr(torch.Tensor, "backward", forbidden)
    monkeypatch.setattr(torch.autograd, "backward", forbidden)
    if guess not in LOCAL_VJP:
        monkeypatch.setattr(torch.autograd, "grad", forbidden)
    saved = []
    est = Estimator(model, guess, tangents=2, **_options(guess))
    if guess in LOCAL_VJP:  # torch.func.vjp refuses saved-tensor hooks; its graph is local
        loss = est.step(x, y)
    else:
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            loss = est.step(x, y)
    assert loss.grad_fn is None and not loss.requires_grad
    for p in model.parameters():
        assert p.grad is not None and p.grad.grad_fn is None
    if guess not in LOCAL_VJP:
        assert saved == [], f"{guess} saved {len(saved)} tensors for a backward pass"


@pytest.mark.parametrize("guess", list(fg.GUESSES))
def test_parameters_untouched_until_optimizer_steps(guess):
    model = mlp(8, 4, depth=2, width=16)
    x, y = batch(8, 4, 6)
    before = [p.detach().clone() for p in model.parameters()]
    est = Estimator(model, guess, **_options(guess))
    est.step(x, y)
    for b, p in zip(before, model.parameters()):
        assert torch.equal(b, p.detach())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    assert any(not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters()))


def test_step_accumulates_like_backward():
    model = mlp(5, 3, depth=1, width=4)
    x, y = batch(5, 3, 4)
    est = Estimator(model, "backprop")
    est.step(x, y)
    first = [p.grad.clone() for p in model.parameters()]
    est.step(x, y)
    for f, p in zip(first, model.parameters()):
        torch.testing.assert_close(p.grad, 2 * f)


def test_backprop_oracle_equals_autograd():
    model = mlp(5, 3, depth=2, width=4)
    x, y = batch(5, 3, 7)
    _, grads = Estimator(model, "backprop").estimate(x, y)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    for p, g in zip(model.parameters(), torch.autograd.grad(loss, list(model.parameters()))):
        torch.testing.assert_close(grads[p], g)


def test_projection_with_k_equal_n_recovers_exact_weight_gradient():
    model = mlp(3, 2, depth=1, width=2).double()  # 3*2+2 + 2*2+2 = 14 parameters
    x, y = batch(3, 2, 5)
    x = x.double()
    n = sum(p.numel() for p in model.parameters())
    _, est_grads = Estimator(model, "weight", tangents=n, aggregate="projection").estimate(x, y)
    _, true = Estimator(model, "backprop").estimate(x, y)
    for p in model.parameters():
        torch.testing.assert_close(est_grads[p], true[p], rtol=1e-6, atol=1e-8)


def test_activity_projection_with_k_equal_n_is_exact_per_example():
    from forwardgrad.diagnostics import activity_gradients
    from forwardgrad.estimation import cross_entropy_per_example as ce

    model = mlp(4, 3, depth=1, width=5).double()  # activity dims per example: 5 + 3
    x, y = batch(4, 3, 6)
    x = x.double()
    _, g_sites, _ = Estimator(
        model, "activation", tangents=8, aggregate="projection"
    ).estimate_activity(x, y)
    for g, t in zip(g_sites, activity_gradients(model, x, y, ce)):
        torch.testing.assert_close(g, t, rtol=1e-6, atol=1e-9)


def test_chunked_tangents_give_the_same_kind_of_estimate():
    model = mlp(4, 3, depth=1, width=5).double()
    x, y = batch(4, 3, 6)
    x = x.double()
    _, exact = Estimator(model, "backprop").estimate(x, y)
    _, g = Estimator(
        model, "activation", tangents=8, chunk_size=3, aggregate="projection"
    ).estimate(x, y)
    for p in model.parameters():  # k = n per example: exact even when pushed in chunks
        torch.testing.assert_close(g[p], exact[p], rtol=1e-6, atol=1e-9)


def test_seeded_estimators_are_reproducible():
    model = mlp(6, 3, depth=2, width=8)
    x, y = batch(6, 3, 5)
    a = Estimator(model, "wt", seed=3).estimate(x, y)[1]
    b = Estimator(model, "wt", seed=3).estimate(x, y)[1]
    c = Estimator(model, "wt", seed=4).estimate(x, y)[1]
    assert all(torch.equal(a[p], b[p]) for p in a)
    assert not all(torch.equal(a[p], c[p]) for p in a)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"guess": "frog"}, "unknown guess 'frog'"),
        ({"aggregate": "median"}, "unknown aggregation 'median'"),
        ({"scope": "layer"}, "unknown projection scope 'layer'"),
        ({"tangents": 0}, "tangents must be a positive integer"),
        ({"guess": "wperp", "solver": "qr"}, "unknown wperp solver 'qr'"),
        ({"guess": "wperp", "rank": 0}, "rank must be a positive integer"),
        ({"guess": "wperp", "bottom": True, "solver": "randomized"}, "bottom=True"),
        ({"guess": "wt", "sampler": "rademacher"}, "samplers and normalize apply only"),
        ({"guess": "activation", "sampler": "gauss"}, "unknown sampler 'gauss'"),
        ({"guess": "preconditioned", "sigma": 0.0}, "sigma must be > 0"),
        ({"guess": "downstream", "layers": 0}, "layers must be >= 1"),
        ({"rnak": 3}, r"unknown guess options \['rnak'\]"),
    ],
)
def test_bad_options_give_clear_errors(kwargs, match):
    model = mlp(4, 2, depth=1, width=3)
    x, y = batch(4, 2, 3)
    with pytest.raises(ValueError, match=match):
        Estimator(model, **kwargs).estimate(x, y)


def test_bad_batches_give_clear_errors():
    est = Estimator(mlp(4, 2, depth=1, width=3), "activation")
    with pytest.raises(ValueError, match=r"expects \(batch, 4\)"):
        est.step(torch.randn(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size: 3 vs 2"):
        est.step(torch.randn(3, 4), torch.zeros(2, dtype=torch.long))


@pytest.mark.parametrize(
    "model,match",
    [
        (nn.Sequential(nn.ReLU()), "no trainable parameter"),
        (
            nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)),
            r"module '1' \(BatchNorm1d\) mixes the examples",
        ),
    ],
)
def test_unsupported_models(model, match):
    with pytest.raises(ModelNotSupportedError, match=match):
        Estimator(model, "activation").estimate(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("guess", ["wt", "wperp", "preconditioned", "downstream", "mixing"])
def test_next_layer_guesses_refuse_a_site_that_does_not_reach_the_next_layer(guess):
    model = nn.Sequential(nn.Linear(3, 4), nn.Softmax(dim=1), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(2, 3), torch.zeros(2, dtype=torch.long)
    reason = (
        "is not consumed by one elementwise activation alone"
        if guess == "mixing"
        else r"reaches '1' \(Softmax\), which is neither a plain Linear/Conv layer"
    )
    with pytest.raises(ModelNotSupportedError, match=f"site '0' has none: its output {reason}"):
        Estimator(model, guess).estimate(x, y)
    for ok in ("activation", "activation-masked", "weight"):
        Estimator(model, ok).estimate(x, y)


@pytest.mark.parametrize("aggregate", ["sum", "mean"])
def test_chunks_fold_into_the_same_estimate_as_one_pass(aggregate):
    # The same tangents (each chunk draws from the step seed) folded chunk by chunk must give
    # the estimate the one-pass path gives from all of them.
    torch.manual_seed(0)
    model = fg.mlp(6, 3, depth=2, width=5)
    x, y = torch.randn(4, 6), torch.randint(0, 3, (4,))
    chunked = fg.Estimator(model, "activation", tangents=7, chunk_size=3, aggregate=aggregate)
    _, g_chunks, _ = chunked.estimate_activity(x, y)
    # Rebuild the same per-chunk draws and aggregate them all at once by hand.
    reference = fg.Estimator(model, "activation", tangents=7, chunk_size=3, aggregate=aggregate)
    tangents, jvps = [], []
    with torch.no_grad():
        for k in (3, 3, 1):
            begin, draw = site_draws(
                reference.guess,
                reference.plan.layout,
                reference.generator,
                reference._site_generator,
                k,
            )
            begin(4)
            res = forward_jvp(reference.plan, x, y, reference.loss_fn, k, site_tangents=draw)
            tangents.append(res.tangents)
            jvps.append(res.jvps)
    d = torch.cat(jvps)
    for i, g in enumerate(g_chunks):
        u = torch.cat([t[i] for t in tangents])
        expected = torch.einsum("kbn,kb->bn", u, d) / (7 if aggregate == "mean" else 1)
        torch.testing.assert_close(g, expected)


def test_activity_projection_at_k_equal_n_is_exact_in_float32_too():
    """float32 tangents at k = n: the Gram matrices of ill-conditioned examples are formed again
    in float64, so the projection returns the gradient (not a dependent-tangents warning)."""
    import warnings

    from forwardgrad.diagnostics import activity_gradients
    from forwardgrad.estimation import cross_entropy_per_example as ce

    worst = 0.0
    for seed in range(10):
        torch.manual_seed(seed)
        model = mlp(4, 3, depth=1, width=5)  # float32; activity per example: 5 + 3
        x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        with warnings.catch_warnings():
            warnings.simplefilter("error", fg.core.aggregate.DependentTangentsWarning)
            est = Estimator(model, "activation", tangents=8, aggregate="projection", seed=seed)
            _, estimates, _ = est.estimate_activity(x, y)
        true = activity_gradients(model.double(), x.double(), y, ce)
        model.float()
        for e, t in zip(estimates, true):
            worst = max(worst, float(((e.double() - t).norm(dim=1) / t.norm(dim=1).max()).max()))
    assert worst < 2e-3


def test_projection_grams_refine_only_the_ill_conditioned_examples():
    from forwardgrad.core.aggregate import projection_grams, tangent_gram

    g = torch.Generator().manual_seed(0)
    u = torch.randn(6, 5, 6, generator=g)  # k = n = 6 for every example
    u[:, 0, -1] = u[:, 0, 0] * (1 + 1e-5)  # example 0 nearly dependent: refined in float64
    grams = projection_grams([u], "site")[0]
    exact = tangent_gram(u)
    torch.testing.assert_close(grams[0], exact[0], rtol=0, atol=0)
    torch.testing.assert_close(grams, exact, rtol=1e-5, atol=1e-5)
