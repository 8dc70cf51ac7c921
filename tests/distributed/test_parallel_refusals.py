"""What a split over processes cannot do exactly is refused by name, before any step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from forwardgrad import Estimator
from forwardgrad.distributed import Collectives, LaunchError, make_grid


def _alone(mode: str, rank: int = 0) -> Collectives:
    return Collectives(make_grid(mode, 2, rank), alone=True)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


@pytest.mark.parametrize(
    "guess, options, message",
    [
        ("mixing", {}, "mix the activations of the whole batch"),
        ("wperp", {"rank": 2, "solver": "newton-schulz"}, "Newton-Schulz calibration"),
    ],
)
def test_guesses_that_need_the_whole_batch_refuse_a_data_split(guess, options, message):
    with pytest.raises(LaunchError, match=message):
        Estimator(_mlp(), guess, tangents=2, parallel=_alone("data"), **options)
    Estimator(_mlp(), guess, tangents=2, parallel=_alone("tangents"), **options)  # exact there


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"guess": "backprop"}, "guess 'backprop' has none"),
        ({"chunk_size": 1}, "chunk_size"),
        ({"low_memory": True}, "low_memory"),
        ({"jvp": "site"}, "jvp='site'"),
        ({"tangents": 3}, "--tangents 3 cannot be split evenly"),
    ],
)
def test_a_tangent_split_refuses_what_it_cannot_share(settings, message):
    settings = {"guess": "activation", "tangents": 2, **settings}
    with pytest.raises(LaunchError, match=message):
        Estimator(_mlp(), parallel=_alone("tangents"), **settings)


def test_a_data_split_refuses_a_batch_level_jvp():
    with pytest.raises(LaunchError, match="jvp='batch'"):
        Estimator(_mlp(), "activation", jvp="batch", parallel=_alone("data"))


@pytest.mark.parametrize("guess", ["weight", "backprop"])
@pytest.mark.parametrize("eval_mode_without_statistics", [False, True])
def test_batch_statistics_refuse_a_data_split(guess, eval_mode_without_statistics):
    norm = nn.BatchNorm1d(6, track_running_stats=not eval_mode_without_statistics)
    model = nn.Sequential(nn.Linear(4, 6), norm, nn.ReLU(), nn.Linear(6, 3))
    if eval_mode_without_statistics:
        model.eval()  # still normalises by the batch: it keeps no running statistics
    est = Estimator(model, guess, tangents=2, parallel=_alone("data"))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    with pytest.raises(LaunchError, match="normalises by the batch's statistics"):
        est.estimate(x, y)
