"""The cosine of the mean of K guesses, Fig. 4 left (singhal2023/averaged_guesses.py)."""

import math

import torch
from conftest import batch

from forwardgrad.models import mlp
from forwardgrad.reproduce.flugel2024.expected_cosine import gaussian_sum_cosine
from forwardgrad.reproduce.singhal2023 import averaged_guesses


def test_cosine_of_averaged_activation_guesses_follows_theory():
    torch.manual_seed(0)
    model = mlp(6, 4, depth=2, width=8)
    x, y = batch(6, 4, 32)
    got = averaged_guesses.cosine_against_guess_count(
        model, "activation", x, y, [2, 16], chunk=8, seed=0
    )
    n = 8 + 8 + 4
    for i, k in enumerate((2, 16)):
        values = torch.tensor(got["activity"][i])
        se = float(values.std() / math.sqrt(len(values)))
        assert abs(float(values.mean()) - gaussian_sum_cosine(k, n)) < 4 * se + 1e-3
        assert len(got["weight"][i]) == 32
