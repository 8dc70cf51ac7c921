"""``tangents-sota`` (reproduce/tangents_sota.py): the LR table, the configs, the orderings and
the smoke budget end to end."""

from __future__ import annotations

import json
import math

import pytest

from forwardgrad.reproduce import EXPERIMENTS, run_experiment
from forwardgrad.reproduce import tangents_sota as sota
from forwardgrad.reproduce import tangents_sota_claims as claims


def test_lr_table_holds_the_authors_mnist_rates():
    table = sota.load_lr_table()
    assert len(table) == 2 * len(sota.METHODS)
    assert sota.authors_lr("resnet18", "backprop", None) == 0.1
    assert sota.authors_lr("vit", "backprop", None) == 0.1
    resnet_mean = [sota.authors_lr("resnet18", "mean", k) for k in (1, 2, 4, 16)]
    assert resnet_mean == [7.06e-05, 0.000283, 0.000210, 0.000433]
    assert [sota.authors_lr("resnet18", "projection", k) for k in (2, 4, 16)] == [
        0.5083,
        0.5083,
        0.1215,
    ]
    assert [sota.authors_lr("vit", "mean", k) for k in (1, 2, 4, 16)] == [
        2.07e-05,
        3.39e-05,
        3.58e-05,
        7.06e-05,
    ]
    assert {sota.authors_lr("vit", "projection", k) for k in (2, 4, 16)} == {0.4864}
    assert table[("vit", "projection", 16)]["search_val_loss"] == 1.2586


def test_lr_table_reads_any_file(tmp_path):
    path = tmp_path / "lrs.json"
    models = {"m": {"backprop": {"lr": 0.5}, "mean": {"3": {"lr": 1e-3, "search_val_loss": 1.0}}}}
    path.write_text(json.dumps({"models": models}))
    assert sota.load_lr_table(path) == {
        ("m", "backprop", None): {"lr": 0.5},
        ("m", "mean", 3): {"lr": 1e-3, "search_val_loss": 1.0},
    }


def test_paper_configs_follow_the_authors_code():
    budget = sota.BUDGETS["paper"]
    cfg = sota.sota_config(budget, "resnet18", "projection", 16, 2)
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
    vit = sota.sota_config(budget, "vit", "mean", 1, 0)
    assert (vit.depth, vit.width, vit.heads, vit.mlp_dim, vit.patch_size) == (6, 256, 4, 512, 4)
    assert vit.sites == "embed,blocks.*,norm,head"
    assert (vit.aggregate, vit.lr) == ("mean", 2.07e-05)
    bp = sota.sota_config(budget, "vit", "backprop", None, 0)
    assert (bp.guess, bp.lr, bp.sites) == ("backprop", 0.1, None)


def _record(method, k, losses, diverged=0, test_acc=0.5):
    mean = sum(losses) / len(losses) if losses else math.nan
    se = None
    if len(losses) > 1:
        var = sum((x - mean) ** 2 for x in losses) / (len(losses) - 1)
        se = math.sqrt(var / len(losses))
    return {
        "model": "vit",
        "method": method,
        "tangents": k,
        "diverged": diverged,
        "train_loss": {"values": losses, "mean": mean, "se": se},
        "test_acc": {"values": [test_acc], "mean": test_acc, "se": None},
    }


METHODS = (("backprop", None), ("mean", 1), ("mean", 2), ("projection", 2))


def _claims(records):
    return {c["claim"]: c for c in claims.paper_claims(records, ["vit"], METHODS)}


def test_orderings_held_on_synthetic_records():
    records = [
        _record("backprop", None, [0.1, 0.12]),
        _record("mean", 1, [2.0, 2.1]),
        _record("mean", 2, [1.5, 1.6]),
        _record("projection", 2, [1.0, 1.1]),
    ]
    found = _claims(records)
    assert set(found) == {
        claims.PROJECTION_VS_MEAN,
        claims.MORE_TANGENTS.format(method="mean"),
        claims.BACKPROP_FIRST,
    }  # one projection k: no "more tangents" ordering for it
    assert all(c["held"] for c in found.values())
    gap = found[claims.PROJECTION_VS_MEAN]["comparisons"][0]
    assert gap["difference"] == pytest.approx(-0.5) and gap["clear"] is True
    assert len(found[claims.BACKPROP_FIRST]["comparisons"]) == 3


def test_orderings_not_held_on_synthetic_records():
    records = [
        _record("backprop", None, [1.2]),  # behind the projection
        _record("mean", 1, [1.4]),
        _record("mean", 2, [1.5]),  # more tangents, higher loss
        _record("projection", 2, [1.0]),
    ]
    found = _claims(records)
    assert found[claims.PROJECTION_VS_MEAN]["held"]
    assert not found[claims.MORE_TANGENTS.format(method="mean")]["held"]
    backprop = found[claims.BACKPROP_FIRST]
    assert not backprop["held"] and [c["held"] for c in backprop["comparisons"]] == [
        True,
        True,
        False,
    ]
    assert all(c["clear"] is None for c in backprop["comparisons"])  # one seed: no SE


def test_a_gap_within_seed_noise_still_counts_but_is_not_clear():
    gap = claims.compare(_record("projection", 2, [1.0, 1.4]), _record("mean", 2, [1.1, 1.5]))
    assert gap["held"] and gap["clear"] is False


def test_a_diverged_run_counts_as_the_worst_loss():
    diverged = _record("projection", 2, [], diverged=1)
    finite = _record("mean", 2, [2.0])
    assert not claims.compare(diverged, finite)["held"]
    assert claims.compare(finite, diverged)["held"]
    assert not claims.compare(diverged, _record("mean", 1, [], diverged=1))["held"]
    rows = claims.claim_rows(claims.paper_claims([diverged, finite], ["vit"], METHODS))
    assert [r.labels["held"] for r in rows] == ["no"]


def test_smoke_budget_runs_end_to_end(tmp_path):
    assert "tangents-sota" in EXPERIMENTS
    out = tmp_path / "sota"
    result = run_experiment("tangents-sota", "smoke", out_dir=out)
    for name in ("results.json", "README.md", "sota.png", "sota-curves.png"):
        assert (out / name).stat().st_size > 0
    record = json.loads((out / "results.json").read_text())
    runs = record["raw"]["runs"]
    budget = sota.BUDGETS["smoke"]
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
