"""``tangents-mlp`` (§4.4, reproduce/flugel2024/mlp.py): the authors' table and the paper's
settings."""

import pytest

from forwardgrad.reproduce.flugel2024 import mlp
from forwardgrad.reproduce.flugel2024.network_runs import METHODS, effective_lr


def test_authors_fc_table():
    assert len(mlp.AUTHORS_FC) == 3 * len(METHODS)
    assert mlp.AUTHORS_FC[(256, "backprop", None)] == {"lr": 0.02605, "search_val_loss": 0.0783}


def test_mlp_settings_follow_the_paper():
    assert [mlp.perturbed_dimension(w) for w in (256, 1024, 4096)] == [522, 2058, 8202]
    cfg = mlp._mlp_config(mlp.MLP_BUDGETS["paper"], 1024, 1024, "projection", 16, 2)
    assert (cfg.depth, cfg.width, cfg.batch_size) == (2, 1024, 64)
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay) == ("sgd", 0.0, 0.0)
    assert (cfg.guess, cfg.aggregate, cfg.tangents, cfg.scope) == (
        "activation",
        "projection",
        16,
        "global",
    )
    assert cfg.lr == 0.1270 and cfg.seed == 2
    # The projection's expected step is k/n of its learning rate; the mean is unbiased.
    assert effective_lr("projection", 16, 2058, 0.127) == pytest.approx(0.127 * 16 / 2058)
    assert effective_lr("mean", 16, 2058, 0.0027) == 0.0027
    bp = mlp._mlp_config(mlp.MLP_BUDGETS["paper"], 256, 256, "backprop", None, 0)
    assert bp.guess == "backprop" and bp.lr == 0.02605
