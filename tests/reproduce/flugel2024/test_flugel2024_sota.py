"""``tangents-sota`` (§4.5, reproduce/flugel2024/sota.py and sota_setup.py): the LR table, the
configs and the smoke budget end to end."""

from __future__ import annotations

import json

from forwardgrad.reproduce import EXPERIMENTS, run_experiment
from forwardgrad.reproduce.flugel2024 import sota_setup as setup
from forwardgrad.reproduce.flugel2024.network_runs import METHODS


def test_lr_table_holds_the_authors_mnist_rates():
    table = setup.load_lr_table()
    assert len(table) == 2 * len(METHODS)
    assert setup.authors_lr("resnet18", "backprop", None) == 0.1
    assert setup.authors_lr("vit", "backprop", None) == 0.1
    resnet_mean = [setup.authors_lr("resnet18", "mean", k) for k in (1, 2, 4, 16)]
    assert resnet_mean == [7.06e-05, 0.000283, 0.000210, 0.000433]
    assert [setup.authors_lr("resnet18", "projection", k) for k in (2, 4, 16)] == [
        0.5083,
        0.5083,
        0.1215,
    ]
    assert [setup.authors_lr("vit", "mean", k) for k in (1, 2, 4, 16)] == [
        2.07e-05,
        3.39e-05,
        3.58e-05,
        7.06e-05,
    ]
    assert {setup.authors_lr("vit", "projection", k) for k in (2, 4, 16)} == {0.4864}
    assert table[("vit", "projection", 16)]["search_val_loss"] == 1.2586


def test_lr_table_reads_any_file(tmp_path):
    path = tmp_path / "lrs.json"
    models = {"m": {"backprop": {"lr": 0.5}, "mean": {"3": {"lr": 1e-3, "search_val_loss": 1.0}}}}
    path.write_text(json.dumps({"models": models}))
    assert setup.load_lr_table(path) == {
        ("m", "backprop", None): {"lr": 0.5},
        ("m", "mean", 3): {"lr": 1e-3, "search_val_loss": 1.0},
    }


def test_paper_configs_follow_the_authors_code():
    budget = setup.BUDGETS["paper"]
    cfg = setup.sota_config(budget, "resnet18", "projection", 16, 2)
    assert (cfg.model, cfg.norm, cfg.stem) == ("resnet18", "group", "imagenet")
    assert cfg.sites == "stem,layer1,layer2,layer3,layer4,head"
    assert (cfg.guess, cfg.tangents, cfg.aggregate, cfg.jvp) == (
        "activation",
        16,
        "projection",
        "global",
    )
    assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 0.1215, 0.0, 0.0)
    assert (cfg.batch_size, cfg.seed, cfg.dataset) == (64, 2, "mnist5k")
    vit = setup.sota_config(budget, "vit", "mean", 1, 0)
    assert (vit.depth, vit.width, vit.heads, vit.mlp_dim, vit.patch_size) == (6, 256, 4, 512, 4)
    assert vit.sites == "embed,blocks.*,norm,head"
    assert (vit.aggregate, vit.lr) == ("mean", 2.07e-05)
    bp = setup.sota_config(budget, "vit", "backprop", None, 0)
    assert (bp.guess, bp.lr, bp.sites) == ("backprop", 0.1, None)


def test_smoke_budget_runs_end_to_end(tmp_path):
    assert "tangents-sota" in EXPERIMENTS
    out = tmp_path / "sota"
    result = run_experiment("tangents-sota", "smoke", out_dir=out)
    for name in ("results.json", "README.md", "sota.png", "sota-curves.png"):
        assert (out / name).stat().st_size > 0
    record = json.loads((out / "results.json").read_text())
    runs = record["raw"]["runs"]
    budget = setup.BUDGETS["smoke"]
    assert len(runs) == len(budget.models) * len(budget.methods)
    assert all(len(r["curves"][0]) == 1 and r["diverged"] == 0 for r in runs)
    assert {r["model"]: r["n"] for r in runs}["resnet18"] > 0
    assert (
        record["raw"]["claims"] and "Orderings the paper states" in (out / "README.md").read_text()
    )
    for seed_dir in (out / "runs").glob("*/*/seed0"):
        assert (seed_dir / "summary.json").exists()
    # A rerun reuses the finished runs (the same numbers, nothing retrained).
    again = run_experiment("tangents-sota", "smoke", out_dir=out)
    assert again.raw["runs"][0]["train_loss"] == result.raw["runs"][0]["train_loss"]
