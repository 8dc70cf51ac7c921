"""Low-memory mode: the same estimate as the default mode, with nothing stored per site."""

import pytest
import torch

from forwardgrad import Estimator
from forwardgrad.core.chain import forward_jvp
from forwardgrad.models import mlp

CASES = [
    ("activation", "mean", "global", {}),
    ("activation", "sum", "global", {"sampler": "rademacher"}),
    ("activation", "projection", "global", {}),
    ("activation", "projection", "site", {}),
    ("activation-masked", "mean", "global", {}),
    ("wt", "mean", "global", {}),
    ("wperp", "projection", "global", {}),
    ("wperp", "mean", "global", {"solver": "newton-schulz", "ns_refresh": 2}),
    ("preconditioned", "mean", "global", {}),
    ("downstream", "mean", "global", {"layers": 2}),
    ("self-sharpening", "mean", "global", {}),
]


def _model_and_batch():
    torch.manual_seed(0)
    model = mlp(12, 5, depth=3, width=16).double()
    x = torch.randn(9, 12, dtype=torch.float64)
    y = torch.randint(0, 5, (9,))
    return model, x, y


@pytest.mark.parametrize("guess,agg,scope,options", CASES)
def test_low_memory_gives_the_same_estimate(guess, agg, scope, options):
    model, x, y = _model_and_batch()
    common = dict(tangents=3, aggregate=agg, scope=scope, seed=5, **options)
    stored = Estimator(model, guess, **common)
    regenerated = Estimator(model, guess, low_memory=True, **common)
    for _ in range(3):  # several steps: stateful guesses (Newton-Schulz refresh) stay in step
        loss_a, grads_a = stored.estimate(x, y)
        loss_b, grads_b = regenerated.estimate(x, y)
        assert torch.equal(loss_a, loss_b)
        assert grads_a.keys() == grads_b.keys()
        for p in grads_a:
            torch.testing.assert_close(grads_a[p], grads_b[p], rtol=1e-10, atol=1e-12)


def test_low_memory_step_accumulates_into_grad():
    model, x, y = _model_and_batch()
    reference = Estimator(model, "activation", tangents=2, seed=1)
    _, grads = reference.estimate(x, y)
    est = Estimator(model, "activation", tangents=2, seed=1, low_memory=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    est.step(x, y)
    for p in model.parameters():
        torch.testing.assert_close(p.grad, grads[p] + 1)


def test_low_memory_runs_the_engine_keeping_nothing(monkeypatch):
    """Both passes ask the engine to keep no inputs and no tangents."""
    import forwardgrad.core.chain as chain_module

    calls = []

    def spy(*args, **kwargs):
        calls.append((kwargs.get("keep_inputs"), kwargs.get("keep_tangents")))
        result = forward_jvp(*args, **kwargs)
        assert all(c.args is None and c.tangent is None for c in result.calls)
        return result

    monkeypatch.setattr(chain_module, "forward_jvp", spy)
    model, x, y = _model_and_batch()
    Estimator(model, "wt", tangents=2, low_memory=True).estimate(x, y)
    assert calls == [(False, False), (False, False)]


@pytest.mark.parametrize(
    "guess,options,match",
    [
        ("weight", {}, "not an activity-space guess"),
        ("activation", {"chunk_size": 2}, "chunk_size"),
        ("activation", {"sampler": "orthonormal"}, "orthonormal"),
        ("activation", {"normalize": True}, "normalize=True"),
    ],
)
def test_low_memory_refuses_what_it_cannot_regenerate(guess, options, match):
    model, _, _ = _model_and_batch()
    with pytest.raises(ValueError, match=match):
        Estimator(model, guess, tangents=2, low_memory=True, **options)
