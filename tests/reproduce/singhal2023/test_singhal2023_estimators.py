"""The probe-only methods of the *How to Guess a Gradient* reproductions
(singhal2023/estimators.py): powered Wᵀ, the cosine-matched descent, the unit-norm guess."""

import math

import pytest
import torch
from conftest import batch

from forwardgrad.core.chain import chain_plan, forward_jvp
from forwardgrad.diagnostics import weight_gradients
from forwardgrad.estimation import Estimator
from forwardgrad.guesses.jacobian import WTranspose
from forwardgrad.models import mlp
from forwardgrad.reproduce.singhal2023 import estimators


def _flat(grads: dict) -> torch.Tensor:
    return torch.cat([t.flatten().double() for t in grads.values()])


# ---- powered Wᵀ ------------------------------------------------------------------------------


def test_powered_wt_with_power_one_draws_the_wt_tangents():
    torch.manual_seed(0)
    model = mlp(6, 4, depth=2, width=5)
    x, y = batch(6, 4, 7)
    plan = chain_plan(model)
    tangents = {}
    for name, guess in (("wt", WTranspose()), ("power", estimators.PoweredWTranspose(1.0))):
        gen = torch.Generator().manual_seed(11)
        got = []

        def draw(ctx, guess=guess, gen=gen, got=got):
            u = guess.site_tangents(ctx, 3, gen)
            got.append(u)
            return u

        with torch.no_grad():
            forward_jvp(plan, x, y, Estimator(model).loss_fn, 3, site_tangents=draw)
        tangents[name] = got
    for a, b in zip(tangents["wt"], tangents["power"]):
        assert torch.allclose(a, b, atol=1e-5)
    # A different power changes the law, not the shapes; the estimator runs with it.
    est = estimators.powered_wt_estimator(model, 3.0, seed=0)
    assert est.guess_name == "wt-power" and isinstance(est.guess, estimators.PoweredWTranspose)
    _, grads = est.estimate(x, y)
    assert {tuple(t.shape) for t in grads.values()} == {tuple(p.shape) for p in model.parameters()}


# ---- cosine-matched directional descent ------------------------------------------------------


def test_cosine_matched_estimator_sits_at_its_cosine_and_length():
    torch.manual_seed(0)
    model = mlp(6, 4, depth=2, width=5)
    x, y = batch(6, 4, 16)
    est = estimators.CosineMatchedEstimator(model, cosine=0.05, relative_norm=3.0, seed=2)
    _, grads = est.estimate(x, y)
    _, true = weight_gradients(model, x, y, est.loss_fn)
    a, b = _flat(grads), _flat(true)
    assert float(a @ b / (a.norm() * b.norm())) == pytest.approx(0.05, abs=1e-5)
    assert float(a.norm() / b.norm()) == pytest.approx(3.0, rel=1e-5)
    # Fresh noise on every call.
    _, again = est.estimate(x, y)
    assert not torch.allclose(_flat(again), a)
    with pytest.raises(ValueError, match="matched cosine"):
        estimators.CosineMatchedEstimator(model, cosine=0.0)


def test_unit_guess_is_the_forward_gradient_of_a_unit_tangent():
    torch.manual_seed(0)
    model = mlp(6, 4, depth=2, width=5)
    x, y = batch(6, 4, 16)
    estimator = Estimator(model, "wt", seed=3)
    _, est = Estimator(model, "wt", seed=3).estimate(x, y)  # the same draw
    _, unit = estimators.UnitGuess(estimator).estimate(x, y)
    _, true = weight_gradients(model, x, y, estimator.loss_fn)
    a, u, t = _flat(est), _flat(unit), _flat(true)
    cos = float(a @ t / (a.norm() * t.norm()))
    # Along the estimate, as long as |cos| ||g||: the JVP along the unit direction times it.
    assert float(u @ a / (u.norm() * a.norm())) == pytest.approx(math.copysign(1.0, cos), abs=1e-5)
    assert float(u.norm()) == pytest.approx(abs(cos) * float(t.norm()), rel=1e-4)
