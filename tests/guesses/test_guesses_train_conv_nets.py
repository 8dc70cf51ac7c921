"""Every guess of the registry trains the LeNet-style ``cnn`` (conv sites reaching the next
conv through ReLU and max pooling, and the Linear head through Flatten): the training loss
falls over a few steps on sklearn's digits, or the guess refuses with a clear error."""

import pytest
import torch
import torch.nn.functional as F

from forwardgrad import Estimator
from forwardgrad.data import load_dataset
from forwardgrad.guesses import GUESSES
from forwardgrad.models import build_model

OPTIONS = {"downstream": {"layers": 2}}
STEPS = {"preconditioned": 1}  # a dense SVD per example and site: slow, 8 steps suffice


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", layout="image")
    return data.x_train[:256], data.y_train[:256], data


def train(guess, x, y, data, steps=3, batch=32, **options):
    torch.manual_seed(0)
    model = build_model("cnn", data.input_shape, data.num_classes)
    est = Estimator(model, guess, seed=0, **options)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y))

    before = loss()
    for _ in range(steps):
        for i in range(0, len(x), batch):
            est.step(x[i : i + batch], y[i : i + batch])
            opt.step()
            opt.zero_grad()
    return before, loss()


@pytest.mark.parametrize("guess", list(GUESSES))
def test_every_guess_lowers_the_loss_of_a_conv_net(guess, digits):
    before, after = train(guess, *digits, steps=STEPS.get(guess, 3), **OPTIONS.get(guess, {}))
    assert after < before, (guess, before, after)


def test_wperp_solvers_on_conv_sites(digits):
    for solver in ("svd", "newton-schulz"):
        before, after = train("wperp", *digits, steps=3, solver=solver, rank=4)
        assert after < before, (solver, before, after)
