"""Every guess of the registry trains the LeNet-style ``cnn`` (conv sites reaching the next
conv through ReLU and max pooling, and the Linear head through Flatten) and the LocalMixer
(1x1 convs and a token Linear reaching the next through a layer norm, a ReLU and a residual add;
local losses): the training objective falls over a few steps on sklearn's digits, or the guess
refuses with a clear error."""

import pytest
import torch
import torch.nn.functional as F

from forwardgrad import Estimator
from forwardgrad.core.layers import local_scores, objective
from forwardgrad.core.sites import ModelNotSupportedError
from forwardgrad.data import load_dataset
from forwardgrad.guesses import GUESSES
from forwardgrad.models import build_model

MIXER = {"channels": 16, "groups": 2, "blocks": 2}
# refused on the LocalMixer, with the reason in the README's guess table
MIXER_REFUSES = {"self-sharpening": "heads of local losses"}

OPTIONS = {"downstream": {"layers": 2}}
STEPS = {"preconditioned": 1}  # a dense SVD per example and site: slow, 8 steps suffice


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits", layout="image")
    return data.x_train[:256], data.y_train[:256], data


def train(guess, x, y, data, steps=3, batch=32, model_name="cnn", **options):
    torch.manual_seed(0)
    extra = MIXER if model_name == "localmixer" else {}
    model = build_model(model_name, data.input_shape, data.num_classes, **extra)
    est = Estimator(model, guess, seed=0, **options)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss() -> float:  # what every estimator follows: the output's loss + the local ones
        with torch.no_grad(), local_scores(model) as scores:
            out = model(x)
            losses = objective(lambda z, t: F.cross_entropy(z, t, reduction="none"), out, y, scores)
        return float(losses.sum(1).mean())

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


@pytest.mark.parametrize("guess", list(GUESSES))
def test_every_guess_lowers_the_local_losses_of_a_local_mixer(guess, digits):
    if guess in MIXER_REFUSES:
        with pytest.raises(ModelNotSupportedError, match=MIXER_REFUSES[guess]):
            train(guess, *digits, steps=1, model_name="localmixer")
        before, after = train(
            guess, *digits, steps=3, model_name="localmixer", fallback="activation"
        )
    else:
        steps = STEPS.get(guess, 3)
        before, after = train(
            guess, *digits, steps=steps, model_name="localmixer", **OPTIONS.get(guess, {})
        )
    assert after < before, (guess, before, after)


def test_wperp_solvers_on_conv_sites(digits):
    for solver in ("svd", "newton-schulz"):
        before, after = train("wperp", *digits, steps=3, solver=solver, rank=4)
        assert after < before, (solver, before, after)
